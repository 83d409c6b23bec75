//! `tap-cloud alerts`: each alert's evidence pcap state in the listing, and `alerts pcap ID
//! --out FILE` saving the bytes the sensor sent (or saying why there are none); the
//! listings of alerts, incidents and sensors show names from the wire without letting a
//! terminal obey what they hold.

use std::process::Command;

use tap_cloud::{
    detect::Alert,
    pb::{Excerpt, SensorInfo},
    store::{ExcerptUpload, ExcerptWanted, SqliteStore, Store},
};

fn pcap_file(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = 0xa1b2_3c4du32.to_le_bytes().to_vec();
    out.extend_from_slice(&[2, 0, 4, 0]);
    for v in [0u32, 0, 65535, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for f in frames {
        for v in [1_795_749_927u32, 0, f.len() as u32, f.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(f);
    }
    out
}

fn cloud(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tap-cloud")).args(args).output().unwrap()
}

#[test]
fn alerts_list_their_pcap_state_and_the_pcap_is_saved_to_a_file() {
    let dir = std::env::temp_dir().join(format!("dctap-alerts-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("cloud.db");
    let file = pcap_file(&[b"one", b"two", b"three"]);
    {
        let store = SqliteStore::open(&db).unwrap();
        let mut ids = Vec::new();
        for (i, detection) in ["kerberoasting", "dcsync", "ldap_recon", "password_spray"].iter().enumerate() {
            let mut a = Alert {
                id: 0,
                detection: detection.to_string(),
                title: detection.to_string(),
                severity: "high".into(),
                mitre: String::new(),
                account: String::new(),
                src_ip: format!("10.1.1.{i}"),
                dc_ip: "10.0.0.10".into(),
                dcs: Vec::new(),
                first_seen_ns: i as i64,
                last_seen_ns: i as i64,
                description: String::new(),
                evidence: vec![],
                incident_id: 0,
            };
            store.save_alert(&mut a, 1).unwrap();
            ids.push(a.id);
        }
        let wanted = |alert_id| ExcerptWanted {
            alert_id,
            sensor_id: "s1".into(),
            client_ip: "10.1.1.1".into(),
            dc_ip: "10.0.0.10".into(),
            ..Default::default()
        };
        let x = store.request_excerpts(&[wanted(ids[0]), wanted(ids[1]), wanted(ids[2])]).unwrap();
        store.pending_excerpts("s1", 1).unwrap();
        let done = Excerpt { id: x[0], pcap: file.clone(), frames: 3, ..Default::default() };
        assert_eq!(store.save_excerpt("s1", &done, 2).unwrap(), ExcerptUpload::Saved);
        let failed = Excerpt { id: x[1], error: "evidence is off".into(), ..Default::default() };
        assert_eq!(store.save_excerpt("s1", &failed, 2).unwrap(), ExcerptUpload::Saved);
    }
    let db = db.to_str().unwrap();

    let out = cloud(&["alerts", "--json", "--db", db]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pcaps: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["pcap"].clone())
        .collect();
    assert_eq!(
        pcaps,
        [
            serde_json::json!("done"),
            serde_json::json!("failed: evidence is off"),
            serde_json::json!("waiting"),
            serde_json::Value::Null
        ]
    );
    let table = String::from_utf8(cloud(&["alerts", "--db", db]).stdout).unwrap();
    assert!(table.lines().next().unwrap().ends_with("[pcap done]"), "{table}");

    let saved = dir.join("alert-1.pcap");
    let out = cloud(&["alerts", "pcap", "1", "--out", saved.to_str().unwrap(), "--db", db]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&saved).unwrap(), file);
    let out = cloud(&["alerts", "pcap", "1", "--out", "-", "--db", db]);
    assert_eq!(out.stdout, file);
    for (id, why) in [("2", "not available: evidence is off"), ("3", "waiting for sensor s1"), ("4", "no pcap excerpt")]
    {
        let out = cloud(&["alerts", "pcap", id, "--out", dir.join("x.pcap").to_str().unwrap(), "--db", db]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "alert {id}: {err}");
    }
    assert!(!dir.join("x.pcap").exists(), "nothing written without a pcap");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a terminal would act on: C0 controls but the line feeds that end the table's
/// lines, DEL, C1 controls, bidirectional embeddings, overrides and isolates.
fn acted_on(c: char) -> bool {
    (c < ' ' && c != '\n')
        || ('\x7f'..='\u{9f}').contains(&c)
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

#[test]
fn listings_show_control_characters_from_the_wire_instead_of_sending_them_to_the_terminal() {
    let dir = std::env::temp_dir().join(format!("dctap-hostile-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("cloud.db");
    // A window title, a screen clear, a line forged after a carriage return, the 8-bit
    // CSI and a right-to-left override, in every name a sensor or a packet decides.
    let hostile = "evil\x1b]0;owned\x07\x1b[2J\rroot ok\u{9b}1m\u{202e}exe.txt\0";
    {
        let store = SqliteStore::open(&db).unwrap();
        let mut alert = Alert {
            id: 0,
            detection: "password_spray".into(),
            title: format!("Password spray by {hostile}"),
            severity: "high".into(),
            mitre: "T1110.003".into(),
            account: hostile.into(),
            src_ip: "10.1.1.1".into(),
            dc_ip: "10.0.0.10".into(),
            dcs: vec!["10.0.0.10".into()],
            first_seen_ns: 1,
            last_seen_ns: 1,
            description: hostile.into(),
            evidence: vec![],
            incident_id: 0,
        };
        store.save_alert(&mut alert, 1).unwrap();
        store.add_sensor("s1", "0").unwrap();
        let info = SensorInfo {
            sensor_id: "s1".into(),
            version: hostile.into(),
            monitored_dcs: vec![hostile.into(), "10.0.0.10".into()],
            hostname: hostile.into(),
            capabilities: vec![],
        };
        store.record_registration(&info).unwrap();
        let wanted = ExcerptWanted {
            alert_id: alert.id,
            sensor_id: "s1".into(),
            dc_ip: "10.0.0.10".into(),
            ..Default::default()
        };
        let x = store.request_excerpts(&[wanted]).unwrap();
        store.pending_excerpts("s1", 1).unwrap();
        let failed = Excerpt { id: x[0], error: hostile.into(), ..Default::default() };
        assert_eq!(store.save_excerpt("s1", &failed, 2).unwrap(), ExcerptUpload::Saved);
    }
    let db = db.to_str().unwrap();
    for args in [&["alerts"][..], &["incidents"], &["sensors", "list"]] {
        let out = cloud(&[args, &["--db", db]].concat());
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!text.chars().any(acted_on), "{args:?} sends controls to the terminal: {text:?}");
        assert!(
            text.contains("evil\\x1b]0;owned\\x07\\x1b[2J\\rroot ok\\x9b1m\\u{202e}exe.txt\\x00"),
            "{args:?}: {text}"
        );
        assert_eq!(text.lines().count(), if args[0] == "sensors" { 2 } else { 1 }, "{args:?}: one line each: {text}");
    }
    let out = cloud(&["alerts", "pcap", "1", "--out", "-", "--db", db]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success() && err.contains("owned") && !err.chars().any(acted_on), "{err:?}");
    // JSON escapes them itself and keeps the text exact.
    for args in [&["alerts", "--json"][..], &["incidents", "--json"], &["sensors", "list", "--json"]] {
        let out = cloud(&[args, &["--db", db]].concat());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let field = match args[0] {
            "alerts" => &v["account"],
            "incidents" => &v["title"],
            _ => &v["version"],
        };
        assert!(field.as_str().unwrap().contains(hostile), "{args:?}: {v}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

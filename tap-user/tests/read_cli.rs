//! `tap-sensor --read`: offline mode end to end through the binary. A capture with IPv4
//! fragments, SPAN duplicates tagged with another VLAN and reordered segments comes out as
//! the right byte counts; more workers give the same totals; bad input gets a clear error.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use tap_testkit::{
    frame::{self, Tags, L4},
    shared::LabCapture,
};

fn sensor(args: &[&str]) -> (bool, HashMap<String, u64>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tap-sensor")).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut counters = HashMap::new();
    for line in stdout.lines() {
        let mut it = line.split_whitespace();
        if let (Some(k), Some(v), None) = (it.next(), it.next(), it.next()) {
            if let Ok(v) = v.parse() {
                counters.insert(k.to_string(), v);
            }
        }
    }
    (out.status.success(), counters, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tap-read-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A TCP segment with explicit seq/flags, built from the testkit frame and patched.
fn tcp(tags: Tags, src: Ipv4Addr, dst: Ipv4Addr, ports: (u16, u16), seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = frame::ipv4(tags, src, dst, L4::Tcp { src: ports.0, dst: ports.1 }, payload.len(), 0);
    let l4 = f.len() - payload.len() - 20;
    f[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
    f[l4 + 13] = flags;
    let at = f.len() - payload.len();
    f[at..].copy_from_slice(payload);
    f
}

#[test]
fn offline_mode_reassembles_fragments_duplicates_and_reordering() {
    let c: Ipv4Addr = "10.0.0.20".parse().unwrap();
    let s: Ipv4Addr = "10.0.0.10".parse().unwrap();
    let p = (50000, 445);
    let r = (445, 50000);
    let (syn, synack, ack, fin) = (0x02, 0x12, 0x10, 0x11);
    let mut frames = vec![
        tcp(Tags::Dot1Q(10), c, s, p, 100, syn, b""),
        tcp(Tags::Dot1Q(20), s, c, r, 900, synack, b""),
        tcp(Tags::Dot1Q(10), c, s, p, 111, ack, b"world"), // ahead: bytes 10..15
        tcp(Tags::Dot1Q(10), c, s, p, 101, ack, b"hello, my "),
        tcp(Tags::Dot1Q(20), c, s, p, 101, ack, b"hello, my "), // SPAN copy, other VLAN
        tcp(Tags::Dot1Q(20), s, c, r, 901, ack, b"ok"),
        tcp(Tags::Dot1Q(10), c, s, p, 116, fin, b""),
        tcp(Tags::Dot1Q(20), s, c, r, 903, fin, b""),
    ];
    // A 3000-byte Kerberos/UDP datagram in three fragments, the last one first.
    let mut frags = frame::ipv4_fragments(Tags::QinQ(100, 10), c, s, L4::Udp { src: 40000, dst: 88 }, 3000, 1480, 9);
    frags.rotate_right(1);
    frames.extend(frags);
    let path = temp("mixed.pcap");
    tap_testkit::pcap::write(&path, &frames, Duration::from_secs(1_795_000_000)).unwrap();

    let (ok, c1, err) = sensor(&["--read", path.to_str().unwrap(), "--workers", "1"]);
    assert!(ok, "{err}");
    assert_eq!(c1["read_frames"], frames.len() as u64);
    assert_eq!(c1["stream_tcp_bytes_to_server"], 15, "hello, my world");
    assert_eq!(c1["stream_tcp_bytes_to_client"], 2);
    assert_eq!(c1["tcp_duplicate_segments"], 1);
    assert_eq!(c1["tcp_reordered_segments"], 1);
    assert_eq!(c1["flow_closed_fin"], 1);
    assert_eq!(c1["defrag_reassembled"], 1);
    assert_eq!(c1["stream_udp_bytes"], 3000);
    assert_eq!(c1["stream_gaps"], 0);
}

#[test]
fn more_workers_give_the_same_totals_on_the_lab_captures() {
    let mut to_client = 0;
    for f in tap_testkit::shared::lab_pcaps() {
        let (ok1, one, e1) = sensor(&["--read", f.to_str().unwrap(), "--workers", "1"]);
        let (ok4, four, e4) = sensor(&["--read", f.to_str().unwrap(), "--workers", "4"]);
        assert!(ok1 && ok4, "{e1}{e4}");
        for k in [
            "stream_tcp_bytes_to_server",
            "stream_tcp_bytes_to_client",
            "stream_udp_bytes",
            "flow_created",
            "tcp_bytes_delivered",
        ] {
            assert_eq!(one[k], four[k], "{}: {k}", f.display());
        }
        to_client += one["stream_tcp_bytes_to_client"];
    }
    // Some captures are Kerberos over UDP alone; together they hold TCP both ways.
    assert!(to_client > 0);
}

#[test]
fn bad_input_is_refused_with_the_reason() {
    let (ok, _, err) = sensor(&["--read", "/nonexistent/x.pcap"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/x.pcap"), "{err}");
    let junk = temp("junk.pcap");
    std::fs::write(&junk, b"definitely not a capture file").unwrap();
    let (ok, _, err) = sensor(&["--read", junk.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("neither a pcap nor a pcapng"), "{err}");
    let (ok, _, err) = sensor(&[]);
    assert!(!ok);
    assert!(err.contains("--read FILE or the capture command"), "{err}");
    // A recorder keeps every frame already; evidence files beside it would double them.
    // (No such interface: a check that let this through would fail to attach, not attach.)
    let recording = temp("recording.pcap");
    let (ok, _, err) = sensor(&[
        "capture",
        "--iface",
        "dctap-none0",
        "--dc",
        "10.0.0.10",
        "--record-only",
        "--write",
        recording.to_str().unwrap(),
        "--evidence-dir",
        temp("evidence").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("--record-only already writes every kept frame"), "{err}");
}

#[test]
fn json_lines_are_the_events_and_the_report_moves_to_stderr() {
    for capture in lab_captures_named("04_asrep_roasting") {
        json_lines_of_asrep_roasting(&capture);
    }
}

fn json_lines_of_asrep_roasting(capture: &LabCapture) {
    let pcap = &capture.path;
    let out = Command::new(env!("CARGO_BIN_EXE_tap-sensor"))
        .args(["--read", pcap.to_str().unwrap(), "--json", "--sensor-id", "lab-sensor-1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    let report = String::from_utf8_lossy(&out.stderr);
    let reported: usize = report
        .lines()
        .find_map(|l| l.strip_prefix("parse_events").map(|v| v.trim().parse().unwrap()))
        .expect("report on stderr");
    assert_eq!(events.len(), reported);
    assert!(!events.is_empty());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sensor_id"], "lab-sensor-1");
        assert_eq!(e["seq"], i as u64 + 1);
        assert!(["kerberos", "ldap", "dns", "ntlm"].contains(&e["protocol"].as_str().unwrap()), "{e}");
        assert_eq!(e["dc_ip"], capture.dc_ip.as_str());
    }
    // AS-REP roasting: AS-REQs without PA-ENC-TIMESTAMP answered with an AS-REP whose
    // encrypted part the requester can attack offline.
    let as_reps: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["detail"]["Kerberos"]["msg_type"] == 11).collect();
    assert!(!as_reps.is_empty());
    assert!(as_reps.iter().all(
        |e| e["result"] == "success" && e["detail"]["Kerberos"]["ticket_fingerprint"].as_str().unwrap().len() == 16
    ));
}

/// Events wait in the spool while the cloud is away: they name accounts, hosts and what
/// they did, so under the usual umask (022) the spool directory is still the sensor's alone
/// and so is every file in it.
#[test]
fn the_spool_is_the_sensors_alone_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt as _;
    let capture = &lab_captures_named("04_asrep_roasting")[0];
    let spool = temp("spool-modes/var/spool");
    let _ = std::fs::remove_dir_all(temp("spool-modes"));
    let out = Command::new("sh")
        .args(["-c", "umask 022 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_tap-sensor")])
        .args(["--read", capture.path.to_str().unwrap(), "--cloud", "http://127.0.0.1:9", "--insecure"])
        .args(["--spool-dir", spool.to_str().unwrap(), "--drain-timeout", "0.2"])
        .env("DCTAP_ACCESS_KEY", "dctap_test")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("they stay in the spool"), "{err}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let mut seen = 0;
    for dir in [temp("spool-modes/var"), spool.clone(), spool.join("sources")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                seen += 1;
            }
        }
    }
    assert!(seen >= 3, "a segment, the lock and the replay digests: {seen} files");
    let _ = std::fs::remove_dir_all(temp("spool-modes"));
}

/// On the lab's LDAP reconnaissance (a real Samba DC answering ldapdomaindump and impacket
/// over readable LDAP), the search results name the domain's administrators, and only them.
#[test]
fn ldap_results_name_the_privileged_accounts_of_a_real_directory() {
    for capture in lab_captures_named("05_ldap_recon") {
        privileged_accounts_of(&capture.path);
    }
}

fn privileged_accounts_of(pcap: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_tap-sensor")).arg("--read").arg(pcap).args(["--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut named = std::collections::BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for name in v["detail"]["Ldap"]["privileged_accounts"].as_array().into_iter().flatten() {
            named.insert(name.as_str().unwrap().to_lowercase());
        }
    }
    // eve.admin is the lab's domain admin; Administrator and krbtgt carry adminCount=1.
    for admin in ["eve.admin", "administrator", "krbtgt"] {
        assert!(named.contains(admin), "{admin} not learned: {named:?}");
    }
    for user in ["alice", "bob", "carol", "dave", "svc_sql", "domain admins", "backup operators"] {
        assert!(!named.contains(user), "{user} is not a privileged account: {named:?}");
    }
}

/// Kerberos errors that are steps of a normal exchange are not failures: on the lab's
/// logons "pre-authentication required" is "continue"; wrong passwords are "failure".
#[test]
fn kerberos_steps_are_not_failures_but_wrong_passwords_are() {
    let results = |pcap: &PathBuf| -> HashMap<(i64, String), usize> {
        let out =
            Command::new(env!("CARGO_BIN_EXE_tap-sensor")).arg("--read").arg(pcap).arg("--json").output().unwrap();
        let mut by = HashMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["detail"]["Kerberos"]["msg_type"] == 30 {
                let key = (v["status_code"].as_i64().unwrap(), v["result"].as_str().unwrap().to_string());
                *by.entry(key).or_default() += 1;
            }
        }
        by
    };
    for normal in lab_captures_named("01_normal_logons") {
        let normal = results(&normal.path);
        assert!(normal.get(&(25, "continue".into())).is_some_and(|&n| n > 0), "{normal:?}");
        assert!(!normal.keys().any(|(code, r)| *code == 25 && r != "continue"), "{normal:?}");
    }
    for spray in lab_captures_named("02_password_spray") {
        let spray = results(&spray.path);
        assert!(spray.get(&(24, "failure".into())).is_some_and(|&n| n >= 10), "{spray:?}");
    }
}

/// The lab captures of this name: the project's (always) and the reference lab's (with
/// ../shared).
fn lab_captures_named(stem: &str) -> Vec<LabCapture> {
    let found: Vec<LabCapture> = tap_testkit::shared::lab_captures()
        .into_iter()
        .filter(|c| c.path.file_stem().is_some_and(|s| s == stem))
        .collect();
    assert!(!found.is_empty(), "no lab capture {stem}.pcap");
    found
}

//! Live capture to the cloud: the sensor's XDP program on the mirror end of a veth pair,
//! its events over mTLS to `tap-cloud` (in the mirror namespace, on its loopback), a lab
//! attack replayed with tcpreplay into the other end. Every event the live pipeline made
//! is acknowledged and stored, and the cloud raises the attack's alerts.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tap_testkit::{
    netns::{live_or_skip, SpanPair},
    sensor::SensorProcess,
    shared::project_lab_capture,
};

fn ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

struct Cloud(std::process::Child);

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A cloud serving mTLS ingest on the loopback of a fresh SPAN pair's mirror namespace, a
/// sensor registered with it, and the arguments that sensor needs to stream there.
struct LiveSite {
    dir: PathBuf,
    cloud_bin: PathBuf,
    sensor_bin: PathBuf,
    sensor_id: &'static str,
    /// Declared before `pair`: the cloud stops before its namespace goes.
    cloud: Option<Cloud>,
    pair: SpanPair,
}

impl LiveSite {
    fn start(name: &str, sensor_id: &'static str) -> Self {
        let cloud_bin = PathBuf::from(env!("CARGO_BIN_EXE_tap-cloud"));
        let sensor_bin = cloud_bin.with_file_name("tap-sensor");
        assert!(sensor_bin.exists(), "{} missing: cargo build -p tap-user", sensor_bin.display());
        let dir = std::env::temp_dir().join(format!("dctap-live-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = |p: &str| dir.join(p).display().to_string();
        ok(Command::new(&cloud_bin).args(["certs", "init", "--sensor", sensor_id, "--dir", &d("pki")]));
        ok(Command::new(&cloud_bin).args([
            "sensors",
            "add",
            sensor_id,
            "--db",
            &d("cloud.db"),
            "--key-file",
            &d("key"),
        ]));
        let pair = SpanPair::create(name).unwrap();
        ok(Command::new("ip").args(["-n", &pair.mirror_ns, "link", "set", "lo", "up"]));
        let log = std::fs::File::create(dir.join("cloud.log")).unwrap();
        let cloud = Cloud(
            SpanPair::command_in(&pair.mirror_ns, &cloud_bin)
                .args(["serve", "--http", "127.0.0.1:0", "--listen", "127.0.0.1:7443", "--db", &d("cloud.db")])
                .args(["--tls-dir", &d("pki")])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(dir.join("cloud.log")).unwrap_or_default().contains("ingest listening") {
            assert!(Instant::now() < deadline, "tap-cloud did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { dir, cloud_bin, sensor_bin, sensor_id, cloud: Some(cloud), pair }
    }

    fn path(&self, p: &str) -> String {
        self.dir.join(p).display().to_string()
    }

    /// `tap-sensor capture` in the mirror namespace, watching `dc`, streaming to the cloud.
    fn start_sensor(&self, dc: &str, extra: &[&str]) -> SensorProcess {
        let id = self.sensor_id;
        let mut args: Vec<String> = vec!["--dc".into(), dc.into(), "--sensor-id".into(), id.into()];
        args.extend(["--cloud".into(), "https://127.0.0.1:7443".into(), "--tls-ca".into(), self.path("pki/ca.pem")]);
        args.extend(["--tls-cert".into(), self.path(&format!("pki/sensor-{id}.pem"))]);
        args.extend(["--tls-key".into(), self.path(&format!("pki/sensor-{id}.key"))]);
        args.extend(["--access-key-file".into(), self.path("key"), "--spool-dir".into(), self.path("spool")]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        SensorProcess::start(&self.sensor_bin, &self.pair, &refs).unwrap()
    }

    /// `tap-cloud ARGS --db <the site's database>`, which must succeed.
    fn cloud_cli(&self, args: &[&str]) -> std::process::Output {
        ok(Command::new(&self.cloud_bin).args(args).args(["--db", &self.path("cloud.db")]))
    }

    fn stop_cloud(&mut self) {
        self.cloud = None;
    }
}

impl Drop for LiveSite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_live_capture_streams_every_event_and_the_spray_is_detected() {
    if !live_or_skip("a_live_capture_streams_every_event_and_the_spray_is_detected") {
        return;
    }
    let spray = project_lab_capture("02_password_spray");
    let mut site = LiveSite::start("uplink", "live");
    let sensor = site.start_sensor(&spray.dc_ip, &[]);
    let sent = site.pair.replay(&spray.path, Some(5_000), 1).unwrap();
    assert!(sent > 500);
    std::thread::sleep(Duration::from_millis(500));
    let counters = sensor.stop().unwrap();
    let (events, acked) = (counters.get("parse_events"), counters.get("uplink_events_acked"));
    assert!(events > 500, "the spray capture makes hundreds of events, got {events}");
    assert_eq!(acked, events, "every event the live pipeline made is acknowledged");
    assert_eq!(counters.get("spool_unacked_events"), 0);

    // Detection follows the store every half second.
    let deadline = Instant::now() + Duration::from_secs(20);
    let alerts = loop {
        let text = String::from_utf8(site.cloud_cli(&["alerts", "--json"]).stdout).unwrap();
        if text.contains("brute_force") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    site.stop_cloud();
    let stored = site.cloud_cli(&["events", "stats"]);
    let stats: serde_json::Value = serde_json::from_slice(&stored.stdout).unwrap();
    assert_eq!(stats["events"].as_u64(), Some(events), "the cloud holds each event once");
    for detection in ["password_spray", "brute_force"] {
        assert!(
            alerts
                .lines()
                .any(|l| l.contains(&format!("\"detection\":\"{detection}\"")) && l.contains(&spray.client_ip)),
            "no {detection} alert from {}: {alerts}",
            spray.client_ip
        );
    }
    // Registration and the heartbeat (sent as the session opens) reached the registry.
    let list = site.cloud_cli(&["sensors", "list", "--json"]);
    let sensor: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(sensor["monitored_dcs"], serde_json::json!([spray.dc_ip]));
    assert!(sensor["capabilities"].as_array().unwrap().iter().any(|c| c == "capture"), "{sensor}");
    assert_eq!(sensor["version"], env!("CARGO_PKG_VERSION"));
    assert!(sensor["last_heartbeat_unix_ns"].as_i64().is_some(), "{sensor}");
    assert!(sensor["health_counters"].get("spool_events_appended").is_some(), "{sensor}");
}

/// The evidence behind an alert, end to end: the sensor keeps what it captures in its
/// evidence ring, the cloud asks for the conversation of the new Kerberoasting alert in a
/// heartbeat reply, the sensor cuts and uploads it, and the analyst downloads a pcap that
/// holds that conversation (the project's own lab capture: always here).
#[test]
fn the_pcap_excerpt_of_an_alert_comes_from_the_sensor_evidence_ring() {
    if !live_or_skip("the_pcap_excerpt_of_an_alert_comes_from_the_sensor_evidence_ring") {
        return;
    }
    let pcap = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/pcaps/03_kerberoasting.pcap");
    let mut site = LiveSite::start("excerpt", "ev");
    let evidence = site.path("evidence");
    let sensor = site.start_sensor("10.78.0.10", &["--evidence-dir", &evidence]);
    assert!(site.pair.replay(&pcap, Some(2_000), 1).unwrap() > 20);

    // The alert, then its excerpt: asked in the next heartbeat reply (every 10 s).
    let deadline = Instant::now() + Duration::from_secs(45);
    let alert = loop {
        let roast = String::from_utf8(site.cloud_cli(&["alerts", "--json"]).stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|a| a["detection"] == "kerberoasting");
        if let Some(a) = roast.clone().filter(|a| a["pcap"] == "done") {
            break a;
        }
        assert!(Instant::now() < deadline, "no kerberoasting alert with its pcap in 45 s: {roast:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let counters = sensor.stop().unwrap();
    site.stop_cloud();
    assert!(counters.get("uplink_excerpts_uploaded") >= 1);
    let out = site.path("alert.pcap");
    let id = alert["id"].as_i64().unwrap().to_string();
    site.cloud_cli(&["alerts", "pcap", &id, "--out", &out]);
    let frames = tap_testkit::pcap::read(Path::new(&out)).unwrap();
    assert!(!frames.is_empty(), "an empty excerpt");
    // Every frame is of the conversation behind the alert: the attacker and the DC, on
    // Kerberos.
    let ends = |f: &tap_testkit::pcap::PcapFrame| -> Option<([u8; 4], [u8; 4], u16, u16)> {
        let p = etherparse::SlicedPacket::from_ethernet(&f.data).ok()?;
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else { return None };
        let (sp, dp) = match p.transport? {
            etherparse::TransportSlice::Tcp(t) => (t.source_port(), t.destination_port()),
            etherparse::TransportSlice::Udp(u) => (u.source_port(), u.destination_port()),
            _ => return None,
        };
        Some((ip.header().source(), ip.header().destination(), sp, dp))
    };
    let (attacker, dc) = ([10, 78, 0, 20], [10, 78, 0, 10]);
    for f in &frames {
        let (s, t, sp, dp) = ends(f).expect("an IPv4 TCP or UDP frame");
        assert!((s, t) == (attacker, dc) || (s, t) == (dc, attacker), "frame of another conversation");
        assert!(sp == 88 || dp == 88, "not Kerberos: {sp} -> {dp}");
    }
}

//! The uplink end to end, through the real binaries on loopback with mTLS: the lab
//! captures are replayed with `tap-sensor --read ... --cloud`, while the cloud is killed
//! and restarted five times and the sensor once with SIGKILL; at the end the cloud holds
//! exactly the events `--json` prints for the same captures, each once. A cloud that is away
//! for the whole replay gets everything when it starts; a wrong certificate, an unknown
//! sensor and a revoked key are refused.
//!
//! Runs on the project's own lab captures (`lab/pcaps`) and needs the tap-sensor binary
//! beside tap-cloud's (`cargo test --workspace` builds both).

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use tap_testkit::shared::project_lab_pcaps;

const SENSOR_ID: &str = "lab-sensor";

fn sensor_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_tap-cloud")).with_file_name("tap-sensor");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p tap-user` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

fn cloud_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tap-cloud"))
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A temporary directory with a CA, certificates, a database and the sensor's key.
struct Site {
    dir: PathBuf,
    addr: SocketAddr,
}

impl Site {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dctap-uplink-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run_ok(cloud_cmd().args(["certs", "init", "--dir"]).arg(dir.join("certs")).args(["--sensor", SENSOR_ID]));
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let site = Self { dir, addr };
        site.add_sensor(SENSOR_ID);
        site
    }

    fn db(&self) -> PathBuf {
        self.dir.join("cloud.db")
    }

    fn key_file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.key"))
    }

    fn add_sensor(&self, id: &str) {
        run_ok(
            cloud_cmd().args(["sensors", "add", id, "--db"]).arg(self.db()).arg("--key-file").arg(self.key_file(id)),
        );
    }

    fn start_cloud(&self) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("cloud.log")).unwrap();
        let child = cloud_cmd()
            .args(["serve", "--http", "127.0.0.1:0", "--db"])
            .arg(self.db())
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--tls-dir")
            .arg(self.dir.join("certs"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(self.addr).is_err() {
            assert!(Instant::now() < deadline, "tap-cloud did not listen on {}", self.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// `tap-sensor --read PCAP --cloud ...` with this site's certificates.
    fn sensor(&self, pcap: &Path, id: &str, cert_dir: &Path, extra: &[&str]) -> Command {
        let mut cmd = Command::new(sensor_bin());
        cmd.arg("--read")
            .arg(pcap)
            .args(["--sensor-id", id, "--cloud"])
            .arg(format!("https://{}", self.addr))
            .arg("--tls-ca")
            .arg(self.dir.join("certs/ca.pem"))
            .arg("--tls-cert")
            .arg(cert_dir.join(format!("sensor-{id}.pem")))
            .arg("--tls-key")
            .arg(cert_dir.join(format!("sensor-{id}.key")))
            .arg("--access-key-file")
            .arg(self.key_file(id))
            .arg("--spool-dir")
            .arg(self.dir.join(format!("spool-{id}")))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// The cloud's events, without their sequence numbers, counted.
    fn stored(&self) -> (BTreeMap<String, usize>, Vec<u64>) {
        let out = run_ok(cloud_cmd().args(["events", "export", "--db"]).arg(self.db()));
        normalise(&String::from_utf8(out.stdout).unwrap())
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// JSON lines → multiset of events with `seq` removed (the only field that depends on the
/// run), and the sequence numbers.
fn normalise(json_lines: &str) -> (BTreeMap<String, usize>, Vec<u64>) {
    let mut events = BTreeMap::new();
    let mut seqs = Vec::new();
    for line in json_lines.lines().filter(|l| !l.trim().is_empty()) {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let obj = v.as_object_mut().unwrap();
        seqs.push(obj.remove("seq").and_then(|s| s.as_u64()).unwrap());
        *events.entry(serde_json::to_string(&v).unwrap()).or_insert(0) += 1;
    }
    (events, seqs)
}

/// What the pipeline produces for the captures, per `--json`.
fn expected(pcaps: &[PathBuf]) -> BTreeMap<String, usize> {
    let mut all = BTreeMap::new();
    for pcap in pcaps {
        let out = run_ok(Command::new(sensor_bin()).arg("--read").arg(pcap).args(["--json", "--sensor-id", SENSOR_ID]));
        for (k, n) in normalise(&String::from_utf8(out.stdout).unwrap()).0 {
            *all.entry(k).or_insert(0) += n;
        }
    }
    all
}

fn total(m: &BTreeMap<String, usize>) -> usize {
    m.values().sum()
}

fn assert_same(got: &BTreeMap<String, usize>, want: &BTreeMap<String, usize>) {
    if got == want {
        return;
    }
    let missing: Vec<_> = want.iter().filter(|(k, n)| got.get(*k) < Some(n)).take(3).collect();
    let extra: Vec<_> = got.iter().filter(|(k, n)| want.get(*k) < Some(n)).take(3).collect();
    panic!(
        "cloud holds {} events, the pipeline produced {}; missing (first 3): {missing:?}; extra or repeated (first 3): {extra:?}",
        total(got),
        total(want)
    );
}

#[test]
fn every_event_arrives_once_through_cloud_restarts_and_a_killed_sensor() {
    let pcaps = project_lab_pcaps();
    let want = expected(&pcaps);
    assert!(total(&want) > 500, "the lab captures give {} events", total(&want));
    let site = Site::new("restarts");
    let certs = site.dir.join("certs");
    let mut cloud = site.start_cloud();

    // The cloud dies (SIGKILL) and comes back five times while the sensor streams; the
    // rate limit stretches the stream over several seconds so the restarts land inside it.
    let restarter = {
        let (dir, addr) = (site.dir.clone(), site.addr);
        std::thread::spawn(move || {
            let site = Site { dir, addr };
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(900));
                cloud.kill().unwrap();
                cloud.wait().unwrap();
                std::thread::sleep(Duration::from_millis(300));
                cloud = site.start_cloud();
            }
            std::mem::forget(site); // the test's own Site cleans up
            cloud
        })
    };
    let rate = ["--uplink-max-rate", "250", "--drain-timeout", "120"];
    for (i, pcap) in pcaps.iter().enumerate() {
        if i == 1 {
            // This one is killed half-way (SIGKILL) and run again, like systemd would.
            let mut first = site.sensor(pcap, SENSOR_ID, &certs, &rate).spawn().unwrap();
            std::thread::sleep(Duration::from_millis(1200));
            assert!(first.try_wait().unwrap().is_none(), "the sensor finished before it could be killed");
            first.kill().unwrap();
            first.wait().unwrap();
        }
        let out = site.sensor(pcap, SENSOR_ID, &certs, &rate).output().unwrap();
        assert!(out.status.success(), "sensor on {} failed: {}", pcap.display(), String::from_utf8_lossy(&out.stderr));
    }
    let mut cloud = restarter.join().unwrap();
    let (got, mut seqs) = site.stored();
    cloud.kill().unwrap();
    cloud.wait().unwrap();
    assert_same(&got, &want);
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), total(&want), "each stored event has its own sequence number");
    let log = std::fs::read_to_string(site.dir.join("cloud.log")).unwrap();
    assert_eq!(log.matches("ingest listening").count(), 6, "the cloud ran six times");
}

#[test]
fn a_cloud_away_for_the_whole_replay_gets_everything_when_it_starts() {
    let pcaps = project_lab_pcaps();
    let pcap = pcaps.iter().find(|p| p.to_string_lossy().contains("password_spray")).unwrap_or(&pcaps[0]);
    let want = expected(std::slice::from_ref(pcap));
    let site = Site::new("away");
    let mut sensor =
        site.sensor(pcap, SENSOR_ID, &site.dir.join("certs"), &["--drain-timeout", "120"]).spawn().unwrap();
    // Long enough for the whole file to be read and spooled with nobody listening.
    std::thread::sleep(Duration::from_secs(3));
    assert!(sensor.try_wait().unwrap().is_none(), "the sensor gave up while the cloud was away");
    let mut cloud = site.start_cloud();
    let out = sensor.wait_with_output().unwrap();
    assert!(out.status.success(), "sensor: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the cloud"), "the outage was reported: {stderr}");
    let (got, _) = site.stored();
    cloud.kill().unwrap();
    cloud.wait().unwrap();
    assert_same(&got, &want);
}

/// A sensor rebuilt from scratch (the appliance re-imaged: a new, empty spool) under the
/// same id, whose events are spooled before it reaches the cloud: every one arrives,
/// numbered above what the cloud held, and detection examines them.
#[test]
fn a_re_imaged_sensor_under_the_same_id_sends_every_event_and_they_are_examined() {
    let first = tap_testkit::shared::project_lab_capture("01_normal_logons").path;
    let second = tap_testkit::shared::project_lab_capture("02_password_spray").path;
    let site = Site::new("reimaged");
    let mut cloud = site.start_cloud();
    let out = site.sensor(&first, SENSOR_ID, &site.dir.join("certs"), &[]).output().unwrap();
    assert!(out.status.success(), "sensor: {}", String::from_utf8_lossy(&out.stderr));
    let (_, before) = site.stored();
    let held = before.iter().copied().max().unwrap();
    cloud.kill().unwrap();
    cloud.wait().unwrap();

    std::fs::remove_dir_all(site.dir.join(format!("spool-{SENSOR_ID}"))).unwrap();
    let sensor = site.sensor(&second, SENSOR_ID, &site.dir.join("certs"), &["--drain-timeout", "120"]).spawn().unwrap();
    // The whole file is spooled, numbered from 1 by the new spool, before the cloud is back.
    std::thread::sleep(Duration::from_secs(3));
    let mut cloud = site.start_cloud();
    let out = sensor.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sensor: {stderr}");
    assert!(stderr.contains(&format!("numbered from {}", held + 1)), "the renumbering is reported: {stderr}");
    let (got, seqs) = site.stored();
    cloud.kill().unwrap();
    cloud.wait().unwrap();
    let mut want = expected(&[first]);
    for (k, n) in expected(&[second]) {
        *want.entry(k).or_insert(0) += n;
    }
    assert_same(&got, &want);
    let mut unique = seqs.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), seqs.len(), "each number once");
    assert!(seqs.iter().filter(|&&s| s > held).count() == total(&want) - before.len(), "the new ones above {held}");

    run_ok(cloud_cmd().args(["detect", "--db"]).arg(site.db()));
    let alerts = run_ok(cloud_cmd().args(["alerts", "--json", "--db"]).arg(site.db()));
    let alerts = String::from_utf8_lossy(&alerts.stdout);
    assert!(alerts.contains("\"password_spray\""), "the re-imaged sensor's spray was examined: {alerts}");
}

/// `tap-sensor --read - --cloud`: a capture from a pipe (as `tcpdump -r -` reads) arrives
/// whole; only the guard against re-sending a re-read file is off, and the run says so.
#[test]
fn a_capture_read_from_a_pipe_reaches_the_cloud() {
    let pcap = tap_testkit::shared::project_lab_capture("04_asrep_roasting").path;
    let want = expected(std::slice::from_ref(&pcap));
    assert!(total(&want) > 10);
    let site = Site::new("pipe");
    let mut cloud = site.start_cloud();
    let mut sensor = site.sensor(Path::new("-"), SENSOR_ID, &site.dir.join("certs"), &[]);
    let mut child = sensor.stdin(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let bytes = std::fs::read(&pcap).unwrap();
    let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &bytes));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sensor: {stderr}");
    assert!(stderr.contains("is not a regular file"), "the run says the re-read guard is off: {stderr}");
    let (got, _) = site.stored();
    cloud.kill().unwrap();
    cloud.wait().unwrap();
    assert_same(&got, &want);
}

#[test]
fn a_wrong_certificate_an_unknown_sensor_a_borrowed_certificate_and_a_revoked_key_are_refused() {
    let pcaps = project_lab_pcaps();
    let pcap = pcaps.iter().find(|p| p.to_string_lossy().contains("dns")).unwrap_or(&pcaps[0]);
    let site = Site::new("refused");
    let mut cloud = site.start_cloud();
    let refused = |cmd: &mut Command| -> String {
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "the sensor should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let short = ["--drain-timeout", "3"];

    // A client certificate from another authority: the TLS handshake fails.
    let other = site.dir.join("other-ca");
    run_ok(cloud_cmd().args(["certs", "init", "--dir"]).arg(&other).args(["--sensor", SENSOR_ID]));
    let err = refused(&mut site.sensor(pcap, SENSOR_ID, &other, &short));
    // The sensor sees either the TLS alert or, when the cloud closes first, the connection
    // closing at its first call; both name the certificate as the suspect.
    assert!(err.contains("TLS with the cloud failed") || err.contains("rejecting --tls-cert"), "{err}");

    // A certificate the cloud trusts, but a sensor it never registered.
    let certs = site.dir.join("certs");
    for ext in ["pem", "key"] {
        std::fs::copy(certs.join(format!("sensor-{SENSOR_ID}.{ext}")), certs.join(format!("sensor-ghost.{ext}")))
            .unwrap();
    }
    std::fs::write(site.key_file("ghost"), "dctap_0000\n").unwrap();
    let err = refused(&mut site.sensor(pcap, "ghost", &certs, &short));
    assert!(err.contains("unknown sensor ghost"), "{err}");

    // A registered sensor's own access key, but another sensor's certificate: the
    // certificate must name the sensor.
    site.add_sensor("twin");
    for ext in ["pem", "key"] {
        std::fs::copy(certs.join(format!("sensor-{SENSOR_ID}.{ext}")), certs.join(format!("sensor-twin.{ext}")))
            .unwrap();
    }
    let err = refused(&mut site.sensor(pcap, "twin", &certs, &short));
    assert!(err.contains("not sensor twin"), "{err}");

    // Revoked: refused with a message that says so.
    run_ok(cloud_cmd().args(["sensors", "revoke", SENSOR_ID, "--db"]).arg(site.db()));
    let err = refused(&mut site.sensor(pcap, SENSOR_ID, &site.dir.join("certs"), &short));
    assert!(err.contains("revoked"), "{err}");

    let (got, _) = site.stored();
    cloud.kill().unwrap();
    cloud.wait().unwrap();
    assert_eq!(total(&got), 0, "nothing from a refused sensor is stored");
}

#[test]
fn sighup_makes_the_sensor_reconnect_with_a_rotated_key() {
    let pcaps = project_lab_pcaps();
    let pcap = pcaps.iter().find(|p| p.to_string_lossy().contains("password_spray")).unwrap_or(&pcaps[0]);
    let want = expected(std::slice::from_ref(pcap));
    let site = Site::new("rotate");
    let mut cloud = site.start_cloud();
    let sensor = site
        .sensor(pcap, SENSOR_ID, &site.dir.join("certs"), &["--uplink-max-rate", "150", "--drain-timeout", "120"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // Rotate: the old key is revoked, a new one issued into the same file, then SIGHUP.
    run_ok(cloud_cmd().args(["sensors", "revoke", SENSOR_ID, "--db"]).arg(site.db()));
    site.add_sensor(SENSOR_ID);
    let _ = Command::new("kill").args(["-HUP", &sensor.id().to_string()]).status();
    let out = sensor.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("reconnecting to load the certificates and access key again"), "{stderr}");
    let (got, _) = site.stored();
    cloud.kill().unwrap();
    cloud.wait().unwrap();
    assert_same(&got, &want);
}

/// Waits until the cloud's log holds `text` (a SIGHUP is handled asynchronously).
fn wait_for_log(site: &Site, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(site.dir.join("cloud.log")).unwrap_or_default();
        if log.contains(text) {
            return;
        }
        assert!(Instant::now() < deadline, "the cloud never logged {text:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A new PKI (CA, server and sensor certificates) put in place of the old one is used after
/// SIGHUP, without a restart; before it, a sensor with the new certificates is refused, and
/// a damaged file on a later SIGHUP leaves the working certificates in force.
#[test]
fn sighup_makes_the_cloud_load_new_certificates() {
    let pcaps = project_lab_pcaps();
    let pcap = pcaps.iter().find(|p| p.to_string_lossy().contains("dns")).unwrap_or(&pcaps[0]);
    let want = expected(std::slice::from_ref(pcap));
    let site = Site::new("certreload");
    let mut cloud = site.start_cloud();
    let certs = site.dir.join("certs");
    let next = site.dir.join("next-pki");
    run_ok(cloud_cmd().args(["certs", "init", "--dir"]).arg(&next).args(["--sensor", SENSOR_ID]));
    let sensor_files = [format!("sensor-{SENSOR_ID}.pem"), format!("sensor-{SENSOR_ID}.key")];
    for f in ["ca.pem", "server.pem", "server.key"].iter().map(|s| s.to_string()).chain(sensor_files) {
        std::fs::copy(next.join(&f), certs.join(&f)).unwrap();
    }
    let short = ["--drain-timeout", "3"];
    let out = site.sensor(pcap, SENSOR_ID, &certs, &short).output().unwrap();
    assert!(!out.status.success(), "the running cloud still has the old certificates");

    let hup = |child: &std::process::Child| {
        assert!(Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap().success());
    };
    hup(&cloud);
    wait_for_log(&site, "certificates reloaded");
    let out = site.sensor(pcap, SENSOR_ID, &certs, &["--drain-timeout", "60"]).output().unwrap();
    assert!(out.status.success(), "after SIGHUP: {}", String::from_utf8_lossy(&out.stderr));
    let (got, _) = site.stored();
    assert_same(&got, &want);

    // A damaged certificate: the reload is refused and the cloud keeps serving.
    std::fs::write(certs.join("server.pem"), "not a certificate\n").unwrap();
    hup(&cloud);
    wait_for_log(&site, "certificates not reloaded");
    let out = site.sensor(pcap, SENSOR_ID, &certs, &["--drain-timeout", "60"]).output().unwrap();
    assert!(out.status.success(), "after a refused reload: {}", String::from_utf8_lossy(&out.stderr));
    assert!(cloud.try_wait().unwrap().is_none(), "the cloud is still running");
    cloud.kill().unwrap();
    cloud.wait().unwrap();
}

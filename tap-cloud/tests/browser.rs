//! The portal in a real browser: the Kerberoasting lab capture (and the benign logons
//! beside it) replayed through the real `tap-sensor --read` into a real `tap-cloud serve`,
//! an analyst created with `tap-cloud users add`, then `tests/browser/portal.mjs` drives
//! Debian's headless chromium with playwright-core through what an analyst does: refused
//! without a session, sign in, the Kerberoasting incident in the list, its timeline with
//! description, MITRE technique and evidence, a status change through the CSRF-protected
//! form that persists, the incident page refused in a frame of its own origin, new alerts
//! announced on the open incidents page while another capture is replayed, the host,
//! account, activity and sensors pages, sign out. A PNG
//! screenshot of each main page lands in `target/test-output/browser/`.
//!
//! Runs on the project's own lab captures (`lab/pcaps`). Needs node, chromium and
//! playwright-core, which `cargo xtask setup` installs: without them the test reports why
//! it skips, and fails instead under `cargo xtask test` (`DCTAP_REQUIRE_LIVE=1`).

use std::{
    io::{BufRead as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tap_testkit::shared::project_lab_capture;

const TEST: &str = "an_analyst_triages_the_kerberoasting_incident_in_chromium";
/// The screenshots the script saves, in order; each must be a real picture of a page.
const SCREENSHOTS: [&str; 9] = [
    "01-sign-in",
    "02-incidents",
    "03-incident",
    "04-incident-in-progress",
    "05-host",
    "06-account",
    "07-activity",
    "08-sensors",
    "09-signed-out",
];

struct Browser {
    chromium: PathBuf,
    playwright: PathBuf,
}

/// node, chromium and playwright-core, or why not.
fn browser_prerequisites() -> Result<Browser, String> {
    let node_ok = Command::new("node").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if !node_ok {
        return Err("node is not installed".into());
    }
    let chromium = std::env::var_os("DCTAP_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if !chromium.exists() {
        return Err(format!("{} is missing (Debian package chromium)", chromium.display()));
    }
    let playwright = std::env::var_os("DCTAP_PLAYWRIGHT_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        home.join(".cache/dctap/playwright")
    });
    if !playwright.join("node_modules/playwright-core/package.json").exists() {
        return Err(format!("playwright-core is not installed in {}", playwright.display()));
    }
    Ok(Browser { chromium, playwright })
}

/// Kills the cloud when the test ends, passed or not.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Starts `tap-cloud serve` on ports the kernel picks and returns it with the ingest and
/// portal addresses it logged; its log goes to `log`.
fn serve(db: &Path, log: PathBuf) -> (Server, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tap-cloud"))
        .args(["serve", "--insecure", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--db"])
        .arg(db)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tap-cloud serve");
    let stderr = child.stderr.take().unwrap();
    let server = Server(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut file = std::fs::File::create(log).unwrap();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
            // "ingest listening on ADDR (plaintext), portal on http://ADDR, database ..."
            if let Some(rest) = line.split("ingest listening on ").nth(1) {
                let ingest = rest.split_whitespace().next().unwrap_or_default().to_string();
                let portal = rest.split("portal on ").nth(1).and_then(|r| r.split(',').next()).unwrap_or_default();
                let _ = tx.send((ingest, portal.to_string()));
            }
        }
    });
    let (ingest, portal) =
        rx.recv_timeout(Duration::from_secs(30)).expect("tap-cloud serve did not say where it listens");
    (server, ingest, portal)
}

/// Waits until the cloud's detection thread has raised `detection`.
fn wait_for_alert(db: &Path, detection: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = ok(Command::new(env!("CARGO_BIN_EXE_tap-cloud")).args(["alerts", "--json", "--db"]).arg(db));
        if String::from_utf8_lossy(&out.stdout).contains(&format!("\"detection\":\"{detection}\"")) {
            return;
        }
        assert!(Instant::now() < deadline, "the cloud raised no {detection} alert within a minute");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Width and height of a PNG, after checking its signature and header chunk.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&bytes[16..20]), be(&bytes[20..24])))
}

fn random_password() -> String {
    let mut raw = [0u8; 12];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut raw).unwrap();
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn an_analyst_triages_the_kerberoasting_incident_in_chromium() {
    let attack = project_lab_capture("03_kerberoasting");
    let (benign, kerberoasting, recon) =
        (project_lab_capture("01_normal_logons").path, attack.path.clone(), project_lab_capture("05_ldap_recon").path);
    let (since, until) = scenario_seconds(&attack.path, "03_kerberoasting");
    let browser = match browser_prerequisites() {
        Ok(b) => b,
        Err(why) => {
            assert!(!tap_testkit::skip::unless_missing(TEST, Some(why)));
            return;
        }
    };
    let started = Instant::now();
    let cloud_bin = Path::new(env!("CARGO_BIN_EXE_tap-cloud"));
    let sensor_bin = cloud_bin.with_file_name("tap-sensor");
    assert!(sensor_bin.exists(), "{} is missing: build it with `cargo build -p tap-user`", sensor_bin.display());
    // target/test-output/browser, beside the build's own folders.
    let out = cloud_bin.parent().and_then(Path::parent).unwrap().join("test-output/browser");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let dir = std::env::temp_dir().join(format!("dctap-browser-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("cloud.db");
    let cloud = || Command::new(cloud_bin);

    ok(cloud().args(["sensors", "add", "lab", "--db"]).arg(&db).arg("--key-file").arg(dir.join("key")));
    let (server, ingest, portal) = serve(&db, out.join("tap-cloud.log"));
    let replay = {
        let (sensor_bin, ingest, dir) = (sensor_bin.clone(), ingest.clone(), dir.clone());
        move |pcap: &Path| {
            Command::new(&sensor_bin)
                .arg("--read")
                .arg(pcap)
                .args(["--sensor-id", "lab", "--insecure", "--cloud"])
                .arg(format!("http://{ingest}"))
                .arg("--access-key-file")
                .arg(dir.join("key"))
                .arg("--spool-dir")
                .arg(dir.join("spool"))
                .output()
        }
    };
    for pcap in [&benign, &kerberoasting] {
        let out = replay(pcap).unwrap();
        assert!(out.status.success(), "tap-sensor --read {}: {}", pcap.display(), String::from_utf8_lossy(&out.stderr));
    }
    wait_for_alert(&db, "kerberoasting");
    let password = random_password();
    let pw_file = dir.join("password");
    std::fs::write(&pw_file, &password).unwrap();
    ok(cloud()
        .args(["users", "add", "ana", "--role", "analyst", "--db"])
        .arg(&db)
        .arg("--password-file")
        .arg(&pw_file));
    let loaded = started.elapsed();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/portal.mjs");
    let node_stderr = out.join("node-stderr.log");
    let mut node = Command::new("node")
        .arg(&script)
        .env("DCTAP_URL", &portal)
        .env("DCTAP_USER", "ana")
        .env("DCTAP_PASSWORD", &password)
        .env("DCTAP_OUT", &out)
        .env("DCTAP_ATTACKER", &attack.client_ip)
        .env("DCTAP_ATTACK_SINCE", &since)
        .env("DCTAP_ATTACK_UNTIL", &until)
        .env("DCTAP_PLAYWRIGHT_DIR", &browser.playwright)
        .env("DCTAP_CHROMIUM", &browser.chromium)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&node_stderr).unwrap())
        .spawn()
        .expect("start node");
    // The script's transcript; when it says so, the LDAP reconnaissance capture of the same
    // attacker is replayed while the incidents page is open, for the page to announce.
    let stdout = node.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut transcript = String::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            transcript.push_str(&line);
            transcript.push('\n');
            if line == "waiting for new alerts" {
                match replay(&recon) {
                    Ok(o) if o.status.success() => transcript.push_str("(replayed 05_ldap_recon)\n"),
                    Ok(o) => transcript.push_str(&format!("replay failed: {}\n", String::from_utf8_lossy(&o.stderr))),
                    Err(e) => transcript.push_str(&format!("replay failed: {e}\n")),
                }
            }
        }
        transcript
    });
    // A hung browser must not hang the test suite.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            break node.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let transcript = format!("{}{}", reader.join().unwrap(), std::fs::read_to_string(&node_stderr).unwrap_or_default());
    eprintln!("{transcript}");
    drop(server);
    assert!(status.success(), "{} failed ({status}):\n{transcript}", script.display());

    for name in SCREENSHOTS {
        let file = out.join(format!("{name}.png"));
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let (w, h) = png_size(&bytes).unwrap_or_else(|| panic!("{} is not a PNG", file.display()));
        // A page, not a blank or broken capture: full width, and more than a few KiB of
        // compressed pixels (a blank 1280x860 PNG is under 5 KiB).
        assert!(w >= 1280 && h >= 600, "{}: {w}x{h}", file.display());
        assert!(bytes.len() > 12_000, "{}: only {} bytes, a blank page?", file.display(), bytes.len());
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "{TEST}: passed in {:.1} s ({:.1} s loading the cloud); screenshots and the cloud's log in {}",
        started.elapsed().as_secs_f64(),
        loaded.as_secs_f64(),
        out.display()
    );
}

/// A lab scenario's first and last second (UTC, as the portal writes times), from the
/// labels beside its capture.
fn scenario_seconds(pcap: &Path, key: &str) -> (String, String) {
    let labels: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pcap.with_file_name("labels.json")).unwrap()).unwrap();
    let scenario = labels["scenarios"].as_array().unwrap().iter().find(|s| s["key"] == key).unwrap();
    let utc = |secs: f64| {
        let t = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    };
    let (start, end) = (scenario["start_epoch"].as_f64().unwrap(), scenario["end_epoch"].as_f64().unwrap());
    (utc(start.floor()), utc(end.ceil()))
}

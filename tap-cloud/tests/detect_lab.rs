//! Detections on real traffic: each labelled capture of ../shared/adlab (a Samba AD DC
//! attacked with impacket, MIT Kerberos and OpenLDAP tools) goes through the real sensor
//! and the real cloud, and the alerts must be the ones its label names, from the attacking
//! host, and none at all on the benign capture.

use std::{
    collections::BTreeSet,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tap_testkit::shared::lab_pcaps;

const ATTACKER: &str = "10.77.0.20";

fn sensor_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_tap-cloud")).with_file_name("tap-sensor");
    assert!(bin.exists(), "{} is missing: build it with `cargo build -p tap-user`", bin.display());
    bin
}

fn ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// (detection, source) of every alert the cloud raises for one capture.
fn alerts_for(pcap: &Path) -> BTreeSet<(String, String)> {
    let name = pcap.file_stem().unwrap().to_string_lossy().into_owned();
    let dir = std::env::temp_dir().join(format!("dctap-detect-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cloud = || Command::new(env!("CARGO_BIN_EXE_tap-cloud"));
    let db = dir.join("cloud.db");
    ok(cloud().args(["sensors", "add", "lab", "--db"]).arg(&db).arg("--key-file").arg(dir.join("key")));
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut server = cloud()
        .args(["serve", "--http", "127.0.0.1:0", "--insecure", "--db"])
        .arg(&db)
        .arg("--listen")
        .arg(addr.to_string())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "tap-cloud did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(Command::new(sensor_bin())
        .arg("--read")
        .arg(pcap)
        .args(["--sensor-id", "lab", "--insecure", "--cloud"])
        .arg(format!("http://{addr}"))
        .arg("--access-key-file")
        .arg(dir.join("key"))
        .arg("--spool-dir")
        .arg(dir.join("spool")));
    server.kill().unwrap();
    server.wait().unwrap();
    // Whatever the server's own detection thread had not reached yet.
    ok(cloud().args(["detect", "--db"]).arg(&db));
    let out = ok(cloud().args(["alerts", "--json", "--db"]).arg(&db));
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["detection"].as_str().unwrap().to_string(), v["src_ip"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn each_lab_attack_raises_its_alert_and_benign_traffic_none() {
    let pcaps = lab_pcaps();
    if pcaps.is_empty() {
        eprintln!("SKIPPED each_lab_attack_raises_its_alert_and_benign_traffic_none: ../shared/adlab/pcaps not found");
        return;
    }
    let expected: [(&str, &[&str]); 7] = [
        ("01_normal_logons", &[]),
        ("02_password_spray", &["password_spray", "brute_force"]),
        ("03_kerberoasting", &["kerberoasting"]),
        ("04_asrep_roasting", &["asrep_roasting"]),
        ("05_ldap_recon", &["ldap_recon"]),
        ("06_samr_lsarpc_recon", &["rpc_recon"]),
        ("08_dns", &["dns_zone_transfer"]),
    ];
    let mut failures = Vec::new();
    for (scenario, want) in expected {
        let Some(pcap) = pcaps.iter().find(|p| p.file_stem().is_some_and(|s| s == scenario)) else {
            failures.push(format!("{scenario}: capture missing"));
            continue;
        };
        let got = alerts_for(pcap);
        eprintln!("{scenario}: {got:?}");
        if want.is_empty() && !got.is_empty() {
            failures.push(format!("{scenario} is benign but raised {got:?}"));
        }
        for d in want {
            if !got.contains(&(d.to_string(), ATTACKER.to_string())) {
                failures.push(format!("{scenario}: no {d} alert from {ATTACKER} (got {got:?})"));
            }
        }
        if let Some((d, src)) = got.iter().find(|(_, src)| src != ATTACKER) {
            failures.push(format!("{scenario}: {d} alert from {src}, which attacked nothing"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

//! `cargo xtask demo`, the main job: the project's lab (a Samba AD domain controller and two
//! workstations in network namespaces, the DC's switch port mirrored to the sensor), the
//! real `tap-sensor` on the mirror port with XDP streaming over mTLS to `tap-cloud`, a short
//! attack story run with real tools (benign logons, LDAP reconnaissance, Kerberoasting, a
//! password spray, DCSync), then the incidents the cloud found and its portal on this
//! host's localhost with a sign-in, until Ctrl-C tears everything down.
//!
//! `cargo xtask demo --replay` is the capture-only variant: a capture replayed into a veth
//! SPAN stand-in, what the XDP filter kept and dropped, what the parsers made of it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use tap_testkit::{mix, netns::SpanPair, pcap, sensor::SensorProcess};

use crate::{
    lab::{default_state, ensure_installed, Lab},
    setup::Env,
    util::{note, step},
};

/// The attack story, in order: lab scenario keys (lab/lib/scenarios.sh) and what they show.
const STORY: [(&str, &str); 5] = [
    ("01_normal_logons", "a morning of ordinary work: logons, service tickets, SMB, LDAP, DNS (nothing to detect)"),
    ("05_ldap_recon", "reconnaissance: the attacker on WS01 enumerates users, groups, admins and SPNs over LDAP"),
    ("03_kerberoasting", "credential theft: RC4 service tickets for the SQL service account (Kerberoasting)"),
    ("02_password_spray", "credential theft: a password spray and brute force over Kerberos and NTLM"),
    ("08_dcsync", "domain dominance: the krbtgt keys replicated out of the DC (DCSync)"),
];

/// Runs the lab down when dropped: the demo leaves nothing behind, on success, on error
/// and on Ctrl-C (whose SIGINT also reaches the lab's own processes).
struct Teardown<'a> {
    lab: &'a Lab,
    portal: Option<std::process::Child>,
}

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        step("tear down: portal, sensor, cloud, domain controller, namespaces");
        if let Some(mut p) = self.portal.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        if let Err(e) = self.lab.run(&["down"]) {
            note(&format!("lab down: {e:#}"));
        }
    }
}

/// A free local port, preferring `wanted`.
fn free_port(wanted: u16) -> anyhow::Result<u16> {
    if std::net::TcpListener::bind(("127.0.0.1", wanted)).is_ok() {
        return Ok(wanted);
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A fresh analyst, its password readable by root only in `dir`.
fn add_analyst(cloud_bin: &Path, db: &Path, dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    let mut raw = [0u8; 12];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut raw)?;
    let password: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let pw_file = dir.join("demo-password");
    std::fs::write(&pw_file, &password)?;
    std::fs::set_permissions(&pw_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let out = std::process::Command::new(cloud_bin)
        .args(["users", "add", "demo", "--role", "analyst", "--db"])
        .arg(db)
        .arg("--password-file")
        .arg(&pw_file)
        .output()?;
    if !out.status.success() {
        anyhow::bail!("tap-cloud users add: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((password, pw_file))
}

/// Waits until no alert's pcap excerpt is still waiting for the sensor, or `longest`.
fn wait_for_excerpts(cloud_bin: &Path, db: &Path, longest: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + longest;
    loop {
        let out = std::process::Command::new(cloud_bin).args(["alerts", "--db"]).arg(db).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let waiting = text.lines().filter(|l| l.contains("pcap waiting")).count();
        if waiting == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            println!("    {waiting} excerpts still on their way; the portal shows them when they arrive");
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn print_cloud_lists(cloud_bin: &Path, db: &Path) -> anyhow::Result<()> {
    for what in ["incidents", "alerts"] {
        let out = std::process::Command::new(cloud_bin).args([what, "--db"]).arg(db).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        println!("    {what}:");
        if text.trim().is_empty() {
            println!("      (none)");
        }
        for line in text.lines() {
            println!("      {line}");
        }
    }
    Ok(())
}

/// `cargo xtask demo`: the lab story (module docs). `wait`: keep the portal up until Ctrl-C.
pub fn run(env: &Env, wait: bool) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
    let started = Instant::now();
    step("lab set-up: Samba, Kerberos and LDAP tools, impacket (skipped when present)");
    ensure_installed()?;
    step("build the sensor and the cloud (release)");
    env.cargo().args(["build", "--release", "-p", "tap-user", "-p", "tap-cloud"]).run()?;
    let release = env.root.join("target/release");
    let lab = Lab::new(env, default_state(env), release.clone());
    // A lab left up by `cargo xtask lab up` goes down first: the demo starts clean.
    let _ = lab.run(&["down"]);
    let mut teardown = Teardown { lab: &lab, portal: None };
    step("the domain: namespaces, the DC's port mirrored (tc mirred), Samba AD DC dc1.dctap.test, two workstations");
    lab.run(&["up"])?;
    step("dctap: tap-cloud (mTLS ingest, SQLite) and tap-sensor with XDP on the mirror port");
    lab.run(&["tap-up", "--fresh"])?;
    for (key, what) in STORY {
        if stop.load(Ordering::Relaxed) {
            anyhow::bail!("interrupted");
        }
        step(what);
        lab.run(&["scenarios", key])?;
    }
    // The last events through the uplink, and the detections after them: the cloud holds
    // the last second of events until the sensor has been silent for 3 s (the lab's
    // allowed_lateness_secs and sensor_idle_secs).
    std::thread::sleep(Duration::from_secs(5));
    let cloud_bin = lab.cloud();
    let db = lab.db();
    step(
        "the evidence: the sensor cuts each alert's conversation out of its evidence files (a few per 10 s heartbeat)",
    );
    wait_for_excerpts(&cloud_bin, &db, Duration::from_secs(45))?;
    step("what the cloud found");
    print_cloud_lists(&cloud_bin, &db)?;
    step("the sensor's counters (SIGTERM makes it detach and report)");
    lab.run(&["tap-down"])?;
    let log = lab.state.join("logs/tap-sensor.log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    for line in text.lines().filter(|l| {
        ["xdp_seen", "xdp_kept", "xdp_filtered", "parse_events", "uplink_events_acked", "flow_created"]
            .iter()
            .any(|k| l.starts_with(k))
    }) {
        println!("    {line}");
    }
    step("the portal, on this host");
    let (password, pw_file) = add_analyst(&cloud_bin, &db, &lab.state)?;
    let http = free_port(8080)?;
    let ingest = free_port(7444)?;
    let portal = std::process::Command::new(&cloud_bin)
        .args(["serve", "--insecure", "--listen", &format!("127.0.0.1:{ingest}"), "--http"])
        .arg(format!("127.0.0.1:{http}"))
        .arg("--db")
        .arg(&db)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(lab.state.join("logs/portal.log"))?)
        .spawn()?;
    teardown.portal = Some(portal);
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        if Instant::now() > deadline {
            anyhow::bail!("the portal did not start; see {}", lab.state.join("logs/portal.log").display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("\n    The demo took {:.0} s.", started.elapsed().as_secs_f64());
    println!("    Portal: http://127.0.0.1:{http}   sign in as demo / {password}  (also in {})", pw_file.display());
    if !wait {
        return Ok(());
    }
    println!("    Ctrl-C tears the demo down.");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The lab DC of ../shared/adlab (labels.json).
const LAB_DC: &str = "10.77.0.10";
/// Replay rate: a busy DC's worth of traffic, slow enough to watch.
const DEMO_PPS: u32 = 20_000;

/// The built-in capture: the generated labelled mix (every tagging and breakage the filter
/// handles) followed by the real AD traffic of the lab captures when ../shared is present.
fn build_default_capture(out: &Path) -> anyhow::Result<()> {
    let generated: Vec<Vec<u8>> = mix::mix(40).into_iter().map(|l| l.frame).collect();
    note(&format!(
        "generated mix: {} frames (DC and non-DC traffic, VLAN/QinQ, IPv6, fragments, malformed)",
        generated.len()
    ));
    let mut frames = generated;
    let lab = tap_testkit::shared::lab_pcaps();
    if lab.is_empty() {
        note("../shared/adlab/pcaps not found: replaying the generated mix only");
    }
    for file in &lab {
        let got = pcap::read(file)?;
        note(&format!("lab capture {}: {} frames", file.file_name().unwrap_or_default().to_string_lossy(), got.len()));
        frames.extend(got.into_iter().map(|f| f.data));
    }
    pcap::write(out, &frames, Duration::from_secs(1_795_000_000))
}

fn service_name(port: u16) -> Option<&'static str> {
    Some(match port {
        88 => "kerberos",
        464 => "kpasswd",
        389 => "ldap",
        636 => "ldaps",
        3268 => "global-catalog",
        3269 => "global-catalog-tls",
        445 => "smb",
        139 => "netbios-ssn",
        135 => "rpc-epmap",
        53 => "dns",
        137 => "netbios-ns",
        123 => "ntp",
        _ => return None,
    })
}

/// Kept frames by the service they belong to (the well-known port of either end).
fn kept_by_service(kept: &[pcap::PcapFrame]) -> BTreeMap<&'static str, u64> {
    let mut by = BTreeMap::new();
    for f in kept {
        let label = match SlicedPacket::from_ethernet(&f.data) {
            Ok(p) => match (&p.net, &p.transport) {
                (_, Some(TransportSlice::Tcp(t))) => {
                    service_name(t.destination_port()).or(service_name(t.source_port()))
                }
                (_, Some(TransportSlice::Udp(u))) => {
                    service_name(u.destination_port()).or(service_name(u.source_port()))
                }
                (Some(NetSlice::Ipv4(_)) | Some(NetSlice::Ipv6(_)), _) => Some("ip fragment (no ports)"),
                _ => None,
            },
            Err(_) => None,
        };
        *by.entry(label.unwrap_or("other")).or_insert(0) += 1;
    }
    by
}

/// The cloud, killed when the demo ends however it ends (Ctrl-C included: the process group
/// gets the signal).
struct Cloud(std::process::Child);

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CLOUD_ADDR: &str = "127.0.0.1:7443";
const SENSOR_ID: &str = "demo-sensor";

/// Certificates, the sensor's key and an empty database in `dir`, then `tap-cloud serve`
/// inside the mirror namespace (so the sensor reaches it on that namespace's loopback).
fn start_cloud(cloud_bin: &Path, pair: &SpanPair, dir: &Path) -> anyhow::Result<Cloud> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let ok = |cmd: &mut std::process::Command| -> anyhow::Result<()> {
        let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
        if !out.status.success() {
            anyhow::bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    ok(std::process::Command::new(cloud_bin)
        .args(["certs", "init", "--sensor", SENSOR_ID, "--dir"])
        .arg(dir.join("pki")))?;
    ok(std::process::Command::new(cloud_bin)
        .args(["sensors", "add", SENSOR_ID, "--db"])
        .arg(dir.join("cloud.db"))
        .arg("--key-file")
        .arg(dir.join("sensor.key")))?;
    ok(std::process::Command::new("ip").args(["-n", &pair.mirror_ns, "link", "set", "lo", "up"]))?;
    let log = std::fs::File::create(dir.join("cloud.log"))?;
    let child = SpanPair::command_in(&pair.mirror_ns, cloud_bin)
        .args(["serve", "--listen", CLOUD_ADDR, "--db"])
        .arg(dir.join("cloud.db"))
        .arg("--tls-dir")
        .arg(dir.join("pki"))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()?;
    let cloud = Cloud(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(dir.join("cloud.log")).unwrap_or_default();
        if text.contains("ingest listening") {
            return Ok(cloud);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("tap-cloud did not start: {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `cargo xtask demo --replay`: a capture through the XDP filter on a veth SPAN stand-in.
pub fn replay(env: &Env, pcap_arg: Option<PathBuf>, dc_arg: Option<String>) -> anyhow::Result<()> {
    step("build the sensor and the cloud (release)");
    env.cargo().args(["build", "--release", "-p", "tap-user", "-p", "tap-cloud"]).run()?;
    let sensor_bin = env.root.join("target/release/tap-sensor");
    let cloud_bin = env.root.join("target/release/tap-cloud");
    let work = env.root.join("target/demo");
    std::fs::create_dir_all(&work)?;

    step("capture to replay");
    let input = match pcap_arg {
        Some(p) => {
            note(&format!("using {}", p.display()));
            p
        }
        None => {
            let p = work.join("demo-input.pcap");
            build_default_capture(&p)?;
            p
        }
    };
    let input_frames = pcap::read(&input)?.len();
    let dcs = dc_arg.unwrap_or_else(|| format!("{},{LAB_DC}", mix::DC_ARGS));

    step("SPAN port stand-in: veth pair between namespaces, sensor on the mirror end");
    let pair = SpanPair::create("demo")?;
    note(&format!("generator namespace {} -> mirror namespace {}", pair.gen_ns, pair.mirror_ns));
    let kept_path = work.join("kept.pcap");
    let cloud_dir = work.join("cloud");
    let cloud = start_cloud(&cloud_bin, &pair, &cloud_dir)?;
    note(&format!(
        "tap-cloud serving mTLS ingest on {CLOUD_ADDR} in {}, database {}",
        pair.mirror_ns,
        cloud_dir.join("cloud.db").display()
    ));
    let path = |p: PathBuf| p.display().to_string();
    let spool = work.join("spool");
    let _ = std::fs::remove_dir_all(&spool);
    let args = [
        "--dc".to_string(),
        dcs.clone(),
        "--write".into(),
        path(kept_path.clone()),
        "--sensor-id".into(),
        SENSOR_ID.into(),
        "--cloud".into(),
        format!("https://{CLOUD_ADDR}"),
        "--tls-ca".into(),
        path(cloud_dir.join("pki/ca.pem")),
        "--tls-cert".into(),
        path(cloud_dir.join(format!("pki/sensor-{SENSOR_ID}.pem"))),
        "--tls-key".into(),
        path(cloud_dir.join(format!("pki/sensor-{SENSOR_ID}.key"))),
        "--access-key-file".into(),
        path(cloud_dir.join("sensor.key")),
        "--spool-dir".into(),
        path(spool),
    ];
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let sensor = SensorProcess::start(&sensor_bin, &pair, &arg_refs)?;
    note(&format!("{} (watching {dcs}, events to the cloud)", sensor.output.last().map(String::as_str).unwrap_or("")));

    step(&format!("replaying {input_frames} frames at {DEMO_PPS} frames/s"));
    let sent = pair.replay(&input, Some(DEMO_PPS), 1)?;
    note(&format!("tcpreplay sent {sent} frames"));
    std::thread::sleep(Duration::from_millis(300));
    let counters = sensor.stop()?;

    step("sensor counters (XDP program and userspace readers)");
    let mut names: Vec<&String> = counters.0.keys().collect();
    names.sort();
    for (label, name) in [
        ("frames seen on the mirror port", "xdp_seen"),
        ("kept (DC traffic on a service port)", "xdp_kept"),
        ("dropped: not DC service traffic", "xdp_filtered"),
        ("dropped: malformed headers", "xdp_malformed"),
        ("lost: ring buffer full", "xdp_ring_full"),
        ("kept but cut to the snap length", "xdp_truncated"),
        ("read by the sensor from the rings", "user_frames_read"),
        ("lost: consumer channel full", "user_frames_channel_full"),
        ("written to kept.pcap", "user_frames_consumed"),
    ] {
        println!("    {label:<40}{:>10}", counters.get(name));
    }

    step("what the parsers made of it");
    for (label, name) in [
        ("activity events", "parse_events"),
        ("Kerberos messages to the KDC", "parse_kerberos_messages"),
        ("Kerberos AP-REQs in SMB/LDAP/RPC", "parse_kerberos_ap_reqs"),
        ("NTLM messages", "parse_ntlm_messages"),
        ("LDAP messages", "parse_ldap_messages"),
        ("SMB messages", "parse_smb2_messages"),
        ("DCE/RPC PDUs", "parse_dcerpc_pdus"),
        ("DNS messages", "parse_dns_messages"),
        ("conversations (TCP and UDP)", "flow_created"),
        ("events acknowledged by the cloud", "uplink_events_acked"),
    ] {
        println!("    {label:<40}{:>10}", counters.0.get(name).copied().unwrap_or(0));
    }

    step("kept frames by service");
    let kept = pcap::read(&kept_path)?;
    for (service, n) in kept_by_service(&kept) {
        println!("    {service:<40}{n:>10}");
    }
    note(&format!("kept frames are in {}", kept_path.display()));

    step("what the cloud detected");
    // The cloud's detection thread follows the store every half second.
    std::thread::sleep(Duration::from_millis(1500));
    let db = cloud_dir.join("cloud.db");
    print_cloud_lists(&cloud_bin, &db)?;
    drop(cloud);

    step("the portal");
    let (password, pw_file) = add_analyst(&cloud_bin, &db, &cloud_dir)?;
    println!("    to browse these incidents, run the cloud on this host and open http://127.0.0.1:8080");
    println!(
        "      {} serve --insecure --listen 127.0.0.1:7444 --http 127.0.0.1:8080 --db {}",
        cloud_bin.display(),
        db.display()
    );
    println!("    and sign in as demo / {password}  (also in {})", pw_file.display());
    Ok(())
}

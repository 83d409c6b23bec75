//! What the appliance runs: the systemd units pass `systemd-analyze verify`, the sample
//! configuration is valid, a configuration file sets options the command line can override,
//! a bad key or value stops the sensor naming it, and under systemd's notify protocol the
//! sensor says READY=1 only once attached, then feeds the watchdog holding no capability,
//! and SIGHUP applies a changed configuration (DCs, ports, log level) without losing a flow.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use tap_testkit::netns::{live_or_skip, SpanPair};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dctap-deploy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let tool_present = Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success());
    if !tap_testkit::skip::unless_missing(
        "systemd_units_pass_systemd_analyze_verify",
        (!tool_present).then(|| "systemd-analyze (Debian package systemd) is not installed".into()),
    ) {
        return;
    }
    // verify also checks that ExecStart exists: point it at the binaries just built.
    let dir = temp("units");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_tap-sensor")).parent().unwrap().to_path_buf();
    let mut units = Vec::new();
    for unit in ["tap-sensor.service", "tap-cloud.service"] {
        let text = std::fs::read_to_string(root().join("deploy/systemd").join(unit)).unwrap();
        let text = text.replace("/usr/bin/", &format!("{}/", bin_dir.display()));
        std::fs::write(dir.join(unit), text).unwrap();
        units.push(dir.join(unit));
    }
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).args(&units).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

fn sensor() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tap-sensor"))
}

#[test]
fn the_sample_configuration_is_valid_and_the_command_line_overrides_it() {
    let sample = root().join("deploy/sensor.toml");
    let text = std::fs::read_to_string(&sample).unwrap();
    let file = tap_user::config::SensorFile::parse(&text, &sample).unwrap();
    assert_eq!(file.capture.as_ref().and_then(|c| c.iface.as_deref()), Some("ens5"));

    // A file that sets the sensor id, with --read so nothing needs root.
    let dir = temp("config");
    let pcap = dir.join("in.pcap");
    let frames = tap_testkit::mix::mix(1).into_iter().map(|l| l.frame).collect::<Vec<_>>();
    tap_testkit::pcap::write(&pcap, &frames, Duration::from_secs(1_795_000_000)).unwrap();
    let config = dir.join("sensor.toml");
    std::fs::write(&config, "sensor_id = \"from-file\"\nworkers = 1\n").unwrap();
    let events = |extra: &[&str]| -> String {
        let out =
            sensor().arg("--config").arg(&config).arg("--read").arg(&pcap).arg("--json").args(extra).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let from_file = events(&[]);
    assert!(!from_file.is_empty() && from_file.lines().all(|l| l.contains("\"sensor_id\":\"from-file\"")));
    assert!(events(&["--sensor-id", "from-flag"]).lines().all(|l| l.contains("\"sensor_id\":\"from-flag\"")));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_bad_configuration_stops_the_sensor_naming_the_key() {
    let dir = temp("bad");
    let cases = [
        ("snaplenn = 96\n", "snaplenn"),
        ("[capture]\nsnaplen = \"all\"\n", "snaplen"),
        ("spool_max_mb = -1\n", "spool_max_mb"),
        ("[capture]\nxdp_mode = \"turbo\"\n", "turbo"),
        ("[capture]\ndc = [\"10.0.0.300\"]\n", "10.0.0.300"),
    ];
    for (text, named) in cases {
        let config = dir.join("sensor.toml");
        std::fs::write(&config, text).unwrap();
        let out = sensor()
            .arg("--config")
            .arg(&config)
            // An interface that does not exist: whatever the outcome, nothing is attached to
            // a real one (an XDP filter on this host's loopback would drop its traffic).
            .args(["capture", "--iface", "dctap-none0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} was accepted");
        assert!(stderr.contains(named), "{text:?}: the message does not name {named}: {stderr}");
    }
    let out = sensor().args(["--config", "/nonexistent/sensor.toml", "--read", "x.pcap"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sensor.toml"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn under_systemd_the_sensor_is_ready_only_once_attached_and_feeds_the_watchdog() {
    if !live_or_skip("under_systemd_the_sensor_is_ready_only_once_attached_and_feeds_the_watchdog") {
        return;
    }
    let dir = temp("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let pair = SpanPair::create("notify").unwrap();
    assert!(Command::new("ip").args(["-n", &pair.mirror_ns, "link", "set", "lo", "up"]).status().unwrap().success());
    let mut child = SpanPair::command_in(&pair.mirror_ns, env!("CARGO_BIN_EXE_tap-sensor"))
        .args(["capture", "--iface", tap_testkit::netns::MIRROR_IF, "--dc", "10.0.0.10", "--ring-mib", "1"])
        .args(["--metrics", "127.0.0.1:9100", "--dc-silence-alert", "1"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Drained all the time, as systemd does: a datagram queue left full would block the
    // sensor's notify calls.
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = std::sync::Arc::clone(&received);
    let reader_socket = socket.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        loop {
            match reader_socket.recv(&mut buf) {
                Ok(n) => sink.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = received.lock().unwrap().clone();
        if m.iter().any(|m| m.contains("READY=1")) && m.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no READY=1 and watchdog in 30 s: {m:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Attached, the sensor holds no capability, in any of its threads.
    let pid = child.id();
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten().collect();
    assert!(tasks.len() > 3, "reader, dispatch and worker threads run");
    for task in tasks {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap();
        for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            let line = status.lines().find(|l| l.starts_with(set)).unwrap();
            assert!(line.ends_with("0000000000000000"), "thread {:?} still holds {line}", task.file_name());
        }
    }
    // The counters are on the metrics address too (published once a second).
    std::thread::sleep(Duration::from_millis(1200));
    let scrape = SpanPair::command_in(&pair.mirror_ns, "bash")
        .args(["-c", "exec 3<>/dev/tcp/127.0.0.1/9100; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&scrape.stdout);
    assert!(page.contains("# TYPE dctap_sensor_xdp_seen counter") && page.contains("dctap_sensor_flow_open"), "{page}");
    assert!(!page.contains("health_alert_capture_interface_down"), "{page}");
    // The mirror port goes down: the health alert says so.
    let down =
        Command::new("ip").args(["-n", &pair.mirror_ns, "link", "set", tap_testkit::netns::MIRROR_IF, "down"]).status();
    assert!(down.unwrap().success());
    std::thread::sleep(Duration::from_millis(1500));
    let scrape = SpanPair::command_in(&pair.mirror_ns, "bash")
        .args(["-c", "exec 3<>/dev/tcp/127.0.0.1/9100; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&scrape.stdout);
    assert!(page.contains("dctap_sensor_health_alert_capture_interface_down 1"), "{page}");
    // The DC sent nothing for longer than --dc-silence-alert.
    assert!(page.contains("dctap_sensor_health_alert_no_traffic_from_dc_10_0_0_10 1"), "{page}");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let messages = received.lock().unwrap().clone();
    let ready = messages.iter().position(|m| m.contains("READY=1")).expect("READY=1 sent");
    assert!(messages[ready].contains("STATUS=capturing on"), "{messages:?}");
    assert!(messages[ready..].iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2, "{messages:?}");
    assert!(!messages[..ready].iter().any(|m| m.contains("WATCHDOG=1")), "watchdog before ready: {messages:?}");
    assert!(messages.iter().any(|m| m.contains("STOPPING=1")), "{messages:?}");
    assert!(status.success(), "{status}");
    drop(pair);
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGHUP while three conversations flow: the DC list, the service ports and the log level
/// change from the configuration file; the conversation that was kept all along stays one
/// flow with every frame, the two the change brings in start being kept.
#[test]
fn a_reload_applies_the_new_configuration_without_losing_a_flow() {
    if !live_or_skip("a_reload_applies_the_new_configuration_without_losing_a_flow") {
        return;
    }
    use tap_testkit::frame::{self, Tags, L4};
    let dir = temp("reload");
    let client = "10.1.0.5".parse().unwrap();
    let (dc_a, dc_b) = ("10.0.0.10".parse().unwrap(), "10.0.0.11".parse().unwrap());
    // A: to a DC on a service port (kept throughout); B: to a DC the reload adds; C: to the
    // first DC on a port the reload adds (ADWS).
    let conversations = [(dc_a, 40000, 88), (dc_b, 40001, 389), (dc_a, 40002, 9389)];
    let frames: Vec<Vec<u8>> = (0..2400u32)
        .map(|i| {
            let (dc, src, dst) = conversations[(i % 3) as usize];
            frame::ipv4(Tags::None, client, dc, L4::Tcp { src, dst }, 64, i)
        })
        .collect();
    let input = dir.join("input.pcap");
    tap_testkit::pcap::write(&input, &frames, Duration::from_secs(1_700_000_000)).unwrap();
    let config = dir.join("sensor.toml");
    let write_config = |dcs: &str, ports: &str, level: &str| {
        let text = format!("log_level = \"{level}\"\n[capture]\ndc = [{dcs}]\nports = [{ports}]\n");
        std::fs::write(&config, text).unwrap();
    };
    write_config("\"10.0.0.10\"", "88, 389", "warn");
    let kept = dir.join("kept.pcap");
    let stderr = dir.join("stderr.log");
    let pair = SpanPair::create("reload").unwrap();
    let mut child = SpanPair::command_in(&pair.mirror_ns, env!("CARGO_BIN_EXE_tap-sensor"))
        .args(["--config", config.to_str().unwrap(), "--workers", "1", "capture"])
        .args(["--iface", tap_testkit::netns::MIRROR_IF, "--ring-mib", "1", "--write", kept.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("ready:") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0, "sensor exited before ready");
    }
    // 2400 frames at 1500 pps: 1.6 s, the reload about half-way.
    let replay = {
        let (input, gen_ns) = (input.clone(), pair.gen_ns.clone());
        std::thread::spawn(move || {
            let out = SpanPair::command_in(&gen_ns, "tcpreplay")
                .args(["-i", tap_testkit::netns::GEN_IF, "--pps=1500"])
                .arg(&input)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    write_config("\"10.0.0.10\", \"10.0.0.11\"", "88, 389, 9389", "info");
    assert!(Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap().success());
    replay.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let mut report = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut report).unwrap();
    assert!(child.wait().unwrap().success(), "{report}");
    let counters = tap_testkit::sensor::Counters::parse(&report.lines().map(String::from).collect::<Vec<_>>());
    let log = std::fs::read_to_string(&stderr).unwrap();

    let written = tap_testkit::pcap::read(&kept).unwrap();
    let count = |dst: [u8; 4], port: u16| {
        written.iter().filter(|f| f.data[30..34] == dst && f.data[36..38] == port.to_be_bytes()).count()
    };
    assert_eq!(count([10, 0, 0, 10], 88), 800, "every frame of the conversation kept all along");
    let (b, c) = (count([10, 0, 0, 11], 389), count([10, 0, 0, 10], 9389));
    assert!(b > 100 && b < 800, "the new DC's conversation kept from the reload on: {b}");
    assert!(c > 100 && c < 800, "the new port's conversation kept from the reload on: {c}");
    assert_eq!(written.len(), 800 + b + c);
    // One flow each: the reload closed nothing.
    assert_eq!(counters.get("flow_created"), 3, "{report}");
    assert_eq!(counters.get("flow_evicted") + counters.get("flow_idle_timeout"), 0, "{report}");
    // At "warn" the start-up info lines were not logged; from the reload on, at "info", they are.
    assert!(!log.contains("watching 1 DC entries"), "{log}");
    assert!(log.contains("log level now INFO") || log.contains("log level now info"), "{log}");
    assert!(log.contains("DC list reloaded: 2 entries (+1 -0)"), "{log}");
    assert!(log.contains("service ports reloaded: 88,389,9389"), "{log}");
    drop(pair);
    let _ = std::fs::remove_dir_all(dir);
}

//! `bench uplink`: events from `tap-sensor --read` through the spool and gRPC (mTLS) into
//! `tap-cloud`'s SQLite store on loopback. Three runs on the 100 MB lab-derived capture:
//! the pipeline alone writing JSON to /dev/null (the rate events are produced at, the peer),
//! the uplink unpaced (the most it sustains), and the uplink with the file fed at a pace
//! that offers about 50,000 events/s (latency from spooling to durable storage, p50/p99,
//! from the cloud's own timestamps).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    bench::{release_sensor, timed},
    setup::Env,
    util::{note, step},
};

const CAPTURE_MB: u32 = 100;
const OFFERED_EVENTS_PER_S: f64 = 50_000.0;

/// The 100 MB lab-derived capture (make_big.py --target-mb 100 --seed 1), built once.
pub(crate) fn capture(env: &Env, work: &Path) -> anyhow::Result<PathBuf> {
    let tool = env.root.join("../shared/adlab/tools/make_big.py");
    let out = work.join(format!("uplink-{CAPTURE_MB}mb.pcap"));
    if out.exists() {
        note(&format!("capture: {} (already built)", out.display()));
        return Ok(out);
    }
    if !tool.exists() {
        bail!("{} not found: bench uplink builds its capture from ../shared/adlab", tool.display());
    }
    note(&format!("capture: building {} with make_big.py", out.display()));
    let tmp = out.with_extension("tmp");
    env.command("python3")
        .arg(&tool)
        .arg("--out")
        .arg(&tmp)
        .args(["--target-mb", &CAPTURE_MB.to_string(), "--seed", "1"])
        .run()
        .context("make_big.py")?;
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// `tap-cloud serve` with mTLS and a fresh database, and one registered sensor "bench".
pub(crate) struct Cloud {
    pub(crate) child: Child,
    pub(crate) dir: PathBuf,
}

impl Cloud {
    /// On this host, listening on `addr`.
    fn start(bin: &Path, dir: &Path, addr: &str) -> anyhow::Result<Self> {
        Self::start_in(bin, dir, addr, None)
    }

    /// In network namespace `ns` (on its loopback) when given, else on this host; returns
    /// once it listens.
    pub(crate) fn start_in(bin: &Path, dir: &Path, addr: &str, ns: Option<&str>) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let db = dir.join("cloud.db");
        let ok = |out: std::process::Output| -> anyhow::Result<()> {
            if !out.status.success() {
                bail!("tap-cloud: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        ok(std::process::Command::new(bin)
            .args(["certs", "init", "--sensor", "bench", "--dir"])
            .arg(dir.join("certs"))
            .output()?)?;
        ok(std::process::Command::new(bin)
            .args(["sensors", "add", "bench", "--db"])
            .arg(&db)
            .arg("--key-file")
            .arg(dir.join("bench.key"))
            .output()?)?;
        let mut cmd = match ns {
            Some(ns) => {
                ok(std::process::Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]).output()?)?;
                tap_testkit::netns::SpanPair::command_in(ns, bin)
            }
            None => std::process::Command::new(bin),
        };
        let log = dir.join("cloud.log");
        let child = cmd
            .args(["serve", "--http", "127.0.0.1:0", "--listen", addr, "--db"])
            .arg(&db)
            .arg("--tls-dir")
            .arg(dir.join("certs"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        // The log line, not a connection: it works from outside the namespace too.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("ingest listening") {
            if Instant::now() > deadline {
                bail!("tap-cloud did not listen on {addr}; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, dir: dir.to_path_buf() })
    }

    /// The arguments of a sensor "bench" streaming to this cloud at `addr`.
    pub(crate) fn sensor_args(&self, addr: &str) -> Vec<String> {
        let d = |p: &str| self.dir.join(p).display().to_string();
        vec![
            "--sensor-id".into(),
            "bench".into(),
            "--cloud".into(),
            format!("https://{addr}"),
            "--tls-ca".into(),
            d("certs/ca.pem"),
            "--tls-cert".into(),
            d("certs/sensor-bench.pem"),
            "--tls-key".into(),
            d("certs/sensor-bench.key"),
            "--access-key-file".into(),
            d("bench.key"),
            "--spool-dir".into(),
            d("spool"),
        ]
    }

    /// (events, seconds from first spooled to last stored, p50 ms, p99 ms, cloud CPU s)
    fn finish(mut self, bin: &Path) -> anyhow::Result<(f64, f64, f64, f64, f64)> {
        let cpu = tap_testkit::sensor::process_cpu_time(self.child.id()).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let out = std::process::Command::new(bin)
            .args(["events", "stats", "--db"])
            .arg(self.dir.join("cloud.db"))
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("events stats output")?;
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        Ok((f("events"), f("first_spooled_to_last_stored_s"), f("latency_ms_p50"), f("latency_ms_p99"), cpu))
    }
}

pub fn run(env: &Env) -> anyhow::Result<()> {
    let (sensor, work) = release_sensor(env)?;
    step("build tap-cloud (release)");
    env.cargo().args(["build", "--release", "-p", "tap-cloud"]).run()?;
    let cloud_bin = env.root.join("target/release/tap-cloud");
    let pcap = capture(env, &work)?;
    let pcap_s = pcap.to_str().context("path")?;
    let addr = "127.0.0.1:7499";

    step("peer: tap-sensor --read --json > /dev/null (how fast events are produced)");
    let script = format!("{} --read {pcap_s} --json > /dev/null", sensor.display());
    let peer = timed(env, "sh", &["-c", &script])?;
    let c = peer.counters();
    let (events, bytes) = (c.get("parse_events") as f64, c.get("read_bytes") as f64);
    note(&format!("{}, {events} events", peer.summary()));

    let mut rows = Vec::new();
    for (label, pace) in [
        ("unpaced: as fast as the file reads", None),
        ("paced to offer ~50,000 events/s", Some(OFFERED_EVENTS_PER_S / events * bytes * 8.0 / 1e6)),
    ] {
        step(&format!("uplink, mTLS + SQLite, {label}"));
        let cloud = Cloud::start(&cloud_bin, &work.join("uplink-run"), addr)?;
        let mut args: Vec<String> = vec!["--read".into(), pcap_s.into()];
        args.extend(cloud.sensor_args(addr));
        if let Some(mbps) = pace {
            args.extend(["--read-mbps".into(), format!("{mbps:.1}")]);
        }
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = timed(env, sensor.to_str().context("path")?, &arg_refs)?;
        let acked = run.counters().get("uplink_events_acked") as f64;
        let (stored, span, p50, p99, cloud_cpu) = cloud.finish(&cloud_bin)?;
        if stored != events || acked != events {
            bail!("{label}: the cloud stored {stored} and acknowledged {acked} of {events} events");
        }
        note(&format!(
            "{}; cloud {cloud_cpu:.2} s CPU; {:.0} events/s; p50 {p50:.0} ms, p99 {p99:.0} ms",
            run.summary(),
            stored / span
        ));
        rows.push((label, run, stored / span, p50, p99, cloud_cpu));
    }

    let mut s = String::new();
    let _ = writeln!(
        s,
        "Capture: {} ({:.0} MB, {events} events)\n",
        pcap.file_name().unwrap_or_default().to_string_lossy(),
        bytes / 1e6
    );
    let _ = writeln!(
        s,
        "| run | events/s into the store | latency p50 (ms) | latency p99 (ms) | sensor CPU (s) | cloud CPU (s) |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
    let _ = writeln!(
        s,
        "| peer: pipeline to JSON on /dev/null | {:.0} (produced) | - | - | {:.2} | - |",
        events / peer.wall,
        peer.cpu
    );
    for (label, run, rate, p50, p99, cloud_cpu) in &rows {
        let _ = writeln!(s, "| uplink, {label} | {rate:.0} | {p50:.0} | {p99:.0} | {:.2} | {cloud_cpu:.2} |", run.cpu);
    }
    let _ = writeln!(s, "\nUnpaced uplink rate / production rate: {:.2}", rows[0].2 / (events / peer.wall));
    println!("\n{s}");
    let out = work.join("uplink.md");
    std::fs::write(&out, &s)?;
    note(&format!("written to {}", out.display()));
    Ok(())
}

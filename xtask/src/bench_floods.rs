//! `bench floods`: the sensor's peak memory under the floods an attacker on the mirrored
//! segment can send (tap_testkit::flood), read from files with default settings and the
//! parsers on, against the same sensor reading an ordinary lab capture in the same run.
//! The bound to hold: 256 MiB on every flood. Writes docs/bench-floods.md.

use std::{fmt::Write as _, net::Ipv4Addr, time::Duration};

use anyhow::Context as _;
use tap_testkit::flood::Flood;

use crate::{
    bench::{release_sensor, timed},
    setup::Env,
    util::{note, step},
};

/// Connections (or datagrams) per flood: the size of the floods that broke the bound.
const CONNECTIONS: u32 = 300_000;
/// What the sensor must stay under, whatever the flood.
const BOUND_MIB: u64 = 256;

pub fn run(env: &Env) -> anyhow::Result<()> {
    let (sensor, work) = release_sensor(env)?;
    let sensor_s = sensor.to_str().context("path")?;
    let dc = Ipv4Addr::new(10, 78, 0, 10);
    let baseline = env.root.join("lab/pcaps/01_normal_logons.pcap");
    step("the sensor on an ordinary lab capture (the peer)");
    let peer = timed(env, sensor_s, &["--read", baseline.to_str().context("path")?])?;
    note(&peer.summary());
    let mut rows = Vec::new();
    for flood in Flood::ALL {
        let path = work.join(format!("flood-{}-{CONNECTIONS}.pcap", flood.name()));
        if !path.exists() {
            step(&format!("write the {} flood ({CONNECTIONS} connections)", flood.name()));
            let tmp = path.with_extension("tmp");
            flood.write(&tmp, dc, CONNECTIONS, Duration::from_secs(1_796_000_000))?;
            std::fs::rename(&tmp, &path)?;
        }
        step(&format!("tap-sensor --read, the {} flood", flood.name()));
        let t = timed(env, sensor_s, &["--read", path.to_str().context("path")?])?;
        note(&t.summary());
        rows.push((flood, std::fs::metadata(&path)?.len(), t));
    }

    let mut s = String::new();
    let _ = writeln!(s, "# Floods: the sensor's memory\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench floods`. Each flood ({CONNECTIONS} connections or datagrams, from \
         `tap_testkit::flood`) is read with `tap-sensor --read FILE`: default settings, every parser on, one \
         worker per CPU, under GNU `time -v`. The peer is the same sensor reading \
         `lab/pcaps/01_normal_logons.pcap` in the same run. The bound: {BOUND_MIB} MiB on every flood.\n"
    );
    let _ = writeln!(
        s,
        "| flood | one connection | file (MB) | peak RSS (MiB) | × the peer | within {BOUND_MIB} MiB | flows at peak | \
         half-open evicted | established evicted | out-of-order holes given up (budget spent) | partial-record bytes refused (budget spent) |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (flood, bytes, t) in &rows {
        let c = t.counters();
        let rss = t.max_rss_kib / 1024;
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {rss} | {:.1} | {} | {} | {} | {} | {} | {} |",
            flood.name(),
            flood.describe(),
            *bytes as f64 / 1e6,
            t.max_rss_kib as f64 / peer.max_rss_kib.max(1) as f64,
            if rss < BOUND_MIB { "yes" } else { "**no**" },
            c.get("flow_peak"),
            c.get("flow_half_open_evicted"),
            c.get("flow_evicted"),
            c.get("flow_ooo_budget_gaps"),
            c.get("budget_stream_refused_bytes"),
        );
    }
    let _ = writeln!(s, "\nThe peer: {} MiB peak RSS.", peer.max_rss_kib / 1024);
    println!("\n{s}");
    let out = env.root.join("docs/bench-floods.md");
    std::fs::write(&out, &s)?;
    note(&format!("written to {}", out.display()));
    Ok(())
}

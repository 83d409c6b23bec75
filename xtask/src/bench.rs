//! Benchmarks. Not part of `cargo xtask test`: they take minutes, and their figures are
//! ratios against a peer measured in the same run, because the machine is shared and noisy.
//!
//! `bench capture`: the sensor's XDP capture against `tcpdump -w /dev/null` with the
//! equivalent filter, on the same veth SPAN stand-in and the same traffic, one after the
//! other at each rate of a ladder and at the generator's top rate (two tcpreplay senders).

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    process::{Child, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use tap_testkit::{
    frame::{self, Tags, V6Ext, L4},
    netns::{SpanPair, GEN_IF, MIRROR_IF},
    pcap,
    sensor::{process_cpu_time, SensorProcess},
};

use crate::{
    setup::Env,
    util::{note, step},
};

#[derive(clap::Subcommand)]
pub enum Which {
    /// XDP capture vs tcpdump on the same veth and traffic.
    Capture,
    /// Offline decode + flows + reassembly on a large lab-derived capture, vs tshark.
    Pipeline,
    /// The same capture through every parser to JSON events, vs tshark -T fields.
    Parse,
    /// Events from the sensor to tap-cloud over mTLS into SQLite: rate and latency.
    Uplink,
    /// Everything live: XDP, reassembly, parsers, uplink and detections at rising rates;
    /// DC frames lost, CPU per component, attack-to-alert time.
    E2e,
    /// Peak memory under SYN, out-of-order, fragment and many-small-stream floods
    /// (docs/bench-floods.md).
    Floods,
    /// Detection at the scale of a 100 000-user domain with ten DCs: events per
    /// CPU-second, checkpoint cost, lag, memory (docs/bench-detect.md).
    Detect,
}

/// Builds the release sensor; returns its path and the benchmarks' working directory.
pub(crate) fn release_sensor(env: &Env) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    step("build the sensor (release)");
    env.cargo().args(["build", "--release", "-p", "tap-user"]).run()?;
    let work = env.root.join("target/bench");
    std::fs::create_dir_all(&work)?;
    Ok((env.root.join("target/release/tap-sensor"), work))
}

pub fn run(env: &Env, which: Which) -> anyhow::Result<()> {
    match which {
        Which::Capture => capture(env),
        Which::Pipeline => pipeline(env),
        Which::Parse => parse(env),
        Which::Uplink => crate::bench_uplink::run(env),
        Which::E2e => crate::bench_e2e::run(env),
        Which::Floods => crate::bench_floods::run(env),
        Which::Detect => crate::bench_detect::run(env),
    }
}

const DC4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const DC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10);
const SERVICE_PORTS: [u16; 12] = [88, 464, 389, 636, 3268, 3269, 445, 139, 135, 53, 137, 123];
/// Rates asked of tcpreplay, frames per second; the top rate follows them.
const RATE_LADDER: [u32; 4] = [25_000, 50_000, 100_000, 200_000];
/// Seconds of traffic per measured run.
const RUN_SECONDS: f64 = 3.0;
/// Wait between the end of the traffic and stopping a consumer: longer than libpcap's
/// 1 s block timeout, so tcpdump has written its last partly filled block (without it,
/// tcpdump shows a few hundred frames of false loss at every rate).
const SETTLE: Duration = Duration::from_millis(1200);

/// Traffic of the kind a DC's mirror port carries: about 30% DC service traffic (Kerberos,
/// LDAP, SMB, DNS, in both directions, untagged, 802.1Q and QinQ, IPv4 and IPv6) and the
/// rest other hosts' traffic. Sizes from 60 to 1522 bytes. Returns (frames, kept count).
fn bench_mix() -> (Vec<Vec<u8>>, usize) {
    let mut frames = Vec::new();
    let mut kept = 0;
    for i in 0..100u32 {
        let tags = [Tags::None, Tags::Dot1Q(10), Tags::QinQ(100, 10)][(i % 3) as usize];
        let client = Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250) as u8 + 1);
        let client6 = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, i as u16 + 1);
        let port = SERVICE_PORTS[(i % 4) as usize * 2 % SERVICE_PORTS.len()];
        let size = [40usize, 200, 600, 1460][(i % 4) as usize];
        // DC traffic: request and reply.
        frames.push(frame::ipv4(tags, client, DC4, L4::Tcp { src: 40000 + i as u16, dst: port }, size.min(400), i));
        frames.push(frame::ipv4(tags, DC4, client, L4::Tcp { src: port, dst: 40000 + i as u16 }, size, i + 1));
        frames.push(frame::ipv6(tags, client6, DC6, L4::Udp { src: 50000, dst: 53 }, V6Ext::None, 60, i + 2));
        kept += 3;
        // Everyone else: web, file and streaming traffic between non-DC hosts.
        for j in 0..7u32 {
            let other = Ipv4Addr::new(10, 2, (j % 4) as u8, (i % 200) as u8 + 1);
            let other_port = [443u16, 80, 445, 8080, 3389, 22, 53][j as usize];
            let other_size = [1460usize, 80, 900, 1460, 300, 100, 60][j as usize];
            frames.push(frame::ipv4(
                tags,
                client,
                other,
                L4::Tcp { src: 41000 + j as u16, dst: other_port },
                other_size,
                i * 10 + j,
            ));
        }
    }
    (frames, kept)
}

/// Only other hosts' traffic: every frame is dropped by the filter.
fn dropped_only(mix: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let dc = DC4.octets();
    mix.iter().filter(|f| !f.windows(4).any(|w| w == dc) && f.len() > 100 && f[12] != 0x86).cloned().collect()
}

/// Full-size frames from the DC's SMB port: every frame is kept whole.
fn kept_full_size() -> Vec<Vec<u8>> {
    (0..200u32)
        .map(|i| {
            frame::ipv4(
                Tags::None,
                DC4,
                Ipv4Addr::new(10, 1, 0, (i % 250) as u8 + 1),
                L4::Tcp { src: 445, dst: 40000 },
                1460,
                i,
            )
        })
        .collect()
}

/// tcpdump expression equivalent to the XDP filter for the bench traffic: the DC end on a
/// service port, untagged, one tag or two. libpcap's `vlan` shifts the offsets of every
/// test after it in the expression, parentheses or not, so the tagged cases must nest:
/// `F or (vlan and (F or (vlan and F)))`; the flat `F or (vlan and F) or (vlan and vlan
/// and F)` misses one tagging (measured: a third of the DC frames).
fn tcpdump_filter() -> String {
    let ports = |dir: &str| SERVICE_PORTS.iter().map(|p| format!("{dir} port {p}")).collect::<Vec<_>>().join(" or ");
    let side = |dir: &str| format!("({dir} host {DC4} or {dir} host {DC6}) and ({})", ports(dir));
    let f = format!("(({}) or ({}))", side("dst"), side("src"));
    format!("{f} or (vlan and ({f} or (vlan and {f})))")
}

struct Measured {
    consumer: &'static str,
    asked_pps: Option<u32>,
    sent: u64,
    elapsed: Duration,
    expected: u64,
    captured: u64,
    cpu: Duration,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
    fn loss(&self) -> u64 {
        self.expected.saturating_sub(self.captured)
    }
    fn loss_pct(&self) -> f64 {
        100.0 * self.loss() as f64 / self.expected.max(1) as f64
    }
}

/// Replays `loops` loops of `pcap` from `senders` concurrent tcpreplay processes, at `pps`
/// each (top speed when None). Returns frames sent and the wall time taken.
fn replay(pair: &SpanPair, pcap: &Path, pps: Option<u32>, loops: u32, senders: u32) -> anyhow::Result<(u64, Duration)> {
    let start = Instant::now();
    let handles: Vec<_> = (0..senders)
        .map(|_| {
            let (ns, pcap) = (pair.gen_ns.clone(), pcap.to_path_buf());
            thread::spawn(move || -> anyhow::Result<u64> {
                let mut cmd = SpanPair::command_in(&ns, "tcpreplay");
                cmd.args(["-i", GEN_IF, "-q", "--loop", &loops.to_string()]);
                match pps {
                    Some(p) => cmd.arg(format!("--pps={p}")),
                    None => cmd.arg("--topspeed"),
                };
                let out = cmd.arg(&pcap).output()?;
                let text = String::from_utf8_lossy(&out.stdout);
                tap_testkit::netns::parse_tcpreplay_sent(&text).with_context(|| format!("tcpreplay: {text}"))
            })
        })
        .collect();
    let mut sent = 0;
    for h in handles {
        sent += h.join().map_err(|_| anyhow::anyhow!("replay thread panicked"))??;
    }
    Ok((sent, start.elapsed()))
}

fn loops_for(pps: Option<u32>, frames_per_loop: usize) -> u32 {
    // Top speed is about 0.37 Mpps per tcpreplay on these machines (measured).
    let rate = pps.unwrap_or(350_000) as f64;
    ((rate * RUN_SECONDS) / frames_per_loop as f64).ceil().max(1.0) as u32
}

/// The two ways the sensor consumes in the benchmark: the issue's comparison with tcpdump
/// is the recorder (frames to a pcap, nothing else); the sensor analyses every frame too.
const RECORDER: &str = "xdp recorder";
const SENSOR: &str = "xdp sensor";
const TCPDUMP: &str = "tcpdump";

fn run_xdp(
    sensor_bin: &Path,
    pair: &SpanPair,
    input: &Path,
    per_loop: (usize, usize),
    pps: Option<u32>,
    senders: u32,
    consumer: &'static str,
) -> anyhow::Result<Measured> {
    let extra: &[&str] = if consumer == RECORDER { &["--record-only"] } else { &[] };
    let (mut m, _) = run_sensor(sensor_bin, pair, input, per_loop, pps, senders, extra)?;
    m.consumer = consumer;
    Ok(m)
}

fn run_sensor(
    sensor_bin: &Path,
    pair: &SpanPair,
    input: &Path,
    per_loop: (usize, usize),
    pps: Option<u32>,
    senders: u32,
    extra_args: &[&str],
) -> anyhow::Result<(Measured, tap_testkit::sensor::Counters)> {
    let dcs = format!("{DC4},{DC6}");
    let mut args = vec!["--dc", &dcs, "--write", "/dev/null", "--bpf-stats"];
    args.extend_from_slice(extra_args);
    let sensor = SensorProcess::start(sensor_bin, pair, &args)?;
    let cpu0 = sensor.cpu_time()?;
    let loops = loops_for(pps, per_loop.0);
    let (sent, elapsed) = replay(pair, input, pps, loops, senders)?;
    thread::sleep(SETTLE);
    let cpu = sensor.cpu_time()? - cpu0;
    let c = sensor.stop()?;
    let measured = Measured {
        consumer: SENSOR,
        asked_pps: pps,
        sent,
        elapsed,
        expected: (per_loop.1 as u64) * sent / per_loop.0 as u64,
        captured: c.get("user_frames_consumed"),
        cpu,
    };
    Ok((measured, c))
}

struct Tcpdump {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Tcpdump {
    fn start(pair: &SpanPair, filter: &str) -> anyhow::Result<Self> {
        // -B: 32 MiB of kernel buffer, as much as the sensor's two 16 MiB rings.
        let mut child = SpanPair::command_in(&pair.mirror_ns, "tcpdump")
            .args(["-i", MIRROR_IF, "-n", "-B", "32768", "-Z", "root", "-w", "/dev/null", filter])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("start tcpdump")?;
        let stderr = child.stderr.take().context("tcpdump stderr")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).context("tcpdump did not start")?;
        if !line.contains("listening on") {
            bail!("tcpdump: {line}");
        }
        Ok(Self { child, stderr: rx })
    }

    /// Stops tcpdump and returns the frames it captured.
    fn stop(mut self) -> anyhow::Result<u64> {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill").args(["-INT", &pid]).status()?;
        self.child.wait()?;
        let text: Vec<String> = self.stderr.try_iter().collect();
        text.iter()
            .find_map(|l| l.strip_suffix(" packets captured").and_then(|n| n.trim().parse().ok()))
            .with_context(|| format!("no 'packets captured' in tcpdump output {text:?}"))
    }
}

fn run_tcpdump(
    pair: &SpanPair,
    input: &Path,
    per_loop: (usize, usize),
    pps: Option<u32>,
    senders: u32,
) -> anyhow::Result<Measured> {
    let tcpdump = Tcpdump::start(pair, &tcpdump_filter())?;
    let pid = tcpdump.child.id();
    let cpu0 = process_cpu_time(pid)?;
    let loops = loops_for(pps, per_loop.0);
    let (sent, elapsed) = replay(pair, input, pps, loops, senders)?;
    thread::sleep(SETTLE);
    let cpu = process_cpu_time(pid)? - cpu0;
    let captured = tcpdump.stop()?;
    Ok(Measured {
        consumer: TCPDUMP,
        asked_pps: pps,
        sent,
        elapsed,
        expected: (per_loop.1 as u64) * sent / per_loop.0 as u64,
        captured,
        cpu,
    })
}

/// Nanoseconds per run of the program, from bpf_stats, with traffic where every frame is
/// dropped (or kept); `floor` measures the do-nothing program on the same traffic instead.
fn program_cost(sensor_bin: &Path, pair: &SpanPair, input: &Path, frames: usize, floor: bool) -> anyhow::Result<f64> {
    let extra: &[&str] = if floor { &["--floor-program"] } else { &[] };
    let (m, c) = run_sensor(sensor_bin, pair, input, (frames, 0), Some(100_000), 1, extra)?;
    let runs = c.get("xdp_prog_run_count");
    if runs < m.sent / 2 {
        bail!("bpf_stats counted {runs} runs for {} frames sent", m.sent);
    }
    Ok(c.get("xdp_prog_run_time_ns") as f64 / runs as f64)
}

fn capture(env: &Env) -> anyhow::Result<()> {
    let (sensor_bin, work) = release_sensor(env)?;

    step("traffic");
    let (mix, kept) = bench_mix();
    let mix_path = work.join("capture-mix.pcap");
    pcap::write(&mix_path, &mix, Duration::from_secs(1_795_000_000))?;
    let dropped = dropped_only(&mix);
    let dropped_path = work.join("capture-dropped.pcap");
    pcap::write(&dropped_path, &dropped, Duration::from_secs(1_795_000_000))?;
    let full = kept_full_size();
    let full_path = work.join("capture-kept-full.pcap");
    pcap::write(&full_path, &full, Duration::from_secs(1_795_000_000))?;
    let bytes: usize = mix.iter().map(Vec::len).sum();
    note(&format!(
        "mix: {} frames per loop, {kept} ({:.0}%) DC service frames, mean {} bytes; tcpdump filter: {}",
        mix.len(),
        100.0 * kept as f64 / mix.len() as f64,
        bytes / mix.len(),
        tcpdump_filter()
    ));
    let pair = SpanPair::create("bench")?;
    let per_loop = (mix.len(), kept);

    step("calibration: every consumer keeps the same frames at a low rate");
    let r = run_xdp(&sensor_bin, &pair, &mix_path, per_loop, Some(10_000), 1, RECORDER)?;
    let x = run_xdp(&sensor_bin, &pair, &mix_path, per_loop, Some(10_000), 1, SENSOR)?;
    let t = run_tcpdump(&pair, &mix_path, per_loop, Some(10_000), 1)?;
    note(&format!("expected {}, recorder {}, sensor {}, tcpdump {}", x.expected, r.captured, x.captured, t.captured));
    if [&r, &x, &t].iter().any(|m| m.captured != m.expected) {
        note("WARNING: a consumer did not keep exactly the DC frames at 10 kpps; loss figures below include that");
    }

    step("rate ladder and top rate (two tcpreplay senders)");
    let mut results = Vec::new();
    let plan: Vec<(Option<u32>, u32)> = RATE_LADDER.iter().map(|r| (Some(*r), 1)).chain([(None, 2)]).collect();
    for (pps, senders) in plan {
        let r = run_xdp(&sensor_bin, &pair, &mix_path, per_loop, pps, senders, RECORDER)?;
        let x = run_xdp(&sensor_bin, &pair, &mix_path, per_loop, pps, senders, SENSOR)?;
        let t = run_tcpdump(&pair, &mix_path, per_loop, pps, senders)?;
        for m in [r, x, t] {
            note(&format!(
                "{:<12} asked {:>8}  sent {:>8} at {:>7.0} fps  expected {:>7}  captured {:>7}  loss {:>5.2}%  cpu {:.3}s",
                m.consumer,
                m.asked_pps.map_or("top x2".into(), |p| p.to_string()),
                m.sent,
                m.rate(),
                m.expected,
                m.captured,
                m.loss_pct(),
                m.cpu.as_secs_f64()
            ));
            results.push(m);
        }
    }

    step("program cost per frame (bpf_stats, 100 kpps), beside a do-nothing program on the same frames");
    let cost = ProgramCost {
        dropped: program_cost(&sensor_bin, &pair, &dropped_path, dropped.len(), false)?,
        dropped_floor: program_cost(&sensor_bin, &pair, &dropped_path, dropped.len(), true)?,
        kept: program_cost(&sensor_bin, &pair, &full_path, full.len(), false)?,
        kept_floor: program_cost(&sensor_bin, &pair, &full_path, full.len(), true)?,
        test_run: test_run_costs(env)?,
    };
    note(&format!(
        "dropped frame: {:.0} ns (floor {:.0}); kept full-size frame: {:.0} ns (floor {:.0})",
        cost.dropped, cost.dropped_floor, cost.kept, cost.kept_floor
    ));

    let report = render(&results, &cost, &mix, kept);
    println!("\n{report}");
    let out = work.join("capture.md");
    std::fs::write(&out, &report)?;
    note(&format!("written to {}", out.display()));
    Ok(())
}

struct ProgramCost {
    dropped: f64,
    dropped_floor: f64,
    kept: f64,
    kept_floor: f64,
    /// (frame, ns) from the BPF_PROG_TEST_RUN micro-benchmark.
    test_run: Vec<(String, u64)>,
}

/// Runs `cargo bench -p tap-user --bench xdp_program` and reads its `frame  ns` lines.
fn test_run_costs(env: &Env) -> anyhow::Result<Vec<(String, u64)>> {
    let out = env.cargo().args(["bench", "-q", "-p", "tap-user", "--bench", "xdp_program"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| {
            let (name, ns) = l.trim_end().rsplit_once(' ')?;
            Some((name.trim().to_string(), ns.trim().parse().ok()?))
        })
        .collect();
    if rows.is_empty() {
        bail!("xdp_program bench printed no figures:\n{text}");
    }
    Ok(rows)
}

fn render(results: &[Measured], cost: &ProgramCost, mix: &[Vec<u8>], kept: usize) -> String {
    fn by<'a>(results: &'a [Measured], c: &'a str) -> impl Iterator<Item = &'a Measured> + 'a {
        results.iter().filter(move |m| m.consumer == c)
    }
    let by = |c: &'static str| by(results, c);
    let best_zero_loss = |c: &'static str| by(c).filter(|m| m.loss() == 0).map(|m| m.rate()).fold(0.0, f64::max);
    let top = |c: &'static str| by(c).find(|m| m.asked_pps.is_none());
    let cpu = |c: &'static str| {
        let (cpu, frames) = by(c).fold((0.0, 0u64), |(s, n), m| (s + m.cpu.as_secs_f64(), n + m.captured));
        cpu * 1e6 / frames.max(1) as f64
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| measure | XDP recorder (--record-only) | XDP sensor (every parser) | tcpdump | recorder / tcpdump | sensor / tcpdump |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
    let (br, bx, bt) = (best_zero_loss(RECORDER), best_zero_loss(SENSOR), best_zero_loss(TCPDUMP));
    let _ = writeln!(
        s,
        "| highest rate with zero loss of kept frames (frames/s) | {br:.0} | {bx:.0} | {bt:.0} | {:.2} | {:.2} |",
        br / bt.max(1.0),
        bx / bt.max(1.0)
    );
    if let (Some(r), Some(x), Some(t)) = (top(RECORDER), top(SENSOR), top(TCPDUMP)) {
        let _ = writeln!(
            s,
            "| loss of kept frames at top rate, two tcpreplay ({:.0} / {:.0} / {:.0} frames/s) | {:.2}% | {:.2}% | {:.2}% | | |",
            r.rate(),
            x.rate(),
            t.rate(),
            r.loss_pct(),
            x.loss_pct(),
            t.loss_pct()
        );
    }
    let (cr, cx, ct) = (cpu(RECORDER), cpu(SENSOR), cpu(TCPDUMP));
    let _ = writeln!(
        s,
        "| consumer CPU per million kept frames (s), all runs | {cr:.4} | {cx:.3} | {ct:.4} | {:.3} | {:.2} |",
        cr / ct.max(1e-9),
        cx / ct.max(1e-9)
    );
    let _ = writeln!(
        s,
        "| XDP program per dropped frame, bpf_stats (do-nothing program on the same frames) | {:.0} ns ({:.0} ns) | | | | |",
        cost.dropped, cost.dropped_floor
    );
    let _ = writeln!(
        s,
        "| XDP program per kept 1514-byte frame, bpf_stats (do-nothing program) | {:.0} ns ({:.0} ns) | | | | |",
        cost.kept, cost.kept_floor
    );
    let _ = writeln!(s, "\nProgram cost in BPF_PROG_TEST_RUN (no network; kernel's mean over many runs):\n");
    let _ = writeln!(s, "| frame | ns |\n| --- | --- |");
    for (name, ns) in &cost.test_run {
        let _ = writeln!(s, "| {name} | {ns} |");
    }
    let _ = writeln!(
        s,
        "\nTraffic: {} frames per loop, {:.0}% DC service frames; each rate measured for every consumer one after the other.",
        mix.len(),
        100.0 * kept as f64 / mix.len() as f64
    );
    let _ = writeln!(s, "\n| consumer | asked (fps) | achieved (fps) | expected | captured | loss | CPU (s) |");
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
    for m in results {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {:.2}% | {:.3} |",
            m.consumer,
            m.asked_pps.map_or("top, 2 senders".into(), |p| p.to_string()),
            m.rate(),
            m.expected,
            m.captured,
            m.loss_pct(),
            m.cpu.as_secs_f64()
        );
    }
    s
}

/// Measured figures of one command under GNU time, and what the command printed.
pub(crate) struct Timed {
    pub(crate) wall: f64,
    pub(crate) cpu: f64,
    pub(crate) max_rss_kib: u64,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Timed {
    /// The `name value` counters the command printed (the sensor's report goes to stdout,
    /// or to stderr under `--json`).
    pub(crate) fn counters(&self) -> tap_testkit::sensor::Counters {
        let lines: Vec<String> = self.stdout.lines().chain(self.stderr.lines()).map(String::from).collect();
        tap_testkit::sensor::Counters::parse(&lines)
    }

    pub(crate) fn summary(&self) -> String {
        format!("{:.2} s wall, {:.2} s CPU, {} MiB peak RSS", self.wall, self.cpu, self.max_rss_kib / 1024)
    }
}

/// Runs `cmd` under `/usr/bin/time -v` and reads wall time, CPU time and peak RSS. GNU
/// time writes to a file of its own (`-o`), so the command's stderr stays its own.
pub(crate) fn timed(env: &Env, program: &str, args: &[&str]) -> anyhow::Result<Timed> {
    let report = env.root.join("target/bench/time.txt");
    let out = env.command("/usr/bin/time").arg("-v").arg("-o").arg(&report).arg(program).args(args).output()?;
    let err = std::fs::read_to_string(&report).with_context(|| format!("read GNU time output {}", report.display()))?;
    let field = |name: &str| -> anyhow::Result<String> {
        err.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
            .with_context(|| format!("no '{name}' in GNU time output:\n{err}"))
    };
    let user: f64 = field("User time (seconds):")?.parse()?;
    let sys: f64 = field("System time (seconds):")?.parse()?;
    let wall_text = field("Elapsed (wall clock) time (h:mm:ss or m:ss):")?;
    let wall = wall_text.split(':').try_fold(0.0, |acc, part| part.parse::<f64>().map(|v| acc * 60.0 + v))?;
    let max_rss_kib = field("Maximum resident set size (kbytes):")?.parse()?;
    Ok(Timed {
        wall,
        cpu: user + sys,
        max_rss_kib,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The benchmark capture: ../shared/adlab's make_big.py, about 1 GB of lab traffic replayed
/// by thousands of simulated clients at once. Built once, kept in target/bench.
fn pipeline_capture(env: &Env, work: &Path) -> anyhow::Result<std::path::PathBuf> {
    let tool = env.root.join("../shared/adlab/tools/make_big.py");
    if !tool.exists() {
        bail!("{} not found: bench pipeline builds its capture from ../shared/adlab", tool.display());
    }
    let out = work.join(format!("pipeline-{PIPELINE_MB}mb-c{PIPELINE_CONCURRENCY}.pcap"));
    if out.exists() {
        note(&format!("capture: {} (already built)", out.display()));
        return Ok(out);
    }
    note(&format!("capture: building {} with make_big.py (about a minute)", out.display()));
    let tmp = out.with_extension("tmp");
    env.command("python3")
        .arg(&tool)
        .arg("--out")
        .arg(&tmp)
        .args([
            "--target-mb",
            &PIPELINE_MB.to_string(),
            "--seed",
            "1",
            "--concurrency",
            &PIPELINE_CONCURRENCY.to_string(),
        ])
        .output()?;
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// Size of the pipeline benchmark capture and the scenario instances active at once
/// (about 20 flows each: about 100k concurrent flows in the table).
const PIPELINE_MB: u32 = 1000;
const PIPELINE_CONCURRENCY: u32 = 4500;

pub fn pipeline(env: &Env) -> anyhow::Result<()> {
    let (sensor, work) = release_sensor(env)?;
    let capture = pipeline_capture(env, &work)?;
    let capture_s = capture.to_str().context("path")?;
    let sensor_s = sensor.to_str().context("path")?;

    let mut rows = Vec::new();
    for workers in ["1", "2"] {
        step(&format!("tap-sensor --read, {workers} worker(s)"));
        // Decode, defragmentation, flows and reassembly: what this benchmark is about.
        // `bench parse` measures the parsers on top.
        let t = timed(env, sensor_s, &["--read", capture_s, "--workers", workers, "--no-parsers"])?;
        let c = t.counters();
        let bytes = c.get("read_bytes") as f64;
        let frames = c.get("read_frames") as f64;
        note(&format!("{}, {} flows at peak, {} gaps", t.summary(), c.get("flow_peak"), c.get("tcp_gaps")));
        note(&format!(
            "{} flows created, {} evicted for room (limit 262144)",
            c.get("flow_created"),
            c.get("flow_evicted")
        ));
        rows.push((
            format!("tap-sensor --read --no-parsers --workers {workers}"),
            t,
            Some((bytes, frames, c.get("flow_peak"))),
        ));
    }
    step("tshark -q -z conv,tcp on the same capture");
    let t = timed(env, "tshark", &["-r", capture_s, "-q", "-z", "conv,tcp"])?;
    note(&t.summary());
    rows.push(("tshark -q -z conv,tcp".into(), t, None));

    let (bytes, frames) = rows.iter().find_map(|(_, _, b)| b.map(|(b, f, _)| (b, f))).context("no sensor run")?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Capture: {} ({:.0} MB of frames, {:.0} frames)\n",
        capture.file_name().unwrap_or_default().to_string_lossy(),
        bytes / 1e6,
        frames
    );
    let _ = writeln!(s, "| run | wall (s) | CPU (s) | Gbit/s per CPU-second | frames/s per CPU-second | peak RSS (MiB) | flows at peak |");
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
    let tshark_cpu = rows.last().map(|r| r.1.cpu).unwrap_or(f64::NAN);
    for (name, t, extra) in &rows {
        let _ = writeln!(
            s,
            "| {name} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} |",
            t.wall,
            t.cpu,
            bytes * 8.0 / t.cpu / 1e9,
            frames / t.cpu,
            t.max_rss_kib / 1024,
            extra.map_or("-".into(), |e| e.2.to_string())
        );
    }
    let _ = writeln!(s, "\nCPU time relative to tshark: {:.3} (1 worker)", rows[0].1.cpu / tshark_cpu);
    println!("\n{s}");
    let out = work.join("pipeline.md");
    std::fs::write(&out, &s)?;
    note(&format!("written to {}", out.display()));
    Ok(())
}

/// `bench parse`: the pipeline benchmark's capture through every parser to JSON events
/// (`tap-sensor --read --json --workers 1 > /dev/null`), against tshark extracting the same
/// Kerberos, NTLM, LDAP and DNS fields with `-T fields`.
pub fn parse(env: &Env) -> anyhow::Result<()> {
    let (sensor, work) = release_sensor(env)?;
    let capture = pipeline_capture(env, &work)?;
    let capture_s = capture.to_str().context("path")?;

    step("tap-sensor --read --json (1 worker), events to /dev/null");
    let script = format!("{} --read {capture_s} --json --workers 1 > /dev/null", sensor.display());
    let ours = timed(env, "sh", &["-c", &script])?;
    let c = ours.counters();
    let (bytes, frames, events) =
        (c.get("read_bytes") as f64, c.get("read_frames") as f64, c.get("parse_events") as f64);
    note(&format!("{}, {events} events", ours.summary()));

    step("tshark -T fields with the same Kerberos, NTLM, LDAP and DNS fields");
    let fields = [
        "kerberos.msg_type",
        "kerberos.CNameString",
        "kerberos.realm",
        "kerberos.SNameString",
        "kerberos.etype",
        "kerberos.error_code",
        "ntlmssp.messagetype",
        "ntlmssp.auth.domain",
        "ntlmssp.auth.username",
        "ldap.protocolOp",
        "ldap.name",
        "ldap.baseObject",
        "dns.qry.name",
        "dns.qry.type",
        "dns.flags.rcode",
    ];
    let mut args = vec!["-r", capture_s, "-Y", "kerberos || ntlmssp || ldap || dns", "-T", "fields"];
    for f in &fields {
        args.extend(["-e", f]);
    }
    let script =
        format!("tshark {} > /dev/null 2>&1", args.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" "));
    let theirs = timed(env, "sh", &["-c", &script])?;
    note(&theirs.summary());

    let mut s = String::new();
    let _ = writeln!(
        s,
        "Capture: {} ({:.0} MB, {:.0} frames)\n",
        capture.file_name().unwrap_or_default().to_string_lossy(),
        bytes / 1e6,
        frames
    );
    let _ =
        writeln!(s, "| run | wall (s) | CPU (s) | Gbit/s per CPU-second | events/s per CPU-second | peak RSS (MiB) |");
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
    let _ = writeln!(
        s,
        "| tap-sensor --read --json, 1 worker | {:.2} | {:.2} | {:.2} | {:.0} | {} |",
        ours.wall,
        ours.cpu,
        bytes * 8.0 / ours.cpu / 1e9,
        events / ours.cpu,
        ours.max_rss_kib / 1024
    );
    let _ = writeln!(
        s,
        "| tshark -T fields (same fields) | {:.2} | {:.2} | {:.2} | - | {} |",
        theirs.wall,
        theirs.cpu,
        bytes * 8.0 / theirs.cpu / 1e9,
        theirs.max_rss_kib / 1024
    );
    let _ = writeln!(s, "\nCPU time of tshark / tap-sensor: {:.1}", theirs.cpu / ours.cpu);
    println!("\n{s}");
    let out = work.join("parse.md");
    std::fs::write(&out, &s)?;
    note(&format!("written to {}", out.display()));
    Ok(())
}

//! `tap-sensor`: the dctap sensor daemon.

use std::{
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use tap_common::record::MAX_SNAPLEN;
use tap_user::{
    capture::{
        run::{print_summary, CaptureOptions},
        AttachMode, DcSet, PortSet,
    },
    event::{analyzer::Analyzer, Discard, EventSink, JsonLines, Stamper},
    pipeline::{read::read_file, Pipeline, PipelineOptions},
    signals::Signals,
};

/// dctap sensor: watches the traffic of Active Directory domain controllers on a switch
/// mirror (SPAN) port, or reads it from a capture file (--read), and turns it into
/// per-conversation byte streams (and, with the parsers, identity activity).
#[derive(Parser)]
#[command(version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Read frames from a pcap or pcapng file instead of capturing (offline mode): the same
    /// pipeline, then a report, then exit.
    #[arg(long, value_name = "FILE")]
    read: Option<PathBuf>,
    /// With --read: print the activity events as JSON lines on stdout (the counters then go
    /// to stderr).
    #[arg(long, requires = "read")]
    json: bool,
    /// Benchmarks only: with --read, reassemble and count streams but run no parser.
    #[arg(long, requires = "read", hide = true)]
    no_parsers: bool,
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Options of the stages behind capture (both modes).
#[derive(clap::Args)]
struct PipelineArgs {
    /// Worker threads for decoding, flows and reassembly [default: one per CPU].
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: Option<u16>,
    /// Sensor id stamped on every event [default: the host name].
    #[arg(long, global = true)]
    sensor_id: Option<String>,
    /// Most conversations tracked at once, over all workers; the longest idle is evicted.
    #[arg(long, global = true, default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(16..))]
    max_flows: u32,
}

impl PipelineArgs {
    fn options(&self) -> PipelineOptions {
        let workers = self
            .workers
            .map(usize::from)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        let mut opts = PipelineOptions { workers, ..PipelineOptions::default() };
        opts.flows.max_flows = (self.max_flows as usize).div_ceil(workers);
        opts
    }
}

#[derive(Subcommand)]
enum Command {
    /// Attach the XDP filter to a mirror port and capture DC traffic.
    ///
    /// Keeps frames whose DC end is on an AD service port (and non-first fragments of DC
    /// traffic), drops the rest in the kernel, and prints counters at exit and on SIGUSR1.
    /// SIGHUP re-reads --dc-file; SIGINT/SIGTERM detach and exit.
    Capture(CaptureArgs),
}

#[derive(clap::Args)]
struct CaptureArgs {
    /// Mirror-port interface to attach to.
    #[arg(long, short = 'i')]
    iface: String,
    /// Domain controllers: addresses or CIDR subnets, comma-separated (e.g. 10.0.0.10,fd00::10,10.1.0.0/24).
    #[arg(long, value_name = "ADDR[,ADDR…]")]
    dc: Option<String>,
    /// File with more DC addresses or subnets, one or more per line, '#' comments; re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    dc_file: Option<PathBuf>,
    /// Service ports on the DC side to keep [default: 88,464,389,636,3268,3269,445,139,135,53,137,123].
    #[arg(long, value_name = "PORT[,PORT…]")]
    ports: Option<String>,
    /// Bytes of each kept frame to copy to userspace (the rest is counted as truncated).
    #[arg(long, default_value_t = MAX_SNAPLEN as u32, value_parser = clap::value_parser!(u32).range(1..=MAX_SNAPLEN as i64))]
    snaplen: u32,
    /// Size of each ring buffer in MiB (one ring per CPU, up to 4); a power of two.
    #[arg(long, default_value_t = 16, value_parser = parse_ring_mib)]
    ring_mib: u32,
    /// XDP attach mode: auto tries native and falls back to generic.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    xdp_mode: AttachMode,
    /// Write kept frames to this pcap file (nanosecond timestamps).
    #[arg(long, short = 'w', value_name = "FILE")]
    write: Option<PathBuf>,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Measure the XDP program's own cost (kernel BPF statistics) and report run count and time.
    #[arg(long)]
    bpf_stats: bool,
    /// Benchmarks only: attach a program that drops every frame and does nothing else.
    #[arg(long, hide = true)]
    floor_program: bool,
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|_| format!("'{s}' is not a number of MiB"))?;
    if v == 0 || !v.is_power_of_two() || v > 1024 {
        return Err(format!("{v} MiB: a ring must be a power of two between 1 and 1024 MiB"));
    }
    Ok(v)
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let pipeline = cli.pipeline.options();
    let sensor_id = cli.pipeline.sensor_id.clone().unwrap_or_else(host_name);
    match (cli.command, cli.read) {
        (Some(Command::Capture(args)), _) => capture(args, pipeline, sensor_id),
        (None, Some(path)) => read(&path, pipeline, cli.json, cli.no_parsers, &sensor_id),
        (None, None) => {
            Cli::command().print_help()?;
            anyhow::bail!("give --read FILE or the capture command")
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "sensor".into())
}

fn read(
    path: &std::path::Path,
    opts: PipelineOptions,
    json: bool,
    no_parsers: bool,
    sensor_id: &str,
) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    let stamper = Stamper::new(sensor_id);
    let json_out = json.then(|| Arc::new(Mutex::new(std::io::BufWriter::new(std::io::stdout()))));
    let pipeline = Pipeline::start(&opts, |_| {
        let sink: Box<dyn EventSink> = match &json_out {
            Some(out) => Box::new(JsonLines::new(Arc::clone(out))),
            None => Box::new(Discard),
        };
        let analyzer = Analyzer::new(sink, stamper.clone());
        if no_parsers {
            analyzer.streams_only()
        } else {
            analyzer
        }
    })?;
    let started = std::time::Instant::now();
    let result = read_file(path, &mut |batch| {
        pipeline.dispatch(batch);
        if Signals::take(&signals.dump_counters) {
            let _ = pipeline.counters().write(&mut std::io::stderr().lock());
        }
        if signals.stopping() {
            anyhow::bail!("interrupted");
        }
        Ok(())
    });
    let (counters, summaries) = pipeline.finish()?;
    let elapsed = started.elapsed();
    let stats = result.as_ref().map(|s| *s).unwrap_or_default();
    if let Some(out) = &json_out {
        out.lock().map_err(|_| anyhow::anyhow!("JSON output poisoned"))?.flush()?;
    }
    // With --json, stdout carries the events; the report goes to stderr.
    let mut report: Box<dyn Write> = if json { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
    {
        let out = &mut report;
        let rows = [
            ("frames", counters.decode.frames),
            ("bytes", counters.decode.bytes),
            ("skipped_link_type", stats.skipped_link_type),
            ("elapsed_us", elapsed.as_micros() as u64),
        ];
        tap_user::telemetry::write_rows(out, "read", &rows)?;
        counters.write(out)?;
    }
    print_summary(&summaries, &mut report);
    result.map(|_| ()).with_context(|| format!("read {}", path.display()))
}

fn capture(args: CaptureArgs, pipeline: PipelineOptions, sensor_id: String) -> anyhow::Result<()> {
    let dcs = match &args.dc {
        Some(list) => DcSet::parse_list(list, "--dc")?,
        None => DcSet::default(),
    };
    let ports = match &args.ports {
        Some(list) => PortSet::parse_list(list, "--ports")?,
        None => PortSet::default(),
    };
    let duration = match args.duration {
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => anyhow::bail!("--duration {s}: give a positive number of seconds"),
        None => None,
    };
    let opts = CaptureOptions {
        iface: args.iface,
        dcs,
        dc_file: args.dc_file,
        ports,
        snaplen: args.snaplen,
        ring_bytes: args.ring_mib << 20,
        mode: args.xdp_mode,
        write: args.write,
        duration,
        channel_batches: 1024,
        bpf_stats: args.bpf_stats,
        floor_program: args.floor_program,
        pipeline,
        sensor_id,
    };
    let signals = Signals::install()?;
    tap_user::capture::run::run(&opts, &signals).context("capture")
}

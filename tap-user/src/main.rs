//! `tap-sensor`: the dctap sensor daemon.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;

/// The pipeline allocates and frees many small, short-lived objects (parsed messages,
/// events) on worker threads; glibc's allocator spent 8% of `bench parse` in itself and
/// kept returning and re-faulting the heap top.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{CommandFactory as _, Parser, Subcommand};
use tap_common::record::MAX_SNAPLEN;
use tap_user::{
    capture::{
        filter::RpcRange,
        run::{CaptureOptions, LiveSettings, LoadSettings},
        AttachMode, DcSet, PortSet,
    },
    event::pb::SensorInfo,
    pipeline::{offline::ReadOutput, PipelineOptions},
    signals::Signals,
    uplink::{ClientConfig, OverflowPolicy, SpoolConfig, TlsFiles, UplinkOptions},
};

/// dctap sensor: watches the traffic of Active Directory domain controllers on a switch
/// mirror (SPAN) port, or reads it from a capture file (--read), and turns it into
/// per-conversation byte streams (and, with the parsers, identity activity).
#[derive(Parser)]
#[command(version, about, long_about = None, args_override_self = true)]
struct Cli {
    /// TOML file with any of these options (keys as the long flags with '_' for '-'; the
    /// capture options in a [capture] table; deploy/sensor.toml documents them). Flags on
    /// the command line override the file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace); SIGHUP applies a changed one from the
    /// configuration file. RUST_LOG, when set, takes precedence (per-module filters).
    #[arg(long, global = true, value_name = "LEVEL", default_value = "info")]
    log_level: log::LevelFilter,
    /// Read frames from a pcap or pcapng file instead of capturing (offline mode): the same
    /// pipeline, then a report, then exit. `-` (or /dev/stdin) reads a pipe. pcapng
    /// timestamps follow each interface's if_tsresol and if_tsoffset.
    #[arg(long, value_name = "FILE")]
    read: Option<PathBuf>,
    /// With --read: print the activity events as JSON lines on stdout (the counters then go
    /// to stderr).
    #[arg(long, requires = "read", conflicts_with = "cloud")]
    json: bool,
    /// With --read and --cloud: how long to wait, after the file is read, for the cloud to
    /// acknowledge every event. What is left stays in the spool for the next run.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0, requires = "read")]
    drain_timeout: f64,
    /// With --read: feed the file at this rate, in Mbit/s of frame bytes (like tcpreplay
    /// --mbps), instead of as fast as it can be read. For demos and load tests.
    #[arg(long, value_name = "MBIT", requires = "read")]
    read_mbps: Option<f64>,
    /// Benchmarks only: with --read, reassemble and count streams but run no parser.
    #[arg(long, requires = "read", hide = true)]
    no_parsers: bool,
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    uplink: UplinkArgs,
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
    /// Most established conversations (both ends sent data) tracked at once, over all
    /// workers; the longest idle is evicted, authenticated sessions and RPC associations
    /// last. About 1 KiB each with their parser state.
    #[arg(long, global = true, default_value_t = 131_072, value_parser = clap::value_parser!(u32).range(16..))]
    max_flows: u32,
    /// Most conversations not established yet (a SYN, one side's data, an unanswered
    /// datagram) tracked at once, over all workers, apart from the established ones: a
    /// flood of them evicts only its own kind.
    #[arg(long, global = true, default_value_t = 32_768, value_parser = clap::value_parser!(u32).range(16..))]
    max_half_open_flows: u32,
}

impl PipelineArgs {
    fn options(&self) -> PipelineOptions {
        let workers = self
            .workers
            .map(usize::from)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        let mut opts = PipelineOptions { workers, ..PipelineOptions::default() };
        opts.flows.max_flows = (self.max_flows as usize).div_ceil(workers);
        opts.flows.max_half_open = (self.max_half_open_flows as usize).div_ceil(workers);
        opts
    }
}

/// Where events go: the cloud, through a durable spool (both modes).
#[derive(clap::Args)]
struct UplinkArgs {
    /// The cloud's ingest endpoint, e.g. https://cloud.example:7443. Without it, live
    /// events are counted only.
    #[arg(long, global = true, value_name = "URL")]
    cloud: Option<String>,
    /// CA certificate that signed the cloud's certificate (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "cloud")]
    tls_ca: Option<PathBuf>,
    /// This sensor's client certificate (PEM); re-read on SIGHUP.
    #[arg(long, global = true, value_name = "FILE", requires = "cloud")]
    tls_cert: Option<PathBuf>,
    /// This sensor's private key (PEM); re-read on SIGHUP.
    #[arg(long, global = true, value_name = "FILE", requires = "cloud")]
    tls_key: Option<PathBuf>,
    /// Name to check the cloud's certificate against, when not the host in --cloud.
    #[arg(long, global = true, value_name = "NAME", requires = "cloud")]
    tls_server_name: Option<String>,
    /// File with the access key `tap-cloud sensors add` issued [default: $DCTAP_ACCESS_KEY];
    /// re-read on SIGHUP.
    #[arg(long, global = true, value_name = "FILE", requires = "cloud")]
    access_key_file: Option<PathBuf>,
    /// Plaintext gRPC to an http:// cloud, without TLS: local demos only.
    #[arg(long, global = true, requires = "cloud")]
    insecure: bool,
    /// Directory of the durable spool (events wait here while the cloud is away).
    #[arg(long, global = true, value_name = "DIR", default_value = "/var/lib/dctap/spool")]
    spool_dir: PathBuf,
    /// Largest size of the spool on disk, in MiB.
    #[arg(long, global = true, value_name = "MIB", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    spool_max_mb: u64,
    /// What to give up when the spool is full.
    #[arg(long, global = true, value_enum, default_value_t = OverflowPolicy::DropOldest)]
    spool_overflow: OverflowPolicy,
    /// Send at most this many events per second (for thin links) [default: no limit].
    #[arg(long, global = true, value_name = "EVENTS")]
    uplink_max_rate: Option<f64>,
}

impl UplinkArgs {
    fn options(&self, info: SensorInfo) -> anyhow::Result<Option<UplinkOptions>> {
        let Some(url) = &self.cloud else { return Ok(None) };
        let tls = match (self.insecure, url.starts_with("https://"), url.starts_with("http://")) {
            (true, _, true) => None,
            (true, _, false) => anyhow::bail!("--insecure needs an http:// --cloud address, not {url}"),
            (false, true, _) => {
                let need = |v: &Option<PathBuf>, flag: &str| {
                    v.clone().ok_or_else(|| {
                        anyhow::anyhow!("--cloud {url} needs {flag} (mutual TLS), or --insecure with http://")
                    })
                };
                Some(TlsFiles {
                    ca: need(&self.tls_ca, "--tls-ca")?,
                    cert: need(&self.tls_cert, "--tls-cert")?,
                    key: need(&self.tls_key, "--tls-key")?,
                    server_name: self.tls_server_name.clone(),
                })
            }
            (false, false, true) => {
                anyhow::bail!("--cloud {url} is plaintext: use https:// with TLS, or add --insecure for a local demo")
            }
            _ => anyhow::bail!("--cloud {url}: give an https:// (or, with --insecure, http://) address"),
        };
        if let Some(rate) = self.uplink_max_rate {
            if !(rate.is_finite() && rate >= 1.0) {
                anyhow::bail!("--uplink-max-rate {rate}: give at least 1 event per second");
            }
        }
        let mut client = ClientConfig::new(url.clone(), info);
        client.tls = tls;
        client.access_key_file = self.access_key_file.clone();
        client.max_rate = self.uplink_max_rate;
        if client.access_key_file.is_none() && std::env::var_os("DCTAP_ACCESS_KEY").is_none() {
            anyhow::bail!("--cloud needs the sensor's access key: --access-key-file FILE or DCTAP_ACCESS_KEY");
        }
        let mut spool = SpoolConfig::new(&self.spool_dir, self.spool_max_mb << 20);
        spool.overflow = self.spool_overflow;
        // Evidence is a live capture's: `capture` sets it.
        Ok(Some(UplinkOptions { spool, client, evidence: None }))
    }
}

fn sensor_info(sensor_id: &str, dcs: Vec<String>, live: bool) -> SensorInfo {
    let mut capabilities: Vec<String> =
        ["kerberos", "ntlm", "ldap", "smb2", "dcerpc", "dns"].iter().map(|s| s.to_string()).collect();
    capabilities.push(if live { "capture" } else { "offline" }.into());
    SensorInfo {
        sensor_id: sensor_id.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        monitored_dcs: dcs,
        capabilities,
        hostname: host_name(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Attach the XDP filter to a mirror port and capture DC traffic.
    ///
    /// Keeps frames whose DC end is on an AD service port (and non-first fragments of DC
    /// traffic), drops the rest in the kernel, and prints counters at exit and on SIGUSR1.
    /// SIGHUP re-reads the configuration file and --dc-file and applies the DC list, the
    /// service ports, the log level and the DC silence alert without touching a flow (other
    /// options need a restart), and reconnects to the cloud with the certificates read
    /// again; SIGINT/SIGTERM detach and exit. Capabilities are dropped once attached.
    #[command(args_override_self = true)]
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
    /// The DCs' dynamic RPC port range (FIRST-LAST, or none), kept whole when the other end
    /// is on an unprivileged port too: tools reach the endpoint the mapper names within a
    /// millisecond, before a learned port could be added [default: 49152-65535, Windows'].
    #[arg(long, value_name = "RANGE")]
    rpc_ports: Option<String>,
    /// Bytes of each kept frame to copy to userspace (the rest is counted as truncated).
    #[arg(long, default_value_t = MAX_SNAPLEN as u32, value_parser = clap::value_parser!(u32).range(1..=MAX_SNAPLEN as i64))]
    snaplen: u32,
    /// Size of each ring buffer in MiB (one ring per CPU, up to 4); a power of two.
    #[arg(long, default_value_t = 16, value_parser = parse_ring_mib)]
    ring_mib: u32,
    /// XDP attach mode: auto tries native and falls back to generic.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    xdp_mode: AttachMode,
    /// Raise the health alert no_traffic_from_dc when a monitored DC (or every DC of a
    /// monitored subnet) sent no frame for this many seconds; 0 turns it off.
    #[arg(long, value_name = "SECONDS", default_value_t = 600.0)]
    dc_silence_alert: f64,
    /// Write kept frames to this pcap file (nanosecond timestamps).
    #[arg(long, short = 'w', value_name = "FILE")]
    write: Option<PathBuf>,
    /// Only record: write the kept frames (--write) and do nothing else with them, no
    /// decoding, parsing or events, as a packet recorder such as tcpdump -w would.
    #[arg(long, requires = "write")]
    record_only: bool,
    /// Keep every kept frame as evidence in rotated pcap files in this directory, so the
    /// cloud can ask for the frames behind an alert [default: off].
    #[arg(long, value_name = "DIR")]
    evidence_dir: Option<PathBuf>,
    /// Largest size of the evidence files together, in MiB; the oldest go first.
    #[arg(long, value_name = "MIB", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    evidence_max_mb: u64,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Measure the XDP program's own cost (kernel BPF statistics) and report run count and time.
    #[arg(long)]
    bpf_stats: bool,
    /// Serve the counters for Prometheus on this local address (GET /metrics), e.g.
    /// 127.0.0.1:9100.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
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
    let rust_log = std::env::var_os("RUST_LOG").is_some();
    if rust_log {
        env_logger::Builder::from_env("RUST_LOG").init();
    } else {
        // The level is the global maximum, which a reload can move; the logger lets
        // through whatever reaches it.
        env_logger::Builder::new().filter_level(log::LevelFilter::Trace).init();
        log::set_max_level(log::LevelFilter::Info);
    }
    let argv: Vec<String> = std::env::args().collect();
    let cli = Cli::parse_from(tap_user::config::expand_args(argv.clone())?);
    if !rust_log {
        log::set_max_level(cli.log_level);
    }
    let pipeline = cli.pipeline.options();
    let sensor_id = cli.pipeline.sensor_id.clone().unwrap_or_else(host_name);
    match (cli.command, cli.read) {
        (Some(Command::Capture(_)), Some(path)) => {
            anyhow::bail!("--read {} and capture exclude each other: read a file or capture live", path.display())
        }
        (Some(Command::Capture(args)), None) => {
            let reload = move || -> anyhow::Result<LiveSettings> {
                let cli = Cli::try_parse_from(tap_user::config::expand_args(argv.clone())?)?;
                match cli.command {
                    Some(Command::Capture(args)) => live_settings(&args, (!rust_log).then_some(cli.log_level)),
                    None => anyhow::bail!("the capture command is gone from the arguments"),
                }
            };
            capture(args, pipeline, &cli.uplink, sensor_id, Box::new(reload))
        }
        (None, Some(path)) => {
            let uplink = cli.uplink.options(sensor_info(&sensor_id, Vec::new(), false))?;
            let drain = match cli.drain_timeout {
                s if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
                s => anyhow::bail!("--drain-timeout {s}: give a number of seconds"),
            };
            let pace = match cli.read_mbps {
                None => None,
                Some(m) if m.is_finite() && m > 0.0 => Some(m),
                Some(m) => anyhow::bail!("--read-mbps {m}: give a positive rate"),
            };
            let output = ReadOutput { json: cli.json, no_parsers: cli.no_parsers, uplink, drain, pace };
            tap_user::pipeline::offline::run(&path, pipeline, output, &sensor_id)
        }
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

/// The settings a reload may change, from the (re-)parsed capture arguments.
fn live_settings(args: &CaptureArgs, log_level: Option<log::LevelFilter>) -> anyhow::Result<LiveSettings> {
    let mut dcs = match &args.dc {
        Some(list) => DcSet::parse_list(list, "--dc")?,
        None => DcSet::default(),
    };
    if let Some(path) = &args.dc_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("read DC list {}", path.display()))?;
        dcs = dcs.union(&DcSet::parse_file(&text, &path.display().to_string())?);
    }
    let ports = match &args.ports {
        Some(list) => PortSet::parse_list(list, "--ports")?,
        None => PortSet::default(),
    };
    let rpc_range = match &args.rpc_ports {
        Some(text) => RpcRange::parse(text, "--rpc-ports")?,
        None => Some(RpcRange::default()),
    };
    let dc_silence = match args.dc_silence_alert {
        0.0 => None,
        s if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        s => anyhow::bail!("--dc-silence-alert {s}: give a number of seconds (0 turns it off)"),
    };
    Ok(LiveSettings { dcs, ports, rpc_range, log_level, dc_silence })
}

fn capture(
    args: CaptureArgs,
    pipeline: PipelineOptions,
    uplink: &UplinkArgs,
    sensor_id: String,
    load_settings: LoadSettings,
) -> anyhow::Result<()> {
    let initial = live_settings(&args, None)?;
    let dc_names: Vec<String> =
        initial.dcs.to_string().split(',').filter(|s| !s.is_empty()).map(String::from).collect();
    let duration = match args.duration {
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => anyhow::bail!("--duration {s}: give a positive number of seconds"),
        None => None,
    };
    let evidence =
        args.evidence_dir.map(|dir| tap_user::evidence::EvidenceOptions { dir, max_bytes: args.evidence_max_mb << 20 });
    let mut uplink = uplink.options(sensor_info(&sensor_id, dc_names, true))?;
    if args.record_only && evidence.is_some() {
        anyhow::bail!("--record-only already writes every kept frame to --write; --evidence-dir keeps frames for the cloud's alerts, which a recorder makes none of: leave out one of them");
    }
    if args.record_only && uplink.is_some() {
        anyhow::bail!("--record-only makes no events, so there is nothing to send to the cloud: leave out --record-only or the cloud options");
    }
    if let Some(u) = uplink.as_mut() {
        u.evidence = evidence.as_ref().map(|e| e.dir.clone());
    }
    let opts = CaptureOptions {
        iface: args.iface,
        evidence,
        snaplen: args.snaplen,
        ring_bytes: args.ring_mib << 20,
        mode: args.xdp_mode,
        write: args.write,
        record_only: args.record_only,
        duration,
        channel_batches: 1024,
        bpf_stats: args.bpf_stats,
        floor_program: args.floor_program,
        uplink,
        metrics: args.metrics,
        pipeline,
        sensor_id,
    };
    let signals = Signals::install()?;
    tap_user::capture::run::run(&opts, load_settings, &signals).context("capture")
}

//! The capture control loop: load, configure, attach, read until stopped, detach, report.

use std::{
    io::Write as _,
    path::PathBuf,
    sync::{atomic::AtomicBool, atomic::Ordering, Arc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use crossbeam_channel::bounded;

use log::{error, info, warn};

use super::{
    counters::{CaptureReport, UserCounters},
    dc_watch::DcWatch,
    filter::{DcSet, PortSet, RpcRange},
    loader::{AttachMode, XdpCapture},
    reader::{Consumer, RingReader},
};
use crate::{
    event::{analyzer::Analyzer, Discard, Stamper},
    evidence::{EvidenceCounters, EvidenceOptions, EvidenceRing},
    frames::FrameBatch,
    output::PcapSink,
    pipeline::{Pipeline, PipelineOptions},
    signals::Signals,
    uplink::{Uplink, UplinkOptions},
};

/// Longest sleep of the control loop. Signals, learned ports and a failed reader wake it
/// at once; the tick is for what is periodic (health every second, the watchdog).
const CONTROL_TICK: Duration = Duration::from_secs(1);

/// What SIGHUP changes without a restart (and without touching a flow).
#[derive(Clone, Debug)]
pub struct LiveSettings {
    /// The DCs of the command line, the configuration and the DC file together.
    pub dcs: DcSet,
    pub ports: PortSet,
    /// The DCs' dynamic RPC port range, kept as a whole (`None`: only learned endpoints).
    pub rpc_range: Option<RpcRange>,
    /// `None`: leave the logger alone (RUST_LOG rules).
    pub log_level: Option<log::LevelFilter>,
    /// Raise `no_traffic_from_dc` for a DC that sent nothing for this long; `None`: never.
    pub dc_silence: Option<Duration>,
}

/// Reads the live settings again (the configuration file and the DC file); called at start
/// and on every SIGHUP.
pub type LoadSettings = Box<dyn Fn() -> anyhow::Result<LiveSettings>>;

#[derive(Clone, Debug)]
pub struct CaptureOptions {
    pub iface: String,
    pub snaplen: u32,
    pub ring_bytes: u32,
    pub mode: AttachMode,
    pub write: Option<PathBuf>,
    /// Write the frames and nothing else: no pipeline, no events.
    pub record_only: bool,
    /// Keep every kept frame in a ring of pcap files, for excerpts the cloud asks for.
    pub evidence: Option<EvidenceOptions>,
    pub duration: Option<Duration>,
    /// Capacity of the reader-to-consumer channel, in batches.
    pub channel_batches: usize,
    /// Turn on the kernel's BPF run-time statistics and report the program's run count and
    /// total run time (a few ns per frame of overhead while on).
    pub bpf_stats: bool,
    pub pipeline: PipelineOptions,
    /// Where events go; `None`: produced and counted only.
    pub uplink: Option<UplinkOptions>,
    /// Local address for the Prometheus exposition of the counters.
    pub metrics: Option<std::net::SocketAddr>,
    /// Stamped on every event.
    pub sensor_id: String,
    /// Attach the benchmark's floor program (drops everything, counts nothing) instead of
    /// the filter.
    pub floor_program: bool,
}

fn print_report(
    xdp: &XdpCapture,
    user: &UserCounters,
    bpf_stats: bool,
    pipeline: &crate::pipeline::PipelineCounters,
    evidence: Option<&EvidenceCounters>,
) {
    let counters = match xdp.counters() {
        Ok(counters) => counters,
        Err(e) => return warn!("{e:#}"),
    };
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", CaptureReport { xdp: counters, user });
    if let Some(e) = evidence {
        let _ = crate::telemetry::write_rows(&mut out, "", &e.rows());
    }
    let _ = pipeline.write(&mut out);
    if bpf_stats {
        match xdp.program_info() {
            Ok(info) => {
                let _ = writeln!(out, "{:<26}{:>14}", "xdp_prog_run_count", info.run_count());
                let _ = writeln!(out, "{:<26}{:>14}", "xdp_prog_run_time_ns", info.run_time().as_nanos());
            }
            Err(e) => warn!("read program statistics: {e:#}"),
        }
    }
    let _ = out.flush();
}

pub fn run(opts: &CaptureOptions, load_settings: LoadSettings, signals: &Signals) -> anyhow::Result<()> {
    let mut settings = load_settings()?;
    if settings.dcs.is_empty() {
        bail!("no domain controllers to watch: give --dc ADDR[,ADDR…] or --dc-file FILE");
    }
    if let Some(level) = settings.log_level {
        log::set_max_level(level);
    }
    // The statistics stay on while this descriptor is open.
    let _stats = if opts.bpf_stats {
        Some(aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enable BPF run-time statistics")?)
    } else {
        None
    };
    let program = if opts.floor_program { tap_common::FLOOR_PROGRAM_NAME } else { tap_common::PROGRAM_NAME };
    // Opened before anything is attached (and capabilities dropped): an evidence directory
    // the sensor cannot write stops it now, not at the first frame.
    let mut evidence = opts.evidence.as_ref().map(EvidenceRing::open).transpose()?;
    let evidence_counters = evidence.as_ref().map(EvidenceRing::counters);
    let (mut xdp, rings) = XdpCapture::load_program(opts.ring_bytes, program)?;
    xdp.filter.set_ports(&settings.ports).context("fill the service-port map")?;
    xdp.filter.set_rpc_range(settings.rpc_range).context("fill the dynamic RPC range of the port map")?;
    xdp.filter.set_snaplen(opts.snaplen).context("set the snap length")?;
    xdp.filter.set_dcs(&settings.dcs).context("fill the DC address maps")?;
    // Attach before any thread starts, so the capabilities dropped right after are dropped
    // for every thread (they are per thread, inherited at creation). Frames that arrive
    // meanwhile wait in the rings.
    xdp.attach(&opts.iface, opts.mode)?;
    match crate::privileges::drop_after_attach() {
        Ok(kept) if kept.is_empty() => info!("attached; every capability dropped"),
        Ok(kept) => info!("attached; capabilities kept for this kernel: {kept:?}"),
        Err(e) => warn!("attached, but could not drop capabilities: {e:#}"),
    }
    let dc_watch = Arc::new(DcWatch::new(&settings.dcs, Instant::now()));

    let user = Arc::new(UserCounters::default());
    let stop_readers = Arc::new(AtomicBool::new(false));
    let (tx, rx) = bounded::<FrameBatch>(opts.channel_batches);
    let sink = match &opts.write {
        Some(path) => Some(PcapSink::create(path)?),
        None => None,
    };
    // Only the health report (to the cloud or the metrics endpoint) asks the DC watch;
    // without one, looking at frames for it is work for nobody.
    let watch = (opts.uplink.is_some() || opts.metrics.is_some()).then(|| Arc::clone(&dc_watch));
    // The recorder writes from the reader thread, straight from the rings; the sensor
    // copies frames into batches for the dispatch thread.
    let (consumer, mut sink) = match (opts.record_only, sink) {
        (true, Some(sink)) => (Consumer::Recorder { sink, watch: watch.clone() }, None),
        (true, None) => bail!("--record-only needs --write FILE"),
        (false, sink) => (
            Consumer::Batches {
                tx: tx.clone(),
                // As many as can be queued, and as many again in the consumer's hands.
                pool: crate::frames::BatchPool::new(2 * opts.channel_batches),
            },
            sink,
        ),
    };
    let reader = RingReader { rings, consumer, counters: Arc::clone(&user), stop: Arc::clone(&stop_readers) };
    let waker = signals.waker();
    let readers = vec![thread::Builder::new().name("ring-reader".into()).spawn(move || {
        let result = reader.run();
        waker.wake();
        result
    })?];
    drop(tx);
    // Events go to the spool and the cloud when one is configured; else they are counted.
    let mut uplink = match &opts.uplink {
        Some(u) => Some(Uplink::start(u.clone(), None)?),
        None => None,
    };
    let stamper = Stamper::new(&opts.sensor_id);
    // Dynamic RPC ports the parsers learn from endpoint-mapper replies come back here and
    // join the XDP port map, so the RPC connections that follow are captured.
    let (port_tx, port_rx) = bounded::<u16>(1024);
    let endpoints = Arc::new(crate::event::analyzer::Endpoints::default());
    let pipeline = Arc::new(Pipeline::start(&opts.pipeline, |_| {
        let sink: Box<dyn crate::event::EventSink> = match &uplink {
            // Live capture never waits for the disk: a writer that falls behind costs
            // events (counted), not frames.
            Some(u) => Box::new(u.sink(false)),
            None => Box::new(Discard),
        };
        let (ports, waker) = (port_tx.clone(), signals.waker());
        Analyzer::new(sink, stamper.clone()).with_endpoints(Arc::clone(&endpoints)).with_port_sink(move |port| {
            // A full channel only delays learning until the port is seen again.
            if ports.try_send(port).is_ok() {
                waker.wake();
            }
        })
    })?);
    drop(port_tx);
    let consumer_counters = Arc::clone(&user);
    let dispatcher = Arc::clone(&pipeline);
    let consumer_watch = watch;
    // The consumer writes the pcap (when asked) and dispatches to the pipeline workers.
    // The recorder's reader sends it nothing.
    let consumer = thread::Builder::new().name("dispatch".into()).spawn(move || -> anyhow::Result<()> {
        for batch in rx {
            if let Some(sink) = sink.as_mut() {
                sink.write_batch(&batch)?;
            }
            // Never fails: a disk error is counted and capture goes on.
            if let Some(ring) = evidence.as_mut() {
                ring.append(&batch);
            }
            UserCounters::add(&consumer_counters.frames_consumed, batch.len() as u64);
            if let Some(watch) = &consumer_watch {
                watch.observe(&batch);
            }
            dispatcher.dispatch(batch);
        }
        drop(dispatcher);
        match sink {
            Some(sink) => sink.finish(),
            None => Ok(()),
        }
    })?;

    info!("watching {} DC entries: {}", settings.dcs.len(), settings.dcs);
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "ready: capturing on {} ({} XDP)",
            opts.iface,
            if xdp.attached_native { "native" } else { "generic" }
        )?;
        out.flush()?;
    }
    // systemd (Type=notify): ready only now that the program is attached.
    let status = format!("capturing on {} ({} DC entries)", opts.iface, settings.dcs.len());
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]) {
        warn!("could not tell systemd the sensor is ready: {e}");
    }
    // Fed from the control loop: a loop that stops turning is what the watchdog is for.
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut fed = Instant::now();

    let metrics: Option<crate::metrics::MetricsBoard> = match opts.metrics {
        Some(addr) => {
            let board = crate::metrics::MetricsBoard::default();
            let bound = crate::metrics::serve(addr, std::sync::Arc::clone(&board))
                .with_context(|| format!("metrics: listen on {addr}"))?;
            info!("metrics on http://{bound}/metrics");
            Some(board)
        }
        None => None,
    };
    let started = Instant::now();
    let mut published = Instant::now();
    let mut health_state = HealthState { iface: opts.iface.clone(), seen: 0, seen_changed: Instant::now() };
    // Ports the endpoint mapper taught; a reload of the configured ports keeps them.
    let mut learned_ports = std::collections::BTreeSet::new();
    // A reader only ends early when the recorder cannot write its file: capture stops.
    while !signals.stopping()
        && opts.duration.is_none_or(|d| started.elapsed() < d)
        && !readers.iter().any(|r| r.is_finished())
    {
        let mut tick = CONTROL_TICK;
        if let Some(d) = opts.duration {
            tick = tick.min(d.saturating_sub(started.elapsed()));
        }
        if let Some(every) = watchdog {
            tick = tick.min(every.saturating_sub(fed.elapsed()));
        }
        signals.wait(tick);
        if watchdog.is_some_and(|every| fed.elapsed() >= every) {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            fed = Instant::now();
        }
        if (uplink.is_some() || metrics.is_some()) && published.elapsed() >= Duration::from_secs(1) {
            let (mut counters, mut alerts) = health(&mut health_state, &xdp, &user, &pipeline.counters());
            if let Some(e) = &evidence_counters {
                counters.extend(e.rows().map(|(k, v)| (k.to_string(), v)));
            }
            if let Some(after) = settings.dc_silence {
                alerts
                    .extend(dc_watch.silent(Instant::now(), after).iter().map(|dc| format!("no_traffic_from_dc:{dc}")));
            }
            if let Some(board) = &metrics {
                let mut all: std::collections::BTreeMap<String, u64> = counters.clone().into_iter().collect();
                if let Some(u) = &uplink {
                    all.extend(u.report_rows().into_iter().map(|(k, v)| (k.to_string(), v)));
                }
                all.extend(alerts.iter().map(|a| (format!("health_alert_{a}"), 1)));
                if let Ok(mut b) = board.lock() {
                    *b = all;
                }
            }
            if let Some(u) = &uplink {
                if let Ok(mut board) = u.health.lock() {
                    *board = (counters, alerts);
                }
            }
            published = Instant::now();
        }
        for port in port_rx.try_iter() {
            match xdp.filter.add_port(port) {
                Ok(true) => {
                    learned_ports.insert(port);
                    info!("dynamic RPC port {port} learned from the endpoint mapper: now captured")
                }
                Ok(false) => {}
                Err(e) => warn!("could not add learned port {port} to the XDP map: {e}"),
            }
        }
        if Signals::take(&signals.dump_counters) {
            print_report(&xdp, &user, opts.bpf_stats, &pipeline.counters(), evidence_counters.as_deref());
        }
        if Signals::take(&signals.reload) {
            if let Some(u) = &uplink {
                u.reload.store(true, Ordering::Relaxed);
            }
            match load_settings().and_then(|next| {
                if next.dcs.is_empty() {
                    bail!("the new DC list is empty");
                }
                Ok(next)
            }) {
                Ok(next) => {
                    apply_settings(&mut xdp, &settings, &next, &learned_ports, &dc_watch);
                    settings = next;
                }
                Err(e) => warn!("reload failed, keeping the current settings: {e:#}"),
            }
        }
    }

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // Detach first so no frame arrives after the readers' last drain.
    xdp.detach()?;
    stop_readers.store(true, Ordering::Release);
    let mut written = Ok(());
    for r in readers {
        let result = r.join().map_err(|_| anyhow::anyhow!("ring reader panicked")).and_then(|r| r);
        if let Err(e) = result {
            error!("capture stopped: {e:#}");
            written = Err(e);
        }
    }
    let dispatched = consumer.join().map_err(|_| anyhow::anyhow!("dispatch thread panicked"))?;
    let written = written.and(dispatched);
    let pipeline = Arc::into_inner(pipeline).ok_or_else(|| anyhow::anyhow!("pipeline still shared at exit"))?;
    let (counters, summaries) = pipeline.finish()?;
    print_report(&xdp, &user, opts.bpf_stats, &counters, evidence_counters.as_deref());
    print_summary(&summaries, &mut std::io::stdout().lock());
    if let Some(mut u) = uplink.take() {
        u.finish_writing()?;
        // A short grace to send the last events; the rest waits in the spool.
        let left = u.drain(EXIT_GRACE, &AtomicBool::new(false));
        let _ = crate::telemetry::write_rows(&mut std::io::stdout().lock(), "", &u.report_rows());
        if left > 0 {
            info!("{left} events wait in the spool {} for the next start", u.spool.dir().display());
        }
        u.stop();
    }
    written
}

/// Applies reloaded settings to the running capture: each map as a difference (a DC or
/// port that stays is never missing for a moment), flows untouched.
fn apply_settings(
    xdp: &mut XdpCapture,
    current: &LiveSettings,
    next: &LiveSettings,
    learned_ports: &std::collections::BTreeSet<u16>,
    dc_watch: &DcWatch,
) {
    // The level first, so the lines below obey the new one.
    if next.log_level != current.log_level {
        if let Some(level) = next.log_level {
            log::set_max_level(level);
            info!("log level now {level}");
        }
    }
    if next.rpc_range != current.rpc_range {
        match xdp.filter.set_rpc_range(next.rpc_range) {
            Ok(()) => info!("dynamic RPC range now {}", next.rpc_range.map_or("none".into(), |r| r.to_string())),
            Err(e) => warn!("dynamic RPC range reload failed while updating the map: {e}"),
        }
    }
    match xdp.filter.set_dcs(&next.dcs) {
        Ok(change) => {
            info!("DC list reloaded: {} entries (+{} -{}): {}", next.dcs.len(), change.added, change.removed, next.dcs)
        }
        Err(e) => warn!("DC list reload failed while updating maps: {e}"),
    }
    dc_watch.set_dcs(&next.dcs, Instant::now());
    if next.ports != current.ports {
        match xdp.filter.set_ports(&next.ports.with(learned_ports.iter().copied())) {
            Ok(()) => info!("service ports reloaded: {}", next.ports),
            Err(e) => warn!("service port reload failed while updating the map: {e}"),
        }
    }
    if next.dc_silence != current.dc_silence {
        info!("DC silence alert now {:?}", next.dc_silence);
    }
}

/// How long a stopping sensor keeps sending what is left in the spool.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How long without a single frame on the mirror port before "no_packets" is raised.
const NO_PACKETS_AFTER: Duration = Duration::from_secs(60);

/// What the health checks remember between calls.
struct HealthState {
    iface: String,
    seen: u64,
    seen_changed: Instant,
}

/// The capture and pipeline counters, with the health alerts they imply (for the uplink's
/// heartbeat and the metrics).
fn health(
    state: &mut HealthState,
    xdp: &XdpCapture,
    user: &UserCounters,
    pipeline: &crate::pipeline::PipelineCounters,
) -> (std::collections::HashMap<String, u64>, Vec<String>) {
    let mut counters = std::collections::HashMap::new();
    let mut alerts = Vec::new();
    if let Ok(x) = xdp.counters() {
        for c in tap_common::counters::Counter::ALL {
            counters.insert(format!("xdp_{}", c.name()), x.get(c));
        }
        if x.get(tap_common::counters::Counter::RingFull) > 0 {
            alerts.push("capture_drops".to_string());
        }
        let seen = x.get(tap_common::counters::Counter::Seen);
        if seen != state.seen {
            state.seen = seen;
            state.seen_changed = Instant::now();
        } else if state.seen_changed.elapsed() >= NO_PACKETS_AFTER {
            alerts.push("no_packets".to_string());
        }
    }
    for (name, value) in user.rows() {
        counters.insert(name.to_string(), value);
    }
    if user.frames_channel_full.load(Ordering::Relaxed) > 0 {
        alerts.push("capture_drops".to_string());
    }
    let mut rows = Vec::new();
    let _ = pipeline.write(&mut rows);
    for line in String::from_utf8_lossy(&rows).lines() {
        let mut parts = line.split_whitespace();
        if let (Some(k), Some(Ok(v))) = (parts.next(), parts.next().map(str::parse::<u64>)) {
            counters.insert(k.to_string(), v);
        }
    }
    // A mirror port whose link is down delivers nothing; say which rather than only "no
    // packets".
    let operstate = std::fs::read_to_string(format!("/sys/class/net/{}/operstate", state.iface)).unwrap_or_default();
    if !matches!(operstate.trim(), "up" | "unknown") {
        alerts.push("capture_interface_down".to_string());
    }
    alerts.dedup();
    (counters, alerts)
}

/// Totals of what the streams carried and the parsers made of them, over all workers.
pub fn print_summary(analyzers: &[Analyzer], out: &mut dyn std::io::Write) {
    let mut streams = crate::pipeline::summary::StreamSummary::default();
    let mut parse = crate::event::analyzer::ParseCounters::default();
    for a in analyzers {
        streams.merge(&a.streams);
        parse.merge(&a.counters);
    }
    let mut out = out;
    let _ = crate::telemetry::write_rows(&mut out, "stream", &streams.rows());
    let _ = crate::telemetry::write_rows(&mut out, "parse", &parse.rows());
    let _ = out.flush();
}

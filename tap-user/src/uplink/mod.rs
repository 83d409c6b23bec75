//! The way out to the cloud: pipeline → `SpoolSink` → spool writer thread → durable spool
//! on disk → gRPC client thread → `tap-cloud`. Capture never waits on the network; while
//! the cloud is slow or away, events wait on disk (bounded) and go out in order later.

pub mod client;
pub mod spool;
pub mod writer;

use std::{
    collections::HashMap,
    sync::{atomic::AtomicBool, atomic::Ordering, Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;

pub use client::{ClientConfig, HealthFn, TlsFiles, UplinkStatus};
pub use spool::{OverflowPolicy, Spool, SpoolConfig};
pub use writer::{ReplayGuard, SpoolSink, SpoolWriter};

/// Everything the uplink needs (from the command line or the config file).
#[derive(Clone, Debug)]
pub struct UplinkOptions {
    pub spool: SpoolConfig,
    pub client: ClientConfig,
    /// The evidence ring's directory, where excerpts the cloud asks for are cut from;
    /// `None` (offline reads, or evidence off): every request is answered with an error.
    pub evidence: Option<std::path::PathBuf>,
}

/// Capture and pipeline counters and alerts, published by the sensor's control loop for
/// the heartbeat to carry.
pub type HealthBoard = Arc<Mutex<(HashMap<String, u64>, Vec<String>)>>;

/// The spool, its writer and the client, started together.
pub struct Uplink {
    pub spool: Arc<Spool>,
    writer: Option<SpoolWriter>,
    writer_counters: Arc<writer::WriterCounters>,
    pub status: Arc<UplinkStatus>,
    pub health: HealthBoard,
    /// Set on SIGHUP: the client reconnects with freshly read certificates and key.
    pub reload: Arc<AtomicBool>,
    shutdown: tokio::sync::watch::Sender<bool>,
    client: Option<JoinHandle<()>>,
}

impl Uplink {
    /// Opens the spool and starts the writer and the client. With `replay` (offline reads),
    /// events an earlier run over the same file already spooled are not spooled again.
    pub fn start(opts: UplinkOptions, replay: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let dir = opts.spool.dir.clone();
        let max_bytes = opts.spool.max_bytes;
        let spool = Arc::new(Spool::open(opts.spool).with_context(|| format!("open spool {}", dir.display()))?);
        let c = spool.counters();
        if spool.written() > spool.acked() {
            log::info!(
                "spool {}: {} events from an earlier run not yet acknowledged; they go first",
                dir.display(),
                spool.written() - spool.acked()
            );
        }
        if c.recovered_truncated_bytes > 0 {
            log::warn!("spool {}: recovered after a crash ({} bytes cut)", dir.display(), c.recovered_truncated_bytes);
        }
        let replay = match replay {
            Some(source) => Some(
                ReplayGuard::open(&dir, source).with_context(|| format!("replay record for {}", source.display()))?,
            ),
            None => None,
        };
        let writer = SpoolWriter::start(Arc::clone(&spool), replay)?;
        let status = Arc::new(UplinkStatus::default());
        let health: HealthBoard = Arc::default();
        let reload = Arc::new(AtomicBool::new(false));
        let heartbeat: HealthFn = {
            let (spool, status, board, wc) =
                (Arc::clone(&spool), Arc::clone(&status), Arc::clone(&health), Arc::clone(&writer.counters));
            Arc::new(move || {
                let (mut counters, mut alerts) = board.lock().map(|b| b.clone()).unwrap_or_default();
                counters.extend(counter_map(&Self::counters(&spool, &status, &wc)));
                alerts.extend(self::alerts(&spool, &status, max_bytes));
                (counters, alerts)
            })
        };
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let (s, st, rl) = (Arc::clone(&spool), Arc::clone(&status), Arc::clone(&reload));
        let client_cfg = opts.client;
        let excerpts = client::Excerpts::new(opts.evidence);
        let client = std::thread::Builder::new().name("uplink".into()).spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(client::run(client_cfg, s, st, heartbeat, excerpts, rl, rx)),
                Err(e) => log::error!("uplink: cannot start its runtime: {e}"),
            }
        })?;
        let writer_counters = Arc::clone(&writer.counters);
        Ok(Self {
            spool,
            writer: Some(writer),
            writer_counters,
            status,
            health,
            reload,
            shutdown,
            client: Some(client),
        })
    }

    /// Counter rows for the sensor's report.
    pub fn report_rows(&self) -> Vec<(&'static str, u64)> {
        Self::counters(&self.spool, &self.status, &self.writer_counters)
    }

    /// A sink for one pipeline worker. Offline reads `block` (nothing may be lost); live
    /// capture drops and counts when the writer falls behind.
    pub fn sink(&self, block: bool) -> SpoolSink {
        self.writer.as_ref().expect("sink after finish_writing").sink(block)
    }

    /// Waits for the writer to write and sync everything handed to it. Every sink must be
    /// dropped first (the pipeline finished).
    pub fn finish_writing(&mut self) -> anyhow::Result<()> {
        match self.writer.take() {
            Some(w) => w.finish().context("spool writer"),
            None => Ok(()),
        }
    }

    /// Waits until the cloud has acknowledged everything written so far, `timeout` passes
    /// or `stop` is set (SIGINT/SIGTERM). Returns how many events are still unacknowledged.
    pub fn drain(&self, timeout: Duration, stop: &AtomicBool) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.spool.written().saturating_sub(self.spool.acked());
            if left == 0 || Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                return left;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the client (the spool keeps what was not acknowledged).
    pub fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.client.take() {
            let _ = t.join();
        }
    }

    /// Counters for the report and the heartbeat.
    pub fn counters(spool: &Spool, status: &UplinkStatus, writer: &writer::WriterCounters) -> Vec<(&'static str, u64)> {
        let c = spool.counters();
        vec![
            ("spool_events_appended", c.appended),
            ("spool_unacked_events", spool.written().saturating_sub(spool.acked())),
            ("spool_bytes", c.bytes),
            ("spool_overflow_dropped", c.overflow_dropped),
            ("spool_overflow_refused", c.overflow_refused),
            ("spool_channel_full", writer.channel_full.load(Ordering::Relaxed)),
            ("spool_replay_skipped", writer.replay_skipped.load(Ordering::Relaxed)),
            ("spool_write_errors", writer.write_errors.load(Ordering::Relaxed)),
            ("uplink_connected", u64::from(status.connected.load(Ordering::Relaxed))),
            ("uplink_connects", status.connects.load(Ordering::Relaxed)),
            ("uplink_failures", status.failures.load(Ordering::Relaxed)),
            ("uplink_events_acked", status.events_acked.load(Ordering::Relaxed)),
            ("uplink_duplicates", status.duplicates.load(Ordering::Relaxed)),
            ("uplink_events_time_clamped", status.time_clamped.load(Ordering::Relaxed)),
            ("uplink_excerpts_uploaded", status.excerpts_uploaded.load(Ordering::Relaxed)),
            ("uplink_excerpt_failures", status.excerpt_failures.load(Ordering::Relaxed)),
        ]
    }
}

/// Health alerts from the uplink's own state.
pub fn alerts(spool: &Spool, status: &UplinkStatus, spool_max_bytes: u64) -> Vec<String> {
    let mut alerts = Vec::new();
    let c = spool.counters();
    if c.overflow_dropped + c.overflow_refused > 0 {
        alerts.push("spool_overflow".to_string());
    }
    if c.bytes > spool_max_bytes / 10 * 8 {
        alerts.push("spool_filling".to_string());
    }
    if status.refused.load(Ordering::Relaxed) {
        alerts.push("cloud_refused_sensor".to_string());
    }
    if status.clock_skewed.load(Ordering::Relaxed) {
        alerts.push("clock_skew".to_string());
    }
    // Sent once the link is back, so the cloud learns the sensor was cut off and for long.
    let away = status.disconnected_since.lock().ok().and_then(|s| s.map(|t| t.elapsed()));
    if away.is_some_and(|d| d >= CLOUD_UNREACHABLE_AFTER) {
        alerts.push("cloud_unreachable".to_string());
    }
    alerts
}

/// How long without a session before "cloud_unreachable" is raised.
pub const CLOUD_UNREACHABLE_AFTER: Duration = Duration::from_secs(60);

/// Counters as the heartbeat's map.
pub fn counter_map(rows: &[(&str, u64)]) -> HashMap<String, u64> {
    rows.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

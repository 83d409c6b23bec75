//! The one thread that appends to the spool: workers hand it events over a bounded
//! channel, it numbers and writes them, and flushes on a short timer so the uplink sees
//! them quickly (the batching time bound) and on a longer one to the disk.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use prost::Message as _;
use sha2::Digest as _;

use super::spool::Spool;
use crate::event::{ActivityEvent, EventSink};

/// How long an event may wait in the writer before the uplink can read it.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// How often written events are forced to the disk.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Counters of the hand-off into the spool.
#[derive(Debug, Default)]
pub struct WriterCounters {
    /// Events dropped because the writer fell behind (live capture never waits for disk).
    pub channel_full: AtomicU64,
    /// Events of a re-read capture that the spool already had from an earlier run.
    pub replay_skipped: AtomicU64,
    pub write_errors: AtomicU64,
}

/// The pipeline's event sink in uplink mode.
pub struct SpoolSink {
    tx: Sender<ActivityEvent>,
    /// Offline reads wait for the writer; live capture drops and counts instead.
    block: bool,
    counters: Arc<WriterCounters>,
}

impl EventSink for SpoolSink {
    fn emit(&mut self, event: ActivityEvent) {
        if self.block {
            let _ = self.tx.send(event);
        } else if let Err(TrySendError::Full(_)) = self.tx.try_send(event) {
            self.counters.channel_full.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub struct SpoolWriter {
    tx: Option<Sender<ActivityEvent>>,
    /// Set by `finish`: the workers' sinks may outlive the pipeline (their analyzers are
    /// its report), so the channel alone never says "no more events".
    finishing: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
    pub counters: Arc<WriterCounters>,
}

impl SpoolWriter {
    /// Starts the writer. With `replay`, events that an earlier run over the same source
    /// already spooled are skipped (see `ReplayGuard`).
    pub fn start(spool: Arc<Spool>, replay: Option<ReplayGuard>) -> io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded(65_536);
        let counters = Arc::new(WriterCounters::default());
        let c = Arc::clone(&counters);
        let finishing = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&finishing);
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || write_loop(&spool, &rx, replay, &c, &f))?;
        Ok(Self { tx: Some(tx), finishing, thread: Some(thread), counters })
    }

    pub fn sink(&self, block: bool) -> SpoolSink {
        let tx = self.tx.clone().expect("sink taken before finish");
        SpoolSink { tx, block, counters: Arc::clone(&self.counters) }
    }

    /// Waits until every event handed over so far is written and synced. Call it once the
    /// pipeline has finished (no sink emits any more).
    pub fn finish(mut self) -> io::Result<()> {
        drop(self.tx.take());
        self.finishing.store(true, Ordering::Release);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("spool writer panicked")),
            None => Ok(()),
        }
    }
}

fn write_loop(
    spool: &Spool,
    rx: &Receiver<ActivityEvent>,
    mut replay: Option<ReplayGuard>,
    counters: &WriterCounters,
    finishing: &AtomicBool,
) -> io::Result<()> {
    let mut last_sync = Instant::now();
    let mut dirty = false;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let first = match rx.recv_timeout(FLUSH_INTERVAL) {
            Ok(ev) => Some(ev),
            Err(RecvTimeoutError::Timeout) if finishing.load(Ordering::Acquire) && rx.is_empty() => break,
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // Everything already queued goes into this flush.
        for mut event in first.into_iter().chain(rx.try_iter().take(65_536)) {
            if let Some(guard) = replay.as_mut() {
                if guard.seen_before(&mut event, &mut buf)? {
                    counters.replay_skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            // The number is the spool record's; the uplink puts it into the event it sends.
            buf.clear();
            event.encode(&mut buf).map_err(io::Error::other)?;
            if let Err(e) = spool.append(&buf, crate::time::unix_ns()) {
                counters.write_errors.fetch_add(1, Ordering::Relaxed);
                log::error!("spool: writing an event failed: {e}");
            }
            dirty = true;
        }
        if dirty {
            spool.flush(false)?;
            if let Some(guard) = replay.as_mut() {
                guard.flush()?;
            }
        }
        if dirty && last_sync.elapsed() >= SYNC_INTERVAL {
            spool.flush(true)?;
            last_sync = Instant::now();
            dirty = false;
        }
    }
    spool.flush(true)?;
    if let Some(guard) = replay.as_mut() {
        guard.flush()?;
    }
    Ok(())
}

/// Makes re-reading a capture idempotent: `tap-sensor --read FILE` killed half-way and run
/// again must not send the events of the first run twice. The guard keeps, per source
/// (path, size, modification time), the digests of the events already spooled from it (a
/// multiset: two identical events are two), and the second run skips as many of each.
pub struct ReplayGuard {
    seen: HashMap<[u8; 8], u32>,
    /// Digests of events appended since the last flush: written only after the spool's
    /// own flush, so a digest on disk always stands for an event on disk.
    pending: Vec<u8>,
    log: File,
}

impl ReplayGuard {
    pub fn open(spool_dir: &Path, source: &Path) -> io::Result<Self> {
        let meta = fs::metadata(source)?;
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
        let canonical = fs::canonicalize(source)?;
        let key = sha2::Sha256::digest(format!("{}\0{}\0{}", canonical.display(), meta.len(), mtime.as_nanos()));
        let dir = spool_dir.join("sources");
        super::spool::create_private_dir(&dir)?;
        let path = dir.join(format!("{}.digests", hex8(&key[..8])));
        let mut seen: HashMap<[u8; 8], u32> = HashMap::new();
        let mut bytes = Vec::new();
        if let Ok(mut f) = File::open(&path) {
            f.read_to_end(&mut bytes)?;
        }
        // A torn last digest (a crash mid-write) is ignored, and cut so appends stay aligned.
        let whole = bytes.len() / 8 * 8;
        for d in bytes[..whole].chunks_exact(8) {
            *seen.entry(d.try_into().unwrap_or_default()).or_default() += 1;
        }
        let file = OpenOptions::new().create(true).append(true).mode(super::spool::FILE_MODE).open(&path)?;
        if whole != bytes.len() {
            file.set_len(whole as u64)?;
        }
        if !seen.is_empty() {
            log::info!("{}: read before; {} events already spooled will be skipped", source.display(), whole / 8);
        }
        Ok(Self { seen, pending: Vec::new(), log: file })
    }

    /// True when an identical event was spooled by an earlier run (and is now consumed);
    /// otherwise records this one.
    fn seen_before(&mut self, event: &mut ActivityEvent, buf: &mut Vec<u8>) -> io::Result<bool> {
        event.seq = 0;
        buf.clear();
        event.encode(buf).map_err(io::Error::other)?;
        let digest: [u8; 8] = sha2::Sha256::digest(&buf[..])[..8].try_into().unwrap_or_default();
        if let Some(n) = self.seen.get_mut(&digest) {
            if *n > 0 {
                *n -= 1;
                return Ok(true);
            }
        }
        self.pending.extend_from_slice(&digest);
        Ok(false)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.log.write_all(&self.pending)?;
        self.pending.clear();
        Ok(())
    }
}

fn hex8(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

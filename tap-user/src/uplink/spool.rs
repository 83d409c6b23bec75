//! The durable spool between the pipeline and the network: a checksummed segment log.
//!
//! Events get their sequence number here, so the numbers are contiguous, in the order they
//! were written, and continue across restarts (the cloud deduplicates on (sensor, seq), so a
//! restarted sensor must never reuse one). A segment is a file named after its first
//! sequence number holding records `[len u32][crc32 u32][seq u64][spooled_ns i64][event]`
//! (little endian; the CRC covers everything after it). On open, each segment is scanned and
//! cut at the first record that is torn or fails its checksum, which is what a crash in the
//! middle of a write leaves. `acked` holds the highest sequence number the cloud has stored;
//! segments wholly below it are deleted.
//!
//! The numbers the cloud sees are the spool's own plus a base, fixed the first time the
//! spool meets the cloud (file `base`): a new spool for a sensor id the cloud already holds
//! events of (a re-imaged appliance, a wiped spool directory) numbers its events above
//! them, so every one is sent and none is taken for one the cloud holds. Everything the
//! spool's API hands out or takes is in the cloud's numbers; the files hold its own.
//!
//! Why not an embedded database: the access pattern is one appender and one reader in
//! order, and the log is 300 lines whose crash behaviour the tests can pin down exactly.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

const HEADER: usize = 24;
/// An event is a few hundred bytes; a larger length field is corruption, not data.
pub const MAX_RECORD: usize = 1 << 20;
const SEGMENT_SUFFIX: &str = "seg";
/// Events name accounts, hosts and what they did: the spool's files are the sensor's
/// alone, whatever the umask.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Creates `dir` and any missing parent, only the sensor's (0700); an existing one is left
/// as it is.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// What to give up when the spool is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OverflowPolicy {
    /// Delete the oldest unsent segment: recent activity matters most to detection.
    DropOldest,
    /// Refuse new events until the cloud catches up: keeps the history intact.
    DropNewest,
}

#[derive(Clone, Debug)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Upper bound of all segment files together.
    pub max_bytes: u64,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    pub overflow: OverflowPolicy,
}

impl SpoolConfig {
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        Self { dir: dir.into(), max_bytes, segment_bytes: 8 << 20, overflow: OverflowPolicy::DropOldest }
    }
}

/// One event as the spool holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpooledEvent {
    pub seq: u64,
    pub spooled_unix_ns: i64,
    /// The encoded `ActivityEvent`.
    pub payload: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolCounters {
    pub appended: u64,
    /// Unacknowledged events deleted with the oldest segment (drop-oldest).
    pub overflow_dropped: u64,
    /// Events refused because the spool was full (drop-newest).
    pub overflow_refused: u64,
    /// Bytes cut from segments on open because a record was torn or corrupt.
    pub recovered_truncated_bytes: u64,
    pub bytes: u64,
    pub segments: u64,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    bytes: u64,
    /// Highest sequence number in it; `first - 1` while empty.
    last_seq: u64,
}

struct State {
    segments: BTreeMap<u64, Segment>,
    writer: Option<BufWriter<File>>,
    next_seq: u64,
    counters: SpoolCounters,
}

pub struct Spool {
    cfg: SpoolConfig,
    /// Held (flock) while open: two sensors on one spool would each delete the other's
    /// segments and reuse its numbers.
    _lock: File,
    state: Mutex<State>,
    /// Highest sequence number written through to the file system (readable).
    written: AtomicU64,
    acked: AtomicU64,
    /// Added to the spool's own numbers to give the cloud's (see the module comment).
    base: AtomicU64,
    /// The base is fixed (the spool met the cloud, or acknowledged events before bases).
    registered: std::sync::atomic::AtomicBool,
    /// Wakes the reader when `written` moves.
    pub notify: tokio::sync::Notify,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.{SEGMENT_SUFFIX}")
}

fn crc(seq: u64, spooled: i64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&spooled.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Reads the record at the reader's position: `Ok(None)` at a clean end, `Err` (of kind
/// InvalidData or UnexpectedEof) for a torn or corrupt one.
fn read_record(r: &mut impl Read) -> io::Result<Option<SpooledEvent>> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut header[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let len = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default()) as usize;
    let sum = u32::from_le_bytes(header[4..8].try_into().unwrap_or_default());
    let seq = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    let spooled = i64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
    if len > MAX_RECORD {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("record length {len}")));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    if crc(seq, spooled, &payload) != sum {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("checksum of record {seq}")));
    }
    Ok(Some(SpooledEvent { seq, spooled_unix_ns: spooled, payload }))
}

fn encode_record(out: &mut Vec<u8>, seq: u64, spooled: i64, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc(seq, spooled, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&spooled.to_le_bytes());
    out.extend_from_slice(payload);
}

impl Spool {
    /// Opens (creating) the spool directory and recovers its segments.
    pub fn open(cfg: SpoolConfig) -> io::Result<Self> {
        create_private_dir(&cfg.dir)
            .map_err(|e| io::Error::new(e.kind(), format!("spool directory {}: {e}", cfg.dir.display())))?;
        let lock = lock_dir(&cfg.dir)?;
        let mut cfg = cfg;
        // Room for at least four segments, so dropping the oldest frees a useful share.
        cfg.segment_bytes = cfg.segment_bytes.min(cfg.max_bytes / 4).max(4096);
        let acked = read_acked(&cfg.dir)?;
        let base = read_base(&cfg.dir)?;
        let mut counters = SpoolCounters::default();
        let mut segments = BTreeMap::new();
        let mut firsts: Vec<u64> = fs::read_dir(&cfg.dir)?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(&format!(".{SEGMENT_SUFFIX}"))?.parse().ok()
            })
            .collect();
        firsts.sort_unstable();
        let mut next_seq = acked + 1;
        for first in firsts {
            let path = cfg.dir.join(segment_name(first));
            let (valid_bytes, last_seq, cut) = scan_segment(&path, first)?;
            if cut > 0 {
                log::warn!("spool: {}: cut {cut} bytes of torn or corrupt records", path.display());
                OpenOptions::new().write(true).open(&path)?.set_len(valid_bytes)?;
                counters.recovered_truncated_bytes += cut;
            }
            if last_seq <= acked && last_seq >= first {
                // Acknowledged before the crash; the prune did not happen yet.
                let _ = fs::remove_file(&path);
                continue;
            }
            next_seq = next_seq.max(last_seq + 1);
            segments.insert(first, Segment { path, bytes: valid_bytes, last_seq });
        }
        counters.bytes = segments.values().map(|s| s.bytes).sum();
        let spool = Self {
            cfg,
            _lock: lock,
            state: Mutex::new(State { segments, writer: None, next_seq, counters }),
            written: AtomicU64::new(next_seq - 1),
            acked: AtomicU64::new(acked),
            // A spool that acknowledged events before bases existed numbered as the cloud.
            registered: std::sync::atomic::AtomicBool::new(base.is_some() || acked > 0),
            base: AtomicU64::new(base.unwrap_or(0)),
            notify: tokio::sync::Notify::new(),
        };
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    fn base(&self) -> u64 {
        self.base.load(Ordering::Acquire)
    }

    /// Highest sequence number the cloud has stored.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire) + self.base()
    }

    /// Highest sequence number written and readable.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire) + self.base()
    }

    /// The sequence number the next appended event gets.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq + self.base()
    }

    /// Takes what the cloud answered at registration: the highest number it holds (or has
    /// examined) for this sensor id. The first time, that fixes the base: a spool meeting
    /// the cloud for the first time numbers its events above what the cloud holds. Later,
    /// numbers the cloud holds above ours are skipped, and what it holds of ours need not
    /// be sent again (the sensor died between the cloud's store and its acknowledgement).
    pub fn register(&self, stored_through: u64) -> io::Result<()> {
        if !self.registered.load(Ordering::Acquire) {
            write_base(&self.cfg.dir, stored_through)?;
            self.base.store(stored_through, Ordering::Release);
            self.registered.store(true, Ordering::Release);
            if stored_through > 0 {
                log::warn!(
                    "spool: the cloud already holds events up to {stored_through} for this sensor id (a re-imaged \
                     sensor or a new spool directory): this spool's events are numbered from {} on",
                    stored_through + 1
                );
            }
            return Ok(());
        }
        self.skip_to_above(stored_through);
        if stored_through > self.acked() {
            self.ack(stored_through.min(self.written()))?;
        }
        Ok(())
    }

    pub fn counters(&self) -> SpoolCounters {
        let st = self.lock();
        SpoolCounters { segments: st.segments.len() as u64, ..st.counters }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent files (records are written whole
        // or cut on the next open), so the state is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the cloud already holds numbers at or above ours although this spool met it
    /// before (a spool restored from a backup, two sensor processes under one id), continue
    /// above them: reused numbers would be dropped as duplicates.
    fn skip_to_above(&self, stored_through: u64) {
        let base = self.base();
        let local = stored_through.saturating_sub(base);
        let mut st = self.lock();
        if local >= st.next_seq {
            log::warn!(
                "spool: the cloud holds events up to {stored_through} for this sensor id, the spool only up to {}; numbering continues above",
                st.next_seq - 1 + base
            );
            st.next_seq = local + 1;
            st.writer = None; // the next append starts a segment named after the new number
        }
    }

    /// Appends encoded events, giving each the next sequence number (returned, 0 when the
    /// event was refused because the spool is full under drop-newest). Written to the
    /// file system by `flush`.
    pub fn append(&self, payload: &[u8], spooled_unix_ns: i64) -> io::Result<u64> {
        if payload.len() > MAX_RECORD {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "event larger than a spool record"));
        }
        let mut st = self.lock();
        let record_bytes = (HEADER + payload.len()) as u64;
        if st.counters.bytes + record_bytes > self.cfg.max_bytes {
            match self.cfg.overflow {
                OverflowPolicy::DropNewest => {
                    st.counters.overflow_refused += 1;
                    return Ok(0);
                }
                OverflowPolicy::DropOldest => self.drop_oldest(&mut st, record_bytes)?,
            }
        }
        let seq = st.next_seq;
        let need_new = match st.segments.last_key_value() {
            None => true,
            Some((_, seg)) => st.writer.is_none() || seg.bytes >= self.cfg.segment_bytes,
        };
        if need_new {
            if let Some(mut w) = st.writer.take() {
                w.flush()?;
            }
            let path = self.cfg.dir.join(segment_name(seq));
            let file = OpenOptions::new().create(true).append(true).mode(FILE_MODE).open(&path)?;
            st.segments.insert(seq, Segment { path, bytes: 0, last_seq: seq - 1 });
            st.writer = Some(BufWriter::with_capacity(256 << 10, file));
        }
        let mut buf = Vec::with_capacity(HEADER + payload.len());
        encode_record(&mut buf, seq, spooled_unix_ns, payload);
        st.writer.as_mut().ok_or_else(|| io::Error::other("no open segment"))?.write_all(&buf)?;
        if let Some((_, seg)) = st.segments.iter_mut().next_back() {
            seg.bytes += record_bytes;
            seg.last_seq = seq;
        }
        st.counters.bytes += record_bytes;
        st.counters.appended += 1;
        st.next_seq += 1;
        Ok(seq + self.base())
    }

    fn drop_oldest(&self, st: &mut State, needed: u64) -> io::Result<()> {
        let acked = self.acked.load(Ordering::Acquire);
        while st.counters.bytes + needed > self.cfg.max_bytes && st.segments.len() > 1 {
            let Some((first, seg)) = st.segments.pop_first() else { break };
            let unacked = seg.last_seq.saturating_sub(acked.max(first - 1));
            st.counters.overflow_dropped += unacked;
            st.counters.bytes -= seg.bytes;
            fs::remove_file(&seg.path)?;
            log::warn!("spool full: dropped segment {first}..={} ({unacked} unsent events)", seg.last_seq);
        }
        Ok(())
    }

    /// Writes buffered records through to the file system (enough to survive the sensor
    /// being killed) and, with `sync`, to the disk (enough to survive power loss).
    pub fn flush(&self, sync: bool) -> io::Result<()> {
        let mut st = self.lock();
        if let Some(w) = st.writer.as_mut() {
            w.flush()?;
            if sync {
                w.get_ref().sync_data()?;
            }
        }
        let written = st.next_seq - 1;
        drop(st);
        if self.written.swap(written, Ordering::AcqRel) != written {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Records that the cloud stored everything up to `through` and deletes the segments
    /// that are wholly acknowledged (not the one being written).
    pub fn ack(&self, through: u64) -> io::Result<()> {
        if through <= self.acked() {
            return Ok(());
        }
        let through = through - self.base();
        self.acked.store(through, Ordering::Release);
        write_acked(&self.cfg.dir, through)?;
        let mut st = self.lock();
        let active = st.segments.last_key_value().map(|(k, _)| *k);
        let done: Vec<u64> =
            st.segments.iter().filter(|(k, s)| Some(**k) != active && s.last_seq <= through).map(|(k, _)| *k).collect();
        for first in done {
            if let Some(seg) = st.segments.remove(&first) {
                st.counters.bytes -= seg.bytes;
                fs::remove_file(&seg.path)?;
            }
        }
        Ok(())
    }

    /// A reader positioned at the first event after `after`.
    pub fn cursor(&self, after: u64) -> Cursor {
        Cursor { next: after.saturating_sub(self.base()) + 1, open: None }
    }

    /// Up to `max_events` / `max_bytes` of written events from the cursor on, in order.
    /// Events lost to drop-oldest are skipped.
    pub fn read(&self, cursor: &mut Cursor, max_events: usize, max_bytes: usize) -> io::Result<Vec<SpooledEvent>> {
        let written = self.written.load(Ordering::Acquire);
        let mut out = Vec::new();
        let mut bytes = 0;
        while cursor.next <= written && out.len() < max_events && bytes < max_bytes {
            if cursor.open.is_none() && !self.position(cursor)? {
                break;
            }
            let Some((_, reader)) = cursor.open.as_mut() else { break };
            match read_record(reader) {
                Ok(Some(ev)) if ev.seq < cursor.next => continue,
                Ok(Some(mut ev)) => {
                    cursor.next = ev.seq + 1;
                    bytes += ev.payload.len();
                    ev.seq += self.base();
                    out.push(ev);
                }
                // End of this segment's file: the next one holds what follows.
                Ok(None) => cursor.open = None,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => cursor.open = None,
                Err(e) => return Err(e),
            }
            if cursor.open.is_none() && out.last().is_some_and(|e| e.seq >= written + self.base()) {
                break;
            }
        }
        Ok(out)
    }

    /// Opens the segment holding `cursor.next`, or the first one after it when that one was
    /// dropped. False when there is none.
    fn position(&self, cursor: &mut Cursor) -> io::Result<bool> {
        let st = self.lock();
        let candidate = st
            .segments
            .range(..=cursor.next)
            .next_back()
            .filter(|(_, s)| s.last_seq >= cursor.next)
            .or_else(|| st.segments.range(cursor.next + 1..).next());
        let Some((&first, seg)) = candidate else { return Ok(false) };
        let path = seg.path.clone();
        drop(st);
        let file = match File::open(&path) {
            Ok(f) => f,
            // Deleted by drop-oldest or an ack meanwhile: look again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(e),
        };
        cursor.next = cursor.next.max(first);
        cursor.open = Some((first, BufReader::with_capacity(256 << 10, file)));
        Ok(true)
    }
}

/// A position in the spool (see `Spool::read`).
pub struct Cursor {
    next: u64,
    open: Option<(u64, BufReader<File>)>,
}

impl Cursor {
    /// The sequence number the next read starts at.
    pub fn next_seq(&self) -> u64 {
        self.next
    }
}

/// Returns (bytes of valid records, last valid sequence number, bytes after them).
fn scan_segment(path: &Path, first: u64) -> io::Result<(u64, u64, u64)> {
    let mut file = File::open(path)?;
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::new(file);
    let mut valid = 0u64;
    let mut last = first - 1;
    loop {
        match read_record(&mut reader) {
            Ok(Some(ev)) if ev.seq > last && (last >= first || ev.seq == first) => {
                valid += (HEADER + ev.payload.len()) as u64;
                last = ev.seq;
            }
            // Out of order: not something this writer produces, so treat as corruption.
            Ok(Some(_)) => break,
            Ok(None) => break,
            Err(e) if matches!(e.kind(), io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof) => break,
            Err(e) => return Err(e),
        }
    }
    Ok((valid, last, len - valid))
}

fn lock_dir(dir: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd as _;
    let file = OpenOptions::new().create(true).truncate(false).write(true).mode(FILE_MODE).open(dir.join("lock"))?;
    // SAFETY: flock on a descriptor we own; the lock goes with the descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("spool {} is in use by another sensor process", dir.display()),
        ));
    }
    Ok(file)
}

fn read_acked(dir: &Path) -> io::Result<u64> {
    match fs::read_to_string(dir.join("acked")) {
        Ok(s) => s.trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a sequence number", dir.join("acked").display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// The numbering base, once the spool met the cloud (None before).
fn read_base(dir: &Path) -> io::Result<Option<u64>> {
    match fs::read_to_string(dir.join("base")) {
        Ok(s) => s.trim().parse().map(Some).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: not a sequence number", dir.join("base").display()))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Written through to the disk before anything is sent under it: a base lost in a power
/// cut would number the same events twice.
fn write_base(dir: &Path, base: u64) -> io::Result<()> {
    let tmp = dir.join("base.tmp");
    let mut f = OpenOptions::new().create(true).truncate(true).write(true).mode(FILE_MODE).open(&tmp)?;
    f.write_all(format!("{base}\n").as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join("base"))?;
    File::open(dir)?.sync_all()
}

/// Replaced atomically (write then rename). Not synced: losing the last acknowledgement in
/// a power cut only makes the sensor send again what the cloud then drops as duplicates.
fn write_acked(dir: &Path, through: u64) -> io::Result<()> {
    let tmp = dir.join("acked.tmp");
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)?
        .write_all(format!("{through}\n").as_bytes())?;
    fs::rename(tmp, dir.join("acked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dctap-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn payload(i: u64) -> Vec<u8> {
        format!("event number {i} {}", "x".repeat((i % 97) as usize)).into_bytes()
    }

    fn read_all(spool: &Spool, after: u64) -> Vec<SpooledEvent> {
        let mut c = spool.cursor(after);
        let mut out = Vec::new();
        loop {
            let batch = spool.read(&mut c, 100, 1 << 20).unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch);
        }
    }

    #[test]
    fn the_spool_is_the_sensors_alone_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // SAFETY: umask only sets this process's file creation mask; 022 is the usual one,
        // which leaves new files readable by all.
        unsafe { libc::umask(0o022) };
        let dir = temp_dir("modes");
        let spool_dir = dir.join("var/spool");
        let spool = Spool::open(SpoolConfig::new(&spool_dir, 64 << 20)).unwrap();
        spool.append(&payload(1), 1).unwrap();
        spool.flush(false).unwrap();
        spool.register(0).unwrap();
        spool.ack(1).unwrap();
        assert_eq!((mode(&dir.join("var")), mode(&spool_dir)), (0o700, 0o700));
        let files: Vec<PathBuf> = fs::read_dir(&spool_dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(files.iter().any(|f| f.extension().is_some_and(|e| e == SEGMENT_SUFFIX)), "{files:?}");
        assert!(files.contains(&spool_dir.join("acked")) && files.contains(&spool_dir.join("lock")));
        assert!(files.contains(&spool_dir.join("base")));
        for f in files {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
        drop(spool);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn numbers_continue_across_reopen_and_reads_resume_after_the_ack() {
        let dir = temp_dir("reopen");
        let mut cfg = SpoolConfig::new(&dir, 64 << 20);
        cfg.segment_bytes = 4096; // several segments
        {
            let spool = Spool::open(cfg.clone()).unwrap();
            for i in 1..=500 {
                assert_eq!(spool.append(&payload(i), i as i64).unwrap(), i);
            }
            spool.flush(false).unwrap();
            assert!(spool.counters().segments > 3);
            spool.ack(120).unwrap();
        }
        let spool = Spool::open(cfg).unwrap();
        assert_eq!(spool.acked(), 120);
        assert_eq!(spool.next_seq(), 501);
        let got = read_all(&spool, spool.acked());
        assert_eq!(got.len(), 380);
        for (i, ev) in got.iter().enumerate() {
            let seq = 121 + i as u64;
            assert_eq!((ev.seq, ev.spooled_unix_ns, &ev.payload), (seq, seq as i64, &payload(seq)));
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_and_numbering_continues_after_the_last_whole_record() {
        let dir = temp_dir("torn");
        let cfg = SpoolConfig::new(&dir, 64 << 20);
        {
            let spool = Spool::open(cfg.clone()).unwrap();
            for i in 1..=10 {
                spool.append(&payload(i), 0).unwrap();
            }
            spool.flush(false).unwrap();
        }
        let seg = dir.join(segment_name(1));
        let len = fs::metadata(&seg).unwrap().len();
        // A crash in the middle of the 10th record, then a record whose bytes rotted.
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 5).unwrap();
        let spool = Spool::open(cfg.clone()).unwrap();
        assert_eq!(spool.next_seq(), 10);
        assert!(spool.counters().recovered_truncated_bytes > 0);
        assert_eq!(read_all(&spool, 0).len(), 9);
        drop(spool);
        let mut bytes = fs::read(&seg).unwrap();
        let at = bytes.len() - 3;
        bytes[at] ^= 0xff; // flip a bit in the payload of record 9
        fs::write(&seg, bytes).unwrap();
        let spool = Spool::open(cfg).unwrap();
        assert_eq!(spool.next_seq(), 9);
        assert_eq!(spool.append(b"after", 0).unwrap(), 9);
        spool.flush(false).unwrap();
        let got = read_all(&spool, 0);
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=9).collect::<Vec<_>>());
        assert_eq!(got[8].payload, b"after");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn drop_oldest_bounds_the_size_and_counts_what_was_lost() {
        let dir = temp_dir("oldest");
        let mut cfg = SpoolConfig::new(&dir, 256 << 10);
        cfg.segment_bytes = 64 << 10;
        let spool = Spool::open(cfg).unwrap();
        let big = vec![7u8; 1000];
        for _ in 0..2000 {
            assert_ne!(spool.append(&big, 0).unwrap(), 0);
        }
        spool.flush(false).unwrap();
        let c = spool.counters();
        assert!(c.bytes <= 256 << 10, "{c:?}");
        let on_disk: u64 = fs::read_dir(&dir).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum();
        assert!(on_disk <= (256 << 10) + 16, "{on_disk}");
        let got = read_all(&spool, 0);
        // What is left is the newest events, contiguous, and the loss is counted exactly.
        assert_eq!(got.last().unwrap().seq, 2000);
        assert!(got.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        assert_eq!(c.overflow_dropped, 2000 - got.len() as u64);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn drop_newest_refuses_and_keeps_the_history() {
        let dir = temp_dir("newest");
        let mut cfg = SpoolConfig::new(&dir, 256 << 10);
        cfg.overflow = OverflowPolicy::DropNewest;
        let spool = Spool::open(cfg).unwrap();
        let big = vec![7u8; 1000];
        let kept = (0..2000).filter(|_| spool.append(&big, 0).unwrap() != 0).count() as u64;
        spool.flush(false).unwrap();
        assert_eq!(spool.counters().overflow_refused, 2000 - kept);
        assert_eq!(read_all(&spool, 0).first().unwrap().seq, 1);
        // Once acknowledged, room comes back.
        spool.ack(kept).unwrap();
        assert_eq!(spool.append(&big, 0).unwrap(), kept + 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_see_only_flushed_events_and_acks_delete_whole_segments() {
        let dir = temp_dir("flush");
        let mut cfg = SpoolConfig::new(&dir, 64 << 20);
        cfg.segment_bytes = 4096;
        let spool = Spool::open(cfg).unwrap();
        for i in 1..=300 {
            spool.append(&payload(i), 0).unwrap();
        }
        let mut c = spool.cursor(0);
        assert!(spool.read(&mut c, 1000, 1 << 30).unwrap().is_empty());
        spool.flush(false).unwrap();
        assert_eq!(spool.read(&mut c, 1000, 1 << 30).unwrap().len(), 300);
        let before = spool.counters().segments;
        spool.ack(300).unwrap();
        assert_eq!(spool.counters().segments, 1, "only the active segment stays ({before} before)");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_second_process_cannot_open_a_spool_in_use() {
        let dir = temp_dir("lock");
        let first = Spool::open(SpoolConfig::new(&dir, 64 << 20)).unwrap();
        let err = Spool::open(SpoolConfig::new(&dir, 64 << 20)).err().unwrap();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(first);
        assert!(Spool::open(SpoolConfig::new(&dir, 64 << 20)).is_ok());
        fs::remove_dir_all(dir).unwrap();
    }

    /// A new spool for a sensor id the cloud holds events of (a re-imaged sensor, a wiped
    /// spool directory) numbers every event above them, those spooled before it met the
    /// cloud included, and keeps that numbering across restarts.
    #[test]
    fn a_new_spool_numbers_above_what_the_cloud_holds_and_sends_everything() {
        let dir = temp_dir("ahead");
        let seqs = |events: Vec<SpooledEvent>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
        let spool = Spool::open(SpoolConfig::new(&dir, 64 << 20)).unwrap();
        for p in [b"a", b"b", b"c"] {
            spool.append(p, 0).unwrap();
        }
        spool.flush(false).unwrap();
        spool.register(1000).unwrap();
        assert_eq!((spool.acked(), spool.written()), (1000, 1003), "nothing taken as held");
        let sent = read_all(&spool, spool.acked());
        assert_eq!(seqs(sent.clone()), [1001, 1002, 1003]);
        assert_eq!(sent[0].payload, b"a");
        assert_eq!(spool.append(b"d", 0).unwrap(), 1004);
        spool.flush(false).unwrap();
        spool.ack(1002).unwrap();
        assert_eq!(seqs(read_all(&spool, spool.acked())), [1003, 1004]);
        drop(spool);

        let spool = Spool::open(SpoolConfig::new(&dir, 64 << 20)).unwrap();
        assert_eq!((spool.acked(), spool.next_seq()), (1002, 1005), "the base is kept");
        spool.register(1002).unwrap();
        assert_eq!(seqs(read_all(&spool, spool.acked())), [1003, 1004], "fixed once");
        // Ahead of a spool that met it before (restored from a backup): what the cloud
        // holds of ours is not sent again, and numbering continues above it.
        spool.register(2000).unwrap();
        assert_eq!(spool.acked(), 1004);
        assert_eq!(spool.append(b"e", 0).unwrap(), 2001);
        drop(spool);
        assert_eq!(Spool::open(SpoolConfig::new(&dir, 64 << 20)).unwrap().next_seq(), 2002);
        fs::remove_dir_all(dir).unwrap();
    }

    /// A spool that acknowledged events before numbering bases existed numbered as the
    /// cloud: it keeps doing so.
    #[test]
    fn a_spool_that_acknowledged_before_keeps_its_numbers() {
        let dir = temp_dir("legacy");
        let spool = Spool::open(SpoolConfig::new(&dir, 64 << 20)).unwrap();
        for _ in 0..5 {
            spool.append(b"x", 0).unwrap();
        }
        spool.flush(false).unwrap();
        spool.ack(3).unwrap();
        drop(spool);
        let _ = fs::remove_file(dir.join("base"));
        let spool = Spool::open(SpoolConfig::new(&dir, 64 << 20)).unwrap();
        spool.register(4).unwrap();
        assert_eq!(spool.acked(), 4, "the cloud held 4: not sent again");
        assert_eq!(read_all(&spool, spool.acked()).iter().map(|e| e.seq).collect::<Vec<_>>(), [5]);
        fs::remove_dir_all(dir).unwrap();
    }
}

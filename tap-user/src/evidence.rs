//! Evidence: every kept frame of a live capture, in a ring of pcap files of bounded total
//! size, so the cloud can ask for the frames behind an alert after the fact (`cut`).
//!
//! The dispatch thread appends each batch to the current file, the same bytes `--write`
//! writes (classic pcap, nanosecond timestamps, native byte order). A file is named after
//! the capture time of its first frame, `evidence-<unix ns, 20 digits>.pcap`, so a time
//! range maps to files without opening them: a file holds the frames from its own start up
//! to the next file's. The ring starts a new file once the current one would pass a
//! rotation size (an eighth of the bound, at least 1 MiB) and deletes the oldest files
//! whenever the next write would take the whole past the bound. Files of an earlier run in
//! the directory count toward the bound and stay cuttable; each run starts a new file.
//!
//! Writes are unbuffered (one `write` per batch): what a batch holds is in the page cache,
//! and cuttable, as soon as the dispatch thread is done with it. A disk error never stops
//! capture: the batch is counted in `evidence_write_errors`, the first error is logged, and
//! the ring tries a fresh file a second later.

use std::{
    fs::{File, OpenOptions},
    io::{BufReader, Read, Write as _},
    net::IpAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use etherparse::{LaxSlicedPacket, TransportSlice};

use crate::{
    frames::{FrameBatch, PCAP_RECORD_HEADER},
    pipeline::ip_addresses,
};

/// Length of the classic pcap file header.
pub const PCAP_FILE_HEADER: usize = 24;
/// Magic of a nanosecond-resolution pcap, as written in native byte order.
const MAGIC_NS: u32 = 0xa1b2_3c4d;
/// The smallest rotation size.
const MIN_FILE_BYTES: u64 = 1 << 20;
/// After a disk error, how long the ring leaves the disk alone before trying a new file.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Largest pcap in an excerpt: the 8 MiB gRPC message limit less room for the other fields.
pub const EXCERPT_MAX_BYTES: usize = (8 << 20) - (64 << 10);
/// How far frames of one file may run past the next file's start (the rings are merged by
/// capture time, but two readers' batches may overlap a little): a cut reads one more file
/// on each side of the range when they lie this close.
const FILE_SLACK_NS: u64 = 2_000_000_000;

const PREFIX: &str = "evidence-";
const SUFFIX: &str = ".pcap";

/// Where evidence is kept and how much of it.
#[derive(Clone, Debug)]
pub struct EvidenceOptions {
    pub dir: PathBuf,
    /// Bound on the total size of the files, in bytes.
    pub max_bytes: u64,
}

/// The ring's counters, for the report, the metrics and the heartbeat.
#[derive(Debug, Default)]
pub struct EvidenceCounters {
    /// Bytes of evidence on disk now (every file of the ring).
    pub bytes: AtomicU64,
    /// Files deleted to keep within the bound.
    pub files_pruned: AtomicU64,
    /// Batches not kept because the disk refused them (and failed deletions).
    pub write_errors: AtomicU64,
}

impl EvidenceCounters {
    pub fn rows(&self) -> [(&'static str, u64); 3] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("evidence_bytes", g(&self.bytes)),
            ("evidence_files_pruned", g(&self.files_pruned)),
            ("evidence_write_errors", g(&self.write_errors)),
        ]
    }
}

/// The name of the file whose first frame was captured at `start_ns`.
pub fn file_name(start_ns: u64) -> String {
    format!("{PREFIX}{start_ns:020}{SUFFIX}")
}

/// The start time a ring file's name carries; `None` for any other file.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The ring's files in `dir`, oldest first: (start ns, path, size).
pub fn list_files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf, u64)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(start) = entry.file_name().to_str().and_then(parse_file_name) else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() {
            files.push((start, entry.path(), meta.len()));
        }
    }
    files.sort();
    Ok(files)
}

fn pcap_header() -> [u8; PCAP_FILE_HEADER] {
    let mut h = [0u8; PCAP_FILE_HEADER];
    h[0..4].copy_from_slice(&MAGIC_NS.to_ne_bytes());
    h[4..6].copy_from_slice(&2u16.to_ne_bytes());
    h[6..8].copy_from_slice(&4u16.to_ne_bytes());
    // thiszone, sigfigs: 0.
    h[16..20].copy_from_slice(&65535u32.to_ne_bytes());
    h[20..24].copy_from_slice(&1u32.to_ne_bytes()); // LINKTYPE_ETHERNET
    h
}

struct Current {
    file: File,
    path: PathBuf,
    size: u64,
}

/// The writing end, owned by the dispatch thread.
pub struct EvidenceRing {
    dir: PathBuf,
    max_bytes: u64,
    file_bytes: u64,
    /// Closed files, oldest first: (path, size).
    closed: std::collections::VecDeque<(PathBuf, u64)>,
    current: Option<Current>,
    total: u64,
    counters: std::sync::Arc<EvidenceCounters>,
    logged_error: bool,
    /// After an error: no new file before this instant.
    pause_until: Option<Instant>,
}

impl EvidenceRing {
    /// Creates the directory when missing and takes in the files an earlier run left (they
    /// count toward the bound). Call before capabilities are dropped, so a directory the
    /// sensor cannot write stops it at start rather than at the first frame. The frames
    /// hold whatever the DCs' traffic holds (hashes, tickets, cleartext binds): a directory
    /// made here is the sensor's alone (0700), and so is every file (0600).
    pub fn open(opts: &EvidenceOptions) -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;

        use anyhow::Context as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&opts.dir)
            .with_context(|| format!("create evidence directory {}", opts.dir.display()))?;
        let files = list_files(&opts.dir).with_context(|| format!("list evidence directory {}", opts.dir.display()))?;
        let probe = opts.dir.join(".dctap-write-test");
        std::fs::write(&probe, b"")
            .with_context(|| format!("evidence directory {} is not writable", opts.dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        let closed: std::collections::VecDeque<(PathBuf, u64)> = files.into_iter().map(|(_, p, s)| (p, s)).collect();
        let total = closed.iter().map(|(_, s)| s).sum();
        let counters = std::sync::Arc::new(EvidenceCounters::default());
        counters.bytes.store(total, Ordering::Relaxed);
        let max_bytes = opts.max_bytes.max(MIN_FILE_BYTES);
        let mut ring = Self {
            dir: opts.dir.clone(),
            max_bytes,
            file_bytes: (max_bytes / 8).max(MIN_FILE_BYTES),
            closed,
            current: None,
            total,
            counters,
            logged_error: false,
            pause_until: None,
        };
        // A smaller bound than the last run's applies at once.
        ring.prune(0);
        Ok(ring)
    }

    pub fn counters(&self) -> std::sync::Arc<EvidenceCounters> {
        std::sync::Arc::clone(&self.counters)
    }

    /// Size at which the ring starts a new file.
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// Appends a batch; never fails (errors are counted and logged once).
    pub fn append(&mut self, batch: &FrameBatch) {
        let Some(first) = batch.get(0) else { return };
        let records = batch.pcap_records();
        let len = records.len() as u64;
        if let Some(until) = self.pause_until {
            if Instant::now() < until {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.pause_until = None;
        }
        if self.current.as_ref().is_some_and(|c| c.size + len > self.file_bytes) {
            self.close_current();
        }
        if self.current.is_none() {
            self.prune(PCAP_FILE_HEADER as u64 + len);
            if let Err(e) = self.start_file(first.timestamp_ns) {
                return self.failed(&format!("start a new file in {}: {e}", self.dir.display()));
            }
        } else {
            self.prune(len);
        }
        let cur = self.current.as_mut().expect("a current file");
        match cur.file.write_all(records) {
            Ok(()) => {
                cur.size += len;
                self.total += len;
                self.counters.bytes.store(self.total, Ordering::Relaxed);
            }
            Err(e) => {
                // A short write leaves part of a record: cut it off so the file stays a
                // valid pcap, and go on in a new file.
                let _ = cur.file.set_len(cur.size);
                let path = cur.path.display().to_string();
                self.close_current();
                self.failed(&format!("write {path}: {e}"));
            }
        }
    }

    fn failed(&mut self, what: &str) {
        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        self.pause_until = Some(Instant::now() + RETRY_AFTER);
        if !self.logged_error {
            self.logged_error = true;
            log::warn!(
                "evidence: {what}; capture goes on, and batches the disk refuses are counted in \
                 evidence_write_errors (logged once)"
            );
        }
    }

    fn start_file(&mut self, start_ns: u64) -> std::io::Result<()> {
        // Two files cannot share a start; the next nanosecond names the later one.
        let mut start = start_ns;
        let (file, path) = loop {
            let path = self.dir.join(file_name(start));
            match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && start < start_ns + 1000 => start += 1,
                Err(e) => return Err(e),
            }
        };
        let mut cur = Current { file, path, size: 0 };
        if let Err(e) = cur.file.write_all(&pcap_header()) {
            let _ = std::fs::remove_file(&cur.path);
            return Err(e);
        }
        cur.size = PCAP_FILE_HEADER as u64;
        self.total += cur.size;
        self.current = Some(cur);
        Ok(())
    }

    fn close_current(&mut self) {
        if let Some(cur) = self.current.take() {
            self.closed.push_back((cur.path, cur.size));
        }
    }

    /// Deletes the oldest closed files until `more` bytes fit within the bound.
    fn prune(&mut self, more: u64) {
        while self.total + more > self.max_bytes {
            let Some((path, size)) = self.closed.pop_front() else { break };
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                    if !self.logged_error {
                        self.logged_error = true;
                        log::warn!("evidence: delete {}: {e} (logged once)", path.display());
                    }
                }
            }
            self.total -= size;
            self.counters.files_pruned.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.bytes.store(self.total, Ordering::Relaxed);
    }
}

/// One frame read back from a ring file.
struct Record {
    ts_ns: u64,
    header: [u8; PCAP_RECORD_HEADER],
    data: Vec<u8>,
}

/// Reads the records of one ring file in order; stops quietly at a partial last record (a
/// file being written, or cut short by a crash).
struct FileReader {
    input: BufReader<File>,
}

impl FileReader {
    fn open(path: &Path) -> std::io::Result<Self> {
        let mut input = BufReader::with_capacity(256 << 10, File::open(path)?);
        let mut header = [0u8; PCAP_FILE_HEADER];
        input.read_exact(&mut header)?;
        if u32::from_ne_bytes(header[0..4].try_into().expect("4 bytes")) != MAGIC_NS {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a nanosecond pcap of this host"));
        }
        Ok(Self { input })
    }

    /// The next record whose time passes `keep`; others are skipped without being copied.
    fn next(&mut self, keep: impl Fn(u64) -> bool) -> Option<Record> {
        loop {
            let mut header = [0u8; PCAP_RECORD_HEADER];
            self.input.read_exact(&mut header).ok()?;
            let word = |at: usize| u32::from_ne_bytes(header[at..at + 4].try_into().expect("4 bytes"));
            let ts_ns = u64::from(word(0)) * 1_000_000_000 + u64::from(word(4));
            let len = word(8) as usize;
            if len > 1 << 18 {
                return None; // not a record this sensor wrote: stop reading this file
            }
            if keep(ts_ns) {
                let mut data = vec![0u8; len];
                self.input.read_exact(&mut data).ok()?;
                return Some(Record { ts_ns, header, data });
            }
            self.input.seek_relative(len as i64).ok()?;
            // seek_relative past the end succeeds; the next read_exact then fails.
        }
    }
}

/// What a request matches: one conversation, either direction.
struct Conversation {
    client: IpAddr,
    client_port: u16,
    dc: IpAddr,
    dc_port: u16,
}

impl Conversation {
    fn matches(&self, frame: &[u8]) -> bool {
        let Some((src, dst)) = ip_addresses(frame) else { return false };
        let forward = src == self.client && dst == self.dc;
        let backward = src == self.dc && dst == self.client;
        if !forward && !backward {
            return false;
        }
        let ports = match LaxSlicedPacket::from_ethernet(frame).ok().and_then(|p| p.transport) {
            Some(TransportSlice::Tcp(t)) => Some((t.source_port(), t.destination_port())),
            Some(TransportSlice::Udp(u)) => Some((u.source_port(), u.destination_port())),
            // IP fragments after the first carry no ports: those of the two hosts are kept.
            None => return true,
            Some(_) => None,
        };
        let Some((sp, dp)) = ports else { return self.client_port == 0 && self.dc_port == 0 };
        let (client_port, dc_port) = if forward { (sp, dp) } else { (dp, sp) };
        (self.client_port == 0 || self.client_port == client_port) && (self.dc_port == 0 || self.dc_port == dc_port)
    }
}

/// The frames of one conversation (either direction) between two instants, as the cloud
/// asks for them: addresses as text (a client's request is not trusted to hold valid
/// ones), a port of 0 matching any port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub client_ip: String,
    pub client_port: u32,
    pub dc_ip: String,
    pub dc_port: u32,
    pub from_unix_ns: i64,
    pub to_unix_ns: i64,
}

/// What a cut gave: a pcap of the frames, or why there is none (`error`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    pub pcap: Vec<u8>,
    pub frames: u32,
    /// Frames were left out to stay within the size asked for.
    pub truncated: bool,
    pub error: String,
}

fn refused(error: impl Into<String>) -> Cut {
    Cut { error: error.into(), ..Cut::default() }
}

/// The message for a time the ring holds nothing of.
pub const NOT_KEPT: &str = "no evidence kept for that time: rotated away or evidence off";

/// Cuts the frames of the requested conversation (either direction; a port of 0 matches any
/// port; VLAN tags and IPv6 too) captured within [from, to] out of the ring files in `dir`,
/// reading only the files whose time span overlaps the range, into a pcap of at most
/// `max_bytes` (`truncated` when frames were left out for size). Pure apart from reading
/// the files: it may run while the ring writes.
pub fn cut(dir: &Path, req: &Wanted, max_bytes: usize) -> Cut {
    let parse = |s: &str, what: &str| s.trim().parse::<IpAddr>().map_err(|_| format!("{what} '{s}' is not an address"));
    let (client, dc) = match (parse(&req.client_ip, "client_ip"), parse(&req.dc_ip, "dc_ip")) {
        (Ok(c), Ok(d)) => (c, d),
        (Err(e), _) | (_, Err(e)) => return refused(e),
    };
    let (Ok(client_port), Ok(dc_port)) = (u16::try_from(req.client_port), u16::try_from(req.dc_port)) else {
        return refused("a port above 65535");
    };
    if req.to_unix_ns < req.from_unix_ns || req.to_unix_ns < 0 {
        return refused("the time range ends before it starts");
    }
    let (from, to) = (req.from_unix_ns.max(0) as u64, req.to_unix_ns as u64);
    let want = Conversation { client, client_port, dc, dc_port };
    let files = match list_files(dir) {
        Ok(f) => f,
        Err(e) => return refused(format!("{NOT_KEPT} ({}: {e})", dir.display())),
    };
    // File i holds frames from its start to the next file's start (give or take the slack).
    let overlapping: Vec<&PathBuf> = files
        .iter()
        .enumerate()
        .filter(|(i, (start, _, _))| {
            let end = files.get(i + 1).map_or(u64::MAX, |(next, _, _)| next.saturating_add(FILE_SLACK_NS));
            start.saturating_sub(FILE_SLACK_NS) <= to && end >= from
        })
        .map(|(_, (_, path, _))| path)
        .collect();
    if overlapping.is_empty() || files.first().is_some_and(|(oldest, _, _)| to < *oldest) {
        return refused(NOT_KEPT);
    }
    let mut pcap = pcap_header().to_vec();
    let (mut frames, mut truncated, mut read_any) = (0u32, false, false);
    let mut records: Vec<Record> = Vec::new();
    let mut collected = pcap.len();
    'files: for path in overlapping {
        // A file rotated away between the listing and now is simply gone.
        let Ok(mut reader) = FileReader::open(path) else { continue };
        read_any = true;
        while let Some(r) = reader.next(|ts| ts >= from && ts <= to) {
            if want.matches(&r.data) {
                collected += PCAP_RECORD_HEADER + r.data.len();
                records.push(r);
                // Past the limit: what follows is later still (but for the few frames at
                // a file's edge), and left out anyway.
                if collected > max_bytes {
                    break 'files;
                }
            }
        }
    }
    if !read_any {
        return refused(NOT_KEPT);
    }
    // Files overlap by a little at their edges: put the frames back in capture order.
    records.sort_by_key(|r| r.ts_ns);
    for r in &records {
        if pcap.len() + PCAP_RECORD_HEADER + r.data.len() > max_bytes {
            truncated = true;
            break;
        }
        pcap.extend_from_slice(&r.header);
        pcap.extend_from_slice(&r.data);
        frames += 1;
    }
    Cut { pcap, frames, truncated, error: String::new() }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use tap_testkit::frame::{self, Tags, V6Ext, L4};

    use super::*;

    use tap_testkit::TempDir;

    const T0: u64 = 1_795_000_000_000_000_000;
    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 20);
    const OTHER: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 21);
    const DC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

    fn batch(frames: &[(u64, Vec<u8>)]) -> FrameBatch {
        let mut b = FrameBatch::with_capacity(frames.len(), frames.iter().map(|(_, f)| f.len() + 16).sum());
        for (ts, f) in frames {
            b.push_frame(Duration::from_nanos(*ts), f.len() as u32, f);
        }
        b
    }

    fn request(client_port: u32, dc_port: u32, from: u64, to: u64) -> Wanted {
        Wanted {
            client_ip: CLIENT.to_string(),
            client_port,
            dc_ip: DC.to_string(),
            dc_port,
            from_unix_ns: from as i64,
            to_unix_ns: to as i64,
        }
    }

    /// (timestamp, frame) of every record of a pcap held in memory.
    fn records(pcap: &[u8]) -> Vec<(u64, Vec<u8>)> {
        assert_eq!(u32::from_ne_bytes(pcap[0..4].try_into().unwrap()), MAGIC_NS);
        let mut out = Vec::new();
        let mut at = PCAP_FILE_HEADER;
        while at < pcap.len() {
            let word = |o: usize| u32::from_ne_bytes(pcap[at + o..at + o + 4].try_into().unwrap());
            let (ts, len) = (u64::from(word(0)) * 1_000_000_000 + u64::from(word(4)), word(8) as usize);
            out.push((ts, pcap[at + 16..at + 16 + len].to_vec()));
            at += 16 + len;
        }
        out
    }

    #[test]
    fn the_ring_rotates_prunes_within_its_bound_and_names_files_by_first_frame() {
        let tmp = TempDir::new("evidence-ring");
        // The ring creates its own directory.
        let dir = tmp.path("ring");
        let mut ring = EvidenceRing::open(&EvidenceOptions { dir: dir.clone(), max_bytes: 3 << 20 }).unwrap();
        assert_eq!(ring.file_bytes(), 1 << 20, "an eighth of 3 MiB is below the 1 MiB floor");
        let c = ring.counters();
        // 100 batches of 100 KiB-ish: about 10 MiB through a 3 MiB ring.
        let mut first_ts = Vec::new();
        for i in 0..100u64 {
            let frames: Vec<(u64, Vec<u8>)> = (0..70u64)
                .map(|j| {
                    let ts = T0 + (i * 70 + j) * 1_000_000;
                    (
                        ts,
                        frame::ipv4(Tags::None, CLIENT, DC, L4::Tcp { src: 40000, dst: 88 }, 1400, (i * 70 + j) as u32),
                    )
                })
                .collect();
            first_ts.push(frames[0].0);
            ring.append(&batch(&frames));
            let on_disk: u64 = list_files(&dir).unwrap().iter().map(|(_, _, s)| s).sum();
            assert!(on_disk <= 3 << 20, "{on_disk} bytes on disk after batch {i}");
            assert_eq!(c.bytes.load(Ordering::Relaxed), on_disk);
        }
        let files = list_files(&dir).unwrap();
        assert!(files.len() >= 3, "{files:?}");
        assert!(files.iter().all(|(_, _, s)| *s <= 1 << 20));
        assert!(c.files_pruned.load(Ordering::Relaxed) >= 6);
        assert_eq!(c.write_errors.load(Ordering::Relaxed), 0);
        // Each file is named after its first frame, which starts a batch; every one is a
        // valid pcap of whole records.
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700, "the frames hold secrets: the directory is the sensor's");
        for (start, path, size) in &files {
            assert_eq!(mode(path), 0o600);
            assert!(first_ts.contains(start), "{start}");
            let bytes = std::fs::read(path).unwrap();
            assert_eq!(bytes.len() as u64, *size);
            let recs = records(&bytes);
            assert_eq!(recs[0].0, *start);
        }
        // A new run takes the old files in and keeps within a smaller bound at once.
        drop(ring);
        let ring = EvidenceRing::open(&EvidenceOptions { dir: dir.clone(), max_bytes: 1 << 20 }).unwrap();
        let left: u64 = list_files(&dir).unwrap().iter().map(|(_, _, s)| s).sum();
        assert!(left <= 1 << 20 && ring.counters().bytes.load(Ordering::Relaxed) == left);
    }

    #[test]
    fn a_disk_error_is_counted_and_capture_goes_on() {
        let tmp = TempDir::new("evidence-err");
        let mut ring = EvidenceRing::open(&EvidenceOptions { dir: tmp.0.clone(), max_bytes: 8 << 20 }).unwrap();
        std::fs::remove_dir_all(&tmp.0).unwrap();
        let f = frame::ipv4(Tags::None, CLIENT, DC, L4::Udp { src: 40000, dst: 88 }, 100, 1);
        ring.append(&batch(&[(T0, f.clone())]));
        ring.append(&batch(&[(T0 + 1, f.clone())]));
        assert_eq!(ring.counters().write_errors.load(Ordering::Relaxed), 2);
        // A second later the ring tries again, and the disk takes it.
        std::fs::create_dir_all(&tmp.0).unwrap();
        ring.pause_until = Some(Instant::now());
        ring.append(&batch(&[(T0 + 2, f.clone())]));
        assert_eq!(ring.counters().write_errors.load(Ordering::Relaxed), 2);
        assert_eq!(list_files(&tmp.0).unwrap()[0].0, T0 + 2);
    }

    #[test]
    fn the_cutter_keeps_one_conversation_both_ways_across_files_tags_and_v6() {
        let tmp = TempDir::new("evidence-cut");
        let mut ring = EvidenceRing::open(&EvidenceOptions { dir: tmp.0.clone(), max_bytes: 64 << 20 }).unwrap();
        let ms = |n: u64| T0 + n * 1_000_000;
        let to_dc = |src, tags| frame::ipv4(tags, CLIENT, DC, L4::Tcp { src, dst: 88 }, 64, src as u32);
        let from_dc = |dst, tags| frame::ipv4(tags, DC, CLIENT, L4::Tcp { src: 88, dst }, 64, dst as u32 + 1);
        let c6: Ipv6Addr = "fd00::20".parse().unwrap();
        let dc6: Ipv6Addr = "fd00::10".parse().unwrap();
        let v6 = frame::ipv6(Tags::Dot1Q(20), dc6, c6, L4::Udp { src: 389, dst: 50000 }, V6Ext::None, 40, 9);
        // File 1: before the range, and the request in it.
        ring.append(&batch(&[(ms(0), to_dc(40000, Tags::None)), (ms(10), to_dc(40000, Tags::None))]));
        ring.close_current();
        // File 2: the reply (tagged differently, as SPAN ports do), another port, another
        // client, the v6 conversation, then a frame after the range.
        ring.append(&batch(&[
            (ms(20), from_dc(40000, Tags::Dot1Q(10))),
            (ms(21), from_dc(40001, Tags::None)),
            (ms(22), frame::ipv4(Tags::QinQ(5, 6), OTHER, DC, L4::Tcp { src: 40000, dst: 88 }, 64, 3)),
            (ms(23), to_dc(40000, Tags::QinQ(5, 6))),
            (ms(24), v6.clone()),
            (ms(90), to_dc(40000, Tags::None)),
        ]));
        ring.close_current();
        // File 3: wholly after the range (never read: delete it to prove it).
        ring.append(&batch(&[(ms(5000), to_dc(40000, Tags::None))]));
        drop(ring);

        let got = cut(&tmp.0, &request(40000, 88, ms(5), ms(50)), EXCERPT_MAX_BYTES);
        assert_eq!(got.error, "");
        assert!(!got.truncated);
        let recs = records(&got.pcap);
        assert_eq!(
            recs,
            vec![
                (ms(10), to_dc(40000, Tags::None)),
                (ms(20), from_dc(40000, Tags::Dot1Q(10))),
                (ms(23), to_dc(40000, Tags::QinQ(5, 6)))
            ]
        );
        assert_eq!(got.frames, 3);
        // A client port of 0: both client ports.
        let any = cut(&tmp.0, &request(0, 88, ms(5), ms(50)), EXCERPT_MAX_BYTES);
        assert_eq!(any.frames, 4);
        assert!(records(&any.pcap).iter().any(|(_, f)| *f == from_dc(40001, Tags::None)));
        // Both ports 0 across the whole time.
        assert_eq!(cut(&tmp.0, &request(0, 0, ms(0), ms(6000)), EXCERPT_MAX_BYTES).frames, 7);
        // IPv6 with a tag, asked from the client's side.
        let mut r6 = request(50000, 389, ms(0), ms(100));
        (r6.client_ip, r6.dc_ip) = (c6.to_string(), dc6.to_string());
        let got6 = cut(&tmp.0, &r6, EXCERPT_MAX_BYTES);
        assert_eq!(records(&got6.pcap), vec![(ms(24), v6)]);
        // Only the files that overlap the range are read: the last one may go.
        let files = list_files(&tmp.0).unwrap();
        std::fs::remove_file(&files[2].1).unwrap();
        assert_eq!(cut(&tmp.0, &request(40000, 88, ms(5), ms(50)), EXCERPT_MAX_BYTES).frames, 3);
        // Before the oldest file: rotated away.
        let gone = cut(&tmp.0, &request(40000, 88, T0 - 10_000_000_000, T0 - 5_000_000_000), EXCERPT_MAX_BYTES);
        assert_eq!((gone.error.as_str(), gone.pcap.len(), gone.frames), (NOT_KEPT, 0, 0));
        // No evidence directory at all.
        let none = cut(&tmp.0.join("absent"), &request(40000, 88, ms(5), ms(50)), EXCERPT_MAX_BYTES);
        assert!(none.error.starts_with(NOT_KEPT), "{}", none.error);
        // A bad request.
        let mut bad = request(40000, 88, ms(5), ms(50));
        bad.client_ip = "client".into();
        assert!(cut(&tmp.0, &bad, EXCERPT_MAX_BYTES).error.contains("client_ip"));
    }

    #[test]
    fn the_cut_stops_at_the_size_limit_and_says_so_and_a_partial_record_ends_a_file() {
        let tmp = TempDir::new("evidence-size");
        let mut ring = EvidenceRing::open(&EvidenceOptions { dir: tmp.0.clone(), max_bytes: 64 << 20 }).unwrap();
        let frames: Vec<(u64, Vec<u8>)> = (0..50u64)
            .map(|i| (T0 + i, frame::ipv4(Tags::None, CLIENT, DC, L4::Tcp { src: 40000, dst: 445 }, 1000, i as u32)))
            .collect();
        ring.append(&batch(&frames));
        let one = PCAP_RECORD_HEADER + frames[0].1.len();
        let max = PCAP_FILE_HEADER + 10 * one + one / 2;
        let got = cut(&tmp.0, &request(40000, 445, T0, T0 + 100), max);
        assert!(got.truncated && got.error.is_empty());
        assert_eq!(got.frames, 10);
        assert!(got.pcap.len() <= max);
        assert_eq!(records(&got.pcap), frames[..10].to_vec());
        // A file cut inside a record (a crash, or a write in progress) reads up to it.
        let path = &list_files(&tmp.0).unwrap()[0].1;
        let len = std::fs::metadata(path).unwrap().len();
        OpenOptions::new().write(true).open(path).unwrap().set_len(len - 100).unwrap();
        let got = cut(&tmp.0, &request(40000, 445, T0, T0 + 100), EXCERPT_MAX_BYTES);
        assert_eq!((got.frames, got.truncated), (49, false));
    }
}

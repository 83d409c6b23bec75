//! Ring-buffer readers: one thread per ring drains records into batches and hands them to
//! the consumer over a bounded channel. A full channel drops the batch (counted): capture
//! never waits for the stages behind it.

use std::{
    os::fd::AsRawFd,
    sync::{atomic::AtomicBool, atomic::Ordering, Arc},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use crossbeam_channel::{Sender, TrySendError};
use tap_common::record::RecordHeader;

use super::counters::UserCounters;
use crate::time::WallClock;

/// Shortest wait in poll(2) between drains. The program submits without waking the reader
/// except once per MiB queued (TOOLCHAIN.md: per-frame wakeups cost more than the capture),
/// so the wait, not a wakeup, is what brings a small batch to the reader.
pub const POLL_MIN: Duration = Duration::from_millis(25);
/// Longest wait: the latency bound for a lone frame on a quiet link. Waking every 2 ms on
/// an idle link costs 2% of a core for nothing (measured: 1000 wakeups/s with two rings).
pub const POLL_MAX: Duration = Duration::from_millis(100);
/// A drain that takes fewer records than this lengthens the next wait, more shortens it:
/// batches settle around this size while the latency stays within POLL_MAX.
pub const TARGET_DRAIN: usize = 1024;
/// Frames per batch: large enough to amortise the channel, small enough to keep latency.
pub const BATCH_FRAMES: usize = 256;
/// Bytes per batch (records and headers). A batch is sent when full rather than grown:
/// growing copied every batch once more (measured: 13% of the sensor's CPU in realloc).
pub const BATCH_BYTES: usize = 128 << 10;

/// Length of the classic pcap record header (RFC draft-ietf-opsawg-pcap, section 5):
/// seconds, nanoseconds (the file says nanosecond resolution), captured length, wire length.
pub const PCAP_RECORD_HEADER: usize = 16;

/// Position of one frame inside a batch's byte buffer.
#[derive(Clone, Copy, Debug)]
struct FrameSlot {
    timestamp_ns: u64,
    orig_len: u32,
    /// Offset of the frame bytes (after their pcap record header).
    start: u32,
    len: u32,
}

/// Frames copied out of a ring, stored back to back in one buffer, each behind a pcap
/// record header in native byte order. Writing a batch to a pcap file is then one
/// `write_all` of the buffer: the consumer copies nothing (measured: the second copy and
/// per-record encoding were a third of the sensor's CPU at the generator's top rate).
#[derive(Debug, Default)]
pub struct FrameBatch {
    bytes: Vec<u8>,
    slots: Vec<FrameSlot>,
}

/// One captured frame, borrowed from its batch.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// CLOCK_MONOTONIC nanoseconds, from the XDP program.
    pub timestamp_ns: u64,
    pub orig_len: u32,
    pub data: &'a [u8],
}

impl FrameBatch {
    pub fn with_capacity(frames: usize, bytes: usize) -> Self {
        Self { bytes: Vec::with_capacity(bytes), slots: Vec::with_capacity(frames) }
    }

    /// Whether a frame of `len` bytes still fits without growing the buffers.
    pub fn has_room(&self, len: usize) -> bool {
        self.slots.len() < self.slots.capacity() && self.bytes.len() + PCAP_RECORD_HEADER + len <= self.bytes.capacity()
    }

    /// Appends a frame; `clock` turns its monotonic timestamp into the pcap record's
    /// wall-clock time.
    pub fn push(&mut self, header: &RecordHeader, data: &[u8], clock: WallClock) {
        let ts = clock.to_unix(header.timestamp_ns);
        // pcap's 32-bit seconds field runs out in 2106.
        self.bytes.extend_from_slice(&(ts.as_secs() as u32).to_ne_bytes());
        self.bytes.extend_from_slice(&ts.subsec_nanos().to_ne_bytes());
        self.bytes.extend_from_slice(&(data.len() as u32).to_ne_bytes());
        self.bytes.extend_from_slice(&header.orig_len.to_ne_bytes());
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(data);
        self.slots.push(FrameSlot {
            timestamp_ns: header.timestamp_ns,
            orig_len: header.orig_len,
            start,
            len: data.len() as u32,
        });
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = Frame<'_>> {
        self.slots.iter().map(|s| Frame {
            timestamp_ns: s.timestamp_ns,
            orig_len: s.orig_len,
            data: &self.bytes[s.start as usize..(s.start + s.len) as usize],
        })
    }

    /// The batch as pcap records (nanosecond timestamps, native byte order).
    pub fn pcap_records(&self) -> &[u8] {
        &self.bytes
    }
}

pub struct RingReader {
    pub ring: RingBuf<MapData>,
    pub tx: Sender<FrameBatch>,
    pub counters: Arc<UserCounters>,
    pub clock: WallClock,
    /// Set when capture stops; the reader drains what is queued, then returns.
    pub stop: Arc<AtomicBool>,
}

impl RingReader {
    pub fn run(mut self) {
        let mut wait = POLL_MIN;
        loop {
            // Read the flag before draining: what the program queued before detach is
            // then guaranteed to be taken on this last pass.
            let stopping = self.stop.load(Ordering::Acquire);
            let drained = self.drain();
            if stopping {
                if drained == 0 {
                    return;
                }
                continue;
            }
            wait = next_wait(wait, drained);
            self.wait(wait);
        }
    }

    /// Moves every queued record into batches; returns how many records were taken.
    fn drain(&mut self) -> usize {
        let Self { ring, tx, counters, clock, .. } = self;
        let mut taken = 0;
        let new_batch = || FrameBatch::with_capacity(BATCH_FRAMES, BATCH_BYTES);
        let mut batch = new_batch();
        while let Some(item) = ring.next() {
            taken += 1;
            match RecordHeader::parse(&item) {
                Some((header, data)) => {
                    UserCounters::add(&counters.bytes_read, data.len() as u64);
                    if !batch.has_room(data.len()) {
                        send(tx, counters, std::mem::replace(&mut batch, new_batch()));
                    }
                    batch.push(&header, data, *clock);
                }
                None => UserCounters::add(&counters.records_invalid, 1),
            }
        }
        if !batch.is_empty() {
            send(tx, counters, batch);
        }
        UserCounters::add(&counters.frames_read, taken as u64);
        taken
    }

    fn wait(&self, wait: Duration) {
        let mut pfd = libc::pollfd { fd: self.ring.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd. EINTR (a signal) just ends the wait early.
        unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as libc::c_int) };
    }
}

/// The wait before the next drain, from the last one and how much the last drain took.
fn next_wait(last: Duration, drained: usize) -> Duration {
    if drained < TARGET_DRAIN {
        (last * 2).min(POLL_MAX)
    } else {
        (last / 2).max(POLL_MIN)
    }
}

fn send(tx: &Sender<FrameBatch>, counters: &UserCounters, batch: FrameBatch) {
    let n = batch.len() as u64;
    match tx.try_send(batch) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            UserCounters::add(&counters.frames_channel_full, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_backs_off_when_idle_and_tightens_under_load() {
        let mut w = POLL_MIN;
        for _ in 0..10 {
            w = next_wait(w, 0);
        }
        assert_eq!(w, POLL_MAX, "an idle ring is polled at the longest interval");
        w = next_wait(w, 10_000);
        assert_eq!(w, POLL_MAX / 2);
        for _ in 0..10 {
            w = next_wait(w, 10_000);
        }
        assert_eq!(w, POLL_MIN, "a busy ring is polled at the shortest interval");
    }

    #[test]
    fn batch_keeps_frames_apart_in_order_and_as_pcap_records() {
        let clock = WallClock::sample();
        let mut batch = FrameBatch::with_capacity(2, 64);
        assert!(batch.has_room(3));
        batch.push(&RecordHeader { timestamp_ns: 1_000_000_007, orig_len: 60, cap_len: 3 }, b"abc", clock);
        batch.push(&RecordHeader { timestamp_ns: 2, orig_len: 1514, cap_len: 2 }, b"de", clock);
        let frames: Vec<_> = batch.iter().map(|f| (f.timestamp_ns, f.orig_len, f.data.to_vec())).collect();
        assert_eq!(frames, vec![(1_000_000_007, 60, b"abc".to_vec()), (2, 1514, b"de".to_vec())]);

        let rec = batch.pcap_records();
        assert_eq!(rec.len(), 2 * PCAP_RECORD_HEADER + 5);
        let word = |at: usize| u32::from_ne_bytes(rec[at..at + 4].try_into().unwrap());
        let ts = clock.to_unix(1_000_000_007);
        assert_eq!((word(0), word(4)), (ts.as_secs() as u32, ts.subsec_nanos()));
        assert_eq!((word(8), word(12)), (3, 60));
        assert_eq!(&rec[16..19], b"abc");
        assert_eq!((word(27), word(31)), (2, 1514));
        assert_eq!(&rec[35..37], b"de");
        assert!(!batch.has_room(0), "two slots used");
        assert!(!FrameBatch::with_capacity(2, 64).has_room(64 - PCAP_RECORD_HEADER + 1), "bytes full");
    }
}

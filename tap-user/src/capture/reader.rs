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

/// How long a reader sleeps in poll(2) when its ring is empty. The program submits without
/// waking the reader until about 1 MiB is queued, so this bounds the latency at low rates.
pub const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// Frames per batch: large enough to amortise the channel, small enough to keep latency.
pub const BATCH_FRAMES: usize = 256;

/// Position of one frame inside a batch's byte buffer.
#[derive(Clone, Copy, Debug)]
struct FrameSlot {
    timestamp_ns: u64,
    orig_len: u32,
    start: u32,
    len: u32,
}

/// Frames copied out of a ring, stored back to back in one buffer.
#[derive(Debug, Default)]
pub struct FrameBatch {
    bytes: Vec<u8>,
    slots: Vec<FrameSlot>,
}

/// One captured frame, borrowed from its batch.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub timestamp_ns: u64,
    pub orig_len: u32,
    pub data: &'a [u8],
}

impl FrameBatch {
    pub fn with_capacity(frames: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(frames * 256),
            slots: Vec::with_capacity(frames),
        }
    }

    pub fn push(&mut self, header: &RecordHeader, data: &[u8]) {
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
}

pub struct RingReader {
    pub ring: RingBuf<MapData>,
    pub tx: Sender<FrameBatch>,
    pub counters: Arc<UserCounters>,
    /// Set when capture stops; the reader drains what is queued, then returns.
    pub stop: Arc<AtomicBool>,
}

impl RingReader {
    pub fn run(mut self) {
        loop {
            // Read the flag before draining: what the program queued before detach is
            // then guaranteed to be taken on this last pass.
            let stopping = self.stop.load(Ordering::Acquire);
            let drained = self.drain();
            if stopping && drained == 0 {
                return;
            }
            if drained == 0 {
                self.wait();
            }
        }
    }

    /// Moves every queued record into batches; returns how many records were taken.
    fn drain(&mut self) -> usize {
        let Self {
            ring, tx, counters, ..
        } = self;
        let mut taken = 0;
        let mut batch = FrameBatch::with_capacity(BATCH_FRAMES);
        while let Some(item) = ring.next() {
            taken += 1;
            match RecordHeader::parse(&item) {
                Some((header, data)) => {
                    UserCounters::add(&counters.bytes_read, data.len() as u64);
                    batch.push(&header, data);
                }
                None => UserCounters::add(&counters.records_invalid, 1),
            }
            drop(item);
            if batch.len() == BATCH_FRAMES {
                send(
                    tx,
                    counters,
                    std::mem::replace(&mut batch, FrameBatch::with_capacity(BATCH_FRAMES)),
                );
            }
        }
        if !batch.is_empty() {
            send(tx, counters, batch);
        }
        UserCounters::add(&counters.frames_read, taken as u64);
        taken
    }

    fn wait(&self) {
        let mut pfd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd. EINTR (a signal) just ends the wait early.
        unsafe { libc::poll(&mut pfd, 1, POLL_INTERVAL.as_millis() as libc::c_int) };
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
    fn batch_keeps_frames_apart_and_in_order() {
        let mut batch = FrameBatch::with_capacity(2);
        batch.push(
            &RecordHeader {
                timestamp_ns: 1,
                orig_len: 60,
                cap_len: 3,
            },
            b"abc",
        );
        batch.push(
            &RecordHeader {
                timestamp_ns: 2,
                orig_len: 1514,
                cap_len: 2,
            },
            b"de",
        );
        let frames: Vec<_> = batch
            .iter()
            .map(|f| (f.timestamp_ns, f.orig_len, f.data.to_vec()))
            .collect();
        assert_eq!(
            frames,
            vec![(1, 60, b"abc".to_vec()), (2, 1514, b"de".to_vec())]
        );
    }
}

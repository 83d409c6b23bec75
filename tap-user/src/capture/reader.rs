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
use crate::{
    frames::{FrameBatch, BATCH_BYTES, BATCH_FRAMES},
    time::WallClock,
};

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
}

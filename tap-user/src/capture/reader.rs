//! The ring-buffer reader: one thread drains every ring into batches, merging the rings by
//! capture time, and hands the batches to the consumer over a bounded channel. A full
//! channel drops the batch (counted): capture never waits for the stages behind it.
//!
//! Why one thread and a merge: the program writes to the ring of the CPU a frame arrived
//! on, and the two directions of a conversation often arrive on different CPUs (RSS on a
//! NIC, the sender's CPU on veth). Read by a thread per ring, a reply could reach the
//! parsers before its request, up to a polling interval apart. Each ring is in time order;
//! taking always the oldest head across rings, and looking again at rings that were empty
//! before each take, keeps a reply after a request that was committed before it.

use std::{
    os::fd::AsRawFd,
    sync::{atomic::AtomicBool, atomic::Ordering, Arc},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use crossbeam_channel::{Sender, TrySendError};
use tap_common::record::{RecordHeader, RECORD_HEADER_LEN};

use super::counters::UserCounters;
use crate::{
    frames::{BatchPool, FrameBatch, BATCH_BYTES, BATCH_FRAMES},
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
    pub rings: Vec<RingBuf<MapData>>,
    pub tx: Sender<FrameBatch>,
    pub counters: Arc<UserCounters>,
    pub clock: WallClock,
    /// Set when capture stops; the reader drains what is queued, then returns.
    pub stop: Arc<AtomicBool>,
    /// Buffers of the batches the consumer is done with.
    pub pool: BatchPool,
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

    /// Moves every queued record into batches, oldest first across the rings; returns how
    /// many records were taken.
    fn drain(&mut self) -> usize {
        let Self { rings, tx, counters, clock, pool, .. } = self;
        let new_batch = || pool.batch(BATCH_FRAMES, BATCH_BYTES);
        let mut batch = new_batch();
        let (taken, invalid) = drain_merged(rings, &mut |header, data| {
            UserCounters::add(&counters.bytes_read, data.len() as u64);
            if !batch.has_room(data.len()) {
                send(tx, counters, std::mem::replace(&mut batch, new_batch()));
            }
            batch.push(header, data, *clock);
        });
        if !batch.is_empty() {
            send(tx, counters, batch);
        }
        UserCounters::add(&counters.records_invalid, invalid as u64);
        UserCounters::add(&counters.frames_read, taken as u64);
        taken + invalid
    }

    fn wait(&self, wait: Duration) {
        let mut fds: Vec<libc::pollfd> =
            self.rings.iter().map(|r| libc::pollfd { fd: r.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
        // SAFETY: `fds` holds valid pollfds for the call. EINTR (a signal) just ends the
        // wait early.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait.as_millis() as libc::c_int) };
    }
}

/// Where records come from: a BPF ring buffer, or a plain queue in tests.
pub trait RecordSource {
    type Item<'a>: std::ops::Deref<Target = [u8]>
    where
        Self: 'a;
    fn next_record(&mut self) -> Option<Self::Item<'_>>;
}

impl RecordSource for RingBuf<MapData> {
    type Item<'a> = aya::maps::ring_buf::RingBufItem<'a>;
    fn next_record(&mut self) -> Option<Self::Item<'_>> {
        self.next()
    }
}

/// Takes every queued record of every source, in timestamp order across sources (each
/// source is in order already), and passes each valid one to `emit`; returns (records
/// taken, records invalid). A source found empty is looked at again before every take, so
/// a record committed while the merge runs still goes out in order.
pub fn drain_merged<S: RecordSource>(sources: &mut [S], emit: &mut dyn FnMut(&RecordHeader, &[u8])) -> (usize, usize) {
    let base = sources.as_mut_ptr();
    let mut heads: Vec<Option<(RecordHeader, S::Item<'_>)>> = (0..sources.len()).map(|_| None).collect();
    let (mut taken, mut invalid) = (0, 0);
    loop {
        for (i, head) in heads.iter_mut().enumerate() {
            while head.is_none() {
                // SAFETY: `i` is in bounds, and each source has at most one item alive at
                // a time (its head slot is empty here), so this is the only borrow of it;
                // the items live in `heads`, which this function drops before returning.
                let Some(item) = (unsafe { &mut *base.add(i) }).next_record() else { break };
                match RecordHeader::parse(&item) {
                    Some((header, _)) => *head = Some((header, item)),
                    None => invalid += 1,
                }
            }
        }
        let oldest =
            heads.iter().enumerate().filter_map(|(i, h)| h.as_ref().map(|(header, _)| (header.timestamp_ns, i))).min();
        let Some((_, i)) = oldest else { break };
        if let Some((header, item)) = heads[i].take() {
            let data = &item[RECORD_HEADER_LEN..RECORD_HEADER_LEN + header.cap_len as usize];
            emit(&header, data);
            taken += 1;
        }
    }
    (taken, invalid)
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
    use std::collections::VecDeque;

    struct Queue(VecDeque<Vec<u8>>);

    impl RecordSource for Queue {
        type Item<'a> = Vec<u8>;
        fn next_record(&mut self) -> Option<Vec<u8>> {
            self.0.pop_front()
        }
    }

    fn record(ts: u64, tag: u8) -> Vec<u8> {
        let mut r = ts.to_ne_bytes().to_vec();
        r.extend_from_slice(&1u32.to_ne_bytes());
        r.extend_from_slice(&1u32.to_ne_bytes());
        r.push(tag);
        r
    }

    #[test]
    fn rings_are_merged_oldest_first_and_invalid_records_counted() {
        // CPU 0 saw the requests, CPU 1 the replies; a truncated record on ring 1.
        let mut rings = vec![
            Queue(VecDeque::from([record(10, b'a'), record(30, b'c'), record(50, b'e')])),
            Queue(VecDeque::from([record(20, b'b'), vec![1, 2, 3], record(40, b'd')])),
            Queue(VecDeque::new()),
        ];
        let mut got = Vec::new();
        let (taken, invalid) = drain_merged(&mut rings, &mut |h, data| got.push((h.timestamp_ns, data[0])));
        assert_eq!(got, [(10, b'a'), (20, b'b'), (30, b'c'), (40, b'd'), (50, b'e')]);
        assert_eq!((taken, invalid), (5, 1));
        assert_eq!(drain_merged(&mut rings, &mut |_, _| panic!("nothing left")), (0, 0));
    }

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

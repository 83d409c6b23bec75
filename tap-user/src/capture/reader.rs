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
    io::IoSlice,
    os::fd::AsRawFd,
    sync::{atomic::AtomicBool, atomic::Ordering, Arc},
    time::Duration,
};

use crossbeam_channel::{Sender, TrySendError};
use tap_common::record::{RecordHeader, RECORD_HEADER_LEN, RING_COUNT};

use super::{counters::UserCounters, dc_watch::DcWatch, ring::MappedRing};
use crate::{
    frames::{BatchPool, FrameBatch, BATCH_BYTES, BATCH_FRAMES},
    output::PcapSink,
};

/// Shortest wait in poll(2) between drains. The program submits without waking the reader
/// except once per half of the ring queued (measured: per-frame wakeups cost more
/// than the capture), so the wait, not a wakeup, is what brings a small batch to the reader.
pub const POLL_MIN: Duration = Duration::from_millis(25);
/// Longest wait: the latency bound for a lone frame on a quiet link. Each wakeup of an
/// idle reader costs about 75 µs of CPU in this VM (measured), so an idle sensor polling
/// every 100 ms spent 0.8 ms a second, more than tcpdump's whole cost at 25k frames/s.
pub const POLL_MAX: Duration = Duration::from_millis(250);
/// A drain that takes fewer records than this lengthens the next wait, more shortens it:
/// batches settle around this size while the latency stays within POLL_MAX. Larger runs
/// mean fewer wakeups (see POLL_MAX) and writes: at 4096 the timer, not the program,
/// woke the reader at top rate, every 25 ms (measured: 6% of the recorder's CPU).
pub const TARGET_DRAIN: usize = 16384;
/// The rings a run of records is taken from: dropped, it gives what was taken back to the
/// program (`MappedRing::release`), once, whatever way the run ends.
struct Taken<'a>(&'a mut [MappedRing]);

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        for ring in self.0.iter_mut() {
            ring.release();
        }
    }
}

/// Records taken between two releases of ring space to the program: the recorder writes
/// them in one writev(2) (a slice per frame; Linux takes at most 1024 slices a call).
pub const RUN_RECORDS: usize = 1024;
/// Sources `drain_merged` takes: the program's rings.
const MAX_SOURCES: usize = RING_COUNT;

/// What the reader does with the records.
pub enum Consumer {
    /// The sensor: frames are copied out of the ring into batches for the dispatch thread.
    Batches {
        tx: Sender<FrameBatch>,
        /// Buffers of the batches the consumer is done with.
        pool: BatchPool,
    },
    /// The recorder (`--record-only`): frames go to the pcap file straight from the ring's
    /// memory, by this thread, and nowhere else. Copying each frame into a batch for a
    /// writer thread was most of the recorder's CPU.
    Recorder { sink: PcapSink, watch: Option<Arc<DcWatch>> },
}

pub struct RingReader {
    pub rings: Vec<MappedRing>,
    pub consumer: Consumer,
    pub counters: Arc<UserCounters>,
    /// Set when capture stops; the reader drains what is queued, then returns.
    pub stop: Arc<AtomicBool>,
}

impl RingReader {
    /// Runs until `stop`; fails only when the recorder cannot write its file.
    pub fn run(mut self) -> anyhow::Result<()> {
        let mut wait = POLL_MIN;
        loop {
            // Read the flag before draining: what the program queued before detach is
            // then guaranteed to be taken on this last pass.
            let stopping = self.stop.load(Ordering::Acquire);
            let drained = self.drain()?;
            if stopping {
                if drained == 0 {
                    break;
                }
                continue;
            }
            wait = next_wait(wait, drained);
            self.wait(wait);
        }
        match self.consumer {
            Consumer::Recorder { sink, .. } => sink.finish(),
            Consumer::Batches { .. } => Ok(()),
        }
    }

    /// Takes every queued record, oldest first across the rings, a run of at most
    /// RUN_RECORDS at a time, each run given back to the program once consumed; returns
    /// how many records were taken.
    fn drain(&mut self) -> anyhow::Result<usize> {
        let Self { rings, consumer, counters, .. } = self;
        let (mut taken, mut invalid, mut bytes) = (0, 0, 0u64);
        let mut unsent = None;
        loop {
            // What this run takes goes back to the program when `taken_run` is dropped, also
            // when a write fails: the slices that borrow it are declared after it, so they
            // are gone first.
            let taken_run = Taken(rings);
            let (run_taken, run_invalid) = match consumer {
                Consumer::Batches { tx, pool } => {
                    let new_batch = || pool.batch(BATCH_FRAMES, BATCH_BYTES);
                    let batch = unsent.get_or_insert_with(new_batch);
                    drain_merged(taken_run.0, RUN_RECORDS, |header, record| {
                        bytes += u64::from(header.cap_len);
                        if !batch.has_room(header.cap_len as usize) {
                            send(tx, counters, std::mem::replace(batch, new_batch()));
                        }
                        batch.push_record(header, record);
                    })
                }
                Consumer::Recorder { sink, watch } => {
                    // The records are pcap records as they lie in the ring: one slice each.
                    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(RUN_RECORDS);
                    let run = drain_merged(taken_run.0, RUN_RECORDS, |header, record| {
                        bytes += u64::from(header.cap_len);
                        // SAFETY: the record lies in ring memory taken but not yet
                        // released, which the program leaves alone until `taken_run` is
                        // dropped; the slices are dropped before it.
                        slices.push(IoSlice::new(unsafe { std::slice::from_raw_parts(record.as_ptr(), record.len()) }));
                    });
                    if let Some(watch) = watch {
                        watch.observe_frames(slices.iter().map(|s| RecordHeader::frame(s)));
                    }
                    let written = slices.len() as u64;
                    sink.write_slices(&mut slices)?;
                    UserCounters::add(&counters.frames_consumed, written);
                    run
                }
            };
            drop(taken_run);
            taken += run_taken;
            invalid += run_invalid;
            if run_taken + run_invalid < RUN_RECORDS {
                break;
            }
        }
        if let (Consumer::Batches { tx, .. }, Some(batch)) = (consumer, unsent) {
            if !batch.is_empty() {
                send(tx, counters, batch);
            }
        }
        UserCounters::add(&counters.bytes_read, bytes);
        UserCounters::add(&counters.records_invalid, invalid as u64);
        UserCounters::add(&counters.frames_read, taken as u64);
        Ok(taken + invalid)
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
    /// The oldest record not yet taken, without taking it.
    fn peek(&mut self) -> Option<&[u8]>;
    /// Takes the record `peek` returned.
    fn advance(&mut self);
}

impl RecordSource for MappedRing {
    fn peek(&mut self) -> Option<&[u8]> {
        MappedRing::peek(self)
    }
    fn advance(&mut self) {
        MappedRing::advance(self)
    }
}

/// Takes up to `max` records from the sources, in timestamp order across sources (each
/// source is in order already), and passes each valid one to `emit` with its pcap record
/// (the header's bytes, then the frame's); returns (records taken, records invalid). A
/// source found empty is looked at again before every take, so a record committed while
/// the merge runs still goes out in order. Each record's header is read once: it is the
/// first touch of memory another CPU wrote, the reader's dearest load (see
/// `MappedRing::prefetch`).
pub fn drain_merged<S: RecordSource>(
    sources: &mut [S],
    max: usize,
    mut emit: impl FnMut(&RecordHeader, &[u8]),
) -> (usize, usize) {
    assert!(sources.len() <= MAX_SOURCES, "at most {MAX_SOURCES} rings are merged");
    // Each source's next record: its time, and its header.
    let mut heads: [Option<(u64, RecordHeader)>; MAX_SOURCES] = [None; MAX_SOURCES];
    let (mut taken, mut invalid) = (0, 0);
    while taken + invalid < max {
        let mut oldest: Option<(u64, usize)> = None;
        for (i, (source, head)) in sources.iter_mut().zip(heads.iter_mut()).enumerate() {
            while head.is_none() {
                let Some(record) = source.peek() else { break };
                match RecordHeader::parse(record) {
                    Some((header, _)) => *head = Some((header.timestamp_ns(), header)),
                    None => {
                        source.advance();
                        invalid += 1;
                    }
                }
            }
            if let Some((ts, _)) = *head {
                if oldest.is_none_or(|(oldest_ts, _)| ts < oldest_ts) {
                    oldest = Some((ts, i));
                }
            }
        }
        let Some((_, i)) = oldest else { break };
        let (_, header) = heads[i].take().expect("the oldest head is a parsed record");
        let source = &mut sources[i];
        if let Some(record) = source.peek().and_then(|item| item.get(..RECORD_HEADER_LEN + header.cap_len as usize)) {
            emit(&header, record);
        }
        source.advance();
        taken += 1;
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
        fn peek(&mut self) -> Option<&[u8]> {
            self.0.front().map(Vec::as_slice)
        }
        fn advance(&mut self) {
            self.0.pop_front();
        }
    }

    fn record(ts: u64, tag: u8) -> Vec<u8> {
        let mut r = RecordHeader::new(ts, 1, 1).to_bytes().to_vec();
        r.push(tag);
        r
    }

    /// What a test keeps of each emitted record: its time and its one frame byte, after
    /// checking that the record is the header's bytes and the frame.
    fn seen(header: &RecordHeader, record: &[u8]) -> (u64, u8) {
        assert_eq!(record, record_of(header, RecordHeader::frame(record)));
        (header.timestamp_ns(), RecordHeader::frame(record)[0])
    }

    fn record_of(header: &RecordHeader, frame: &[u8]) -> Vec<u8> {
        [&header.to_bytes()[..], frame].concat()
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
        let (taken, invalid) = drain_merged(&mut rings, 100, |h, record| got.push(seen(h, record)));
        assert_eq!(got, [(10, b'a'), (20, b'b'), (30, b'c'), (40, b'd'), (50, b'e')]);
        assert_eq!((taken, invalid), (5, 1));
        assert_eq!(drain_merged(&mut rings, 100, |_, _| panic!("nothing left")), (0, 0));
    }

    #[test]
    fn a_run_stops_at_its_limit_and_the_next_one_goes_on_in_order() {
        let mut rings = vec![
            Queue(VecDeque::from([record(10, b'a'), record(30, b'c'), record(50, b'e')])),
            Queue(VecDeque::from([record(20, b'b'), record(40, b'd')])),
        ];
        let mut got = Vec::new();
        let mut runs = Vec::new();
        loop {
            let run = drain_merged(&mut rings, 2, |h, record| got.push(seen(h, record)));
            runs.push(run);
            if run.0 < 2 {
                break;
            }
        }
        assert_eq!(runs, [(2, 0), (2, 0), (1, 0)]);
        assert_eq!(got, [(10, b'a'), (20, b'b'), (30, b'c'), (40, b'd'), (50, b'e')]);
    }

    #[test]
    fn wait_backs_off_when_idle_and_tightens_under_load() {
        let mut w = POLL_MIN;
        for _ in 0..10 {
            w = next_wait(w, 0);
        }
        assert_eq!(w, POLL_MAX, "an idle ring is polled at the longest interval");
        w = next_wait(w, 100_000);
        assert_eq!(w, POLL_MAX / 2);
        for _ in 0..10 {
            w = next_wait(w, 100_000);
        }
        assert_eq!(w, POLL_MIN, "a busy ring is polled at the shortest interval");
    }
}

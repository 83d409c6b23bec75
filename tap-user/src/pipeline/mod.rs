//! The stages behind the capture reader (or a capture file): frames are sharded by a
//! symmetric hash of their address pair over worker threads, each of which decodes,
//! defragments, tracks flows and reassembles TCP, and hands stream events to its consumer.
//!
//! Sharding on addresses, not ports, keeps a flow and the fragments of its datagrams (which
//! carry no ports) on one worker, in both directions. Workers never share state.

pub mod offline;
pub mod read;
pub mod summary;

use std::{
    hash::{Hash, Hasher},
    net::IpAddr,
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::Duration,
};

use crossbeam_channel::{bounded, Sender};
use etherparse::{LaxNetSlice, LaxSlicedPacket};

use crate::{
    budget::Budget,
    decode::{
        decode, decode_l4,
        defrag::{DefragCounters, DefragLimits, Defragmenter},
        DecodeError, Decoded, Packet,
    },
    flow::{address_pair, tcp::TcpCounters, FlowCounters, FlowLimits, FlowTracker, StreamConsumer},
    frames::FrameBatch,
};

crate::counter_set! {
    pub struct DecodeCounters {
        frames,
        bytes,
        not_ip,
        other_protocol,
        bad_link,
        bad_ip,
        bad_transport,
    }
}

impl DecodeCounters {
    fn error(&mut self, e: DecodeError) {
        match e {
            DecodeError::NotIp => self.not_ip += 1,
            DecodeError::OtherProtocol(_) => self.other_protocol += 1,
            DecodeError::BadLink => self.bad_link += 1,
            DecodeError::BadIp => self.bad_ip += 1,
            DecodeError::BadTransport => self.bad_transport += 1,
        }
    }
}

/// Everything the workers count, summed over workers for a report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineCounters {
    pub decode: DecodeCounters,
    pub defrag: DefragCounters,
    pub flow: FlowCounters,
    pub tcp: TcpCounters,
    /// Flows open now, summed over workers.
    pub flows_open: u64,
    /// The budgets every worker shares (one each, not summed): see
    /// [`PipelineOptions::budget_rows`].
    pub budgets: Vec<(&'static str, u64)>,
}

impl PipelineCounters {
    pub fn merge(&mut self, o: &Self) {
        self.decode.merge(&o.decode);
        self.defrag.merge(&o.defrag);
        self.flow.merge(&o.flow);
        self.tcp.merge(&o.tcp);
        self.flows_open += o.flows_open;
    }

    pub fn write(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        use crate::telemetry::write_rows;
        write_rows(out, "decode", &self.decode.rows())?;
        write_rows(out, "defrag", &self.defrag.rows())?;
        write_rows(out, "flow", &self.flow.rows())?;
        write_rows(out, "flow", &[("open", self.flows_open)])?;
        write_rows(out, "tcp", &self.tcp.rows())?;
        write_rows(out, "budget", &self.budgets)
    }
}

#[derive(Clone, Debug)]
pub struct PipelineOptions {
    pub workers: usize,
    pub flows: FlowLimits,
    pub defrag: DefragLimits,
    /// Partial protocol records held by the parsers' framers, over every worker.
    pub streams: Budget,
    /// Work items queued per worker before the dispatcher waits.
    pub queue_depth: usize,
}

impl PipelineOptions {
    /// What the budgets shared by every worker hold and had to refuse (read once, not per
    /// worker: they are one each).
    pub fn budget_rows(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("ooo_held_bytes", self.flows.ooo.used() as u64),
            ("ooo_limit_bytes", self.flows.ooo.limit() as u64),
            ("stream_held_bytes", self.streams.used() as u64),
            ("stream_refused_bytes", self.streams.refused()),
            ("stream_limit_bytes", self.streams.limit() as u64),
            ("defrag_held_bytes", self.defrag.bytes.used() as u64),
            ("defrag_limit_bytes", self.defrag.bytes.limit() as u64),
        ]
    }
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            flows: FlowLimits::default(),
            defrag: DefragLimits::default(),
            streams: Budget::new(32 << 20),
            queue_depth: 64,
        }
    }
}

/// One worker's stages, usable without threads (tests, benchmarks).
pub struct Worker<C: StreamConsumer> {
    defrag: Defragmenter,
    pub tracker: FlowTracker<C>,
    decode: DecodeCounters,
}

impl<C: StreamConsumer> Worker<C> {
    pub fn new(consumer: C, opts: &PipelineOptions) -> Self {
        Self {
            defrag: Defragmenter::new(opts.defrag.clone()),
            tracker: FlowTracker::new(consumer, opts.flows.clone()),
            decode: DecodeCounters::default(),
        }
    }

    /// Takes one Ethernet frame captured at `ts` (since the Unix epoch).
    pub fn frame(&mut self, ts: Duration, data: &[u8]) {
        self.decode.frames += 1;
        self.decode.bytes += data.len() as u64;
        match decode(data) {
            Ok(Decoded::Packet(p)) => self.tracker.packet(ts, &p),
            Ok(Decoded::Fragment(f)) => {
                if let Some(d) = self.defrag.push(ts, &f) {
                    match decode_l4(d.protocol, &d.payload) {
                        Ok(l4) => self.tracker.packet(ts, &Packet { src: d.src, dst: d.dst, vlan: d.vlan, l4 }),
                        Err(e) => self.decode.error(e),
                    }
                }
            }
            Err(e) => self.decode.error(e),
        }
    }

    /// Closes every flow (end of input).
    pub fn finish(&mut self) {
        self.tracker.finish();
    }

    pub fn counters(&self) -> PipelineCounters {
        PipelineCounters {
            decode: self.decode.clone(),
            defrag: self.defrag.counters.clone(),
            flow: self.tracker.counters.clone(),
            tcp: self.tracker.tcp_counters.clone(),
            flows_open: self.tracker.len() as u64,
            budgets: Vec::new(),
        }
    }

    pub fn into_consumer(self) -> C {
        self.tracker.consumer
    }
}

/// Frames of one batch that belong to one worker.
struct WorkItem {
    batch: Arc<FrameBatch>,
    /// Indices into the batch; `None`: all of them (a single worker).
    frames: Option<Vec<u32>>,
}

/// The (source, destination) IP addresses of an Ethernet frame, through VLAN tags; `None`
/// for frames without an IP header.
pub fn ip_addresses(frame: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match LaxSlicedPacket::from_ethernet(frame).ok()?.net? {
        LaxNetSlice::Ipv4(v4) => {
            let h = v4.header();
            Some((IpAddr::from(h.source()), IpAddr::from(h.destination())))
        }
        LaxNetSlice::Ipv6(v6) => {
            let h = v6.header();
            Some((IpAddr::from(h.source()), IpAddr::from(h.destination())))
        }
        _ => None,
    }
}

/// Worker index for a frame: a symmetric hash of its IP address pair. Frames without IP
/// addresses go to worker 0, which counts them.
pub fn shard_of(frame: &[u8], workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    let Some((a, b)) = ip_addresses(frame) else { return 0 };
    // A fixed-key hasher: the same pair always lands on the same worker, in every run.
    let mut h = std::hash::DefaultHasher::new();
    address_pair(a, b).hash(&mut h);
    (h.finish() % workers as u64) as usize
}

/// The worker threads and the dispatcher's ends of their queues.
pub struct Pipeline<C: StreamConsumer + Send + 'static> {
    queues: Vec<Sender<WorkItem>>,
    workers: Vec<JoinHandle<C>>,
    published: Vec<Arc<Mutex<PipelineCounters>>>,
    opts: PipelineOptions,
}

impl<C> Pipeline<C>
where
    C: StreamConsumer + Send + 'static,
{
    /// Starts `opts.workers` workers; `consumer(i)` makes worker i's consumer.
    pub fn start(opts: &PipelineOptions, mut consumer: impl FnMut(usize) -> C) -> std::io::Result<Self> {
        let n = opts.workers.max(1);
        let mut queues = Vec::with_capacity(n);
        let mut workers = Vec::with_capacity(n);
        let mut published = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = bounded::<WorkItem>(opts.queue_depth);
            let shared = Arc::new(Mutex::new(PipelineCounters::default()));
            let worker_consumer = consumer(i);
            // Clones share the budgets: one bound over every worker.
            let worker_opts = opts.clone();
            let publish = Arc::clone(&shared);
            let handle = thread::Builder::new().name(format!("worker-{i}")).spawn(move || {
                // Built on its own thread: flow state never crosses threads.
                crate::budget::set_stream_budget(Some(worker_opts.streams.clone()));
                let mut worker = Worker::new(worker_consumer, &worker_opts);
                for item in rx {
                    let mut last = Duration::ZERO;
                    let mut take = |f: crate::frames::Frame<'_>| {
                        last = Duration::from_nanos(f.timestamp_ns);
                        worker.frame(last, f.data);
                    };
                    match &item.frames {
                        Some(indices) => indices.iter().filter_map(|&i| item.batch.get(i as usize)).for_each(&mut take),
                        None => item.batch.iter().for_each(&mut take),
                    }
                    worker.tracker.tick(last);
                    if let Ok(mut p) = publish.lock() {
                        *p = worker.counters();
                    }
                }
                worker.finish();
                if let Ok(mut p) = publish.lock() {
                    *p = worker.counters();
                }
                worker.into_consumer()
            })?;
            queues.push(tx);
            workers.push(handle);
            published.push(shared);
        }
        Ok(Self { queues, workers, published, opts: opts.clone() })
    }

    /// Hands a batch to the workers; waits while a worker's queue is full (a capture file
    /// is read no faster than it is processed; live capture drops before this point, in
    /// the ring readers, where it is counted).
    pub fn dispatch(&self, batch: FrameBatch) {
        let n = self.queues.len();
        if n == 1 {
            // No index list to build (and free on another thread) for a single worker.
            let _ = self.queues[0].send(WorkItem { batch: Arc::new(batch), frames: None });
            return;
        }
        let mut per_worker: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (i, f) in batch.iter().enumerate() {
            per_worker[shard_of(f.data, n)].push(i as u32);
        }
        let batch = Arc::new(batch);
        for (q, frames) in self.queues.iter().zip(per_worker) {
            if !frames.is_empty() {
                // A send fails only if the worker died; its panic surfaces at `finish`.
                let _ = q.send(WorkItem { batch: Arc::clone(&batch), frames: Some(frames) });
            }
        }
    }

    /// Counters as last published by the workers (after each work item).
    pub fn counters(&self) -> PipelineCounters {
        let mut sum = PipelineCounters::default();
        for p in &self.published {
            if let Ok(c) = p.lock() {
                sum.merge(&c);
            }
        }
        sum.budgets = self.opts.budget_rows();
        sum
    }

    /// Ends the input: workers drain their queues, close every flow and return their
    /// consumers with the final counters.
    pub fn finish(self) -> anyhow::Result<(PipelineCounters, Vec<C>)> {
        drop(self.queues);
        let mut consumers = Vec::new();
        for w in self.workers {
            consumers.push(w.join().map_err(|_| anyhow::anyhow!("a pipeline worker panicked"))?);
        }
        let mut sum = PipelineCounters::default();
        for p in &self.published {
            if let Ok(c) = p.lock() {
                sum.merge(&c);
            }
        }
        sum.budgets = self.opts.budget_rows();
        Ok((sum, consumers))
    }
}

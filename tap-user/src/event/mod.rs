//! Activity events: the protobuf messages of proto/dctap.proto, stamped with the sensor id
//! and a per-sensor sequence number, and the sinks they go to. Only this module and the
//! uplink know protobuf; parsers produce their own typed messages.

pub mod analyzer;
pub mod json;

use std::{
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

/// Generated from proto/dctap.proto by build.rs.
#[allow(clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/dctap.v1.rs"));
}

pub use pb::ActivityEvent;

/// Gives every event of this sensor its id and the next sequence number, across workers.
#[derive(Clone, Debug)]
pub struct Stamper {
    sensor_id: Arc<str>,
    next_seq: Arc<AtomicU64>,
}

impl Stamper {
    pub fn new(sensor_id: &str) -> Self {
        Self { sensor_id: sensor_id.into(), next_seq: Arc::new(AtomicU64::new(1)) }
    }

    pub fn stamp(&self, event: &mut ActivityEvent) {
        event.sensor_id = self.sensor_id.to_string();
        event.seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
    }

    /// Events stamped so far.
    pub fn issued(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed) - 1
    }
}

/// Where events go (the uplink spool, JSON lines, a test's vector).
pub trait EventSink: Send {
    fn emit(&mut self, event: ActivityEvent);
}

/// Counts and drops: `--read` without `--json`.
#[derive(Default)]
pub struct Discard;

impl EventSink for Discard {
    fn emit(&mut self, _: ActivityEvent) {}
}

/// One JSON object per line on a shared writer (`--json`).
pub struct JsonLines<W: Write + Send> {
    out: Arc<Mutex<W>>,
    /// The line being serialised, reused: the writer sees one write per event.
    line: Vec<u8>,
}

impl<W: Write + Send> JsonLines<W> {
    pub fn new(out: Arc<Mutex<W>>) -> Self {
        Self { out, line: Vec::with_capacity(1024) }
    }
}

impl<W: Write + Send> EventSink for JsonLines<W> {
    fn emit(&mut self, event: ActivityEvent) {
        self.line.clear();
        json::write_event(&mut self.line, &event);
        self.line.push(b'\n');
        if let Ok(mut out) = self.out.lock() {
            // A closed stdout (a pager quit) is not the sensor's problem to report per event.
            let _ = out.write_all(&self.line);
        }
    }
}

/// Collects events in memory (tests).
#[derive(Clone, Default)]
pub struct Collect(pub Arc<Mutex<Vec<ActivityEvent>>>);

impl EventSink for Collect {
    fn emit(&mut self, event: ActivityEvent) {
        if let Ok(mut v) = self.0.lock() {
            v.push(event);
        }
    }
}

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

/// The wire schema (proto/dctap.proto), compiled once for the sensor and the cloud.
pub use tap_schema as pb;

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
}

/// Where events go (the uplink spool, JSON lines, a test's vector).
pub trait EventSink: Send {
    fn emit(&mut self, event: ActivityEvent);

    /// The input ended: pass on whatever is held back.
    fn flush(&mut self) {}
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
    /// Whole lines not yet written: the shared writer is locked once per 64 KiB, not per
    /// event (workers' lines never interleave within a line).
    pending: Vec<u8>,
}

/// Lines held back before one write to the shared writer.
const JSON_PENDING_BYTES: usize = 64 << 10;

impl<W: Write + Send> JsonLines<W> {
    pub fn new(out: Arc<Mutex<W>>) -> Self {
        Self { out, pending: Vec::with_capacity(JSON_PENDING_BYTES + 4096) }
    }

    fn write_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if let Ok(mut out) = self.out.lock() {
            // A closed stdout (a pager quit) is not the sensor's problem to report per event.
            let _ = out.write_all(&self.pending);
        }
        self.pending.clear();
    }
}

impl<W: Write + Send> Drop for JsonLines<W> {
    fn drop(&mut self) {
        self.write_pending();
    }
}

impl<W: Write + Send> EventSink for JsonLines<W> {
    fn emit(&mut self, event: ActivityEvent) {
        json::write_event(&mut self.pending, &event);
        self.pending.push(b'\n');
        if self.pending.len() >= JSON_PENDING_BYTES {
            self.write_pending();
        }
    }

    fn flush(&mut self) {
        self.write_pending();
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

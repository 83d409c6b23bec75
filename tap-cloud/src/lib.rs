//! dctap cloud service: takes the sensors' activity events over gRPC (mTLS and per-sensor
//! access keys), stores them, and (in later stages) detects attacks and serves the portal.
//!
//! `main.rs` only parses the command line; everything it runs lives here so tests can use it.

pub mod certs;
pub mod detect;
pub mod files;
pub mod ingest;
pub mod keys;
pub mod limits;
pub mod portal;
pub mod store;
pub mod text;

/// The wire schema (proto/dctap.proto), compiled once for the sensor and the cloud.
pub use tap_schema as pb;

/// Event times the cloud accepts as they are, in nanoseconds since the Unix epoch: from
/// 1990-01-01 to 2100-01-01 UTC. Whatever is outside comes from a broken clock or a
/// crafted capture; keeping every stored time inside leaves the detections' time
/// arithmetic far from overflow.
pub const EARLIEST_EVENT_NS: i64 = 631_152_000 * 1_000_000_000;
pub const LATEST_EVENT_NS: i64 = 4_102_444_800 * 1_000_000_000;

/// Whether `t` is an event time the cloud accepts as it is (see [`EARLIEST_EVENT_NS`]).
pub fn sane_time(t: i64) -> bool {
    (EARLIEST_EVENT_NS..LATEST_EVENT_NS).contains(&t)
}

/// Wall-clock time now, in nanoseconds since the Unix epoch.
pub fn unix_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

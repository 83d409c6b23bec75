//! dctap cloud service: takes the sensors' activity events over gRPC (mTLS and per-sensor
//! access keys), stores them, and (in later stages) detects attacks and serves the portal.
//!
//! `main.rs` only parses the command line; everything it runs lives here so tests can use it.

pub mod certs;
pub mod detect;
pub mod files;
pub mod ingest;
pub mod keys;
pub mod portal;
pub mod store;
pub mod text;

/// Generated from proto/dctap.proto by build.rs.
#[allow(clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/dctap.v1.rs"));
}

/// Wall-clock time now, in nanoseconds since the Unix epoch.
pub fn unix_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

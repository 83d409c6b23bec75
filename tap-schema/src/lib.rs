//! The messages the sensor sends and the cloud stores (`proto/dctap.proto`, package
//! `dctap.v1`), compiled once for both: the activity events, the uplink's batches and
//! acknowledgements, registration, heartbeats and pcap excerpts, and the `Ingest` service
//! (the client with the `client` feature, the server with `server`).

pub mod vocab;

#[allow(clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/dctap.v1.rs"));
}
pub use generated::*;

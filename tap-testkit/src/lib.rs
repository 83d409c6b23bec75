//! Test traffic and fixtures shared by the sensor's live tests, `cargo xtask demo` and the
//! benchmarks: hand-built frames for every case the XDP filter distinguishes, labelled
//! with the verdict the filter must reach; pcap read/write; a SPAN-port stand-in made of
//! two network namespaces joined by a veth pair; a capture replayed through the real sensor
//! and cloud, with the labels that say what it must raise.

pub mod flood;
pub mod frame;
pub mod mix;
pub mod netns;
pub mod pcap;
pub mod replay;
pub mod sensor;
pub mod shared;
pub mod skip;
pub mod temp;

pub use temp::TempDir;

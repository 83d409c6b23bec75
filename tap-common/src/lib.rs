//! Types shared by the XDP program (`tap-ebpf`) and the sensor (`tap-user`).
//!
//! Everything here has a fixed `#[repr(C)]` layout because the kernel side writes it and
//! the user side reads it (or the other way round). Names of maps and programs live here
//! as constants so neither side finds them by a string literal of its own.
#![no_std]

pub mod config;
pub mod counters;
pub mod filter;
pub mod record;

/// Name of the XDP entry point in the eBPF object.
pub const PROGRAM_NAME: &str = "dctap_xdp";

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding (checked by the layout tests).
    unsafe impl aya::Pod for crate::record::RecordHeader {}
    // SAFETY: an array of u64, `#[repr(C)]`.
    unsafe impl aya::Pod for crate::counters::CounterSet {}
}

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
/// A program that drops every frame and does nothing else: the benchmark's floor, so the
/// cost that bpf_stats itself and the driver add can be told from the filter's own.
pub const FLOOR_PROGRAM_NAME: &str = "dctap_xdp_floor";
/// A program that copies every frame into a ring and does nothing else: the floor of a
/// kept frame's cost, what the ring buffer and the copy cost by themselves in this kernel
/// and machine.
pub const COPY_FLOOR_PROGRAM_NAME: &str = "dctap_xdp_copy_floor";

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding (checked by the layout tests).
    unsafe impl aya::Pod for crate::record::RecordHeader {}
    // SAFETY: an array of u64, `#[repr(C)]`.
    unsafe impl aya::Pod for crate::counters::CounterSet {}
}

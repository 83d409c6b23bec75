//! dctap's XDP program: on a mirror (SPAN) port, keep the frames that go to or come from a
//! domain controller on an AD service port, copy them into ring buffers for the sensor, and
//! drop everything (nothing on a mirror port is ever forwarded).
//!
//! Invariant: this program never looks past the L4 ports. What a frame means is the
//! sensor's business; here every instruction runs for every mirrored frame.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// Inline asm on BPF (program.rs: an optimisation barrier the verifier needs); nightly, like
// the whole eBPF build.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod program;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

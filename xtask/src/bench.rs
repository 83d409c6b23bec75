//! Benchmarks. Not part of `cargo xtask test`: they take minutes and their figures are
//! ratios against a peer measured in the same run (the machine is shared and noisy).

use crate::setup::Env;

#[derive(clap::Subcommand)]
pub enum Which {
    /// XDP capture vs tcpdump on the same veth and traffic.
    Capture,
}

pub fn run(_env: &Env, which: Which) -> anyhow::Result<()> {
    match which {
        Which::Capture => anyhow::bail!("bench capture: not written yet"),
    }
}

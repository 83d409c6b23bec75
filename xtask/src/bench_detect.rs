//! `bench detect`: the detections at the scale of a large domain (100 000 users, 20 000
//! computers, 10 DCs), from `tap-cloud/benches/detect.rs` in a release build: detection
//! alone per CPU-second, checkpoint cost, detection lag through the store, peak memory,
//! and ten sensors against one. Writes docs/bench-detect.md.

use crate::{
    setup::Env,
    util::{note, step},
};

pub fn run(env: &Env) -> anyhow::Result<()> {
    step("tap-cloud's detection benchmark (release build)");
    let out = env.root.join("docs/bench-detect.md");
    env.cargo().args(["bench", "-p", "tap-cloud", "--bench", "detect", "--"]).arg(&out).run()?;
    note(&format!("written to {}", out.display()));
    Ok(())
}

//! `cargo xtask eval`: every capture of `eval/labels.toml` through the real sensor and the
//! real cloud (its own database each, so alerts are attributable), then the alerts against
//! the labels: per detection, true positives, false negatives and false positives.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::{bail, Context as _};
use tap_testkit::replay::{alerts, Labels};

use crate::{
    setup::Env,
    util::{note, step},
};

#[derive(Default)]
struct Score {
    tp: u32,
    fn_: u32,
    fp: u32,
}

pub fn run(env: &Env) -> anyhow::Result<()> {
    let shared = env.root.join("../shared");
    if !shared.exists() {
        note(&format!("{} not found: only the project's own captures (lab/pcaps) are scored", shared.display()));
    }
    let labels = Labels::load(&env.root.join("eval/labels.toml"))?;
    step("build tap-sensor and tap-cloud");
    env.cargo().args(["build", "-p", "tap-user", "-p", "tap-cloud"]).run()?;
    let (sensor, cloud) = (env.root.join("target/debug/tap-sensor"), env.root.join("target/debug/tap-cloud"));
    let work = env.root.join("target/eval");
    let mut scores: BTreeMap<String, Score> = BTreeMap::new();
    for label in &labels.capture {
        let pcap = label.pcap(&env.root, &shared);
        if !pcap.exists() {
            note(&format!("SKIPPED {}: not found", label.path));
            continue;
        }
        let raised = alerts(&sensor, &cloud, &pcap, &label.detect_toml(), &work).with_context(|| label.path.clone())?;
        let verdict = label.judge(&raised);
        let mut said = Vec::new();
        for d in &verdict.detected {
            scores.entry(d.clone()).or_default().tp += 1;
            said.push(format!("{d}: detected"));
        }
        for d in &verdict.missed {
            scores.entry(d.clone()).or_default().fn_ += 1;
            said.push(format!("{d}: MISSED"));
        }
        for d in &verdict.false_positives {
            scores.entry(d.clone()).or_default().fp += 1;
            said.push(format!("{d}: FALSE POSITIVE"));
        }
        let name = Path::new(&label.path).file_name().unwrap_or_default().to_string_lossy().into_owned();
        note(&format!(
            "{name}: {}",
            if said.is_empty() { "nothing raised (benign)".to_string() } else { said.join(", ") }
        ));
    }
    let mut s = String::new();
    let _ = writeln!(s, "| detection | true positives | false negatives | false positives |");
    let _ = writeln!(s, "| --- | --- | --- | --- |");
    let (mut fns, mut fps) = (0, 0);
    for (d, sc) in &scores {
        let _ = writeln!(s, "| {d} | {} | {} | {} |", sc.tp, sc.fn_, sc.fp);
        fns += sc.fn_;
        fps += sc.fp;
    }
    println!("\n{s}");
    std::fs::write(work.with_extension("md"), &s)?;
    if fns + fps > 0 {
        bail!("{fns} missed and {fps} false detections (see above)");
    }
    Ok(())
}

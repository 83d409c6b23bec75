//! `cargo xtask eval`: every capture of `eval/labels.toml` through the real sensor and the
//! real cloud (its own database each, so alerts are attributable), then the alerts against
//! the labels: per detection and per capture, true and false positives, false negatives,
//! precision, recall and how many alerts named the account the wire shows. The tables go
//! to `docs/evaluation.md`.

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
    /// Detected alerts whose account is on the wire: how many named it.
    named: u32,
    nameable: u32,
}

fn ratio(n: u32, d: u32) -> String {
    if d == 0 {
        "-".into()
    } else {
        format!("{:.2}", f64::from(n) / f64::from(d))
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}

/// Where the tables are written: the evaluation document of the repository.
const DOCUMENT: &str = "docs/evaluation.md";

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
    let mut captures = String::new();
    let _ = writeln!(captures, "| capture | kind | raised as expected | missed | false positives | account named |");
    let _ = writeln!(captures, "| --- | --- | --- | --- | --- | --- |");
    let mut skipped = 0;
    for label in &labels.capture {
        let pcap = label.pcap(&env.root, &shared);
        if !pcap.exists() {
            note(&format!("SKIPPED {}: not found", label.path));
            skipped += 1;
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
        for (d, named) in &verdict.account_named {
            let sc = scores.entry(d.clone()).or_default();
            sc.nameable += 1;
            sc.named += u32::from(*named);
            if !named {
                said.push(format!("{d}: WRONG OR NO ACCOUNT (want {})", label.accounts[d]));
            }
        }
        let name = Path::new(&label.path).file_name().unwrap_or_default().to_string_lossy().into_owned();
        note(&format!(
            "{name}: {}",
            if said.is_empty() { "nothing raised (benign)".to_string() } else { said.join(", ") }
        ));
        let kind = if label.expect.is_empty() { "benign" } else { "attack" };
        let named = verdict.account_named.iter().filter(|(_, n)| *n).count();
        let named = if verdict.account_named.is_empty() {
            "-".to_string()
        } else {
            format!("{named}/{}", verdict.account_named.len())
        };
        let _ = writeln!(
            captures,
            "| {} | {kind} | {} | {} | {} | {named} |",
            label.path,
            list(&verdict.detected),
            list(&verdict.missed),
            list(&verdict.false_positives),
        );
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| detection | true positives | false negatives | false positives | precision | recall | account named |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
    let mut all = Score::default();
    for (d, sc) in &scores {
        let named = if sc.nameable == 0 { "-".to_string() } else { format!("{}/{}", sc.named, sc.nameable) };
        let (precision, recall) = (ratio(sc.tp, sc.tp + sc.fp), ratio(sc.tp, sc.tp + sc.fn_));
        let _ = writeln!(s, "| {d} | {} | {} | {} | {precision} | {recall} | {named} |", sc.tp, sc.fn_, sc.fp);
        all.tp += sc.tp;
        all.fn_ += sc.fn_;
        all.fp += sc.fp;
        all.named += sc.named;
        all.nameable += sc.nameable;
    }
    let (precision, recall) = (ratio(all.tp, all.tp + all.fp), ratio(all.tp, all.tp + all.fn_));
    let _ = writeln!(
        s,
        "| **all** | {} | {} | {} | {precision} | {recall} | {}/{} |",
        all.tp, all.fn_, all.fp, all.named, all.nameable
    );
    println!("\n{s}");
    let scope = if skipped == 0 {
        "every capture of `eval/labels.toml`".to_string()
    } else {
        format!("the captures of `eval/labels.toml` present where it ran ({skipped} under ../shared were absent)")
    };
    let doc = format!(
        "# Evaluation\n\nWritten by `cargo xtask eval`: {scope}, each replayed through `tap-sensor --read` into a \
         `tap-cloud` of its own, and the alerts compared with the capture's label. A true positive is an expected \
         detection raised from the labelled source; a false positive is any detection the label neither expects nor \
         allows; \"account named\" counts the detected alerts whose account is on the wire and that name it.\n\n\
         ## Per detection\n\n{s}\n## Per capture\n\n{captures}"
    );
    std::fs::write(env.root.join(DOCUMENT), doc).with_context(|| format!("write {DOCUMENT}"))?;
    note(&format!("written to {DOCUMENT}"));
    let unnamed = all.nameable - all.named;
    if all.fn_ + all.fp + unnamed > 0 {
        bail!("{} missed, {} false detections and {unnamed} alerts without their account (see above)", all.fn_, all.fp);
    }
    Ok(())
}

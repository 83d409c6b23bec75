//! `cargo xtask eval`: every capture of `eval/labels.toml` through the real sensor and the
//! real cloud (its own database each, so alerts are attributable), then the alerts against
//! the labels: per detection, true positives, false negatives and false positives.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::Deserialize;

use crate::{
    setup::Env,
    util::{note, step},
};

#[derive(Deserialize)]
struct Labels {
    capture: Vec<Label>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Label {
    path: String,
    #[serde(default)]
    expect: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
    src: Option<String>,
    /// The site's domain controllers, as its cloud configuration would list them.
    #[serde(default)]
    dcs: Vec<String>,
    /// More `[detect]` settings for this capture's cloud (e.g. honeytokens), TOML lines.
    #[serde(default)]
    config: String,
    #[serde(default)]
    #[allow(dead_code)]
    note: String,
}

#[derive(Default)]
struct Score {
    tp: u32,
    fn_: u32,
    fp: u32,
}

/// (detection, source) of the alerts one capture raises.
fn alerts(env: &Env, pcap: &Path, label: &Label, work: &Path) -> anyhow::Result<BTreeSet<(String, String)>> {
    let (sensor, cloud) = (env.root.join("target/debug/tap-sensor"), env.root.join("target/debug/tap-cloud"));
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let db = work.join("cloud.db");
    let config = work.join("cloud.toml");
    std::fs::write(&config, format!("[detect]\ndcs = {:?}\n{}\n", label.dcs, label.config))?;
    let run = |cmd: &mut Command| -> anyhow::Result<std::process::Output> {
        let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
        if !out.status.success() {
            bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out)
    };
    run(Command::new(&cloud)
        .args(["sensors", "add", "eval", "--db"])
        .arg(&db)
        .arg("--key-file")
        .arg(work.join("key")))?;
    let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut server = Command::new(&cloud)
        .args(["serve", "--http", "127.0.0.1:0", "--insecure", "--db"])
        .arg(&db)
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(addr.to_string())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            let _ = server.kill();
            bail!("tap-cloud did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = run(Command::new(&sensor)
        .arg("--read")
        .arg(pcap)
        .args(["--sensor-id", "eval", "--insecure", "--cloud"])
        .arg(format!("http://{addr}"))
        .arg("--access-key-file")
        .arg(work.join("key"))
        .arg("--spool-dir")
        .arg(work.join("spool")));
    let _ = server.kill();
    let _ = server.wait();
    sent?;
    run(Command::new(&cloud).args(["detect", "--db"]).arg(&db).arg("--config").arg(&config))?;
    let out = run(Command::new(&cloud).args(["alerts", "--json", "--db"]).arg(&db))?;
    String::from_utf8(out.stdout)?
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok((
                v["detection"].as_str().unwrap_or_default().to_string(),
                v["src_ip"].as_str().unwrap_or_default().into(),
            ))
        })
        .collect()
}

pub fn run(env: &Env) -> anyhow::Result<()> {
    let shared = env.root.join("../shared");
    if !shared.exists() {
        note(&format!("{} not found: only the project's own captures (lab/pcaps) are scored", shared.display()));
    }
    let labels_path = env.root.join("eval/labels.toml");
    let labels: Labels = toml::from_str(&std::fs::read_to_string(&labels_path)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", labels_path.display()))?;
    step("build tap-sensor and tap-cloud");
    env.cargo().args(["build", "-p", "tap-user", "-p", "tap-cloud"]).run()?;
    let work = env.root.join("target/eval");
    let mut scores: BTreeMap<String, Score> = BTreeMap::new();
    let mut lines = Vec::new();
    for label in &labels.capture {
        // The project's own captures (lab/pcaps/...) are relative to the project, the
        // others to ../shared.
        let pcap = if label.path.starts_with("lab/") { env.root.join(&label.path) } else { shared.join(&label.path) };
        if !pcap.exists() {
            note(&format!("SKIPPED {}: not found", label.path));
            continue;
        }
        let got = alerts(env, &pcap, label, &work).with_context(|| label.path.clone())?;
        let fired: BTreeSet<&str> = got.iter().map(|(d, _)| d.as_str()).collect();
        let mut verdicts = Vec::new();
        for d in &label.expect {
            let hit = got.iter().any(|(gd, src)| gd == d && label.src.as_ref().is_none_or(|s| s == src));
            let score = scores.entry(d.clone()).or_default();
            if hit {
                score.tp += 1;
                verdicts.push(format!("{d}: detected"));
            } else {
                score.fn_ += 1;
                verdicts.push(format!("{d}: MISSED"));
            }
        }
        for d in fired {
            if !label.expect.iter().any(|e| e == d) && !label.allow.iter().any(|a| a == d) {
                scores.entry(d.to_string()).or_default().fp += 1;
                verdicts.push(format!("{d}: FALSE POSITIVE"));
            }
        }
        let name = Path::new(&label.path).file_name().unwrap_or_default().to_string_lossy().into_owned();
        let summary = if verdicts.is_empty() { "nothing raised (benign)".to_string() } else { verdicts.join(", ") };
        note(&format!("{name}: {summary}"));
        lines.push((name, summary));
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

//! `cargo xtask fuzz --seconds N`: every cargo-fuzz target for N seconds each, seeded from
//! the lab captures (../shared/adlab/pcaps) or, without them, the generated test mix. Seeds
//! and findings stay under target/fuzz; nothing from ../shared is committed.

use std::{path::Path, time::Duration};

use anyhow::{bail, Context as _};
use tap_testkit::{mix, pcap};

use crate::{
    setup::Env,
    util::{note, step},
};

/// Targets and how their seeds are made.
const TARGETS: &[&str] = &["pipeline_frames", "kerberos", "dns", "ldap", "ntlm", "smb2", "dcerpc", "http"];
const CARGO_FUZZ_VERSION: &str = "0.13.1";

/// Seeds for the HTTP target: authentication exchanges as Windows clients and IIS make
/// them (request with a token, 401 challenge, chunked and sized bodies).
fn seed_http(corpus: &Path) -> anyhow::Result<usize> {
    let seeds: [&[u8]; 3] = [
        b"GET /certsrv/ HTTP/1.1\r\nHost: dc1\r\nAuthorization: NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==\r\n\r\n",
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Negotiate\r\nWWW-Authenticate: NTLM TlRMTVNTUAACAAAA\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
        b"POST /wsman HTTP/1.1\r\nContent-Length: 4\r\nAuthorization: Negotiate YIIBBgYGKwYBBQUCoIH7MIH4\r\n\r\nbodyHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ];
    std::fs::create_dir_all(corpus)?;
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(corpus.join(format!("http-{i}")), seed)?;
    }
    Ok(seeds.len())
}

/// Encodes frames the way `pipeline_frames` reads them: 2-byte length, 1-byte time step.
fn encode_frames(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        let f = &f[..f.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(f.len() as u16).to_be_bytes());
        out.push(1);
        out.extend_from_slice(f);
    }
    out
}

/// Frames of every lab capture (one list per capture), plus the generated mix.
fn seed_captures() -> anyhow::Result<Vec<Vec<Vec<u8>>>> {
    let lab = tap_testkit::shared::lab_pcaps();
    if lab.is_empty() {
        note("../shared/adlab/pcaps not found: seeding from the generated mix only");
    }
    let mut captures: Vec<Vec<Vec<u8>>> = Vec::new();
    for f in lab {
        captures.push(pcap::read(&f)?.into_iter().map(|p| p.data).collect());
    }
    captures.push(mix::mix(2).into_iter().map(|l| l.frame).collect());
    Ok(captures)
}

/// Payloads to or from `port` in the seed captures, one file each (TCP payloads as they
/// come, so record framing is exercised from real segment boundaries).
fn seed_payloads(dir: &Path, port: u16) -> anyhow::Result<usize> {
    use etherparse::{SlicedPacket, TransportSlice};
    std::fs::create_dir_all(dir)?;
    let mut n = 0;
    for frames in seed_captures()? {
        for f in frames {
            let Ok(p) = SlicedPacket::from_ethernet(&f) else { continue };
            let payload = match &p.transport {
                Some(TransportSlice::Udp(u)) if u.source_port() == port || u.destination_port() == port => u.payload(),
                Some(TransportSlice::Tcp(t)) if t.source_port() == port || t.destination_port() == port => t.payload(),
                _ => continue,
            };
            if !payload.is_empty() {
                std::fs::write(dir.join(format!("seed-{port}-{n}")), payload)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

fn seed_pipeline(dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let captures = seed_captures()?;
    let mut n = 0;
    for (ci, frames) in captures.iter().enumerate() {
        // Windows of 16 consecutive frames: whole small conversations, parts of long ones.
        for (wi, window) in frames.chunks(16).enumerate() {
            std::fs::write(dir.join(format!("seed-{ci}-{wi}")), encode_frames(window))?;
            n += 1;
        }
    }
    Ok(n)
}

fn ensure_cargo_fuzz(env: &Env) -> anyhow::Result<()> {
    if env.cargo().args(["fuzz", "--version"]).succeeds() {
        note("cargo-fuzz: present");
        return Ok(());
    }
    note(&format!("cargo-fuzz: installing {CARGO_FUZZ_VERSION} from crates.io"));
    env.cargo().args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION]).run()?;
    if !env.cargo().args(["fuzz", "--version"]).succeeds() {
        bail!(
            "cargo-fuzz: installed but `cargo fuzz --version` fails (is ~/.cargo/bin on PATH?); \
             fix: cargo install --force cargo-fuzz --version {CARGO_FUZZ_VERSION}"
        );
    }
    note("cargo-fuzz: checked after installing");
    Ok(())
}

/// libFuzzer's closing line: "Done 123456 runs in 60 second(s)".
fn executions(output: &str) -> Option<u64> {
    output.lines().rev().find_map(|l| l.trim().strip_prefix("Done ")?.split_whitespace().next()?.parse().ok())
}

pub fn run(env: &Env, seconds: u64, only: &[String]) -> anyhow::Result<()> {
    if let Some(unknown) = only.iter().find(|t| !TARGETS.contains(&t.as_str())) {
        bail!("no fuzz target '{unknown}'; targets: {}", TARGETS.join(", "));
    }
    ensure_cargo_fuzz(env)?;
    let fuzz_dir = env.root.join("tap-user/fuzz");
    let work = env.root.join("target/fuzz");
    let mut results = Vec::new();
    for target in TARGETS.iter().filter(|t| only.is_empty() || only.iter().any(|o| o == *t)) {
        step(&format!("fuzz {target} for {seconds} s"));
        let corpus = work.join("corpus").join(target);
        let seeds = match *target {
            "pipeline_frames" => seed_pipeline(&corpus)?,
            "kerberos" => seed_payloads(&corpus, 88)?,
            "dns" => seed_payloads(&corpus, 53)?,
            "ldap" => seed_payloads(&corpus, 389)?,
            "smb2" => seed_payloads(&corpus, 445)?,
            // SMB payloads hold the lab's DCE/RPC (named pipes); the framer skips to PDUs.
            "dcerpc" => seed_payloads(&corpus, 445)? + seed_payloads(&corpus, 135)?,
            // LDAP and SMB payloads, where the lab's NTLM messages travel.
            "ntlm" => seed_payloads(&corpus, 389)? + seed_payloads(&corpus, 445)?,
            // The lab has no HTTP; hand-written exchanges with NTLM and Negotiate tokens.
            "http" => seed_http(&corpus)?,
            other => bail!("no seeds defined for {other}"),
        };
        note(&format!("{seeds} seed inputs in {}", corpus.display()));
        let artifacts = work.join("artifacts").join(target);
        std::fs::create_dir_all(&artifacts)?;
        let out = env
            .command("cargo")
            .args(["+nightly", "fuzz", "run", "--fuzz-dir"])
            .arg(&fuzz_dir)
            .arg(target)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-rss_limit_mb=2048")
            .arg("-timeout=10")
            .0
            .output()
            .context("run cargo fuzz")?;
        let text = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!(
                "fuzz target {target} failed (crash, hang or out of memory); see {}\n{}",
                artifacts.display(),
                tail(&text, 40)
            );
        }
        let runs = executions(&text).context("libFuzzer did not report its run count")?;
        note(&format!("{target}: {runs} executions in {seconds} s, no crash, hang or out-of-memory"));
        results.push((target, runs));
    }
    step("summary");
    for (t, runs) in results {
        println!("    {t:<24}{runs:>14} executions in {:?}", Duration::from_secs(seconds));
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_run_count() {
        assert_eq!(executions("#1000 pulse\nDone 123456 runs in 61 second(s)\n"), Some(123456));
        assert_eq!(executions("crash"), None);
    }

    #[test]
    fn frames_encode_with_length_and_step() {
        assert_eq!(encode_frames(&[vec![7, 8]]), vec![0, 2, 1, 7, 8]);
    }
}

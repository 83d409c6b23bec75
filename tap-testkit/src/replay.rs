//! A capture through the real sensor and a real cloud of its own, and the alerts it raised;
//! and the labels of `eval/labels.toml` that say which alerts each capture must raise.
//! Shared by `cargo xtask eval` (the scored table) and the tests on real traffic.

use std::{
    collections::BTreeSet,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::Deserialize;

/// One alert, as `tap-cloud alerts --json` gives it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Raised {
    pub detection: String,
    pub src_ip: String,
    pub account: String,
}

/// Replays `pcap` with `sensor --read` into `cloud serve` (its own database under `work`,
/// `[detect]` from `detect_toml`), runs the detections to the end and returns the alerts.
pub fn alerts(sensor: &Path, cloud: &Path, pcap: &Path, detect_toml: &str, work: &Path) -> anyhow::Result<Vec<Raised>> {
    alerts_with(sensor, cloud, pcap, detect_toml, work, &[])
}

/// `alerts`, with more arguments for the sensor (e.g. `--workers 4`).
pub fn alerts_with(
    sensor: &Path,
    cloud: &Path,
    pcap: &Path,
    detect_toml: &str,
    work: &Path,
    sensor_args: &[&str],
) -> anyhow::Result<Vec<Raised>> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let db = work.join("cloud.db");
    let config = work.join("cloud.toml");
    std::fs::write(&config, format!("[detect]\n{detect_toml}\n"))?;
    let run = |cmd: &mut Command| -> anyhow::Result<std::process::Output> {
        let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
        if !out.status.success() {
            bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out)
    };
    run(Command::new(cloud)
        .args(["sensors", "add", "replay", "--db"])
        .arg(&db)
        .arg("--key-file")
        .arg(work.join("key")))?;
    let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut server = Command::new(cloud)
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
    let sent = run(Command::new(sensor)
        .arg("--read")
        .arg(pcap)
        .args(["--sensor-id", "replay", "--insecure", "--cloud"])
        .arg(format!("http://{addr}"))
        .arg("--access-key-file")
        .arg(work.join("key"))
        .arg("--spool-dir")
        .arg(work.join("spool"))
        .args(sensor_args));
    let _ = server.kill();
    let _ = server.wait();
    sent?;
    // Whatever the server's own detection thread had not reached yet.
    run(Command::new(cloud).args(["detect", "--db"]).arg(&db).arg("--config").arg(&config))?;
    let out = run(Command::new(cloud).args(["alerts", "--json", "--db"]).arg(&db))?;
    let mut raised = Vec::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        raised.push(Raised { detection: field("detection"), src_ip: field("src_ip"), account: field("account") });
    }
    Ok(raised)
}

/// `eval/labels.toml`.
#[derive(Debug, Deserialize)]
pub struct Labels {
    pub capture: Vec<Label>,
}

/// What one capture must (and may) raise.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Label {
    /// `lab/pcaps/...` is the project's own; other paths are relative to ../shared.
    pub path: String,
    /// Detections that must fire.
    #[serde(default)]
    pub expect: Vec<String>,
    /// Detections that may also fire, because the attack really does that too.
    #[serde(default)]
    pub allow: Vec<String>,
    /// When given, the expected alerts must name this source address.
    pub src: Option<String>,
    /// The site's domain controllers, as its cloud configuration would list them.
    #[serde(default)]
    pub dcs: Vec<String>,
    /// More `[detect]` settings for this capture's cloud (e.g. honeytokens), TOML lines.
    #[serde(default)]
    pub config: String,
    /// Per expected detection, the account its alert must name, where the wire shows it.
    #[serde(default)]
    pub accounts: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub note: String,
}

impl Labels {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

/// How one capture's alerts compare with its label.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub detected: Vec<String>,
    pub missed: Vec<String>,
    pub false_positives: Vec<String>,
    /// Per detected detection whose label names its account: whether an alert named it.
    pub account_named: Vec<(String, bool)>,
}

/// The one name of an account however it is written: `DOMAIN\user`, `user@REALM`, and
/// case (the cloud's alerts already carry this form).
pub fn account_name(account: &str) -> String {
    let a = account.rsplit('\\').next().unwrap_or(account);
    a.split('@').next().unwrap_or(a).to_lowercase()
}

impl Label {
    /// The capture file: under `root` (the workspace) for the project's own captures, else
    /// under `shared`.
    pub fn pcap(&self, root: &Path, shared: &Path) -> PathBuf {
        if self.path.starts_with("lab/") {
            root.join(&self.path)
        } else {
            shared.join(&self.path)
        }
    }

    /// The `[detect]` lines this capture's cloud runs with.
    pub fn detect_toml(&self) -> String {
        format!("dcs = {:?}\n{}", self.dcs, self.config)
    }

    pub fn judge(&self, raised: &[Raised]) -> Verdict {
        let mut v = Verdict::default();
        for d in &self.expect {
            let hit = raised.iter().any(|r| &r.detection == d && self.src.as_ref().is_none_or(|s| s == &r.src_ip));
            if hit {
                v.detected.push(d.clone());
                if let Some(want) = self.accounts.get(d) {
                    let named = raised.iter().any(|r| {
                        &r.detection == d
                            && self.src.as_ref().is_none_or(|s| s == &r.src_ip)
                            && account_name(&r.account) == account_name(want)
                    });
                    v.account_named.push((d.clone(), named));
                }
            } else {
                v.missed.push(d.clone());
            }
        }
        let fired: BTreeSet<&str> = raised.iter().map(|r| r.detection.as_str()).collect();
        for d in fired {
            if !self.expect.iter().any(|e| e == d) && !self.allow.iter().any(|a| a == d) {
                v.false_positives.push(d.to_string());
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_scores_misses_by_source_and_flags_what_it_does_not_allow() {
        let label: Label = toml::from_str(
            "path = \"lab/pcaps/x.pcap\"\nsrc = \"10.0.0.20\"\nexpect = [\"kerberoasting\"]\nallow = [\"ldap_recon\"]\n",
        )
        .unwrap();
        let r = |d: &str, src: &str| Raised { detection: d.into(), src_ip: src.into(), account: String::new() };
        let v = label.judge(&[r("kerberoasting", "10.0.0.20"), r("ldap_recon", "10.0.0.20")]);
        assert_eq!((v.detected.len(), v.missed.len(), v.false_positives.len()), (1, 0, 0));
        let v = label.judge(&[r("kerberoasting", "10.0.0.99"), r("dcsync", "10.0.0.20")]);
        assert_eq!(v.missed, ["kerberoasting"], "from the wrong host");
        assert_eq!(v.false_positives, ["dcsync"]);
        assert_eq!(label.pcap(Path::new("/w"), Path::new("/s")), Path::new("/w/lab/pcaps/x.pcap"));
        let named: Label =
            toml::from_str("path = \"x\"\nexpect = [\"dcsync\"]\naccounts = { dcsync = \"LAB\\\\Eve.Admin\" }\n")
                .unwrap();
        let a =
            |account: &str| Raised { detection: "dcsync".into(), src_ip: "10.0.0.20".into(), account: account.into() };
        assert_eq!(named.judge(&[a("eve.admin")]).account_named, [("dcsync".to_string(), true)]);
        assert_eq!(named.judge(&[a("")]).account_named, [("dcsync".to_string(), false)]);
        assert_eq!(named.judge(&[a(""), a("eve.admin@LAB.EXAMPLE")]).account_named, [("dcsync".to_string(), true)]);
    }
}

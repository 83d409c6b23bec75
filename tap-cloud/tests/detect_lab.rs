//! Detections on real traffic. Each labelled capture of `eval/labels.toml` that this
//! machine has goes through the real sensor and the real cloud, and must raise the alerts
//! its label names (from the attacking host, naming the account the wire shows) and
//! nothing its label does not allow:
//! - the project's own lab fixtures (`lab/pcaps`: a Samba AD DC attacked with impacket,
//!   MIT Kerberos and Samba's tools, one capture per attack of the detections issue), which
//!   are always here;
//! - the reference lab's and the public captures under ../shared, when it exists.

use std::path::{Path, PathBuf};

use tap_testkit::replay::{alerts, alerts_with, Label, Labels};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sensor_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_tap-cloud")).with_file_name("tap-sensor");
    assert!(bin.exists(), "{} is missing: build it with `cargo build -p tap-user`", bin.display());
    bin
}

/// Every failure of the captures `pick` selects, after running them all.
fn failures(pick: impl Fn(&Label) -> bool) -> (usize, Vec<String>) {
    let labels = Labels::load(&root().join("eval/labels.toml")).unwrap();
    let shared = tap_testkit::shared::shared_dir();
    let mut failures = Vec::new();
    let mut ran = 0;
    for label in labels.capture.iter().filter(|l| pick(l)) {
        let pcap = label.pcap(&root(), &shared);
        if !pcap.exists() {
            continue;
        }
        let name = label.path.replace(['/', '.'], "_");
        let work = std::env::temp_dir().join(format!("dctap-detect-{name}-{}", std::process::id()));
        let raised =
            alerts(&sensor_bin(), Path::new(env!("CARGO_BIN_EXE_tap-cloud")), &pcap, &label.detect_toml(), &work)
                .unwrap_or_else(|e| panic!("{}: {e:#}", label.path));
        let _ = std::fs::remove_dir_all(&work);
        let verdict = label.judge(&raised);
        eprintln!("{}: {verdict:?}", label.path);
        failures.extend(verdict.missed.iter().map(|d| format!("{}: no {d} alert from {:?}", label.path, label.src)));
        failures
            .extend(verdict.false_positives.iter().map(|d| format!("{}: {d} raised, not in its label", label.path)));
        failures.extend(
            verdict
                .account_named
                .iter()
                .filter(|(_, named)| !named)
                .map(|(d, _)| format!("{}: no {d} alert names {}", label.path, label.accounts[d])),
        );
        ran += 1;
    }
    (ran, failures)
}

#[test]
fn every_detection_fires_on_the_project_lab_captures_and_nothing_else_does() {
    let (ran, failures) = failures(|l| l.path.starts_with("lab/"));
    assert!(ran >= 18, "only {ran} lab captures found under lab/pcaps");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A sensor's workers deliver their events each in turn (one worker's share of a file
/// before the other's): detection must not depend on it. Every lab capture raises the
/// same alerts read by one worker and by four.
#[test]
fn the_alerts_of_every_lab_capture_do_not_depend_on_the_sensors_workers() {
    let labels = Labels::load(&root().join("eval/labels.toml")).unwrap();
    let mut differ = Vec::new();
    let mut ran = 0;
    for label in labels.capture.iter().filter(|l| l.path.starts_with("lab/")) {
        let pcap = label.pcap(&root(), Path::new("."));
        let mut seen = Vec::new();
        for workers in ["1", "4"] {
            let name = label.path.replace(['/', '.'], "_");
            let work = std::env::temp_dir().join(format!("dctap-workers-{workers}-{name}-{}", std::process::id()));
            let cloud = Path::new(env!("CARGO_BIN_EXE_tap-cloud"));
            let raised = alerts_with(&sensor_bin(), cloud, &pcap, &label.detect_toml(), &work, &["--workers", workers])
                .unwrap_or_else(|e| panic!("{}: {e:#}", label.path));
            let _ = std::fs::remove_dir_all(&work);
            let mut set: Vec<_> = raised.into_iter().map(|r| (r.detection, r.src_ip, r.account)).collect();
            set.sort();
            set.dedup();
            seen.push(set);
        }
        if seen[0] != seen[1] {
            differ.push(format!("{}: one worker {:?}, four {:?}", label.path, seen[0], seen[1]));
        }
        ran += 1;
    }
    assert!(ran >= 18, "only {ran} lab captures");
    assert!(differ.is_empty(), "{differ:#?}");
}

#[test]
fn the_reference_lab_and_public_attack_captures_raise_their_alerts() {
    if !tap_testkit::shared::shared_dir().exists() {
        tap_testkit::skip::skipped(
            "the_reference_lab_and_public_attack_captures_raise_their_alerts",
            &tap_testkit::skip::no_shared("../shared"),
        );
        return;
    }
    let (ran, failures) = failures(|l| !l.path.starts_with("lab/"));
    assert!(ran > 0, "no capture of eval/labels.toml found under ../shared");
    assert!(failures.is_empty(), "{failures:#?}");
}

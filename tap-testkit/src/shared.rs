//! `../shared` beside the workspace: the lab captures tests and tools read when it exists.
//! Nothing from it is ever copied into the project.

use std::path::{Path, PathBuf};

/// `../shared`, seen from the workspace root.
pub fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// The lab's labelled captures (`adlab/pcaps/*.pcap`), sorted; empty when absent.
pub fn lab_pcaps() -> Vec<PathBuf> {
    let dir = shared_dir().join("adlab/pcaps");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "pcap")).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// For a test that compares with tshark on the lab captures: the captures, or `None`
/// after saying why the test is skipped. A missing tshark fails instead under
/// `DCTAP_REQUIRE_LIVE=1` (`cargo xtask test` installs it).
pub fn lab_pcaps_and_tshark_or_skip(test: &str) -> Option<Vec<PathBuf>> {
    let pcaps = lab_pcaps();
    if pcaps.is_empty() {
        eprintln!("SKIPPED {test}: ../shared/adlab/pcaps not found");
        return None;
    }
    let tshark =
        std::process::Command::new("tshark").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if !tshark {
        assert!(
            std::env::var("DCTAP_REQUIRE_LIVE").as_deref() != Ok("1"),
            "{test}: tshark is required under cargo xtask test"
        );
        eprintln!("SKIPPED {test}: tshark is not installed");
        return None;
    }
    Some(pcaps)
}

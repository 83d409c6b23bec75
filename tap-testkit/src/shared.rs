//! Lab captures: the project's own (`lab/pcaps`, committed, always in a clone) and, when
//! `../shared` is beside the workspace, the reference lab's (`adlab/pcaps`). Nothing from
//! `../shared` is ever copied into the project.

use std::path::{Path, PathBuf};

/// `../shared`, seen from the workspace root.
pub fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// The project's own lab fixtures.
pub fn project_lab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/pcaps")
}

fn pcaps_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "pcap")).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// The project's lab captures, sorted (never empty in a clone).
pub fn project_lab_pcaps() -> Vec<PathBuf> {
    let files = pcaps_in(&project_lab_dir());
    assert!(!files.is_empty(), "no captures in {}: the clone is incomplete", project_lab_dir().display());
    files
}

/// Every lab capture this machine has: the project's, then the reference lab's.
pub fn lab_pcaps() -> Vec<PathBuf> {
    let mut files = project_lab_pcaps();
    files.extend(pcaps_in(&shared_dir().join("adlab/pcaps")));
    files
}

/// A capture of the project's lab by its name without `.pcap` (`03_kerberoasting`), with the
/// lab's addresses.
pub fn project_lab_capture(stem: &str) -> LabCapture {
    let path = project_lab_dir().join(format!("{stem}.pcap"));
    assert!(path.is_file(), "{} is missing: the clone is incomplete", path.display());
    LabCapture::of(path)
}

/// A lab capture and the addresses of its lab, from the `labels.json` beside it.
#[derive(Clone, Debug)]
pub struct LabCapture {
    pub path: PathBuf,
    pub dc_ip: String,
    /// The first workstation, where the attacks come from.
    pub client_ip: String,
    /// Segments were removed to keep the fixture small (lab/tools/thin_bulk.py): its
    /// streams have gaps on purpose.
    pub thinned: bool,
}

impl LabCapture {
    pub fn of(path: PathBuf) -> Self {
        let labels = path.with_file_name("labels.json");
        let text = std::fs::read_to_string(&labels).unwrap_or_else(|e| panic!("{}: {e}", labels.display()));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", labels.display()));
        let lab = &v["lab"];
        let dc_ip = lab["dc"]["ip"].as_str().unwrap_or_else(|| panic!("{}: no lab.dc.ip", labels.display()));
        // The project's lab has two workstations, the reference lab one.
        let client = lab["clients"][0]["ip"].as_str().or_else(|| lab["client"]["ip"].as_str());
        let client_ip = client.unwrap_or_else(|| panic!("{}: no client address", labels.display()));
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let thinned = v["scenarios"].as_array().into_iter().flatten().any(|s| {
            s["pcap"].as_str().is_some_and(|p| p.ends_with(&file))
                && s["note"].as_str().is_some_and(|n| n.contains("thin_bulk.py"))
        });
        Self { path, dc_ip: dc_ip.into(), client_ip: client_ip.into(), thinned }
    }
}

/// Every lab capture with its addresses (see [`lab_pcaps`]).
pub fn lab_captures() -> Vec<LabCapture> {
    lab_pcaps().into_iter().map(LabCapture::of).collect()
}

/// For a test that compares with tshark on the lab captures: every lab capture, or `None`
/// after reporting the skip when tshark is missing (a failure under `cargo xtask test`,
/// which installs it).
pub fn lab_pcaps_and_tshark_or_skip(test: &str) -> Option<Vec<PathBuf>> {
    let tshark =
        std::process::Command::new("tshark").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    crate::skip::unless_missing(test, (!tshark).then(|| "tshark is not installed".into())).then(lab_pcaps)
}

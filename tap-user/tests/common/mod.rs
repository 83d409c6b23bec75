//! Helpers shared by the integration tests that read captures through the pipeline.

use std::{path::Path, sync::Arc, time::Duration};

use tap_user::{
    event::{analyzer::Analyzer, ActivityEvent, Collect, Stamper},
    pipeline::{read::read_file, PipelineOptions, Worker},
};

/// Every event the sensor makes of a capture file (one worker, in order).
#[allow(dead_code)]
pub fn events(pcap: &Path) -> Vec<ActivityEvent> {
    let sink = Collect::default();
    let store = Arc::clone(&sink.0);
    let mut w = Worker::new(Analyzer::new(Box::new(sink), Stamper::new("test")), &PipelineOptions::default());
    read_file(pcap, &mut |b| {
        for f in b.iter() {
            w.frame(Duration::from_nanos(f.timestamp_ns), f.data);
        }
        Ok(())
    })
    .unwrap();
    w.finish();
    let v = store.lock().unwrap().clone();
    v
}

/// The sensor's events for a capture as `tap-sensor --read FILE --json` prints them (the
/// baselines tests compare the command's output, as a person would inspect it).
#[allow(dead_code)]
pub fn sensor_json(pcap: &Path) -> Vec<serde_json::Value> {
    try_sensor_json(pcap).unwrap_or_else(|e| panic!("{}: {e}", pcap.display()))
}

/// As `sensor_json`, or the first line of the command's error when it refuses the capture.
#[allow(dead_code)]
pub fn try_sensor_json(pcap: &Path) -> Result<Vec<serde_json::Value>, String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tap-sensor"))
        .arg("--read")
        .arg(pcap)
        .arg("--json")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let caused = err.lines().skip_while(|l| !l.starts_with("Caused by")).nth(1);
        return Err(caused.or_else(|| err.lines().last()).unwrap_or_default().trim().to_string());
    }
    Ok(String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect())
}

/// The rows of `../shared/corpus/MANIFEST.tsv` as column name -> value, or `None` when the
/// corpus is absent.
#[allow(dead_code)]
pub fn corpus_manifest() -> Option<Vec<std::collections::BTreeMap<String, String>>> {
    let text = std::fs::read_to_string(tap_testkit::shared::shared_dir().join("corpus/MANIFEST.tsv")).ok()?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
    Some(
        lines
            .map(|l| header.iter().zip(l.split('\t')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
            .collect(),
    )
}

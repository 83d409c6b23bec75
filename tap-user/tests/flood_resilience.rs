//! A flood cannot hide an attack: the lab's DCSync (impacket secretsdump against a Samba
//! DC) with a flood of spoofed SYNs to the DC's Kerberos port, and the DC's SYN-ACKs,
//! spliced in between the DRSUAPI bind and the first DRSGetNCChanges. The flood only
//! evicts its own kind: the authenticated RPC association keeps its interface and its
//! account, so the replication call is still DRSUAPI's and still names who asked.
//!
//! Run with small tables (`--max-flows`, `--max-half-open-flows`) so a flood of a few
//! thousand connections does what 300 000 do at the defaults; `cargo xtask bench floods`
//! measures the full-size floods.

use std::{net::Ipv4Addr, process::Command, time::Duration};

use serde_json::Value;
use tap_testkit::{flood::Flood, pcap::PcapFrame};

fn sensor(pcap: &std::path::Path, extra: &[&str]) -> (Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tap-sensor"))
        .arg("--read")
        .arg(pcap)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (events, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn counter(report: &str, name: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.strip_prefix(name).filter(|r| r.starts_with(' ')).and_then(|r| r.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

fn replication_calls(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        // Opnum 3 on the dynamic RPC port (the endpoint mapper's ept_map is opnum 3 too).
        .filter(|e| {
            e["detail"]["Dcerpc"]["opnum"] == 3
                && e["detail"]["Dcerpc"]["operation"] == "call"
                && e["dc_port"].as_u64().is_some_and(|p| p >= 49152)
        })
        .map(|e| {
            let d = &e["detail"]["Dcerpc"];
            (
                d["interface"].as_str().unwrap_or_default().to_string(),
                d["operation_name"].as_str().unwrap_or_default().to_string(),
                e["account"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_syn_flood_between_the_bind_and_the_call_does_not_hide_a_dcsync() {
    let source = tap_testkit::shared::project_lab_capture("08_dcsync");
    let (events, _) = sensor(&source.path, &[]);
    let calls = replication_calls(&events);
    assert!(!calls.is_empty() && calls.iter().all(|c| c.0 == "drsuapi" && !c.2.is_empty()), "{calls:?}");
    let first_call =
        events.iter().find(|e| e["detail"]["Dcerpc"]["opnum"] == 3).and_then(|e| e["time_unix_ns"].as_i64()).unwrap();

    // The flood lands just before the first replication call, after its bind.
    let frames = tap_testkit::pcap::read(&source.path).unwrap();
    let at = Duration::from_nanos(first_call as u64 - 1_000);
    let dc: Ipv4Addr = source.dc_ip.parse().unwrap();
    let mut spliced: Vec<PcapFrame> = frames.iter().filter(|f| f.timestamp < at).cloned().collect();
    spliced.extend(Flood::Syn.frames(dc, 5_000, at).map(|(_, data)| PcapFrame {
        timestamp: at,
        orig_len: data.len() as u32,
        data,
    }));
    spliced.extend(frames.iter().filter(|f| f.timestamp >= at).cloned());
    let path = std::env::temp_dir().join(format!("dctap-syn-flood-dcsync-{}.pcap", std::process::id()));
    tap_testkit::pcap::write_frames(&path, &spliced).unwrap();
    let (flooded, report) = sensor(&path, &["--workers", "1", "--max-flows", "256", "--max-half-open-flows", "256"]);
    let _ = std::fs::remove_file(&path);

    assert_eq!(replication_calls(&flooded), calls, "the same calls, interface and account");
    assert!(counter(&report, "flow_half_open_evicted") >= 5_000 - 256, "{report}");
    assert_eq!(counter(&report, "flow_evicted"), 0, "{report}");
}

//! An RPC connection whose bind the sensor did not see (it opened before the capture began,
//! or the bind was lost) still names its interface: from the endpoint mapper's answer
//! about that port, or from another connection's bind to the same endpoint. On the lab's
//! DCSync (impacket secretsdump against a Samba DC): without its binds, DRSGetNCChanges is
//! still DRSUAPI's, so the detection still sees it.

use std::process::Command;

use etherparse::{SlicedPacket, TransportSlice};
use serde_json::Value;

/// (source port, destination port, TCP payload) of a frame.
fn tcp(frame: &[u8]) -> Option<(u16, u16, Vec<u8>)> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(TransportSlice::Tcp(t)) = &p.transport else { return None };
    Some((t.source_port(), t.destination_port(), t.payload().to_vec()))
}

const BIND: u8 = 11;
const RESPONSE: u8 = 2;

/// The DCSync capture without the frames `drop` selects; the DRSUAPI calls it gives.
fn drsuapi_calls(name: &str, drop: impl Fn(u16, u16, &[u8]) -> bool) -> Vec<Value> {
    let source = tap_testkit::shared::project_lab_capture("08_dcsync").path;
    let frames = tap_testkit::pcap::read(&source).unwrap();
    let kept: Vec<_> =
        frames.iter().filter(|f| !tcp(&f.data).is_some_and(|(s, d, payload)| drop(s, d, &payload))).cloned().collect();
    let dropped = frames.len() - kept.len();
    let path = std::env::temp_dir().join(format!("dctap-rpc-{name}-{}.pcap", std::process::id()));
    tap_testkit::pcap::write_frames(&path, &kept).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tap-sensor")).arg("--read").arg(&path).arg("--json").output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success());
    assert!(dropped > 0 || name == "whole", "{name}: nothing removed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["detail"]["Dcerpc"]["operation"] == "call" && e["dc_port"].as_u64().unwrap() >= 49152)
        .collect()
}

fn ops(calls: &[Value]) -> Vec<String> {
    calls
        .iter()
        .map(|e| format!("{}.{}", e["detail"]["Dcerpc"]["interface"], e["detail"]["Dcerpc"]["operation_name"]))
        .collect()
}

#[test]
fn a_dcsync_whose_binds_were_not_seen_is_still_named() {
    let whole = drsuapi_calls("whole", |_, _, _| false);
    assert!(ops(&whole).contains(&"\"drsuapi\".\"DRSGetNCChanges\"".to_string()), "{:?}", ops(&whole));
    // Every bind to the dynamic port gone: the endpoint mapper's reply names the port.
    let without_binds = drsuapi_calls("nobind", |_, dst, p| dst >= 49152 && p.get(2) == Some(&BIND));
    assert_eq!(ops(&without_binds), ops(&whole));
    // The mapper's replies gone as well as the second connection's bind: the first
    // connection's bind to the same endpoint names it.
    let second_only = std::cell::Cell::new(0);
    let without_epm = drsuapi_calls("noepm", |src, dst, p| {
        let epm_reply = src == 135 && p.get(2) == Some(&RESPONSE);
        let bind = dst >= 49152 && p.get(2) == Some(&BIND);
        if bind {
            second_only.set(second_only.get() + 1);
        }
        epm_reply || (bind && second_only.get() > 1)
    });
    assert_eq!(ops(&without_epm), ops(&whole));
}

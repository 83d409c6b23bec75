//! After a gap, each framed protocol finds its next record and goes on: one TCP segment in
//! the middle of a real lab conversation is removed (as a mirror port under load loses
//! one), and the events after it must still come out (all but the one or two the lost
//! bytes carried). Without resynchronisation the direction stayed blind until the
//! connection closed. (Kerberos and DNS over TCP carry one request per connection in the
//! lab; their resynchronisation is tested on crafted streams in `proto/kerberos.rs` and
//! `proto/dns.rs`.)

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use serde_json::Value;

/// (client port, server port, payload length, towards the DC) of a TCP frame of the lab.
fn tcp(frame: &[u8]) -> Option<(u16, u16, usize, bool)> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(NetSlice::Ipv4(ip)) = &p.net else { return None };
    let Some(TransportSlice::Tcp(t)) = &p.transport else { return None };
    let dc = std::net::Ipv4Addr::new(10, 78, 0, 10);
    let to_server = ip.header().destination_addr() == dc;
    let (client, server) =
        if to_server { (t.source_port(), t.destination_port()) } else { (t.destination_port(), t.source_port()) };
    Some((client, server, t.payload().len(), to_server))
}

fn events(pcap: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_tap-sensor")).arg("--read").arg(pcap).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Removes the middle client-to-server data segment of the busiest connection to a server
/// port `server` accepts, and compares the events of that connection after it.
fn resumes_after_a_gap(stem: &str, server: impl Fn(u16) -> bool) {
    let source = tap_testkit::shared::project_lab_capture(stem).path;
    let frames = tap_testkit::pcap::read(&source).unwrap();
    let mut segments: BTreeMap<(u16, u16), Vec<usize>> = BTreeMap::new();
    for (i, f) in frames.iter().enumerate() {
        if let Some((client, srv, len, true)) = tcp(&f.data) {
            if len > 0 && server(srv) {
                segments.entry((client, srv)).or_default().push(i);
            }
        }
    }
    // The connection with the most events (an encrypted SMB3 session has many segments
    // and no events).
    let reference = events(&source);
    let on = |e: &Value, (client, srv): (u16, u16)| e["src_port"] == client && e["dc_port"] == srv;
    let ((client, srv), data) = segments
        .into_iter()
        .filter(|(_, v)| v.len() >= 5)
        .max_by_key(|(c, _)| reference.iter().filter(|e| on(e, *c)).count())
        .expect("a connection");
    let after = |events: &[Value], t: Duration| -> usize {
        events
            .iter()
            .filter(|e| on(e, (client, srv)))
            .filter(|e| e["time_unix_ns"].as_u64().unwrap() as u128 > t.as_nanos())
            .count()
    };
    // The latest segment past the connection's set-up with at least three events after it.
    let dropped = (2..=data.len() / 2)
        .rev()
        .map(|k| data[k])
        .find(|&i| after(&reference, frames[i].timestamp) >= 3)
        .unwrap_or_else(|| panic!("{stem}: no segment with three events after it ({} segments)", data.len()));
    let t_drop = frames[dropped].timestamp;
    let cut: Vec<_> = frames.iter().enumerate().filter(|(i, _)| *i != dropped).map(|(_, f)| f.clone()).collect();
    let gapped = std::env::temp_dir().join(format!("dctap-gap-{stem}-{}.pcap", std::process::id()));
    tap_testkit::pcap::write_frames(&gapped, &cut).unwrap();
    let (want, got) = (after(&reference, t_drop), after(&events(&gapped), t_drop));
    let _ = std::fs::remove_file(&gapped);
    assert!(
        got + 2 >= want,
        "{stem} port {srv}: {got} events after the gap, {want} without it: framing did not resume"
    );
}

#[test]
fn smb_resumes_at_the_next_message() {
    resumes_after_a_gap("06_samr_lsarpc_recon", |p| p == 445);
}

#[test]
fn ldap_resumes_at_the_next_message() {
    resumes_after_a_gap("05_ldap_recon", |p| p == 389);
}

#[test]
fn dcerpc_over_tcp_resumes_at_the_next_pdu() {
    resumes_after_a_gap("17_zerologon", |p| p >= 49152);
}

/// Every framed protocol counts a direction that loses its place in a gap the same way:
/// once, when it loses it, not again for further gaps while it is still looking for its
/// next record.
#[test]
fn every_framed_protocol_counts_a_lost_direction_once() {
    use tap_user::{
        event::{
            analyzer::{Analyzer, FlowState},
            Discard, Stamper,
        },
        flow::{Direction, FlowMeta, StreamConsumer, StreamEvent, Transport},
    };
    let cases: [(u16, &[u8], &str); 6] = [
        (88, &[0, 0, 0, 200, 0x6c], "kerberos_framing_lost"),
        (53, &[0, 200, 0x12, 0x34], "dns_framing_lost"),
        (389, &[0x30, 0x81, 0xc8, 0x02], "ldap_framing_lost"),
        (445, &[0, 0, 0, 200, 0xfe, b'S'], "smb2_framing_lost"),
        (135, &[5, 0, 0, 3, 0x10, 0, 0, 0, 200, 0], "dcerpc_framing_lost"),
        (80, b"GET / HTTP/1.1\r\nHost: x\r\n", "http_framing_lost"),
    ];
    for (port, start, counter) in cases {
        let mut analyzer = Analyzer::new(Box::new(Discard), Stamper::new("test"));
        let meta = FlowMeta {
            id: 1,
            client: "10.0.0.20:50000".parse().unwrap(),
            server: format!("10.0.0.10:{port}").parse().unwrap(),
            transport: Transport::Tcp,
            vlan: None,
            first_seen: Duration::ZERO,
            last_seen: Duration::ZERO,
        };
        let mut state = FlowState::default();
        let dir = Direction::ToServer;
        analyzer.event(&meta, &mut state, StreamEvent::Data { dir, data: start });
        for _ in 0..3 {
            analyzer.event(&meta, &mut state, StreamEvent::Gap { dir, len: 100 });
        }
        let count = analyzer.counters.rows().into_iter().find(|(name, _)| *name == counter).map(|(_, v)| v);
        assert_eq!(count, Some(1), "port {port}: {counter}");
    }
}

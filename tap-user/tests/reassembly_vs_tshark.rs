//! Conformance: the byte streams of every TCP conversation in the lab captures
//! (../shared/adlab/pcaps, real Samba AD traffic) equal what `tshark -z follow,tcp,raw`
//! reassembles from the same files. Skips, saying so, when ../shared or tshark is missing
//! (under `cargo xtask test` a missing tshark fails: the set-up installs it).

use std::{collections::HashMap, net::SocketAddr, path::Path, process::Command};

use tap_testkit::shared::lab_pcaps_and_tshark_or_skip;
use tap_user::{
    flow::{Direction, FlowMeta, StreamConsumer, StreamEvent, Transport},
    pipeline::{read::read_file, PipelineOptions, Worker},
};

/// A finished TCP flow: client, server, bytes to the server, bytes to the client, gap bytes.
type FinishedFlow = (SocketAddr, SocketAddr, Vec<u8>, Vec<u8>, u64);
/// A tshark stream: node 0, node 1, bytes 0→1, bytes 1→0.
type FollowedStream = (SocketAddr, SocketAddr, Vec<u8>, Vec<u8>);

#[derive(Default)]
struct Streams {
    done: Vec<FinishedFlow>,
}

#[derive(Default)]
struct Open {
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    gaps: u64,
}

impl StreamConsumer for Streams {
    type State = Open;
    fn event(&mut self, flow: &FlowMeta, st: &mut Open, e: StreamEvent<'_>) {
        match e {
            StreamEvent::Data { dir: Direction::ToServer, data } => st.to_server.extend_from_slice(data),
            StreamEvent::Data { dir: Direction::ToClient, data } => st.to_client.extend_from_slice(data),
            StreamEvent::Gap { len, .. } => st.gaps += len,
            StreamEvent::Datagram { .. } => {}
            StreamEvent::Closed(_) if flow.transport == Transport::Tcp => {
                let st = std::mem::take(st);
                self.done.push((flow.client, flow.server, st.to_server, st.to_client, st.gaps));
            }
            StreamEvent::Closed(_) => {}
        }
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex")).collect()
}

/// tshark's view: per stream index, (node 0, node 1, bytes 0→1, bytes 1→0).
fn tshark_streams(pcap: &Path) -> Vec<FollowedStream> {
    let ids = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-Y", "tcp", "-T", "fields", "-e", "tcp.stream"])
        .output()
        .unwrap();
    let max = String::from_utf8_lossy(&ids.stdout).lines().filter_map(|l| l.trim().parse::<u32>().ok()).max();
    let Some(max) = max else { return Vec::new() };
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap).arg("-q");
    for i in 0..=max {
        cmd.args(["-z", &format!("follow,tcp,raw,{i}")]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut streams = HashMap::new();
    let mut cur: Option<(u32, FollowedStream)> = None;
    let mut id = None;
    let mut node0 = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Filter: tcp.stream eq ") {
            id = rest.trim().parse::<u32>().ok();
        } else if let Some(rest) = line.strip_prefix("Node 0: ") {
            node0 = rest.trim().parse::<SocketAddr>().ok();
        } else if let Some(rest) = line.strip_prefix("Node 1: ") {
            let node1: SocketAddr = rest.trim().parse().unwrap();
            cur = Some((id.unwrap(), (node0.unwrap(), node1, Vec::new(), Vec::new())));
        } else if line.starts_with("=====") {
            if let Some((i, stream)) = cur.take() {
                streams.insert(i, stream);
            }
        } else if let Some((_, (_, _, x, y))) = cur.as_mut() {
            match line.strip_prefix('\t') {
                Some(h) => y.extend(hex(h.trim())),
                None if !line.trim().is_empty() => x.extend(hex(line.trim())),
                None => {}
            }
        }
    }
    let mut ordered: Vec<_> = streams.into_iter().collect();
    ordered.sort_by_key(|(i, _)| *i);
    ordered.into_iter().map(|(_, s)| s).collect()
}

#[test]
fn every_lab_tcp_stream_matches_tshark_follow() {
    let Some(pcaps) = lab_pcaps_and_tshark_or_skip("every_lab_tcp_stream_matches_tshark_follow") else { return };
    // A fixture thinned to stay small has gaps on purpose; the others must have none.
    let pcaps: Vec<_> = pcaps.into_iter().filter(|p| !tap_testkit::shared::LabCapture::of(p.clone()).thinned).collect();
    let mut compared = 0;
    let mut bytes = 0;
    for pcap in &pcaps {
        let mut worker = Worker::new(Streams::default(), &PipelineOptions::default());
        read_file(pcap, &mut |batch| {
            for f in batch.iter() {
                worker.frame(std::time::Duration::from_nanos(f.timestamp_ns), f.data);
            }
            Ok(())
        })
        .unwrap();
        worker.finish();
        let ours = worker.into_consumer().done;
        let theirs = tshark_streams(pcap);
        let name = pcap.file_name().unwrap().to_string_lossy();
        // Both sides in conversation order; a 4-tuple reused after a close is a new stream.
        let mut ours_by_pair: HashMap<(SocketAddr, SocketAddr), Vec<_>> = HashMap::new();
        for (c, s, up, down, gaps) in ours {
            assert_eq!(gaps, 0, "{name}: {c}->{s} has gaps");
            let key = if c < s { (c, s) } else { (s, c) };
            let (lo_bytes, hi_bytes) = if c < s { (up, down) } else { (down, up) };
            ours_by_pair.entry(key).or_default().push((lo_bytes, hi_bytes));
        }
        let mut used: HashMap<(SocketAddr, SocketAddr), usize> = HashMap::new();
        for (n0, n1, from0, from1) in theirs {
            let key = if n0 < n1 { (n0, n1) } else { (n1, n0) };
            let (want_lo, want_hi) = if n0 < n1 { (from0, from1) } else { (from1, from0) };
            let k = used.entry(key).or_default();
            let ours = ours_by_pair.get(&key).and_then(|v| v.get(*k));
            *k += 1;
            let Some((lo, hi)) = ours else { panic!("{name}: tshark stream {n0}<->{n1} has no flow here") };
            assert!(
                *lo == want_lo,
                "{name}: {}->{} bytes differ ({} here, {} in tshark)",
                key.0,
                key.1,
                lo.len(),
                want_lo.len()
            );
            assert!(
                *hi == want_hi,
                "{name}: {}->{} bytes differ ({} here, {} in tshark)",
                key.1,
                key.0,
                hi.len(),
                want_hi.len()
            );
            compared += 1;
            bytes += lo.len() + hi.len();
        }
        let ours_total: usize = ours_by_pair.values().map(Vec::len).sum();
        let theirs_total: usize = used.values().sum();
        assert_eq!(ours_total, theirs_total, "{name}: number of TCP conversations");
    }
    eprintln!("compared {compared} TCP conversations, {bytes} bytes, in {} lab captures", pcaps.len());
    assert!(compared > 50, "only {compared} conversations compared");
}

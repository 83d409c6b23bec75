//! The XDP filter run in the kernel on hand-built frames (BPF_PROG_TEST_RUN), without a
//! network: every frame of the labelled mix gets exactly the verdict its label says, kept
//! frames arrive in the ring byte for byte, and filter changes take effect at once. Needs
//! root (loading BPF); `cargo xtask test` makes a missing prerequisite a failure.

use tap_common::{counters::Counter, record::RecordHeader};
use tap_testkit::{
    frame::{self, Tags, L4},
    mix::{self, Verdict},
    netns::live_or_skip,
};
use tap_user::capture::{counters::XdpCounters, filter::RpcRange, ring::MappedRing, DcSet, PortSet, XdpCapture};

const XDP_DROP: u32 = 1;

fn loaded(dcs: &str) -> (XdpCapture, Vec<MappedRing>) {
    loaded_with_rings(dcs, 1 << 20)
}

fn loaded_with_rings(dcs: &str, ring_bytes: u32) -> (XdpCapture, Vec<MappedRing>) {
    let (mut xdp, rings) = XdpCapture::load(ring_bytes).expect("load the XDP program");
    xdp.filter.set_ports(&PortSet::default()).unwrap();
    xdp.filter.set_rpc_range(Some(RpcRange::default())).unwrap();
    xdp.filter.set_snaplen(tap_common::record::MAX_SNAPLEN as u32).unwrap();
    xdp.filter.set_dcs(&DcSet::parse_list(dcs, "test").unwrap()).unwrap();
    (xdp, rings)
}

/// Which counter one run moved (besides `seen`), and everything the rings now hold.
fn run_one(xdp: &XdpCapture, rings: &mut [MappedRing], frame: &[u8]) -> (Verdict, Vec<(RecordHeader, Vec<u8>)>) {
    let before = xdp.counters().unwrap();
    let (action, _) = xdp.test_run(frame, 1).unwrap();
    assert_eq!(action, XDP_DROP, "a mirror port forwards nothing");
    let after = xdp.counters().unwrap();
    let delta = |c| after.get(c) - before.get(c);
    assert_eq!(delta(Counter::Seen), 1);
    let verdict = match (delta(Counter::Kept), delta(Counter::Filtered), delta(Counter::Malformed)) {
        (1, 0, 0) => Verdict::Kept,
        (0, 1, 0) => Verdict::Filtered,
        (0, 0, 1) => Verdict::Malformed,
        other => panic!("one frame moved (kept, filtered, malformed) by {other:?}"),
    };
    assert_eq!(delta(Counter::RingFull), 0);
    (verdict, drain(rings))
}

fn drain(rings: &mut [MappedRing]) -> Vec<(RecordHeader, Vec<u8>)> {
    let mut out = Vec::new();
    for ring in rings.iter_mut() {
        while let Some(item) = ring.peek() {
            let (h, record) = RecordHeader::parse(item).expect("well-formed record");
            assert_eq!(record[..16], h.to_bytes(), "the record starts with its pcap header");
            out.push((h, RecordHeader::frame(record).to_vec()));
            ring.advance();
        }
        ring.release();
    }
    out
}

/// The reader of our own over the ring's mapping, on a ring of four pages: records of
/// every size class wrap around its end more than twenty times (a record across the end reads
/// as one slice through the double mapping), space comes back only when released, and
/// every frame arrives whole and in order.
#[test]
fn the_mapped_ring_reader_follows_the_ring_around_its_end() {
    if !live_or_skip("the_mapped_ring_reader_follows_the_ring_around_its_end") {
        return;
    }
    const RING: u32 = 16 << 10;
    let (xdp, mut rings) = loaded_with_rings("10.0.0.10", RING);
    let frames: Vec<Vec<u8>> = (0..600u32)
        .map(|i| {
            let payload = [6usize, 90, 300, 470, 1000, 1460][i as usize % 6] + (i as usize % 7);
            frame::ipv4(
                Tags::None,
                mix::CLIENT4,
                "10.0.0.10".parse().unwrap(),
                L4::Tcp { src: 40000, dst: 88 },
                payload,
                i,
            )
        })
        .collect();
    let mut got = Vec::new();
    for chunk in frames.chunks(5) {
        for f in chunk {
            assert_eq!(xdp.test_run(f, 1).unwrap().0, XDP_DROP);
        }
        got.extend(drain(&mut rings).into_iter().map(|(h, data)| {
            assert_eq!(h.cap_len as usize, data.len());
            data
        }));
    }
    assert_eq!(xdp.counters().unwrap().get(Counter::RingFull), 0);
    assert_eq!(got.len(), frames.len());
    for (i, (got, sent)) in got.iter().zip(&frames).enumerate() {
        assert_eq!(got, sent, "frame {i}");
    }
    let wrapped: usize = frames.iter().map(|f| f.len() + 24).sum::<usize>() / RING as usize;
    assert!(wrapped > 20, "the ring went round only {wrapped} times");

    // Taken but not released, records keep their space: the ring fills. Released, the
    // space is back.
    let big = &frames[5];
    let fits = (0..20).take_while(|_| {
        xdp.test_run(big, 1).unwrap();
        xdp.counters().unwrap().get(Counter::RingFull) == 0
    });
    let held = fits.count();
    assert!((5..20).contains(&held), "{held} full-size records fit in {RING} bytes");
    for ring in rings.iter_mut() {
        while ring.peek().is_some() {
            ring.advance();
        }
    }
    let full_before = xdp.counters().unwrap().get(Counter::RingFull);
    xdp.test_run(big, 1).unwrap();
    assert_eq!(xdp.counters().unwrap().get(Counter::RingFull), full_before + 1, "taken is not released");
    for ring in rings.iter_mut() {
        ring.release();
    }
    xdp.test_run(big, 1).unwrap();
    assert_eq!(xdp.counters().unwrap().get(Counter::RingFull), full_before + 1, "released space is used again");
}

#[test]
fn every_mix_frame_gets_its_labelled_verdict_and_kept_bytes_are_exact() {
    if !live_or_skip("every_mix_frame_gets_its_labelled_verdict") {
        return;
    }
    let (xdp, mut rings) = loaded(mix::DC_ARGS);
    let mut wrong = Vec::new();
    for (i, l) in mix::standard_mix(3).iter().enumerate() {
        let (verdict, records) = run_one(&xdp, &mut rings, &l.frame);
        if verdict != l.verdict {
            wrong.push(format!("frame {i} ({}): {:?}, expected {:?}", l.what, verdict, l.verdict));
            continue;
        }
        if verdict == Verdict::Kept {
            assert_eq!(records.len(), 1, "frame {i}: one record per kept frame");
            let (h, data) = &records[0];
            assert_eq!(data, &l.frame, "frame {i} ({}): bytes in the ring", l.what);
            assert_eq!((h.orig_len, h.cap_len), (l.frame.len() as u32, l.frame.len() as u32));
            // Wall-clock time: the program adds the offset the loader set.
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
            let age = now.abs_diff(h.timestamp_ns());
            assert!(age < 10_000_000_000, "frame {i}: stamped {} ns, now is {now}", h.timestamp_ns());
        } else {
            assert!(records.is_empty(), "frame {i} ({}): dropped frames leave nothing in the ring", l.what);
        }
    }
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
}

#[test]
fn the_dc_end_must_be_on_the_service_port() {
    if !live_or_skip("the_dc_end_must_be_on_the_service_port") {
        return;
    }
    let (xdp, mut rings) = loaded("10.0.0.10");
    let dc = "10.0.0.10".parse().unwrap();
    let host = "10.0.0.20".parse().unwrap();
    let cases = [
        (host, dc, 50000, 389, Verdict::Kept, "client to DC:389"),
        (dc, host, 389, 50000, Verdict::Kept, "DC:389 reply"),
        (dc, host, 50000, 389, Verdict::Filtered, "DC as client of a host's LDAP"),
        (host, dc, 389, 50000, Verdict::Filtered, "host's LDAP replying to a DC client port"),
        (host, host, 50000, 389, Verdict::Filtered, "no DC"),
    ];
    for (src, dst, sport, dport, want, what) in cases {
        let f = frame::ipv4(Tags::None, src, dst, L4::Tcp { src: sport, dst: dport }, 20, 1);
        assert_eq!(run_one(&xdp, &mut rings, &f).0, want, "{what}");
    }
}

#[test]
fn changes_to_dcs_ports_and_snaplen_apply_to_the_next_frame() {
    if !live_or_skip("changes_apply_to_the_next_frame") {
        return;
    }
    let (mut xdp, mut rings) = loaded("10.0.0.10");
    let to = |dst: &str, port: u16, len: usize| {
        frame::ipv4(Tags::Dot1Q(7), mix::CLIENT4, dst.parse().unwrap(), L4::Tcp { src: 40000, dst: port }, len, 9)
    };
    assert_eq!(run_one(&xdp, &mut rings, &to("10.0.0.11", 88, 10)).0, Verdict::Filtered);
    let change = xdp.filter.set_dcs(&DcSet::parse_list("10.0.0.11,10.5.0.0/16", "test").unwrap()).unwrap();
    assert_eq!((change.added, change.removed), (2, 1));
    assert_eq!(run_one(&xdp, &mut rings, &to("10.0.0.11", 88, 10)).0, Verdict::Kept);
    assert_eq!(run_one(&xdp, &mut rings, &to("10.5.200.1", 88, 10)).0, Verdict::Kept, "subnet entry");
    assert_eq!(run_one(&xdp, &mut rings, &to("10.0.0.10", 88, 10)).0, Verdict::Filtered, "removed DC");

    xdp.filter.set_ports(&PortSet::parse_list("8443", "test").unwrap()).unwrap();
    assert_eq!(run_one(&xdp, &mut rings, &to("10.0.0.11", 88, 10)).0, Verdict::Filtered, "88 no longer a service");
    assert_eq!(run_one(&xdp, &mut rings, &to("10.0.0.11", 8443, 10)).0, Verdict::Kept);

    // The dynamic RPC range: a client's port to the DC's endpoint is kept, the DC's own
    // ephemeral port to a web server is not; without the range neither is.
    let from_dc = |sport: u16, dport: u16| {
        frame::ipv4(Tags::None, "10.0.0.11".parse().unwrap(), mix::CLIENT4, L4::Tcp { src: sport, dst: dport }, 10, 3)
    };
    assert_eq!(run_one(&xdp, &mut rings, &to("10.0.0.11", 49667, 10)).0, Verdict::Kept, "client to an endpoint");
    assert_eq!(run_one(&xdp, &mut rings, &from_dc(49667, 40000)).0, Verdict::Kept, "the endpoint's reply");
    assert_eq!(run_one(&xdp, &mut rings, &from_dc(50123, 443)).0, Verdict::Filtered, "DC as a web client");
    xdp.filter.set_rpc_range(None).unwrap();
    assert_eq!(run_one(&xdp, &mut rings, &from_dc(49667, 40000)).0, Verdict::Filtered, "range off");
    assert_eq!(run_one(&xdp, &mut rings, &to("10.0.0.11", 8443, 10)).0, Verdict::Kept, "service ports stay");

    // A dynamic RPC port learned from the endpoint mapper joins the set.
    assert_eq!(run_one(&xdp, &mut rings, &to("10.0.0.11", 49667, 10)).0, Verdict::Filtered);
    assert!(xdp.filter.add_port(49667).unwrap());
    assert!(!xdp.filter.add_port(49667).unwrap(), "already there");
    assert_eq!(run_one(&xdp, &mut rings, &to("10.0.0.11", 49667, 10)).0, Verdict::Kept);

    xdp.filter.set_snaplen(64).unwrap();
    let big = to("10.0.0.11", 8443, 1000);
    let before = xdp.counters().unwrap();
    let (verdict, records) = run_one(&xdp, &mut rings, &big);
    assert_eq!(verdict, Verdict::Kept);
    let (h, data) = &records[0];
    assert_eq!((h.orig_len as usize, data.as_slice()), (big.len(), &big[..64]));
    let after: XdpCounters = xdp.counters().unwrap();
    assert_eq!(after.get(Counter::Truncated) - before.get(Counter::Truncated), 1);
}

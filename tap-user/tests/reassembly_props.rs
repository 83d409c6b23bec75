//! Property: whatever order (within the reorder bound) and however often the segments of a
//! stream arrive — including SPAN duplicates and retransmissions cut differently — the
//! reassembled stream is the original, byte for byte, with no gap.

use std::{net::SocketAddr, time::Duration};

use proptest::prelude::*;
use tap_user::{
    decode::{Packet, TcpFlags, TcpSegment, L4},
    flow::{tcp::TcpLimits, Direction, FlowLimits, FlowMeta, FlowTracker, StreamConsumer, StreamEvent},
};

#[derive(Default)]
struct Collect {
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    gaps: u64,
    closed: usize,
}

impl StreamConsumer for Collect {
    type State = ();
    fn event(&mut self, _: &FlowMeta, _: &mut (), e: StreamEvent<'_>) {
        match e {
            StreamEvent::Data { dir: Direction::ToServer, data } => self.to_server.extend_from_slice(data),
            StreamEvent::Data { dir: Direction::ToClient, data } => self.to_client.extend_from_slice(data),
            StreamEvent::Gap { len, .. } => self.gaps += len,
            StreamEvent::Datagram { .. } => {}
            StreamEvent::Closed(_) => self.closed += 1,
        }
    }
}

fn packet(from_client: bool, seq: u32, flags: u8, payload: &[u8]) -> Packet<'_> {
    let c: SocketAddr = "10.0.0.20:50000".parse().unwrap();
    let s: SocketAddr = "10.0.0.10:445".parse().unwrap();
    let (src, dst) = if from_client { (c, s) } else { (s, c) };
    Packet {
        src: src.ip(),
        dst: dst.ip(),
        vlan: None,
        l4: L4::Tcp(TcpSegment {
            src_port: src.port(),
            dst_port: dst.port(),
            seq,
            ack: 0,
            flags: TcpFlags(flags),
            payload,
        }),
    }
}

/// A stream, its cut into segments, and the order they arrive in.
fn scenario() -> impl Strategy<Value = (Vec<u8>, u32, Vec<(usize, usize)>)> {
    (proptest::collection::vec(any::<u8>(), 1..3000), any::<u32>(), proptest::collection::vec(1usize..400, 1..40))
        .prop_flat_map(|(data, isn, cuts)| {
            // Segments from the cut sizes, cycling until the stream is covered.
            let mut segs = Vec::new();
            let mut at = 0;
            let mut i = 0;
            while at < data.len() {
                let len = cuts[i % cuts.len()].min(data.len() - at);
                segs.push((at, len));
                at += len;
                i += 1;
            }
            let n = segs.len();
            // Extra copies: SPAN duplicates and retransmissions of random segments, plus
            // re-cut retransmissions spanning two neighbours.
            let extra = proptest::collection::vec((0..n, 0..3u8), 0..n.max(1));
            (Just(data), Just(isn), Just(segs), extra).prop_flat_map(|(data, isn, mut segs, extra)| {
                for (k, kind) in extra {
                    let (s, l) = segs[k];
                    match kind {
                        0 | 1 => segs.push((s, l)),
                        _ => {
                            let end = (s + l + 7).min(data.len());
                            segs.push((s, end - s));
                        }
                    }
                }
                let len = segs.len();
                (
                    Just(data),
                    Just(isn),
                    Just(segs).prop_shuffle().prop_map(move |v| {
                        debug_assert_eq!(v.len(), len);
                        v
                    }),
                )
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_permutation_and_duplication_yields_the_original(scn in scenario()) {
        let (data, isn, segs) = scn;
        // "Within the reorder bound": the out-of-order limits are set above what any
        // generated scenario can hold (3000 bytes in segments of at least one byte, plus
        // copies), so every hole is eventually filled and none is given up as a gap.
        let limits = FlowLimits {
            tcp: TcpLimits { max_ooo_bytes: 1 << 20, max_ooo_segments: 16_384, ..TcpLimits::default() },
            ..FlowLimits::default()
        };
        let mut ft = FlowTracker::new(Collect::default(), limits);
        let t = Duration::from_secs(1);
        ft.packet(t, &packet(true, isn, TcpFlags::SYN, b""));
        ft.packet(t, &packet(false, 7, TcpFlags::SYN | TcpFlags::ACK, b""));
        for (start, len) in &segs {
            let seq = isn.wrapping_add(1).wrapping_add(*start as u32);
            ft.packet(t, &packet(true, seq, TcpFlags::ACK, &data[*start..start + len]));
        }
        ft.finish();
        let c = &ft.consumer;
        prop_assert_eq!(c.gaps, 0);
        prop_assert_eq!(&c.to_server, &data);
        prop_assert!(c.to_client.is_empty());
        prop_assert_eq!(c.closed, 1);
        prop_assert_eq!(ft.tcp_counters.overlap_conflicts, 0);
        prop_assert_eq!(ft.ooo_bytes(), 0);
    }
}

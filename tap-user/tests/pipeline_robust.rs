//! Hostile input never crashes the pipeline and never grows it past its limits: random
//! frames, and real frames with random bytes overwritten (which keeps them parseable far
//! enough to reach defragmentation and reassembly).

use std::time::Duration;

use proptest::prelude::*;
use tap_testkit::mix;
use tap_user::{
    budget::Budget,
    decode::defrag::DefragLimits,
    flow::{tcp::TcpLimits, FlowLimits},
    pipeline::{summary::StreamSummary, PipelineOptions, Worker},
};

fn small_limits() -> PipelineOptions {
    PipelineOptions {
        workers: 1,
        flows: FlowLimits {
            max_flows: 16,
            max_half_open: 16,
            half_open_idle: Duration::from_secs(5),
            tcp_idle: Duration::from_secs(5),
            udp_idle: Duration::from_secs(2),
            tcp: TcpLimits { max_ooo_bytes: 1024, max_ooo_segments: 8, max_ahead: 1 << 20 },
            ooo: Budget::new(4096),
        },
        defrag: DefragLimits { max_pending: 4, bytes: Budget::new(16 << 10), timeout: Duration::from_secs(3) },
        streams: Budget::new(64 << 10),
        queue_depth: 1,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_frames_never_crash(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..50)) {
        let mut w = Worker::new(StreamSummary::default(), &small_limits());
        for (i, f) in frames.iter().enumerate() {
            w.frame(Duration::from_millis(i as u64 * 100), f);
        }
        w.finish();
        prop_assert_eq!(w.counters().flows_open, 0);
        prop_assert_eq!(w.counters().decode.frames, frames.len() as u64);
    }

    #[test]
    fn mutated_real_frames_stay_within_limits(
        round in 0u32..50,
        edits in proptest::collection::vec((any::<usize>(), any::<usize>(), any::<u8>()), 0..200),
    ) {
        let mut frames: Vec<Vec<u8>> = mix::standard_mix(round).into_iter().map(|l| l.frame).collect();
        let n = frames.len();
        for (fi, at, byte) in edits {
            let f = &mut frames[fi % n];
            if !f.is_empty() {
                let at = 14 + at % f.len().saturating_sub(14).max(1);
                if at < f.len() {
                    f[at] = byte;
                }
            }
        }
        let limits = small_limits();
        let mut w = Worker::new(StreamSummary::default(), &limits);
        for (i, f) in frames.iter().enumerate() {
            w.frame(Duration::from_millis(i as u64 * 10), f);
            prop_assert!(w.tracker.len() <= limits.flows.max_flows + limits.flows.max_half_open);
            prop_assert!(w.tracker.half_open_len() <= limits.flows.max_half_open);
            prop_assert!(w.tracker.ooo_bytes() <= limits.flows.ooo.limit() + limits.flows.tcp.max_ooo_bytes + 1500);
        }
        w.finish();
        prop_assert_eq!(w.counters().flows_open, 0);
    }
}

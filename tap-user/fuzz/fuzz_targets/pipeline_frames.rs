//! The whole pipeline from raw frames: decode, defragmentation, flows, TCP reassembly.
//! Input: frames, each behind a 2-byte big-endian length and a 1-byte time step (ms).
//! Small limits, so eviction, overflow and timeout paths run too.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tap_user::{
    decode::defrag::DefragLimits,
    flow::{tcp::TcpLimits, FlowLimits},
    pipeline::{summary::StreamSummary, PipelineOptions, Worker},
};

fuzz_target!(|data: &[u8]| {
    let opts = PipelineOptions {
        workers: 1,
        flows: FlowLimits {
            max_flows: 8,
            tcp_idle: Duration::from_secs(5),
            udp_idle: Duration::from_secs(2),
            tcp: TcpLimits { max_ooo_bytes: 512, max_ooo_segments: 4, max_ahead: 1 << 16 },
            max_ooo_bytes_total: 2048,
        },
        defrag: DefragLimits { max_pending: 4, max_bytes: 8192, timeout: Duration::from_secs(3) },
        queue_depth: 1,
    };
    let mut worker = Worker::new(StreamSummary::default(), &opts);
    let mut ts = Duration::from_secs(1_700_000_000);
    let mut rest = data;
    while rest.len() >= 3 {
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        ts += Duration::from_millis(rest[2] as u64 * 100);
        rest = &rest[3..];
        let frame = &rest[..len.min(rest.len())];
        rest = &rest[frame.len()..];
        worker.frame(ts, frame);
    }
    worker.finish();
    let c = worker.counters();
    assert_eq!(c.flows_open, 0, "finish closes every flow");
});

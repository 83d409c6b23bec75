//! The XDP program's own cost per frame, measured in the kernel with BPF_PROG_TEST_RUN
//! (`repeat` runs per syscall, the kernel's mean time per run): no NIC, no veth, no
//! generator in the way. Part of `cargo xtask bench capture`, which reports it beside the
//! bpf_stats figures from live traffic. Needs root.

use std::time::Duration;

use tap_testkit::frame::{self, Tags, L4};
use tap_user::capture::{ring::MappedRing, DcSet, PortSet, XdpCapture};

/// Runs per syscall for dropped frames; kept frames use fewer so the ring never fills.
const REPEAT_DROPPED: u32 = 200_000;
const REPEAT_KEPT: u32 = 2_000;
const ROUNDS_KEPT: u32 = 50;
const RING_BYTES: u32 = 16 << 20;

fn main() -> anyhow::Result<()> {
    let (mut xdp, mut rings) = XdpCapture::load(RING_BYTES)?;
    xdp.filter.set_ports(&PortSet::default())?;
    xdp.filter.set_snaplen(tap_common::record::MAX_SNAPLEN as u32)?;
    xdp.filter.set_dcs(&DcSet::parse_list("10.0.0.10,fd00::10", "bench")?)?;
    let dc = "10.0.0.10".parse()?;
    let client = "10.1.0.5".parse()?;
    let other = "10.2.0.7".parse()?;
    let tcp = |dst| L4::Tcp { src: 40000, dst };
    let cases: [(&str, Vec<u8>, bool); 6] = [
        ("dropped: other hosts, non-service port", frame::ipv4(Tags::None, client, other, tcp(443), 1000, 1), false),
        ("dropped: other hosts, service port 445", frame::ipv4(Tags::None, client, other, tcp(445), 1000, 2), false),
        (
            "dropped: QinQ, other hosts, port 445",
            frame::ipv4(Tags::QinQ(100, 10), client, other, tcp(445), 1000, 3),
            false,
        ),
        ("dropped: DC, non-service port", frame::ipv4(Tags::None, client, dc, tcp(8080), 1000, 4), false),
        ("kept: 60-byte frame to DC:88", frame::ipv4(Tags::None, client, dc, tcp(88), 6, 5), true),
        (
            "kept: 1514-byte frame from DC:445",
            frame::ipv4(Tags::None, dc, client, L4::Tcp { src: 445, dst: 40000 }, 1460, 6),
            true,
        ),
    ];
    println!("{:<52}{:>12}", "frame", "ns/frame");
    // `cargo bench --bench xdp_program -- WORD` runs only the cases named with WORD (to
    // profile one of them).
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |what: &str| only.as_deref().is_none_or(|w| what.contains(w));
    for (what, f, kept) in cases.into_iter().filter(|c| wanted(c.0)) {
        let mean =
            if kept { kept_mean(&xdp, &mut rings, &f, RING_BYTES)? } else { xdp.test_run(&f, REPEAT_DROPPED)?.1 };
        println!("{what:<52}{:>12}", mean.as_nanos());
    }
    check_ring_never_full(&xdp)?;
    drop((xdp, rings));

    // The least a kept full-size frame can cost through a ring buffer here: the program
    // that only reserves, copies and submits, on the same frame and the same runs.
    let full = frame::ipv4(Tags::None, dc, client, L4::Tcp { src: 445, dst: 40000 }, 1460, 6);
    let what = "floor: reserve, copy 1514 bytes, submit (nothing else)";
    if wanted(what) {
        let (xdp, mut rings) = XdpCapture::load_program(RING_BYTES, tap_common::COPY_FLOOR_PROGRAM_NAME)?;
        let mean = kept_mean(&xdp, &mut rings, &full, RING_BYTES)?;
        println!("{what:<52}{:>12}", mean.as_nanos());
    }

    // The same full-size frame into rings of other sizes, the same runs of REPEAT_KEPT
    // frames: whether the ring's footprint (pages, TLB reach) is part of the cost.
    for ring_bytes in [4u32 << 20, 16 << 20, 64 << 20] {
        let what = format!("kept: 1514-byte frame, {} MiB ring", ring_bytes >> 20);
        if !wanted(&what) {
            continue;
        }
        let (mut xdp, mut rings) = XdpCapture::load(ring_bytes)?;
        xdp.filter.set_ports(&PortSet::default())?;
        xdp.filter.set_snaplen(tap_common::record::MAX_SNAPLEN as u32)?;
        xdp.filter.set_dcs(&DcSet::parse_list("10.0.0.10", "bench")?)?;
        let mean = kept_mean(&xdp, &mut rings, &full, ring_bytes)?;
        println!("{what:<52}{:>12}", mean.as_nanos());
        check_ring_never_full(&xdp)?;
    }
    Ok(())
}

/// Mean cost of keeping `frame`: runs of at most half a ring, the ring emptied after
/// each, over as many bytes as ROUNDS_KEPT runs of REPEAT_KEPT full-size frames.
fn kept_mean(xdp: &XdpCapture, rings: &mut [MappedRing], frame: &[u8], ring_bytes: u32) -> anyhow::Result<Duration> {
    let repeat = REPEAT_KEPT.min(ring_bytes / 2 / 1544).max(1);
    let rounds = ROUNDS_KEPT * REPEAT_KEPT / repeat;
    let mut total = Duration::ZERO;
    for _ in 0..rounds {
        total += xdp.test_run(frame, repeat)?.1;
        for ring in rings.iter_mut() {
            while ring.peek().is_some() {
                ring.advance();
            }
            ring.release();
        }
    }
    Ok(total / rounds)
}

fn check_ring_never_full(xdp: &XdpCapture) -> anyhow::Result<()> {
    let ring_full = xdp.counters()?.get(tap_common::counters::Counter::RingFull);
    anyhow::ensure!(
        ring_full == 0,
        "{ring_full} kept runs found the ring full: the kept figures measured the wrong path"
    );
    Ok(())
}

//! The XDP program's own cost per frame, measured in the kernel with BPF_PROG_TEST_RUN
//! (`repeat` runs per syscall, the kernel's mean time per run): no NIC, no veth, no
//! generator in the way. Part of `cargo xtask bench capture`, which reports it beside the
//! bpf_stats figures from live traffic. Needs root.

use std::time::Duration;

use tap_testkit::frame::{self, Tags, L4};
use tap_user::capture::{DcSet, PortSet, XdpCapture};

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
    println!("{:<44}{:>12}", "frame", "ns/frame");
    for (what, f, kept) in cases {
        let mean = if kept {
            let mut total = Duration::ZERO;
            for _ in 0..ROUNDS_KEPT {
                total += xdp.test_run(&f, REPEAT_KEPT)?.1;
                for ring in rings.iter_mut() {
                    while ring.peek().is_some() {
                        ring.advance();
                    }
                    ring.release();
                }
            }
            total / ROUNDS_KEPT
        } else {
            xdp.test_run(&f, REPEAT_DROPPED)?.1
        };
        println!("{what:<44}{:>12}", mean.as_nanos());
    }
    let ring_full = xdp.counters()?.get(tap_common::counters::Counter::RingFull);
    anyhow::ensure!(
        ring_full == 0,
        "{ring_full} kept runs found the ring full: the kept figures measured the wrong path"
    );
    Ok(())
}

//! A labelled traffic mix: every case the XDP filter tells apart, each frame with the
//! verdict the filter must reach for the DC set `DC_ARGS`.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::frame::{self, Breakage, Tags, V6Ext, L4};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Kept,
    Filtered,
    Malformed,
}

#[derive(Clone, Debug)]
pub struct Labelled {
    pub frame: Vec<u8>,
    pub verdict: Verdict,
    /// What the frame stands for, for failure messages.
    pub what: &'static str,
}

pub const DC4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);
pub const OTHER4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 30);
/// A DC inside the monitored subnet 10.9.0.0/16 (exercises the LPM trie).
pub const SUBNET_DC4: Ipv4Addr = Ipv4Addr::new(10, 9, 3, 4);
pub const DC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x20);
pub const OTHER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x30);
/// A DC inside the monitored subnet fd00:9::/64.
pub const SUBNET_DC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 5);

/// The `--dc` argument under which `standard_mix` verdicts hold.
pub const DC_ARGS: &str = "10.0.0.10,fd00::10,10.9.0.0/16,fd00:9::/64";

fn tcp(src: u16, dst: u16) -> L4 {
    L4::Tcp { src, dst }
}

fn udp(src: u16, dst: u16) -> L4 {
    L4::Udp { src, dst }
}

/// One round of the mix; `round` varies payload bytes and tags so rounds differ.
pub fn standard_mix(round: u32) -> Vec<Labelled> {
    use Verdict::*;
    let s = round * 1000;
    let vlan = Tags::Dot1Q((round % 4000 + 1) as u16);
    let qinq = Tags::QinQ(100, (round % 4000 + 1) as u16);
    let mut out = Vec::new();
    let mut add = |frame: Vec<u8>, verdict: Verdict, what: &'static str| out.push(Labelled { frame, verdict, what });

    // DC service traffic, both directions, every tagging, small and full-size.
    for (i, tags) in [Tags::None, vlan, qinq].into_iter().enumerate() {
        let i = i as u32;
        add(frame::ipv4(tags, CLIENT4, DC4, tcp(50000, 88), 200, s + i), Kept, "AS-REQ to DC");
        add(frame::ipv4(tags, DC4, CLIENT4, tcp(88, 50000), 1460, s + 10 + i), Kept, "full-size reply from DC:88");
        add(frame::ipv4(tags, CLIENT4, DC4, udp(51000, 53), 40, s + 20 + i), Kept, "DNS query to DC");
        add(frame::ipv4(tags, CLIENT4, DC4, tcp(50001, 445), 600, s + 30 + i), Kept, "SMB to DC");
        add(
            frame::ipv4(tags, CLIENT4, DC4, tcp(50002, 80), 100, s + 40 + i),
            Filtered,
            "HTTP to DC (not a service port)",
        );
        add(
            frame::ipv4(tags, DC4, CLIENT4, tcp(50003, 88), 100, s + 50 + i),
            Filtered,
            "DC as client to a host's port 88",
        );
        add(frame::ipv4(tags, CLIENT4, OTHER4, tcp(50004, 445), 100, s + 60 + i), Filtered, "SMB between non-DCs");
        add(
            frame::ipv6(tags, CLIENT6, DC6, tcp(50005, 389), V6Ext::None, 300, s + 70 + i),
            Kept,
            "LDAP to DC over IPv6",
        );
        add(
            frame::ipv6(tags, CLIENT6, DC6, tcp(50006, 445), V6Ext::HopByHopAndDestOpts, 1400, s + 80 + i),
            Kept,
            "SMB to DC over IPv6 with extension headers",
        );
        add(
            frame::ipv6(tags, CLIENT6, OTHER6, tcp(50007, 445), V6Ext::HopByHop, 100, s + 90 + i),
            Filtered,
            "IPv6 SMB between non-DCs",
        );
    }
    add(frame::ipv4(Tags::None, CLIENT4, SUBNET_DC4, tcp(50010, 389), 120, s + 100), Kept, "LDAP to a DC in a subnet");
    add(frame::ipv4(Tags::None, SUBNET_DC4, CLIENT4, tcp(3268, 50011), 90, s + 101), Kept, "GC reply from subnet DC");
    add(
        frame::ipv6(Tags::None, CLIENT6, SUBNET_DC6, udp(50012, 88), V6Ext::None, 150, s + 102),
        Kept,
        "Kerberos/UDP to an IPv6 subnet DC",
    );
    add(
        frame::ipv6(Tags::None, CLIENT6, DC6, udp(50013, 8080), V6Ext::HopByHop, 50, s + 103),
        Filtered,
        "IPv6 to DC on a non-service port",
    );
    add(frame::ipv4_with_options(vlan, CLIENT4, DC4, tcp(50014, 389), 3, s + 104), Kept, "IPv4 with options to DC:389");
    // The DC's dynamic RPC range (default 49152-65535): kept when the other end is on an
    // unprivileged port too, not when it is the DC's own ephemeral port to a web server.
    add(frame::ipv4(Tags::None, CLIENT4, DC4, tcp(50020, 49701), 300, s + 110), Kept, "RPC to a DC's dynamic endpoint");
    add(
        frame::ipv4(Tags::None, DC4, CLIENT4, tcp(49701, 50020), 200, s + 111),
        Kept,
        "RPC reply from a DC's dynamic endpoint",
    );
    add(
        frame::ipv4(Tags::None, DC4, OTHER4, tcp(50030, 443), 200, s + 112),
        Filtered,
        "DC's own connection to a web server",
    );
    add(
        frame::ipv4_with_options(Tags::None, CLIENT4, DC4, udp(123, 123), 10, s + 105),
        Kept,
        "NTP with maximal IPv4 options",
    );
    for f in frame::ipv4_fragments(qinq, CLIENT4, DC4, udp(50015, 88), 3000, 1480, s + 106) {
        add(f, Kept, "IPv4 fragment of Kerberos/UDP to DC");
    }
    for f in frame::ipv4_fragments(Tags::None, CLIENT4, OTHER4, udp(50016, 88), 2000, 1200, s + 107) {
        add(f, Filtered, "IPv4 fragment between non-DCs");
    }
    for f in frame::ipv6_fragments(vlan, CLIENT6, DC6, udp(50017, 389), 2500, 1232, s + 108) {
        add(f, Kept, "IPv6 fragment of CLDAP to DC");
    }
    add(frame::arp(CLIENT4, DC4), Filtered, "ARP");
    for kind in [
        Breakage::RuntIpv4,
        Breakage::RuntVlan,
        Breakage::BadIhl,
        Breakage::TotalLenBeyondFrame,
        Breakage::Ipv6PayloadBeyondFrame,
        Breakage::MissingPorts,
    ] {
        add(frame::malformed(kind, CLIENT4, DC4, CLIENT6, DC6), Malformed, "malformed frame");
    }
    out
}

/// `rounds` rounds of the standard mix, in order.
pub fn mix(rounds: u32) -> Vec<Labelled> {
    (0..rounds).flat_map(standard_mix).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_has_every_verdict_and_sizes_fit_a_qinq_frame() {
        let m = standard_mix(1);
        for v in [Verdict::Kept, Verdict::Filtered, Verdict::Malformed] {
            assert!(m.iter().any(|l| l.verdict == v), "{v:?} missing");
        }
        assert!(m.iter().all(|l| l.frame.len() >= 14 || l.verdict == Verdict::Malformed));
        let largest = m.iter().map(|l| l.frame.len()).max().unwrap();
        assert_eq!(largest, 1522, "a QinQ full-size frame is in the mix");
    }

    #[test]
    fn rounds_differ() {
        let a = standard_mix(1);
        let b = standard_mix(2);
        assert_eq!(a.len(), b.len());
        assert_ne!(a[0].frame, b[0].frame);
    }
}

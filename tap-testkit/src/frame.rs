//! Frame construction, byte by byte, so malformed and unusual frames (fragments, IPv6
//! extension headers, bad header lengths) are as easy to make as ordinary ones.

use std::net::{Ipv4Addr, Ipv6Addr};

const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/// VLAN tagging of a frame, as a SPAN port may deliver it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tags {
    None,
    /// One 802.1Q tag.
    Dot1Q(u16),
    /// 802.1ad outer tag (0x88a8) and 802.1Q inner tag.
    QinQ(u16, u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp { src: u16, dst: u16 },
    Udp { src: u16, dst: u16 },
}

impl L4 {
    fn proto(self) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
        }
    }
}

fn ethernet(tags: Tags, ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(1600);
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    match tags {
        Tags::None => {}
        Tags::Dot1Q(id) => {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        Tags::QinQ(outer, inner) => {
            f.extend_from_slice(&0x88a8u16.to_be_bytes());
            f.extend_from_slice(&outer.to_be_bytes());
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&inner.to_be_bytes());
        }
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// RFC 1071 ones'-complement sum, folded.
fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        let mut it = chunk.chunks(2);
        for pair in &mut it {
            let word = if pair.len() == 2 { u16::from_be_bytes([pair[0], pair[1]]) } else { (pair[0] as u16) << 8 };
            sum += word as u32;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Deterministic payload bytes, different per frame so byte comparisons mean something.
pub fn payload(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// TCP (20-byte header, ACK|PSH) or UDP header plus payload, with the checksum over
/// `pseudo` (the pseudo-header of the IP version in use).
fn transport(l4: L4, data: &[u8], pseudo: &dyn Fn(u8, usize) -> Vec<u8>) -> Vec<u8> {
    let mut seg = Vec::with_capacity(20 + data.len());
    match l4 {
        L4::Tcp { src, dst } => {
            seg.extend_from_slice(&src.to_be_bytes());
            seg.extend_from_slice(&dst.to_be_bytes());
            seg.extend_from_slice(&1000u32.to_be_bytes()); // seq
            seg.extend_from_slice(&1u32.to_be_bytes()); // ack
            seg.extend_from_slice(&[0x50, 0x18]); // data offset 5, ACK|PSH
            seg.extend_from_slice(&8192u16.to_be_bytes());
            seg.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
        }
        L4::Udp { src, dst } => {
            seg.extend_from_slice(&src.to_be_bytes());
            seg.extend_from_slice(&dst.to_be_bytes());
            seg.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
            seg.extend_from_slice(&[0, 0]);
        }
    }
    seg.extend_from_slice(data);
    let sum = checksum(&[&pseudo(l4.proto(), seg.len()), &seg]);
    let at = if matches!(l4, L4::Tcp { .. }) { 16 } else { 6 };
    seg[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    seg
}

fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload_len: usize, id: u16, frag: u16) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let sum = checksum(&[&h]);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}

fn v4_pseudo(src: Ipv4Addr, dst: Ipv4Addr) -> impl Fn(u8, usize) -> Vec<u8> {
    move |proto, len| {
        let mut p = Vec::with_capacity(12);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
        p
    }
}

fn v6_pseudo(src: Ipv6Addr, dst: Ipv6Addr) -> impl Fn(u8, usize) -> Vec<u8> {
    move |proto, len| {
        let mut p = Vec::with_capacity(40);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
        p
    }
}

/// An IPv4 TCP/UDP frame with `payload_len` payload bytes.
pub fn ipv4(tags: Tags, src: Ipv4Addr, dst: Ipv4Addr, l4: L4, payload_len: usize, seed: u32) -> Vec<u8> {
    let seg = transport(l4, &payload(payload_len, seed), &v4_pseudo(src, dst));
    let mut f = ethernet(tags, 0x0800);
    f.extend_from_slice(&ipv4_header(src, dst, l4.proto(), seg.len(), seed as u16, 0x4000));
    f.extend_from_slice(&seg);
    f
}

/// One IPv4 TCP segment with the sequence and acknowledgement numbers and flags given
/// (`TCP_*` bits), untagged: what floods and hand-made conversations are made of.
#[allow(clippy::too_many_arguments)]
pub fn tcp_segment(
    src: Ipv4Addr,
    src_port: u16,
    dst: Ipv4Addr,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut seg = Vec::with_capacity(20 + data.len());
    seg.extend_from_slice(&src_port.to_be_bytes());
    seg.extend_from_slice(&dst_port.to_be_bytes());
    seg.extend_from_slice(&seq.to_be_bytes());
    seg.extend_from_slice(&ack.to_be_bytes());
    seg.extend_from_slice(&[0x50, flags]);
    seg.extend_from_slice(&65535u16.to_be_bytes());
    seg.extend_from_slice(&[0, 0, 0, 0]);
    seg.extend_from_slice(data);
    let sum = checksum(&[&v4_pseudo(src, dst)(6, seg.len()), &seg]);
    seg[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut f = ethernet(Tags::None, 0x0800);
    f.extend_from_slice(&ipv4_header(src, dst, 6, seg.len(), seq as u16, 0x4000));
    f.extend_from_slice(&seg);
    f
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// An IPv4 frame whose header carries `options_words` 4-byte words of options (NOPs and an
/// end-of-list), so the L4 header sits at a variable offset.
pub fn ipv4_with_options(tags: Tags, src: Ipv4Addr, dst: Ipv4Addr, l4: L4, options_words: u8, seed: u32) -> Vec<u8> {
    assert!(options_words <= 10);
    let seg = transport(l4, &payload(64, seed), &v4_pseudo(src, dst));
    let opt_len = options_words as usize * 4;
    let mut h = ipv4_header(src, dst, l4.proto(), seg.len() + opt_len, seed as u16, 0);
    h[0] = 0x40 | (5 + options_words);
    let mut opts = vec![1u8; opt_len]; // NOP
    if let Some(last) = opts.last_mut() {
        *last = 0; // end of option list
    }
    h.extend_from_slice(&opts);
    h[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum(&[&h]);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut f = ethernet(tags, 0x0800);
    f.extend_from_slice(&h);
    f.extend_from_slice(&seg);
    f
}

/// An IPv4 TCP/UDP datagram split into fragments carrying at most `fragment_bytes` of IP
/// payload each (a multiple of 8). The first fragment holds the L4 header.
pub fn ipv4_fragments(
    tags: Tags,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    l4: L4,
    payload_len: usize,
    fragment_bytes: usize,
    seed: u32,
) -> Vec<Vec<u8>> {
    assert!(fragment_bytes.is_multiple_of(8) && fragment_bytes >= 8);
    let seg = transport(l4, &payload(payload_len, seed), &v4_pseudo(src, dst));
    let chunks: Vec<&[u8]> = seg.chunks(fragment_bytes).collect();
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let offset_units = (i * fragment_bytes / 8) as u16;
            let more = if i + 1 < n { 0x2000 } else { 0 };
            let mut f = ethernet(tags, 0x0800);
            f.extend_from_slice(&ipv4_header(src, dst, l4.proto(), chunk.len(), seed as u16, more | offset_units));
            f.extend_from_slice(chunk);
            f
        })
        .collect()
}

/// IPv6 extension headers placed between the fixed header and the L4 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V6Ext {
    None,
    /// Hop-by-hop options (8 bytes, PadN).
    HopByHop,
    /// Hop-by-hop then destination options (16 bytes in all).
    HopByHopAndDestOpts,
}

fn v6_frame(tags: Tags, src: Ipv6Addr, dst: Ipv6Addr, next: u8, body: &[u8]) -> Vec<u8> {
    let mut f = ethernet(tags, 0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(body.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(body);
    f
}

/// An 8-byte option header (hop-by-hop or destination options) padded with PadN.
fn options_header(next: u8) -> [u8; 8] {
    [next, 0, 1, 4, 0, 0, 0, 0]
}

/// An IPv6 TCP/UDP frame, optionally with extension headers.
pub fn ipv6(tags: Tags, src: Ipv6Addr, dst: Ipv6Addr, l4: L4, ext: V6Ext, payload_len: usize, seed: u32) -> Vec<u8> {
    let seg = transport(l4, &payload(payload_len, seed), &v6_pseudo(src, dst));
    let (next, mut body) = match ext {
        V6Ext::None => (l4.proto(), Vec::new()),
        V6Ext::HopByHop => (0, options_header(l4.proto()).to_vec()),
        V6Ext::HopByHopAndDestOpts => {
            let mut b = options_header(60).to_vec();
            b.extend_from_slice(&options_header(l4.proto()));
            (0, b)
        }
    };
    body.extend_from_slice(&seg);
    v6_frame(tags, src, dst, next, &body)
}

/// An IPv6 TCP/UDP datagram split with fragment headers (RFC 8200 section 4.5).
pub fn ipv6_fragments(
    tags: Tags,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    l4: L4,
    payload_len: usize,
    fragment_bytes: usize,
    seed: u32,
) -> Vec<Vec<u8>> {
    assert!(fragment_bytes.is_multiple_of(8) && fragment_bytes >= 8);
    let seg = transport(l4, &payload(payload_len, seed), &v6_pseudo(src, dst));
    let chunks: Vec<&[u8]> = seg.chunks(fragment_bytes).collect();
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let offset = ((i * fragment_bytes) as u16) & !7;
            let more = u16::from(i + 1 < n);
            let mut body = vec![l4.proto(), 0];
            body.extend_from_slice(&(offset | more).to_be_bytes());
            body.extend_from_slice(&seed.to_be_bytes());
            body.extend_from_slice(chunk);
            v6_frame(tags, src, dst, 44, &body)
        })
        .collect()
}

/// An ARP request (non-IP, never kept).
pub fn arp(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = ethernet(Tags::None, 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// How a malformed frame is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breakage {
    /// Ethernet header and the first bytes of an IPv4 header only.
    RuntIpv4,
    /// VLAN tag announced, frame ends inside it.
    RuntVlan,
    /// IPv4 header length field below 5 words.
    BadIhl,
    /// IPv4 total length larger than the frame.
    TotalLenBeyondFrame,
    /// IPv6 payload length larger than the frame.
    Ipv6PayloadBeyondFrame,
    /// TCP to a DC port, cut after the IPv4 header (ports missing).
    MissingPorts,
}

/// A malformed frame aimed at `dst` port 88, so only the breakage keeps it from being kept.
pub fn malformed(kind: Breakage, src: Ipv4Addr, dst: Ipv4Addr, src6: Ipv6Addr, dst6: Ipv6Addr) -> Vec<u8> {
    let kerberos = L4::Tcp { src: 50000, dst: 88 };
    match kind {
        Breakage::RuntIpv4 => {
            let mut f = ipv4(Tags::None, src, dst, kerberos, 10, 1);
            f.truncate(14 + 12);
            f
        }
        Breakage::RuntVlan => {
            let mut f = ethernet(Tags::None, 0x8100);
            f.extend_from_slice(&[0x00]);
            f
        }
        Breakage::BadIhl => {
            let mut f = ipv4(Tags::None, src, dst, kerberos, 10, 2);
            f[14] = 0x43;
            f
        }
        Breakage::TotalLenBeyondFrame => {
            let mut f = ipv4(Tags::None, src, dst, kerberos, 10, 3);
            f[16..18].copy_from_slice(&1400u16.to_be_bytes());
            f
        }
        Breakage::Ipv6PayloadBeyondFrame => {
            let mut f = ipv6(Tags::None, src6, dst6, kerberos, V6Ext::None, 10, 4);
            f[18..20].copy_from_slice(&1400u16.to_be_bytes());
            f
        }
        Breakage::MissingPorts => {
            let mut f = ipv4(Tags::None, src, dst, kerberos, 0, 5);
            f.truncate(14 + 20);
            f[16..18].copy_from_slice(&20u16.to_be_bytes());
            f
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{SlicedPacket, TransportSlice};

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

    fn ports(frame: &[u8]) -> (u16, u16) {
        let p = SlicedPacket::from_ethernet(frame).expect("etherparse accepts the frame");
        match p.transport {
            Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
            Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
            other => panic!("no transport: {other:?}"),
        }
    }

    #[test]
    fn well_formed_frames_decode_with_etherparse() {
        let tcp = L4::Tcp { src: 50000, dst: 88 };
        for tags in [Tags::None, Tags::Dot1Q(10), Tags::QinQ(100, 10)] {
            assert_eq!(ports(&ipv4(tags, A, B, tcp, 100, 1)), (50000, 88));
            let f = ipv6(
                tags,
                "fd00::20".parse().unwrap(),
                "fd00::10".parse().unwrap(),
                tcp,
                V6Ext::HopByHopAndDestOpts,
                50,
                2,
            );
            assert_eq!(ports(&f), (50000, 88));
        }
        assert_eq!(ports(&ipv4_with_options(Tags::None, A, B, L4::Udp { src: 53, dst: 5353 }, 3, 3)), (53, 5353));
    }

    #[test]
    fn ipv4_checksums_verify() {
        let f = ipv4(Tags::None, A, B, L4::Udp { src: 1, dst: 53 }, 33, 9);
        assert_eq!(checksum(&[&f[14..34]]), 0, "IPv4 header checksum");
        let seg = &f[34..];
        assert_eq!(checksum(&[&v4_pseudo(A, B)(17, seg.len()), seg]), 0, "UDP checksum");
    }

    #[test]
    fn fragments_cover_the_datagram_once() {
        let frags = ipv4_fragments(Tags::Dot1Q(5), A, B, L4::Udp { src: 1000, dst: 88 }, 3000, 1480, 7);
        assert_eq!(frags.len(), 3);
        let total: usize = frags.iter().map(|f| f.len() - 18 - 20).sum();
        assert_eq!(total, 3008);
        let offsets: Vec<u16> = frags.iter().map(|f| u16::from_be_bytes([f[24], f[25]])).collect();
        assert_eq!(offsets, vec![0x2000, 0x2000 | 185, 370]);
    }
}

//! Frame decoding with etherparse: Ethernet, up to two VLAN tags, IPv4/IPv6 (fragments are
//! handed to `defrag`), TCP and UDP. Pure: bytes in, borrowed views out.

pub mod defrag;

use std::net::IpAddr;

use etherparse::{
    ip_number, Ipv6ExtensionSlice, LaxLinkExtSlice, LaxNetSlice, LaxSlicedPacket, LenSource, LinkExtSlice, NetSlice,
    SlicedPacket, TcpSlice, TransportSlice, UdpSlice,
};

/// TCP flags as on the wire (RFC 9293 section 3.1), low byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;

    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub payload: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4<'a> {
    Tcp(TcpSegment<'a>),
    Udp { src_port: u16, dst_port: u16, payload: &'a [u8] },
}

impl L4<'_> {
    pub fn ports(&self) -> (u16, u16) {
        match self {
            L4::Tcp(t) => (t.src_port, t.dst_port),
            L4::Udp { src_port, dst_port, .. } => (*src_port, *dst_port),
        }
    }
}

/// A TCP or UDP packet, whole (reassembled when it came in fragments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Outermost VLAN id, for reports only: it is not part of the flow key, because a SPAN
    /// port often tags the two directions of one conversation differently.
    pub vlan: Option<u16>,
    pub l4: L4<'a>,
}

/// One IPv4 or IPv6 fragment, for `defrag`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub vlan: Option<u16>,
    /// Upper-layer protocol number.
    pub protocol: u8,
    /// IPv4 identification (16 bits) or IPv6 fragment identification (32 bits).
    pub id: u32,
    /// Byte offset of `payload` in the datagram's upper-layer payload.
    pub offset: u32,
    pub more: bool,
    pub payload: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    Packet(Packet<'a>),
    Fragment(Fragment<'a>),
}

/// Why a frame yields nothing for the flow stage. Each is a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not IPv4 or IPv6")]
    NotIp,
    #[error("IP protocol {0} is not TCP or UDP")]
    OtherProtocol(u8),
    #[error("link or VLAN header cut short")]
    BadLink,
    #[error("IP header invalid or cut short")]
    BadIp,
    #[error("TCP or UDP header invalid or cut short")]
    BadTransport,
}

fn outer_vlan(p: &SlicedPacket<'_>) -> Option<u16> {
    p.link_exts.iter().find_map(|e| match e {
        LinkExtSlice::Vlan(v) => Some(v.vlan_identifier().value()),
        _ => None,
    })
}

/// A TCP segment from a capture taken on the sending host with segmentation offload: the
/// IPv4 total length is 0 because the NIC fills it in later. Wireshark and Zeek take the
/// length from the frame then, and so does this; anything else stays an error.
fn decode_offloaded(frame: &[u8]) -> Option<Decoded<'_>> {
    let p = LaxSlicedPacket::from_ethernet(frame).ok()?;
    let Some(LaxNetSlice::Ipv4(v4)) = &p.net else { return None };
    let h = v4.header();
    if h.total_len() != 0 || v4.payload().len_source != LenSource::Slice || v4.is_payload_fragmented() {
        return None;
    }
    let vlan = p.link_exts.iter().find_map(|e| match e {
        LaxLinkExtSlice::Vlan(v) => Some(v.vlan_identifier().value()),
        _ => None,
    });
    let Some(TransportSlice::Tcp(t)) = &p.transport else { return None };
    Some(Decoded::Packet(Packet {
        src: IpAddr::from(h.source()),
        dst: IpAddr::from(h.destination()),
        vlan,
        l4: L4::Tcp(tcp_segment(t)),
    }))
}

/// Decodes one Ethernet frame.
pub fn decode(frame: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    match decode_plain_ipv4(frame) {
        Some(d) => Ok(d),
        None => decode_with_etherparse(frame),
    }
}

/// Where an Ethernet frame's network header starts, through at most two VLAN tags
/// (802.1Q, 802.1ad, 0x9100): its EtherType, its offset and the outer VLAN id. Two loads
/// per tag, for the paths that look at every frame (see also the DC silence watch).
pub fn link_layer(f: &[u8]) -> Option<(u16, usize, Option<u16>)> {
    let word = |at: usize| -> Option<u16> { Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?])) };
    let mut at = 12;
    let mut ether_type = word(at)?;
    let mut vlan = None;
    for _ in 0..2 {
        if !matches!(ether_type, 0x8100 | 0x88a8 | 0x9100) {
            break;
        }
        vlan = vlan.or(Some(word(at + 2)? & 0x0fff));
        at += 4;
        ether_type = word(at)?;
    }
    Some((ether_type, at + 2, vlan))
}

/// The frame most of a DC's traffic is, read field by field: Ethernet, at most two VLAN
/// tags, an unfragmented IPv4 datagram whose lengths agree with the frame, a TCP segment
/// or a UDP datagram with a length of its own. `None` for anything else, which etherparse
/// then decodes; where this answers, it answers what etherparse does (a test compares
/// both on every frame of the labelled mix and on mutations of them). etherparse's
/// general walk over link extensions was 6% of `bench parse`.
fn decode_plain_ipv4(f: &[u8]) -> Option<Decoded<'_>> {
    let (ether_type, at, vlan) = link_layer(f)?;
    if ether_type != 0x0800 {
        return None;
    }
    let ip = f.get(at..)?;
    let header_len = usize::from(*ip.first()? & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let fragmenting = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x3fff != 0;
    if ip[0] >> 4 != 4 || header_len < 20 || total_len < header_len || total_len > ip.len() || fragmenting {
        return None;
    }
    let addr = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&ip[at..at + 4]).unwrap_or_default());
    let (src, dst) = (addr(12), addr(16));
    let l4 = &ip[header_len..total_len];
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    let l4 = match ip[9] {
        6 => {
            let tcp_header_len = usize::from(*l4.get(12)? >> 4) * 4;
            if l4.len() < 20 || tcp_header_len < 20 || tcp_header_len > l4.len() {
                return None;
            }
            let word32 = |at: usize| u32::from_be_bytes([l4[at], l4[at + 1], l4[at + 2], l4[at + 3]]);
            L4::Tcp(TcpSegment {
                src_port: port(0),
                dst_port: port(2),
                seq: word32(4),
                ack: word32(8),
                flags: TcpFlags(l4[13]),
                payload: &l4[tcp_header_len..],
            })
        }
        17 => {
            let udp_len = usize::from(u16::from_be_bytes([*l4.get(4)?, *l4.get(5)?]));
            if udp_len < 8 || udp_len > l4.len() {
                return None;
            }
            L4::Udp { src_port: port(0), dst_port: port(2), payload: &l4[8..udp_len] }
        }
        _ => return None,
    };
    Some(Decoded::Packet(Packet { src, dst, vlan, l4 }))
}

fn decode_with_etherparse(frame: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    let strict = SlicedPacket::from_ethernet(frame);
    if strict.is_err() {
        if let Some(d) = decode_offloaded(frame) {
            return Ok(d);
        }
    }
    let p = strict.map_err(|e| {
        use etherparse::err::packet::SliceError as E;
        match e {
            E::Len(l) if l.layer == etherparse::err::Layer::Ethernet2Header => DecodeError::BadLink,
            E::Len(l) if l.layer == etherparse::err::Layer::VlanHeader => DecodeError::BadLink,
            E::Tcp(_) => DecodeError::BadTransport,
            E::Len(l) if matches!(l.layer, etherparse::err::Layer::TcpHeader | etherparse::err::Layer::UdpHeader) => {
                DecodeError::BadTransport
            }
            _ => DecodeError::BadIp,
        }
    })?;
    let vlan = outer_vlan(&p);
    let (src, dst, payload) = match &p.net {
        Some(NetSlice::Ipv4(v4)) => {
            let h = v4.header();
            let (src, dst) = (IpAddr::from(h.source()), IpAddr::from(h.destination()));
            if v4.is_payload_fragmented() {
                return Ok(Decoded::Fragment(Fragment {
                    src,
                    dst,
                    vlan,
                    protocol: h.protocol().0,
                    id: h.identification() as u32,
                    offset: h.fragments_offset().byte_offset() as u32,
                    more: h.more_fragments(),
                    payload: v4.payload().payload,
                }));
            }
            (src, dst, v4.payload())
        }
        Some(NetSlice::Ipv6(v6)) => {
            let h = v6.header();
            let (src, dst) = (IpAddr::from(h.source()), IpAddr::from(h.destination()));
            if v6.is_payload_fragmented() {
                let frag = v6.extensions().clone().into_iter().find_map(|e| match e {
                    Ipv6ExtensionSlice::Fragment(f) => Some(f),
                    _ => None,
                });
                let Some(frag) = frag else { return Err(DecodeError::BadIp) };
                return Ok(Decoded::Fragment(Fragment {
                    src,
                    dst,
                    vlan,
                    protocol: v6.payload().ip_number.0,
                    id: frag.identification(),
                    offset: frag.fragment_offset().byte_offset() as u32,
                    more: frag.more_fragments(),
                    payload: v6.payload().payload,
                }));
            }
            (src, dst, v6.payload())
        }
        Some(NetSlice::Arp(_)) | None => return Err(DecodeError::NotIp),
    };
    let l4 = match &p.transport {
        Some(TransportSlice::Tcp(t)) => L4::Tcp(tcp_segment(t)),
        Some(TransportSlice::Udp(u)) => {
            L4::Udp { src_port: u.source_port(), dst_port: u.destination_port(), payload: u.payload() }
        }
        _ => return Err(DecodeError::OtherProtocol(payload.ip_number.0)),
    };
    Ok(Decoded::Packet(Packet { src, dst, vlan, l4 }))
}

fn tcp_segment<'a>(t: &TcpSlice<'a>) -> TcpSegment<'a> {
    // Flags byte 13 of the header (CWR ECE URG ACK PSH RST SYN FIN).
    let flags = t.header_slice()[13];
    TcpSegment {
        src_port: t.source_port(),
        dst_port: t.destination_port(),
        seq: t.sequence_number(),
        ack: t.acknowledgment_number(),
        flags: TcpFlags(flags),
        payload: t.payload(),
    }
}

/// Decodes the upper-layer bytes of a reassembled datagram.
pub fn decode_l4(protocol: u8, bytes: &[u8]) -> Result<L4<'_>, DecodeError> {
    match etherparse::IpNumber(protocol) {
        ip_number::TCP => {
            TcpSlice::from_slice(bytes).map(|t| L4::Tcp(tcp_segment(&t))).map_err(|_| DecodeError::BadTransport)
        }
        ip_number::UDP => UdpSlice::from_slice(bytes)
            .map(|u| L4::Udp { src_port: u.source_port(), dst_port: u.destination_port(), payload: u.payload() })
            .map_err(|_| DecodeError::BadTransport),
        _ => Err(DecodeError::OtherProtocol(protocol)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tap_testkit::frame::{self, Breakage, Tags, V6Ext, L4 as TL4};

    fn a4(s: &str) -> std::net::Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn offloaded_segments_with_a_zero_ip_length_take_the_frame_length() {
        let mut f =
            frame::ipv4(Tags::Dot1Q(5), a4("10.0.0.20"), a4("10.0.0.10"), TL4::Tcp { src: 5000, dst: 445 }, 2000, 1);
        // Ethernet 14 + one VLAN tag 4: the IPv4 total length is at bytes 2..4 of its header.
        f[18 + 2] = 0;
        f[18 + 3] = 0;
        let Decoded::Packet(p) = decode(&f).unwrap() else { panic!("packet") };
        assert_eq!((p.vlan, p.l4.ports()), (Some(5), (5000, 445)));
        let L4::Tcp(t) = p.l4 else { panic!("tcp") };
        assert_eq!(t.payload.len(), 2000);
        // A length beyond the frame is still an error, as is a zero length on UDP.
        let mut lie = frame::ipv4(Tags::None, a4("10.0.0.20"), a4("10.0.0.10"), TL4::Tcp { src: 1, dst: 2 }, 100, 1);
        lie[14 + 2] = 0x10; // 4 KiB more than the frame holds
        assert!(decode(&lie).is_err());
        let mut udp = frame::ipv4(Tags::None, a4("10.0.0.20"), a4("10.0.0.10"), TL4::Udp { src: 1, dst: 53 }, 100, 1);
        udp[14 + 2] = 0;
        udp[14 + 3] = 0;
        assert!(decode(&udp).is_err());
    }

    #[test]
    fn decodes_tagged_tcp_and_udp_over_both_families() {
        let f =
            frame::ipv4(Tags::QinQ(100, 7), a4("10.0.0.20"), a4("10.0.0.10"), TL4::Tcp { src: 5000, dst: 88 }, 33, 1);
        let Decoded::Packet(p) = decode(&f).unwrap() else { panic!("packet") };
        assert_eq!(p.vlan, Some(100));
        assert_eq!(p.l4.ports(), (5000, 88));
        let L4::Tcp(t) = p.l4 else { panic!("tcp") };
        assert_eq!(t.payload.len(), 33);
        assert!(t.flags.ack() && !t.flags.syn());

        let f = frame::ipv6(
            Tags::None,
            "fd00::20".parse().unwrap(),
            "fd00::10".parse().unwrap(),
            TL4::Udp { src: 53, dst: 4000 },
            V6Ext::HopByHopAndDestOpts,
            12,
            2,
        );
        let Decoded::Packet(p) = decode(&f).unwrap() else { panic!("packet") };
        assert_eq!(p.l4, L4::Udp { src_port: 53, dst_port: 4000, payload: &f[f.len() - 12..] });
    }

    #[test]
    fn fragments_come_out_with_offsets() {
        let frags = frame::ipv4_fragments(
            Tags::Dot1Q(5),
            a4("10.0.0.20"),
            a4("10.0.0.10"),
            TL4::Udp { src: 1, dst: 88 },
            3000,
            1480,
            7,
        );
        let offsets: Vec<(u32, bool)> = frags
            .iter()
            .map(|f| match decode(f).unwrap() {
                Decoded::Fragment(fr) => (fr.offset, fr.more),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(offsets, vec![(0, true), (1480, true), (2960, false)]);
        let v6 = frame::ipv6_fragments(
            Tags::None,
            "fd00::1".parse().unwrap(),
            "fd00::2".parse().unwrap(),
            TL4::Udp { src: 1, dst: 389 },
            2500,
            1232,
            3,
        );
        let Decoded::Fragment(last) = decode(v6.last().unwrap()).unwrap() else { panic!() };
        assert_eq!((last.offset, last.more, last.id, last.protocol), (2464, false, 3, 17));
    }

    /// Where the field-by-field reading answers, it answers what etherparse does: on
    /// every frame of the labelled mix (tags, QinQ, IPv6, fragments, options, runts,
    /// malformed frames), every truncation of them, and every single-byte change to their
    /// first 64 bytes. And it does answer for most of them.
    #[test]
    fn the_plain_ipv4_reading_agrees_with_etherparse() {
        let mix = tap_testkit::mix::mix(2);
        let check = |f: &[u8]| {
            let answer = decode_plain_ipv4(f);
            if let Some(d) = answer {
                assert_eq!(Ok(d), decode_with_etherparse(f), "frame {f:02x?}");
            }
            answer.is_some()
        };
        let answered = mix.iter().filter(|l| check(&l.frame)).count();
        assert!(answered * 3 > mix.len(), "the plain reading answered {answered} of {} frames", mix.len());
        for l in &mix {
            let f = &l.frame;
            for cut in 0..f.len().min(80) {
                check(&f[..cut]);
            }
            for at in 0..f.len().min(64) {
                for v in [0x00, 0x01, 0x06, 0x11, 0x45, 0x4f, 0x50, 0x81, 0xff, f[at] ^ 0x20] {
                    let mut g = f.clone();
                    g[at] = v;
                    check(&g);
                }
            }
        }
    }

    #[test]
    fn broken_frames_say_what_is_wrong_and_never_panic() {
        let (c, d) = (a4("10.0.0.20"), a4("10.0.0.10"));
        let (c6, d6) = ("fd00::20".parse().unwrap(), "fd00::10".parse().unwrap());
        assert_eq!(decode(&frame::arp(c, d)), Err(DecodeError::NotIp));
        assert_eq!(decode(&frame::malformed(Breakage::RuntIpv4, c, d, c6, d6)), Err(DecodeError::BadIp));
        assert_eq!(decode(&frame::malformed(Breakage::BadIhl, c, d, c6, d6)), Err(DecodeError::BadIp));
        assert!(decode(&frame::malformed(Breakage::RuntVlan, c, d, c6, d6)).is_err());
        assert!(decode(&frame::malformed(Breakage::MissingPorts, c, d, c6, d6)).is_err());
        for len in 0..80 {
            let f = frame::ipv4(Tags::Dot1Q(1), c, d, TL4::Tcp { src: 1, dst: 2 }, 20, 1);
            let _ = decode(&f[..len.min(f.len())]);
        }
    }
}

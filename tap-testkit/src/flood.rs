//! Floods an attacker on the mirrored segment can send toward a DC, as frames: spoofed
//! SYNs (and the DC's SYN-ACKs), half-open connections holding out-of-order data, IP
//! fragments that never complete, and many small LDAP or SMB sessions each holding part
//! of a large message. Deterministic; generated lazily so a 300 000-connection flood does
//! not sit in memory. Used by the sensor's flood tests and `cargo xtask bench floods`.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use crate::frame::{self, Tags, L4, TCP_ACK, TCP_PSH, TCP_SYN};

/// Which flood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flood {
    /// A SYN from a spoofed address to DC:88 per connection, and the DC's SYN-ACK.
    Syn,
    /// A SYN to DC:389, then two 1200-byte segments after a hole: held out of order.
    OutOfOrder,
    /// The first two 1480-byte fragments of a UDP datagram to DC:88 that never completes.
    Fragments,
    /// A handshake to DC:389, 1000 bytes of an LDAP message announcing 100 000, and a
    /// small answer from the DC (so the connection is established), left open.
    LdapStreams,
    /// The same on SMB (445): a NetBIOS header announcing 100 000 bytes, 1000 sent.
    SmbStreams,
}

impl Flood {
    pub const ALL: [Flood; 5] =
        [Flood::Syn, Flood::OutOfOrder, Flood::Fragments, Flood::LdapStreams, Flood::SmbStreams];

    pub fn name(self) -> &'static str {
        match self {
            Flood::Syn => "syn",
            Flood::OutOfOrder => "out-of-order",
            Flood::Fragments => "fragments",
            Flood::LdapStreams => "ldap-streams",
            Flood::SmbStreams => "smb-streams",
        }
    }

    /// What one connection (or datagram) of the flood is.
    pub fn describe(self) -> &'static str {
        match self {
            Flood::Syn => "spoofed SYN to DC:88 and the DC's SYN-ACK",
            Flood::OutOfOrder => "SYN to DC:389, then two 1200-byte segments after a 1200-byte hole",
            Flood::Fragments => "first two 1480-byte fragments of a UDP datagram to DC:88, never completed",
            Flood::LdapStreams => "handshake to DC:389, 1000 bytes of a 100 000-byte LDAP message, a 20-byte answer",
            Flood::SmbStreams => "handshake to DC:445, 1000 bytes of a 100 000-byte SMB2 message, a 20-byte answer",
        }
    }

    /// The frames of connection `i` from its source.
    fn connection(self, dc: Ipv4Addr, i: u32) -> Vec<Vec<u8>> {
        // Sources spread over 100.64.0.0/10 (shared address space), ports over 1024..61024.
        let src = Ipv4Addr::from(0x6440_0000 | (i / 60_000 + 1) << 8 | (i % 251));
        let port = 1024 + (i % 60_000) as u16;
        let isn = i.wrapping_mul(2_654_435_761);
        let dc_isn = isn ^ 0x5a5a_5a5a;
        let tcp = frame::tcp_segment;
        match self {
            Flood::Syn => vec![
                tcp(src, port, dc, 88, isn, 0, TCP_SYN, &[]),
                tcp(dc, 88, src, port, dc_isn, isn.wrapping_add(1), TCP_SYN | TCP_ACK, &[]),
            ],
            Flood::OutOfOrder => {
                let data = frame::payload(1200, i);
                vec![
                    tcp(src, port, dc, 389, isn, 0, TCP_SYN, &[]),
                    tcp(src, port, dc, 389, isn.wrapping_add(1201), 1, TCP_ACK | TCP_PSH, &data),
                    tcp(src, port, dc, 389, isn.wrapping_add(2401), 1, TCP_ACK | TCP_PSH, &data),
                ]
            }
            Flood::Fragments => {
                let mut frags =
                    frame::ipv4_fragments(Tags::None, src, dc, L4::Udp { src: port, dst: 88 }, 8000, 1480, i);
                frags.truncate(2);
                frags
            }
            Flood::LdapStreams | Flood::SmbStreams => {
                let (dport, mut head) = if self == Flood::LdapStreams {
                    // SEQUENCE, four length bytes: 100 000.
                    (389, vec![0x30, 0x84, 0x00, 0x01, 0x86, 0xa0, 0x02, 0x01, 0x07])
                } else {
                    // NetBIOS session message of 100 000 bytes, then an SMB2 header start.
                    (445, vec![0x00, 0x01, 0x86, 0xa0, 0xfe, b'S', b'M', b'B', 64, 0])
                };
                head.extend(frame::payload(1000 - head.len(), i));
                let answer = frame::payload(20, !i);
                let (c, s) = (isn.wrapping_add(1), dc_isn.wrapping_add(1));
                vec![
                    tcp(src, port, dc, dport, isn, 0, TCP_SYN, &[]),
                    tcp(dc, dport, src, port, dc_isn, c, TCP_SYN | TCP_ACK, &[]),
                    tcp(src, port, dc, dport, c, s, TCP_ACK, &[]),
                    tcp(src, port, dc, dport, c, s, TCP_ACK | TCP_PSH, &head),
                    tcp(dc, dport, src, port, s, c.wrapping_add(head.len() as u32), TCP_ACK | TCP_PSH, &answer),
                ]
            }
        }
    }

    /// The flood's frames for `connections` connections toward `dc`, 1 µs apart from `start`.
    pub fn frames(self, dc: Ipv4Addr, connections: u32, start: Duration) -> impl Iterator<Item = (Duration, Vec<u8>)> {
        (0..connections)
            .flat_map(move |i| self.connection(dc, i))
            .enumerate()
            .map(move |(n, f)| (start + Duration::from_micros(n as u64), f))
    }

    /// Writes the flood to a classic pcap file.
    pub fn write(self, path: &Path, dc: Ipv4Addr, connections: u32, start: Duration) -> anyhow::Result<()> {
        crate::pcap::write_stream(path, self.frames(dc, connections, start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floods_are_the_frames_they_say() {
        let dc = Ipv4Addr::new(10, 0, 0, 10);
        let start = Duration::from_secs(1_700_000_000);
        let count = |f: Flood| f.frames(dc, 1000, start).count();
        assert_eq!(count(Flood::Syn), 2000);
        assert_eq!(count(Flood::OutOfOrder), 3000);
        assert_eq!(count(Flood::Fragments), 2000);
        assert_eq!(count(Flood::LdapStreams), 5000);
        // Distinct sources and ports: every connection is a flow of its own.
        let mut keys: Vec<[u8; 6]> = Flood::Syn
            .frames(dc, 100_000, start)
            .step_by(2)
            .map(|(_, f)| {
                let mut k = [0u8; 6];
                k[..4].copy_from_slice(&f[26..30]);
                k[4..].copy_from_slice(&f[34..36]);
                k
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), 100_000);
        let ldap: Vec<_> = Flood::LdapStreams.frames(dc, 1, start).map(|(_, f)| f).collect();
        assert_eq!(ldap[3].len(), 14 + 20 + 20 + 1000);
        assert_eq!(&ldap[3][54..56], &[0x30, 0x84]);
    }
}

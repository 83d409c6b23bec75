//! The flow table: both directions of a conversation meet under one normalised key
//! (VLAN tags are deliberately not part of it), TCP directions are reassembled, UDP
//! datagrams passed on, and every flow ends in exactly one `Closed` event: FIN, RST, idle
//! timeout, eviction for room, or shutdown.
//!
//! Memory is bounded by the flow count (oldest idle evicted first), per-direction
//! out-of-order limits, and a global out-of-order byte budget. Time is capture time (the
//! frames' timestamps), so a capture file behaves like live traffic.

pub mod tcp;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lru::LruCache;

use crate::decode::{Packet, L4};
use tcp::{Chunk, HalfStream, TcpCounters, TcpLimits};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

/// Both ends, smaller (address, port) first, so either direction finds the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub lo: SocketAddr,
    pub hi: SocketAddr,
    pub transport: Transport,
}

/// Three words instead of the derived field-by-field walk through the address enums: the
/// flow table hashes a key for every packet (equal keys still hash equal, which is all a
/// hash must do).
impl std::hash::Hash for FlowKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let bits = |a: &SocketAddr| match a.ip() {
            IpAddr::V4(v4) => u128::from(v4.to_bits()),
            IpAddr::V6(v6) => v6.to_bits(),
        };
        h.write_u128(bits(&self.lo));
        h.write_u128(bits(&self.hi));
        h.write_u64(
            u64::from(self.lo.port()) << 32
                | u64::from(self.hi.port()) << 16
                | (self.transport == Transport::Tcp) as u64,
        );
    }
}

impl FlowKey {
    /// The key and whether `src` is the `lo` end.
    pub fn of(src: SocketAddr, dst: SocketAddr, transport: Transport) -> (Self, bool) {
        let src_is_lo = (src.ip(), src.port()) <= (dst.ip(), dst.port());
        let (lo, hi) = if src_is_lo { (src, dst) } else { (dst, src) };
        (Self { lo, hi, transport }, src_is_lo)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ToServer,
    ToClient,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Both directions sent FIN and everything before it was delivered.
    Fin,
    Reset,
    IdleTimeout,
    /// Evicted to make room for a new flow.
    Evicted,
    /// A UDP request answered (see [`StreamConsumer::answer_ends_flow`]).
    Answered,
    /// The sensor stopped or the capture file ended.
    Shutdown,
}

/// What the flow stage hands to its consumer (the protocol parsers).
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEvent<'a> {
    /// In-order TCP payload.
    Data {
        dir: Direction,
        data: &'a [u8],
    },
    /// `len` bytes of this direction are missing: resynchronise at the next PDU.
    Gap {
        dir: Direction,
        len: u64,
    },
    /// One UDP payload.
    Datagram {
        dir: Direction,
        data: &'a [u8],
    },
    Closed(CloseReason),
}

/// A conversation as its consumer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowMeta {
    /// Unique per tracker (per worker); with the worker index unique per sensor.
    pub id: u64,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
    /// Outer VLAN of the first frame seen.
    pub vlan: Option<u16>,
    pub first_seen: Duration,
    pub last_seen: Duration,
}

/// Receives every flow's events; keeps its per-flow state inside the flow entry, so a
/// consumer needs no table of its own.
pub trait StreamConsumer {
    type State: Default;
    fn event(&mut self, flow: &FlowMeta, state: &mut Self::State, event: StreamEvent<'_>);

    /// Whether a datagram from the server ends this UDP flow (one request, one answer, as
    /// in DNS). Such flows are closed at once instead of after the UDP idle timeout, so a
    /// DC's DNS traffic does not fill the flow table and push out long-lived TCP sessions.
    fn answer_ends_flow(&self, _flow: &FlowMeta) -> bool {
        false
    }

    /// Every flow is closed and no packet follows (end of a capture file, or shutdown).
    fn finish(&mut self) {}
}

#[derive(Clone, Copy, Debug)]
pub struct FlowLimits {
    pub max_flows: usize,
    pub tcp_idle: Duration,
    pub udp_idle: Duration,
    pub tcp: TcpLimits,
    /// Out-of-order bytes held across all flows of one tracker.
    pub max_ooo_bytes_total: usize,
}

impl Default for FlowLimits {
    fn default() -> Self {
        Self {
            max_flows: 262_144,
            tcp_idle: Duration::from_secs(600),
            udp_idle: Duration::from_secs(60),
            tcp: TcpLimits::default(),
            max_ooo_bytes_total: 64 << 20,
        }
    }
}

crate::counter_set! {
    pub struct FlowCounters {
        created,
        closed_fin,
        closed_rst,
        idle_timeout,
        /// Flows evicted (oldest idle first) to stay within the flow limit.
        evicted,
        /// UDP request/response flows closed at their answer (DNS, Kerberos).
        closed_answered,
        closed_at_shutdown,
        udp_datagrams,
        /// Empty TCP segments (no SYN, no data) of no tracked flow: not a reason to open one.
        segments_without_flow,
        /// Most flows open at once (per worker; summed over workers in reports).
        peak,
    }
}

struct Flow<S> {
    meta: FlowMeta,
    /// Whether the client is the key's `lo` end.
    client_is_lo: bool,
    to_server: HalfStream,
    to_client: HalfStream,
    reset: bool,
    state: S,
}

pub struct FlowTracker<C: StreamConsumer> {
    table: LruCache<FlowKey, Flow<C::State>>,
    pub consumer: C,
    limits: FlowLimits,
    pub counters: FlowCounters,
    pub tcp_counters: TcpCounters,
    ooo_total: usize,
    next_id: u64,
    /// Capture time of the newest packet.
    now: Duration,
}

/// Which end is the server of a new flow: the receiver of a bare SYN, the sender of a
/// SYN-ACK, otherwise the lower port (AD services listen on low, well-known ports; clients
/// use ephemeral ones). Between two unprivileged ports (a dynamic RPC port and an older
/// client's ephemeral port below it) a first segment holding a DCE/RPC PDU says which end
/// sent it.
fn src_is_server(p: &Packet<'_>) -> bool {
    let (sp, dp) = p.l4.ports();
    if let L4::Tcp(t) = &p.l4 {
        if t.flags.syn() {
            return t.flags.ack();
        }
        if sp >= 1024 && dp >= 1024 {
            if let Some(from_client) = dcerpc_sent_by_client(t.payload) {
                return !from_client;
            }
        }
    }
    sp < dp
}

/// For a connection-oriented DCE/RPC PDU header: whether only a client sends its type
/// (request, bind, alter-context, auth3) or only a server (response, fault, bind-ack,
/// bind-nak, alter-context response); None for anything else.
fn dcerpc_sent_by_client(b: &[u8]) -> Option<bool> {
    if b.len() < 16 || b[0] != 5 || b[1] > 1 || b[4] & !0x11 != 0 {
        return None;
    }
    match b[2] {
        0 | 11 | 14 | 16 => Some(true),
        2 | 3 | 12 | 13 | 15 => Some(false),
        _ => None,
    }
}

impl<C: StreamConsumer> FlowTracker<C> {
    pub fn new(consumer: C, limits: FlowLimits) -> Self {
        Self {
            table: LruCache::unbounded(),
            consumer,
            limits,
            counters: FlowCounters::default(),
            tcp_counters: TcpCounters::default(),
            ooo_total: 0,
            next_id: 0,
            now: Duration::ZERO,
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Out-of-order bytes held across all flows.
    pub fn ooo_bytes(&self) -> usize {
        self.ooo_total
    }

    /// Takes one packet seen at capture time `ts`.
    pub fn packet(&mut self, ts: Duration, p: &Packet<'_>) {
        self.now = self.now.max(ts);
        self.expire_idle();
        let (sp, dp) = p.l4.ports();
        let transport = match p.l4 {
            L4::Tcp(_) => Transport::Tcp,
            L4::Udp { .. } => Transport::Udp,
        };
        let (src, dst) = (SocketAddr::new(p.src, sp), SocketAddr::new(p.dst, dp));
        let (key, src_is_lo) = FlowKey::of(src, dst, transport);
        // A bare ACK, FIN or RST of a conversation not (or no longer) tracked, such as the
        // last ACK after both FINs, does not open a flow: only a SYN or data does.
        let opens = !matches!(&p.l4, L4::Tcp(t) if !t.flags.syn() && t.payload.is_empty());
        if opens && self.table.len() >= self.limits.max_flows && !self.table.contains(&key) {
            if let Some((_, flow)) = self.table.pop_lru() {
                self.counters.evicted += 1;
                self.close(flow, CloseReason::Evicted);
            }
        }
        // One lookup per packet (this is the hottest table of the sensor).
        let Self { table, counters, next_id, consumer, limits, tcp_counters, ooo_total, .. } = self;
        let flow = if opens {
            table.get_or_insert_mut(key, || {
                let server_is_src = src_is_server(p);
                let (client, server) = if server_is_src { (dst, src) } else { (src, dst) };
                let meta =
                    FlowMeta { id: *next_id, client, server, transport, vlan: p.vlan, first_seen: ts, last_seen: ts };
                *next_id += 1;
                counters.created += 1;
                Flow {
                    meta,
                    client_is_lo: src_is_lo != server_is_src,
                    to_server: HalfStream::default(),
                    to_client: HalfStream::default(),
                    reset: false,
                    state: C::State::default(),
                }
            })
        } else {
            match table.get_mut(&key) {
                Some(flow) => flow,
                None => {
                    counters.segments_without_flow += 1;
                    return;
                }
            }
        };
        flow.meta.last_seen = ts;
        let dir = if src_is_lo == flow.client_is_lo { Direction::ToServer } else { Direction::ToClient };
        let done = match &p.l4 {
            L4::Udp { payload, .. } => {
                counters.udp_datagrams += 1;
                consumer.event(&flow.meta, &mut flow.state, StreamEvent::Datagram { dir, data: payload });
                dir == Direction::ToClient && consumer.answer_ends_flow(&flow.meta)
            }
            L4::Tcp(seg) => {
                let Flow { meta, to_server, to_client, state, reset, .. } = flow;
                let (half, other, other_dir) = if dir == Direction::ToServer {
                    (&mut *to_server, &mut *to_client, Direction::ToClient)
                } else {
                    (&mut *to_client, &mut *to_server, Direction::ToServer)
                };
                let before = half.ooo_bytes() + other.ooo_bytes();
                half.segment(seg, &limits.tcp, *ooo_total >= limits.max_ooo_bytes_total, tcp_counters, &mut |chunk| {
                    match chunk {
                        Chunk::Data(data) => consumer.event(meta, state, StreamEvent::Data { dir, data }),
                        Chunk::Gap(len) => consumer.event(meta, state, StreamEvent::Gap { dir, len }),
                    }
                });
                if seg.flags.ack() {
                    other.acked(seg.ack, tcp_counters, &mut |chunk| match chunk {
                        Chunk::Data(data) => consumer.event(meta, state, StreamEvent::Data { dir: other_dir, data }),
                        Chunk::Gap(len) => consumer.event(meta, state, StreamEvent::Gap { dir: other_dir, len }),
                    });
                }
                *ooo_total = *ooo_total + half.ooo_bytes() + other.ooo_bytes() - before;
                if seg.flags.rst() {
                    *reset = true;
                }
                *reset || (to_server.finished() && to_client.finished())
            }
        };
        counters.peak = counters.peak.max(table.len() as u64);
        if done {
            if let Some(flow) = self.table.pop(&key) {
                let reason = match (transport, flow.reset) {
                    (Transport::Udp, _) => CloseReason::Answered,
                    (Transport::Tcp, true) => CloseReason::Reset,
                    (Transport::Tcp, false) => CloseReason::Fin,
                };
                match reason {
                    CloseReason::Answered => self.counters.closed_answered += 1,
                    CloseReason::Reset => self.counters.closed_rst += 1,
                    _ => self.counters.closed_fin += 1,
                }
                self.close(flow, reason);
            }
        }
    }

    /// Closes flows idle longer than their timeout. The LRU order is last-activity order,
    /// so only the oldest end of the table is looked at.
    fn expire_idle(&mut self) {
        while let Some((_, flow)) = self.table.peek_lru() {
            let idle = match flow.meta.transport {
                Transport::Tcp => self.limits.tcp_idle,
                Transport::Udp => self.limits.udp_idle,
            };
            if self.now.saturating_sub(flow.meta.last_seen) < idle {
                break;
            }
            let (_, flow) = self.table.pop_lru().expect("peeked");
            self.counters.idle_timeout += 1;
            self.close(flow, CloseReason::IdleTimeout);
        }
    }

    fn close(&mut self, mut flow: Flow<C::State>, reason: CloseReason) {
        let Flow { meta, to_server, to_client, state, .. } = &mut flow;
        let consumer = &mut self.consumer;
        for (dir, half) in [(Direction::ToServer, to_server), (Direction::ToClient, to_client)] {
            self.ooo_total -= half.ooo_bytes();
            half.flush(&mut self.tcp_counters, &mut |chunk| match chunk {
                Chunk::Data(data) => consumer.event(meta, state, StreamEvent::Data { dir, data }),
                Chunk::Gap(len) => consumer.event(meta, state, StreamEvent::Gap { dir, len }),
            });
        }
        consumer.event(meta, state, StreamEvent::Closed(reason));
    }

    /// Closes every flow (end of a capture file, or the sensor stopping).
    pub fn finish(&mut self) {
        while let Some((_, flow)) = self.table.pop_lru() {
            self.counters.closed_at_shutdown += 1;
            self.close(flow, CloseReason::Shutdown);
        }
        self.consumer.finish();
    }

    /// Advances capture time without a packet (a quiet link still times flows out).
    pub fn tick(&mut self, now: Duration) {
        self.now = self.now.max(now);
        self.expire_idle();
    }
}

/// The address pair of a flow, smaller first: what the pipeline shards on, so that a
/// flow and the IP fragments of its datagrams (which carry no ports) meet in one worker.
pub fn address_pair(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{TcpFlags, TcpSegment};

    /// Records events as strings.
    #[derive(Default)]
    struct Log(Vec<String>);

    impl StreamConsumer for Log {
        type State = u32;
        fn event(&mut self, flow: &FlowMeta, state: &mut u32, event: StreamEvent<'_>) {
            *state += 1;
            let e = match event {
                StreamEvent::Data { dir, data } => format!("{dir:?} {}", String::from_utf8_lossy(data)),
                StreamEvent::Gap { dir, len } => format!("{dir:?} gap {len}"),
                StreamEvent::Datagram { dir, data } => format!("{dir:?} dgram {}", String::from_utf8_lossy(data)),
                StreamEvent::Closed(r) => format!("closed {r:?} after {} events", *state - 1),
            };
            self.0.push(format!("{}->{} {e}", flow.client, flow.server));
        }
    }

    fn tcp<'a>(src: &str, dst: &str, seq: u32, flags: u8, payload: &'a [u8], vlan: Option<u16>) -> Packet<'a> {
        let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        Packet {
            src: s.ip(),
            dst: d.ip(),
            vlan,
            l4: L4::Tcp(TcpSegment {
                src_port: s.port(),
                dst_port: d.port(),
                seq,
                ack: 0,
                flags: TcpFlags(flags),
                payload,
            }),
        }
    }

    const C: &str = "10.0.0.20:50000";
    const S: &str = "10.0.0.10:88";
    const SYN: u8 = TcpFlags::SYN;
    const SYNACK: u8 = TcpFlags::SYN | TcpFlags::ACK;
    const ACK: u8 = TcpFlags::ACK;
    const FIN: u8 = TcpFlags::FIN | TcpFlags::ACK;

    fn t(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn both_directions_meet_whatever_their_vlan_and_fin_closes() {
        let mut ft = FlowTracker::new(Log::default(), FlowLimits::default());
        ft.packet(t(0), &tcp(C, S, 100, SYN, b"", Some(10)));
        ft.packet(t(1), &tcp(S, C, 500, SYNACK, b"", Some(20)));
        ft.packet(t(2), &tcp(C, S, 101, ACK, b"req", Some(10)));
        ft.packet(t(3), &tcp(S, C, 501, ACK, b"rep", Some(20)));
        // The SPAN copy of the request from the other side of the switch, other VLAN.
        ft.packet(t(3), &tcp(C, S, 101, ACK, b"req", Some(20)));
        ft.packet(t(4), &tcp(C, S, 104, FIN, b"", Some(10)));
        assert_eq!(ft.len(), 1, "one flow for both directions and both VLANs");
        ft.packet(t(5), &tcp(S, C, 504, FIN, b"", Some(20)));
        assert!(ft.is_empty());
        assert_eq!(
            ft.consumer.0,
            vec![
                format!("{C}->{S} ToServer req"),
                format!("{C}->{S} ToClient rep"),
                format!("{C}->{S} closed Fin after 2 events"),
            ]
        );
        assert_eq!(ft.tcp_counters.duplicate_segments, 1);
        assert_eq!(ft.counters.closed_fin, 1);
    }

    #[test]
    fn reset_flushes_held_data_with_a_gap_and_closes() {
        let mut ft = FlowTracker::new(Log::default(), FlowLimits::default());
        ft.packet(t(0), &tcp(C, S, 0, SYN, b"", None));
        ft.packet(t(1), &tcp(C, S, 1, ACK, b"ab", None));
        ft.packet(t(2), &tcp(C, S, 6, ACK, b"fg", None));
        assert_eq!(ft.ooo_bytes(), 2);
        ft.packet(t(3), &tcp(S, C, 0, TcpFlags::RST, b"", None));
        assert_eq!(ft.ooo_bytes(), 0);
        assert_eq!(
            ft.consumer.0,
            vec![
                format!("{C}->{S} ToServer ab"),
                format!("{C}->{S} ToServer gap 3"),
                format!("{C}->{S} ToServer fg"),
                format!("{C}->{S} closed Reset after 3 events"),
            ]
        );
    }

    #[test]
    fn mid_stream_flow_takes_the_low_port_as_server() {
        let mut ft = FlowTracker::new(Log::default(), FlowLimits::default());
        ft.packet(t(0), &tcp(S, C, 9000, ACK, b"reply", None));
        ft.finish();
        assert_eq!(ft.consumer.0[0], format!("{C}->{S} ToClient reply"));
        assert_eq!(ft.counters.closed_at_shutdown, 1);
        assert_eq!(ft.tcp_counters.midstream_starts, 1);
    }

    /// suricata-verify's bug-6191: a DCE/RPC connection seen from its middle, from an old
    /// client's port 1369 to a dynamic RPC port 49353; the first PDU is the client's.
    #[test]
    fn mid_stream_dcerpc_between_high_ports_is_oriented_by_the_pdu() {
        let (client, server) = ("10.0.0.27:1369", "10.0.0.15:49353");
        let alter_ctx = [5u8, 0, 14, 3, 0x10, 0, 0, 0, 16, 0, 0, 0, 69, 0, 0, 0];
        let mut ft = FlowTracker::new(Log::default(), FlowLimits::default());
        ft.packet(t(0), &tcp(client, server, 100, ACK, &alter_ctx, None));
        let mut resp = alter_ctx;
        resp[2] = 15;
        ft.packet(t(1), &tcp("10.0.0.15:49354", "10.0.0.27:1370", 100, ACK, &resp, None));
        // Not DCE/RPC: the lower port stays the server.
        ft.packet(t(2), &tcp("10.0.0.27:1371", server, 100, ACK, b"hello", None));
        ft.finish();
        let first = |from: &str| ft.consumer.0.iter().find(|e| e.starts_with(from)).cloned().unwrap_or_default();
        assert!(first(client).starts_with(&format!("{client}->{server} ToServer")), "{:?}", ft.consumer.0);
        assert!(first("10.0.0.27:1370").contains("ToClient"), "{:?}", ft.consumer.0);
        assert!(first("10.0.0.15:49353").contains("->10.0.0.27:1371 ToClient hello"), "{:?}", ft.consumer.0);
        assert_eq!(dcerpc_sent_by_client(b"hello, world, hi"), None);
    }

    #[test]
    fn idle_flows_time_out_in_capture_time_and_the_oldest_is_evicted_for_room() {
        let limits = FlowLimits { max_flows: 2, tcp_idle: Duration::from_secs(10), ..FlowLimits::default() };
        let mut ft = FlowTracker::new(Log::default(), limits);
        ft.packet(t(0), &tcp("10.0.0.1:40000", S, 1, ACK, b"a", None));
        ft.packet(t(1), &tcp("10.0.0.2:40000", S, 1, ACK, b"b", None));
        ft.packet(t(2), &tcp("10.0.0.1:40000", S, 2, ACK, b"c", None));
        ft.packet(t(3), &tcp("10.0.0.3:40000", S, 1, ACK, b"d", None));
        assert_eq!(ft.counters.evicted, 1);
        assert!(
            ft.consumer.0.iter().any(|e| e.starts_with("10.0.0.2:40000") && e.contains("closed Evicted")),
            "{:?}",
            ft.consumer.0
        );
        ft.tick(Duration::from_secs(11));
        assert_eq!(ft.counters.idle_timeout, 2);
        assert!(ft.is_empty());
        assert_eq!(ft.counters.peak, 2);
    }

    #[test]
    fn udp_datagrams_are_delivered_per_flow() {
        let mut ft = FlowTracker::new(Log::default(), FlowLimits::default());
        let q = Packet {
            src: "10.0.0.20".parse().unwrap(),
            dst: "10.0.0.10".parse().unwrap(),
            vlan: None,
            l4: L4::Udp { src_port: 5353, dst_port: 53, payload: b"query" },
        };
        let r = Packet {
            src: q.dst,
            dst: q.src,
            vlan: None,
            l4: L4::Udp { src_port: 53, dst_port: 5353, payload: b"answer" },
        };
        ft.packet(t(0), &q);
        ft.packet(t(1), &r);
        assert_eq!(ft.len(), 1);
        assert_eq!(
            ft.consumer.0,
            vec![
                "10.0.0.20:5353->10.0.0.10:53 ToServer dgram query",
                "10.0.0.20:5353->10.0.0.10:53 ToClient dgram answer"
            ]
        );
    }

    /// Log, but each flow ends at the server's first datagram (as DNS does).
    #[derive(Default)]
    struct Exchanges(Log);

    impl StreamConsumer for Exchanges {
        type State = u32;
        fn event(&mut self, flow: &FlowMeta, state: &mut u32, event: StreamEvent<'_>) {
            self.0.event(flow, state, event)
        }
        fn answer_ends_flow(&self, flow: &FlowMeta) -> bool {
            flow.server.port() == 53
        }
    }

    /// An answered request closes its flow at once; an answer seen before its request
    /// (SPAN reordering) closes the flow it opened, and the request then opens its own.
    #[test]
    fn answered_udp_requests_close_their_flow() {
        let mut ft = FlowTracker::new(Exchanges::default(), FlowLimits::default());
        let udp = |src: &str, dst: &str, payload: &'static [u8]| {
            let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            Packet {
                src: s.ip(),
                dst: d.ip(),
                vlan: None,
                l4: L4::Udp { src_port: s.port(), dst_port: d.port(), payload },
            }
        };
        ft.packet(t(0), &udp("10.0.0.20:5353", "10.0.0.10:53", b"q1"));
        assert_eq!(ft.len(), 1, "a request waits for its answer");
        ft.packet(t(1), &udp("10.0.0.10:53", "10.0.0.20:5353", b"a1"));
        assert!(ft.is_empty());
        ft.packet(t(2), &udp("10.0.0.10:53", "10.0.0.20:5354", b"a2"));
        ft.packet(t(3), &udp("10.0.0.20:5354", "10.0.0.10:53", b"q2"));
        ft.packet(t(4), &udp("10.0.0.20:5355", "10.0.0.10:123", b"ntp"));
        ft.packet(t(5), &udp("10.0.0.10:123", "10.0.0.20:5355", b"ntp"));
        assert_eq!(ft.len(), 2, "the late request and the NTP flow (not an exchange for this consumer) stay");
        assert_eq!(ft.counters.closed_answered, 2);
        assert_eq!(
            ft.consumer.0 .0[..5],
            [
                "10.0.0.20:5353->10.0.0.10:53 ToServer dgram q1",
                "10.0.0.20:5353->10.0.0.10:53 ToClient dgram a1",
                "10.0.0.20:5353->10.0.0.10:53 closed Answered after 2 events",
                "10.0.0.20:5354->10.0.0.10:53 ToClient dgram a2",
                "10.0.0.20:5354->10.0.0.10:53 closed Answered after 1 events",
            ]
        );
    }

    #[test]
    fn global_out_of_order_budget_forces_gaps() {
        let limits = FlowLimits { max_ooo_bytes_total: 4, ..FlowLimits::default() };
        let mut ft = FlowTracker::new(Log::default(), limits);
        ft.packet(t(0), &tcp("10.0.0.1:40000", S, 0, SYN, b"", None));
        ft.packet(t(0), &tcp("10.0.0.2:40000", S, 0, SYN, b"", None));
        ft.packet(t(1), &tcp("10.0.0.1:40000", S, 10, ACK, b"xxxx", None));
        assert_eq!(ft.ooo_bytes(), 4);
        ft.packet(t(2), &tcp("10.0.0.2:40000", S, 10, ACK, b"yy", None));
        assert_eq!(ft.tcp_counters.ooo_overflows, 1, "the second flow may not hold more");
        assert!(ft.ooo_bytes() <= 4);
    }
}

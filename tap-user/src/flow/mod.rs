//! The flow table: both directions of a conversation meet under one normalised key
//! (VLAN tags are deliberately not part of it), TCP directions are reassembled, UDP
//! datagrams passed on, and every flow ends in exactly one `Closed` event: FIN, RST, idle
//! timeout, eviction for room, or shutdown.
//!
//! Conversations not established yet (a SYN, data from one side only, an unanswered
//! datagram) live in a table of their own: a flood of spoofed SYNs or unanswered segments
//! evicts only its own kind, never a session that carries authentication or RPC. Among
//! established conversations the longest idle goes first, except that one the consumer
//! says it needs (an authenticated session, an RPC association with its interface) is
//! passed over while others can go.
//!
//! Memory is bounded by the two flow counts, per-direction out-of-order limits, and an
//! out-of-order byte budget shared by every worker. Time is capture time (the frames'
//! timestamps), so a capture file behaves like live traffic.

pub mod tcp;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lru::LruCache;

use crate::{
    budget::Budget,
    decode::{Packet, L4},
};
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

    /// Whether losing this conversation's state would blind the sensor to what follows on
    /// it (an authenticated session, an RPC association whose interface is known): such
    /// flows are evicted last.
    fn keeps(&self, _state: &Self::State) -> bool {
        false
    }
}

/// Longest idle established flows passed over for one eviction when the consumer keeps
/// them; past that the longest idle goes whatever it is.
const MAX_KEPT_PER_EVICTION: usize = 16;

#[derive(Clone, Debug)]
pub struct FlowLimits {
    /// Established conversations (both ends sent data) tracked at once by one tracker.
    pub max_flows: usize,
    /// Conversations not established yet tracked at once by one tracker.
    pub max_half_open: usize,
    pub tcp_idle: Duration,
    pub udp_idle: Duration,
    /// A conversation not established within this is given up (a SYN nobody answered, a
    /// request never replied to).
    pub half_open_idle: Duration,
    pub tcp: TcpLimits,
    /// Out-of-order bytes held across all flows of every tracker sharing it.
    pub ooo: Budget,
}

impl Default for FlowLimits {
    fn default() -> Self {
        Self {
            max_flows: 131_072,
            max_half_open: 32_768,
            tcp_idle: Duration::from_secs(600),
            udp_idle: Duration::from_secs(60),
            half_open_idle: Duration::from_secs(60),
            tcp: TcpLimits::default(),
            ooo: Budget::new(32 << 20),
        }
    }
}

crate::counter_set! {
    pub struct FlowCounters {
        created,
        closed_fin,
        closed_rst,
        idle_timeout,
        /// Established flows evicted (oldest idle first) to stay within the flow limit.
        evicted,
        /// Flows not established yet evicted for others of their kind (SYN and unanswered
        /// floods end here).
        half_open_evicted,
        /// Established flows passed over for eviction because their state was needed.
        kept_from_eviction,
        /// Out-of-order segments given up at once because the budget all workers share was
        /// spent.
        ooo_budget_gaps,
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
    /// Which ends sent data (TCP payload or a datagram): both, and the flow is established.
    client_sent: bool,
    server_sent: bool,
    to_server: HalfStream,
    to_client: HalfStream,
    reset: bool,
    state: S,
}

impl<S> Flow<S> {
    fn established(&self) -> bool {
        self.client_sent && self.server_sent
    }
}

pub struct FlowTracker<C: StreamConsumer> {
    /// Established flows, in last-activity order.
    table: LruCache<FlowKey, Flow<C::State>>,
    /// Flows not established yet, in last-activity order.
    half_open: LruCache<FlowKey, Flow<C::State>>,
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
            half_open: LruCache::unbounded(),
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
        self.table.len() + self.half_open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty() && self.half_open.is_empty()
    }

    /// Flows not established yet.
    pub fn half_open_len(&self) -> usize {
        self.half_open.len()
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
        // Established flows first, with one lookup: most packets are theirs.
        let Self { table, consumer, limits, counters, tcp_counters, ooo_total, .. } = self;
        if let Some(flow) = table.get_mut(&key) {
            let done = feed(flow, p, src_is_lo, ts, consumer, limits, counters, tcp_counters, ooo_total);
            if done {
                if let Some(flow) = self.table.pop(&key) {
                    self.ended(flow);
                }
            }
            return;
        }
        // A bare ACK, FIN or RST of a conversation not (or no longer) tracked, such as the
        // last ACK after both FINs, does not open a flow: only a SYN or data does.
        let opens = !matches!(&p.l4, L4::Tcp(t) if !t.flags.syn() && t.payload.is_empty());
        if !self.half_open.contains(&key) {
            if !opens {
                self.counters.segments_without_flow += 1;
                return;
            }
            if self.half_open.len() >= self.limits.max_half_open.max(1) {
                if let Some((_, flow)) = self.half_open.pop_lru() {
                    self.counters.half_open_evicted += 1;
                    self.close(flow, CloseReason::Evicted);
                }
            }
            let server_is_src = src_is_server(p);
            let (client, server) = if server_is_src { (dst, src) } else { (src, dst) };
            let meta =
                FlowMeta { id: self.next_id, client, server, transport, vlan: p.vlan, first_seen: ts, last_seen: ts };
            self.next_id += 1;
            self.counters.created += 1;
            self.half_open.put(
                key,
                Flow {
                    meta,
                    client_is_lo: src_is_lo != server_is_src,
                    client_sent: false,
                    server_sent: false,
                    to_server: HalfStream::default(),
                    to_client: HalfStream::default(),
                    reset: false,
                    state: C::State::default(),
                },
            );
        }
        let Self { half_open, consumer, limits, counters, tcp_counters, ooo_total, .. } = self;
        let Some(flow) = half_open.get_mut(&key) else { return };
        let done = feed(flow, p, src_is_lo, ts, consumer, limits, counters, tcp_counters, ooo_total);
        let established = flow.established();
        if done {
            if let Some(flow) = self.half_open.pop(&key) {
                self.ended(flow);
            }
        } else if established {
            if let Some(flow) = self.half_open.pop(&key) {
                self.make_room();
                self.table.put(key, flow);
            }
        }
        self.counters.peak = self.counters.peak.max(self.len() as u64);
    }

    /// Closes a flow that ended on its own (FIN, RST, answered), counting why.
    fn ended(&mut self, flow: Flow<C::State>) {
        let reason = match (flow.meta.transport, flow.reset) {
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

    /// Evicts established flows until one more fits: the longest idle first, passing over
    /// (a bounded number of) those the consumer keeps.
    fn make_room(&mut self) {
        let mut passed_over = 0;
        while self.table.len() >= self.limits.max_flows.max(1) {
            let Some((key, flow)) = self.table.pop_lru() else { break };
            if passed_over < MAX_KEPT_PER_EVICTION && self.consumer.keeps(&flow.state) {
                self.table.put(key, flow);
                passed_over += 1;
                self.counters.kept_from_eviction += 1;
                continue;
            }
            self.counters.evicted += 1;
            self.close(flow, CloseReason::Evicted);
        }
    }

    /// Closes flows idle longer than their timeout. Each table's LRU order is its
    /// last-activity order, so only the oldest end of each is looked at (a flow passed over
    /// for eviction sits among newer ones and times out when it reaches that end).
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
        while let Some((_, flow)) = self.half_open.peek_lru() {
            let idle = match flow.meta.transport {
                Transport::Tcp => self.limits.tcp_idle.min(self.limits.half_open_idle),
                Transport::Udp => self.limits.udp_idle.min(self.limits.half_open_idle),
            };
            if self.now.saturating_sub(flow.meta.last_seen) < idle {
                break;
            }
            let (_, flow) = self.half_open.pop_lru().expect("peeked");
            self.counters.idle_timeout += 1;
            self.close(flow, CloseReason::IdleTimeout);
        }
    }

    fn close(&mut self, mut flow: Flow<C::State>, reason: CloseReason) {
        let Flow { meta, to_server, to_client, state, .. } = &mut flow;
        let consumer = &mut self.consumer;
        for (dir, half) in [(Direction::ToServer, to_server), (Direction::ToClient, to_client)] {
            self.ooo_total -= half.ooo_bytes();
            self.limits.ooo.give(half.ooo_bytes());
            half.flush(&mut self.tcp_counters, &mut |chunk| match chunk {
                Chunk::Data(data) => consumer.event(meta, state, StreamEvent::Data { dir, data }),
                Chunk::Gap(len) => consumer.event(meta, state, StreamEvent::Gap { dir, len }),
            });
        }
        consumer.event(meta, state, StreamEvent::Closed(reason));
    }

    /// Closes every flow (end of a capture file, or the sensor stopping).
    pub fn finish(&mut self) {
        while let Some((_, flow)) = self.table.pop_lru().or_else(|| self.half_open.pop_lru()) {
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

/// Hands one packet to its flow's reassembly and consumer; whether the flow ended (both
/// FINs delivered, a RST, or a datagram that answers).
#[allow(clippy::too_many_arguments)]
fn feed<C: StreamConsumer>(
    flow: &mut Flow<C::State>,
    p: &Packet<'_>,
    src_is_lo: bool,
    ts: Duration,
    consumer: &mut C,
    limits: &FlowLimits,
    counters: &mut FlowCounters,
    tcp_counters: &mut TcpCounters,
    ooo_total: &mut usize,
) -> bool {
    flow.meta.last_seen = ts;
    let dir = if src_is_lo == flow.client_is_lo { Direction::ToServer } else { Direction::ToClient };
    let sent = match &p.l4 {
        L4::Udp { .. } => true,
        L4::Tcp(seg) => !seg.payload.is_empty(),
    };
    if sent {
        match dir {
            Direction::ToServer => flow.client_sent = true,
            Direction::ToClient => flow.server_sent = true,
        }
    }
    match &p.l4 {
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
            let budget_spent = limits.ooo.exhausted();
            let overflows = tcp_counters.ooo_overflows;
            half.segment(seg, &limits.tcp, budget_spent, tcp_counters, &mut |chunk| match chunk {
                Chunk::Data(data) => consumer.event(meta, state, StreamEvent::Data { dir, data }),
                Chunk::Gap(len) => consumer.event(meta, state, StreamEvent::Gap { dir, len }),
            });
            if budget_spent && tcp_counters.ooo_overflows > overflows {
                counters.ooo_budget_gaps += 1;
            }
            if seg.flags.ack() {
                other.acked(seg.ack, tcp_counters, &mut |chunk| match chunk {
                    Chunk::Data(data) => consumer.event(meta, state, StreamEvent::Data { dir: other_dir, data }),
                    Chunk::Gap(len) => consumer.event(meta, state, StreamEvent::Gap { dir: other_dir, len }),
                });
            }
            let after = half.ooo_bytes() + other.ooo_bytes();
            *ooo_total = *ooo_total + after - before;
            limits.ooo.adjust(before, after);
            if seg.flags.rst() {
                *reset = true;
            }
            *reset || (to_server.finished() && to_client.finished())
        }
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
        let limits =
            FlowLimits { max_flows: 2, max_half_open: 2, tcp_idle: Duration::from_secs(10), ..FlowLimits::default() };
        let mut ft = FlowTracker::new(Log::default(), limits);
        ft.packet(t(0), &tcp("10.0.0.1:40000", S, 1, ACK, b"a", None));
        ft.packet(t(1), &tcp("10.0.0.2:40000", S, 1, ACK, b"b", None));
        ft.packet(t(2), &tcp("10.0.0.1:40000", S, 2, ACK, b"c", None));
        ft.packet(t(3), &tcp("10.0.0.3:40000", S, 1, ACK, b"d", None));
        assert_eq!(ft.counters.half_open_evicted, 1, "one-sided flows evict their own kind");
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
        // Two trackers (two workers) share one budget.
        let limits = FlowLimits { ooo: Budget::new(4), ..FlowLimits::default() };
        let mut first = FlowTracker::new(Log::default(), limits.clone());
        let mut second = FlowTracker::new(Log::default(), limits.clone());
        first.packet(t(0), &tcp("10.0.0.1:40000", S, 0, SYN, b"", None));
        second.packet(t(0), &tcp("10.0.0.2:40000", S, 0, SYN, b"", None));
        first.packet(t(1), &tcp("10.0.0.1:40000", S, 10, ACK, b"xxxx", None));
        assert_eq!((first.ooo_bytes(), limits.ooo.used()), (4, 4));
        second.packet(t(2), &tcp("10.0.0.2:40000", S, 10, ACK, b"yy", None));
        assert_eq!(second.tcp_counters.ooo_overflows, 1, "the other worker may not hold more");
        assert_eq!(second.counters.ooo_budget_gaps, 1);
        assert_eq!(limits.ooo.used(), 4);
        first.finish();
        second.finish();
        assert_eq!(limits.ooo.used(), 0, "given back when the flows close");
    }

    /// A flood of spoofed SYNs (and the DC's SYN-ACKs), of segments from one side, or of
    /// unanswered datagrams fills the table of flows not established yet and evicts only
    /// from it: established sessions keep their state whatever the flood's size.
    #[test]
    fn half_open_floods_never_evict_established_flows() {
        let limits = FlowLimits { max_flows: 4, max_half_open: 8, ..FlowLimits::default() };
        let mut ft = FlowTracker::new(Log::default(), limits);
        let client = |i: u32| format!("10.1.{}.{}:{}", i / 250, i % 250, 40000 + i % 1000);
        for i in 0..3 {
            ft.packet(t(0), &tcp(&client(i), S, 100, SYN, b"", None));
            ft.packet(t(0), &tcp(S, &client(i), 500, SYNACK, b"", None));
            ft.packet(t(1), &tcp(&client(i), S, 101, ACK, b"bind", None));
            ft.packet(t(1), &tcp(S, &client(i), 501, ACK, b"bind_ack", None));
        }
        assert_eq!((ft.len(), ft.half_open_len()), (3, 0));
        for i in 1000..11_000 {
            ft.packet(t(2), &tcp(&client(i), S, 7, SYN, b"", None));
            ft.packet(t(2), &tcp(S, &client(i), 9, SYNACK, b"", None));
            ft.packet(t(2), &tcp(&format!("10.9.{}.{}:5000", i / 250, i % 250), S, 1, ACK, b"one side", None));
        }
        assert_eq!(ft.half_open_len(), 8);
        assert_eq!(ft.counters.half_open_evicted, 20_000 - 8);
        assert_eq!(ft.counters.evicted, 0);
        for i in 0..3 {
            ft.packet(t(3), &tcp(&client(i), S, 105, ACK, b"call", None));
        }
        ft.finish();
        for i in 0..3 {
            let events: Vec<_> = ft.consumer.0.iter().filter(|e| e.starts_with(&client(i))).collect();
            assert!(events.iter().any(|e| e.ends_with("ToServer call")), "{events:?}");
            assert!(events.iter().any(|e| e.contains("closed Shutdown after 3 events")), "{events:?}");
        }
    }

    /// Among established flows the longest idle goes first, but one the consumer keeps
    /// (an authenticated session) is passed over while others can go.
    #[test]
    fn flows_the_consumer_keeps_are_evicted_last() {
        #[derive(Default)]
        struct Keeper(Vec<String>);
        impl StreamConsumer for Keeper {
            type State = bool;
            fn event(&mut self, flow: &FlowMeta, state: &mut bool, event: StreamEvent<'_>) {
                if let StreamEvent::Data { data, .. } = event {
                    *state |= data == b"authenticated";
                }
                if let StreamEvent::Closed(r) = event {
                    self.0.push(format!("{} {r:?}", flow.client));
                }
            }
            fn keeps(&self, state: &bool) -> bool {
                *state
            }
        }
        let limits = FlowLimits { max_flows: 3, ..FlowLimits::default() };
        let mut ft = FlowTracker::new(Keeper::default(), limits);
        let open = |ft: &mut FlowTracker<Keeper>, c: &str, ms: u64, what: &[u8]| {
            ft.packet(t(ms), &tcp(c, S, 1, ACK, what, None));
            ft.packet(t(ms), &tcp(S, c, 1, ACK, b"ok", None));
        };
        open(&mut ft, "10.0.0.1:40000", 0, b"authenticated");
        open(&mut ft, "10.0.0.2:40000", 1, b"anonymous");
        open(&mut ft, "10.0.0.3:40000", 2, b"anonymous");
        open(&mut ft, "10.0.0.4:40000", 3, b"anonymous");
        open(&mut ft, "10.0.0.5:40000", 4, b"anonymous");
        assert_eq!(ft.consumer.0, ["10.0.0.2:40000 Evicted", "10.0.0.3:40000 Evicted"]);
        assert_eq!(ft.counters.kept_from_eviction, 1, "passed over once, it is no longer the longest idle");
    }
}

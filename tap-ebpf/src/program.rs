//! Maps, the entry point, the keep/drop decision and the copy into the ring buffers.

use aya_ebpf::{
    bindings::{xdp_action, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{
        bpf_get_smp_processor_id, bpf_ktime_get_ns,
        generated::{bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    },
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use tap_common::{
    config::{ConfigSlot, FLAG_V4_NETS, FLAG_V6_NETS},
    counters::{Counter, CounterSet},
    filter::{MAX_DC_ENTRIES, PORT_DYNAMIC_RPC, PORT_SERVICE, PORT_SLOTS},
    record::{Record, RecordHeader, MAX_SNAPLEN, SIZE_CLASSES, WAKEUP_FRACTION},
};

use crate::parse::{parse, Parsed, Ports};

/// The kernel's header in front of each ring-buffer record (BPF_RINGBUF_HDR_SZ).
const RINGBUF_RECORD_HEADER: usize = 8;

/// Default ring size; the sensor sets the real one at load time (`--ring-mib`).
const DEFAULT_RING_BYTES: u32 = 1 << 24;

#[map]
static COUNTERS: PerCpuArray<CounterSet> = PerCpuArray::with_max_entries(1, 0);
#[map]
static CONFIG: Array<u32> = Array::with_max_entries(ConfigSlot::COUNT, 0);
#[map]
static DC_V4_HOSTS: HashMap<[u8; 4], u8> = HashMap::with_max_entries(MAX_DC_ENTRIES, 0);
#[map]
static DC_V6_HOSTS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(MAX_DC_ENTRIES, 0);
#[map]
static DC_V4_NETS: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_DC_ENTRIES, 0);
#[map]
static DC_V6_NETS: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_DC_ENTRIES, 0);
#[map]
static SERVICE_PORTS: Array<u8> = Array::with_max_entries(PORT_SLOTS, 0);
#[map]
static RING_0: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
static RING_1: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
static RING_2: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
static RING_3: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[xdp]
pub fn dctap_xdp(ctx: XdpContext) -> u32 {
    let (outcome, truncated) = match parse(&ctx) {
        Parsed::Other => (Counter::Filtered, false),
        Parsed::Malformed => (Counter::Malformed, false),
        Parsed::V4 { src, dst, ports } => {
            if keep(ports, || is_dc_v4(&src), || is_dc_v4(&dst)) {
                copy_to_ring(&ctx)
            } else {
                (Counter::Filtered, false)
            }
        }
        Parsed::V6 { src, dst, ports } => {
            if keep(ports, || is_dc_v6(&src), || is_dc_v6(&dst)) {
                copy_to_ring(&ctx)
            } else {
                (Counter::Filtered, false)
            }
        }
    };
    if let Some(counters) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; XDP does not preempt itself on one CPU.
        let counters = unsafe { &mut *counters };
        counters.bump(Counter::Seen);
        counters.bump(outcome);
        if truncated {
            counters.bump(Counter::Truncated);
        }
    }
    // A mirror port forwards nothing; kept frames have been copied already.
    xdp_action::XDP_DROP
}

/// The benchmark's floor (see `tap_common::FLOOR_PROGRAM_NAME`).
#[xdp]
pub fn dctap_xdp_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// The benchmark's floor for kept frames (see `tap_common::COPY_FLOOR_PROGRAM_NAME`): the
/// least any capture through a ring buffer does per frame, which is to reserve a record,
/// copy the frame into it and submit it. No parsing, lookup, clock or wakeup decision.
#[xdp]
pub fn dctap_xdp_copy_floor(ctx: XdpContext) -> u32 {
    // SAFETY: helper called with the program's own context.
    let wire_len: u64 = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    let cap_len = if wire_len < MAX_SNAPLEN as u64 { wire_len } else { MAX_SNAPLEN as u64 };
    if let Some(mut entry) = RING_0.reserve::<Record<MAX_SNAPLEN>>(0) {
        let record = entry.as_mut_ptr();
        // SAFETY: `record` points at a reserved, exclusively owned record.
        unsafe {
            (*record).header =
                RecordHeader { ts_sec: 0, ts_nsec: 0, cap_len: cap_len as u32, orig_len: wire_len as u32 }
        };
        if copy_frame(&ctx, record, cap_len) {
            entry.submit(BPF_RB_NO_WAKEUP as u64);
        } else {
            entry.discard(BPF_RB_NO_WAKEUP as u64);
        }
    }
    xdp_action::XDP_DROP
}

/// The filter: the DC end of the conversation is on a kept port. The port is checked
/// first because it is one array load, and only the address on that side is looked up.
/// A non-first fragment (no ports) is kept when either end is a DC.
#[inline(always)]
fn keep(ports: Option<Ports>, src_is_dc: impl Fn() -> bool, dst_is_dc: impl Fn() -> bool) -> bool {
    match ports {
        Some(Ports { src, dst }) => (kept_port(dst, src) && dst_is_dc()) || (kept_port(src, dst) && src_is_dc()),
        None => src_is_dc() || dst_is_dc(),
    }
}

/// A service port, or a port of the dynamic RPC range talking to another unprivileged
/// port. The range is kept as a whole because a tool connects to the endpoint the mapper
/// named within a millisecond, before the sensor could add that one port to the map.
#[inline(always)]
fn kept_port(port: u16, other: u16) -> bool {
    match SERVICE_PORTS.get(port as u32) {
        Some(&PORT_SERVICE) => true,
        Some(&PORT_DYNAMIC_RPC) => other >= 1024,
        _ => false,
    }
}

#[inline(always)]
fn config(slot: ConfigSlot) -> u32 {
    CONFIG.get(slot as u32).copied().unwrap_or(0)
}

/// What turns `bpf_ktime_get_ns()` into wall-clock time (see `ConfigSlot::ClockOffsetLow`).
#[inline(always)]
fn clock_offset() -> u64 {
    (u64::from(config(ConfigSlot::ClockOffsetHigh)) << 32) | u64::from(config(ConfigSlot::ClockOffsetLow))
}

#[inline(always)]
fn is_dc_v4(addr: &[u8; 4]) -> bool {
    // SAFETY: the value is only tested for presence, never held across a map update.
    if unsafe { DC_V4_HOSTS.get(addr) }.is_some() {
        return true;
    }
    config(ConfigSlot::Flags) & FLAG_V4_NETS != 0 && DC_V4_NETS.get(Key::new(32, *addr)).is_some()
}

#[inline(always)]
fn is_dc_v6(addr: &[u8; 16]) -> bool {
    // SAFETY: as in is_dc_v4.
    if unsafe { DC_V6_HOSTS.get(addr) }.is_some() {
        return true;
    }
    config(ConfigSlot::Flags) & FLAG_V6_NETS != 0 && DC_V6_NETS.get(Key::new(128, *addr)).is_some()
}

/// Copies the frame's first `snaplen` bytes into this CPU's ring and returns the counter
/// that describes the outcome, and whether the copy was cut short by the snap length.
#[inline(always)]
fn copy_to_ring(ctx: &XdpContext) -> (Counter, bool) {
    // SAFETY: helpers called with the program's own context.
    let wire_len: u64 = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    let mut snaplen = config(ConfigSlot::Snaplen) as u64;
    if snaplen == 0 || snaplen > MAX_SNAPLEN as u64 {
        snaplen = MAX_SNAPLEN as u64;
    }
    let cap_len = if wire_len < snaplen { wire_len } else { snaplen };
    let ring = match unsafe { bpf_get_smp_processor_id() } % 4 {
        0 => &RING_0,
        1 => &RING_1,
        2 => &RING_2,
        _ => &RING_3,
    };
    let outcome = if cap_len <= SIZE_CLASSES[0] as u64 {
        emit::<{ SIZE_CLASSES[0] }>(ctx, ring, wire_len, cap_len)
    } else if cap_len <= SIZE_CLASSES[1] as u64 {
        emit::<{ SIZE_CLASSES[1] }>(ctx, ring, wire_len, cap_len)
    } else if cap_len <= SIZE_CLASSES[2] as u64 {
        emit::<{ SIZE_CLASSES[2] }>(ctx, ring, wire_len, cap_len)
    } else if cap_len <= SIZE_CLASSES[3] as u64 {
        emit::<{ SIZE_CLASSES[3] }>(ctx, ring, wire_len, cap_len)
    } else {
        emit::<{ SIZE_CLASSES[4] }>(ctx, ring, wire_len, cap_len)
    };
    let truncated = matches!(outcome, Counter::Kept) && cap_len < wire_len;
    (outcome, truncated)
}

#[inline(always)]
fn emit<const N: usize>(ctx: &XdpContext, ring: &RingBuf, wire_len: u64, cap_len: u64) -> Counter {
    let Some(mut entry) = ring.reserve::<Record<N>>(0) else {
        return Counter::RingFull;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved, exclusively owned Record<N>.
    unsafe {
        (*record).header =
            RecordHeader::new(bpf_ktime_get_ns().wrapping_add(clock_offset()), cap_len as u32, wire_len as u32);
    }
    if !copy_frame(ctx, record, cap_len) {
        entry.discard(BPF_RB_NO_WAKEUP as u64);
        return Counter::Malformed;
    }
    // Wake the reader once per WAKEUP_FRACTION of the ring queued: when this record made
    // the queued total cross a multiple of it. Waking on every record above the threshold
    // would send an interrupt per frame exactly when the reader is behind (measured: 4 µs
    // per frame instead of 0.3).
    let queued = ring.query(BPF_RB_AVAIL_DATA as u64);
    let step = ring.query(BPF_RB_RING_SIZE as u64) / WAKEUP_FRACTION;
    let record_len = (core::mem::size_of::<Record<N>>() + RINGBUF_RECORD_HEADER) as u64;
    let wakeup = if step != 0 && queued / step != queued.saturating_sub(record_len) / step {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wakeup as u64);
    Counter::Kept
}

/// Copies the frame's first `cap_len` bytes into the reserved `record`; false when the
/// length is out of range or the helper fails.
#[inline(always)]
fn copy_frame<const N: usize>(ctx: &XdpContext, record: *mut Record<N>, cap_len: u64) -> bool {
    // The verifier must see `1 <= len <= N` on the register handed to bpf_xdp_load_bytes
    // (a zero length is refused), and 6.1's (Debian 12) learns a lower bound only from an
    // ordering comparison: `len != 0` teaches it nothing (later verifiers raise the minimum
    // when the constant is at the edge of the known range), and LLVM rewrites an unsigned
    // `len < 1` into exactly that, or folds both checks into one `len - 1 > N - 1` on a
    // copy that 6.1 does not link back to `len` (6.18 does, which is why only old kernels
    // refused the program: "invalid access to memory, mem_size=144 off=16 size=0"). So:
    // a signed `< 1`, which LLVM cannot turn into an equality and from which the verifier
    // derives `umin = 1`, then the upper bound, each behind a barrier so that LLVM neither
    // merges them nor drops them as already known (the callers chose N so that they
    // hold), on the very register passed, after the last helper call. In u64, the type the
    // helper returned: a u32 clamp loses the bounds (the verifier then refuses it).
    let len = opaque(cap_len);
    if (len as i64) < 1 {
        return false;
    }
    let len = opaque(len);
    if len > N as u64 {
        return false;
    }
    // SAFETY: `record` points at a reserved, exclusively owned Record<N>; the copy length
    // is within 1..=N, the data array's size.
    unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, (*record).data.as_mut_ptr().cast(), len as u32) == 0 }
}

/// `value`, unknown to LLVM from here on: an asm that claims to change the register
/// (libbpf's `barrier_var`). The verifier still tracks the register (a move keeps its
/// bounds); only the optimiser loses what it knew, so it keeps the checks that follow.
/// The asm is one real instruction, `rN = rN`, rather than an empty or comment-only
/// string: Rust refuses an operand the template does not name, and LLVM gives a
/// non-empty asm that emits no instruction a BTF line-info record of its own, at the
/// offset of the next instruction, and the kernel refuses two records for one offset
/// ("Invalid line_info[..].insn_off", seen on 6.1).
#[inline(always)]
fn opaque(mut value: u64) -> u64 {
    // SAFETY: a register move onto itself; no memory, stack or flags involved.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[no_mangle]
#[link_section = "license"]
pub static LICENSE: [u8; 4] = *b"GPL\0";

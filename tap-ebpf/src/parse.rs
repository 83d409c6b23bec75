//! Header walk from Ethernet to the L4 ports, bounds-checked at every read.
//!
//! Offsets are kept as `usize` values that the verifier can bound: VLAN tags add constants,
//! the IPv4 header length is at most 60 and the IPv6 extension-header walk is capped by
//! `MAX_IPV6_HEADER_BYTES`.

use aya_ebpf::programs::XdpContext;

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// 802.1Q customer tag.
const ETHERTYPE_VLAN: u16 = 0x8100;
/// 802.1ad service tag (QinQ outer tag).
const ETHERTYPE_QINQ: u16 = 0x88a8;
/// Pre-standard QinQ outer tag still emitted by some switches.
const ETHERTYPE_QINQ_LEGACY: u16 = 0x9100;
const VLAN_HLEN: usize = 4;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV6_HLEN: usize = 40;
/// IPv6 extension headers walked before giving up; real traffic carries one or two.
const MAX_IPV6_EXT_HEADERS: usize = 6;
/// IPv6 header chain longer than this is treated as malformed: no AD client sends it, and
/// the bound keeps the walk cheap and verifiable.
const MAX_IPV6_HEADER_BYTES: usize = 512;

/// Where a frame's addresses and ports are, as far as the filter needs them.
pub enum Parsed {
    /// Not IPv4/IPv6, or not TCP/UDP: never DC service traffic.
    Other,
    /// Headers cut short or inconsistent.
    Malformed,
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        ports: Option<Ports>,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
        ports: Option<Ports>,
    },
}

/// Source and destination port; `None` in `Parsed` means a non-first fragment.
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: ptr_at checked that size_of::<T>() bytes at offset lie inside the frame.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { core::ptr::read_unaligned(p) })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ || ethertype == ETHERTYPE_QINQ_LEGACY
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let Some(mut ethertype) = read::<[u8; 2]>(ctx, 12).map(be16) else {
        return Parsed::Malformed;
    };
    let mut l3 = ETH_HLEN;
    // Up to two tags (802.1ad outer + 802.1Q inner), written out so offsets stay constants.
    if is_vlan(ethertype) {
        let Some(inner) = read::<[u8; 2]>(ctx, l3 + 2).map(be16) else {
            return Parsed::Malformed;
        };
        ethertype = inner;
        l3 += VLAN_HLEN;
        if is_vlan(ethertype) {
            let Some(inner) = read::<[u8; 2]>(ctx, l3 + 2).map(be16) else {
                return Parsed::Malformed;
            };
            ethertype = inner;
            l3 += VLAN_HLEN;
        }
    }
    match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(ctx, l3),
        ETHERTYPE_IPV6 => parse_ipv6(ctx, l3),
        _ => Parsed::Other,
    }
}

/// Frame length for the consistency checks of the IP length fields. The loads are
/// volatile on purpose: with plain loads LLVM proves later `ptr_at` bounds checks
/// redundant from these scalar comparisons and deletes them, and the verifier, which only
/// trusts checks made on packet pointers, then rejects the program.
#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
    // SAFETY: ctx.ctx is the live xdp_md the kernel passed in.
    unsafe {
        let md = ctx.ctx;
        let end = core::ptr::read_volatile(core::ptr::addr_of!((*md).data_end));
        let start = core::ptr::read_volatile(core::ptr::addr_of!((*md).data));
        end.wrapping_sub(start) as usize
    }
}

/// RFC 791 header: version/IHL, TOS, total length, id, flags/fragment offset, TTL,
/// protocol, checksum, source, destination, options.
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Parsed {
    let Some(hdr) = read::<[u8; 20]>(ctx, l3) else {
        return Parsed::Malformed;
    };
    if hdr[0] >> 4 != 4 {
        return Parsed::Malformed;
    }
    let ihl = ((hdr[0] & 0x0f) as usize) * 4;
    let total_len = be16([hdr[2], hdr[3]]) as usize;
    if ihl < 20 || total_len < ihl || l3 + total_len > frame_len(ctx) {
        return Parsed::Malformed;
    }
    let src = [hdr[12], hdr[13], hdr[14], hdr[15]];
    let dst = [hdr[16], hdr[17], hdr[18], hdr[19]];
    let flags_frag = be16([hdr[6], hdr[7]]);
    if flags_frag & 0x1fff != 0 {
        return Parsed::V4 { src, dst, ports: None };
    }
    let more_fragments = flags_frag & 0x2000 != 0;
    let l4_min = match hdr[9] {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        _ => return Parsed::Other,
    };
    // A first fragment need only carry the ports; an unfragmented datagram its full header.
    let needed = if more_fragments { 4 } else { l4_min };
    if total_len < ihl + needed {
        return Parsed::Malformed;
    }
    match read_ports(ctx, l3 + ihl) {
        Some(ports) => Parsed::V4 { src, dst, ports: Some(ports) },
        None => Parsed::Malformed,
    }
}

/// RFC 8200: fixed 40-byte header, then a chain of extension headers ending in the
/// upper-layer header.
#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize) -> Parsed {
    let Some(hdr) = read::<[u8; IPV6_HLEN]>(ctx, l3) else {
        return Parsed::Malformed;
    };
    if hdr[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let payload_len = be16([hdr[4], hdr[5]]) as usize;
    if l3 + IPV6_HLEN + payload_len > frame_len(ctx) {
        return Parsed::Malformed;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&hdr[8..24]);
    dst.copy_from_slice(&hdr[24..40]);
    let mut next = hdr[6];
    let mut ext_len = 0usize;
    let mut first_fragment_or_whole = true;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if next == IPPROTO_TCP || next == IPPROTO_UDP {
            break;
        }
        let cursor = l3 + IPV6_HLEN + ext_len;
        match next {
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6: length in
            // 8-octet units, not counting the first 8.
            0 | 43 | 60 | 135 | 139 | 140 => {
                let Some(ext) = read::<[u8; 2]>(ctx, cursor) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                ext_len += (ext[1] as usize + 1) * 8;
            }
            // Authentication header (RFC 4302): length in 4-octet units, minus 2.
            51 => {
                let Some(ext) = read::<[u8; 2]>(ctx, cursor) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                ext_len += (ext[1] as usize + 2) * 4;
            }
            // Fragment header: fixed 8 bytes; offset in the upper 13 bits of bytes 2..4.
            44 => {
                let Some(frag) = read::<[u8; 8]>(ctx, cursor) else {
                    return Parsed::Malformed;
                };
                next = frag[0];
                ext_len += 8;
                if be16([frag[2], frag[3]]) >> 3 != 0 {
                    first_fragment_or_whole = false;
                    break;
                }
            }
            // ESP, no-next-header, ICMPv6 and the rest: nothing the filter can use.
            _ => return Parsed::Other,
        }
        if ext_len > MAX_IPV6_HEADER_BYTES {
            return Parsed::Malformed;
        }
    }
    if !first_fragment_or_whole {
        return Parsed::V6 { src, dst, ports: None };
    }
    if next != IPPROTO_TCP && next != IPPROTO_UDP {
        // Chain longer than MAX_IPV6_EXT_HEADERS.
        return Parsed::Malformed;
    }
    if ext_len > MAX_IPV6_HEADER_BYTES || payload_len < ext_len + 4 {
        return Parsed::Malformed;
    }
    match read_ports(ctx, l3 + IPV6_HLEN + ext_len) {
        Some(ports) => Parsed::V6 { src, dst, ports: Some(ports) },
        None => Parsed::Malformed,
    }
}

#[inline(always)]
fn read_ports(ctx: &XdpContext, l4: usize) -> Option<Ports> {
    let p = read::<[u8; 4]>(ctx, l4)?;
    Some(Ports { src: be16([p[0], p[1]]), dst: be16([p[2], p[3]]) })
}

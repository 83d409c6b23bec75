//! Offline input: frames from a pcap or pcapng file (read with pcap-file), in batches like
//! the ring readers produce, so the rest of the pipeline cannot tell the difference.

use std::{
    fs::File,
    io::{BufReader, Read},
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context as _};
use pcap_file::{
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
    DataLink,
};

use crate::frames::{BatchPool, FrameBatch, RawRecord, BATCH_BYTES, BATCH_FRAMES, PCAP_RECORD_HEADER};

/// What was read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub frames: u64,
    pub bytes: u64,
    pub first: Option<Duration>,
    pub last: Option<Duration>,
    /// Frames skipped because their interface is not Ethernet (pcapng may mix link types).
    pub skipped_link_type: u64,
    /// Frames skipped because their timestamp, with the interface's resolution and offset,
    /// is not a time from 1970 to 2100 (see [`LATEST_FRAME_SECS`]).
    pub skipped_bad_time: u64,
}

/// Frames stamped from 2100 on are refused: no clock gives them, a crafted file does, and
/// beyond 2262 they do not fit the signed nanoseconds events carry.
pub const LATEST_FRAME_SECS: u64 = 4_102_444_800;

fn sane(ts: Duration) -> bool {
    ts.as_secs() < LATEST_FRAME_SECS
}

impl ReadStats {
    fn add(&mut self, ts: Duration, len: usize) {
        self.frames += 1;
        self.bytes += len as u64;
        self.first.get_or_insert(ts);
        self.last = Some(ts);
    }
}

struct Batcher<'f> {
    batch: FrameBatch,
    sink: &'f mut dyn FnMut(FrameBatch) -> anyhow::Result<()>,
    /// A frame of another link type rewritten as Ethernet.
    scratch: Vec<u8>,
}

/// Whether the sensor reads frames of this link type: Ethernet, and (rewritten as
/// Ethernet, see [`ethernet_header`]) raw IP and Linux cooked captures, which public
/// corpora (Suricata's, Zeek's) use.
fn readable(link: DataLink) -> bool {
    matches!(link, DataLink::ETHERNET | DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 | DataLink::LINUX_SLL)
}

/// For a record of a non-Ethernet link type: how many bytes of link header to drop and
/// the EtherType of what follows, or None when it carries nothing the sensor decodes.
fn ethernet_header(link: DataLink, data: &[u8]) -> Option<(usize, u16)> {
    match link {
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => match data.first()? >> 4 {
            4 => Some((0, 0x0800)),
            6 => Some((0, 0x86dd)),
            _ => None,
        },
        // SLL: packet type, ARPHRD type, address length, address (8), protocol.
        DataLink::LINUX_SLL => Some((16, u16::from_be_bytes([*data.get(14)?, *data.get(15)?]))),
        _ => None,
    }
}

impl Batcher<'_> {
    /// A record of `link` (see [`readable`]) as an Ethernet frame, with zero addresses.
    fn push_link(&mut self, link: DataLink, ts: Duration, orig_len: u32, data: &[u8]) -> anyhow::Result<()> {
        if link == DataLink::ETHERNET {
            return self.push(ts, orig_len, data);
        }
        let Some((drop, ethertype)) = ethernet_header(link, data) else { return Ok(()) };
        let mut frame = std::mem::take(&mut self.scratch);
        frame.clear();
        frame.extend_from_slice(&[0u8; 12]);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(&data[drop.min(data.len())..]);
        let orig_len = (orig_len as usize + 14).saturating_sub(drop) as u32;
        let pushed = self.push(ts, orig_len, &frame);
        self.scratch = frame;
        pushed
    }

    fn push(&mut self, ts: Duration, orig_len: u32, data: &[u8]) -> anyhow::Result<()> {
        if !self.batch.has_room(data.len()) {
            let full = std::mem::replace(
                &mut self.batch,
                FrameBatch::with_capacity(BATCH_FRAMES, BATCH_BYTES.max(data.len() * 2)),
            );
            (self.sink)(full)?;
        }
        self.batch.push_frame(ts, orig_len, data);
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        if !self.batch.is_empty() {
            (self.sink)(self.batch)?;
        }
        Ok(())
    }
}

/// Reads every Ethernet frame of `path` (a file, or a pipe such as /dev/stdin) and passes
/// them on in batches. Fails with the record number on a damaged file, after passing on
/// everything before it.
///
/// Measured and left out: memory-mapping the file in 16 MiB windows, with batches pointing
/// into the mapping (no copy at all), cost 4% more CPU than reading into recycled batch
/// buffers on `bench parse`, and twice the resident size.
pub fn read_file(path: &Path, sink: &mut dyn FnMut(FrameBatch) -> anyhow::Result<()>) -> anyhow::Result<ReadStats> {
    let name = path.display().to_string();
    let mut file = File::open(path).with_context(|| format!("open {name}"))?;
    let mut stats = ReadStats::default();
    // The file is opened once: a pipe cannot be read twice.
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).with_context(|| format!("{name}: cannot read a capture file header"))?;
    if let Some(mut header) = ClassicPcap::magic(magic) {
        let mut rest = [0u8; 20];
        file.read_exact(&mut rest).with_context(|| format!("{name}: neither a pcap nor a pcapng file (cut short)"))?;
        if header.ethernet(&rest) {
            return read_classic(&name, &header, file, &mut stats, sink).map(|()| stats);
        }
        let head = [&magic[..], &rest[..]].concat();
        return read_with_pcap_file(&name, magic, Read::chain(&head[..], file), &mut stats, sink).map(|()| stats);
    }
    read_with_pcap_file(&name, magic, Read::chain(&magic[..], file), &mut stats, sink).map(|()| stats)
}

fn read_with_pcap_file(
    name: &str,
    magic: [u8; 4],
    file: impl Read,
    stats: &mut ReadStats,
    sink: &mut dyn FnMut(FrameBatch) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut out = Batcher { batch: FrameBatch::with_capacity(BATCH_FRAMES, BATCH_BYTES), sink, scratch: Vec::new() };
    let read = read_records(name, magic, BufReader::with_capacity(1 << 20, file), stats, &mut out);
    // What was read before a damaged record still goes on.
    out.finish()?;
    read
}

/// A classic pcap file's byte order and timestamp unit, from its header.
#[derive(Clone, Copy, Debug)]
struct ClassicPcap {
    swapped: bool,
    nanos: bool,
    /// The largest record accepted: the file's snapshot length, at least 256 KiB.
    max_record: usize,
}

/// How much of a classic pcap file one read takes, and so one batch's buffer.
const READ_CHUNK: usize = 256 << 10;

impl ClassicPcap {
    fn magic(m: [u8; 4]) -> Option<Self> {
        let (swapped, nanos) = match u32::from_ne_bytes(m) {
            0xa1b2_c3d4 => (false, false),
            0xa1b2_3c4d => (false, true),
            0xd4c3_b2a1 => (true, false),
            0x4d3c_b2a1 => (true, true),
            _ => return None,
        };
        Some(Self { swapped, nanos, max_record: 0 })
    }

    fn word(&self, b: &[u8]) -> u32 {
        let w = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        if self.swapped {
            w.swap_bytes()
        } else {
            w
        }
    }

    /// Reads the rest of the file header (after the magic); whether the frames are
    /// Ethernet (the upper bits of the link type field say whether frames carry an FCS).
    fn ethernet(&mut self, rest: &[u8; 20]) -> bool {
        self.max_record = (self.word(&rest[12..16]) as usize).max(256 << 10);
        self.word(&rest[16..20]) & 0x0fff_ffff == 1
    }
}

/// Classic pcap of Ethernet frames (what tcpdump and the sensor itself write) is read
/// straight into batch buffers and its record headers rewritten in place to the batch's
/// form, so the kernel's copy from the page cache is the only one (with pcap-file and a
/// batch copy there were three; measured: 6% of `bench parse`).
fn read_classic(
    name: &str,
    pcap: &ClassicPcap,
    mut file: File,
    stats: &mut ReadStats,
    sink: &mut dyn FnMut(FrameBatch) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut number = 0u64;
    // The start of a record cut by the previous read.
    let mut carry: Vec<u8> = Vec::new();
    let mut want = READ_CHUNK;
    let pool = BatchPool::new(64);
    loop {
        // Every buffer at least READ_CHUNK: the pool only hands back a buffer as large as
        // asked, and buffers of mixed sizes were dropped and allocated afresh (page faults
        // and zeroing: 3% of `bench parse`).
        let need = READ_CHUNK.max(want).max(carry.len() + READ_CHUNK / 2);
        let (mut buf, mut records) = pool.take(READ_CHUNK / 64, need);
        buf.extend_from_slice(&carry);
        let room = (buf.capacity() - buf.len()) as u64;
        let got = (&mut file).take(room).read_to_end(&mut buf).with_context(|| format!("{name}: read failed"))?;
        let at_end = (got as u64) < room;
        let mut at = 0;
        // Where the next kept record goes: records refused for their time are squeezed out,
        // so the batch's bytes stay the kept records back to back.
        let mut kept_to = 0;
        let mut damaged = false;
        want = READ_CHUNK;
        while buf.len() - at >= PCAP_RECORD_HEADER {
            let h = &buf[at..at + PCAP_RECORD_HEADER];
            let (secs, frac, len, orig_len) =
                (pcap.word(&h[0..4]), pcap.word(&h[4..8]), pcap.word(&h[8..12]), pcap.word(&h[12..16]));
            let nanos = if pcap.nanos { frac } else { frac.saturating_mul(1000) };
            if len as usize > pcap.max_record || nanos >= 1_000_000_000 {
                damaged = true;
                break;
            }
            let total = PCAP_RECORD_HEADER + len as usize;
            if buf.len() - at < total {
                want = total;
                break;
            }
            number += 1;
            let ts = Duration::new(secs.into(), nanos);
            if !sane(ts) {
                stats.skipped_bad_time += 1;
                at += total;
                continue;
            }
            if kept_to != at {
                buf.copy_within(at..at + total, kept_to);
            }
            let w = kept_to;
            buf[w..w + 4].copy_from_slice(&secs.to_ne_bytes());
            buf[w + 4..w + 8].copy_from_slice(&nanos.to_ne_bytes());
            buf[w + 8..w + 12].copy_from_slice(&len.to_ne_bytes());
            buf[w + 12..w + 16].copy_from_slice(&orig_len.to_ne_bytes());
            stats.add(ts, len as usize);
            let start = (w + PCAP_RECORD_HEADER) as u32;
            records.push(RawRecord { timestamp_ns: ts.as_nanos() as u64, orig_len, start, len });
            at += total;
            kept_to += total;
        }
        carry = buf[at..].to_vec();
        buf.truncate(kept_to);
        if !records.is_empty() {
            let batch = FrameBatch::from_records(buf, records).context("a record outside its batch")?;
            sink(pool.recycle(batch))?;
        }
        if damaged || (at_end && !carry.is_empty()) {
            bail!(damaged_record(name, number + 1));
        }
        if at_end {
            return Ok(());
        }
    }
}

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// What a pcapng interface description says about the packets of that interface: their
/// link type, and how to read their timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Interface {
    link: DataLink,
    /// `if_tsresol`: bit 7 clear, a tick is 10^-n s; set, 2^-n s. Absent means 10^-6 (the
    /// pcapng spec, section 4.2): microseconds, what Wireshark, dumpcap and editcap write
    /// unless the capture had nanoseconds.
    tsresol: u8,
    /// `if_tsoffset`: seconds added to every timestamp of the interface.
    tsoffset: i64,
}

const DEFAULT_TSRESOL: u8 = 6;

impl Interface {
    fn of(block: &pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock<'_>) -> Self {
        use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption as Opt;
        let mut me = Self { link: block.linktype, tsresol: DEFAULT_TSRESOL, tsoffset: 0 };
        for option in &block.options {
            match option {
                Opt::IfTsResol(r) => me.tsresol = *r,
                // A signed number of seconds in the spec; pcap-file reads it unsigned.
                Opt::IfTsOffset(o) => me.tsoffset = *o as i64,
                _ => {}
            }
        }
        me
    }

    /// The time of a packet whose timestamp field holds `ticks` of this interface's
    /// resolution, or None when it falls outside what a Duration since 1970 can hold.
    fn time(&self, ticks: u64) -> Option<Duration> {
        let ticks = u128::from(ticks);
        let nanos = if self.tsresol & 0x80 == 0 {
            let exp = u32::from(self.tsresol);
            if exp <= 9 {
                ticks * 10u128.pow(9 - exp)
            } else {
                // 10^38 is the largest power of ten a u128 holds; finer ticks round to zero.
                ticks / 10u128.checked_pow(exp - 9)?
            }
        } else {
            // 2^-n s: ticks * 10^9 fits in 94 bits, so the product cannot overflow.
            let exp = u32::from(self.tsresol & 0x7f);
            (ticks * 1_000_000_000).checked_shr(exp).unwrap_or(0)
        };
        let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
        let sub = (nanos % 1_000_000_000) as u32;
        let secs = secs.checked_add_signed(self.tsoffset)?;
        Some(Duration::new(secs, sub))
    }
}

/// Interfaces of a pcapng section, and what a block means for the frames.
fn pcapng_block(
    block: &Block<'_>,
    interfaces: &mut Vec<Interface>,
    stats: &mut ReadStats,
    out: &mut Batcher<'_>,
) -> anyhow::Result<()> {
    let (ticks, orig_len, data, iface) = match block {
        Block::SectionHeader(_) => {
            interfaces.clear();
            return Ok(());
        }
        Block::InterfaceDescription(i) => {
            interfaces.push(Interface::of(i));
            return Ok(());
        }
        // pcap-file hands the raw 64-bit timestamp over as if it were nanoseconds; it is in
        // ticks of the interface's resolution, converted below.
        Block::EnhancedPacket(p) => (p.timestamp.as_nanos() as u64, p.original_len, &p.data, p.interface_id),
        Block::SimplePacket(p) => (0, p.original_len, &p.data, 0),
        _ => return Ok(()),
    };
    let Some(interface) = interfaces.get(iface as usize).copied().filter(|i| readable(i.link)) else {
        stats.skipped_link_type += 1;
        return Ok(());
    };
    let Some(ts) = interface.time(ticks).filter(|t| sane(*t)) else {
        stats.skipped_bad_time += 1;
        return Ok(());
    };
    stats.add(ts, data.len());
    out.push_link(interface.link, ts, orig_len, data)
}

fn check_pcap_link(name: &str, link: DataLink) -> anyhow::Result<()> {
    if !readable(link) {
        bail!(
            "{name}: link type {link:?} is not supported (the sensor reads Ethernet, raw IP and Linux cooked captures)"
        );
    }
    Ok(())
}

fn damaged_record(name: &str, n: u64) -> String {
    format!("{name}: record {n} is damaged (the file may be cut short)")
}

/// A capture from a stream.
fn read_records(
    name: &str,
    magic: [u8; 4],
    file: impl Read,
    stats: &mut ReadStats,
    out: &mut Batcher<'_>,
) -> anyhow::Result<()> {
    let mut n = 0u64;
    if magic == PCAPNG_MAGIC {
        let mut r = PcapNgReader::new(file).with_context(|| format!("{name}: not a valid pcapng file"))?;
        // The interfaces so far, by interface id (pcapng section order).
        let mut interfaces: Vec<Interface> = Vec::new();
        while let Some(block) = r.next_block() {
            n += 1;
            let block = block.with_context(|| format!("{name}: pcapng block {n} is damaged"))?;
            pcapng_block(&block, &mut interfaces, stats, out)?;
        }
    } else {
        let mut r = PcapReader::new(file).with_context(|| format!("{name}: neither a pcap nor a pcapng file"))?;
        let link = r.header().datalink;
        check_pcap_link(name, link)?;
        while let Some(packet) = r.next_packet() {
            n += 1;
            let p = packet.with_context(|| damaged_record(name, n))?;
            if !sane(p.timestamp) {
                stats.skipped_bad_time += 1;
                continue;
            }
            stats.add(p.timestamp, p.data.len());
            out.push_link(link, p.timestamp, p.orig_len, &p.data)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tap_testkit::mix;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tap-read-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn reads_every_frame_in_order_and_batches_them() {
        let frames: Vec<Vec<u8>> = mix::mix(30).into_iter().map(|l| l.frame).collect();
        let path = temp("mix.pcap");
        tap_testkit::pcap::write(&path, &frames, Duration::from_secs(1_700_000_000)).unwrap();
        let mut got = Vec::new();
        let mut batches = 0;
        let stats = read_file(&path, &mut |b| {
            batches += 1;
            got.extend(b.iter().map(|f| f.data.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, frames);
        assert_eq!(stats.frames, frames.len() as u64);
        assert_eq!(stats.first, Some(Duration::from_secs(1_700_000_000)));
        assert!(batches > 1, "{} frames fit one batch?", frames.len());
    }

    /// A classic pcap file by hand: either byte order, micro- or nanosecond timestamps.
    fn classic_file(big_endian: bool, nanos: bool, snaplen: u32, records: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let word = |v: u32| if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
        let half = |v: u16| if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut f = word(if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }).to_vec();
        f.extend(half(2));
        f.extend(half(4));
        f.extend([0u8; 8]);
        f.extend(word(snaplen));
        f.extend(word(1));
        for (secs, frac, data) in records {
            for v in [*secs, *frac, data.len() as u32, data.len() as u32 + 4] {
                f.extend(word(v));
            }
            f.extend_from_slice(data);
        }
        f
    }

    /// Every byte order and unit gives the same frames and times, records cut across reads
    /// included, and each batch's bytes are again valid pcap records (what `--write` and the
    /// evidence files take).
    #[test]
    fn classic_pcap_is_read_in_either_byte_order_and_unit() {
        // 4000 frames of 60 to 1514 bytes: about 3 MB, a dozen reads.
        let frames: Vec<Vec<u8>> =
            (0..4000u32).map(|i| (0..60 + (i * 37) % 1455).map(|b| (b ^ i) as u8).collect()).collect();
        for (big_endian, nanos) in [(false, false), (true, false), (false, true), (true, true)] {
            let recs: Vec<(u32, u32, &[u8])> = frames
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    // Every 500th dated 2106 (u32::MAX seconds): refused, and squeezed out.
                    let secs = if i % 500 == 499 { u32::MAX } else { 1_700_000_000 + i as u32 };
                    (secs, if nanos { i as u32 * 1000 + 7 } else { i as u32 }, &f[..])
                })
                .collect();
            let path = temp(&format!("classic-{big_endian}-{nanos}.pcap"));
            std::fs::write(&path, classic_file(big_endian, nanos, 65535, &recs)).unwrap();
            let mut got = Vec::new();
            let mut batches = 0;
            let stats = read_file(&path, &mut |b| {
                batches += 1;
                let mut at = 0;
                let rec = b.pcap_records();
                for f in b.iter() {
                    let word = |o: usize| u32::from_ne_bytes(rec[at + o..at + o + 4].try_into().unwrap());
                    assert_eq!(word(0) as u64 * 1_000_000_000 + word(4) as u64, f.timestamp_ns);
                    assert_eq!((word(8) as usize, word(12)), (f.data.len(), f.orig_len));
                    assert_eq!(&rec[at + 16..at + 16 + f.data.len()], f.data);
                    at += 16 + f.data.len();
                }
                assert_eq!(at, rec.len());
                got.extend(b.iter().map(|f| (f.timestamp_ns, f.orig_len, f.data.to_vec())));
                Ok(())
            })
            .unwrap();
            assert!(batches > 10, "{batches} batches");
            assert_eq!((stats.skipped_bad_time, stats.frames), (8, 3992));
            let want: Vec<_> = frames
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 500 != 499)
                .map(|(i, f)| {
                    (
                        (1_700_000_000 + i as u64) * 1_000_000_000 + i as u64 * 1000 + nanos as u64 * 7,
                        f.len() as u32 + 4,
                        f.clone(),
                    )
                })
                .collect();
            assert!(got == want, "big endian {big_endian}, nanoseconds {nanos}");
        }
    }

    /// A record longer than the file's snapshot length (and 256 KiB) or with a fraction of
    /// a second over one second is damage, and says which record.
    #[test]
    fn impossible_classic_records_are_damage() {
        let frame = [0u8; 100];
        let path = temp("huge.pcap");
        let mut file = classic_file(false, false, 65535, &[(1, 0, &frame), (2, 0, &frame)]);
        let second_len = 24 + 16 + 100 + 8;
        file[second_len..second_len + 4].copy_from_slice(&(300_000u32).to_le_bytes());
        std::fs::write(&path, &file).unwrap();
        let mut seen = 0;
        let err = read_file(&path, &mut |b| {
            seen += b.len();
            Ok(())
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("record 2 is damaged"), "{err:#}");
        assert_eq!(seen, 1);
        std::fs::write(&path, classic_file(true, false, 65535, &[(1, 0, &frame), (2, 1_000_000, &frame)])).unwrap();
        let err = read_file(&path, &mut |_| Ok(())).unwrap_err();
        assert!(format!("{err:#}").contains("record 2 is damaged"), "{err:#}");
    }

    #[test]
    fn damaged_files_say_where() {
        let path = temp("cut.pcap");
        let frames = vec![vec![0u8; 100]; 3];
        tap_testkit::pcap::write(&path, &frames, Duration::from_secs(1)).unwrap();
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 50]).unwrap();
        let mut seen = 0;
        let err = read_file(&path, &mut |b| {
            seen += b.len();
            Ok(())
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("record 3"), "{err:#}");
        assert_eq!(seen, 2, "frames before the damage are still passed on");
        std::fs::write(&path, b"not a capture at all").unwrap();
        let err = read_file(&path, &mut |_| Ok(())).unwrap_err();
        assert!(format!("{err:#}").contains("neither a pcap nor a pcapng"), "{err:#}");
        std::fs::write(&path, b"").unwrap();
        let err = read_file(&path, &mut |_| Ok(())).unwrap_err();
        assert!(format!("{err:#}").contains("cannot read a capture file header"), "{err:#}");
    }

    /// Raw IP and Linux cooked records come out as Ethernet frames with the right EtherType.
    #[test]
    fn raw_ip_and_linux_cooked_records_become_ethernet() {
        let ip4 = [0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        let mut ip6 = vec![0x60u8];
        ip6.extend([0u8; 39]);
        let mut sll = vec![0u8, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00];
        sll.extend(ip4);
        let mut got = Vec::new();
        let mut sink = |b: FrameBatch| {
            got.extend(b.iter().map(|f| (f.data.to_vec(), f.orig_len)));
            Ok(())
        };
        let mut out = Batcher { batch: FrameBatch::with_capacity(8, 4096), sink: &mut sink, scratch: Vec::new() };
        let t = Duration::ZERO;
        out.push_link(DataLink::RAW, t, 20, &ip4).unwrap();
        out.push_link(DataLink::IPV6, t, 40, &ip6).unwrap();
        out.push_link(DataLink::LINUX_SLL, t, 36, &sll).unwrap();
        out.push_link(DataLink::RAW, t, 2, &[0x10, 0]).unwrap();
        out.finish().unwrap();
        let eth = |ty: [u8; 2], l3: &[u8]| [&[0u8; 12][..], &ty, l3].concat();
        assert_eq!(got, vec![(eth([8, 0], &ip4), 34), (eth([0x86, 0xdd], &ip6), 54), (eth([8, 0], &ip4), 34)]);
        assert!(readable(DataLink::LINUX_SLL) && !readable(DataLink::IEEE802_11));
    }

    /// A pipe (opened once, its header not read twice) gives the same frames as the file.
    #[test]
    fn a_pipe_gives_the_same_frames_as_the_file() {
        let frames: Vec<Vec<u8>> = mix::mix(5).into_iter().map(|l| l.frame).collect();
        let path = temp("piped.pcap");
        tap_testkit::pcap::write(&path, &frames, Duration::from_secs(1_700_000_000)).unwrap();
        let fifo = temp("fifo");
        let _ = std::fs::remove_file(&fifo);
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let writer = {
            let (path, fifo) = (path.clone(), fifo.clone());
            std::thread::spawn(move || std::fs::write(fifo, std::fs::read(path).unwrap()).unwrap())
        };
        let mut got = Vec::new();
        let stats = read_file(&fifo, &mut |b| {
            got.extend(b.iter().map(|f| f.data.to_vec()));
            Ok(())
        })
        .unwrap();
        writer.join().unwrap();
        assert_eq!(got, frames);
        assert_eq!(stats.frames, frames.len() as u64);
    }

    /// A pcapng block: type, total length, body padded to 32 bits, total length.
    fn pcapng_block_bytes(kind: u32, body: &[u8]) -> Vec<u8> {
        let padded = body.len().div_ceil(4) * 4;
        let total = (12 + padded) as u32;
        let mut b = kind.to_le_bytes().to_vec();
        b.extend(total.to_le_bytes());
        b.extend(body);
        b.resize(8 + padded, 0);
        b.extend(total.to_le_bytes());
        b
    }

    /// An interface description (Ethernet) with optional if_tsresol (code 9) and
    /// if_tsoffset (code 14).
    fn idb(tsresol: Option<u8>, tsoffset: Option<i64>) -> Vec<u8> {
        let mut body = 1u16.to_le_bytes().to_vec();
        body.extend([0, 0]);
        body.extend(65535u32.to_le_bytes());
        if let Some(r) = tsresol {
            body.extend(9u16.to_le_bytes());
            body.extend(1u16.to_le_bytes());
            body.extend([r, 0, 0, 0]);
        }
        if let Some(o) = tsoffset {
            body.extend(14u16.to_le_bytes());
            body.extend(8u16.to_le_bytes());
            body.extend(o.to_le_bytes());
        }
        body.extend([0, 0, 0, 0]);
        pcapng_block_bytes(1, &body)
    }

    fn epb(interface: u32, ticks: u64, data: &[u8]) -> Vec<u8> {
        let mut body = interface.to_le_bytes().to_vec();
        body.extend(((ticks >> 32) as u32).to_le_bytes());
        body.extend((ticks as u32).to_le_bytes());
        body.extend((data.len() as u32).to_le_bytes());
        body.extend((data.len() as u32).to_le_bytes());
        body.extend(data);
        pcapng_block_bytes(6, &body)
    }

    /// Each interface's if_tsresol (absent: microseconds; powers of ten and of two) and
    /// if_tsoffset date its packets; a time that cannot be represented is counted, not
    /// read as 1970 or wrapped.
    #[test]
    fn pcapng_times_follow_each_interfaces_resolution_and_offset() {
        let frame = mix::mix(1).remove(0).frame;
        let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
        shb.extend(1u16.to_le_bytes());
        shb.extend(0u16.to_le_bytes());
        shb.extend((-1i64).to_le_bytes());
        let mut file = pcapng_block_bytes(0x0a0d_0d0a, &shb);
        file.extend(idb(None, None));
        file.extend(idb(Some(9), None));
        file.extend(idb(Some(0x80 | 20), None));
        file.extend(idb(Some(6), Some(1_000_000_000)));
        file.extend(idb(Some(0), Some(i64::MIN)));
        file.extend(epb(0, 1_700_000_000_123_456, &frame));
        file.extend(epb(1, 1_700_000_000_123_456_789, &frame));
        file.extend(epb(2, (1_700_000_000u64 << 20) | (1 << 19), &frame));
        file.extend(epb(3, 700_000_000_000_001, &frame));
        file.extend(epb(4, 5, &frame));
        // 2^63 ns (read as i64::MIN once signed) and 2100-01-01: no clock gives these.
        file.extend(epb(1, 1 << 63, &frame));
        file.extend(epb(1, LATEST_FRAME_SECS * 1_000_000_000, &frame));
        let path = temp("times.pcapng");
        std::fs::write(&path, &file).unwrap();
        let mut times = Vec::new();
        let stats = read_file(&path, &mut |b| {
            times.extend(b.iter().map(|f| f.timestamp_ns));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            times,
            vec![
                1_700_000_000_123_456_000,
                1_700_000_000_123_456_789,
                1_700_000_000_500_000_000,
                1_700_000_000_000_001_000
            ]
        );
        assert_eq!(stats.skipped_bad_time, 3);
        assert_eq!(stats.frames, 4);
    }

    #[test]
    fn tick_conversion_cannot_overflow() {
        for tsresol in [0u8, 1, 6, 9, 10, 19, 38, 39, 127, 0x80, 0x80 | 30, 0x80 | 64, 0xff] {
            for tsoffset in [0, i64::MIN, i64::MAX, -1] {
                let i = Interface { link: DataLink::ETHERNET, tsresol, tsoffset };
                for ticks in [0, 1, u64::MAX] {
                    let _ = i.time(ticks);
                }
            }
        }
        let seconds = Interface { link: DataLink::ETHERNET, tsresol: 0, tsoffset: 0 };
        assert_eq!(seconds.time(u64::MAX), Some(Duration::from_secs(u64::MAX)));
        assert_eq!(Interface { tsoffset: -1, ..seconds }.time(0), None);
    }
}

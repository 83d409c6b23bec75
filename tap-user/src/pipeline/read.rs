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

use crate::frames::{FrameBatch, BATCH_BYTES, BATCH_FRAMES};

/// What was read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub frames: u64,
    pub bytes: u64,
    pub first: Option<Duration>,
    pub last: Option<Duration>,
    /// Frames skipped because their interface is not Ethernet (pcapng may mix link types).
    pub skipped_link_type: u64,
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
/// Measured and left out: memory-mapping the file instead saved about 5% of the CPU of
/// `bench parse` and made the resident size grow to the file's size.
pub fn read_file(path: &Path, sink: &mut dyn FnMut(FrameBatch) -> anyhow::Result<()>) -> anyhow::Result<ReadStats> {
    let name = path.display().to_string();
    let file = File::open(path).with_context(|| format!("open {name}"))?;
    let mut stats = ReadStats::default();
    let mut out = Batcher { batch: FrameBatch::with_capacity(BATCH_FRAMES, BATCH_BYTES), sink, scratch: Vec::new() };
    let mut file = BufReader::with_capacity(1 << 20, file);
    // The file is opened once: a pipe cannot be read twice.
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).with_context(|| format!("{name}: cannot read a capture file header"))?;
    let read = read_records(&name, magic, Read::chain(&magic[..], file), &mut stats, &mut out);
    // What was read before a damaged record still goes on.
    out.finish()?;
    read.map(|()| stats)
}

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Interface link types of a pcapng section, and what a block means for the frames.
fn pcapng_block(
    block: &Block<'_>,
    links: &mut Vec<DataLink>,
    stats: &mut ReadStats,
    out: &mut Batcher<'_>,
) -> anyhow::Result<()> {
    let (ts, orig_len, data, iface) = match block {
        Block::SectionHeader(_) => {
            links.clear();
            return Ok(());
        }
        Block::InterfaceDescription(i) => {
            links.push(i.linktype);
            return Ok(());
        }
        Block::EnhancedPacket(p) => (p.timestamp, p.original_len, &p.data, p.interface_id),
        Block::SimplePacket(p) => (Duration::ZERO, p.original_len, &p.data, 0),
        _ => return Ok(()),
    };
    let Some(link) = links.get(iface as usize).copied().filter(|l| readable(*l)) else {
        stats.skipped_link_type += 1;
        return Ok(());
    };
    stats.add(ts, data.len());
    out.push_link(link, ts, orig_len, data)
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
        // Link types of the interfaces so far, by interface id (pcapng section order).
        let mut links: Vec<DataLink> = Vec::new();
        while let Some(block) = r.next_block() {
            n += 1;
            let block = block.with_context(|| format!("{name}: pcapng block {n} is damaged"))?;
            pcapng_block(&block, &mut links, stats, out)?;
        }
    } else {
        let mut r = PcapReader::new(file).with_context(|| format!("{name}: neither a pcap nor a pcapng file"))?;
        let link = r.header().datalink;
        check_pcap_link(name, link)?;
        while let Some(packet) = r.next_packet() {
            n += 1;
            let p = packet.with_context(|| damaged_record(name, n))?;
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
}

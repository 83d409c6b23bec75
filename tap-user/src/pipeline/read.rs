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
}

impl Batcher<'_> {
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

/// Reads every Ethernet frame of `path` and passes them on in batches. Fails with the
/// record number on a damaged file, after passing on everything before it.
pub fn read_file(path: &Path, sink: &mut dyn FnMut(FrameBatch) -> anyhow::Result<()>) -> anyhow::Result<ReadStats> {
    let name = path.display();
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .with_context(|| format!("{name}: cannot read a capture file header"))?;
    let file = BufReader::with_capacity(1 << 20, File::open(path).with_context(|| format!("open {name}"))?);
    let mut stats = ReadStats::default();
    let mut out = Batcher { batch: FrameBatch::with_capacity(BATCH_FRAMES, BATCH_BYTES), sink };
    let read = read_records(&name.to_string(), magic, file, &mut stats, &mut out);
    // What was read before a damaged record still goes on.
    out.finish()?;
    read.map(|()| stats)
}

fn read_records(
    name: &str,
    magic: [u8; 4],
    file: BufReader<File>,
    stats: &mut ReadStats,
    out: &mut Batcher<'_>,
) -> anyhow::Result<()> {
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut r = PcapNgReader::new(file).with_context(|| format!("{name}: not a valid pcapng file"))?;
        let mut n = 0u64;
        // Link types of the interfaces so far, by interface id (pcapng section order).
        let mut links: Vec<DataLink> = Vec::new();
        while let Some(block) = r.next_block() {
            n += 1;
            let block = block.with_context(|| format!("{name}: pcapng block {n} is damaged"))?;
            let (ts, orig_len, data, iface) = match &block {
                Block::SectionHeader(_) => {
                    links.clear();
                    continue;
                }
                Block::InterfaceDescription(i) => {
                    links.push(i.linktype);
                    continue;
                }
                Block::EnhancedPacket(p) => (p.timestamp, p.original_len, &p.data, p.interface_id),
                Block::SimplePacket(p) => (Duration::ZERO, p.original_len, &p.data, 0),
                _ => continue,
            };
            let link = links.get(iface as usize).copied();
            if link != Some(DataLink::ETHERNET) {
                stats.skipped_link_type += 1;
                continue;
            }
            stats.add(ts, data.len());
            out.push(ts, orig_len, data)?;
        }
    } else {
        let mut r = PcapReader::new(file).with_context(|| format!("{name}: neither a pcap nor a pcapng file"))?;
        let link = r.header().datalink;
        if link != DataLink::ETHERNET {
            bail!("{name}: link type {link:?} is not supported (the sensor reads Ethernet captures)");
        }
        let mut n = 0u64;
        while let Some(packet) = r.next_packet() {
            n += 1;
            let p = packet.with_context(|| format!("{name}: record {n} is damaged (the file may be cut short)"))?;
            stats.add(p.timestamp, p.data.len());
            out.push(p.timestamp, p.orig_len, &p.data)?;
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
    }
}

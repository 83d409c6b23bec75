//! Reading and writing classic pcap files of Ethernet frames.

use std::{fs::File, io::BufReader, io::BufWriter, path::Path, time::Duration};

use anyhow::Context as _;
use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter},
    pcapng::{Block, PcapNgReader},
    DataLink,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcapFrame {
    pub timestamp: Duration,
    pub orig_len: u32,
    pub data: Vec<u8>,
}

/// Writes frames 1 ms apart starting at `start`.
pub fn write(path: &Path, frames: &[Vec<u8>], start: Duration) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let header = PcapHeader { datalink: DataLink::ETHERNET, snaplen: 65535, ..PcapHeader::default() };
    let mut w = PcapWriter::with_header(BufWriter::new(file), header)?;
    for (i, f) in frames.iter().enumerate() {
        let ts = start + Duration::from_millis(i as u64);
        w.write_packet(&PcapPacket::new(ts, f.len() as u32, f))?;
    }
    Ok(())
}

/// Writes (time, frame) pairs as they come, without holding them all.
pub fn write_stream(path: &Path, frames: impl Iterator<Item = (Duration, Vec<u8>)>) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let header = PcapHeader { datalink: DataLink::ETHERNET, snaplen: 65535, ..PcapHeader::default() };
    let mut w = PcapWriter::with_header(BufWriter::with_capacity(1 << 20, file), header)?;
    for (ts, f) in frames {
        w.write_packet(&PcapPacket::new(ts, f.len() as u32, &f))?;
    }
    Ok(())
}

/// Writes frames as they were read (`read`): their own times and lengths, so a capture
/// can be written back with some frames taken out.
pub fn write_frames(path: &Path, frames: &[PcapFrame]) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let header = PcapHeader { datalink: DataLink::ETHERNET, snaplen: 65535, ..PcapHeader::default() };
    let mut w = PcapWriter::with_header(BufWriter::new(file), header)?;
    for f in frames {
        w.write_packet(&PcapPacket::new(f.timestamp, f.orig_len, &f.data))?;
    }
    Ok(())
}

/// Reads every frame of a pcap or pcapng file (Ethernet link type).
pub fn read(path: &Path) -> anyhow::Result<Vec<PcapFrame>> {
    let mut magic = [0u8; 4];
    {
        use std::io::Read as _;
        File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .with_context(|| format!("read {}", path.display()))?;
    }
    let file = BufReader::new(File::open(path)?);
    let mut out = Vec::new();
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut r = PcapNgReader::new(file).with_context(|| format!("pcapng header of {}", path.display()))?;
        while let Some(block) = r.next_block() {
            if let Block::EnhancedPacket(p) = block.with_context(|| format!("pcapng block in {}", path.display()))? {
                out.push(PcapFrame { timestamp: p.timestamp, orig_len: p.original_len, data: p.data.into_owned() });
            }
        }
    } else {
        let mut r = PcapReader::new(file).with_context(|| format!("pcap header of {}", path.display()))?;
        while let Some(p) = r.next_packet() {
            let p = p.with_context(|| format!("pcap record in {}", path.display()))?;
            out.push(PcapFrame { timestamp: p.timestamp, orig_len: p.orig_len, data: p.data.into_owned() });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips() {
        let dir = std::env::temp_dir().join(format!("tap-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rt.pcap");
        let frames = vec![vec![1u8; 60], vec![2u8; 1514]];
        write(&path, &frames, Duration::from_secs(1_700_000_000)).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.iter().map(|f| f.data.clone()).collect::<Vec<_>>(), frames);
        assert_eq!(back[1].timestamp - back[0].timestamp, Duration::from_millis(1));
        assert_eq!(back[1].orig_len, 1514);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! Writing kept frames as a classic pcap file (nanosecond timestamps, Ethernet link type).

use std::{fs::File, io::BufWriter, io::Write, path::Path};

use anyhow::Context as _;
use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    DataLink, TsResolution,
};

use crate::capture::reader::FrameBatch;
use crate::time::WallClock;

pub struct PcapSink {
    writer: PcapWriter<BufWriter<File>>,
    clock: WallClock,
}

impl PcapSink {
    pub fn create(path: &Path, clock: WallClock) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
        let header = PcapHeader {
            snaplen: 65535,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::NanoSecond,
            ..PcapHeader::default()
        };
        let writer = PcapWriter::with_header(BufWriter::with_capacity(1 << 20, file), header)
            .with_context(|| format!("write pcap header to {}", path.display()))?;
        Ok(Self { writer, clock })
    }

    pub fn write_batch(&mut self, batch: &FrameBatch) -> anyhow::Result<()> {
        for frame in batch.iter() {
            let packet = PcapPacket::new(
                self.clock.to_unix(frame.timestamp_ns),
                frame.orig_len,
                frame.data,
            );
            self.writer
                .write_packet(&packet)
                .context("write pcap record")?;
        }
        Ok(())
    }

    pub fn finish(self) -> anyhow::Result<()> {
        let mut inner = self.writer.into_writer();
        inner.flush().context("flush pcap")?;
        Ok(())
    }
}

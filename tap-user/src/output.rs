//! Writing kept frames as a classic pcap file (nanosecond timestamps, Ethernet link type,
//! native byte order). pcap-file writes the file header; the records arrive already
//! encoded in the batch (see `FrameBatch`), so a batch is one write, straight from the
//! batch: a batch is already a large write, and copying it into a buffer first was a
//! quarter of the recorder's CPU.

use std::{
    fs::File,
    io::{IoSlice, Write},
    path::Path,
};

use anyhow::Context as _;
use pcap_file::{pcap::PcapHeader, DataLink, Endianness, TsResolution};

use crate::frames::FrameBatch;

pub struct PcapSink {
    out: File,
}

impl PcapSink {
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let mut out = File::create(path).with_context(|| format!("create {}", path.display()))?;
        let header = PcapHeader {
            snaplen: 65535,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::NanoSecond,
            endianness: if cfg!(target_endian = "big") { Endianness::Big } else { Endianness::Little },
            ..PcapHeader::default()
        };
        header.write_to(&mut out).with_context(|| format!("write pcap header to {}", path.display()))?;
        Ok(Self { out })
    }

    pub fn write_batch(&mut self, batch: &FrameBatch) -> anyhow::Result<()> {
        self.out.write_all(batch.pcap_records()).context("write pcap records")
    }

    /// Writes `slices` (pcap record headers and frames, in file order) with as few
    /// writev(2) calls as the kernel allows: the recorder writes frames straight from the
    /// ring's memory this way, without copying them into a buffer first.
    pub fn write_slices(&mut self, mut slices: &mut [IoSlice<'_>]) -> anyhow::Result<()> {
        while !slices.is_empty() {
            match self.out.write_vectored(slices) {
                Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero)).context("write pcap records"),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("write pcap records"),
            }
        }
        Ok(())
    }

    pub fn finish(mut self) -> anyhow::Result<()> {
        self.out.flush().context("flush pcap")
    }
}

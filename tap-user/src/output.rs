//! Writing kept frames as a classic pcap file (nanosecond timestamps, Ethernet link type,
//! native byte order). pcap-file writes the file header; the records arrive already
//! encoded in the batch (see `FrameBatch`), so a batch is one write, straight from the
//! batch: a batch is already a large write, and copying it into a buffer first was a
//! quarter of the recorder's CPU.

use std::{
    fs::{File, OpenOptions},
    io::{IoSlice, Write},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::Context as _;
use pcap_file::{pcap::PcapHeader, DataLink, Endianness, TsResolution};

use crate::frames::FrameBatch;

pub struct PcapSink {
    out: File,
}

impl PcapSink {
    /// Creates (or empties) the file at `path`. The frames hold whatever the DCs' traffic
    /// holds (hashes, tickets, cleartext binds), so the file is the sensor's alone (0600)
    /// whatever the umask, and an existing one open to others is restricted.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("create {}", path.display()))?;
        let meta = out.metadata().with_context(|| format!("create {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        // Only a regular file: --write /dev/stdout must not change the terminal's mode.
        if meta.is_file() && mode & 0o077 != 0 {
            out.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))
                .with_context(|| format!("restrict {} to the sensor's user (mode {mode:o})", path.display()))?;
            log::warn!("{} was open to others (mode {mode:o}); now {:o}", path.display(), mode & 0o700);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capture_file_is_the_sensors_alone_whatever_the_umask() {
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // SAFETY: umask only sets this process's file creation mask; 022 is the usual one,
        // which leaves new files readable by all.
        unsafe { libc::umask(0o022) };
        let dir = std::env::temp_dir().join(format!("dctap-pcap-modes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let new = dir.join("new.pcap");
        PcapSink::create(&new).unwrap().finish().unwrap();
        assert_eq!(mode(&new), 0o600);
        let old = dir.join("old.pcap");
        std::fs::write(&old, b"an earlier capture").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        PcapSink::create(&old).unwrap().finish().unwrap();
        assert_eq!(mode(&old), 0o600);
        assert_eq!(std::fs::metadata(&old).unwrap().len(), 24, "emptied: only the pcap header");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! Counters of the capture stage: the XDP program's per-CPU counters summed over CPUs, and
//! the userspace readers' own.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, MapError, PerCpuArray};
use tap_common::counters::{Counter, CounterSet};

/// A snapshot of the XDP program's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpCounters([u64; Counter::COUNT as usize]);

impl XdpCounters {
    pub fn read(map: &PerCpuArray<MapData, CounterSet>) -> Result<Self, MapError> {
        let mut out = Self::default();
        for cpu in map.get(&0, 0)?.iter() {
            for (sum, v) in out.0.iter_mut().zip(cpu.values) {
                *sum += v;
            }
        }
        Ok(out)
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }
}

/// Counters of the ring readers and the consumer. Relaxed atomics: they are statistics,
/// read after the threads are joined or for a SIGUSR1 snapshot.
#[derive(Debug, Default)]
pub struct UserCounters {
    /// Records taken from the rings.
    pub frames_read: AtomicU64,
    pub bytes_read: AtomicU64,
    /// Records whose header did not fit the record (never expected; counted, not trusted).
    pub records_invalid: AtomicU64,
    /// Frames dropped because the consumer's channel was full (capture never waits).
    pub frames_channel_full: AtomicU64,
    /// Frames handed to the consumer (pcap writer or, later, the pipeline).
    pub frames_consumed: AtomicU64,
}

impl UserCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn rows(&self) -> [(&'static str, u64); 5] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("user_frames_read", g(&self.frames_read)),
            ("user_bytes_read", g(&self.bytes_read)),
            ("user_records_invalid", g(&self.records_invalid)),
            ("user_frames_channel_full", g(&self.frames_channel_full)),
            ("user_frames_consumed", g(&self.frames_consumed)),
        ]
    }
}

/// Both halves, printed one `name value` pair per line so scripts and tests can read it.
pub struct CaptureReport<'a> {
    pub xdp: XdpCounters,
    pub user: &'a UserCounters,
}

impl fmt::Display for CaptureReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in Counter::ALL {
            writeln!(f, "{:<26}{:>14}", format!("xdp_{}", c.name()), self.xdp.get(c))?;
        }
        for (name, value) in self.user.rows() {
            writeln!(f, "{name:<26}{value:>14}")?;
        }
        Ok(())
    }
}

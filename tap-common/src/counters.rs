//! Per-CPU frame counters kept by the XDP program.
//!
//! Each frame increments `Seen` and exactly one of `Kept`, `Filtered`, `Malformed`;
//! `RingFull` is a subset of kept-by-filter frames that could not be queued (they are
//! counted there and not in `Kept`), `Truncated` a subset of `Kept`.

/// Index of a counter in the per-CPU `COUNTERS` array. Values are part of the map layout:
/// never reuse or renumber one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every frame the program ran on.
    Seen = 0,
    /// Frames queued to userspace.
    Kept = 1,
    /// Well-formed frames that are not DC traffic on a service port (including non-IP).
    Filtered = 2,
    /// DC frames lost because the ring buffer had no room.
    RingFull = 3,
    /// Kept frames longer than the snap length (queued with their first `snaplen` bytes).
    Truncated = 4,
    /// Frames whose headers are cut short or inconsistent (bad IHL, runt, bad ext header).
    Malformed = 5,
}

impl Counter {
    /// Number of entries in the `COUNTERS` map.
    pub const COUNT: u32 = 6;

    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Seen,
        Counter::Kept,
        Counter::Filtered,
        Counter::RingFull,
        Counter::Truncated,
        Counter::Malformed,
    ];

    /// Name used in logs and metrics (`tap_xdp_frames_total{reason=…}`).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Seen => "seen",
            Counter::Kept => "kept",
            Counter::Filtered => "filtered",
            Counter::RingFull => "ring_full",
            Counter::Truncated => "truncated",
            Counter::Malformed => "malformed",
        }
    }
}

/// Name of the per-CPU counter array.
pub const COUNTERS_MAP: &str = "COUNTERS";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_indices_are_dense_and_stable() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32, "{} out of place", c.name());
        }
        // The map layout is an ABI between the two halves; these values must not move.
        assert_eq!(Counter::Seen as u32, 0);
        assert_eq!(Counter::Malformed as u32, 5);
    }
}

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

    pub const ALL: [Counter; Self::COUNT as usize] =
        [Counter::Seen, Counter::Kept, Counter::Filtered, Counter::RingFull, Counter::Truncated, Counter::Malformed];

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

/// All counters of one CPU, in one per-CPU map slot: the program looks the slot up once per
/// frame instead of once per counter it touches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSet {
    pub values: [u64; Counter::COUNT as usize],
}

impl CounterSet {
    #[inline(always)]
    pub fn bump(&mut self, c: Counter) {
        self.values[c as usize] += 1;
    }
}

/// Name of the per-CPU map holding one `CounterSet` per CPU (a single slot, index 0).
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
        assert_eq!(core::mem::size_of::<CounterSet>(), 8 * Counter::COUNT as usize);
    }

    #[test]
    fn bump_touches_only_its_counter() {
        let mut set = CounterSet::default();
        set.bump(Counter::Kept);
        set.bump(Counter::Kept);
        set.bump(Counter::Malformed);
        assert_eq!(set.values, [0, 2, 0, 0, 0, 1]);
    }
}

//! Live settings of the XDP program, one `u32` slot each in the `CONFIG` array map, so
//! userspace can change them without reloading the program.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSlot {
    /// Bytes of each kept frame copied to userspace (clamped to `record::MAX_SNAPLEN`).
    Snaplen = 0,
    /// Bit set of `FLAG_*`: which optional lookups are needed.
    Flags = 1,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC in nanoseconds, low and high 32 bits: what the
    /// program adds to `bpf_ktime_get_ns()` to stamp records with wall-clock time. Set
    /// once, before the program is attached, so every frame of a run shares one time base
    /// (a wall-clock step mid-run does not reorder them) and the two halves never tear.
    ClockOffsetLow = 2,
    ClockOffsetHigh = 3,
}

impl ConfigSlot {
    pub const COUNT: u32 = 4;
}

/// The IPv4 subnet trie has entries (otherwise its lookup is skipped: a trie walk costs
/// more than the exact-match hash lookup, and most deployments list DCs one by one).
pub const FLAG_V4_NETS: u32 = 1 << 0;
/// The IPv6 subnet trie has entries.
pub const FLAG_V6_NETS: u32 = 1 << 1;

pub const CONFIG_MAP: &str = "CONFIG";

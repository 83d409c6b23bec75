//! The time base of the XDP program's timestamps: what turns its CLOCK_MONOTONIC clock
//! into wall-clock time.

use std::time::Duration;

fn read_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Offset between CLOCK_REALTIME and CLOCK_MONOTONIC, sampled once per capture run so all
/// frames of a run share one time base (a wall-clock step mid-run does not reorder them).
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    realtime_minus_monotonic_ns: u64,
}

impl WallClock {
    pub fn sample() -> Self {
        let mono = read_clock(libc::CLOCK_MONOTONIC);
        let real = read_clock(libc::CLOCK_REALTIME);
        Self { realtime_minus_monotonic_ns: real.saturating_sub(mono).as_nanos() as u64 }
    }

    /// What the XDP program adds to `bpf_ktime_get_ns()` (see `ConfigSlot::ClockOffsetLow`).
    pub fn realtime_minus_monotonic_ns(self) -> u64 {
        self.realtime_minus_monotonic_ns
    }
}

/// Wall-clock time now, in nanoseconds since the Unix epoch.
pub fn unix_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn monotonic_now_maps_to_wall_clock_now() {
        let clock = WallClock::sample();
        let now_mono = read_clock(libc::CLOCK_MONOTONIC).as_nanos() as u64;
        let wall = SystemTime::UNIX_EPOCH + Duration::from_nanos(now_mono + clock.realtime_minus_monotonic_ns());
        let skew = SystemTime::now().duration_since(wall).unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_millis(100), "skew {skew:?}");
    }
}

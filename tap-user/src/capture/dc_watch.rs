//! "No traffic from a monitored DC": when each DC entry last sent a frame.
//!
//! A DC that falls silent on the mirror port usually means the SPAN session lost it (a
//! changed source port, a one-direction mirror, a DC moved to another switch), not that
//! the DC stopped working; either way the sensor no longer sees its logons, so it is a
//! health alert. Only frames *from* the DC count: a mirror that carries requests but no
//! replies is one of the faults this is meant to catch.
//!
//! The dispatcher marks entries as seen; the control loop closes a period about once a
//! second. Within a period the dispatcher looks at frames only until every entry has been
//! seen, so on a healthy port the check costs a few frames per second.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use super::filter::{DcEntry, DcSet};
use crate::frames::FrameBatch;

/// The source address of an Ethernet frame, through up to two VLAN tags. While a DC is
/// silent the watch looks at every frame, so this reads two fields instead of decoding the
/// headers (a full decode was 15% of the recorder's CPU).
fn source_address(f: &[u8]) -> Option<IpAddr> {
    let (ethertype, at, _) = crate::decode::link_layer(f)?;
    let ip = f.get(at..)?;
    match (ethertype, ip.first()? >> 4) {
        (0x0800, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(ip.get(12..16)?).ok()?)),
        (0x86dd, 6) => Some(IpAddr::from(<[u8; 16]>::try_from(ip.get(8..24)?).ok()?)),
        _ => None,
    }
}

struct Watched {
    entry: DcEntry,
    seen_in_period: bool,
    last_seen: Instant,
}

pub struct DcWatch {
    /// Entries not yet seen in the current period; 0 lets the dispatcher skip the batch.
    unseen: AtomicUsize,
    entries: Mutex<Vec<Watched>>,
}

impl DcWatch {
    /// Every entry counts as seen at `now`: a DC gets the full silence period after the
    /// sensor starts before it is reported.
    pub fn new(dcs: &DcSet, now: Instant) -> Self {
        let entries: Vec<Watched> =
            dcs.entries().into_iter().map(|entry| Watched { entry, seen_in_period: false, last_seen: now }).collect();
        Self { unseen: AtomicUsize::new(entries.len()), entries: Mutex::new(entries) }
    }

    /// Marks the entries whose address sent one of these frames.
    pub fn observe(&self, batch: &FrameBatch) {
        self.observe_frames(batch.iter().map(|f| f.data));
    }

    /// Marks the entries whose address sent one of these frames (Ethernet, from byte 0).
    pub fn observe_frames<'a>(&self, frames: impl IntoIterator<Item = &'a [u8]>) {
        if self.unseen.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else { return };
        for frame in frames {
            if let Some(source) = source_address(frame) {
                self.mark(&mut entries, source);
            }
            if self.unseen.load(Ordering::Relaxed) == 0 {
                break;
            }
        }
    }

    fn mark(&self, entries: &mut [Watched], source: IpAddr) {
        for w in entries.iter_mut().filter(|w| !w.seen_in_period && w.entry.contains(source)) {
            w.seen_in_period = true;
            self.unseen.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Replaces the watched set (a reload); entries that stay keep their history, new ones
    /// start as seen at `now`.
    pub fn set_dcs(&self, dcs: &DcSet, now: Instant) {
        let Ok(mut entries) = self.entries.lock() else { return };
        let next: Vec<Watched> = dcs
            .entries()
            .into_iter()
            .map(|entry| {
                let last_seen = entries.iter().find(|w| w.entry == entry).map_or(now, |w| w.last_seen);
                Watched { entry, seen_in_period: false, last_seen }
            })
            .collect();
        self.unseen.store(next.len(), Ordering::Relaxed);
        *entries = next;
    }

    /// Closes the current period at `now` and returns the entries that sent nothing for
    /// `after` or longer.
    pub fn silent(&self, now: Instant, after: Duration) -> Vec<DcEntry> {
        let Ok(mut entries) = self.entries.lock() else { return Vec::new() };
        let mut silent = Vec::new();
        for w in entries.iter_mut() {
            if w.seen_in_period {
                w.last_seen = now;
                w.seen_in_period = false;
            } else if now.saturating_duration_since(w.last_seen) >= after {
                silent.push(w.entry);
            }
        }
        self.unseen.store(entries.len(), Ordering::Relaxed);
        silent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tap_testkit::frame::{self, Tags, L4};

    /// The two-field read agrees with the full decoder on every frame of the labelled mix
    /// (tags, QinQ, IPv6 with extension headers, fragments, runts, malformed frames).
    #[test]
    fn source_address_agrees_with_the_decoder() {
        let mix = tap_testkit::mix::mix(3);
        let mut compared = 0;
        for l in &mix {
            let decoded = crate::pipeline::ip_addresses(&l.frame).map(|(src, _)| src);
            if decoded.is_some() {
                compared += 1;
            }
            // A frame too damaged to decode may still show its source address.
            if decoded.is_some() || source_address(&l.frame).is_none() {
                assert_eq!(source_address(&l.frame), decoded, "{:02x?}", l.frame);
            }
        }
        assert!(compared > mix.len() / 2, "{compared} of {}", mix.len());
    }

    fn batch(frames: &[Vec<u8>]) -> FrameBatch {
        let mut b = FrameBatch::with_capacity(frames.len(), 64 << 10);
        for (i, f) in frames.iter().enumerate() {
            b.push_frame(Duration::from_millis(i as u64), f.len() as u32, f);
        }
        b
    }

    #[test]
    fn a_dc_that_only_receives_is_reported_once_the_period_has_passed() {
        let dcs = DcSet::parse_list("10.0.0.10,10.0.0.11,10.9.0.0/16,fd00::10", "--dc").unwrap();
        let start = Instant::now();
        let watch = DcWatch::new(&dcs, start);
        let client = "10.1.0.5".parse().unwrap();
        let tcp = L4::Tcp { src: 88, dst: 40000 };
        let frames = [
            // 10.0.0.10 answers; 10.0.0.11 is only written to; a DC of the subnet answers;
            // the IPv6 DC says nothing.
            frame::ipv4(Tags::Dot1Q(5), "10.0.0.10".parse().unwrap(), client, tcp, 10, 1),
            frame::ipv4(Tags::None, client, "10.0.0.11".parse().unwrap(), L4::Tcp { src: 40000, dst: 88 }, 10, 2),
            frame::ipv4(Tags::QinQ(1, 2), "10.9.4.4".parse().unwrap(), client, tcp, 10, 3),
        ];
        watch.observe(&batch(&frames));
        // Within the silence period nothing is reported, heard or not.
        assert!(watch.silent(start + Duration::from_secs(30), Duration::from_secs(60)).is_empty());
        // A period later, with no new frames: the two silent entries, not the others (seen
        // 30 s ago).
        let silent: Vec<String> = watch
            .silent(start + Duration::from_secs(61), Duration::from_secs(60))
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(silent, ["10.0.0.11", "fd00::10"]);
        let silent = watch.silent(start + Duration::from_secs(95), Duration::from_secs(60));
        assert_eq!(silent.len(), 4, "everyone silent 65 s after the last frame: {silent:?}");
        // The IPv6 DC speaks: it leaves the list at the next period.
        let v6 = frame::ipv6(
            Tags::None,
            "fd00::10".parse().unwrap(),
            "fd00::5".parse().unwrap(),
            tcp,
            frame::V6Ext::None,
            10,
            4,
        );
        watch.observe(&batch(&[v6]));
        let silent = watch.silent(start + Duration::from_secs(96), Duration::from_secs(60));
        assert!(!silent.iter().any(|e| e.to_string() == "fd00::10"), "{silent:?}");
    }

    #[test]
    fn a_reload_keeps_the_history_of_entries_that_stay_and_gives_new_ones_the_full_period() {
        let start = Instant::now();
        let watch = DcWatch::new(&DcSet::parse_list("10.0.0.10", "--dc").unwrap(), start);
        watch.set_dcs(&DcSet::parse_list("10.0.0.10,10.0.0.12", "--dc").unwrap(), start + Duration::from_secs(50));
        let silent: Vec<String> = watch
            .silent(start + Duration::from_secs(70), Duration::from_secs(60))
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(silent, ["10.0.0.10"]);
    }
}

//! IPv4 and IPv6 fragment reassembly, bounded.
//!
//! Overlapping fragments are resolved the way a Windows host resolves them: the bytes that
//! arrived first win ("first" policy in target-based reassembly, Novak 2005). The domain
//! controllers this sensor watches run Windows, so the sensor sees what the DC accepted; an
//! attacker's overlap that would read differently on Linux is counted as a conflict.
//!
//! Limits, all counted when hit: datagrams in progress, bytes held, the largest datagram
//! (65535 bytes of upper-layer payload), and a timeout measured in capture time, so a
//! capture file is reassembled the same way as live traffic.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::Duration,
};

use super::Fragment;
use crate::budget::Budget;

/// Largest upper-layer payload an IP datagram can carry (IPv4 total length is 16 bits).
pub const MAX_DATAGRAM: usize = 65_535;

#[derive(Clone, Debug)]
pub struct DefragLimits {
    /// Datagrams being reassembled at once; the oldest is dropped to make room.
    pub max_pending: usize,
    /// Bytes held for incomplete datagrams, summed over every worker sharing it.
    pub bytes: Budget,
    /// A datagram not completed within this (capture) time is dropped. Windows uses 60 s.
    pub timeout: Duration,
}

impl Default for DefragLimits {
    fn default() -> Self {
        Self { max_pending: 4096, bytes: Budget::new(16 << 20), timeout: Duration::from_secs(60) }
    }
}

crate::counter_set! {
    pub struct DefragCounters {
        /// Fragments received.
        fragments,
        /// Datagrams completed and handed on.
        reassembled,
        /// Fragments whose bytes overlapped earlier ones with the same content.
        overlaps_identical,
        /// Fragments whose bytes overlapped earlier ones with different content (first kept).
        overlaps_conflicting,
        /// Datagrams dropped because they did not complete in time.
        timed_out,
        /// Datagrams dropped to stay within the pending or byte limits.
        evicted,
        /// Fragments reaching past 65535 bytes or contradicting the datagram's end.
        invalid,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    id: u32,
}

struct Pending {
    started: Duration,
    data: Vec<u8>,
    /// Byte ranges filled so far, sorted, non-overlapping, non-adjacent.
    filled: Vec<(u32, u32)>,
    /// End of the datagram, known once the last fragment (MF clear) arrived.
    end: Option<u32>,
}

impl Pending {
    fn complete(&self) -> bool {
        matches!((self.end, self.filled.as_slice()), (Some(end), [(0, e)]) if *e == end)
    }

    /// Copies the parts of `bytes` at `offset` not filled yet; returns whether any overlapping
    /// byte differed from what was there.
    fn insert(&mut self, offset: u32, bytes: &[u8]) -> (bool, bool) {
        let end = offset + bytes.len() as u32;
        if self.data.len() < end as usize {
            self.data.resize(end as usize, 0);
        }
        let mut overlapped = false;
        let mut conflict = false;
        let mut cursor = offset;
        for &(s, e) in &self.filled {
            if e <= cursor || s >= end {
                continue;
            }
            // Copy the hole before this filled range, compare the overlap with it.
            if s > cursor {
                let (a, b) = (cursor as usize, s as usize);
                self.data[a..b].copy_from_slice(&bytes[a - offset as usize..b - offset as usize]);
            }
            let (os, oe) = (s.max(cursor) as usize, e.min(end) as usize);
            overlapped = true;
            if self.data[os..oe] != bytes[os - offset as usize..oe - offset as usize] {
                conflict = true;
            }
            cursor = e.min(end);
        }
        if cursor < end {
            let (a, b) = (cursor as usize, end as usize);
            self.data[a..b].copy_from_slice(&bytes[a - offset as usize..b - offset as usize]);
        }
        self.add_range(offset, end);
        (overlapped, conflict)
    }

    fn add_range(&mut self, start: u32, end: u32) {
        let mut merged = (start, end);
        self.filled.retain(|&(s, e)| {
            if e < merged.0 || s > merged.1 {
                true
            } else {
                merged = (merged.0.min(s), merged.1.max(e));
                false
            }
        });
        let at = self.filled.partition_point(|&(s, _)| s < merged.0);
        self.filled.insert(at, merged);
    }
}

/// A reassembled datagram's upper-layer payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Datagram {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub vlan: Option<u16>,
    pub protocol: u8,
    pub payload: Vec<u8>,
}

pub struct Defragmenter {
    limits: DefragLimits,
    pending: HashMap<Key, Pending>,
    /// Keys in arrival order, for timeouts and eviction; stale keys are skipped.
    order: VecDeque<(Duration, Key)>,
    bytes: usize,
    pub counters: DefragCounters,
}

impl Defragmenter {
    pub fn new(limits: DefragLimits) -> Self {
        Self { limits, pending: HashMap::new(), order: VecDeque::new(), bytes: 0, counters: DefragCounters::default() }
    }

    /// Adds a fragment seen at capture time `now`; returns the datagram when it completes.
    pub fn push(&mut self, now: Duration, frag: &Fragment<'_>) -> Option<Datagram> {
        self.counters.fragments += 1;
        self.expire(now);
        let end = frag.offset as usize + frag.payload.len();
        if end > MAX_DATAGRAM {
            self.counters.invalid += 1;
            return None;
        }
        let key = Key { src: frag.src, dst: frag.dst, protocol: frag.protocol, id: frag.id };
        if !self.pending.contains_key(&key) {
            while self.pending.len() >= self.limits.max_pending
                || self.limits.bytes.used().saturating_add(end) > self.limits.bytes.limit()
            {
                if !self.evict_oldest() {
                    break;
                }
            }
            self.pending.insert(key, Pending { started: now, data: Vec::new(), filled: Vec::new(), end: None });
            self.order.push_back((now, key));
        }
        let p = self.pending.get_mut(&key)?;
        let before = p.data.len();
        let end = end as u32;
        if !frag.more {
            if p.end.is_some_and(|e| e != end) || p.filled.last().is_some_and(|&(_, e)| e > end) {
                self.counters.invalid += 1;
                return None;
            }
            p.end = Some(end);
        } else if p.end.is_some_and(|e| end > e) {
            self.counters.invalid += 1;
            return None;
        }
        let (overlapped, conflict) = p.insert(frag.offset, frag.payload);
        if conflict {
            self.counters.overlaps_conflicting += 1;
        } else if overlapped {
            self.counters.overlaps_identical += 1;
        }
        let grown = p.data.len() - before;
        let complete = p.complete();
        self.hold(grown);
        if !complete {
            // A growing datagram can push the total over the limit too; this worker's
            // oldest go first, possibly this one.
            while self.limits.bytes.exhausted() && self.evict_oldest() {}
            return None;
        }
        let p = self.pending.remove(&key)?;
        self.release(p.data.len());
        self.counters.reassembled += 1;
        Some(Datagram { src: frag.src, dst: frag.dst, vlan: frag.vlan, protocol: frag.protocol, payload: p.data })
    }

    fn evict_oldest(&mut self) -> bool {
        while let Some((_, key)) = self.order.pop_front() {
            if let Some(p) = self.pending.remove(&key) {
                self.release(p.data.len());
                self.counters.evicted += 1;
                return true;
            }
        }
        false
    }

    /// Drops datagrams older than the timeout at capture time `now`.
    pub fn expire(&mut self, now: Duration) {
        while let Some(&(started, key)) = self.order.front() {
            if now.saturating_sub(started) < self.limits.timeout {
                break;
            }
            self.order.pop_front();
            if let Some(p) = self.pending.get(&key) {
                if p.started == started {
                    let p = self.pending.remove(&key).expect("present");
                    self.release(p.data.len());
                    self.counters.timed_out += 1;
                }
            }
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn bytes_held(&self) -> usize {
        self.bytes
    }

    fn hold(&mut self, n: usize) {
        self.bytes += n;
        self.limits.bytes.take(n);
    }

    fn release(&mut self, n: usize) {
        self.bytes -= n;
        self.limits.bytes.give(n);
    }
}

impl Drop for Defragmenter {
    /// What this worker held is given back to the budget the others share.
    fn drop(&mut self) {
        self.limits.bytes.give(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag<'a>(id: u32, offset: u32, more: bool, payload: &'a [u8]) -> Fragment<'a> {
        Fragment {
            src: "10.0.0.20".parse().unwrap(),
            dst: "10.0.0.10".parse().unwrap(),
            vlan: None,
            protocol: 17,
            id,
            offset,
            more,
            payload,
        }
    }

    fn t(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn reassembles_in_any_order() {
        let data: Vec<u8> = (0..40u8).collect();
        for order in [[0, 1, 2], [2, 0, 1], [1, 2, 0]] {
            let mut d = Defragmenter::new(DefragLimits::default());
            let mut out = None;
            for i in order {
                let (s, e) = (i * 16, (i * 16 + 16).min(40));
                out = d.push(t(1), &frag(1, s as u32, i != 2, &data[s..e])).or(out);
            }
            assert_eq!(out.unwrap().payload, data, "order {order:?}");
            assert_eq!(d.pending(), 0);
            assert_eq!(d.bytes_held(), 0);
        }
    }

    #[test]
    fn overlaps_keep_the_first_bytes_and_count_conflicts() {
        let mut d = Defragmenter::new(DefragLimits::default());
        assert!(d.push(t(1), &frag(7, 0, true, &[1; 16])).is_none());
        // Same bytes again (a SPAN duplicate): identical overlap.
        assert!(d.push(t(1), &frag(7, 0, true, &[1; 16])).is_none());
        // Different bytes over 8..16, new bytes 16..24.
        assert!(d.push(t(1), &frag(7, 8, true, &[2; 16])).is_none());
        let out = d.push(t(1), &frag(7, 24, false, &[3; 8])).unwrap();
        let mut want = vec![1u8; 16];
        want.extend([2; 8]);
        want.extend([3; 8]);
        assert_eq!(out.payload, want, "first copy of 8..16 kept, later bytes fill only the hole");
        assert_eq!(d.counters.overlaps_identical, 1);
        assert_eq!(d.counters.overlaps_conflicting, 1);
        assert_eq!(d.counters.reassembled, 1);
    }

    #[test]
    fn incomplete_datagrams_time_out_and_limits_evict_the_oldest() {
        let mut d = Defragmenter::new(DefragLimits { max_pending: 2, bytes: Budget::new(1 << 20), timeout: t(60) });
        d.push(t(0), &frag(1, 0, true, &[0; 8]));
        d.push(t(1), &frag(2, 0, true, &[0; 8]));
        d.push(t(2), &frag(3, 0, true, &[0; 8]));
        assert_eq!((d.pending(), d.counters.evicted), (2, 1), "id 1 evicted for id 3");
        d.push(t(62), &frag(4, 0, true, &[0; 8]));
        assert_eq!(d.counters.timed_out, 2, "ids 2 and 3 older than 60 s");
        assert_eq!(d.pending(), 1);
        assert_eq!(d.bytes_held(), 8);
        // A late fragment of an evicted datagram starts over, it does not resurrect it.
        assert!(d.push(t(63), &frag(1, 8, false, &[0; 8])).is_none());
    }

    #[test]
    fn byte_limit_holds_and_impossible_fragments_are_refused() {
        let mut d = Defragmenter::new(DefragLimits { max_pending: 100, bytes: Budget::new(64), timeout: t(60) });
        for id in 0..10 {
            d.push(t(0), &frag(id, 0, true, &[0; 24]));
            assert!(d.bytes_held() <= 64);
        }
        assert!(d.counters.evicted >= 7);
        assert!(d.push(t(0), &frag(99, 65_530, true, &[0; 16])).is_none());
        assert_eq!(d.counters.invalid, 1, "past 65535 bytes");
        d.push(t(0), &frag(50, 16, false, &[0; 8]));
        d.push(t(0), &frag(50, 24, true, &[0; 8]));
        assert_eq!(d.counters.invalid, 2, "data past the last fragment's end");
    }
}

//! Sign-in throttling. Every password check costs an argon2 hash, and without a limit a
//! guesser tries as fast as the server hashes. Failures are counted per account name and
//! per source address; after [`FREE_FAILURES`] of them within [`WINDOW`], sign-in for that
//! name or from that address is refused, without a hash, for [`FIRST_LOCK`], doubling with
//! each further failure up to [`MAX_LOCK`]. A success clears the account's count. Both
//! tables are LRU maps of at most [`MAX_KEYS`] keys, so a flood of made-up names or
//! addresses costs a bounded amount of memory (it can only push out the least recent).

use std::{
    net::IpAddr,
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use lru::LruCache;

/// Failures allowed before the first refusal.
pub const FREE_FAILURES: u32 = 5;
/// A count is forgotten after this long without a failure or a lock.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// The refusal after the last free failure; each failure after it doubles it.
pub const FIRST_LOCK: Duration = Duration::from_secs(30);
pub const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
/// Keys kept per table (account names, source addresses).
pub const MAX_KEYS: usize = 10_000;

#[derive(Clone, Copy, Debug)]
struct Count {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
    /// Attempts refused during the current lock.
    refused: u32,
}

impl Count {
    /// Whether the count no longer matters: quiet for a window since the last failure
    /// and since the lock ended.
    fn expired(&self, now: Instant) -> bool {
        let quiet_since = self.locked_until.map_or(self.last, |u| u.max(self.last));
        now.saturating_duration_since(quiet_since) >= WINDOW
    }

    fn lock_left(&self, now: Instant) -> Option<Duration> {
        self.locked_until.filter(|u| *u > now).map(|u| u - now)
    }
}

/// How long sign-in is refused after the `failures`-th failure.
pub fn lock_for(failures: u32) -> Option<Duration> {
    let over = failures.checked_sub(FREE_FAILURES)?;
    Some(FIRST_LOCK.saturating_mul(1u32.checked_shl(over).unwrap_or(u32::MAX)).min(MAX_LOCK))
}

/// The key of a source address: an IPv6 client holds a whole /64, so it is counted as one.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// A refusal: how long until the next attempt is taken, and whether it is the first
/// refusal of this lock (the one worth an audit record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub retry_after: Duration,
    pub first: bool,
}

pub struct Throttle {
    accounts: LruCache<String, Count>,
    sources: LruCache<IpAddr, Count>,
}

impl Default for Throttle {
    fn default() -> Self {
        Self::with_capacity(MAX_KEYS)
    }
}

impl Throttle {
    pub fn with_capacity(keys: usize) -> Self {
        let cap = NonZeroUsize::new(keys.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self { accounts: LruCache::new(cap), sources: LruCache::new(cap) }
    }

    /// Takes an attempt, counted as a failure until [`Throttle::succeeded`] says otherwise
    /// (so attempts sent together cannot all pass before the first result), or refuses it
    /// while the account or the source is locked. `account: None` counts the source only
    /// (a name refused before any lookup).
    pub fn attempt(&mut self, account: Option<&str>, source: Option<IpAddr>, now: Instant) -> Result<(), Refused> {
        let source = source.map(source_key);
        if let Some(a) = account {
            forget_expired(&mut self.accounts, a, now);
        }
        if let Some(s) = &source {
            forget_expired(&mut self.sources, s, now);
        }
        let mut refused: Option<Refused> = None;
        let counts = account
            .and_then(|a| self.accounts.get_mut(a))
            .into_iter()
            .chain(source.as_ref().and_then(|s| self.sources.get_mut(s)));
        for c in counts {
            if let Some(left) = c.lock_left(now) {
                c.refused += 1;
                let r = refused.get_or_insert(Refused { retry_after: left, first: false });
                r.retry_after = r.retry_after.max(left);
                r.first |= c.refused == 1;
            }
        }
        if let Some(r) = refused {
            return Err(r);
        }
        if let Some(a) = account {
            count_failure(self.accounts.get_or_insert_mut(a.to_string(), || fresh(now)), now);
        }
        if let Some(s) = source {
            count_failure(self.sources.get_or_insert_mut(s, || fresh(now)), now);
        }
        Ok(())
    }

    /// The attempt taken for `account` from `source` was a correct password: the account's
    /// count is cleared, and the source's loses the failure the attempt was counted as.
    pub fn succeeded(&mut self, account: &str, source: Option<IpAddr>) {
        self.accounts.pop(account);
        if let Some(c) = source.map(source_key).and_then(|s| self.sources.get_mut(&s)) {
            c.failures = c.failures.saturating_sub(1);
            if c.failures < FREE_FAILURES {
                c.locked_until = None;
                c.refused = 0;
            }
        }
    }

    /// Keys held: (account names, sources).
    pub fn len(&self) -> (usize, usize) {
        (self.accounts.len(), self.sources.len())
    }
}

fn fresh(now: Instant) -> Count {
    Count { failures: 0, last: now, locked_until: None, refused: 0 }
}

fn forget_expired<K: std::hash::Hash + Eq + std::borrow::Borrow<Q>, Q: std::hash::Hash + Eq + ?Sized>(
    map: &mut LruCache<K, Count>,
    key: &Q,
    now: Instant,
) {
    if map.peek(key).is_some_and(|c| c.expired(now)) {
        map.pop(key);
    }
}

fn count_failure(c: &mut Count, now: Instant) {
    c.failures = c.failures.saturating_add(1);
    c.last = now;
    if let Some(lock) = lock_for(c.failures) {
        c.locked_until = Some(now + lock);
        c.refused = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn refusals_grow_from_the_sixth_failure_and_stop_at_fifteen_minutes() {
        let seconds: Vec<u64> = (1..=12).map(|n| lock_for(n).map_or(0, |d| d.as_secs())).collect();
        assert_eq!(seconds, [0, 0, 0, 0, 30, 60, 120, 240, 480, 900, 900, 900]);
        assert_eq!(lock_for(u32::MAX), Some(MAX_LOCK));

        let mut t = Throttle::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let start = Instant::now();
        let mut now = start;
        for _ in 0..FREE_FAILURES {
            assert_eq!(t.attempt(Some("ana"), Some(ip), now), Ok(()));
            now += S;
        }
        // Locked 30 s from the fifth failure: refused, the first refusal said once.
        let r = t.attempt(Some("ana"), None, now).unwrap_err();
        assert_eq!((r.retry_after, r.first), (FIRST_LOCK - S, true));
        assert!(!t.attempt(Some("ana"), None, now).unwrap_err().first);
        // The source is locked as well, whatever name it tries.
        assert_eq!(t.attempt(Some("vic"), Some(ip), now).unwrap_err().retry_after, FIRST_LOCK - S);
        // After the lock, one attempt is taken; failing, it doubles the lock.
        now = start + 4 * S + FIRST_LOCK;
        assert_eq!(t.attempt(Some("ana"), None, now), Ok(()));
        assert_eq!(t.attempt(Some("ana"), None, now).unwrap_err().retry_after, 2 * FIRST_LOCK);
        // A success clears the account, not another one's count.
        now += 2 * FIRST_LOCK;
        assert_eq!(t.attempt(Some("ana"), None, now), Ok(()));
        t.succeeded("ana", None);
        for _ in 0..FREE_FAILURES {
            assert_eq!(t.attempt(Some("ana"), None, now), Ok(()));
        }
        assert!(t.attempt(Some("ana"), None, now).is_err());
        // Quiet for a window after the lock ends: forgotten.
        let lock_end = now + FIRST_LOCK;
        assert!(t.attempt(Some("ana"), None, lock_end + WINDOW - S).is_ok(), "the lock is over");
        let mut later = lock_end + WINDOW - S;
        assert!(t.attempt(Some("ana"), None, later).is_err(), "one more failure locks it for 60 s");
        later += 2 * FIRST_LOCK + WINDOW;
        for _ in 0..FREE_FAILURES {
            assert_eq!(t.attempt(Some("ana"), None, later), Ok(()), "counted from nothing again");
        }
    }

    #[test]
    fn the_tables_hold_at_most_their_capacity_and_ipv6_counts_per_64() {
        let mut t = Throttle::with_capacity(100);
        let now = Instant::now();
        for n in 0..1000u32 {
            let ip = IpAddr::from(n.to_be_bytes());
            t.attempt(Some(&format!("user{n}")), Some(ip), now).unwrap();
        }
        assert_eq!(t.len(), (100, 100));
        // The least recent went: user0 starts from nothing, user999 does not.
        for _ in 0..FREE_FAILURES {
            t.attempt(Some("user0"), None, now).unwrap();
        }
        for _ in 1..FREE_FAILURES {
            t.attempt(Some("user999"), None, now).unwrap();
        }
        assert!(t.attempt(Some("user999"), None, now).is_err());

        let mut t = Throttle::default();
        for n in 0..FREE_FAILURES {
            let ip: IpAddr = format!("2001:db8:1:2::{n:x}").parse().unwrap();
            t.attempt(None, Some(ip), now).unwrap();
        }
        let same64: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(t.attempt(Some("ana"), Some(same64), now).is_err());
        let other64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(t.attempt(Some("ana"), Some(other64), now).is_ok());
        assert_eq!(source_key("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}

//! Detections: every sensor's activity events, merged in event time (`runner.rs`), through
//! bounded per-entity state (sliding windows, first-seen sets) into alerts, which join
//! incidents when they share an entity close in time.
//!
//! `rules/` holds the detections themselves (a file per protocol); this module holds what
//! they share: the configuration, the windows, the alert type and the engine that runs
//! them.

pub mod config;
pub mod export;
pub mod profiles;
pub mod rules;
pub mod runner;

use std::collections::{HashMap, VecDeque};

pub use config::DetectConfig;

use crate::pb::ActivityEvent;

/// One alert: what was detected, on which entities, when, why, and the events behind it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Alert {
    /// Assigned by the store when first saved (0 before).
    pub id: i64,
    pub detection: String,
    pub title: String,
    /// "info" (a notice, e.g. a new DC), "low", "medium", "high".
    pub severity: String,
    pub mitre: String,
    pub account: String,
    pub src_ip: String,
    /// The DC of its first evidence.
    pub dc_ip: String,
    /// Every DC its evidence was seen at, first first (at most `MAX_ALERT_DCS`): a spray
    /// spread over the domain's DCs is one alert naming them all.
    pub dcs: Vec<String>,
    pub first_seen_ns: i64,
    pub last_seen_ns: i64,
    /// What happened and what to do, in plain language.
    pub description: String,
    /// (sensor id, sequence number) of the events that are its evidence (the first ones).
    pub evidence: Vec<(String, u64)>,
    pub incident_id: i64,
}

/// Most evidence references kept per alert.
pub const MAX_EVIDENCE: usize = 50;
/// Most DCs listed per alert.
pub const MAX_ALERT_DCS: usize = 16;

/// Distinct items and total count per key over a sliding time window. Bounded: keys idle
/// for a window are swept, and past `max_keys` the stalest keys go first.
#[derive(Debug)]
pub struct Windows<K> {
    entries: HashMap<K, VecDeque<(i64, String)>>,
    max_keys: usize,
    max_per_key: usize,
}

impl<K: std::hash::Hash + Eq + Clone> Windows<K> {
    pub fn new(max_keys: usize, max_per_key: usize) -> Self {
        Self { entries: HashMap::new(), max_keys, max_per_key }
    }

    /// Adds `item` at time `t` and returns (distinct items, total) in the window ending at `t`.
    pub fn add(&mut self, key: K, t: i64, item: &str, window_ns: i64) -> (usize, usize) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max_keys {
            self.sweep(t, window_ns);
            if self.entries.len() >= self.max_keys {
                // Still full of live keys: drop the one idle longest.
                if let Some(stale) =
                    self.entries.iter().min_by_key(|(_, q)| q.back().map_or(i64::MIN, |e| e.0)).map(|(k, _)| k.clone())
                {
                    self.entries.remove(&stale);
                }
            }
        }
        let q = self.entries.entry(key).or_default();
        while q.front().is_some_and(|(ft, _)| *ft < t.saturating_sub(window_ns)) {
            q.pop_front();
        }
        if q.len() >= self.max_per_key {
            q.pop_front();
        }
        q.push_back((t, item.to_string()));
        let mut distinct: Vec<&str> = q.iter().map(|(_, i)| i.as_str()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        (distinct.len(), q.len())
    }

    /// The distinct items of `key` in the window ending at `t` (nothing is added).
    pub fn items(&self, key: &K, t: i64, window_ns: i64) -> Vec<&str> {
        let mut items: Vec<&str> = self
            .entries
            .get(key)
            .into_iter()
            .flatten()
            .filter(|(it, _)| *it >= t.saturating_sub(window_ns))
            .map(|(_, i)| i.as_str())
            .collect();
        items.sort_unstable();
        items.dedup();
        items
    }

    fn sweep(&mut self, now: i64, window_ns: i64) {
        self.entries.retain(|_, q| q.back().is_some_and(|(t, _)| *t >= now.saturating_sub(window_ns)));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A detection that fired on an event (before deduplication into an alert).
#[derive(Clone, Debug)]
pub struct Finding {
    pub detection: &'static str,
    pub title: &'static str,
    pub severity: &'static str,
    pub mitre: &'static str,
    pub account: String,
    pub src_ip: String,
    pub dc_ip: String,
    pub description: String,
    /// Other DCs the finding's evidence in the window was seen at (a spray's failures at
    /// every DC it went to), beside `dc_ip`.
    pub dcs: Vec<String>,
}

/// Runs every detection over events and folds repeated findings on the same entities
/// into one alert while they keep coming (within the window).
pub struct Engine {
    pub config: DetectConfig,
    rules: rules::Rules,
    /// Open alerts by (detection, source, account): later findings extend them.
    open: HashMap<(String, String, String), Alert>,
    pub profiles: profiles::Profiles,
}

impl Engine {
    pub fn new(config: DetectConfig) -> Self {
        Self {
            rules: rules::Rules::new(&config),
            config,
            open: HashMap::new(),
            profiles: profiles::Profiles::default(),
        }
    }

    /// Alerts that are new or changed by this event.
    pub fn process(&mut self, ev: &ActivityEvent) -> Vec<Alert> {
        let mut findings = Vec::new();
        self.rules.observe(&self.config, ev, &mut findings);
        for (service, t) in self.rules.take_rc4_services() {
            self.profiles.note_rc4_service(&service, t);
        }
        self.profiles.learn_privileged(ev);
        let learning_ns = self.config.learning_ns();
        if learning_ns > 0 {
            self.profiles.observe(ev, learning_ns, &mut findings);
            let learning = self.profiles.learning(ev.time_unix_ns, learning_ns);
            findings.retain(|f| !self.profiles.normal_source(f, learning));
        }
        let mut changed = Vec::new();
        let window = self.config.window_ns();
        for f in findings {
            if self.config.excluded(f.detection, &f.src_ip, &f.account) {
                continue;
            }
            let mut f = f;
            let key = rules::account_key(&f.account);
            if !key.is_empty() && self.config.sensitive_accounts.iter().any(|s| rules::account_key(s) == key) {
                f.severity = "high";
                f.description.push_str(" The account is marked sensitive.");
            } else if !key.is_empty() && self.profiles.privileged.contains(&key) {
                f.severity = "high";
                f.description
                    .push_str(" The account is privileged: directory results showed it in an administrative group.");
            }
            let key = (f.detection.to_string(), f.src_ip.clone(), f.account.clone());
            let alert = match self.open.get_mut(&key) {
                Some(a) if ev.time_unix_ns.saturating_sub(a.last_seen_ns) <= window => {
                    a.last_seen_ns = a.last_seen_ns.max(ev.time_unix_ns);
                    if a.evidence.len() < MAX_EVIDENCE {
                        a.evidence.push((ev.sensor_id.clone(), ev.seq));
                    }
                    for dc in std::iter::once(&ev.dc_ip).chain(&f.dcs) {
                        if !dc.is_empty() && !a.dcs.contains(dc) && a.dcs.len() < MAX_ALERT_DCS {
                            a.dcs.push(dc.clone());
                        }
                    }
                    a.description = f.description;
                    a.clone()
                }
                _ => {
                    let mut dcs: Vec<String> = Vec::new();
                    for dc in [&f.dc_ip, &ev.dc_ip].into_iter().chain(&f.dcs) {
                        if !dc.is_empty() && !dcs.contains(dc) && dcs.len() < MAX_ALERT_DCS {
                            dcs.push(dc.clone());
                        }
                    }
                    let a = Alert {
                        id: 0,
                        detection: f.detection.into(),
                        title: f.title.into(),
                        severity: f.severity.into(),
                        mitre: f.mitre.into(),
                        account: f.account,
                        src_ip: f.src_ip,
                        dcs,
                        dc_ip: f.dc_ip,
                        first_seen_ns: ev.time_unix_ns,
                        last_seen_ns: ev.time_unix_ns,
                        description: f.description,
                        evidence: vec![(ev.sensor_id.clone(), ev.seq)],
                        incident_id: 0,
                    };
                    self.open.insert(key.clone(), a.clone());
                    a
                }
            };
            changed.push(alert);
        }
        if self.open.len() > 10_000 {
            let now = ev.time_unix_ns;
            self.open.retain(|_, a| now.saturating_sub(a.last_seen_ns) <= window);
        }
        changed
    }

    /// Replaces the configuration (SIGHUP); what was learned and the open alerts stay.
    pub fn reconfigure(&mut self, config: DetectConfig) {
        self.rules.reconfigure(&config);
        self.config = config;
    }

    /// Addresses a sensor registered as the DCs it monitors.
    pub fn add_dcs(&mut self, dcs: &[String]) {
        self.rules.add_dcs(dcs);
    }

    /// Takes back an alert saved before a restart, so later findings extend it.
    pub fn resume(&mut self, alert: Alert) {
        let key = (alert.detection.clone(), alert.src_ip.clone(), alert.account.clone());
        self.open.insert(key, alert);
    }

    /// The store gave a newly saved alert its id (and incident): later updates keep them.
    pub fn saved(&mut self, alert: &Alert) {
        let key = (alert.detection.clone(), alert.src_ip.clone(), alert.account.clone());
        // Only the alert that was saved: its key may have opened again since.
        if let Some(a) = self.open.get_mut(&key).filter(|a| a.first_seen_ns == alert.first_seen_ns) {
            a.id = alert.id;
            a.incident_id = alert.incident_id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_count_distinct_items_and_forget_old_ones() {
        let mut w: Windows<&str> = Windows::new(2, 100);
        assert_eq!(w.add("a", 0, "x", 10), (1, 1));
        assert_eq!(w.add("a", 5, "y", 10), (2, 2));
        assert_eq!(w.add("a", 6, "y", 10), (2, 3));
        // 0 has left the window ending at 12.
        assert_eq!(w.add("a", 12, "z", 10), (2, 3));
        w.add("b", 13, "x", 10);
        // A third key evicts the stalest live one.
        w.add("c", 14, "x", 10);
        assert_eq!(w.len(), 2);
    }
}

//! Learned behaviour: per account, the hosts it logs on from, the protocols and services it
//! uses and the hours it is active; and which hosts normally run directory or RPC
//! enumeration. Learned during a configurable period from the first event; afterwards,
//! first-seen behaviour raises a lower-severity alert and enumeration from the hosts that
//! did it while learning (admin tools, scanners) no longer does.
//!
//! Bounded: at most `MAX_ACCOUNTS` accounts, and an account seen from more than
//! `MAX_HOSTS` hosts is marked roaming (no host anomalies for it). Kept in the store one
//! row per entity (an account, a learned detection's sources, a privileged account, an
//! RC4-only service): a checkpoint writes the rows that changed since the last one, so its
//! cost follows what changed, not the size of the domain.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{rules::account_key, Finding};
use crate::pb::{activity_event::Detail, ActivityEvent};

/// Accounts profiled at most: users and computers (`NAME$`) of a large domain.
const MAX_ACCOUNTS: usize = 250_000;
const MAX_HOSTS: usize = 64;
const MAX_SERVICES: usize = 256;

/// Detections whose normal sources are learned.
pub const LEARNED_DETECTIONS: [&str; 3] = ["ldap_recon", "rpc_recon", "session_enumeration"];

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AccountProfile {
    pub hosts: BTreeSet<String>,
    pub roaming: bool,
    pub protocols: BTreeSet<String>,
    pub services: BTreeSet<String>,
    /// Bit h set: active in hour h (UTC).
    pub hours: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Profiles {
    /// Time of the first event: learning runs from here.
    pub started_ns: Option<i64>,
    pub accounts: BTreeMap<String, AccountProfile>,
    /// Per learned detection, the sources that did it while learning.
    pub normal_sources: BTreeMap<String, BTreeSet<String>>,
    /// Accounts directory results showed in an administrative group (account keys).
    /// Learned all the time, not only while learning: membership changes.
    #[serde(default)]
    pub privileged: BTreeSet<String>,
    /// Services of user accounts whose tickets came encrypted with RC4 although the client
    /// offered AES: their accounts have no AES keys, and their tickets are what
    /// Kerberoasting cracks fastest. Identity posture, never an alert.
    #[serde(default)]
    pub rc4_services: BTreeMap<String, Rc4Service>,
    /// What changed since the last checkpoint took the changes.
    #[serde(skip)]
    changes: Changes,
}

/// The entities changed since the changes were last taken, by kind.
#[derive(Clone, Debug, Default)]
struct Changes {
    started: bool,
    accounts: BTreeSet<String>,
    normal_sources: BTreeSet<String>,
    privileged: BTreeSet<String>,
    rc4_services: BTreeSet<String>,
}

/// Bookkeeping, not content: two profiles that learned the same are equal whatever was
/// saved of them.
impl PartialEq for Changes {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Kinds of profile rows in the store.
pub mod kind {
    pub const STARTED: &str = "started";
    pub const ACCOUNT: &str = "account";
    pub const NORMAL_SOURCES: &str = "normal_sources";
    pub const PRIVILEGED: &str = "privileged";
    pub const RC4_SERVICE: &str = "rc4_service";
}

/// When a service was seen issuing RC4 tickets to clients that offered AES.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Rc4Service {
    pub first_seen_ns: i64,
    pub last_seen_ns: i64,
    pub tickets: u64,
}

/// A profile entity as JSON (sets, maps and numbers: serialising cannot fail).
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Most RC4-only services remembered.
const MAX_RC4_SERVICES: usize = 10_000;

/// Most privileged accounts remembered.
const MAX_PRIVILEGED: usize = 10_000;

impl Profiles {
    /// The rows of what changed since the last call, to save (a row's value is its
    /// entity as JSON).
    pub fn take_changes(&mut self) -> Vec<crate::store::ProfileRow> {
        let changes = std::mem::take(&mut self.changes);
        let mut rows = Vec::new();
        let mut row = |kind: &str, key: &str, value: Option<String>| {
            if let Some(value) = value {
                rows.push(crate::store::ProfileRow { kind: kind.into(), key: key.into(), value });
            }
        };
        if changes.started {
            row(kind::STARTED, "", self.started_ns.map(|t| t.to_string()));
        }
        for k in &changes.accounts {
            row(kind::ACCOUNT, k, self.accounts.get(k).map(json));
        }
        for k in &changes.normal_sources {
            row(kind::NORMAL_SOURCES, k, self.normal_sources.get(k).map(json));
        }
        for k in &changes.privileged {
            row(kind::PRIVILEGED, k, self.privileged.contains(k).then(|| "true".to_string()));
        }
        for k in &changes.rc4_services {
            row(kind::RC4_SERVICE, k, self.rc4_services.get(k).map(json));
        }
        rows
    }

    /// Marks every entity changed (profiles read from the single document older stores
    /// kept, to be written as rows).
    pub fn mark_all_changed(&mut self) {
        self.changes = Changes {
            started: self.started_ns.is_some(),
            accounts: self.accounts.keys().cloned().collect(),
            normal_sources: self.normal_sources.keys().cloned().collect(),
            privileged: self.privileged.clone(),
            rc4_services: self.rc4_services.keys().cloned().collect(),
        };
    }

    /// Marks the entities of rows a failed save did not store changed again.
    pub fn unsaved(&mut self, rows: &[crate::store::ProfileRow]) {
        for r in rows {
            let key = r.key.clone();
            match r.kind.as_str() {
                kind::STARTED => self.changes.started = true,
                kind::ACCOUNT => drop(self.changes.accounts.insert(key)),
                kind::NORMAL_SOURCES => drop(self.changes.normal_sources.insert(key)),
                kind::PRIVILEGED => drop(self.changes.privileged.insert(key)),
                kind::RC4_SERVICE => drop(self.changes.rc4_services.insert(key)),
                _ => {}
            }
        }
    }

    /// Profiles from their rows; rows that do not read are skipped, with how many.
    pub fn from_rows(rows: &[crate::store::ProfileRow]) -> (Self, usize) {
        let mut p = Self::default();
        let mut unreadable = 0;
        for r in rows {
            let ok = match r.kind.as_str() {
                kind::STARTED => r.value.parse().map(|t| p.started_ns = Some(t)).is_ok(),
                kind::ACCOUNT => serde_json::from_str(&r.value).map(|v| p.accounts.insert(r.key.clone(), v)).is_ok(),
                kind::NORMAL_SOURCES => {
                    serde_json::from_str(&r.value).map(|v| p.normal_sources.insert(r.key.clone(), v)).is_ok()
                }
                kind::PRIVILEGED => {
                    p.privileged.insert(r.key.clone());
                    true
                }
                kind::RC4_SERVICE => {
                    serde_json::from_str(&r.value).map(|v| p.rc4_services.insert(r.key.clone(), v)).is_ok()
                }
                _ => false,
            };
            unreadable += usize::from(!ok);
        }
        (p, unreadable)
    }

    /// Remembers the privileged accounts an LDAP search's results named; whether any was new.
    pub fn learn_privileged(&mut self, ev: &ActivityEvent) -> bool {
        let Some(Detail::Ldap(l)) = &ev.detail else { return false };
        let mut changed = false;
        for name in &l.privileged_accounts {
            let key = account_key(name);
            if !key.is_empty() && self.privileged.len() < MAX_PRIVILEGED && self.privileged.insert(key.clone()) {
                self.changes.privileged.insert(key);
                changed = true;
            }
        }
        changed
    }

    /// Records a service that issued an RC4 ticket to a client offering AES; whether the
    /// profiles changed.
    pub fn note_rc4_service(&mut self, service: &str, t: i64) -> bool {
        if !self.rc4_services.contains_key(service) && self.rc4_services.len() >= MAX_RC4_SERVICES {
            return false;
        }
        let s = self.rc4_services.entry(service.to_string()).or_insert(Rc4Service {
            first_seen_ns: t,
            last_seen_ns: t,
            tickets: 0,
        });
        s.first_seen_ns = s.first_seen_ns.min(t);
        s.last_seen_ns = s.last_seen_ns.max(t);
        s.tickets = s.tickets.saturating_add(1);
        self.changes.rc4_services.insert(service.to_string());
        true
    }

    pub fn learning(&self, t: i64, learning_ns: i64) -> bool {
        self.started_ns.is_none_or(|s| t.saturating_sub(s) < learning_ns)
    }

    /// During learning, remembers the source of a learned detection's finding; afterwards,
    /// says whether the finding is from a source learned as normal (to drop it).
    pub fn normal_source(&mut self, f: &Finding, learning: bool) -> bool {
        if !LEARNED_DETECTIONS.contains(&f.detection) {
            return false;
        }
        let set = self.normal_sources.entry(f.detection.to_string()).or_default();
        if learning {
            if set.len() < MAX_HOSTS * 16 && set.insert(f.src_ip.clone()) {
                self.changes.normal_sources.insert(f.detection.to_string());
            }
            return false;
        }
        set.contains(&f.src_ip)
    }

    /// Learns from a successful logon or access, or (after learning) reports what is new.
    pub fn observe(&mut self, ev: &ActivityEvent, learning_ns: i64, out: &mut Vec<Finding>) {
        let t = ev.time_unix_ns;
        let started = Some(self.started_ns.map_or(t, |s| s.min(t)));
        if started != self.started_ns {
            self.started_ns = started;
            self.changes.started = true;
        }
        let account = account_key(&ev.account);
        // Failed and unfinished exchanges (a "pre-authentication required") say nothing of
        // where the account normally works: enumeration tools cause them too.
        if account.is_empty() || matches!(ev.result.as_str(), "failure" | "continue") || ev.src_ip.is_empty() {
            return;
        }
        let learning = self.learning(t, learning_ns);
        if !self.accounts.contains_key(&account) && self.accounts.len() >= MAX_ACCOUNTS {
            return;
        }
        let p = self.accounts.entry(account.clone()).or_default();
        let hour = ((t / 1_000_000_000).rem_euclid(86_400) / 3_600) as u32;
        let service = match &ev.detail {
            Some(Detail::Kerberos(k)) if k.msg_type == 13 => Some(k.sname.to_lowercase()),
            _ => None,
        };
        let new_host = !p.roaming && !p.hosts.contains(&ev.src_ip);
        let new_service = service.as_ref().is_some_and(|s| !p.services.contains(s));
        let new_hour = p.hours & (1 << hour) == 0;
        if new_host || new_service || new_hour || !p.protocols.contains(&ev.protocol) {
            self.changes.accounts.insert(account.clone());
        }
        // After learning, an account the profile never saw is new as a whole: its first
        // host, service and hour are not anomalies of it.
        let known = !p.hosts.is_empty();
        if !learning && known {
            let base = |detection, title, severity, mitre, description: String| Finding {
                dcs: Vec::new(),
                detection,
                title,
                severity,
                mitre,
                account: account.clone(),
                src_ip: ev.src_ip.clone(),
                dc_ip: ev.dc_ip.clone(),
                description,
            };
            if new_host {
                let ntlm = ev.protocol == "ntlm";
                out.push(base(
                    if ntlm { "pass_the_hash" } else { "unusual_source" },
                    if ntlm { "NTLM logon from a host the account never used (pass-the-hash?)" } else { "Account used from a new host" },
                    if ntlm { "medium" } else { "low" },
                    if ntlm { "T1550.002" } else { "T1078" },
                    format!(
                        "{} authenticated ({}) from {}, a host it was never seen on (known: {}). {}Confirm with the account's owner; if it was not them, reset the password and examine {}.",
                        ev.account,
                        ev.protocol,
                        ev.src_ip,
                        p.hosts.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                        if ntlm { "NTLM from an unexpected host is how a stolen hash is used. " } else { "" },
                        ev.src_ip
                    ),
                ));
            }
            if new_service {
                let s = service.clone().unwrap_or_default();
                out.push(base("unusual_service", "Account accessed a service it never used", "low", "T1078", format!(
                    "{} obtained a ticket for {s}, a service it never used before, from {}. Expected if its job changed; otherwise check what it did there.",
                    ev.account, ev.src_ip
                )));
            }
            if new_hour {
                out.push(base(
                    "unusual_time",
                    "Account active at an unusual hour",
                    "low",
                    "T1078",
                    format!(
                    "{} was active at {hour:02}:00 UTC from {}, an hour it never was while the profile was learned.",
                    ev.account, ev.src_ip
                ),
                ));
            }
        }
        if new_host {
            if p.hosts.len() >= MAX_HOSTS {
                p.roaming = true;
                p.hosts.clear();
            } else {
                p.hosts.insert(ev.src_ip.clone());
            }
        }
        if let Some(s) = service {
            if p.services.len() < MAX_SERVICES {
                p.services.insert(s);
            }
        }
        p.protocols.insert(ev.protocol.clone());
        p.hours |= 1 << hour;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DetectConfig, Engine};
    use crate::pb::{activity_event::Detail, ActivityEvent, DceRpc, Ntlm};

    const DAY: i64 = 86_400_000_000_000;

    fn logon(t: i64, src: &str, protocol: &str) -> ActivityEvent {
        ActivityEvent {
            time_unix_ns: t,
            src_ip: src.into(),
            dc_ip: "10.0.0.10".into(),
            account: "LAB\\alice".into(),
            protocol: protocol.into(),
            result: "success".into(),
            detail: Some(Detail::Ntlm(Ntlm { message_type: 3, ..Default::default() })),
            ..Default::default()
        }
    }

    fn detections(engine: &mut Engine, ev: &ActivityEvent) -> Vec<String> {
        engine.process(ev).into_iter().map(|a| a.detection).collect()
    }

    #[test]
    fn a_new_host_after_the_learning_period_alerts_and_during_it_is_learned() {
        let cfg = DetectConfig { learning_days: 1, ..Default::default() };
        let mut engine = Engine::new(cfg);
        let noon = 12 * 3_600_000_000_000;
        assert!(detections(&mut engine, &logon(noon, "10.1.1.1", "ntlm")).is_empty());
        // Still learning: a second host is simply learned.
        assert!(detections(&mut engine, &logon(noon + DAY / 2, "10.1.1.2", "ntlm")).is_empty());
        // After learning: known hosts at known hours are quiet, a new host is not.
        assert!(detections(&mut engine, &logon(noon + 2 * DAY, "10.1.1.2", "ntlm")).is_empty());
        assert_eq!(detections(&mut engine, &logon(noon + 2 * DAY + 1, "10.1.1.66", "ntlm")), vec!["pass_the_hash"]);
        // It is learned now: the next logon from there is quiet.
        assert!(detections(&mut engine, &logon(noon + 2 * DAY + 2, "10.1.1.66", "ntlm")).is_empty());
        // An hour never seen while learning.
        assert_eq!(
            detections(&mut engine, &logon(2 * DAY + 3 * 3_600_000_000_000, "10.1.1.2", "ntlm")),
            vec!["unusual_time"]
        );
    }

    #[test]
    fn without_learning_nothing_is_profiled() {
        let cfg = DetectConfig { learning_days: 0, ..Default::default() };
        let mut engine = Engine::new(cfg);
        for (i, host) in ["10.1.1.1", "10.1.1.2", "10.1.1.3"].iter().enumerate() {
            assert!(detections(&mut engine, &logon(i as i64 * 10 * DAY, host, "ntlm")).is_empty());
        }
        assert!(engine.profiles.accounts.is_empty());
    }

    #[test]
    fn hosts_that_enumerated_while_learning_are_quiet_afterwards_others_are_not() {
        let cfg = DetectConfig { learning_days: 1, ..Default::default() };
        let mut engine = Engine::new(cfg);
        let recon = |t: i64, src: &str, op: &str| ActivityEvent {
            time_unix_ns: t,
            src_ip: src.into(),
            detail: Some(Detail::Dcerpc(DceRpc {
                operation: "call".into(),
                interface: "samr".into(),
                operation_name: op.into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let burst = |engine: &mut Engine, t: i64, src: &str| {
            let mut d = detections(engine, &recon(t, src, "SamrEnumerateUsersInDomain"));
            d.extend(detections(engine, &recon(t + 1, src, "SamrEnumerateGroupsInDomain")));
            d
        };
        // While learning the admin tool's enumeration still alerts (nothing is known yet).
        assert_eq!(burst(&mut engine, 0, "10.1.1.5"), vec!["rpc_recon"]);
        assert!(burst(&mut engine, 3 * DAY, "10.1.1.5").is_empty(), "learned as normal");
        assert_eq!(burst(&mut engine, 3 * DAY, "10.1.1.66"), vec!["rpc_recon"]);
    }

    /// A checkpoint writes what changed, not the domain: a thousand accounts learned are a
    /// thousand rows; a logon that teaches nothing new is none; a new host is one. The rows
    /// read back are the same profiles.
    #[test]
    fn changes_are_rows_of_what_changed_and_read_back_whole() {
        let cfg = DetectConfig { learning_days: 1, ..Default::default() };
        let mut engine = Engine::new(cfg);
        let noon = 12 * 3_600_000_000_000;
        let user = |i: u32, host: &str| ActivityEvent { account: format!("LAB\\user{i}"), ..logon(noon, host, "ntlm") };
        for i in 0..1000 {
            engine.process(&user(i, "10.1.1.1"));
        }
        let rows = engine.profiles.take_changes();
        assert_eq!(rows.iter().filter(|r| r.kind == super::kind::ACCOUNT).count(), 1000);
        assert_eq!(rows.iter().filter(|r| r.kind == super::kind::STARTED).count(), 1);
        engine.process(&user(7, "10.1.1.1"));
        assert!(engine.profiles.take_changes().is_empty(), "nothing new learned");
        engine.process(&user(7, "10.1.1.2"));
        let rows = engine.profiles.take_changes();
        assert_eq!((rows.len(), rows[0].key.as_str()), (1, "user7"));

        let mut whole = engine.profiles.clone();
        whole.mark_all_changed();
        let (read, unreadable) = super::Profiles::from_rows(&whole.take_changes());
        assert_eq!((read, unreadable), (engine.profiles.clone(), 0));
    }
}

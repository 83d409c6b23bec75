//! The cloud's storage behind a narrow interface: SQLite (one file, no server) is the
//! default; a server database implements the same trait.

pub mod sqlite;

use crate::{
    detect::Alert,
    pb::{ActivityEvent, Excerpt, ExcerptRequest, Health, SensorInfo},
};

pub use sqlite::SqliteStore;

/// What a retention pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    /// Excerpts whose pcap was deleted (their record stays, marked as expired).
    pub excerpts: u64,
}

/// The `[store]` table of the cloud's TOML configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Days an event and an alert's pcap excerpt are kept after they arrived; 0 keeps them
    /// for ever. Alerts and incidents are kept.
    pub retention_days: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        // Microsoft Defender for Identity keeps its data 180 days.
        Self { retention_days: 180 }
    }
}

impl StoreConfig {
    /// Reads the `[store]` table of a TOML file; a missing table is the defaults.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            store: Option<StoreConfig>,
        }
        let file: File = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(file.store.unwrap_or_default())
    }

    /// How long what arrives is kept; None: for ever.
    pub fn retention(&self) -> Option<std::time::Duration> {
        (self.retention_days > 0).then(|| std::time::Duration::from_secs(u64::from(self.retention_days) * 86_400))
    }
}

/// Result of storing one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InsertOutcome {
    pub stored: u32,
    /// Already held (same sensor and sequence number): a resend, dropped.
    pub duplicates: u32,
    /// Set when the batch was refused, nothing of it stored: (an event's sequence number
    /// that is new but below what the cloud already holds or has examined for the sensor,
    /// that mark). Sequence numbers only grow, and detection never goes back.
    pub late: Option<(u64, u64)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SensorRecord {
    pub id: String,
    #[serde(skip)]
    pub key_sha256: String,
    pub created_unix_ns: i64,
    pub revoked_unix_ns: Option<i64>,
    pub version: String,
    pub hostname: String,
    pub monitored_dcs: Vec<String>,
    pub capabilities: Vec<String>,
    pub registered_unix_ns: Option<i64>,
    pub last_heartbeat_unix_ns: Option<i64>,
    /// The last heartbeat's clock minus the cloud's when it arrived.
    pub clock_skew_ns: Option<i64>,
    pub health_counters: std::collections::BTreeMap<String, u64>,
    pub health_alerts: Vec<String>,
}

/// One stored event with its bookkeeping.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub event: ActivityEvent,
    pub spooled_unix_ns: i64,
    pub stored_unix_ns: i64,
}

/// One learned profile entity (an account, a detection's normal sources, ...) as the store
/// keeps it: its kind, its key and its JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileRow {
    pub kind: String,
    pub key: String,
    pub value: String,
}

/// Alerts on shared entities, close in time, as one case for an analyst.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Incident {
    pub id: i64,
    pub title: String,
    pub severity: String,
    /// "new", "in_progress", "resolved", "false_positive".
    pub status: String,
    pub first_seen_ns: i64,
    pub last_seen_ns: i64,
    pub alerts: u64,
}

/// A portal user; the password is kept only as an argon2 hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password_hash: String,
    /// "viewer", "analyst" or "admin".
    pub role: String,
}

/// An analyst's note on an incident, or a change of its status or assignee.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Comment {
    pub at_unix_ns: i64,
    pub author: String,
    pub text: String,
}

/// One line of the portal's audit log: a sign-in, a failed or refused one, a sign-out.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub at_unix_ns: i64,
    /// "signed_in", "failed", "throttled", "refused" (a user name too long to look up) or
    /// "signed_out".
    pub event: String,
    /// The user name as given (a refused one cut short, controls made visible).
    pub user: String,
    /// The client's address ("" when unknown).
    pub source: String,
    pub detail: String,
}

/// Audit log lines kept: older ones are deleted as new ones arrive.
pub const AUDIT_KEEP: i64 = 10_000;

/// Activity search: every given field must match; newest first.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct EventQuery {
    /// Account name without domain or realm ("alice" finds "alice@LAB" and "LAB\\alice").
    pub account: Option<String>,
    /// Source address.
    pub host: Option<String>,
    pub protocol: Option<String>,
    pub from_ns: Option<i64>,
    pub to_ns: Option<i64>,
    pub limit: Option<usize>,
}

/// Largest pcap an excerpt may carry (the proto's limit).
pub const MAX_EXCERPT_PCAP_BYTES: usize = 8 << 20;
/// Most excerpt requests handed to a sensor in one heartbeat reply.
pub const EXCERPTS_PER_HEARTBEAT: usize = 4;
/// A request asked this long ago without an answer is asked again.
pub const EXCERPT_ASK_AGAIN_NS: i64 = 60_000_000_000;
/// After this many unanswered asks (heartbeats came, no upload) the excerpt fails: the
/// sensor does not cut excerpts (an older version ignores the requests).
pub const EXCERPT_MAX_ASKS: u32 = 10;
/// Longest error text kept from a sensor.
const MAX_EXCERPT_ERROR: usize = 1000;

/// What a pcap excerpt of an alert's evidence holds: the frames of one conversation
/// (either direction) between two instants, from the sensor that saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExcerptWanted {
    pub alert_id: i64,
    pub sensor_id: String,
    pub client_ip: String,
    pub client_port: u32,
    pub dc_ip: String,
    /// 0 matches any port.
    pub dc_port: u32,
    pub from_unix_ns: i64,
    pub to_unix_ns: i64,
}

/// A requested excerpt and how far it got.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExcerptRecord {
    pub id: u64,
    #[serde(flatten)]
    pub wanted: ExcerptWanted,
    /// "pending" (not yet handed to the sensor), "asked", "done" or "failed".
    pub status: String,
    pub requested_unix_ns: i64,
    /// When it was last handed to the sensor, and how many times.
    pub asked_unix_ns: Option<i64>,
    pub asks: u32,
    pub answered_unix_ns: Option<i64>,
    pub frames: u32,
    /// The sensor stopped at the size limit.
    pub truncated: bool,
    pub error: String,
    pub pcap_bytes: u64,
    /// The file itself, only when asked for ([`Store::alert_excerpt`] with `with_pcap`).
    #[serde(skip)]
    pub pcap: Option<Vec<u8>>,
}

impl ExcerptRecord {
    /// "done", "waiting" or "failed: <why>", as `tap-cloud alerts --json` says it.
    pub fn label(&self) -> String {
        match self.status.as_str() {
            "done" => "done".into(),
            "failed" => format!("failed: {}", self.error),
            _ => "waiting".into(),
        }
    }
}

/// What became of an upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExcerptUpload {
    /// Stored: done, or failed with the sensor's error.
    Saved,
    /// The excerpt was already answered; the first answer stays (a resend after a lost
    /// acknowledgement).
    AlreadyAnswered,
    /// No such request of this sensor: nothing stored.
    NotYours,
    /// Not a pcap, or too large: the excerpt fails with the reason (also returned).
    Invalid(String),
}

/// Checks an uploaded pcap (classic libpcap format, either byte order, micro- or
/// nanosecond timestamps) and counts its frames; the file must end on a record boundary.
pub fn check_pcap(pcap: &[u8]) -> Result<u32, String> {
    if pcap.len() > MAX_EXCERPT_PCAP_BYTES {
        return Err(format!("pcap of {} bytes (at most {MAX_EXCERPT_PCAP_BYTES})", pcap.len()));
    }
    if pcap.len() < 24 {
        return Err(format!("pcap of {} bytes, shorter than its 24-byte header", pcap.len()));
    }
    let little = match [pcap[0], pcap[1], pcap[2], pcap[3]] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        m => return Err(format!("not a pcap file (magic {:02x}{:02x}{:02x}{:02x})", m[0], m[1], m[2], m[3])),
    };
    let u32_at = |at: usize| {
        let b = [pcap[at], pcap[at + 1], pcap[at + 2], pcap[at + 3]];
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let (mut at, mut frames) = (24usize, 0u32);
    while at < pcap.len() {
        if pcap.len() - at < 16 {
            return Err(format!("pcap ends inside the header of record {}", frames + 1));
        }
        let len = u32_at(at + 8) as usize;
        if pcap.len() - at - 16 < len {
            return Err(format!("pcap ends inside record {}", frames + 1));
        }
        at += 16 + len;
        frames += 1;
    }
    Ok(frames)
}

/// A pcap with nanosecond timestamps (little-endian), as the sensor writes them.
#[cfg(test)]
pub(crate) fn sample_pcap(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = 0xa1b2_3c4du32.to_le_bytes().to_vec();
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 65535, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (i, f) in frames.iter().enumerate() {
        for v in [1_795_749_927u32, i as u32, f.len() as u32, f.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(f);
    }
    out
}

/// A sensor's error text, bounded.
pub fn excerpt_error(e: &str) -> String {
    let e = e.trim();
    if e.len() <= MAX_EXCERPT_ERROR {
        return e.to_string();
    }
    let mut end = MAX_EXCERPT_ERROR;
    while !e.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &e[..end])
}

pub trait Store: Send + Sync {
    /// Stores a batch in one durable transaction; events whose (sensor, seq) is already
    /// held are skipped. Returns only after the data is on disk.
    fn insert_events(
        &self,
        sensor_id: &str,
        events: &[ActivityEvent],
        spooled_unix_ns: &[i64],
    ) -> anyhow::Result<InsertOutcome>;
    /// Highest sequence number stored for the sensor, or examined by detection when that is
    /// higher (0: none): a sensor numbers its events above it.
    fn stored_through(&self, sensor_id: &str) -> anyhow::Result<u64>;
    /// Events in (sensor, seq) order after the given position, at most `limit`.
    fn events_after(&self, after: Option<(&str, u64)>, limit: usize) -> anyhow::Result<Vec<StoredEvent>>;
    fn event_count(&self) -> anyhow::Result<u64>;

    /// Registers a sensor with the hash of its access key. A revoked sensor may be added
    /// again (with a new key); an active one may not.
    fn add_sensor(&self, id: &str, key_sha256: &str) -> anyhow::Result<()>;
    /// False when there is no such sensor.
    fn revoke_sensor(&self, id: &str) -> anyhow::Result<bool>;
    fn sensor(&self, id: &str) -> anyhow::Result<Option<SensorRecord>>;
    fn sensors(&self) -> anyhow::Result<Vec<SensorRecord>>;
    fn record_registration(&self, info: &SensorInfo) -> anyhow::Result<()>;
    fn record_heartbeat(&self, health: &Health, received_unix_ns: i64) -> anyhow::Result<()>;

    /// One sensor's events after `after_seq`, in sequence order.
    fn sensor_events_after(&self, sensor_id: &str, after_seq: u64, limit: usize) -> anyhow::Result<Vec<StoredEvent>>;
    /// How far detection has read a sensor's events.
    fn detect_cursor(&self, sensor_id: &str) -> anyhow::Result<u64>;
    fn set_detect_cursor(&self, sensor_id: &str, seq: u64) -> anyhow::Result<()>;
    /// Inserts a new alert (id 0; gives it an id and an incident: one with an alert on the
    /// same source or account within `incident_gap_ns`, or a new one) or updates one.
    fn save_alert(&self, alert: &mut Alert, incident_gap_ns: i64) -> anyhow::Result<()> {
        self.save_alerts(std::slice::from_mut(alert), incident_gap_ns)
    }
    /// Saves each alert as [`Store::save_alert`] does, in order, in one transaction (one
    /// sync to disk for a whole detection step).
    fn save_alerts(&self, alerts: &mut [Alert], incident_gap_ns: i64) -> anyhow::Result<()>;
    fn alerts(&self) -> anyhow::Result<Vec<Alert>>;
    /// Alerts last seen within `window_ns` of the newest alert.
    fn recent_alerts(&self, window_ns: i64) -> anyhow::Result<Vec<Alert>>;
    fn incidents(&self) -> anyhow::Result<Vec<Incident>>;
    fn add_user(&self, user: &User) -> anyhow::Result<()>;
    fn user(&self, name: &str) -> anyhow::Result<Option<User>>;
    fn incident(&self, id: i64) -> anyhow::Result<Option<(Incident, String)>>;
    fn incident_alerts(&self, id: i64) -> anyhow::Result<Vec<Alert>>;
    /// Changes status and/or assignee and records who did it (and a comment) in the log.
    fn update_incident(
        &self,
        id: i64,
        status: Option<&str>,
        assignee: Option<&str>,
        comment: &str,
        author: &str,
    ) -> anyhow::Result<bool>;
    fn incident_comments(&self, id: i64) -> anyhow::Result<Vec<Comment>>;
    fn event(&self, sensor_id: &str, seq: u64) -> anyhow::Result<Option<StoredEvent>>;
    fn search_events(&self, q: &EventQuery) -> anyhow::Result<Vec<StoredEvent>>;
    /// Appends to the audit log, keeping its last [`AUDIT_KEEP`] lines.
    fn record_audit(&self, entry: &AuditEntry) -> anyhow::Result<()>;
    /// The audit log's last `limit` lines, newest first.
    fn audit_log(&self, limit: usize) -> anyhow::Result<Vec<AuditEntry>>;
    /// Named blobs of engine state (learned profiles) that must survive a restart.
    fn load_state(&self, name: &str) -> anyhow::Result<Option<String>>;
    /// Writes learned profile rows (replacing those of the same kind and key) in one
    /// transaction, and drops the single profiles document older stores kept.
    fn save_profile_rows(&self, rows: &[ProfileRow]) -> anyhow::Result<()>;
    fn load_profile_rows(&self) -> anyhow::Result<Vec<ProfileRow>>;
    /// One profile row's value.
    fn profile_row(&self, kind: &str, key: &str) -> anyhow::Result<Option<String>>;
    fn save_state(&self, name: &str, value: &str) -> anyhow::Result<()>;

    /// Asks for a pcap excerpt per alert (pending until a heartbeat of its sensor takes
    /// it), in one transaction; returns the excerpt ids. An alert has at most one excerpt:
    /// asking again returns the one it has.
    fn request_excerpts(&self, wanted: &[ExcerptWanted]) -> anyhow::Result<Vec<u64>>;
    fn request_excerpt(&self, wanted: &ExcerptWanted) -> anyhow::Result<u64> {
        Ok(self.request_excerpts(std::slice::from_ref(wanted))?.pop().unwrap_or_default())
    }
    /// The requests to hand a sensor in its heartbeat reply (at most
    /// [`EXCERPTS_PER_HEARTBEAT`], oldest first): those never asked, and those asked more
    /// than [`EXCERPT_ASK_AGAIN_NS`] ago without an answer. Marks them asked at `now`; one
    /// asked [`EXCERPT_MAX_ASKS`] times already fails instead.
    fn pending_excerpts(&self, sensor_id: &str, now_unix_ns: i64) -> anyhow::Result<Vec<ExcerptRequest>>;
    /// Stores a sensor's answer to one of its own requests: the pcap (checked: size,
    /// format) makes it done, an `error` failed.
    fn save_excerpt(&self, sensor_id: &str, excerpt: &Excerpt, now_unix_ns: i64) -> anyhow::Result<ExcerptUpload>;
    /// The excerpt of an alert, with the pcap's bytes when `with_pcap` (and it is done).
    fn alert_excerpt(&self, alert_id: i64, with_pcap: bool) -> anyhow::Result<Option<ExcerptRecord>>;
    /// Every excerpt, without the bytes, by alert id.
    fn excerpts(&self) -> anyhow::Result<Vec<ExcerptRecord>>;

    /// Deletes the events that arrived before `arrived_before_unix_ns` and that detection
    /// has gone through, and the pcaps of excerpts answered before it (the excerpt then
    /// says it expired; alerts and incidents stay). A sensor's newest event always stays:
    /// ingest's duplicate check reads it.
    fn prune(&self, arrived_before_unix_ns: i64) -> anyhow::Result<Pruned>;
}

#[cfg(test)]
mod tests {
    use super::StoreConfig;

    /// A sensor's reason for not sending an excerpt is kept, cut to 1000 bytes: refusing it
    /// would lose the reason and have the sensor send it again.
    #[test]
    fn a_sensors_excerpt_error_is_kept_cut_short() {
        assert_eq!(super::excerpt_error("  rotated away \n"), "rotated away");
        let cut = super::excerpt_error(&"é".repeat(4 << 20));
        assert!(cut.len() <= super::MAX_EXCERPT_ERROR + "…".len() && cut.ends_with("é…"), "{}", cut.len());
    }

    #[test]
    fn retention_is_read_checked_and_documented() {
        assert_eq!(StoreConfig::from_toml("").unwrap(), StoreConfig::default());
        assert_eq!(StoreConfig::default().retention(), Some(std::time::Duration::from_secs(180 * 86_400)));
        assert_eq!(StoreConfig::from_toml("[store]\nretention_days = 0\n").unwrap().retention(), None);
        let err = StoreConfig::from_toml("[store]\nretention_day = 30\n").unwrap_err().to_string();
        assert!(err.contains("retention_day"), "{err}");
        let err = StoreConfig::from_toml("[store]\nretention_days = -1\n").unwrap_err().to_string();
        assert!(err.contains("retention_days"), "{err}");
        // The documented sample is valid and says the defaults.
        let sample = include_str!("../../../deploy/cloud.toml");
        assert_eq!(StoreConfig::from_toml(sample).unwrap(), StoreConfig::default());
    }
}

//! The cloud's storage behind a narrow interface: SQLite (one file, no server) is the
//! default; a server database implements the same trait.

pub mod sqlite;

use crate::{
    detect::Alert,
    pb::{ActivityEvent, Health, SensorInfo},
};

pub use sqlite::SqliteStore;

/// Result of storing one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InsertOutcome {
    pub stored: u32,
    /// Already held (same sensor and sequence number): a resend, dropped.
    pub duplicates: u32,
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

pub trait Store: Send + Sync {
    /// Stores a batch in one durable transaction; events whose (sensor, seq) is already
    /// held are skipped. Returns only after the data is on disk.
    fn insert_events(
        &self,
        sensor_id: &str,
        events: &[ActivityEvent],
        spooled_unix_ns: &[i64],
    ) -> anyhow::Result<InsertOutcome>;
    /// Highest sequence number stored for the sensor (0: none).
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
    /// Named blobs of engine state (learned profiles) that must survive a restart.
    fn load_state(&self, name: &str) -> anyhow::Result<Option<String>>;
    fn save_state(&self, name: &str, value: &str) -> anyhow::Result<()>;
}

//! SQLite store: one file in WAL mode with `synchronous=FULL`, so a committed batch is on
//! disk before the sensor hears it was stored. Events keep their protobuf bytes (the
//! record of what the sensor said) beside the columns queries select on.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::Context as _;
use prost::Message as _;
use rusqlite::{params, Connection, OptionalExtension as _};

use super::{
    check_pcap, excerpt_error, AuditEntry, Comment, EventQuery, ExcerptRecord, ExcerptUpload, ExcerptWanted, Incident,
    InsertOutcome, ProfileRow, Pruned, SensorRecord, Store, StoredEvent, User, AUDIT_KEEP, EXCERPTS_PER_HEARTBEAT,
    EXCERPT_ASK_AGAIN_NS, EXCERPT_MAX_ASKS,
};
use crate::detect::Alert;
use crate::pb::{ActivityEvent, Excerpt, ExcerptRequest, Health, SensorInfo};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sensors (
    id TEXT PRIMARY KEY,
    key_sha256 TEXT NOT NULL,
    created_unix_ns INTEGER NOT NULL,
    revoked_unix_ns INTEGER,
    version TEXT NOT NULL DEFAULT '',
    hostname TEXT NOT NULL DEFAULT '',
    monitored_dcs TEXT NOT NULL DEFAULT '[]',
    capabilities TEXT NOT NULL DEFAULT '[]',
    registered_unix_ns INTEGER,
    last_heartbeat_unix_ns INTEGER,
    clock_skew_ns INTEGER,
    health_counters TEXT NOT NULL DEFAULT '{}',
    health_alerts TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS events (
    sensor_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time_unix_ns INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    category TEXT NOT NULL,
    account TEXT NOT NULL,
    src_ip TEXT NOT NULL,
    dc_ip TEXT NOT NULL,
    result TEXT NOT NULL,
    spooled_unix_ns INTEGER NOT NULL,
    stored_unix_ns INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (sensor_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_by_time ON events (time_unix_ns);
CREATE INDEX IF NOT EXISTS events_by_source ON events (src_ip, time_unix_ns);
CREATE INDEX IF NOT EXISTS events_by_account ON events (account COLLATE NOCASE);
CREATE TABLE IF NOT EXISTS detect_cursors (
    sensor_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    severity TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'new',
    assignee TEXT NOT NULL DEFAULT '',
    first_seen_ns INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    detection TEXT NOT NULL,
    title TEXT NOT NULL,
    severity TEXT NOT NULL,
    mitre TEXT NOT NULL,
    account TEXT NOT NULL,
    src_ip TEXT NOT NULL,
    dc_ip TEXT NOT NULL,
    first_seen_ns INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL,
    description TEXT NOT NULL,
    evidence TEXT NOT NULL,
    dcs TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (last_seen_ns);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS incident_comments (
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    at_unix_ns INTEGER NOT NULL,
    author TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS engine_state (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS profile_rows (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS excerpts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id INTEGER NOT NULL UNIQUE REFERENCES alerts (id),
    sensor_id TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    client_port INTEGER NOT NULL,
    dc_ip TEXT NOT NULL,
    dc_port INTEGER NOT NULL,
    from_unix_ns INTEGER NOT NULL,
    to_unix_ns INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    requested_unix_ns INTEGER NOT NULL,
    asked_unix_ns INTEGER,
    asks INTEGER NOT NULL DEFAULT 0,
    answered_unix_ns INTEGER,
    frames INTEGER NOT NULL DEFAULT 0,
    truncated INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    pcap BLOB
);
CREATE INDEX IF NOT EXISTS excerpts_open ON excerpts (sensor_id, status);
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_unix_ns INTEGER NOT NULL,
    event TEXT NOT NULL,
    user TEXT NOT NULL,
    source TEXT NOT NULL,
    detail TEXT NOT NULL
);
";

/// Columns of an excerpt without its bytes; the pcap's length last.
const EXCERPT_COLUMNS: &str = "id, alert_id, sensor_id, client_ip, client_port, dc_ip, dc_port, from_unix_ns, \
     to_unix_ns, status, requested_unix_ns, asked_unix_ns, asks, answered_unix_ns, frames, truncated, error, \
     COALESCE(length(pcap), 0)";

fn excerpt_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExcerptRecord> {
    Ok(ExcerptRecord {
        id: r.get::<_, i64>(0)? as u64,
        wanted: ExcerptWanted {
            alert_id: r.get(1)?,
            sensor_id: r.get(2)?,
            client_ip: r.get(3)?,
            client_port: r.get(4)?,
            dc_ip: r.get(5)?,
            dc_port: r.get(6)?,
            from_unix_ns: r.get(7)?,
            to_unix_ns: r.get(8)?,
        },
        status: r.get(9)?,
        requested_unix_ns: r.get(10)?,
        asked_unix_ns: r.get(11)?,
        asks: r.get(12)?,
        answered_unix_ns: r.get(13)?,
        frames: r.get(14)?,
        truncated: r.get(15)?,
        error: r.get(16)?,
        pcap_bytes: r.get::<_, i64>(17)? as u64,
        pcap: None,
    })
}

fn severity_rank(s: &str) -> crate::pb::vocab::Severity {
    crate::pb::vocab::Severity::parse(s)
}

const ALERT_COLUMNS: &str = "id, incident_id, detection, title, severity, mitre, account, src_ip, dc_ip, \
     first_seen_ns, last_seen_ns, description, evidence, dcs";

/// Columns: id, title, severity, status, first_seen_ns, last_seen_ns, alert count.
fn incident_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Incident> {
    Ok(Incident {
        id: r.get(0)?,
        title: r.get(1)?,
        severity: r.get(2)?,
        status: r.get(3)?,
        first_seen_ns: r.get(4)?,
        last_seen_ns: r.get(5)?,
        alerts: r.get::<_, i64>(6)? as u64,
    })
}

fn alert_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Alert> {
    Ok(Alert {
        id: r.get(0)?,
        incident_id: r.get(1)?,
        detection: r.get(2)?,
        title: r.get(3)?,
        severity: r.get(4)?,
        mitre: r.get(5)?,
        account: r.get(6)?,
        src_ip: r.get(7)?,
        dc_ip: r.get(8)?,
        first_seen_ns: r.get(9)?,
        last_seen_ns: r.get(10)?,
        description: r.get(11)?,
        evidence: serde_json::from_str(&r.get::<_, String>(12)?).unwrap_or_default(),
        dcs: serde_json::from_str(&r.get::<_, String>(13)?).unwrap_or_default(),
    })
}

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens the database at `path`, creating it (and its directory) when missing. It
    /// holds the portal's password hashes and every event: the file is created 0600 in a
    /// directory created 0700, and an existing one open to others is restricted (SQLite
    /// gives the -wal and -shm files the database file's mode).
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("create {}", dir.display()))?;
        }
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(crate::files::PRIVATE).open(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("create database {}", path.display())),
        }
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            // Someone else's file (a reader that is not its owner) is read as it is.
            if let Err(e) = crate::files::restrict_existing(&file) {
                log::warn!("{e:#}");
            }
        }
        let conn = Connection::open(path).with_context(|| format!("open database {}", path.display()))?;
        Self::init(conn).with_context(|| format!("database {}", path.display()))
    }

    pub fn in_memory() -> anyhow::Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> anyhow::Result<Self> {
        // Another process (the `sensors` commands) may hold the write lock for a moment.
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        // Alerts of an older database gain their DC list (empty until extended).
        let has_dcs: bool =
            conn.query_row("SELECT COUNT(*) FROM pragma_table_info('alerts') WHERE name = 'dcs'", [], |r| r.get(0))?;
        if !has_dcs {
            conn.execute_batch("ALTER TABLE alerts ADD COLUMN dcs TEXT NOT NULL DEFAULT '[]'")?;
        }
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // rusqlite leaves the connection usable after a panic elsewhere (a transaction not
        // committed is rolled back when dropped).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `text` as a LIKE pattern that matches only itself (with `ESCAPE '\'`): a name from a
/// search may hold `%` and `_`, which would otherwise match other accounts.
fn like_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn json_list(text: String) -> Vec<String> {
    serde_json::from_str(&text).unwrap_or_default()
}

fn sensor_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SensorRecord> {
    Ok(SensorRecord {
        id: row.get(0)?,
        key_sha256: row.get(1)?,
        created_unix_ns: row.get(2)?,
        revoked_unix_ns: row.get(3)?,
        version: row.get(4)?,
        hostname: row.get(5)?,
        monitored_dcs: json_list(row.get(6)?),
        capabilities: json_list(row.get(7)?),
        registered_unix_ns: row.get(8)?,
        last_heartbeat_unix_ns: row.get(9)?,
        clock_skew_ns: row.get(10)?,
        health_counters: serde_json::from_str(&row.get::<_, String>(11)?).unwrap_or_default(),
        health_alerts: json_list(row.get(12)?),
    })
}

const SENSOR_COLUMNS: &str = "id, key_sha256, created_unix_ns, revoked_unix_ns, version, hostname, monitored_dcs, \
     capabilities, registered_unix_ns, last_heartbeat_unix_ns, clock_skew_ns, health_counters, health_alerts";

impl Store for SqliteStore {
    fn insert_events(
        &self,
        sensor_id: &str,
        events: &[ActivityEvent],
        spooled_unix_ns: &[i64],
    ) -> anyhow::Result<InsertOutcome> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = crate::unix_ns();
        let mut outcome = InsertOutcome::default();
        let held = Self::held_through(&tx, sensor_id)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO events (sensor_id, seq, time_unix_ns, protocol, category, account, src_ip, \
                 dc_ip, result, spooled_unix_ns, stored_unix_ns, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for (i, ev) in events.iter().enumerate() {
                let seq = i64::try_from(ev.seq).context("sequence number out of range")?;
                let spooled = spooled_unix_ns.get(i).copied().unwrap_or(0);
                let n = insert.execute(params![
                    sensor_id,
                    seq,
                    ev.time_unix_ns,
                    ev.protocol,
                    ev.category,
                    ev.account,
                    ev.src_ip,
                    ev.dc_ip,
                    ev.result,
                    spooled,
                    now,
                    ev.encode_to_vec()
                ])?;
                if n == 1 && ev.seq <= held {
                    // Dropping the transaction stores nothing of the batch.
                    return Ok(InsertOutcome { late: Some((ev.seq, held)), ..InsertOutcome::default() });
                }
                if n == 1 {
                    outcome.stored += 1;
                } else {
                    outcome.duplicates += 1;
                }
            }
        }
        tx.commit()?;
        Ok(outcome)
    }

    fn stored_through(&self, sensor_id: &str) -> anyhow::Result<u64> {
        Self::held_through(&self.conn(), sensor_id)
    }

    fn events_after(&self, after: Option<(&str, u64)>, limit: usize) -> anyhow::Result<Vec<StoredEvent>> {
        let conn = self.conn();
        let (sensor, seq) = after.unwrap_or(("", 0));
        let mut stmt = conn.prepare_cached(
            "SELECT body, spooled_unix_ns, stored_unix_ns FROM events WHERE (sensor_id, seq) > (?1, ?2) \
             ORDER BY sensor_id, seq LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![sensor, seq as i64, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Self::decode_events(rows)
    }

    fn event_count(&self) -> anyhow::Result<u64> {
        Ok(self.conn().query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))? as u64)
    }

    fn add_sensor(&self, id: &str, key_sha256: &str) -> anyhow::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let revoked: Option<Option<i64>> =
            tx.query_row("SELECT revoked_unix_ns FROM sensors WHERE id = ?1", [id], |r| r.get(0)).optional()?;
        match revoked {
            Some(None) => anyhow::bail!("sensor {id} already exists and is active; revoke it first to issue a new key"),
            Some(Some(_)) => {
                tx.execute(
                    "UPDATE sensors SET key_sha256 = ?2, revoked_unix_ns = NULL, created_unix_ns = ?3 WHERE id = ?1",
                    params![id, key_sha256, crate::unix_ns()],
                )?;
            }
            None => {
                tx.execute(
                    "INSERT INTO sensors (id, key_sha256, created_unix_ns) VALUES (?1, ?2, ?3)",
                    params![id, key_sha256, crate::unix_ns()],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn revoke_sensor(&self, id: &str) -> anyhow::Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = crate::unix_ns();
        let n = tx.execute(
            "UPDATE sensors SET revoked_unix_ns = COALESCE(revoked_unix_ns, ?2) WHERE id = ?1",
            params![id, now],
        )?;
        // A revoked sensor can no longer be asked: its open excerpts would wait forever.
        tx.execute(
            "UPDATE excerpts SET status = 'failed', answered_unix_ns = ?2, \
             error = 'the sensor was revoked before it sent the excerpt' \
             WHERE sensor_id = ?1 AND status IN ('pending', 'asked')",
            params![id, now],
        )?;
        tx.commit()?;
        Ok(n == 1)
    }

    fn sensor(&self, id: &str) -> anyhow::Result<Option<SensorRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!("SELECT {SENSOR_COLUMNS} FROM sensors WHERE id = ?1"))?;
        Ok(stmt.query_row([id], sensor_from_row).optional()?)
    }

    fn sensors(&self) -> anyhow::Result<Vec<SensorRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {SENSOR_COLUMNS} FROM sensors ORDER BY id"))?;
        let rows = stmt.query_map([], sensor_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn record_registration(&self, info: &SensorInfo) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE sensors SET version = ?2, hostname = ?3, monitored_dcs = ?4, capabilities = ?5, \
             registered_unix_ns = ?6 WHERE id = ?1",
            params![
                info.sensor_id,
                info.version,
                info.hostname,
                serde_json::to_string(&info.monitored_dcs)?,
                serde_json::to_string(&info.capabilities)?,
                crate::unix_ns()
            ],
        )?;
        Ok(())
    }

    fn record_heartbeat(&self, health: &Health, received_unix_ns: i64) -> anyhow::Result<()> {
        let counters: std::collections::BTreeMap<_, _> = health.counters.iter().collect();
        self.conn().execute(
            "UPDATE sensors SET last_heartbeat_unix_ns = ?2, clock_skew_ns = ?3, health_counters = ?4, \
             health_alerts = ?5 WHERE id = ?1",
            params![
                health.sensor_id,
                received_unix_ns,
                health.sensor_time_unix_ns.saturating_sub(received_unix_ns),
                serde_json::to_string(&counters)?,
                serde_json::to_string(&health.alerts)?
            ],
        )?;
        Ok(())
    }

    fn sensor_events_after(&self, sensor_id: &str, after_seq: u64, limit: usize) -> anyhow::Result<Vec<StoredEvent>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT body, spooled_unix_ns, stored_unix_ns FROM events WHERE sensor_id = ?1 AND seq > ?2 \
             ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![sensor_id, after_seq as i64, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Self::decode_events(rows)
    }

    fn detect_cursor(&self, sensor_id: &str) -> anyhow::Result<u64> {
        let seq: Option<i64> = self
            .conn()
            .query_row("SELECT seq FROM detect_cursors WHERE sensor_id = ?1", [sensor_id], |r| r.get(0))
            .optional()?;
        Ok(seq.unwrap_or(0) as u64)
    }

    fn set_detect_cursor(&self, sensor_id: &str, seq: u64) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO detect_cursors (sensor_id, seq) VALUES (?1, ?2) \
             ON CONFLICT (sensor_id) DO UPDATE SET seq = excluded.seq",
            params![sensor_id, seq as i64],
        )?;
        Ok(())
    }

    fn save_alerts(&self, alerts: &mut [Alert], incident_gap_ns: i64) -> anyhow::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for alert in alerts {
            save_alert_in(&tx, alert, incident_gap_ns)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn alerts(&self) -> anyhow::Result<Vec<Alert>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {ALERT_COLUMNS} FROM alerts ORDER BY first_seen_ns, id"))?;
        let rows = stmt.query_map([], alert_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn recent_alerts(&self, window_ns: i64) -> anyhow::Result<Vec<Alert>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE last_seen_ns >= (SELECT MAX(last_seen_ns) FROM alerts) - ?1"
        ))?;
        let rows = stmt.query_map([window_ns], alert_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_user(&self, user: &User) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO users (name, password_hash, role) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash, role = excluded.role",
            params![user.name, user.password_hash, user.role],
        )?;
        Ok(())
    }

    fn user(&self, name: &str) -> anyhow::Result<Option<User>> {
        Ok(self
            .conn()
            .query_row("SELECT name, password_hash, role FROM users WHERE name = ?1", [name], |r| {
                Ok(User { name: r.get(0)?, password_hash: r.get(1)?, role: r.get(2)? })
            })
            .optional()?)
    }

    fn incident(&self, id: i64) -> anyhow::Result<Option<(Incident, String)>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT i.id, i.title, i.severity, i.status, i.first_seen_ns, i.last_seen_ns, \
                 (SELECT COUNT(*) FROM alerts a WHERE a.incident_id = i.id), i.assignee FROM incidents i WHERE i.id = ?1",
                [id],
                |r| {
                    Ok((
                        incident_from_row(r)?,
                        r.get(7)?,
                    ))
                },
            )
            .optional()?)
    }

    fn incident_alerts(&self, id: i64) -> anyhow::Result<Vec<Alert>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE incident_id = ?1 ORDER BY first_seen_ns, id"
        ))?;
        let rows = stmt.query_map([id], alert_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn update_incident(
        &self,
        id: i64,
        status: Option<&str>,
        assignee: Option<&str>,
        comment: &str,
        author: &str,
    ) -> anyhow::Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let Some((old_status, old_assignee)): Option<(String, String)> = tx
            .query_row("SELECT status, assignee FROM incidents WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
        else {
            return Ok(false);
        };
        let mut log = Vec::new();
        if let Some(s) = status.filter(|s| *s != old_status) {
            tx.execute("UPDATE incidents SET status = ?2 WHERE id = ?1", params![id, s])?;
            log.push(format!("status {old_status} → {s}"));
        }
        if let Some(a) = assignee.filter(|a| *a != old_assignee) {
            tx.execute("UPDATE incidents SET assignee = ?2 WHERE id = ?1", params![id, a])?;
            log.push(if a.is_empty() { "unassigned".to_string() } else { format!("assigned to {a}") });
        }
        if !comment.trim().is_empty() {
            log.push(comment.trim().to_string());
        }
        if !log.is_empty() {
            tx.execute(
                "INSERT INTO incident_comments (incident_id, at_unix_ns, author, text) VALUES (?1, ?2, ?3, ?4)",
                params![id, crate::unix_ns(), author, log.join("; ")],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    fn incident_comments(&self, id: i64) -> anyhow::Result<Vec<Comment>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT at_unix_ns, author, text FROM incident_comments WHERE incident_id = ?1 ORDER BY at_unix_ns, rowid",
        )?;
        let rows =
            stmt.query_map([id], |r| Ok(Comment { at_unix_ns: r.get(0)?, author: r.get(1)?, text: r.get(2)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn event(&self, sensor_id: &str, seq: u64) -> anyhow::Result<Option<StoredEvent>> {
        let row: Option<(Vec<u8>, i64, i64)> = self
            .conn()
            .query_row(
                "SELECT body, spooled_unix_ns, stored_unix_ns FROM events WHERE sensor_id = ?1 AND seq = ?2",
                params![sensor_id, seq as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(Self::decode_events(row.into_iter().collect())?.pop())
    }

    fn search_events(&self, q: &EventQuery) -> anyhow::Result<Vec<StoredEvent>> {
        let conn = self.conn();
        // However the search names the account, it matches every form of its name.
        let account = q.account.as_deref().map(crate::detect::rules::account_key).filter(|a| !a.is_empty());
        let pattern = account.as_deref().map(like_literal);
        let mut stmt = conn.prepare_cached(
            "SELECT body, spooled_unix_ns, stored_unix_ns FROM events WHERE \
             (?1 IS NULL OR lower(account) = ?1 OR lower(account) LIKE ?7 || '@%' ESCAPE '\\' \
             OR lower(account) LIKE '%\\\\' || ?7 ESCAPE '\\' OR lower(account) LIKE 'cn=' || ?7 || ',%' ESCAPE '\\') \
             AND (?2 IS NULL OR src_ip = ?2) AND (?3 IS NULL OR protocol = ?3) \
             AND (?4 IS NULL OR time_unix_ns >= ?4) AND (?5 IS NULL OR time_unix_ns <= ?5) \
             ORDER BY time_unix_ns DESC LIMIT ?6",
        )?;
        let limit = q.limit.unwrap_or(200).min(5000) as i64;
        let rows = stmt
            .query_map(
                params![
                    account,
                    q.host.as_deref().filter(|h| !h.is_empty()),
                    q.protocol.as_deref().filter(|p| !p.is_empty()),
                    q.from_ns,
                    q.to_ns,
                    limit,
                    pattern
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Self::decode_events(rows)
    }

    fn record_audit(&self, entry: &AuditEntry) -> anyhow::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO audit_log (at_unix_ns, event, user, source, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![entry.at_unix_ns, entry.event, entry.user, entry.source, entry.detail],
        )?;
        tx.execute("DELETE FROM audit_log WHERE id <= last_insert_rowid() - ?1", [AUDIT_KEEP])?;
        tx.commit()?;
        Ok(())
    }

    fn audit_log(&self, limit: usize) -> anyhow::Result<Vec<AuditEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT at_unix_ns, event, user, source, detail FROM audit_log ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit.min(AUDIT_KEEP as usize) as i64], |r| {
            Ok(AuditEntry {
                at_unix_ns: r.get(0)?,
                event: r.get(1)?,
                user: r.get(2)?,
                source: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn load_state(&self, name: &str) -> anyhow::Result<Option<String>> {
        Ok(self.conn().query_row("SELECT value FROM engine_state WHERE name = ?1", [name], |r| r.get(0)).optional()?)
    }

    fn save_profile_rows(&self, rows: &[ProfileRow]) -> anyhow::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO profile_rows (kind, key, value) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
            )?;
            for r in rows {
                put.execute(params![r.kind, r.key, r.value])?;
            }
        }
        tx.execute("DELETE FROM engine_state WHERE name = 'profiles'", [])?;
        tx.commit()?;
        Ok(())
    }

    fn load_profile_rows(&self) -> anyhow::Result<Vec<ProfileRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT kind, key, value FROM profile_rows")?;
        let rows = stmt
            .query_map([], |r| Ok(ProfileRow { kind: r.get(0)?, key: r.get(1)?, value: r.get(2)? }))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn profile_row(&self, kind: &str, key: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM profile_rows WHERE kind = ?1 AND key = ?2", [kind, key], |r| r.get(0))
            .optional()?)
    }

    fn save_state(&self, name: &str, value: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO engine_state (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            params![name, value],
        )?;
        Ok(())
    }

    fn incidents(&self) -> anyhow::Result<Vec<Incident>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT i.id, i.title, i.severity, i.status, i.first_seen_ns, i.last_seen_ns, \
             (SELECT COUNT(*) FROM alerts a WHERE a.incident_id = i.id) FROM incidents i ORDER BY i.first_seen_ns",
        )?;
        let rows = stmt.query_map([], incident_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn request_excerpts(&self, wanted: &[ExcerptWanted]) -> anyhow::Result<Vec<u64>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = crate::unix_ns();
        let mut ids = Vec::with_capacity(wanted.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO excerpts (alert_id, sensor_id, client_ip, client_port, dc_ip, dc_port, \
                 from_unix_ns, to_unix_ns, requested_unix_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut id_of = tx.prepare_cached("SELECT id FROM excerpts WHERE alert_id = ?1")?;
            for w in wanted {
                insert.execute(params![
                    w.alert_id,
                    w.sensor_id,
                    w.client_ip,
                    w.client_port,
                    w.dc_ip,
                    w.dc_port,
                    w.from_unix_ns,
                    w.to_unix_ns,
                    now
                ])?;
                ids.push(id_of.query_row([w.alert_id], |r| r.get::<_, i64>(0))? as u64);
            }
        }
        tx.commit()?;
        Ok(ids)
    }

    fn pending_excerpts(&self, sensor_id: &str, now_unix_ns: i64) -> anyhow::Result<Vec<ExcerptRequest>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let again = now_unix_ns.saturating_sub(EXCERPT_ASK_AGAIN_NS);
        tx.execute(
            "UPDATE excerpts SET status = 'failed', answered_unix_ns = ?3, error = ?4 \
             WHERE sensor_id = ?1 AND status = 'asked' AND asked_unix_ns <= ?2 AND asks >= ?5",
            params![
                sensor_id,
                again,
                now_unix_ns,
                format!(
                    "the sensor did not answer {EXCERPT_MAX_ASKS} requests (its version may not cut excerpts, \
                     or it keeps no evidence)"
                ),
                EXCERPT_MAX_ASKS
            ],
        )?;
        let requests = {
            let mut stmt = tx.prepare_cached(
                "SELECT id, client_ip, client_port, dc_ip, dc_port, from_unix_ns, to_unix_ns FROM excerpts \
                 WHERE sensor_id = ?1 AND (status = 'pending' OR (status = 'asked' AND asked_unix_ns <= ?2)) \
                 ORDER BY id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![sensor_id, again, EXCERPTS_PER_HEARTBEAT as i64], |r| {
                Ok(ExcerptRequest {
                    id: r.get::<_, i64>(0)? as u64,
                    client_ip: r.get(1)?,
                    client_port: r.get(2)?,
                    dc_ip: r.get(3)?,
                    dc_port: r.get(4)?,
                    from_unix_ns: r.get(5)?,
                    to_unix_ns: r.get(6)?,
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        {
            let mut mark = tx.prepare_cached(
                "UPDATE excerpts SET status = 'asked', asked_unix_ns = ?2, asks = asks + 1 WHERE id = ?1",
            )?;
            for r in &requests {
                mark.execute(params![r.id as i64, now_unix_ns])?;
            }
        }
        tx.commit()?;
        Ok(requests)
    }

    fn save_excerpt(&self, sensor_id: &str, excerpt: &Excerpt, now_unix_ns: i64) -> anyhow::Result<ExcerptUpload> {
        let Ok(id) = i64::try_from(excerpt.id) else { return Ok(ExcerptUpload::NotYours) };
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row: Option<(String, String)> = tx
            .query_row("SELECT sensor_id, status FROM excerpts WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let outcome = match row {
            None => ExcerptUpload::NotYours,
            Some((owner, _)) if owner != sensor_id => ExcerptUpload::NotYours,
            Some((_, status)) if status == "done" || status == "failed" => ExcerptUpload::AlreadyAnswered,
            Some(_) if !excerpt.error.trim().is_empty() => {
                tx.execute(
                    "UPDATE excerpts SET status = 'failed', answered_unix_ns = ?2, error = ?3, frames = 0, \
                     truncated = ?4, pcap = NULL WHERE id = ?1",
                    params![id, now_unix_ns, excerpt_error(&excerpt.error), excerpt.truncated],
                )?;
                ExcerptUpload::Saved
            }
            Some(_) => match check_pcap(&excerpt.pcap) {
                Ok(frames) => {
                    tx.execute(
                        "UPDATE excerpts SET status = 'done', answered_unix_ns = ?2, error = '', frames = ?3, \
                         truncated = ?4, pcap = ?5 WHERE id = ?1",
                        params![id, now_unix_ns, frames, excerpt.truncated, excerpt.pcap],
                    )?;
                    ExcerptUpload::Saved
                }
                Err(why) => {
                    tx.execute(
                        "UPDATE excerpts SET status = 'failed', answered_unix_ns = ?2, error = ?3, pcap = NULL \
                         WHERE id = ?1",
                        params![id, now_unix_ns, format!("the sensor's upload was refused: {why}")],
                    )?;
                    ExcerptUpload::Invalid(why)
                }
            },
        };
        tx.commit()?;
        Ok(outcome)
    }

    fn alert_excerpt(&self, alert_id: i64, with_pcap: bool) -> anyhow::Result<Option<ExcerptRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {EXCERPT_COLUMNS}, CASE WHEN ?2 AND status = 'done' THEN pcap END FROM excerpts WHERE alert_id = ?1"
        ))?;
        Ok(stmt
            .query_row(params![alert_id, with_pcap], |r| {
                let mut x = excerpt_from_row(r)?;
                x.pcap = r.get(18)?;
                Ok(x)
            })
            .optional()?)
    }

    fn excerpts(&self) -> anyhow::Result<Vec<ExcerptRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {EXCERPT_COLUMNS} FROM excerpts ORDER BY alert_id"))?;
        let rows = stmt.query_map([], excerpt_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn prune(&self, before: i64) -> anyhow::Result<Pruned> {
        let mut pruned = Pruned::default();
        let sensors: Vec<String> = {
            let conn = self.conn();
            let mut stmt = conn.prepare("SELECT id FROM sensors UNION SELECT sensor_id FROM detect_cursors")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for id in sensors {
            let cursor = self.detect_cursor(&id)? as i64;
            let end = self.first_arrived_since(&id, before)?.min(cursor + 1);
            // Short transactions of at most PRUNE_CHUNK events: ingest never waits long.
            let mut from = i64::MIN;
            loop {
                let conn = self.conn();
                let Some(lo): Option<i64> = conn.query_row(
                    "SELECT MIN(seq) FROM events WHERE sensor_id = ?1 AND seq > ?2",
                    params![id, from],
                    |r| r.get(0),
                )?
                else {
                    break;
                };
                if lo >= end {
                    break;
                }
                let to = end.min(lo.saturating_add(PRUNE_CHUNK));
                pruned.events += conn.execute(
                    "DELETE FROM events WHERE sensor_id = ?1 AND seq >= ?2 AND seq < ?3",
                    params![id, lo, to],
                )? as u64;
                from = to - 1;
            }
        }
        pruned.excerpts = self.conn().execute(
            "UPDATE excerpts SET pcap = NULL, status = 'failed', error = 'older than the retention period' \
             WHERE pcap IS NOT NULL AND answered_unix_ns < ?1",
            [before],
        )? as u64;
        Ok(pruned)
    }
}

/// Events deleted per transaction by a retention pass.
const PRUNE_CHUNK: i64 = 10_000;

impl SqliteStore {
    /// The first sequence number of `sensor` that arrived at or after `at` (a sensor sends
    /// in order, so arrival times grow with sequence numbers), found by bisection over the
    /// primary key; the newest event's number when all arrived before. `i64::MIN` when the
    /// sensor has no events.
    fn first_arrived_since(&self, sensor: &str, at: i64) -> anyhow::Result<i64> {
        let conn = self.conn();
        let (lo, hi): (Option<i64>, Option<i64>) =
            conn.query_row("SELECT MIN(seq), MAX(seq) FROM events WHERE sensor_id = ?1", [sensor], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let (Some(mut lo), Some(hi)) = (lo, hi) else { return Ok(i64::MIN) };
        let mut arrived = conn.prepare_cached(
            "SELECT stored_unix_ns FROM events WHERE sensor_id = ?1 AND seq >= ?2 ORDER BY seq LIMIT 1",
        )?;
        let mut arrived_at =
            |seq: i64| -> rusqlite::Result<i64> { arrived.query_row(params![sensor, seq], |r| r.get(0)) };
        if arrived_at(hi)? < at {
            return Ok(hi);
        }
        // Invariant: the event at or after `hi` arrived at or after `at`.
        let mut hi = hi;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if arrived_at(mid)? >= at {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// The highest sequence number the cloud holds or detection has examined for a sensor
    /// (0: none): events retention deleted still count through the detection cursor.
    fn held_through(conn: &Connection, sensor_id: &str) -> anyhow::Result<u64> {
        let (stored, examined): (Option<i64>, Option<i64>) = conn.query_row(
            "SELECT (SELECT MAX(seq) FROM events WHERE sensor_id = ?1),              (SELECT seq FROM detect_cursors WHERE sensor_id = ?1)",
            [sensor_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(stored.unwrap_or(0).max(examined.unwrap_or(0)).max(0) as u64)
    }

    fn decode_events(rows: Vec<(Vec<u8>, i64, i64)>) -> anyhow::Result<Vec<StoredEvent>> {
        rows.into_iter()
            .map(|(body, spooled_unix_ns, stored_unix_ns)| {
                let event = ActivityEvent::decode(body.as_slice()).context("stored event does not decode")?;
                Ok(StoredEvent { event, spooled_unix_ns, stored_unix_ns })
            })
            .collect()
    }
}

/// How far along the kill chain a detection is: domain dominance above credential use and
/// lateral movement, above credential theft, above reconnaissance, above anomalies.
fn kill_chain_rank(detection: &str) -> u8 {
    match detection {
        "dcsync" | "dcshadow" | "golden_ticket" | "zerologon" | "remote_execution" => 4,
        "pass_the_hash" | "pass_the_ticket" | "forced_authentication" | "honeytoken" => 3,
        "kerberoasting"
        | "asrep_roasting"
        | "password_spray"
        | "brute_force"
        | "encryption_downgrade"
        | "cleartext_ldap_bind" => 2,
        "ldap_recon" | "rpc_recon" | "account_enumeration" | "dns_zone_transfer" | "session_enumeration" => 1,
        _ => 0,
    }
}

/// An incident's title names its most severe detection (the furthest along the kill chain,
/// then the earliest, of equals), how many others it holds, and who: "DCSync: directory
/// replication from a non-DC and 6 other detections (10.0.0.5)".
fn retitle_incident(tx: &rusqlite::Transaction<'_>, incident_id: i64) -> anyhow::Result<()> {
    let mut stmt = tx.prepare_cached(
        "SELECT title, severity, account, src_ip, detection FROM alerts WHERE incident_id = ?1 ORDER BY first_seen_ns, id",
    )?;
    let alerts: Vec<(String, String, String, String, String)> = stmt
        .query_map([incident_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
        .collect::<Result<_, _>>()?;
    let Some(lead) = alerts.iter().rev().max_by_key(|a| (severity_rank(&a.1), kill_chain_rank(&a.4))) else {
        return Ok(());
    };
    let others = alerts.iter().map(|a| &a.0).filter(|t| *t != &lead.0).collect::<std::collections::BTreeSet<_>>().len();
    let who = if lead.2.is_empty() { lead.3.clone() } else { format!("{} on {}", lead.2, lead.3) };
    let title = match others {
        0 => format!("{} ({who})", lead.0),
        1 => format!("{} and 1 other detection ({who})", lead.0),
        n => format!("{} and {n} other detections ({who})", lead.0),
    };
    tx.execute("UPDATE incidents SET title = ?2 WHERE id = ?1", params![incident_id, title])?;
    Ok(())
}

/// One alert inserted (with its incident) or updated, inside the caller's transaction.
fn save_alert_in(tx: &rusqlite::Transaction<'_>, alert: &mut Alert, incident_gap_ns: i64) -> anyhow::Result<()> {
    let evidence = serde_json::to_string(&alert.evidence)?;
    if alert.id == 0 {
        // An incident with an alert on the same source or account, close in time.
        let joined: Option<i64> = tx
            .query_row(
                "SELECT incident_id FROM alerts WHERE last_seen_ns >= ?1 AND (src_ip = ?2 OR (account != '' AND account = ?3)) \
                 ORDER BY last_seen_ns DESC LIMIT 1",
                params![alert.first_seen_ns.saturating_sub(incident_gap_ns), alert.src_ip, alert.account],
                |r| r.get(0),
            )
            .optional()?;
        let joined_existing = joined.is_some();
        alert.incident_id = match joined {
            Some(id) => id,
            None => {
                let who = if alert.account.is_empty() {
                    alert.src_ip.clone()
                } else {
                    format!("{} on {}", alert.account, alert.src_ip)
                };
                tx.execute(
                    "INSERT INTO incidents (title, severity, first_seen_ns, last_seen_ns) VALUES (?1, ?2, ?3, ?4)",
                    params![
                        format!("{} ({who})", alert.title),
                        alert.severity,
                        alert.first_seen_ns,
                        alert.last_seen_ns
                    ],
                )?;
                tx.last_insert_rowid()
            }
        };
        tx.execute(
            "INSERT INTO alerts (incident_id, detection, title, severity, mitre, account, src_ip, dc_ip, first_seen_ns, \
             last_seen_ns, description, evidence, dcs) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                alert.incident_id,
                alert.detection,
                alert.title,
                alert.severity,
                alert.mitre,
                alert.account,
                alert.src_ip,
                alert.dc_ip,
                alert.first_seen_ns,
                alert.last_seen_ns,
                alert.description,
                evidence,
                serde_json::to_string(&alert.dcs)?
            ],
        )?;
        alert.id = tx.last_insert_rowid();
        if joined_existing {
            retitle_incident(tx, alert.incident_id)?;
        }
    } else {
        tx.execute(
            "UPDATE alerts SET last_seen_ns = ?2, description = ?3, evidence = ?4, severity = ?5, dcs = ?6 WHERE id = ?1",
            params![alert.id, alert.last_seen_ns, alert.description, evidence, alert.severity, serde_json::to_string(&alert.dcs)?],
        )?;
    }
    let (first, last, severity): (i64, i64, String) = tx.query_row(
        "SELECT first_seen_ns, last_seen_ns, severity FROM incidents WHERE id = ?1",
        [alert.incident_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let severity =
        if severity_rank(&alert.severity) > severity_rank(&severity) { alert.severity.clone() } else { severity };
    tx.execute(
        "UPDATE incidents SET first_seen_ns = ?2, last_seen_ns = ?3, severity = ?4 WHERE id = ?1",
        params![alert.incident_id, first.min(alert.first_seen_ns), last.max(alert.last_seen_ns), severity],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, account: &str) -> ActivityEvent {
        ActivityEvent {
            sensor_id: "s1".into(),
            seq,
            protocol: "kerberos".into(),
            account: account.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_resent_batch_is_stored_once_and_reported_as_duplicates() {
        let store = SqliteStore::in_memory().unwrap();
        let batch: Vec<_> = (1..=5).map(|i| event(i, "alice")).collect();
        assert_eq!(
            store.insert_events("s1", &batch, &[]).unwrap(),
            InsertOutcome { stored: 5, duplicates: 0, late: None }
        );
        let overlap: Vec<_> = (4..=8).map(|i| event(i, "alice")).collect();
        assert_eq!(
            store.insert_events("s1", &overlap, &[]).unwrap(),
            InsertOutcome { stored: 3, duplicates: 2, late: None }
        );
        // Another sensor's numbers are its own.
        assert_eq!(store.insert_events("s2", &batch, &[]).unwrap().stored, 5);
        assert_eq!(store.event_count().unwrap(), 13);
        assert_eq!(store.stored_through("s1").unwrap(), 8);
        assert_eq!(store.stored_through("nobody").unwrap(), 0);
        let page = store.events_after(Some(("s1", 6)), 10).unwrap();
        assert_eq!(page.iter().map(|e| e.event.seq).collect::<Vec<_>>(), vec![7, 8, 1, 2, 3, 4, 5]);
    }

    /// A sensor's numbers only grow: a new event below what the cloud holds, or below what
    /// detection has examined, would never be examined. The batch is refused whole.
    #[test]
    fn new_events_below_what_is_held_or_examined_are_refused() {
        let store = SqliteStore::in_memory().unwrap();
        let seqs = |r: &[u64]| r.iter().map(|&i| event(i, "alice")).collect::<Vec<_>>();
        store.insert_events("s1", &seqs(&[1, 2, 3, 10, 11]), &[]).unwrap();
        let late = store.insert_events("s1", &seqs(&[3, 7, 12]), &[]).unwrap();
        assert_eq!(late.late, Some((7, 11)));
        assert_eq!((late.stored, store.event_count().unwrap()), (0, 5), "nothing of the batch stored");
        store.set_detect_cursor("s1", 20).unwrap();
        assert_eq!(store.stored_through("s1").unwrap(), 20, "examined through 20 (retention deleted the rest)");
        assert_eq!(store.insert_events("s1", &seqs(&[15]), &[]).unwrap().late, Some((15, 20)));
        assert_eq!(store.insert_events("s1", &seqs(&[21]), &[]).unwrap().stored, 1);
    }

    #[test]
    fn sensors_are_added_revoked_and_added_again_with_a_new_key() {
        let store = SqliteStore::in_memory().unwrap();
        store.add_sensor("s1", "hash1").unwrap();
        assert!(store.add_sensor("s1", "hash2").is_err(), "an active sensor keeps its key");
        assert!(store.revoke_sensor("s1").unwrap());
        assert!(!store.revoke_sensor("ghost").unwrap());
        assert!(store.sensor("s1").unwrap().unwrap().revoked_unix_ns.is_some());
        store.add_sensor("s1", "hash2").unwrap();
        let s = store.sensor("s1").unwrap().unwrap();
        assert_eq!((s.key_sha256.as_str(), s.revoked_unix_ns), ("hash2", None));
        store
            .record_registration(&SensorInfo {
                sensor_id: "s1".into(),
                version: "0.1.0".into(),
                monitored_dcs: vec!["10.0.0.10".into()],
                ..Default::default()
            })
            .unwrap();
        let mut health = Health { sensor_id: "s1".into(), sensor_time_unix_ns: 1_000, ..Default::default() };
        health.counters.insert("kept".into(), 42);
        health.alerts.push("capture_drops".into());
        store.record_heartbeat(&health, 400).unwrap();
        let s = store.sensors().unwrap().remove(0);
        assert_eq!(s.monitored_dcs, vec!["10.0.0.10"]);
        assert_eq!(s.health_counters.get("kept"), Some(&42));
        assert_eq!(s.health_alerts, vec!["capture_drops"]);
        assert_eq!(s.clock_skew_ns, Some(600));
    }

    #[test]
    fn alerts_on_a_shared_entity_close_in_time_join_one_incident() {
        let store = SqliteStore::in_memory().unwrap();
        let hour = 3_600_000_000_000;
        let alert = |detection: &str, src: &str, account: &str, t: i64, severity: &str| Alert {
            id: 0,
            detection: detection.into(),
            title: detection.into(),
            severity: severity.into(),
            mitre: String::new(),
            account: account.into(),
            src_ip: src.into(),
            dc_ip: "10.0.0.10".into(),
            dcs: Vec::new(),
            first_seen_ns: t,
            last_seen_ns: t,
            description: String::new(),
            evidence: vec![("s".into(), 1)],
            incident_id: 0,
        };
        let mut a = alert("ldap_recon", "10.1.1.1", "", 0, "low");
        store.save_alert(&mut a, hour).unwrap();
        let mut b = alert("kerberoasting", "10.1.1.1", "alice", 10, "medium");
        store.save_alert(&mut b, hour).unwrap();
        // Same account, other host: the attacker moved; same incident.
        let mut c = alert("pass_the_ticket", "10.1.1.2", "alice", 20, "high");
        store.save_alert(&mut c, hour).unwrap();
        // Unrelated, and related but much later: new incidents.
        let mut d = alert("dns_zone_transfer", "10.9.9.9", "", 30, "medium");
        store.save_alert(&mut d, hour).unwrap();
        let mut e = alert("ldap_recon", "10.1.1.1", "", 5 * hour, "low");
        store.save_alert(&mut e, hour).unwrap();
        assert_eq!([a.incident_id, b.incident_id, c.incident_id], [a.incident_id; 3]);
        assert_ne!(d.incident_id, a.incident_id);
        assert_ne!(e.incident_id, a.incident_id);
        let incidents = store.incidents().unwrap();
        assert_eq!(incidents.len(), 3);
        assert_eq!((incidents[0].alerts, incidents[0].severity.as_str(), incidents[0].last_seen_ns), (3, "high", 20));
        // Titled after its most severe detection, not its first.
        assert_eq!(incidents[0].title, "pass_the_ticket and 2 other detections (alice on 10.1.1.2)");
        assert_eq!(incidents[1].title, "dns_zone_transfer (10.9.9.9)");
        // An update keeps the id and moves the times.
        a.last_seen_ns = 40;
        a.evidence.push(("s".into(), 2));
        store.save_alert(&mut a, hour).unwrap();
        let stored = store.alerts().unwrap().into_iter().find(|x| x.id == a.id).unwrap();
        assert_eq!((stored.last_seen_ns, stored.evidence.len()), (40, 2));
        assert_eq!(store.recent_alerts(hour).unwrap().len(), 1, "only the latest is within an hour of the newest");
        // Of equally severe ones, the furthest along the kill chain.
        let mut spray = alert("password_spray", "10.3.3.3", "", 10 * hour, "high");
        store.save_alert(&mut spray, hour).unwrap();
        let mut dcsync = alert("dcsync", "10.3.3.3", "", 10 * hour + 10, "high");
        store.save_alert(&mut dcsync, hour).unwrap();
        let titled = store.incidents().unwrap().into_iter().find(|i| i.id == dcsync.incident_id).unwrap();
        assert_eq!(titled.title, "dcsync and 1 other detection (10.3.3.3)");
    }

    use crate::store::sample_pcap as pcap;

    /// Alerts 1..=n to hang excerpts on.
    fn with_alerts(store: SqliteStore, n: usize) -> SqliteStore {
        for i in 0..n {
            let mut a = Alert {
                id: 0,
                detection: "kerberoasting".into(),
                title: "Kerberoasting".into(),
                severity: "medium".into(),
                mitre: String::new(),
                account: String::new(),
                src_ip: format!("10.1.1.{i}"),
                dc_ip: "10.0.0.10".into(),
                dcs: Vec::new(),
                first_seen_ns: i as i64,
                last_seen_ns: i as i64,
                description: String::new(),
                evidence: vec![],
                incident_id: 0,
            };
            store.save_alert(&mut a, 1).unwrap();
        }
        store
    }

    fn wanted(alert_id: i64, sensor: &str) -> ExcerptWanted {
        ExcerptWanted {
            alert_id,
            sensor_id: sensor.into(),
            client_ip: "10.1.1.1".into(),
            client_port: 50_000 + alert_id as u32,
            dc_ip: "10.0.0.10".into(),
            dc_port: 88,
            from_unix_ns: 1_000,
            to_unix_ns: 61_000,
        }
    }

    #[test]
    fn pcaps_are_checked_and_their_frames_counted() {
        assert_eq!(check_pcap(&pcap(&[])), Ok(0));
        assert_eq!(check_pcap(&pcap(&[b"abc", &[0; 60]])), Ok(2));
        let mut micro_be = vec![0xa1, 0xb2, 0xc3, 0xd4];
        micro_be.extend_from_slice(&[0; 20]);
        micro_be.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2, 7, 7]);
        assert_eq!(check_pcap(&micro_be), Ok(1));
        let cut = pcap(&[b"abcdef"]);
        assert!(check_pcap(&cut[..cut.len() - 1]).unwrap_err().contains("inside record 1"));
        assert!(check_pcap(&cut[..30]).unwrap_err().contains("header of record 1"));
        assert!(check_pcap(b"\x0a\x0d\x0d\x0a and more bytes than a header").unwrap_err().contains("not a pcap"));
        assert!(check_pcap(&[0xd4, 0xc3, 0xb2, 0xa1]).unwrap_err().contains("shorter than"));
        let big = pcap(&[&vec![0; crate::store::MAX_EXCERPT_PCAP_BYTES]]);
        assert!(check_pcap(&big).unwrap_err().contains("at most"));
    }

    #[test]
    fn excerpts_are_handed_out_a_few_per_heartbeat_and_asked_again_when_unanswered() {
        let store = with_alerts(SqliteStore::in_memory().unwrap(), 7);
        let ids = store.request_excerpts(&(1..=6).map(|a| wanted(a, "s1")).collect::<Vec<_>>()).unwrap();
        assert_eq!(ids.len(), 6);
        // One excerpt per alert: asking again gives the same one.
        assert_eq!(store.request_excerpt(&wanted(1, "s1")).unwrap(), ids[0]);
        store.request_excerpt(&wanted(7, "s2")).unwrap();
        let s = 1_000_000_000i64;
        let first = store.pending_excerpts("s1", 100 * s).unwrap();
        assert_eq!(first.iter().map(|r| r.id).collect::<Vec<_>>(), ids[..4], "oldest first, four at most");
        assert_eq!(
            (first[0].client_ip.as_str(), first[0].client_port, first[0].dc_port, first[0].to_unix_ns),
            ("10.1.1.1", 50_001, 88, 61_000)
        );
        let second = store.pending_excerpts("s1", 110 * s).unwrap();
        assert_eq!(second.iter().map(|r| r.id).collect::<Vec<_>>(), ids[4..], "then the rest");
        assert!(store.pending_excerpts("s1", 120 * s).unwrap().is_empty(), "asked, not yet due again");
        let x = store.alert_excerpt(1, false).unwrap().unwrap();
        assert_eq!(
            (x.status.as_str(), x.asked_unix_ns, x.asks, x.label().as_str()),
            ("asked", Some(100 * s), 1, "waiting")
        );
        // Unanswered for a minute: asked again.
        let again = store.pending_excerpts("s1", 160 * s).unwrap();
        assert_eq!(again.iter().map(|r| r.id).collect::<Vec<_>>(), ids[..4]);
        assert_eq!(store.pending_excerpts("s2", 160 * s).unwrap().len(), 1, "each sensor its own");
        // Answered ones are not asked again; unanswered ones, asked often enough, fail.
        store.save_excerpt("s1", &Excerpt { id: ids[0], pcap: pcap(&[b"x"]), ..Default::default() }, 161 * s).unwrap();
        let mut t = 160 * s;
        for _ in 0..20 {
            t += 61 * s;
            assert!(store.pending_excerpts("s1", t).unwrap().iter().all(|r| r.id != ids[0]));
        }
        let all = store.excerpts().unwrap();
        assert_eq!(all[0].status, "done");
        assert!(all[1..6].iter().all(|x| x.status == "failed" && x.asks == EXCERPT_MAX_ASKS), "{all:?}");
        assert!(all[1].label().starts_with("failed: the sensor did not answer 10 requests"), "{}", all[1].label());
        assert_eq!(all[6].status, "asked", "the other sensor's is untouched");
        // A revoked sensor will not answer: what it was asked fails, answered ones stay.
        store.add_sensor("s2", "h").unwrap();
        store.revoke_sensor("s2").unwrap();
        let x = store.alert_excerpt(7, false).unwrap().unwrap();
        assert_eq!(x.label(), "failed: the sensor was revoked before it sent the excerpt");
        store.add_sensor("s1", "h").unwrap();
        store.revoke_sensor("s1").unwrap();
        assert_eq!(store.alert_excerpt(1, false).unwrap().unwrap().status, "done");
    }

    /// Retention deletes what arrived before the cut and detection has gone through, in
    /// order, never a sensor's newest event, and expires answered excerpts' pcaps.
    #[test]
    fn retention_deletes_old_processed_events_and_expired_pcaps() {
        let store = with_alerts(SqliteStore::in_memory().unwrap(), 1);
        let arrive = |seqs: std::ops::RangeInclusive<u64>| {
            let batch: Vec<_> = seqs.map(|i| event(i, "alice")).collect();
            store.insert_events("s1", &batch, &[]).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
            crate::unix_ns()
        };
        let after_first = arrive(1..=40);
        let after_second = arrive(41..=60);
        store.insert_events("s2", &[event(1, "bob"), event(2, "bob")], &[]).unwrap();
        let seqs = |s: &SqliteStore, sensor: &str| {
            s.sensor_events_after(sensor, 0, 1000).unwrap().iter().map(|e| e.event.seq).collect::<Vec<_>>()
        };

        // Detection has not gone through anything yet: nothing goes.
        assert_eq!(store.prune(after_second).unwrap(), Pruned::default());
        // Through 25: the first 25 of the first batch go, not the rest of it.
        store.set_detect_cursor("s1", 25).unwrap();
        assert_eq!(store.prune(after_first).unwrap().events, 25);
        assert_eq!(seqs(&store, "s1"), (26..=60).collect::<Vec<_>>());
        // Through everything, cut between the batches: the first batch goes.
        store.set_detect_cursor("s1", 60).unwrap();
        assert_eq!(store.prune(after_first).unwrap().events, 15);
        assert_eq!(seqs(&store, "s1"), (41..=60).collect::<Vec<_>>());
        // All arrived before the cut: the newest stays, so a resend is still a duplicate.
        store.set_detect_cursor("s2", 2).unwrap();
        assert_eq!(store.prune(crate::unix_ns()).unwrap().events, 19 + 1);
        assert_eq!((seqs(&store, "s1"), seqs(&store, "s2")), (vec![60], vec![2]));
        assert_eq!(store.insert_events("s1", &[event(60, "alice")], &[]).unwrap().duplicates, 1);

        // An answered excerpt's pcap expires; the alert and the excerpt record stay.
        let ids = store.request_excerpts(&[wanted(1, "s1")]).unwrap();
        store.pending_excerpts("s1", 5).unwrap();
        let answer = Excerpt { id: ids[0], pcap: pcap(&[b"frame"]), frames: 1, ..Default::default() };
        assert_eq!(store.save_excerpt("s1", &answer, 100).unwrap(), ExcerptUpload::Saved);
        assert_eq!(store.prune(100).unwrap().excerpts, 0, "answered at the cut: kept");
        assert_eq!(store.prune(101).unwrap().excerpts, 1);
        let x = store.alert_excerpt(1, true).unwrap().unwrap();
        assert_eq!((x.status.as_str(), x.pcap.as_deref()), ("failed", None));
        assert!(x.label().contains("retention"), "{}", x.label());
        assert_eq!(store.alerts().unwrap().len(), 1);
    }

    #[test]
    fn an_upload_is_stored_only_for_the_sensors_own_request_and_only_when_it_is_a_pcap() {
        let store = with_alerts(SqliteStore::in_memory().unwrap(), 4);
        let ids =
            store.request_excerpts(&[wanted(1, "s1"), wanted(2, "s1"), wanted(3, "s1"), wanted(4, "s1")]).unwrap();
        store.pending_excerpts("s1", 5).unwrap();
        let file = pcap(&[b"frame one", b"frame two"]);
        let upload = |id: u64| Excerpt { id, pcap: file.clone(), frames: 2, ..Default::default() };
        assert_eq!(store.save_excerpt("s2", &upload(ids[0]), 6).unwrap(), ExcerptUpload::NotYours);
        assert_eq!(store.save_excerpt("s1", &upload(999), 6).unwrap(), ExcerptUpload::NotYours);
        assert_eq!(store.save_excerpt("s1", &upload(u64::MAX), 6).unwrap(), ExcerptUpload::NotYours);
        let x = store.alert_excerpt(1, true).unwrap().unwrap();
        assert_eq!(
            (x.status.as_str(), x.pcap, x.pcap_bytes),
            ("asked", None, 0),
            "another sensor's upload changed nothing"
        );

        assert_eq!(
            store.save_excerpt("s1", &Excerpt { truncated: true, ..upload(ids[0]) }, 7).unwrap(),
            ExcerptUpload::Saved
        );
        let x = store.alert_excerpt(1, true).unwrap().unwrap();
        assert_eq!(
            (x.status.as_str(), x.frames, x.truncated, x.pcap_bytes, x.answered_unix_ns, x.label().as_str()),
            ("done", 2, true, file.len() as u64, Some(7), "done")
        );
        assert_eq!(x.pcap.as_deref(), Some(file.as_slice()));
        assert_eq!(store.alert_excerpt(1, false).unwrap().unwrap().pcap, None, "bytes only when asked for");
        // A resend after a lost acknowledgement: the first answer stays.
        let other = Excerpt { pcap: pcap(&[]), ..upload(ids[0]) };
        assert_eq!(store.save_excerpt("s1", &other, 8).unwrap(), ExcerptUpload::AlreadyAnswered);
        assert_eq!(store.alert_excerpt(1, true).unwrap().unwrap().pcap.as_deref(), Some(file.as_slice()));

        // The sensor could not cut it.
        let failed = Excerpt { id: ids[1], error: "evidence rotated away".into(), ..Default::default() };
        assert_eq!(store.save_excerpt("s1", &failed, 9).unwrap(), ExcerptUpload::Saved);
        let x = store.alert_excerpt(2, true).unwrap().unwrap();
        assert_eq!((x.label().as_str(), x.status.as_str(), x.pcap), ("failed: evidence rotated away", "failed", None));
        // Not a pcap, or an empty answer without an error: refused, and the excerpt fails.
        let bogus = Excerpt { id: ids[2], pcap: b"<html>not a capture</html>".to_vec(), ..Default::default() };
        assert!(
            matches!(store.save_excerpt("s1", &bogus, 10).unwrap(), ExcerptUpload::Invalid(w) if w.contains("not a pcap"))
        );
        let empty = Excerpt { id: ids[3], ..Default::default() };
        assert!(matches!(store.save_excerpt("s1", &empty, 10).unwrap(), ExcerptUpload::Invalid(_)));
        let x = store.alert_excerpt(3, false).unwrap().unwrap();
        assert!(x.status == "failed" && x.error.contains("refused: not a pcap"), "{x:?}");
        assert!(store.pending_excerpts("s1", 1 << 50).unwrap().is_empty(), "answered ones are not asked again");
        assert_eq!(store.alert_excerpt(42, false).unwrap(), None);
    }

    #[test]
    fn the_audit_log_keeps_its_last_lines_newest_first() {
        let store = SqliteStore::in_memory().unwrap();
        let entry = |n: i64| AuditEntry {
            at_unix_ns: n,
            event: "failed".into(),
            user: format!("user{n}"),
            source: "192.0.2.1".into(),
            detail: String::new(),
        };
        for n in 1..=AUDIT_KEEP + 5 {
            store.record_audit(&entry(n)).unwrap();
        }
        let count: i64 = store.conn().query_row("SELECT COUNT(*) FROM audit_log", [], |r| r.get(0)).unwrap();
        assert_eq!(count, AUDIT_KEEP);
        let last = store.audit_log(3).unwrap();
        assert_eq!(last, vec![entry(AUDIT_KEEP + 5), entry(AUDIT_KEEP + 4), entry(AUDIT_KEEP + 3)]);
        let all = store.audit_log(usize::MAX).unwrap();
        assert_eq!((all.len() as i64, all.last().unwrap().at_unix_ns), (AUDIT_KEEP, 6));
    }

    #[test]
    fn an_existing_database_gets_the_excerpts_and_audit_tables_and_alert_dcs_when_opened() {
        let path = std::env::temp_dir().join(format!("dctap-excerpt-schema-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let store = with_alerts(SqliteStore::open(&path).unwrap(), 1);
            store
                .conn()
                .execute_batch(
                    "DROP INDEX excerpts_open; DROP TABLE excerpts; DROP TABLE audit_log; \
                     ALTER TABLE alerts DROP COLUMN dcs;",
                )
                .unwrap();
            store.add_sensor("s1", "h").unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert!(store.sensor("s1").unwrap().is_some(), "what was there stays");
        assert!(store.alerts().unwrap().iter().all(|a| a.dcs.is_empty()), "alerts gain an empty DC list");
        let id = store.request_excerpt(&wanted(1, "s1")).unwrap();
        store.record_audit(&AuditEntry { event: "signed_in".into(), ..Default::default() }).unwrap();
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.excerpts().unwrap()[0].id, id, "and opening again keeps it");
        assert_eq!(store.audit_log(10).unwrap().len(), 1);
        drop(store);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    #[test]
    fn activity_search_matches_accounts_however_they_are_written() {
        let store = SqliteStore::in_memory().unwrap();
        let ev = |seq: u64, account: &str, src: &str, protocol: &str| ActivityEvent {
            sensor_id: "s1".into(),
            seq,
            time_unix_ns: seq as i64,
            account: account.into(),
            src_ip: src.into(),
            protocol: protocol.into(),
            ..Default::default()
        };
        let events = [
            ev(1, "alice@LAB.EXAMPLE", "10.1.1.1", "kerberos"),
            ev(2, "LAB\\Alice", "10.1.1.2", "ntlm"),
            ev(3, "malice@LAB.EXAMPLE", "10.1.1.1", "kerberos"),
            ev(4, "bob@LAB.EXAMPLE", "10.1.1.1", "ldap"),
            ev(5, "CN=alice,CN=Users,DC=lab,DC=example", "10.1.1.3", "ldap"),
        ];
        store.insert_events("s1", &events, &[]).unwrap();
        let seqs = |q: EventQuery| store.search_events(&q).unwrap().iter().map(|e| e.event.seq).collect::<Vec<_>>();
        assert_eq!(seqs(EventQuery { account: Some("alice".into()), ..Default::default() }), vec![5, 2, 1]);
        assert_eq!(seqs(EventQuery { account: Some("LAB\\ALICE".into()), ..Default::default() }), vec![5, 2, 1]);
        assert_eq!(seqs(EventQuery { host: Some("10.1.1.1".into()), ..Default::default() }), vec![4, 3, 1]);
        assert_eq!(
            seqs(EventQuery {
                host: Some("10.1.1.1".into()),
                protocol: Some("kerberos".into()),
                from_ns: Some(2),
                ..Default::default()
            }),
            vec![3]
        );
        assert_eq!(seqs(EventQuery { limit: Some(1), ..Default::default() }), vec![5]);
    }

    #[test]
    fn the_database_and_its_wal_files_are_the_owners_alone_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt as _;

        use crate::files::tests::{mode, TempDir};
        // SAFETY: umask only sets this process's file creation mask; 022 is the usual one,
        // which leaves new files readable by all.
        unsafe { libc::umask(0o022) };
        let tmp = TempDir::new("db-modes");
        let path = tmp.0.join("state/dctap/cloud.db");
        let store = SqliteStore::open(&path).unwrap();
        store.add_sensor("s1", "0").unwrap();
        for file in [path.clone(), path.with_extension("db-wal"), path.with_extension("db-shm")] {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        assert_eq!((mode(&tmp.0.join("state")), mode(&tmp.0.join("state/dctap"))), (0o700, 0o700));
        drop(store);
        // One an earlier version made readable by all is restricted when opened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert!(store.sensor("s1").unwrap().is_some());
    }

    #[test]
    fn activity_search_takes_wildcard_characters_literally() {
        let store = SqliteStore::in_memory().unwrap();
        let ev = |seq: u64, account: &str| ActivityEvent { time_unix_ns: seq as i64, ..event(seq, account) };
        let events = [
            ev(1, "a_b@LAB.EXAMPLE"),
            ev(2, "LAB\\a_b"),
            ev(3, "CN=a_b,CN=Users,DC=lab,DC=example"),
            ev(4, "axb@LAB.EXAMPLE"),
            ev(5, "LAB\\axb"),
            ev(6, "CN=axb,CN=Users,DC=lab,DC=example"),
            ev(7, "100%@LAB.EXAMPLE"),
            ev(8, "LAB\\100%"),
        ];
        store.insert_events("s1", &events, &[]).unwrap();
        let seqs = |account: &str| {
            let q = EventQuery { account: Some(account.into()), ..Default::default() };
            store.search_events(&q).unwrap().iter().map(|e| e.event.seq).collect::<Vec<_>>()
        };
        assert_eq!(seqs("a_b"), vec![3, 2, 1]);
        assert_eq!(seqs("axb"), vec![6, 5, 4]);
        assert_eq!(seqs("100%"), vec![8, 7]);
        assert_eq!(seqs("%"), Vec::<u64>::new());
        assert_eq!(seqs("_"), Vec::<u64>::new());
        assert_eq!(seqs("a%"), Vec::<u64>::new());
        assert_eq!(seqs("__b"), Vec::<u64>::new());
    }
}

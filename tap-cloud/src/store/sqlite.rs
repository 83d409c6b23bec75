//! SQLite store: one file in WAL mode with `synchronous=FULL`, so a committed batch is on
//! disk before the sensor hears it was stored. Events keep their protobuf bytes (the
//! record of what the sensor said) beside the columns queries select on.

use std::{path::Path, sync::Mutex};

use anyhow::Context as _;
use prost::Message as _;
use rusqlite::{params, Connection, OptionalExtension as _};

use super::{InsertOutcome, SensorRecord, Store, StoredEvent};
use crate::pb::{ActivityEvent, Health, SensorInfo};

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
";

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
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
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // rusqlite leaves the connection usable after a panic elsewhere (a transaction not
        // committed is rolled back when dropped).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
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
        let tx = conn.transaction()?;
        let now = crate::unix_ns();
        let mut outcome = InsertOutcome::default();
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
        let max: Option<i64> =
            self.conn().query_row("SELECT MAX(seq) FROM events WHERE sensor_id = ?1", [sensor_id], |r| r.get(0))?;
        Ok(max.unwrap_or(0) as u64)
    }

    fn events_after(&self, after: Option<(&str, u64)>, limit: usize) -> anyhow::Result<Vec<StoredEvent>> {
        let conn = self.conn();
        let (sensor, seq) = after.unwrap_or(("", 0));
        let mut stmt = conn.prepare_cached(
            "SELECT body, spooled_unix_ns, stored_unix_ns FROM events WHERE (sensor_id, seq) > (?1, ?2) \
             ORDER BY sensor_id, seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![sensor, seq as i64, limit as i64], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (body, spooled_unix_ns, stored_unix_ns) = row?;
            let event = ActivityEvent::decode(body.as_slice()).context("stored event does not decode")?;
            out.push(StoredEvent { event, spooled_unix_ns, stored_unix_ns });
        }
        Ok(out)
    }

    fn event_count(&self) -> anyhow::Result<u64> {
        Ok(self.conn().query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))? as u64)
    }

    fn add_sensor(&self, id: &str, key_sha256: &str) -> anyhow::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
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
        let n = self.conn().execute(
            "UPDATE sensors SET revoked_unix_ns = COALESCE(revoked_unix_ns, ?2) WHERE id = ?1",
            params![id, crate::unix_ns()],
        )?;
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
                health.sensor_time_unix_ns - received_unix_ns,
                serde_json::to_string(&counters)?,
                serde_json::to_string(&health.alerts)?
            ],
        )?;
        Ok(())
    }
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
        assert_eq!(store.insert_events("s1", &batch, &[]).unwrap(), InsertOutcome { stored: 5, duplicates: 0 });
        let overlap: Vec<_> = (4..=8).map(|i| event(i, "alice")).collect();
        assert_eq!(store.insert_events("s1", &overlap, &[]).unwrap(), InsertOutcome { stored: 3, duplicates: 2 });
        // Another sensor's numbers are its own.
        assert_eq!(store.insert_events("s2", &batch, &[]).unwrap().stored, 5);
        assert_eq!(store.event_count().unwrap(), 13);
        assert_eq!(store.stored_through("s1").unwrap(), 8);
        assert_eq!(store.stored_through("nobody").unwrap(), 0);
        let page = store.events_after(Some(("s1", 6)), 10).unwrap();
        assert_eq!(page.iter().map(|e| e.event.seq).collect::<Vec<_>>(), vec![7, 8, 1, 2, 3, 4, 5]);
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
}

//! Feeds stored events to the engine, per sensor in sequence order, from where the last
//! run stopped (a cursor per sensor in the store), and saves the alerts it raises.
//!
//! Alerts are saved every step; the learned profiles and the cursors together at a
//! checkpoint, every [`CHECKPOINT_EVERY`] and whenever detection has caught up. The
//! profiles are one document of every account and host learned, so saving them per step
//! would write all of them for every 5 000 events. After a crash the events since the
//! last checkpoint are processed again: their alerts are resumed from the store and
//! extended, and profiles learn them twice, which is harmless.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use super::{Alert, Engine};
use crate::store::{ExcerptWanted, Store};

/// Name of the learned profiles in the store's engine state.
const PROFILES: &str = "profiles";
/// Name of the record of events detection failed on, in the store's engine state.
pub const DETECTION_FAILURES: &str = "detection_failures";
/// Failures kept in that record (the count covers all).
const RECENT_FAILURES: usize = 20;
/// Longest failure message kept.
const MAX_FAILURE_MESSAGE: usize = 500;

/// Events the detections failed on (a bug met by some input): each was skipped, and
/// detection went on. Shown in the portal and the metrics.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DetectionFailures {
    pub count: u64,
    /// The latest, oldest first.
    pub recent: Vec<DetectionFailure>,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DetectionFailure {
    pub at_unix_ns: i64,
    pub sensor_id: String,
    pub seq: u64,
    pub message: String,
}

impl DetectionFailures {
    pub fn load(store: &dyn Store) -> Self {
        store
            .load_state(DETECTION_FAILURES)
            .ok()
            .flatten()
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default()
    }
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into());
    text.chars().take(MAX_FAILURE_MESSAGE).collect()
}

/// A new alert's pcap excerpt spans this long before and after its first evidence event.
pub const EXCERPT_MARGIN_NS: i64 = 30_000_000_000;

/// Events read per sensor per step.
const BATCH: usize = 5_000;

/// Longest time between checkpoints while events keep coming.
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Runner {
    pub engine: Engine,
    /// Where new alerts also go (SIEM); None: nowhere else.
    pub exporter: Option<super::export::Exporter>,
    store: Arc<dyn Store>,
    /// Alerts on a shared entity this close in time join one incident.
    pub incident_gap_ns: i64,
    /// Per sensor, the last event processed since the last checkpoint.
    pending_cursors: HashMap<String, u64>,
    checkpointed_at: std::time::Instant,
    pub failures: DetectionFailures,
    /// Tests: the event whose processing panics, as a bug would.
    #[cfg(test)]
    fail_on: Option<u64>,
}

impl Runner {
    /// Resumes with the alerts still open (seen within the window) so an attack that goes
    /// on across a restart extends its alert instead of opening a second one.
    pub fn new(engine: Engine, store: Arc<dyn Store>) -> anyhow::Result<Self> {
        let mut engine = engine;
        for a in store.recent_alerts(engine.config.window_ns())? {
            engine.resume(a);
        }
        if let Some(json) = store.load_state(PROFILES)? {
            match serde_json::from_str(&json) {
                Ok(p) => engine.profiles = p,
                // Starting to learn again beats not starting at all.
                Err(e) => log::warn!("learned profiles unreadable, learning again: {e}"),
            }
        }
        let failures = DetectionFailures::load(store.as_ref());
        Ok(Self {
            engine,
            exporter: None,
            store,
            incident_gap_ns: 3_600_000_000_000,
            pending_cursors: HashMap::new(),
            checkpointed_at: std::time::Instant::now(),
            failures,
            #[cfg(test)]
            fail_on: None,
        })
    }

    /// One pass over what arrived since the last; returns the events processed.
    pub fn step(&mut self) -> anyhow::Result<usize> {
        let mut processed = 0;
        let sensors = self.store.sensors()?;
        // Only a live sensor keeps the frames behind its events and heartbeats to be asked
        // for them; one reading a file does neither.
        let live: HashSet<&str> = sensors
            .iter()
            .filter(|s| s.revoked_unix_ns.is_none() && s.capabilities.iter().any(|c| c == "capture"))
            .map(|s| s.id.as_str())
            .collect();
        for sensor in &sensors {
            self.engine.add_dcs(&sensor.monitored_dcs);
            let cursor = match self.pending_cursors.get(&sensor.id) {
                Some(&seq) => seq,
                None => self.store.detect_cursor(&sensor.id)?,
            };
            let events = self.store.sensor_events_after(&sensor.id, cursor, BATCH)?;
            let Some(last) = events.last().map(|e| e.event.seq) else { continue };
            // Each alert once per step, in its latest state, all in one transaction: saving
            // every update on its own (an fsync each) made detection fall seconds behind a
            // busy sensor (bench e2e). An alert is its key and its first sighting: the same
            // key may close and open again within a step.
            let mut alerts: Vec<Alert> = Vec::new();
            let mut index: HashMap<(String, String, String, i64), usize> = HashMap::new();
            for e in &events {
                // A bug that some input meets must not stop detection for every sensor:
                // the event is recorded, skipped, and the next one goes on.
                let engine = &mut self.engine;
                #[cfg(test)]
                let fail = self.fail_on == Some(e.event.seq);
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    #[cfg(test)]
                    assert!(!fail, "injected failure");
                    engine.process(&e.event)
                }));
                let raised = match outcome {
                    Ok(raised) => raised,
                    Err(payload) => {
                        self.record_failure(&e.event, panic_message(payload.as_ref()))?;
                        continue;
                    }
                };
                for a in raised {
                    let key = (a.detection.clone(), a.src_ip.clone(), a.account.clone(), a.first_seen_ns);
                    match index.get(&key) {
                        Some(&i) => alerts[i] = a,
                        None => {
                            index.insert(key, alerts.len());
                            alerts.push(a);
                        }
                    }
                }
            }
            let new: Vec<bool> = alerts.iter().map(|a| a.id == 0).collect();
            self.store.save_alerts(&mut alerts, self.incident_gap_ns)?;
            let mut excerpts = Vec::new();
            for (a, _) in alerts.iter().zip(&new).filter(|(_, new)| **new) {
                if let Some(w) = self.excerpt_for(a, &live)? {
                    excerpts.push(w);
                }
            }
            if !excerpts.is_empty() {
                self.store.request_excerpts(&excerpts)?;
            }
            for (a, new) in alerts.iter().zip(new) {
                if let (true, Some(x)) = (new, self.exporter.as_mut()) {
                    x.send(a);
                }
                self.engine.saved(a);
            }
            self.pending_cursors.insert(sensor.id.clone(), last);
            processed += events.len();
        }
        if processed == 0 || self.checkpointed_at.elapsed() >= CHECKPOINT_EVERY {
            self.checkpoint()?;
        }
        Ok(processed)
    }

    /// Saves the learned profiles, then the cursors: a crash in between learns events
    /// twice rather than never.
    pub fn checkpoint(&mut self) -> anyhow::Result<()> {
        self.save_profiles()?;
        for (sensor, seq) in self.pending_cursors.drain() {
            self.store.set_detect_cursor(&sensor, seq)?;
        }
        self.checkpointed_at = std::time::Instant::now();
        Ok(())
    }

    /// The pcap excerpt to ask for a new alert: the conversation of its first evidence
    /// event, [`EXCERPT_MARGIN_NS`] either side of it, from the live sensor that saw it;
    /// None when that event is not stored or its sensor is not live.
    fn excerpt_for(&self, alert: &Alert, live: &HashSet<&str>) -> anyhow::Result<Option<ExcerptWanted>> {
        let Some((sensor, seq)) = alert.evidence.first() else { return Ok(None) };
        if !live.contains(sensor.as_str()) {
            return Ok(None);
        }
        let Some(e) = self.store.event(sensor, *seq)? else { return Ok(None) };
        let e = e.event;
        if e.src_ip.is_empty() || e.dc_ip.is_empty() {
            return Ok(None);
        }
        Ok(Some(ExcerptWanted {
            alert_id: alert.id,
            sensor_id: sensor.clone(),
            client_ip: e.src_ip,
            client_port: e.src_port,
            dc_ip: e.dc_ip,
            dc_port: e.dc_port,
            from_unix_ns: e.time_unix_ns.saturating_sub(EXCERPT_MARGIN_NS),
            to_unix_ns: e.time_unix_ns.saturating_add(EXCERPT_MARGIN_NS),
        }))
    }

    fn record_failure(&mut self, ev: &crate::pb::ActivityEvent, message: String) -> anyhow::Result<()> {
        log::error!(
            "detection failed on event {} of sensor {} and skipped it: {message}",
            ev.seq,
            ev.sensor_id.escape_debug()
        );
        self.failures.count = self.failures.count.saturating_add(1);
        if self.failures.recent.len() >= RECENT_FAILURES {
            self.failures.recent.remove(0);
        }
        self.failures.recent.push(DetectionFailure {
            at_unix_ns: crate::unix_ns(),
            sensor_id: ev.sensor_id.clone(),
            seq: ev.seq,
            message,
        });
        self.store.save_state(DETECTION_FAILURES, &serde_json::to_string(&self.failures)?)
    }

    fn save_profiles(&mut self) -> anyhow::Result<()> {
        if self.engine.profiles_dirty {
            self.store.save_state(PROFILES, &serde_json::to_string(&self.engine.profiles)?)?;
            self.engine.profiles_dirty = false;
        }
        Ok(())
    }

    /// Steps until nothing new is left.
    pub fn catch_up(&mut self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let n = self.step()?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        detect::DetectConfig,
        pb::{activity_event::Detail, ActivityEvent, Kerberos},
        store::SqliteStore,
    };

    /// A Kerberos message from 10.1.1.1 to the DC, as sensor s1 reports it: `error_code`
    /// 24 on a KRB-ERROR (30) is a wrong password, an AS-REP (11) a logon.
    fn kerberos(seq: u64, time_unix_ns: i64, user: &str, msg_type: u32, error_code: i32) -> ActivityEvent {
        ActivityEvent {
            sensor_id: "s1".into(),
            seq,
            time_unix_ns,
            src_ip: "10.1.1.1".into(),
            dc_ip: "10.0.0.10".into(),
            account: format!("{user}@LAB"),
            result: if error_code == 0 { "success" } else { "failure" }.into(),
            detail: Some(Detail::Kerberos(Kerberos { msg_type, cname: user.into(), error_code, ..Default::default() })),
            ..Default::default()
        }
    }

    fn failure(seq: u64, time_unix_ns: i64, user: &str) -> ActivityEvent {
        kerberos(seq, time_unix_ns, user, 30, 24)
    }

    /// Cursors reach the store at a checkpoint (when detection has caught up, or after
    /// CHECKPOINT_EVERY), not per step; a runner that dies before one starts again from
    /// the last, and one after it from where that left off.
    #[test]
    fn cursors_are_saved_at_checkpoints() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        store.add_sensor("s1", "h").unwrap();
        let logon = |seq: u64| kerberos(seq, seq as i64 * 1_000_000, &format!("user{}", seq % 50), 11, 0);
        let events: Vec<_> = (1..=(BATCH as u64 + 1000)).map(logon).collect();
        store.insert_events("s1", &events, &[]).unwrap();
        let mut runner = Runner::new(Engine::new(DetectConfig::default()), Arc::clone(&store)).unwrap();
        assert_eq!(runner.step().unwrap(), BATCH);
        assert_eq!(store.detect_cursor("s1").unwrap(), 0, "no checkpoint while events keep coming");
        // Dies here: a new runner goes through the same events again.
        let mut again = Runner::new(Engine::new(DetectConfig::default()), Arc::clone(&store)).unwrap();
        assert_eq!(again.catch_up().unwrap(), BATCH + 1000);
        assert_eq!(store.detect_cursor("s1").unwrap(), BATCH as u64 + 1000, "caught up: a checkpoint");
        assert!(store.load_state(PROFILES).unwrap().is_some(), "the profiles went with it");
        let mut after = Runner::new(Engine::new(DetectConfig::default()), Arc::clone(&store)).unwrap();
        assert_eq!(after.catch_up().unwrap(), 0);
        // Events arriving for longer than CHECKPOINT_EVERY are checkpointed on the way.
        runner.checkpointed_at -= CHECKPOINT_EVERY;
        store.insert_events("s1", &[logon(BATCH as u64 + 1001)], &[]).unwrap();
        assert_eq!(runner.step().unwrap(), 1000 + 1);
        assert_eq!(store.detect_cursor("s1").unwrap(), BATCH as u64 + 1001);
    }

    /// Events processed again after a crash before a checkpoint extend the alerts they
    /// raised the first time; they raise none twice.
    #[test]
    fn events_processed_again_after_a_crash_raise_no_alert_twice() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        store.add_sensor("s1", "h").unwrap();
        let failure = |seq: u64| failure(seq, seq as i64 * 1_000_000_000, &format!("u{}", seq % 8));
        store.insert_events("s1", &(1..=40).map(failure).collect::<Vec<_>>(), &[]).unwrap();
        let mut first = Runner::new(Engine::new(DetectConfig::default()), Arc::clone(&store)).unwrap();
        assert_eq!(first.step().unwrap(), 40);
        let raised = store.alerts().unwrap();
        assert!(!raised.is_empty());
        assert_eq!(store.detect_cursor("s1").unwrap(), 0, "crashed before a checkpoint");
        let mut second = Runner::new(Engine::new(DetectConfig::default()), Arc::clone(&store)).unwrap();
        assert_eq!(second.catch_up().unwrap(), 40);
        let after: Vec<_> =
            store.alerts().unwrap().into_iter().map(|a| (a.id, a.detection, a.src_ip, a.account)).collect();
        let before: Vec<_> = raised.into_iter().map(|a| (a.id, a.detection, a.src_ip, a.account)).collect();
        assert_eq!(after, before);
    }

    /// A time no clock gives (a crafted capture stamped 2^63 ns reads as i64::MIN) used to
    /// be learned as the start of the profiles and made the next logon's time arithmetic
    /// overflow, which stopped detection for every sensor, also after a restart.
    #[test]
    fn absurd_event_times_neither_stop_nor_poison_detection() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        store.add_sensor("s1", "h").unwrap();
        let t0 = 1_700_000_000_000_000_000;
        let mut events = vec![kerberos(1, i64::MIN, "alice", 11, 0), kerberos(2, i64::MAX, "bob", 11, 0)];
        events.push(kerberos(3, t0, "alice", 11, 0));
        events.extend((4..=9).map(|seq| failure(seq, t0 + seq as i64, &format!("u{seq}"))));
        store.insert_events("s1", &events, &[]).unwrap();
        let mut runner = Runner::new(Engine::new(DetectConfig::default()), Arc::clone(&store)).unwrap();
        assert_eq!(runner.catch_up().unwrap(), 9);
        assert_eq!(runner.failures.count, 0);
        let detections: Vec<_> = store.alerts().unwrap().into_iter().map(|a| a.detection).collect();
        assert!(detections.contains(&"password_spray".to_string()), "{detections:?}");
        // What was saved loads again, and detection goes on after a restart.
        drop(runner);
        store.insert_events("s1", &[kerberos(10, t0 + 100, "carol", 11, 0)], &[]).unwrap();
        let mut again = Runner::new(Engine::new(DetectConfig::default()), Arc::clone(&store)).unwrap();
        assert_eq!(again.catch_up().unwrap(), 1);
    }

    /// A bug some event meets (here injected) costs that event, not detection: it is
    /// recorded for the portal and the metrics, and the events after it are examined.
    #[test]
    fn an_event_detection_fails_on_is_recorded_and_skipped() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        store.add_sensor("s1", "h").unwrap();
        let events: Vec<_> = (1..=8).map(|seq| failure(seq, seq as i64 * 1_000_000, &format!("u{seq}"))).collect();
        store.insert_events("s1", &events, &[]).unwrap();
        let mut runner = Runner::new(Engine::new(DetectConfig::default()), Arc::clone(&store)).unwrap();
        runner.fail_on = Some(3);
        assert_eq!(runner.catch_up().unwrap(), 8);
        assert_eq!(runner.failures.count, 1);
        assert_eq!((runner.failures.recent[0].sensor_id.as_str(), runner.failures.recent[0].seq), ("s1", 3));
        assert!(runner.failures.recent[0].message.contains("injected failure"));
        assert_eq!(DetectionFailures::load(store.as_ref()), runner.failures, "kept in the store");
        let spray = store.alerts().unwrap();
        assert_eq!(spray.len(), 1, "the seven other failures still spray");
        assert!(!spray[0].evidence.iter().any(|(_, seq)| *seq == 3));
        runner.checkpoint().unwrap();
        assert_eq!(store.detect_cursor("s1").unwrap(), 8, "the cursor moves past it");
    }

    #[test]
    fn a_restarted_runner_resumes_its_cursor_profiles_and_open_alerts() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        store.add_sensor("s1", "h").unwrap();
        let failure = |seq: u64, user: &str| failure(seq, seq as i64 * 1_000_000_000, user);
        let first: Vec<_> = (1..=5).map(|i| failure(i, &format!("u{i}"))).collect();
        store.insert_events("s1", &first, &[]).unwrap();
        let mut runner = Runner::new(Engine::new(DetectConfig::default()), Arc::clone(&store)).unwrap();
        assert_eq!(runner.catch_up().unwrap(), 5);
        assert_eq!(store.alerts().unwrap().len(), 1, "the spray");
        let learned = runner.engine.profiles.clone();
        drop(runner);

        // Sliding windows start empty after a restart (minutes of state, not kept); five
        // more failures spray again, and that extends the alert instead of opening another.
        let more: Vec<_> = (6..=10).map(|i| failure(i, &format!("u{i}"))).collect();
        store.insert_events("s1", &more, &[]).unwrap();
        let mut runner = Runner::new(Engine::new(DetectConfig::default()), Arc::clone(&store)).unwrap();
        assert_eq!(runner.engine.profiles, learned);
        assert_eq!(runner.catch_up().unwrap(), 5, "only what arrived since");
        let alerts = store.alerts().unwrap();
        assert_eq!(alerts.len(), 1, "the spray goes on in the same alert: {alerts:?}");
        assert_eq!(alerts[0].last_seen_ns, 10_000_000_000);
    }

    #[test]
    fn a_new_alert_of_a_live_sensor_asks_for_the_pcap_of_its_first_evidence_conversation() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        for (id, capability) in [("live", "capture"), ("file", "offline")] {
            store.add_sensor(id, "h").unwrap();
            store
                .record_registration(&crate::pb::SensorInfo {
                    sensor_id: id.into(),
                    capabilities: vec!["kerberos".into(), capability.into()],
                    ..Default::default()
                })
                .unwrap();
        }
        let failure = |sensor: &str, seq: u64, src: &str, user: &str| ActivityEvent {
            sensor_id: sensor.into(),
            src_ip: src.into(),
            src_port: 40_000 + seq as u32,
            dc_port: 88,
            ..failure(seq, 1_000_000_000_000 + seq as i64 * 1_000_000_000, user)
        };
        // A spray seen by each sensor, from different hosts: two alerts.
        let live: Vec<_> = (1..=5).map(|i| failure("live", i, "10.1.1.1", &format!("u{i}"))).collect();
        let file: Vec<_> = (1..=5).map(|i| failure("file", i, "10.2.2.2", &format!("v{i}"))).collect();
        store.insert_events("live", &live, &[]).unwrap();
        store.insert_events("file", &file, &[]).unwrap();
        let mut runner = Runner::new(Engine::new(DetectConfig::default()), Arc::clone(&store)).unwrap();
        runner.catch_up().unwrap();
        let alerts = store.alerts().unwrap();
        assert_eq!(alerts.len(), 2, "{alerts:?}");
        let excerpts = store.excerpts().unwrap();
        assert_eq!(excerpts.len(), 1, "only the live sensor's alert: {excerpts:?}");
        let x = &excerpts[0];
        let alert = alerts.iter().find(|a| a.src_ip == "10.1.1.1").unwrap();
        let (_, seq) = alert.evidence[0];
        let t = 1_000_000_000_000 + seq as i64 * 1_000_000_000;
        assert_eq!(
            x.wanted,
            ExcerptWanted {
                alert_id: alert.id,
                sensor_id: "live".into(),
                client_ip: "10.1.1.1".into(),
                client_port: 40_000 + seq as u32,
                dc_ip: "10.0.0.10".into(),
                dc_port: 88,
                from_unix_ns: t.saturating_sub(30_000_000_000),
                to_unix_ns: t.saturating_add(30_000_000_000),
            }
        );
        assert_eq!(x.status, "pending");
        // The spray goes on: the alert grows, and keeps its one excerpt.
        store.insert_events("live", &[failure("live", 6, "10.1.1.1", "u6")], &[]).unwrap();
        runner.catch_up().unwrap();
        assert_eq!(store.alerts().unwrap().len(), 2);
        assert_eq!(store.excerpts().unwrap().len(), 1);
    }

    #[test]
    fn one_step_saves_each_alert_once_and_keeps_an_alert_that_closed_and_opened_again_apart() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        store.add_sensor("s1", "h").unwrap();
        let failure = |seq: u64, t: i64| failure(seq, t * 1_000_000_000, "bob");
        // Twenty guesses, then, hours later, twenty more: two brute-force alerts, each with
        // its own evidence, all in one step.
        let events: Vec<_> =
            (1..=40u64).map(|i| failure(i, if i <= 20 { i as i64 } else { 20_000 + i as i64 })).collect();
        store.insert_events("s1", &events, &[]).unwrap();
        let mut runner = Runner::new(Engine::new(DetectConfig::default()), Arc::clone(&store)).unwrap();
        assert_eq!(runner.step().unwrap(), 40);
        let alerts = store.alerts().unwrap();
        assert_eq!(alerts.len(), 2, "{alerts:?}");
        assert!(alerts[0].last_seen_ns <= 20_000_000_000 && alerts[1].first_seen_ns > 20_000_000_000_000);
        assert!(alerts.iter().all(|a| a.detection == "brute_force" && a.evidence.len() > 5), "{alerts:?}");
        // The engine knows the ids: a later guess extends the second alert.
        store.insert_events("s1", &[failure(41, 20_050)], &[]).unwrap();
        runner.step().unwrap();
        let alerts = store.alerts().unwrap();
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[1].last_seen_ns, 20_050_000_000_000);
    }
}

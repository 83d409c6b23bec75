//! Feeds stored events to the engine in event-time order across every sensor, from where
//! the last run stopped (a cursor per sensor in the store), and saves the alerts it raises.
//!
//! Sensors deliver at their own pace, and one sensor's workers each in theirs: a TGT
//! issued at one DC can reach the cloud after its use at another. Events are therefore held
//! and merged by event time, and one is examined once every active sensor has delivered
//! events `allowed_lateness_secs` later than it (the watermark). A sensor that delivered
//! nothing for `sensor_idle_secs` stops holding the others back; what it sends afterwards
//! older than what was examined is examined at once, as late, and its alerts say so.
//!
//! Alerts are saved every step; the learned profiles and the cursors together at a
//! checkpoint, every [`CHECKPOINT_EVERY`] and whenever detection has caught up. The
//! profiles are one document of every account and host learned, so saving them per step
//! would write all of them for every 5 000 events. After a crash the events since the
//! last checkpoint are processed again: their alerts are resumed from the store and
//! extended, and profiles learn them twice, which is harmless.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{Alert, Engine};
use crate::store::{ExcerptWanted, Store};

/// Name of the single document older stores kept the learned profiles in.
const PROFILES_DOCUMENT: &str = "profiles";
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

/// Name of the sensors detection no longer waits for, in the store's engine state.
pub const NOT_WAITED_FOR: &str = "detection_not_waiting";

/// The sensors detection stopped waiting for (silent while others delivered), with when.
pub fn not_waited_for(store: &dyn Store) -> BTreeMap<String, i64> {
    store.load_state(NOT_WAITED_FOR).ok().flatten().and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default()
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

/// Events held for event-time order at most: past it the oldest are examined without
/// waiting (a sensor far behind the others cannot grow the cloud without bound).
const MAX_HELD: usize = 200_000;

/// What a sensor has delivered, for the watermark.
struct Progress {
    /// The latest event time it delivered; None before its first event.
    latest: Option<i64>,
    /// When it last delivered (or was first seen): silent longer than the idle time, it no
    /// longer holds the others back.
    last_delivery: Instant,
    /// Sequence numbers read and not examined yet: its cursor stays below the lowest.
    held: BTreeSet<u64>,
    /// Highest sequence number read from the store.
    fetched: u64,
}

/// Added to the description of an alert raised or extended by an event examined late.
const LATE_NOTE: &str = " Part of its evidence arrived late (its sensor had fallen silent, and events of other sensors after it were examined first).";

/// Longest time between checkpoints while events keep coming.
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Runner {
    pub engine: Engine,
    /// Where new alerts also go (SIEM); None: nowhere else.
    pub exporter: Option<super::export::Exporter>,
    store: Arc<dyn Store>,
    /// Alerts on a shared entity this close in time join one incident.
    pub incident_gap_ns: i64,
    /// Per sensor, what to save as its cursor at the next checkpoint.
    pending_cursors: HashMap<String, u64>,
    checkpointed_at: std::time::Instant,
    /// Per sensor, what it delivered (the watermark's inputs).
    progress: HashMap<String, Progress>,
    /// Events read and not examined yet, by (event time, sensor, sequence number).
    held: BTreeMap<(i64, String, u64), crate::pb::ActivityEvent>,
    /// Latest event time examined: an event older than this arriving now is late.
    examined_through: i64,
    /// Events held at most (`MAX_HELD`; smaller in tests).
    held_bound: usize,
    /// Sensors that went silent while others delivered (a health alert each), and what
    /// of it the store holds.
    pub silent: BTreeMap<String, i64>,
    silent_saved: BTreeMap<String, i64>,
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
        let rows = store.load_profile_rows()?;
        if !rows.is_empty() {
            let (profiles, unreadable) = super::profiles::Profiles::from_rows(&rows);
            if unreadable > 0 {
                // Learning those again beats not starting at all.
                log::warn!("{unreadable} learned profile rows unreadable, learning them again");
            }
            engine.profiles = profiles;
        } else if let Some(json) = store.load_state(PROFILES_DOCUMENT)? {
            match serde_json::from_str::<super::profiles::Profiles>(&json) {
                Ok(mut p) => {
                    // Written as rows at the first checkpoint, which drops the document.
                    p.mark_all_changed();
                    engine.profiles = p;
                }
                Err(e) => log::warn!("learned profiles unreadable, learning again: {e}"),
            }
        }
        let failures = DetectionFailures::load(store.as_ref());
        let silent = not_waited_for(store.as_ref());
        Ok(Self {
            engine,
            exporter: None,
            store,
            incident_gap_ns: 3_600_000_000_000,
            pending_cursors: HashMap::new(),
            checkpointed_at: std::time::Instant::now(),
            progress: HashMap::new(),
            held: BTreeMap::new(),
            held_bound: MAX_HELD,
            examined_through: i64::MIN,
            silent_saved: silent.clone(),
            silent,
            failures,
            #[cfg(test)]
            fail_on: None,
        })
    }

    /// One pass over what arrived since the last: reads it, examines what the watermark
    /// allows; returns the events examined.
    pub fn step(&mut self) -> anyhow::Result<usize> {
        self.advance(false)
    }

    /// Examines every event read, whatever the watermark (the end of a catch-up: nothing
    /// more is coming).
    pub fn flush(&mut self) -> anyhow::Result<usize> {
        self.advance(true)
    }

    fn advance(&mut self, flush: bool) -> anyhow::Result<usize> {
        let sensors = self.store.sensors()?;
        // Only a live sensor keeps the frames behind its events and heartbeats to be asked
        // for them; one reading a file does neither.
        let live: HashSet<&str> = sensors
            .iter()
            .filter(|s| s.revoked_unix_ns.is_none() && s.capabilities.iter().any(|c| c == "capture"))
            .map(|s| s.id.as_str())
            .collect();
        let now = Instant::now();
        let mut late = Vec::new();
        for sensor in &sensors {
            self.engine.add_dcs(&sensor.monitored_dcs);
            if !self.progress.contains_key(&sensor.id) {
                let cursor = self.store.detect_cursor(&sensor.id)?;
                let p = Progress { latest: None, last_delivery: now, held: BTreeSet::new(), fetched: cursor };
                self.progress.insert(sensor.id.clone(), p);
            }
            let Some(p) = self.progress.get_mut(&sensor.id) else { continue };
            if self.held.len() >= self.held_bound {
                continue;
            }
            let events = self.store.sensor_events_after(&sensor.id, p.fetched, BATCH)?;
            let Some(last) = events.last().map(|e| e.event.seq) else { continue };
            p.fetched = last;
            p.last_delivery = now;
            if self.silent.remove(&sensor.id).is_some() {
                log::info!(
                    "sensor {} delivers again; its events older than those examined are examined as late",
                    sensor.id.escape_debug()
                );
            }
            for e in events {
                let ev = e.event;
                p.latest = Some(p.latest.map_or(ev.time_unix_ns, |t| t.max(ev.time_unix_ns)));
                if ev.time_unix_ns < self.examined_through {
                    late.push(ev);
                } else {
                    p.held.insert(ev.seq);
                    self.held.insert((ev.time_unix_ns, ev.sensor_id.clone(), ev.seq), ev);
                }
            }
        }
        let watermark = if flush { i64::MAX } else { self.watermark(&sensors, now) };
        let mut ready = Vec::new();
        loop {
            let over = self.held.len() > self.held_bound;
            let Some(entry) = self.held.first_entry() else { break };
            if entry.key().0 > watermark && !over {
                break;
            }
            let ev = entry.remove();
            if let Some(p) = self.progress.get_mut(&ev.sensor_id) {
                p.held.remove(&ev.seq);
            }
            self.examined_through = self.examined_through.max(ev.time_unix_ns);
            ready.push(ev);
        }
        let examined = late.len() + ready.len();
        if examined > 0 {
            self.examine(&late, &ready, &live)?;
        }
        for (id, p) in &self.progress {
            // The cursor stays below every event read and not examined yet.
            let cursor = p.held.first().map_or(p.fetched, |first| first.saturating_sub(1));
            self.pending_cursors.insert(id.clone(), cursor);
        }
        if examined == 0 || self.checkpointed_at.elapsed() >= CHECKPOINT_EVERY {
            self.checkpoint()?;
        }
        Ok(examined)
    }

    /// The event time up to which every active sensor has delivered, less the allowed
    /// lateness (a sensor reading a file: nothing until it is done). A sensor silent for
    /// longer than the idle time is not waited for (and is noted as silent while others
    /// deliver).
    fn watermark(&mut self, sensors: &[crate::store::SensorRecord], now: Instant) -> i64 {
        let idle = Duration::from_secs(self.engine.config.sensor_idle_secs);
        let lateness = self.engine.config.allowed_lateness_ns();
        let mut watermark = i64::MAX;
        let active = |p: &Progress| now.duration_since(p.last_delivery) < idle;
        let others_deliver = self.progress.values().any(|p| active(p) && p.latest.is_some());
        for s in sensors.iter().filter(|s| s.revoked_unix_ns.is_none()) {
            let Some(p) = self.progress.get(&s.id) else { continue };
            if !active(p) {
                if p.latest.is_some() && others_deliver && !self.silent.contains_key(&s.id) {
                    log::warn!(
                        "sensor {} delivered nothing for {} s: detection no longer waits for it",
                        s.id.escape_debug(),
                        idle.as_secs()
                    );
                    self.silent.insert(s.id.clone(), crate::unix_ns());
                }
                continue;
            }
            // A sensor reading a file delivers its workers' events in no time order (each
            // worker's share of the file in turn): nothing is examined until it is done.
            let reading_a_file = s.capabilities.iter().any(|c| c == "offline");
            let delivered = if reading_a_file { None } else { p.latest };
            watermark = watermark.min(delivered.map_or(i64::MIN, |t| t.saturating_sub(lateness)));
        }
        watermark
    }

    /// Runs the engine over late events (first: they are the oldest) and then the events
    /// in order, saves the alerts in one transaction, asks for their excerpts and exports
    /// the new ones.
    fn examine(
        &mut self,
        late: &[crate::pb::ActivityEvent],
        ready: &[crate::pb::ActivityEvent],
        live: &HashSet<&str>,
    ) -> anyhow::Result<()> {
        // Each alert once per step, in its latest state, all in one transaction: saving
        // every update on its own (an fsync each) made detection fall seconds behind a
        // busy sensor (bench e2e). An alert is its key and its first sighting: the same
        // key may close and open again within a step.
        let mut alerts: Vec<Alert> = Vec::new();
        let mut index: HashMap<(String, String, String, i64), usize> = HashMap::new();
        let events = late.iter().map(|e| (e, true)).chain(ready.iter().map(|e| (e, false)));
        for (ev, is_late) in events {
            // A bug that some input meets must not stop detection for every sensor:
            // the event is recorded, skipped, and the next one goes on.
            let engine = &mut self.engine;
            #[cfg(test)]
            let fail = self.fail_on == Some(ev.seq);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                #[cfg(test)]
                assert!(!fail, "injected failure");
                engine.process(ev)
            }));
            let raised = match outcome {
                Ok(raised) => raised,
                Err(payload) => {
                    self.record_failure(ev, panic_message(payload.as_ref()))?;
                    continue;
                }
            };
            for mut a in raised {
                if is_late && !a.description.ends_with(LATE_NOTE) {
                    a.description.push_str(LATE_NOTE);
                }
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
            if let Some(w) = self.excerpt_for(a, live)? {
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
        Ok(())
    }

    /// Saves the learned profiles, then the cursors: a crash in between learns events
    /// twice rather than never.
    pub fn checkpoint(&mut self) -> anyhow::Result<()> {
        self.save_profiles()?;
        if self.silent_saved != self.silent {
            self.store.save_state(NOT_WAITED_FOR, &serde_json::to_string(&self.silent)?)?;
            self.silent_saved = self.silent.clone();
        }
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
        let rows = self.engine.profiles.take_changes();
        if rows.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store.save_profile_rows(&rows) {
            self.engine.profiles.unsaved(&rows);
            return Err(e);
        }
        Ok(())
    }

    /// Steps until nothing new is left, then examines what is still held: everything
    /// stored is examined, in event-time order.
    pub fn catch_up(&mut self) -> anyhow::Result<usize> {
        let fetched = |r: &Self| -> u64 { r.progress.values().map(|p| p.fetched).sum() };
        let mut total = 0;
        loop {
            let before = fetched(self);
            total += self.step()?;
            if fetched(self) != before {
                continue;
            }
            // Nothing more was read: none is left, or what is held is at its bound (a file
            // replay held whole). Examine what is held, then read again.
            let held = self.held.len();
            total += self.flush()?;
            if held == 0 {
                self.checkpoint()?;
                return Ok(total);
            }
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

    /// Events examined as soon as they are read (no lateness allowed): what tests of the
    /// per-step behaviour want.
    fn prompt() -> DetectConfig {
        DetectConfig { allowed_lateness_secs: 0, ..DetectConfig::default() }
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
        let mut runner = Runner::new(Engine::new(prompt()), Arc::clone(&store)).unwrap();
        assert_eq!(runner.step().unwrap(), BATCH);
        assert_eq!(store.detect_cursor("s1").unwrap(), 0, "no checkpoint while events keep coming");
        // Dies here: a new runner goes through the same events again.
        let mut again = Runner::new(Engine::new(prompt()), Arc::clone(&store)).unwrap();
        assert_eq!(again.catch_up().unwrap(), BATCH + 1000);
        assert_eq!(store.detect_cursor("s1").unwrap(), BATCH as u64 + 1000, "caught up: a checkpoint");
        assert!(!store.load_profile_rows().unwrap().is_empty(), "the profiles went with it");
        let mut after = Runner::new(Engine::new(prompt()), Arc::clone(&store)).unwrap();
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
        let mut first = Runner::new(Engine::new(prompt()), Arc::clone(&store)).unwrap();
        assert_eq!(first.step().unwrap(), 40);
        let raised = store.alerts().unwrap();
        assert!(!raised.is_empty());
        assert_eq!(store.detect_cursor("s1").unwrap(), 0, "crashed before a checkpoint");
        let mut second = Runner::new(Engine::new(prompt()), Arc::clone(&store)).unwrap();
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

    /// Two sensors (one per DC) and, within the first, two workers whose events reach the
    /// cloud one worker after the other: a password spray split across both DCs, then a
    /// sprayed account's logon from the sprayer (reported by the first worker, before the
    /// failures it follows). Whatever the order and batching in which the events arrive,
    /// with detection running between arrivals, the alerts are the same: one spray over
    /// both DCs and its success.
    #[test]
    fn alerts_do_not_depend_on_how_sensors_and_workers_interleave() {
        let t0: i64 = 1_796_000_000_000_000_000;
        let s = |n: i64| t0 + n * 1_000_000_000;
        let at = |sensor: &str, dc: &str, mut ev: ActivityEvent| {
            ev.sensor_id = sensor.into();
            ev.dc_ip = dc.into();
            ev
        };
        // DC1's sensor: worker 2's events (the success at 40 s) numbered before worker 1's
        // (failures at 10-13 s).
        let dc1: Vec<ActivityEvent> = std::iter::once(kerberos(1, s(40), "frank", 11, 0))
            .chain(
                ["u1", "u2", "u3", "frank"].iter().enumerate().map(|(i, u)| failure(2 + i as u64, s(10 + i as i64), u)),
            )
            .map(|e| at("dc1-sensor", "10.0.0.10", e))
            .collect();
        // DC2's sensor: the rest of the spray, between DC1's failures.
        let dc2: Vec<ActivityEvent> = ["u4", "u5", "u6"]
            .iter()
            .enumerate()
            .map(|(i, u)| at("dc2-sensor", "10.0.0.11", failure(1 + i as u64, s(11 + i as i64), u)))
            .collect();
        // Each order: its name, and the batches as they arrive (sensor, events).
        type Arrivals<'a> = Vec<(&'a str, Vec<ActivityEvent>)>;
        let orders: Vec<(&str, Arrivals)> = vec![
            ("DC1's first", vec![("dc1-sensor", dc1.clone()), ("dc2-sensor", dc2.clone())]),
            ("DC2's first", vec![("dc2-sensor", dc2.clone()), ("dc1-sensor", dc1.clone())]),
            ("both at once", vec![("dc1-sensor", dc1.clone()), ("dc2-sensor", dc2.clone())]),
            (
                "small batches alternating",
                dc1.chunks(2)
                    .zip(dc2.chunks(2).chain(std::iter::repeat(&[][..])))
                    .flat_map(|(a, b)| [("dc1-sensor", a.to_vec()), ("dc2-sensor", b.to_vec())])
                    .filter(|(_, c)| !c.is_empty())
                    .collect(),
            ),
        ];
        let mut results = Vec::new();
        let mut spray_dcs = Vec::new();
        let mut spray_text = String::new();
        for (name, chunks) in orders {
            let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
            store.add_sensor("dc1-sensor", "h").unwrap();
            store.add_sensor("dc2-sensor", "h").unwrap();
            let mut runner = Runner::new(Engine::new(DetectConfig::default()), Arc::clone(&store)).unwrap();
            let together = name == "both at once";
            for (sensor, chunk) in &chunks {
                store.insert_events(sensor, chunk, &[]).unwrap();
                if !together {
                    runner.step().unwrap();
                }
            }
            runner.catch_up().unwrap();
            let all = store.alerts().unwrap();
            if let Some(spray) = all.iter().find(|a| a.detection == "password_spray") {
                spray_dcs = spray.dcs.clone();
                spray_dcs.sort();
                spray_text = spray.description.clone();
            }
            let mut alerts: Vec<_> = all.into_iter().map(|a| (a.detection, a.account, a.src_ip)).collect();
            alerts.sort();
            results.push((name, alerts));
        }
        let (_, first) = &results[0];
        assert_eq!(spray_dcs, ["10.0.0.10", "10.0.0.11"], "the spray's alert names both DCs");
        assert!(
            ["u1", "u2", "u3", "u4", "u5", "u6", "frank"].iter().all(|u| spray_text.contains(u)),
            "and every account: {spray_text}"
        );
        let detections: Vec<&str> = first.iter().map(|a| a.0.as_str()).collect();
        assert!(detections.contains(&"password_spray") && detections.contains(&"spray_success"), "{first:?}");
        assert_eq!(detections.iter().filter(|d| **d == "password_spray").count(), 1, "one spray over both DCs");
        for (name, alerts) in &results {
            assert_eq!(alerts, first, "{name}");
        }
    }

    /// A sensor silent for longer than the idle time does not hold the others back; what it
    /// sends when it comes back is examined with the same rules, and the alerts it raises
    /// or extends say that their evidence arrived late.
    #[test]
    fn a_silent_sensor_is_not_waited_for_and_its_late_events_are_examined_as_late() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        store.add_sensor("dc1-sensor", "h").unwrap();
        store.add_sensor("dc2-sensor", "h").unwrap();
        let cfg = DetectConfig { sensor_idle_secs: 0, allowed_lateness_secs: 0, ..DetectConfig::default() };
        let mut runner = Runner::new(Engine::new(cfg), Arc::clone(&store)).unwrap();
        let t = |n: i64| 1_796_000_000_000_000_000 + n * 1_000_000_000;
        let on = |sensor: &str, e: ActivityEvent| ActivityEvent { sensor_id: sensor.into(), ..e };
        let dc1: Vec<_> = (1..=3).map(|i| on("dc1-sensor", failure(i, t(10 + i as i64), &format!("u{i}")))).collect();
        store.insert_events("dc1-sensor", &dc1, &[]).unwrap();
        assert_eq!(runner.step().unwrap(), 3, "the silent sensor is not waited for");
        assert!(store.alerts().unwrap().is_empty());
        let dc2: Vec<_> =
            (4..=5).map(|i| on("dc2-sensor", failure(i - 3, t(7 + i as i64), &format!("u{i}")))).collect();
        store.insert_events("dc2-sensor", &dc2, &[]).unwrap();
        assert_eq!(runner.step().unwrap(), 2);
        let alerts = store.alerts().unwrap();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].detection, "password_spray");
        assert!(alerts[0].description.ends_with(LATE_NOTE), "{}", alerts[0].description);
        runner.checkpoint().unwrap();
        assert!(not_waited_for(store.as_ref()).is_empty(), "it delivers again");
    }

    /// A catch-up examines everything stored, also more than it may hold at once from a
    /// sensor reading a file (which holds the watermark back until it is done).
    #[test]
    fn a_catch_up_examines_more_than_it_may_hold() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        store.add_sensor("file", "h").unwrap();
        let info = crate::pb::SensorInfo {
            sensor_id: "file".into(),
            capabilities: vec!["offline".into()],
            ..Default::default()
        };
        store.record_registration(&info).unwrap();
        let total = BATCH as u64 + 50;
        let events: Vec<_> = (1..=total)
            .map(|seq| ActivityEvent { sensor_id: "file".into(), ..failure(seq, seq as i64 * 1_000_000, "u") })
            .collect();
        store.insert_events("file", &events, &[]).unwrap();
        let mut runner = Runner::new(Engine::new(DetectConfig::default()), Arc::clone(&store)).unwrap();
        runner.held_bound = 8;
        assert_eq!(runner.catch_up().unwrap() as u64, total);
        assert_eq!(store.detect_cursor("file").unwrap(), total);
    }

    /// Profiles an older store kept as one document are read, written as rows at the first
    /// checkpoint, and the document dropped.
    #[test]
    fn profiles_kept_as_one_document_become_rows() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let mut learned = super::super::profiles::Profiles::default();
        learned.started_ns = Some(5);
        learned.accounts.insert("alice".into(), Default::default());
        learned.privileged.insert("eve.admin".into());
        store.save_state(PROFILES_DOCUMENT, &serde_json::to_string(&learned).unwrap()).unwrap();
        let mut runner = Runner::new(Engine::new(DetectConfig::default()), Arc::clone(&store)).unwrap();
        assert_eq!(runner.engine.profiles, learned);
        runner.checkpoint().unwrap();
        assert!(store.load_state(PROFILES_DOCUMENT).unwrap().is_none());
        assert_eq!(store.load_profile_rows().unwrap().len(), 3);
        let again = Runner::new(Engine::new(DetectConfig::default()), Arc::clone(&store)).unwrap();
        assert_eq!(again.engine.profiles, learned);
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
        let mut runner = Runner::new(Engine::new(prompt()), Arc::clone(&store)).unwrap();
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

//! Feeds stored events to the engine, per sensor in sequence order, from where the last
//! run stopped (a cursor per sensor in the store), and saves the alerts it raises.

use std::{collections::HashMap, sync::Arc};

use super::{Alert, Engine};
use crate::store::Store;

/// Name of the learned profiles in the store's engine state.
const PROFILES: &str = "profiles";

/// Events read per sensor per step.
const BATCH: usize = 5_000;

pub struct Runner {
    pub engine: Engine,
    /// Where new alerts also go (SIEM); None: nowhere else.
    pub exporter: Option<super::export::Exporter>,
    store: Arc<dyn Store>,
    /// Alerts on a shared entity this close in time join one incident.
    pub incident_gap_ns: i64,
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
        Ok(Self { engine, exporter: None, store, incident_gap_ns: 3_600_000_000_000 })
    }

    /// One pass over what arrived since the last; returns the events processed.
    pub fn step(&mut self) -> anyhow::Result<usize> {
        let mut processed = 0;
        for sensor in self.store.sensors()? {
            self.engine.add_dcs(&sensor.monitored_dcs);
            let cursor = self.store.detect_cursor(&sensor.id)?;
            let events = self.store.sensor_events_after(&sensor.id, cursor, BATCH)?;
            let Some(last) = events.last().map(|e| e.event.seq) else { continue };
            // Each alert once per step, in its latest state, all in one transaction: saving
            // every update on its own (an fsync each) made detection fall seconds behind a
            // busy sensor (bench e2e). An alert is its key and its first sighting: the same
            // key may close and open again within a step.
            let mut alerts: Vec<Alert> = Vec::new();
            let mut index: HashMap<(String, String, String, i64), usize> = HashMap::new();
            for e in &events {
                for a in self.engine.process(&e.event) {
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
            for (a, new) in alerts.iter().zip(new) {
                if let (true, Some(x)) = (new, self.exporter.as_mut()) {
                    x.send(a);
                }
                self.engine.saved(a);
            }
            self.save_profiles()?;
            self.store.set_detect_cursor(&sensor.id, last)?;
            processed += events.len();
        }
        Ok(processed)
    }

    /// Saved before the cursor moves, so a crash in between learns an event twice rather
    /// than never.
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

    #[test]
    fn a_restarted_runner_resumes_its_cursor_profiles_and_open_alerts() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        store.add_sensor("s1", "h").unwrap();
        let failure = |seq: u64, user: &str| ActivityEvent {
            sensor_id: "s1".into(),
            seq,
            time_unix_ns: seq as i64 * 1_000_000_000,
            src_ip: "10.1.1.1".into(),
            dc_ip: "10.0.0.10".into(),
            account: format!("{user}@LAB"),
            result: "failure".into(),
            detail: Some(Detail::Kerberos(Kerberos {
                msg_type: 30,
                cname: user.into(),
                error_code: 24,
                ..Default::default()
            })),
            ..Default::default()
        };
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
    fn one_step_saves_each_alert_once_and_keeps_an_alert_that_closed_and_opened_again_apart() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        store.add_sensor("s1", "h").unwrap();
        let failure = |seq: u64, t: i64| ActivityEvent {
            sensor_id: "s1".into(),
            seq,
            time_unix_ns: t * 1_000_000_000,
            src_ip: "10.1.1.1".into(),
            dc_ip: "10.0.0.10".into(),
            account: "bob@LAB".into(),
            result: "failure".into(),
            detail: Some(Detail::Kerberos(Kerberos {
                msg_type: 30,
                cname: "bob".into(),
                error_code: 24,
                ..Default::default()
            })),
            ..Default::default()
        };
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

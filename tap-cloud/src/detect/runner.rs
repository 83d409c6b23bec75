//! Feeds stored events to the engine, per sensor in sequence order, from where the last
//! run stopped (a cursor per sensor in the store), and saves the alerts it raises.

use std::sync::Arc;

use super::{Alert, Engine};
use crate::store::Store;

/// Events read per sensor per step.
const BATCH: usize = 5_000;

pub struct Runner {
    pub engine: Engine,
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
        Ok(Self { engine, store, incident_gap_ns: 3_600_000_000_000 })
    }

    /// One pass over what arrived since the last; returns the events processed.
    pub fn step(&mut self) -> anyhow::Result<usize> {
        let mut processed = 0;
        for sensor in self.store.sensors()? {
            self.engine.add_dcs(&sensor.monitored_dcs);
            let cursor = self.store.detect_cursor(&sensor.id)?;
            let events = self.store.sensor_events_after(&sensor.id, cursor, BATCH)?;
            let Some(last) = events.last().map(|e| e.event.seq) else { continue };
            let mut alerts: Vec<Alert> = Vec::new();
            for e in &events {
                for mut a in self.engine.process(&e.event) {
                    self.store.save_alert(&mut a, self.incident_gap_ns)?;
                    self.engine.saved(&a);
                    alerts.push(a);
                }
            }
            self.store.set_detect_cursor(&sensor.id, last)?;
            processed += events.len();
        }
        Ok(processed)
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

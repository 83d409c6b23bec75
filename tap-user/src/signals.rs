//! Signals the sensor reacts to: SIGINT/SIGTERM stop it (the XDP program is detached before
//! exit), SIGUSR1 prints the counters, SIGHUP re-reads the DC list.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use anyhow::Context as _;
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1},
    flag,
};

/// Flags set by signal handlers and polled by the control loop.
#[derive(Clone, Default)]
pub struct Signals {
    pub stop: Arc<AtomicBool>,
    pub dump_counters: Arc<AtomicBool>,
    pub reload: Arc<AtomicBool>,
}

impl Signals {
    pub fn install() -> anyhow::Result<Self> {
        let signals = Self::default();
        for sig in [SIGINT, SIGTERM] {
            flag::register(sig, Arc::clone(&signals.stop)).context("install SIGINT/SIGTERM handler")?;
        }
        flag::register(SIGUSR1, Arc::clone(&signals.dump_counters)).context("install SIGUSR1 handler")?;
        flag::register(SIGHUP, Arc::clone(&signals.reload)).context("install SIGHUP handler")?;
        Ok(signals)
    }

    /// Returns true once per delivery of the signal behind `flag`.
    pub fn take(flag: &AtomicBool) -> bool {
        flag.swap(false, Ordering::Relaxed)
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

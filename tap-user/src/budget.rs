//! Byte budgets shared by every worker. A flood sharded over the workers meets one bound,
//! not one per worker: what any worker holds counts against all of them.

use std::{
    cell::RefCell,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
};

/// Bytes held against a limit, by any number of holders on any threads.
#[derive(Clone, Debug)]
pub struct Budget {
    used: Arc<AtomicUsize>,
    limit: usize,
    /// Bytes holders could not keep because the budget was spent.
    refused: Arc<AtomicU64>,
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Self { used: Arc::new(AtomicUsize::new(0)), limit, refused: Arc::default() }
    }

    /// Counts bytes a holder let go of because the budget was spent.
    pub fn refuse(&self, n: usize) {
        self.refused.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether nothing more may be held.
    pub fn exhausted(&self) -> bool {
        self.used() >= self.limit
    }

    /// Takes `n` bytes if they fit; false (nothing taken) if not.
    pub fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| u.checked_add(n).filter(|t| *t <= self.limit))
            .is_ok()
    }

    /// Takes `n` bytes whether they fit or not (a holder that cannot refuse, such as a
    /// segment already accepted); the next `try_take` sees the excess.
    pub fn take(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    /// Gives back `n` bytes taken before.
    pub fn give(&self, n: usize) {
        // Saturating: a bug in a holder's accounting must not wrap the budget to "full".
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(n)));
    }

    /// Moves the holding from `before` to `after` bytes.
    pub fn adjust(&self, before: usize, after: usize) {
        if after > before {
            self.take(after - before);
        } else {
            self.give(before - after);
        }
    }
}

thread_local! {
    /// The budget of partial records the protocol framers of this thread's flows hold;
    /// none: unbounded. Set by each pipeline worker for its thread, so a framer deep in a
    /// parser's state finds it without every constructor carrying it.
    static STREAMS: RefCell<Option<Budget>> = const { RefCell::new(None) };
}

/// Sets (or clears) the stream budget of the calling thread.
pub fn set_stream_budget(budget: Option<Budget>) {
    STREAMS.with(|b| *b.borrow_mut() = budget);
}

/// The calling thread's stream budget, if any.
pub fn stream_budget() -> Option<Budget> {
    STREAMS.with(|b| b.borrow().clone())
}

impl Default for Budget {
    /// No bound (tests, tools).
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_on_many_threads_share_one_bound() {
        let b = Budget::new(1000);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..100).filter(|_| b.try_take(7)).count())
            })
            .collect();
        let taken: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(taken, 1000 / 7, "what fits, and no more, whoever asks");
        assert_eq!(b.used(), taken * 7);
        assert!(!b.try_take(7) && b.try_take(1000 - b.used()));
        assert!(b.exhausted());
        b.give(usize::MAX);
        assert_eq!(b.used(), 0, "never below zero");
        b.adjust(0, 10);
        b.adjust(10, 4);
        assert_eq!(b.used(), 4);
    }
}

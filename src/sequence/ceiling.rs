//! Coordination between the event loops, which issue numbers below each sequence's ceiling,
//! and whoever makes ceilings durable and raises them (the store's persister).
//!
//! Two things cross that boundary, both off the hot path: a loop whose request waits for a
//! higher ceiling *asks for a raise* (waking the persister at once instead of at its next
//! tick), and the persister *reports whether it can write*: while it cannot, requests beyond
//! the durable ceiling are refused instead of left waiting (fail closed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct CeilingSignals {
    /// A raise was asked for and the persister has not yet taken the request.
    raise_requested: AtomicBool,
    /// Lets the persister sleep until asked; the mutex guards nothing but the wait itself.
    wakeup: Condvar,
    sleeping: Mutex<()>,
    /// The durable state cannot be written: refuse what the durable ceiling does not cover.
    unavailable: AtomicBool,
    /// Requests refused because of it, for the persister's log.
    refused: AtomicU64,
}

impl CeilingSignals {
    /// Asks for a higher ceiling. Cheap when a request is already pending (one atomic swap).
    pub fn request_raise(&self) {
        if !self.raise_requested.swap(true, Ordering::AcqRel) {
            // Taking the lock orders this notification after a waiter's check of the flag,
            // so the wake-up cannot fall between its check and its wait.
            drop(self.lock());
            self.wakeup.notify_all();
        }
    }

    /// Waits up to `timeout` for a raise to be asked for; returns whether one was (and takes
    /// the request).
    pub fn wait_for_raise_request(&self, timeout: Duration) -> bool {
        let guard = self.lock();
        // `wait_timeout_while` re-waits after spurious wake-ups.
        let _ = self
            .wakeup
            .wait_timeout_while(guard, timeout, |_| {
                !self.raise_requested.load(Ordering::Acquire)
            })
            .unwrap_or_else(|poison| poison.into_inner());
        self.raise_requested.swap(false, Ordering::AcqRel)
    }

    /// Marks ceilings as impossible to raise (the disk fails) or possible again.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::Release);
    }

    /// Whether a request beyond the ceiling must be refused rather than wait.
    #[inline]
    pub fn unavailable(&self) -> bool {
        self.unavailable.load(Ordering::Acquire)
    }

    /// Counts a request refused because ceilings are unavailable.
    pub fn count_refusal(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests refused since the last call.
    pub fn take_refusals(&self) -> u64 {
        self.refused.swap(0, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.sleeping
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_request_made_before_the_wait_is_not_lost() {
        let signals = CeilingSignals::default();
        signals.request_raise();
        signals.request_raise();
        assert!(signals.wait_for_raise_request(Duration::from_secs(60)));
        assert!(!signals.wait_for_raise_request(Duration::ZERO));
    }

    #[test]
    fn a_request_wakes_a_waiting_thread() {
        let signals = Arc::new(CeilingSignals::default());
        let waiter = {
            let signals = signals.clone();
            // A lost wake-up makes this wait out its (long) timeout and return false.
            std::thread::spawn(move || signals.wait_for_raise_request(Duration::from_secs(600)))
        };
        std::thread::sleep(Duration::from_millis(20));
        signals.request_raise();
        assert!(
            waiter.join().unwrap(),
            "woken by the request, not the timeout"
        );
    }

    #[test]
    fn refusals_are_counted_and_taken() {
        let signals = CeilingSignals::default();
        assert!(!signals.unavailable());
        signals.set_unavailable(true);
        assert!(signals.unavailable());
        signals.count_refusal();
        signals.count_refusal();
        assert_eq!(signals.take_refusals(), 2);
        assert_eq!(signals.take_refusals(), 0);
    }
}

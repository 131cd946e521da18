//! Time as the server reads it: one injectable clock for receipt times,
//! link issue times, validation of `occurred_at`, and pruning, so that
//! tests can step it backwards and forwards.
//!
//! Receipt times never go backwards whatever the clock does: the writer
//! takes the later of the clock and the last receipt time plus one.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::domain::UnixNanos;

/// A duration as nanoseconds, saturating at `i64::MAX` (about 292 years).
pub fn nanos(d: std::time::Duration) -> UnixNanos {
    UnixNanos::try_from(d.as_nanos()).unwrap_or(UnixNanos::MAX)
}

/// A source of wall-clock time, in nanoseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// The time now.
    fn now(&self) -> UnixNanos;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixNanos {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64)
    }
}

/// A clock that moves only when told to (tests, simulations).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock showing `now`.
    pub fn new(now: UnixNanos) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(now)))
    }

    /// Sets the time (forwards or backwards).
    pub fn set(&self, now: UnixNanos) {
        self.0.store(now, Ordering::SeqCst);
    }

    /// Moves the time by `nanos` (negative: backwards).
    pub fn step(&self, nanos: i64) {
        self.0.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixNanos {
        self.0.load(Ordering::SeqCst)
    }
}

//! What makes a GRANT state stop counting (DESIGN.md §7: re-consent after
//! a wording change, expiry), and the time such a rule reads. The catalog
//! precomputes [`Terms`] per consent; the resolution applies them.

use super::event::UnixNanos;

/// The time, read only when a decision needs it (a grant that may have
/// expired, a pending grant that may still wait): the common CanSend never
/// reads the clock.
pub trait Now {
    /// Nanoseconds since the epoch.
    fn now(&self) -> UnixNanos;
}

impl Now for UnixNanos {
    fn now(&self) -> UnixNanos {
        *self
    }
}

impl<F: Fn() -> UnixNanos> Now for F {
    fn now(&self) -> UnixNanos {
        self()
    }
}

/// What makes a consent's GRANT states stop counting, precomputed per
/// interned consent so that CanSend compares two numbers (DESIGN.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Terms {
    /// Grants under an older version are stale (0: none are).
    pub min_version: u16,
    /// Grants that occurred more than this long ago have expired (0: never).
    pub valid_for: UnixNanos,
}

impl Terms {
    /// Why a GRANT state of this consent no longer counts at `now`, if it
    /// does not.
    #[inline]
    pub fn lapse(self, version: u16, occurred_at: UnixNanos, now: &impl Now) -> Option<Lapse> {
        if version < self.min_version {
            Some(Lapse::Stale)
        } else if self.valid_for > 0 && occurred_at < now.now().saturating_sub(self.valid_for) {
            Some(Lapse::Expired)
        } else {
            None
        }
    }
}

/// Why a grant stopped counting; the order is the order of precedence of
/// the reasons (DESIGN.md §7: STALE_WORDING before EXPIRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lapse {
    /// Given by age (`valid_for_days`).
    Expired,
    /// Given to a wording older than `min_version`.
    Stale,
}

/// A version as the index keeps it: versions past 65,535 saturate (the
/// index spends 16 bytes per state).
pub fn short_version(version: u32) -> u16 {
    u16::try_from(version).unwrap_or(u16::MAX)
}

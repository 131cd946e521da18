//! Pending grants (DESIGN.md §7): a GRANT taken as pending is recorded in
//! the history and changes no state; what stays per (contact, consent) is
//! this small record, which the stores keep next to the states and derive
//! from the events they commit, so that every backend and every node that
//! follows a shared store's feed arrives at the same record.

use super::event::{Action, EventRecord, UnixNanos};

/// Most pending grants one contact may have waiting (DESIGN.md §7: the
/// 21st is RESOURCE_EXHAUSTED).
pub const MAX_PENDING_PER_CONTACT: u32 = 20;

/// The grants of one (contact, consent) waiting for the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingRecord {
    /// Pending grants recorded since the last decision on this consent.
    pub count: u32,
    /// When the latest of them was recorded.
    pub last_at: UnixNanos,
    /// When the latest confirmation link for them was minted (0: none).
    pub link_at: UnixNanos,
}

impl PendingRecord {
    /// The record of (contact, consent) after `event`, one of its events,
    /// is recorded: a pending grant adds to it; any other event (a
    /// confirmation, "this wasn't me", a decision the caller vouched for,
    /// a withdrawal) ends the wait.
    pub fn after(prev: Option<PendingRecord>, event: &EventRecord) -> Option<PendingRecord> {
        if !(event.pending && event.action == Action::Grant) {
            return None;
        }
        let prev = prev.unwrap_or(PendingRecord {
            count: 0,
            last_at: 0,
            link_at: 0,
        });
        Some(PendingRecord {
            count: prev.count.saturating_add(1),
            last_at: prev.last_at.max(event.recorded_at),
            link_at: if event.confirmation_link {
                prev.link_at.max(event.recorded_at)
            } else {
                prev.link_at
            },
        })
    }

    /// Whether the latest pending grant still waits at `now`: it was
    /// recorded less than `ttl` (a confirmation link's life) ago.
    pub fn waits(&self, now: UnixNanos, ttl: UnixNanos) -> bool {
        self.last_at.saturating_add(ttl) > now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ConsentId, ContactId, Evidence, Source};

    fn event(action: Action, pending: bool, link: bool, at: i64) -> EventRecord {
        EventRecord {
            contact: ContactId::parse("c", "anna").unwrap(),
            consent: ConsentId::parse("c", "news").unwrap(),
            action,
            occurred_at: at,
            recorded_at: at,
            source: Source::Form,
            evidence: Evidence::new(),
            version: 1,
            sequence: 1,
            idempotency_key: None,
            applied: false,
            actor: String::new(),
            pending,
            confirmed: false,
            confirmation_link: link,
            chain: None,
        }
    }

    #[test]
    fn pending_grants_add_up_and_any_decision_ends_the_wait() {
        let a = PendingRecord::after(None, &event(Action::Grant, true, true, 10)).unwrap();
        assert_eq!((a.count, a.last_at, a.link_at), (1, 10, 10));
        // Inside the re-send window: no new link, the old one still counts.
        let b = PendingRecord::after(Some(a), &event(Action::Grant, true, false, 20)).unwrap();
        assert_eq!((b.count, b.last_at, b.link_at), (2, 20, 10));
        assert!(b.waits(25, 10));
        assert!(
            !b.waits(30, 10),
            "the latest one is older than a link's life"
        );
        assert_eq!(
            PendingRecord::after(Some(b), &event(Action::Grant, false, false, 30)),
            None,
            "a confirmed grant"
        );
        assert_eq!(
            PendingRecord::after(Some(b), &event(Action::Withdraw, false, false, 30)),
            None,
            "this wasn't me"
        );
    }
}

//! The write rules: how one Grant or Withdraw is ruled, given what the store
//! and the writer's current batch know about it (DESIGN.md rules 2, 3, 5).
//!
//! Pure: the writer gathers the [`Known`] facts, asks [`rule`], and acts on
//! the [`Ruling`]. The rules, first match wins:
//!
//! 1. a change from before the contact's erasure is dropped (rule 5): one
//!    minted earlier (a link) counts from its issue time, else from when the
//!    person decided; a change that claims no time is never from before.
//!    A click on a link minted before the erasure still withdraws when the
//!    contact holds a state again (granted since): links never do nothing
//!    (rule 4);
//! 2. an idempotency key seen before answers the first outcome again, or
//!    is refused if it was used for a different change (rule 2);
//! 3. a retired consent takes no new GRANT; withdrawals always count (rule 3);
//! 4. a GRANT that would become the state waits for the person instead
//!    (DESIGN.md §7) on a double opt-in consent, or when it comes from a
//!    system (import, API, operator) over a withdrawal the person made of
//!    it, an ancestor or a descendant; the caller's `confirmed` and the
//!    person's own click on one of consentd's pages (confirmation page,
//!    preference center: `Change::by_page`) apply it, never a source a
//!    caller merely names;
//! 5. otherwise the change is recorded, and becomes the state when it
//!    supersedes the current one (rule 2's precedence).

use super::event::{Action, Change, Decision, IdempotencyRecord, StateRecord, UnixNanos};

/// What the store and the batch so far know about one change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Known {
    /// When the contact was erased, if it ever was.
    pub erased_at: Option<UnixNanos>,
    /// What the change's idempotency key first recorded, if it was seen.
    pub key: Option<IdempotencyRecord>,
    /// Whether the consent is retired.
    pub retired: bool,
    /// The state of (contact, consent), if any.
    pub current: Option<Decision>,
    /// Whether the contact holds any state at all (asked only after an
    /// erasure).
    pub holds_state: bool,
    /// Whether the consent asks for double opt-in.
    pub double_opt_in: bool,
    /// The earliest withdrawal the person made themselves of this consent,
    /// an ancestor or a descendant that still stands (asked only for a
    /// system's grant): a grant after it would undo it somewhere.
    pub person_withdrew_at: Option<UnixNanos>,
}

/// What to do with a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ruling {
    /// Record it; it becomes the state.
    Apply,
    /// Record it in the history; the current state stays (`applied=false`).
    Superseded,
    /// Record it as a grant waiting for the person's confirmation: in the
    /// history, no state changes (`applied=false`).
    Pending,
    /// Its key already recorded the same change as `sequence`: record
    /// nothing, answer that sequence.
    Replay {
        /// The sequence of the event the key first recorded.
        sequence: u64,
    },
    /// It occurred before the contact was erased: record nothing.
    Erased,
    /// Refused: its key was first used for a different change.
    KeyReused,
    /// Refused: a GRANT of a retired consent.
    Retired,
}

/// Rules on `change`, whose fingerprint (when it carries a key) is
/// `fingerprint` and whose receipt time would be `recorded_at`.
pub fn rule(
    change: &Change,
    fingerprint: Option<[u8; 32]>,
    known: &Known,
    recorded_at: UnixNanos,
) -> Ruling {
    if let Some(erased_at) = known.erased_at {
        let reference = change
            .issued_at
            .or(change.occurred_at)
            .unwrap_or(UnixNanos::MAX);
        // Only a withdrawal: a confirmation link minted before the erasure
        // confirms nothing after it.
        let regranted_link =
            change.issued_at.is_some() && change.action == Action::Withdraw && known.holds_state;
        if reference <= erased_at && !regranted_link {
            return Ruling::Erased;
        }
    }
    if let Some(seen) = known.key {
        return if fingerprint == Some(seen.fingerprint) {
            Ruling::Replay {
                sequence: seen.sequence,
            }
        } else {
            Ruling::KeyReused
        };
    }
    if known.retired && change.action == Action::Grant {
        return Ruling::Retired;
    }
    let new = Decision {
        occurred_at: change.effective_occurred_at(recorded_at),
        action: change.action,
    };
    if !known.current.is_none_or(|current| new.supersedes(current)) {
        return Ruling::Superseded;
    }
    let waits_for_the_person = change.action == Action::Grant
        && !change.confirmed
        && !(change.by_page && change.source.confirms_itself())
        && (change.resend
            || known.double_opt_in
            || (change.source.is_a_system()
                && known
                    .person_withdrew_at
                    .is_some_and(|at| at < new.occurred_at)));
    if waits_for_the_person {
        Ruling::Pending
    } else {
        Ruling::Apply
    }
}

/// The answer to a Grant or Withdraw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeOutcome {
    /// False when a newer event already decides, the key was seen before,
    /// or the change is from before an erasure.
    pub applied: bool,
    /// The state of (contact, consent) after the change; `None` when the
    /// contact holds none.
    pub state: Option<StateRecord>,
    /// The sequence of the recorded event (the first one, for a replayed
    /// key); 0 when nothing was recorded.
    pub sequence: u64,
    /// A GRANT taken as pending (DESIGN.md §7): recorded, no state changed.
    pub pending: Option<PendingGrant>,
}

/// What the answer to a grant taken as pending needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingGrant {
    /// When it was recorded: a confirmation link counts its life from here.
    pub recorded_at: UnixNanos,
    /// Whether a confirmation link goes out for it (not inside the re-send
    /// window of an earlier one).
    pub link: bool,
    /// The answer to a retried key: recorded earlier, nothing new now.
    pub replay: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ConsentId, ContactId, Evidence, Source};
    use Action::*;

    const NOW: i64 = 1_000;

    fn change(action: Action, occurred_at: Option<i64>, issued_at: Option<i64>) -> Change {
        Change {
            contact: ContactId::parse("contact_id", "anna").unwrap(),
            consent: ConsentId::parse("consent_id", "marketing").unwrap(),
            action,
            occurred_at,
            source: Source::Form,
            evidence: Evidence::new(),
            idempotency_key: None,
            issued_at,
            actor: "crm".into(),
            confirmed: false,
            resend: false,
            bulk: false,
            by_page: false,
            addresses: Vec::new(),
        }
    }

    fn state(occurred_at: i64, action: Action) -> Option<Decision> {
        Some(Decision {
            occurred_at,
            action,
        })
    }

    fn key(fingerprint: u8, sequence: u64) -> Option<IdempotencyRecord> {
        Some(IdempotencyRecord {
            sequence,
            recorded_at: 1,
            fingerprint: [fingerprint; 32],
        })
    }

    #[test]
    fn rulings_table() {
        let k = |erased_at, key, retired, current| Known {
            erased_at,
            key,
            retired,
            current,
            ..Known::default()
        };
        let holding = |erased_at| Known {
            erased_at,
            holds_state: true,
            ..Known::default()
        };
        let none = Known::default();
        #[rustfmt::skip]
        let table: &[(&str, Change, Option<u8>, Known, Ruling)] = &[
            ("first grant applies", change(Grant, None, None), None, none, Ruling::Apply),
            ("later withdrawal applies", change(Withdraw, Some(20), None), None,
                k(None, None, false, state(10, Grant)), Ruling::Apply),
            ("older grant is superseded", change(Grant, Some(5), None), None,
                k(None, None, false, state(10, Withdraw)), Ruling::Superseded),
            ("tie: withdraw beats grant", change(Withdraw, Some(10), None), None,
                k(None, None, false, state(10, Grant)), Ruling::Apply),
            ("tie of the same action: the first recorded stays", change(Grant, Some(10), None), None,
                k(None, None, false, state(10, Grant)), Ruling::Superseded),
            ("no occurred_at means now, which beats the past", change(Grant, None, None), None,
                k(None, None, false, state(NOW - 1, Withdraw)), Ruling::Apply),
            ("a future occurred_at is clamped to the receipt time", change(Grant, Some(NOW + 50), None), None,
                k(None, None, false, state(NOW, Withdraw)), Ruling::Superseded),
            ("occurred before the erasure", change(Grant, Some(40), None), None,
                k(Some(50), None, false, None), Ruling::Erased),
            ("occurred at the erasure time counts as before", change(Grant, Some(50), None), None,
                k(Some(50), None, false, None), Ruling::Erased),
            ("fresh after the erasure", change(Grant, Some(60), None), None,
                k(Some(50), None, false, None), Ruling::Apply),
            ("no claimed time: never from before", change(Grant, None, None), None,
                k(Some(50), None, false, None), Ruling::Apply),
            ("link minted before the erasure", change(Withdraw, None, Some(40)), None,
                k(Some(50), None, false, None), Ruling::Erased),
            ("link minted after the erasure", change(Withdraw, None, Some(60)), None,
                k(Some(50), None, false, None), Ruling::Apply),
            ("old link, contact granted again since: it withdraws", change(Withdraw, None, Some(40)), None,
                holding(Some(50)), Ruling::Apply),
            ("a confirmation minted before the erasure confirms nothing after it",
                change(Grant, None, Some(40)), None, holding(Some(50)), Ruling::Erased),
            ("an old grant stays out even when the contact holds state again",
                change(Grant, Some(40), None), None, holding(Some(50)), Ruling::Erased),
            ("the erasure wins over a replayed key", change(Grant, Some(40), None), Some(1),
                k(Some(50), key(1, 7), false, None), Ruling::Erased),
            ("same key, same change: replay", change(Grant, None, None), Some(1),
                k(None, key(1, 7), false, state(1, Grant)), Ruling::Replay { sequence: 7 }),
            ("same key, other change: refused", change(Grant, None, None), Some(2),
                k(None, key(1, 7), false, None), Ruling::KeyReused),
            ("a replay of a grant of a since-retired consent is still a replay",
                change(Grant, None, None), Some(1), k(None, key(1, 7), true, None), Ruling::Replay { sequence: 7 }),
            ("retired: no new grant", change(Grant, None, None), None,
                k(None, None, true, None), Ruling::Retired),
            ("retired: withdrawals always count", change(Withdraw, None, None), None,
                k(None, None, true, state(1, Grant)), Ruling::Apply),
        ];
        for (name, change, fingerprint, known, want) in table {
            let got = rule(change, fingerprint.map(|f| [f; 32]), known, NOW);
            assert_eq!(got, *want, "{name}");
        }
    }

    #[test]
    fn grants_that_wait_for_the_person() {
        let doi = Known {
            double_opt_in: true,
            ..Known::default()
        };
        let withdrew = |at| Known {
            person_withdrew_at: Some(at),
            current: state(at, Withdraw),
            ..Known::default()
        };
        let from = |source, confirmed| Change {
            source,
            confirmed,
            ..change(Grant, None, None)
        };
        let resend = Change {
            resend: true,
            ..from(Source::Operator, false)
        };
        let click = |source| Change {
            by_page: true,
            addresses: Vec::new(),
            ..from(source, false)
        };
        #[rustfmt::skip]
        let table: &[(&str, Change, Known, Ruling)] = &[
            ("double opt-in: a form grant waits", from(Source::Form, false), doi, Ruling::Pending),
            ("double opt-in: vouched for", from(Source::Import, true), doi, Ruling::Apply),
            ("double opt-in: the confirmation click applies", click(Source::ConfirmationLink), doi, Ruling::Apply),
            ("double opt-in: the preference center applies", click(Source::PreferenceCenter), doi, Ruling::Apply),
            ("double opt-in: a caller claiming the confirmation page waits", from(Source::ConfirmationLink, false), doi, Ruling::Pending),
            ("double opt-in: a caller claiming the preference center waits", from(Source::PreferenceCenter, false), doi, Ruling::Pending),
            ("double opt-in: a withdrawal never waits", change(Withdraw, None, None), doi, Ruling::Apply),
            ("double opt-in: an older grant is only history",
                Change { occurred_at: Some(1), ..from(Source::Form, false) },
                Known { current: state(5, Withdraw), ..doi }, Ruling::Superseded),
            ("an import over the person's withdrawal waits", from(Source::Import, false), withdrew(NOW - 10), Ruling::Pending),
            ("so do API, operator and unspecified grants", from(Source::Unspecified, false), withdrew(NOW - 10), Ruling::Pending),
            ("vouched for: applies", from(Source::Api, true), withdrew(NOW - 10), Ruling::Apply),
            ("the person's own form grant applies", from(Source::Form, false), withdrew(NOW - 10), Ruling::Apply),
            ("a re-send always waits", resend, Known::default(), Ruling::Pending),
            ("no withdrawal, no double opt-in: applies", from(Source::Import, false), Known::default(), Ruling::Apply),
        ];
        for (name, change, known, want) in table {
            assert_eq!(rule(change, None, known, NOW), *want, "{name}");
        }
    }

    #[test]
    fn fingerprints_bind_the_whole_change() {
        let base = change(Grant, Some(5), None);
        let mut with_evidence = base.clone();
        with_evidence
            .evidence
            .insert("ip".into(), "10.0.0.1".into());
        let mut withdraw = base.clone();
        withdraw.action = Withdraw;
        let mut no_time = base.clone();
        no_time.occurred_at = None;
        assert_eq!(base.fingerprint(), base.clone().fingerprint());
        for other in [with_evidence, withdraw, no_time] {
            assert_ne!(base.fingerprint(), other.fingerprint(), "{other:?}");
        }
    }
}

//! Events and states: what a person decided, and the per-(contact, consent)
//! rule of DESIGN.md §2 rule 2 that picks the winning event.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ids::{ConsentId, ContactId, FieldError, check_opaque};

/// Nanoseconds since the Unix epoch, UTC.
pub type UnixNanos = i64;

/// How far in the future an `occurred_at` may lie before it is an error
/// rather than clock skew (clamped to the receipt time).
pub const MAX_CLOCK_SKEW_NANOS: i64 = 5 * 60 * 1_000_000_000;

/// Most evidence entries of one change: enough for a form id, IP, user
/// agent, operator and batch.
pub const MAX_EVIDENCE_ENTRIES: usize = 32;
/// Longest evidence key, in bytes.
pub const MAX_EVIDENCE_KEY_LEN: usize = 64;
/// Longest evidence value, in bytes.
pub const MAX_EVIDENCE_VALUE_LEN: usize = 2048;
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// What a person decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Action {
    /// Agreed (opt-in).
    Grant = 1,
    /// Withdrew (opt-out).
    Withdraw = 2,
}

impl Action {
    /// The action stored as `v`, if any.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Grant),
            2 => Some(Self::Withdraw),
            _ => None,
        }
    }
}

/// How a decision reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[repr(u8)]
pub enum Source {
    /// The caller did not say.
    #[default]
    Unspecified = 0,
    /// A web form the person filled in.
    Form = 1,
    /// A bulk import of decisions collected elsewhere.
    Import = 2,
    /// An operator, e.g. at a shop counter.
    Operator = 3,
    /// A click on an unsubscribe link.
    UnsubscribeLink = 4,
    /// The preference center page.
    PreferenceCenter = 5,
    /// Another system, through the API.
    Api = 6,
    /// The person clicked the confirmation link of a double opt-in mail
    /// (set by the confirmation page only).
    ConfirmationLink = 7,
    /// The person texted a keyword (STOP, START) to a sender.
    SmsKeyword = 8,
    /// The person reported a message as spam.
    Complaint = 9,
    /// The person unsubscribed through the provider (its own link or list).
    Provider = 10,
}

impl Source {
    /// The source stored as `v`, if any.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Unspecified,
            1 => Self::Form,
            2 => Self::Import,
            3 => Self::Operator,
            4 => Self::UnsubscribeLink,
            5 => Self::PreferenceCenter,
            6 => Self::Api,
            7 => Self::ConfirmationLink,
            8 => Self::SmsKeyword,
            9 => Self::Complaint,
            10 => Self::Provider,
            _ => return None,
        })
    }

    /// DESIGN.md §7: a withdrawal from these was made by the person, and
    /// only the person undoes it ("withdrawals stick").
    pub fn is_the_person(self) -> bool {
        matches!(
            self,
            Self::UnsubscribeLink
                | Self::PreferenceCenter
                | Self::ConfirmationLink
                | Self::Form
                | Self::SmsKeyword
                | Self::Complaint
                | Self::Provider
        )
    }

    /// The person's own click on a link mailed to them (the confirmation
    /// page, the preference center): a grant from these is confirmed by
    /// itself, never pending.
    pub fn confirms_itself(self) -> bool {
        matches!(self, Self::ConfirmationLink | Self::PreferenceCenter)
    }

    /// A grant from these, over a withdrawal the person made, is taken as
    /// pending unless the caller vouches for it (`confirmed`).
    pub fn is_a_system(self) -> bool {
        matches!(
            self,
            Self::Import | Self::Api | Self::Operator | Self::Unspecified
        )
    }
}

/// Proof of a decision: form id, IP, user agent, operator, import batch...
/// Sorted, so that the same evidence always encodes the same way.
pub type Evidence = BTreeMap<String, String>;

/// Checks evidence limits; the field name is `evidence` or `evidence[key]`.
pub fn check_evidence(evidence: &Evidence) -> Result<(), FieldError> {
    if evidence.len() > MAX_EVIDENCE_ENTRIES {
        return Err(FieldError::new(
            "evidence",
            format!(
                "has {} entries, at most {MAX_EVIDENCE_ENTRIES} allowed",
                evidence.len()
            ),
        ));
    }
    for (k, v) in evidence {
        check_opaque("evidence key", k, MAX_EVIDENCE_KEY_LEN)?;
        if v.len() > MAX_EVIDENCE_VALUE_LEN {
            return Err(FieldError::new(
                format!("evidence[{k}]"),
                format!(
                    "is {} bytes, at most {MAX_EVIDENCE_VALUE_LEN} allowed",
                    v.len()
                ),
            ));
        }
    }
    Ok(())
}

/// A validated Grant or Withdraw, before the writer has recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Who decided.
    pub contact: ContactId,
    /// What about.
    pub consent: ConsentId,
    /// What they decided.
    pub action: Action,
    /// As the client claimed it; `None` means "now" (the receipt time).
    pub occurred_at: Option<UnixNanos>,
    /// How it reached the server.
    pub source: Source,
    /// Proof: form id, IP, user agent, operator, import batch...
    pub evidence: Evidence,
    /// The caller's key against retries, if any.
    pub idempotency_key: Option<String>,
    /// For a change that arrives through something minted earlier (an
    /// unsubscribe link): when it was minted. An erasure refuses changes
    /// from before it.
    pub issued_at: Option<UnixNanos>,
    /// Who recorded it: the name of the bearer token, or the page's own
    /// name (`unsubscribe-page`). Set by the server, never by the caller;
    /// empty when auth is off.
    pub actor: String,
    /// The caller vouches that the person confirmed this grant: no double
    /// opt-in, and it may undo a withdrawal the person made.
    pub confirmed: bool,
    /// A re-send of a confirmation mail: a GRANT taken as pending whatever
    /// the consent says (it counts towards the limits like any other).
    pub resend: bool,
    /// Arrived in an import: no answer reaches the person, so no
    /// confirmation link is minted for it (IssueConfirmationLink mints the
    /// first).
    pub bulk: bool,
    /// Recorded by one of consentd's own pages, at a person's click (set
    /// by the authority's page operations, never from a request): only such
    /// a change confirms by its source (DESIGN.md §8: a caller confirms
    /// only with `confirmed`, whatever source it names).
    pub by_page: bool,
    /// A SetAddresses only (its consent is [`crate::domain::Mark::SetAddresses`]):
    /// the contact's addresses from now on, normalised, each with its
    /// keyed hash; the writer records the difference with those it holds.
    pub addresses: Vec<(super::Address, [u8; 32])>,
}

impl Change {
    /// Rejects an `occurred_at` more than five minutes after `now`.
    pub fn check_occurred_at(&self, now: UnixNanos) -> Result<(), FieldError> {
        match self.occurred_at {
            Some(t) if t > now.saturating_add(MAX_CLOCK_SKEW_NANOS) => Err(FieldError::new(
                "occurred_at",
                "is more than 5 minutes in the future",
            )),
            _ => Ok(()),
        }
    }

    /// When the person decided, given the receipt time: never later than it.
    pub fn effective_occurred_at(&self, recorded_at: UnixNanos) -> UnixNanos {
        self.occurred_at.map_or(recorded_at, |t| t.min(recorded_at))
    }

    /// What an idempotency key is bound to: SHA-256 over the change as the
    /// client sent it (length-prefixed fields, so no two changes collide by
    /// concatenation).
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(self.contact.as_str().as_bytes());
        field(self.consent.as_str().as_bytes());
        field(&[self.action as u8, self.source as u8]);
        match self.occurred_at {
            Some(t) => field(&t.to_le_bytes()),
            None => field(b""),
        }
        for (k, v) in &self.evidence {
            field(k.as_bytes());
            field(v.as_bytes());
        }
        // Only when set, so that keys recorded before the flag existed
        // still match their retries.
        if self.confirmed {
            field(b"confirmed");
        }
        h.finalize().into()
    }
}

/// The decisive part of a state, as the in-memory index keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// When the person decided.
    pub occurred_at: UnixNanos,
    /// What they decided.
    pub action: Action,
}

impl Decision {
    /// DESIGN.md rule 2: does `self` replace `current` as the state?
    /// Later `occurred_at` wins; on a tie WITHDRAW beats GRANT; on a tie of
    /// the same action the event recorded first stays.
    pub fn supersedes(self, current: Decision) -> bool {
        self.occurred_at > current.occurred_at
            || (self.occurred_at == current.occurred_at
                && self.action == Action::Withdraw
                && current.action == Action::Grant)
    }
}

/// The state of one (contact, consent): the winning event, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRecord {
    /// The consent.
    pub consent: ConsentId,
    /// What the winning event decided.
    pub action: Action,
    /// When the person decided (never after `recorded_at`).
    pub occurred_at: UnixNanos,
    /// When the server accepted it.
    pub recorded_at: UnixNanos,
    /// How it reached the server.
    pub source: Source,
    /// The consent's version (its wording) in force when recorded.
    pub version: u32,
    /// The sequence of the winning event.
    pub sequence: u64,
}

impl StateRecord {
    /// The part of the state that rule 2 compares.
    pub fn decision(&self) -> Decision {
        Decision {
            occurred_at: self.occurred_at,
            action: self.action,
        }
    }
}

/// What an idempotency key remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The sequence of the event the key first recorded.
    pub sequence: u64,
    /// When that event was recorded (retention counts from here).
    pub recorded_at: UnixNanos,
    /// [`Change::fingerprint`] of the change the key was first used for.
    pub fingerprint: [u8; 32],
}

/// One recorded decision, kept in the history whether or not it won.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Who decided.
    pub contact: ContactId,
    /// What about.
    pub consent: ConsentId,
    /// What they decided.
    pub action: Action,
    /// When the person decided (never after `recorded_at`).
    pub occurred_at: UnixNanos,
    /// When the server accepted it.
    pub recorded_at: UnixNanos,
    /// How it reached the server.
    pub source: Source,
    /// Proof: form id, IP, user agent, operator, import batch...
    pub evidence: Evidence,
    /// The consent's version (its wording) in force when recorded.
    pub version: u32,
    /// Server-wide, increasing in recording order.
    pub sequence: u64,
    /// The caller's key against retries, if any.
    pub idempotency_key: Option<String>,
    /// Whether the event became the state when it was recorded.
    pub applied: bool,
    /// Who recorded it (see [`Change::actor`]).
    pub actor: String,
    /// A GRANT taken as pending (double opt-in, or over a withdrawal the
    /// person made): it waits for the person and changes no state.
    pub pending: bool,
    /// The caller vouched that the person confirmed it.
    pub confirmed: bool,
    /// A pending grant for which a confirmation link was minted (none
    /// inside the re-send window of an earlier one).
    pub confirmation_link: bool,
    /// The chain through this event (DESIGN.md §11) as the store read it;
    /// `None` before it is committed (the chain is computed in the commit)
    /// or where a read does not carry it. Never part of the record itself.
    pub chain: Option<[u8; 32]>,
}

impl EventRecord {
    /// The part of the event that rule 2 compares.
    pub fn decision(&self) -> Decision {
        Decision {
            occurred_at: self.occurred_at,
            action: self.action,
        }
    }

    /// The state this event is when it wins.
    pub fn state(&self) -> StateRecord {
        StateRecord {
            consent: self.consent.clone(),
            action: self.action,
            occurred_at: self.occurred_at,
            recorded_at: self.recorded_at,
            source: self.source,
            version: self.version,
            sequence: self.sequence,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    fn d(occurred_at: i64, action: Action) -> Decision {
        Decision {
            occurred_at,
            action,
        }
    }

    #[test]
    fn supersedes_table() {
        // (new, current, new wins?)
        let table = [
            (d(2, Grant), d(1, Withdraw), true),
            (d(1, Grant), d(2, Withdraw), false),
            (d(1, Withdraw), d(1, Grant), true),
            (d(1, Grant), d(1, Withdraw), false),
            (d(1, Grant), d(1, Grant), false),
            (d(1, Withdraw), d(1, Withdraw), false),
            (d(2, Withdraw), d(1, Grant), true),
        ];
        for (new, cur, wins) in table {
            assert_eq!(new.supersedes(cur), wins, "{new:?} over {cur:?}");
        }
    }

    #[test]
    fn order_of_arrival_does_not_matter() {
        let events = [
            d(5, Grant),
            d(3, Withdraw),
            d(5, Withdraw),
            d(9, Grant),
            d(9, Grant),
        ];
        let fold = |order: &[usize]| {
            let mut state: Option<Decision> = None;
            for &i in order {
                let e = events[i];
                if state.is_none_or(|s| e.supersedes(s)) {
                    state = Some(e);
                }
            }
            state
        };
        let expected = fold(&[0, 1, 2, 3, 4]);
        assert_eq!(expected, Some(d(9, Grant)));
        for order in [[4, 3, 2, 1, 0], [2, 0, 4, 1, 3], [1, 3, 0, 4, 2]] {
            assert_eq!(fold(&order), expected);
        }
    }

    #[test]
    fn occurred_at_clamp_and_skew() {
        let now = 1_000 * 1_000_000_000;
        let mut c = Change {
            contact: ContactId::parse("contact_id", "c").unwrap(),
            consent: ConsentId::parse("consent_id", "m").unwrap(),
            action: Grant,
            occurred_at: None,
            source: Source::Api,
            evidence: Evidence::new(),
            idempotency_key: None,
            issued_at: None,
            actor: String::new(),
            confirmed: false,
            resend: false,
            bulk: false,
            by_page: false,
            addresses: Vec::new(),
        };
        assert_eq!(c.effective_occurred_at(now), now);
        c.occurred_at = Some(now - 7);
        assert_eq!(c.effective_occurred_at(now), now - 7);
        c.occurred_at = Some(now + MAX_CLOCK_SKEW_NANOS);
        assert!(c.check_occurred_at(now).is_ok());
        assert_eq!(c.effective_occurred_at(now), now);
        c.occurred_at = Some(now + MAX_CLOCK_SKEW_NANOS + 1);
        assert_eq!(c.check_occurred_at(now).unwrap_err().field, "occurred_at");
    }
}

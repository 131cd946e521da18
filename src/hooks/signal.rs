//! What a verified provider request reports, whatever the provider: one
//! [`Signal`] per event, recorded the same way for all (DESIGN.md §9): a
//! withdrawal or a lift on the address, of the consent the provider's
//! scope maps to, or a hard bounce (the address's undeliverable mark);
//! keyed by the provider's event id, with evidence naming the provider,
//! the event and the body's digest.

use super::{Outcome, Provider, digest};
use crate::authority::{Authority, ChangeError, KindOf, RawAddress, undeliverable_change};
use crate::domain::{Action, AddressKind, ConsentId, Evidence, Source, UnixNanos};

/// What an event says about its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Says {
    /// The person opted out (an unsubscribe, a complaint, a keyword).
    Withdraw(Source),
    /// The person lifted an opt-out through the provider.
    Lift(Source),
    /// A hard bounce: the address is undeliverable.
    Bounce,
}

/// One event of a verified request.
#[derive(Debug, Clone)]
pub(super) struct Signal {
    /// The provider's id of the event: the idempotency key.
    pub event_id: String,
    /// The kind of address it names.
    pub kind: AddressKind,
    /// The address as the provider wrote it.
    pub address: String,
    /// What it says.
    pub says: Says,
    /// The provider's name of the event (evidence).
    pub event: String,
    /// The provider's scopes (a group, the tags, a stream), for the
    /// consent map: the first mapped wins, none takes `*`.
    pub scopes: Vec<String>,
    /// When the provider says it happened.
    pub occurred_at: Option<UnixNanos>,
}

/// Records every signal of one request (handed to the writer together, in
/// order); a signal that maps to nothing is skipped. The request is recorded when one signal is, replayed when all
/// that map were recorded before, failed (503, the provider retries the
/// whole request; what was recorded replays) when the store cannot take
/// one.
pub(super) async fn apply(
    authority: &Authority,
    provider: &Provider,
    signals: Vec<Signal>,
    body: &[u8],
) -> Outcome {
    let body_digest = digest(body);
    // Every event of the request goes to the writer at once, in order (one
    // group commit for a SendGrid batch rather than one per event).
    let results = futures_util::future::join_all(
        signals
            .iter()
            .map(|s| one(authority, provider, s, &body_digest)),
    )
    .await;
    let (mut recorded, mut replayed, mut skipped) = (None, None, Vec::new());
    for (s, result) in signals.into_iter().zip(results) {
        match result {
            Ok(Some((sequence, true))) => replayed = Some(sequence),
            Ok(Some((sequence, false))) => recorded = recorded.max(Some(sequence)),
            Ok(None) => skipped.push(s.event),
            Err(e) => return Outcome::Failed(e.to_string()),
        }
    }
    match (recorded, replayed) {
        (Some(sequence), _) => Outcome::Recorded(sequence),
        (None, Some(sequence)) => Outcome::Replayed(sequence),
        (None, None) if skipped.is_empty() => {
            Outcome::Ignored("no event that changes consent".into())
        }
        (None, None) => Outcome::Ignored(format!("events that map to nothing: {skipped:?}")),
    }
}

/// Records one signal: `None` when it maps to nothing (an empty event id,
/// an address that does not read, no consent for its scope).
async fn one(
    authority: &Authority,
    provider: &Provider,
    s: &Signal,
    body_digest: &str,
) -> Result<Option<(u64, bool)>, ChangeError> {
    if s.event_id.is_empty() {
        return Ok(None);
    }
    let raw = RawAddress {
        kind: KindOf::Kind(s.kind),
        value: &s.address,
    };
    let Ok((_, key)) = authority.addressing().read("address", raw) else {
        return Ok(None);
    };
    let mut evidence = Evidence::new();
    evidence.insert("provider".into(), provider.name.clone());
    evidence.insert("event_id".into(), s.event_id.clone());
    evidence.insert("event".into(), s.event.clone());
    evidence.insert("body_sha256".into(), body_digest.to_owned());
    if !s.scopes.is_empty() {
        evidence.insert("scope".into(), s.scopes.join(","));
    }
    if !provider.brand.is_empty() {
        evidence.insert("brand".into(), provider.brand.clone());
    }
    let mut change = match s.says {
        Says::Bounce => undeliverable_change(
            key,
            Action::Withdraw,
            None,
            Source::Provider,
            evidence,
            Some(format!("{}:{}", provider.name, s.event_id)),
            format!("hook:{}", provider.name),
        ),
        Says::Withdraw(source) | Says::Lift(source) => {
            let Some(consent) = provider.consent_for(s.scopes.iter().map(String::as_str)) else {
                return Ok(None);
            };
            let Ok(consent) = ConsentId::parse("consents", consent) else {
                return Ok(None);
            };
            let action = match s.says {
                Says::Withdraw(_) => Action::Withdraw,
                _ => Action::Grant,
            };
            change_on(
                provider,
                key,
                consent,
                action,
                source,
                &s.event_id,
                evidence,
            )
        }
    };
    change.occurred_at = s.occurred_at;
    match record(authority, change).await {
        Ok(r) => Ok(Some(r)),
        Err(ChangeError::UnknownConsent(_) | ChangeError::RetiredConsent(_)) => Ok(None),
        // The event id was recorded from another delivery of it (another
        // signature, another batch around it): the same event, once.
        Err(ChangeError::KeyReused(_)) => Ok(Some((0, true))),
        Err(e) => Err(e),
    }
}

/// A change a provider reported on an address: keyed by the provider's
/// event id, made by the person (`source`), recorded by `hook:{name}`.
fn change_on(
    provider: &Provider,
    address: crate::domain::ContactId,
    consent: crate::domain::ConsentId,
    action: crate::domain::Action,
    source: crate::domain::Source,
    event_id: &str,
    evidence: crate::domain::Evidence,
) -> crate::domain::Change {
    crate::domain::Change {
        contact: address,
        consent,
        action,
        occurred_at: None,
        source,
        evidence,
        // A retried delivery of the same event records once.
        idempotency_key: Some(format!("{}:{event_id}", provider.name)),
        issued_at: None,
        actor: format!("hook:{}", provider.name),
        confirmed: false,
        resend: false,
        bulk: false,
        by_page: false,
        addresses: Vec::new(),
    }
}

/// Records a change a provider reported: (its sequence, whether it was
/// recorded before — a retried delivery of the same event id). A sequence
/// at or below what this node had applied before the call existed before
/// it; a new event always gets a greater one.
async fn record(
    authority: &Authority,
    change: crate::domain::Change,
) -> Result<(u64, bool), crate::authority::ChangeError> {
    let before = authority.applied_sequence();
    let r = authority.record(change, None).await?;
    let sequence = r.outcome.sequence;
    Ok((sequence, sequence != 0 && sequence <= before))
}

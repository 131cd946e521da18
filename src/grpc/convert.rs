//! Small free functions between the wire types (`pb`) and the domain.
//! Validation happens here, once: a request either becomes domain types or
//! an error that names the field.

pub(crate) use super::records::{
    address_to, event_to, export_to, pending_to, raw_address, state_to, wording_to,
};

use prost_types::Timestamp;

use crate::authority::{Addressing, ImportSummary};
use crate::domain::{
    Action, AddressKind, CatalogSpec, Change, ChangeOutcome, ConsentId, ConsentSpec, ContactId,
    Evidence, FieldError, Source, UnixNanos, Verdict, event::MAX_IDEMPOTENCY_KEY_LEN,
    event::check_evidence, ids::check_opaque,
};
use crate::pb;

/// Nanoseconds since the epoch, within what an i64 holds (years 1678..2262).
pub(crate) fn nanos_from(field: &str, ts: &Timestamp) -> Result<UnixNanos, FieldError> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(FieldError::new(field, "nanos must lie in 0..1e9"));
    }
    ts.seconds
        .checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(i64::from(ts.nanos)))
        .ok_or_else(|| FieldError::new(field, "is out of range (years 1678 to 2262)"))
}

/// A protobuf timestamp of nanoseconds since the epoch.
pub fn timestamp(nanos: UnixNanos) -> Timestamp {
    Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        nanos: nanos.rem_euclid(1_000_000_000) as i32,
    }
}

pub(super) fn action_from(field: &str, raw: i32) -> Result<Action, FieldError> {
    match pb::Action::try_from(raw) {
        Ok(pb::Action::Grant) => Ok(Action::Grant),
        Ok(pb::Action::Withdraw) => Ok(Action::Withdraw),
        Ok(pb::Action::Unspecified) => Err(FieldError::new(
            field,
            "is required (ACTION_GRANT or ACTION_WITHDRAW)",
        )),
        Err(_) => Err(FieldError::new(
            field,
            format!("{raw} is not a known action"),
        )),
    }
}

/// Validates one import row: an action, a change, and the time the person
/// decided (import time is not consent time).
pub(crate) fn row_from(
    row: pb::ImportRequest,
    now: UnixNanos,
    actor: &str,
    addressing: &Addressing,
) -> Result<Change, FieldError> {
    let action = action_from("action", row.action)?;
    let change = row
        .change
        .ok_or_else(|| FieldError::new("change", "is required"))?;
    if change.occurred_at.is_none() {
        return Err(FieldError::new(
            "occurred_at",
            "is required in an imported row: import time is not consent time",
        ));
    }
    change_from(action, change, now, actor, addressing)
}

pub(super) fn action_to(a: Action) -> pb::Action {
    match a {
        Action::Grant => pb::Action::Grant,
        Action::Withdraw => pb::Action::Withdraw,
    }
}

pub(super) fn source_from(raw: i32) -> Result<Source, FieldError> {
    u8::try_from(raw)
        .ok()
        .and_then(Source::from_u8)
        .ok_or_else(|| FieldError::new("source", format!("{raw} is not a known source")))
}

pub(super) fn source_to(s: Source) -> pb::Source {
    pb::Source::try_from(s as i32).unwrap_or(pb::Source::Unspecified)
}

/// Validates a Grant or Withdraw request against the receipt time `now`;
/// `actor` is who the server authenticated. A change names a contact or,
/// instead, an address (DESIGN.md §9), which `addressing` reads and names.
pub(crate) fn change_from(
    action: Action,
    c: pb::ConsentChange,
    now: UnixNanos,
    actor: &str,
    addressing: &Addressing,
) -> Result<Change, FieldError> {
    let contact = match (&c.address, c.contact_id.is_empty()) {
        (None, _) => ContactId::parse("contact_id", &c.contact_id)?,
        (Some(a), true) => addressing.read("address", raw_address(a))?.1,
        (Some(_), false) => {
            return Err(FieldError::new(
                "address",
                "names the change's subject instead of contact_id: give one of the two, not both",
            ));
        }
    };
    let consent = ConsentId::parse("consent_id", &c.consent_id)?;
    let occurred_at = c
        .occurred_at
        .as_ref()
        .map(|t| nanos_from("occurred_at", t))
        .transpose()?;
    let source = source_from(c.source)?;
    if source == Source::ConfirmationLink {
        return Err(FieldError::new(
            "source",
            "SOURCE_CONFIRMATION_LINK is recorded by the confirmation page only",
        ));
    }
    if c.confirmed && action == Action::Withdraw {
        return Err(FieldError::new(
            "confirmed",
            "applies to a grant only: a withdrawal is never pending",
        ));
    }
    let evidence: Evidence = c.evidence.into_iter().collect();
    check_evidence(&evidence)?;
    let idempotency_key = match c.idempotency_key.as_str() {
        "" => None,
        k => {
            check_opaque("idempotency_key", k, MAX_IDEMPOTENCY_KEY_LEN)?;
            Some(c.idempotency_key)
        }
    };
    let change = Change {
        contact,
        consent,
        action,
        occurred_at,
        source,
        evidence,
        idempotency_key,
        issued_at: None,
        actor: actor.to_owned(),
        confirmed: c.confirmed,
        resend: false,
        bulk: false,
        by_page: false,
        addresses: Vec::new(),
    };
    change.check_occurred_at(now)?;
    Ok(change)
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The domain catalog of a wire catalog (validation happens when it is
/// compiled; only an address kind the domain has no name for is refused
/// here).
pub fn catalog_from(c: pb::CatalogSpec) -> Result<CatalogSpec, FieldError> {
    let mut channel_addresses = std::collections::BTreeMap::new();
    for (channel, raw) in c.channel_addresses {
        let kind = match pb::AddressKind::try_from(raw) {
            Ok(pb::AddressKind::Email) => AddressKind::Email,
            Ok(pb::AddressKind::Phone) => AddressKind::Phone,
            _ => {
                return Err(FieldError::new(
                    format!("channel_addresses[{}]", crate::domain::ids::quote(&channel)),
                    format!(
                        "{raw} is not an address kind (ADDRESS_KIND_EMAIL or ADDRESS_KIND_PHONE)"
                    ),
                ));
            }
        };
        channel_addresses.insert(channel, kind);
    }
    Ok(CatalogSpec {
        channels: c.channels,
        brands: c.brands,
        consents: c
            .consents
            .into_iter()
            .map(|d| ConsentSpec {
                id: d.id,
                title: d.title,
                text: d.text,
                parent: non_empty(d.parent),
                channels: d.channels,
                brands: d.brands,
                version: d.version,
                retired: d.retired,
                double_opt_in: d.double_opt_in,
                min_version: d.min_version,
                valid_for_days: d.valid_for_days,
            })
            .collect(),
        default_purpose: non_empty(c.default_purpose),
        brand_titles: c.brand_titles.into_iter().collect(),
        channel_addresses,
    })
}

/// The wire catalog of a domain catalog.
pub fn catalog_to(c: &CatalogSpec) -> pb::CatalogSpec {
    pb::CatalogSpec {
        channels: c.channels.clone(),
        brands: c.brands.clone(),
        consents: c
            .consents
            .iter()
            .map(|d| pb::ConsentDefinition {
                id: d.id.clone(),
                title: d.title.clone(),
                text: d.text.clone(),
                parent: d.parent.clone().unwrap_or_default(),
                channels: d.channels.clone(),
                brands: d.brands.clone(),
                version: d.version,
                retired: d.retired,
                double_opt_in: d.double_opt_in,
                min_version: d.min_version,
                valid_for_days: d.valid_for_days,
            })
            .collect(),
        default_purpose: c.default_purpose.clone().unwrap_or_default(),
        brand_titles: c
            .brand_titles
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        channel_addresses: c
            .channel_addresses
            .iter()
            .map(|(channel, kind)| {
                let kind = match kind {
                    AddressKind::Email => pb::AddressKind::Email,
                    AddressKind::Phone => pb::AddressKind::Phone,
                };
                (channel.clone(), kind as i32)
            })
            .collect(),
    }
}

/// The wire reason of a verdict.
pub(super) fn reason(v: Verdict) -> pb::Reason {
    match v {
        Verdict::Granted { .. } => pb::Reason::Granted,
        Verdict::Withdrawn { .. } => pb::Reason::Withdrawn,
        Verdict::NoConsent => pb::Reason::NoConsent,
        Verdict::NotCovered => pb::Reason::NotCovered,
        Verdict::PendingConfirmation => pb::Reason::PendingConfirmation,
        Verdict::Expired => pb::Reason::Expired,
        Verdict::StaleWording => pb::Reason::StaleWording,
        Verdict::AddressWithdrawn { .. } => pb::Reason::AddressWithdrawn,
        Verdict::Undeliverable { .. } => pb::Reason::Undeliverable,
    }
}

/// What an import did.
pub(super) fn summary_to(s: ImportSummary) -> pb::ImportResponse {
    pb::ImportResponse {
        received: s.received,
        applied: s.applied,
        superseded: s.superseded,
        rejected: s.rejected,
        pending: s.pending,
        errors: s
            .errors
            .into_iter()
            .map(|e| pb::RowError {
                row: e.row,
                reason: e.reason,
            })
            .collect(),
    }
}

/// The answer to a Grant, with the confirmation link of a pending grant
/// (empty for none).
pub(super) fn granted_to(o: ChangeOutcome, confirmation_url: String) -> pb::GrantResponse {
    pb::GrantResponse {
        applied: o.applied,
        pending: o.pending.is_some(),
        state: o.state.map(state_to),
        sequence: o.sequence,
        confirmation_url,
    }
}

/// The answer to a Withdraw.
pub(super) fn withdrawn_to(o: ChangeOutcome) -> pb::WithdrawResponse {
    pb::WithdrawResponse {
        applied: o.applied,
        state: o.state.map(state_to),
        sequence: o.sequence,
    }
}

/// A Grant's fields are an import row's change, field for field.
impl From<pb::GrantRequest> for pb::ConsentChange {
    fn from(r: pb::GrantRequest) -> Self {
        pb::ConsentChange {
            contact_id: r.contact_id,
            consent_id: r.consent_id,
            occurred_at: r.occurred_at,
            source: r.source,
            evidence: r.evidence,
            idempotency_key: r.idempotency_key,
            confirmed: r.confirmed,
            address: r.address,
        }
    }
}

/// A Withdraw's fields are an import row's change, without `confirmed`.
impl From<pb::WithdrawRequest> for pb::ConsentChange {
    fn from(r: pb::WithdrawRequest) -> Self {
        pb::ConsentChange {
            contact_id: r.contact_id,
            consent_id: r.consent_id,
            occurred_at: r.occurred_at,
            source: r.source,
            evidence: r.evidence,
            idempotency_key: r.idempotency_key,
            confirmed: false,
            address: r.address,
        }
    }
}

/// A change sent as a Grant (what consentctl and the tests do).
impl From<pb::ConsentChange> for pb::GrantRequest {
    fn from(c: pb::ConsentChange) -> Self {
        pb::GrantRequest {
            contact_id: c.contact_id,
            consent_id: c.consent_id,
            occurred_at: c.occurred_at,
            source: c.source,
            evidence: c.evidence,
            idempotency_key: c.idempotency_key,
            confirmed: c.confirmed,
            address: c.address,
        }
    }
}

/// A change sent as a Withdraw (`confirmed` has no meaning there).
impl From<pb::ConsentChange> for pb::WithdrawRequest {
    fn from(c: pb::ConsentChange) -> Self {
        pb::WithdrawRequest {
            contact_id: c.contact_id,
            consent_id: c.consent_id,
            occurred_at: c.occurred_at,
            source: c.source,
            evidence: c.evidence,
            idempotency_key: c.idempotency_key,
            address: c.address,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        for n in [
            0i64,
            1,
            -1,
            1_700_000_000_123_456_789,
            -1_500_000_000_000_000_001,
        ] {
            assert_eq!(nanos_from("t", &timestamp(n)).unwrap(), n);
        }
        let bad = Timestamp {
            seconds: 1,
            nanos: -1,
        };
        assert_eq!(
            nanos_from("occurred_at", &bad).unwrap_err().field,
            "occurred_at"
        );
        let far = Timestamp {
            seconds: i64::MAX / 2,
            nanos: 0,
        };
        assert!(nanos_from("occurred_at", &far).is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn arbitrary_row() -> impl Strategy<Value = pb::ImportRequest> {
        (
            any::<i32>(),
            proptest::option::of((
                ".{0,300}",
                ".{0,80}",
                proptest::option::of((any::<i64>(), any::<i32>())),
                any::<i32>(),
                proptest::collection::hash_map(".{0,70}", ".{0,100}", 0..40),
                ".{0,300}",
            )),
            proptest::option::of((-1..4i32, ".{0,80}|[0-9 +]{0,20}")),
        )
            .prop_map(|(action, change, address)| pb::ImportRequest {
                action,
                change: change.map(|(contact_id, consent_id, t, source, evidence, key)| {
                    pb::ConsentChange {
                        contact_id,
                        consent_id,
                        occurred_at: t.map(|(seconds, nanos)| Timestamp { seconds, nanos }),
                        source,
                        evidence,
                        idempotency_key: key,
                        confirmed: false,
                        address: address.map(|(kind, value)| pb::Address { kind, value }),
                    }
                }),
            })
    }

    proptest! {
        /// Any import row either becomes a valid change or an error naming
        /// a field, quoting at most 128 bytes of what it got.
        #[test]
        fn import_rows_validate_or_name_the_field(row in arbitrary_row()) {
            let addressing = Addressing::new(
                crate::domain::AddressHasher::new(&[3; 32]),
                crate::domain::PhoneRegion::parse("PL").unwrap(),
            );
            let by_address = row.change.as_ref().is_some_and(|c| c.address.is_some());
            match row_from(row, 1_800_000_000_000_000_000, "crm", &addressing) {
                Ok(change) => {
                    // A row on an address is kept under its key, never its text.
                    prop_assert_eq!(change.contact.is_address(), by_address);
                    prop_assert!(change.occurred_at.is_some());
                    prop_assert!(crate::domain::event::check_evidence(&change.evidence).is_ok());
                    prop_assert_eq!(change.actor, "crm");
                }
                Err(e) => {
                    prop_assert!(!e.field.is_empty());
                    prop_assert!(e.to_string().len() < 400, "{}", e);
                }
            }
        }
    }
}

//! What the reads answer, on the wire: states, pending grants, history
//! events (a mark shown by its kind, never by its id), wordings, a
//! contact's export, addresses.

use std::collections::HashMap;

use super::convert::{action_to, source_to, timestamp};
use crate::authority::{ContactExport, RawAddress};
use crate::domain::mark::ADDRESS_EVIDENCE;
use crate::domain::{Action, Address, AddressKind, EventRecord, Mark, StateRecord, Wording};
use crate::pb;

/// An address as a request carries it, not yet read.
pub(crate) fn raw_address(a: &pb::Address) -> RawAddress<'_> {
    RawAddress {
        kind: super::wire::kind_of(a.kind),
        value: &a.value,
    }
}

/// An address on the wire, as normalised.
pub(crate) fn address_to(a: &Address) -> pb::Address {
    let kind = match a.kind() {
        AddressKind::Email => pb::AddressKind::Email,
        AddressKind::Phone => pb::AddressKind::Phone,
    };
    pb::Address {
        kind: kind as i32,
        value: a.as_str().to_owned(),
    }
}

pub(crate) fn state_to(s: StateRecord) -> pb::ConsentState {
    pb::ConsentState {
        consent_id: s.consent.to_string(),
        action: action_to(s.action) as i32,
        occurred_at: Some(timestamp(s.occurred_at)),
        source: source_to(s.source) as i32,
        version: s.version,
        recorded_at: Some(timestamp(s.recorded_at)),
        sequence: s.sequence,
    }
}

/// A pending record on the wire, and whether it still waits.
pub(crate) fn pending_to(
    (consent, p, waiting): (String, crate::domain::PendingRecord, bool),
) -> pb::PendingGrant {
    pb::PendingGrant {
        consent_id: consent,
        count: p.count,
        last_recorded_at: Some(timestamp(p.last_at)),
        link_sent_at: (p.link_at != 0).then(|| timestamp(p.link_at)),
        waiting,
    }
}

pub(crate) fn event_to(mut e: EventRecord) -> pb::ConsentEvent {
    // A mark is shown by its kind, never by its id (DESIGN.md §9).
    let (kind, address) = match Mark::of(e.consent.as_str()) {
        None => (pb::EventKind::Unspecified, None),
        Some(Mark::Holds { kind, .. }) => {
            let value = e.evidence.remove(ADDRESS_EVIDENCE).unwrap_or_default();
            let event = match e.action {
                Action::Grant => pb::EventKind::AddressAdded,
                Action::Withdraw => pb::EventKind::AddressRemoved,
            };
            (event, Some(address_to(&Address::recorded(kind, value))))
        }
        Some(Mark::Undeliverable | Mark::SetAddresses) => match e.action {
            Action::Grant => (pb::EventKind::UndeliverableCleared, None),
            Action::Withdraw => (pb::EventKind::Undeliverable, None),
        },
    };
    let consent_id = if kind == pb::EventKind::Unspecified {
        e.consent.to_string()
    } else {
        String::new()
    };
    pb::ConsentEvent {
        kind: kind as i32,
        // An address's key is never shown: GetAddress sets `address`.
        contact_id: if e.contact.is_address() {
            String::new()
        } else {
            e.contact.to_string()
        },
        address,
        consent_id,
        action: action_to(e.action) as i32,
        occurred_at: Some(timestamp(e.occurred_at)),
        recorded_at: Some(timestamp(e.recorded_at)),
        source: source_to(e.source) as i32,
        evidence: e.evidence.into_iter().collect::<HashMap<_, _>>(),
        version: e.version,
        sequence: e.sequence,
        idempotency_key: e.idempotency_key.unwrap_or_default(),
        applied: e.applied,
        actor: e.actor,
        pending: e.pending,
        confirmed: e.confirmed,
        contact_hash: Vec::new(),
        chain: e.chain.map(|c| c.to_vec()).unwrap_or_default(),
    }
}

/// A wording on the wire.
pub(crate) fn wording_to(w: Wording) -> pb::Wording {
    pb::Wording {
        consent_id: w.consent.to_string(),
        version: w.version,
        title: w.title,
        text: w.text,
        parent: w.parent.unwrap_or_default(),
        channels: w.channels,
        brands: w.brands,
        in_force_from: (w.in_force_from != 0).then(|| timestamp(w.in_force_from)),
    }
}

/// Everything held about a contact, on the wire.
pub(crate) fn export_to(e: ContactExport) -> pb::ExportContactResponse {
    pb::ExportContactResponse {
        contact_id: e.contact.to_string(),
        states: e.states.into_iter().map(state_to).collect(),
        events: e.events.into_iter().map(event_to).collect(),
        wordings: e.wordings.into_iter().map(wording_to).collect(),
        exported_at: Some(timestamp(e.exported_at)),
        addresses: e.addresses.iter().map(address_to).collect(),
        next_page_token: e.next_page_token,
    }
}

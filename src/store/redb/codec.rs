//! Record encodings of the embedded store: protobuf messages (so fields can
//! be added without a migration) and fixed little-endian layouts, with the
//! conversions to and from domain records. A record that does not decode is
//! [`StoreError::Corrupt`], naming its table.

use prost::Message;

use crate::domain::{
    Action, ConsentId, ContactId, EventRecord, PendingRecord, Source, StateRecord, Wording,
};
use crate::store::{IdempotencyRecord, StoreError};

/// Everything stored under one contact.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ContactRecord {
    #[prost(message, repeated, tag = "1")]
    pub(super) states: Vec<StoredState>,
    /// Schema 1 only: sequences of every event of the contact (now in the
    /// `history` table; read once, by the migration).
    #[prost(uint64, repeated, tag = "2")]
    pub(super) events: Vec<u64>,
    /// Grants waiting for the person, by consent.
    #[prost(message, repeated, tag = "3")]
    pub(super) pending: Vec<StoredPending>,
}

/// A pending record as stored ([`PendingRecord`]).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StoredPending {
    #[prost(string, tag = "1")]
    pub(super) consent: String,
    #[prost(uint32, tag = "2")]
    count: u32,
    #[prost(sfixed64, tag = "3")]
    last_at: i64,
    #[prost(sfixed64, tag = "4")]
    link_at: i64,
}

impl StoredPending {
    pub(super) fn record(&self) -> PendingRecord {
        PendingRecord {
            count: self.count,
            last_at: self.last_at,
            link_at: self.link_at,
        }
    }
}

impl ContactRecord {
    /// Moves the pending record of the event's consent as
    /// [`PendingRecord::after`] says.
    pub(super) fn follow_pending(&mut self, e: &EventRecord) {
        let consent = e.consent.as_str();
        let at = self.pending.iter().position(|p| p.consent == consent);
        let prev = at.map(|i| self.pending[i].record());
        match (PendingRecord::after(prev, e), at) {
            (Some(p), Some(i)) => {
                self.pending[i].count = p.count;
                self.pending[i].last_at = p.last_at;
                self.pending[i].link_at = p.link_at;
            }
            (Some(p), None) => self.pending.push(StoredPending {
                consent: consent.to_owned(),
                count: p.count,
                last_at: p.last_at,
                link_at: p.link_at,
            }),
            (None, Some(i)) => {
                self.pending.remove(i);
            }
            (None, None) => {}
        }
    }
}

/// A state as stored (the winning event without its evidence).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StoredState {
    #[prost(string, tag = "1")]
    pub(super) consent: String,
    #[prost(uint32, tag = "2")]
    pub(super) action: u32,
    #[prost(sfixed64, tag = "3")]
    pub(super) occurred_at: i64,
    #[prost(sfixed64, tag = "4")]
    recorded_at: i64,
    #[prost(uint32, tag = "5")]
    source: u32,
    #[prost(uint32, tag = "6")]
    version: u32,
    #[prost(uint64, tag = "7")]
    sequence: u64,
}

/// An event as stored; its sequence is the key.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StoredEvent {
    #[prost(string, tag = "10")]
    contact: String,
    #[prost(string, tag = "1")]
    consent: String,
    #[prost(uint32, tag = "2")]
    action: u32,
    #[prost(sfixed64, tag = "3")]
    occurred_at: i64,
    #[prost(sfixed64, tag = "4")]
    recorded_at: i64,
    #[prost(uint32, tag = "5")]
    source: u32,
    #[prost(btree_map = "string, string", tag = "6")]
    evidence: std::collections::BTreeMap<String, String>,
    #[prost(uint32, tag = "7")]
    version: u32,
    #[prost(string, optional, tag = "8")]
    pub(super) idempotency_key: Option<String>,
    #[prost(bool, tag = "9")]
    applied: bool,
    #[prost(string, tag = "11")]
    actor: String,
    #[prost(bool, tag = "12")]
    pending: bool,
    #[prost(bool, tag = "13")]
    confirmed: bool,
    #[prost(bool, tag = "14")]
    confirmation_link: bool,
    /// Its link in the chain: salt (16) ‖ leaf (32) ‖ chain (32); empty in
    /// a file from before the chain (migrated at open).
    #[prost(bytes = "vec", tag = "15")]
    link: Vec<u8>,
}

/// A wording as stored; (consent, version) is the key.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StoredWording {
    #[prost(string, tag = "1")]
    title: String,
    #[prost(string, tag = "2")]
    text: String,
    #[prost(string, optional, tag = "3")]
    parent: Option<String>,
    #[prost(string, repeated, tag = "4")]
    channels: Vec<String>,
    #[prost(string, repeated, tag = "5")]
    brands: Vec<String>,
    #[prost(sfixed64, tag = "6")]
    in_force_from: i64,
}

pub(super) fn encode_wording(w: &Wording) -> Vec<u8> {
    StoredWording {
        title: w.title.clone(),
        text: w.text.clone(),
        parent: w.parent.clone(),
        channels: w.channels.clone(),
        brands: w.brands.clone(),
        in_force_from: w.in_force_from,
    }
    .encode_to_vec()
}

pub(super) fn decode_wording(consent: &str, version: u32, b: &[u8]) -> Result<Wording, StoreError> {
    let s = StoredWording::decode(b).map_err(|e| StoreError::corrupt("wordings", e.to_string()))?;
    Ok(Wording {
        consent: ConsentId::stored("consent", consent)
            .map_err(|e| StoreError::corrupt("wordings", e.to_string()))?,
        version,
        title: s.title,
        text: s.text,
        parent: s.parent,
        channels: s.channels,
        brands: s.brands,
        in_force_from: s.in_force_from,
    })
}

pub(super) fn decode_contact(b: &[u8]) -> Result<ContactRecord, StoreError> {
    ContactRecord::decode(b).map_err(|e| StoreError::corrupt("contacts", e.to_string()))
}

pub(super) fn decode_stored_event(b: &[u8]) -> Result<StoredEvent, StoreError> {
    StoredEvent::decode(b).map_err(|e| StoreError::corrupt("events", e.to_string()))
}

pub(super) fn u32_from(b: &[u8]) -> Result<u32, StoreError> {
    Ok(u32::from_le_bytes(
        b.try_into()
            .map_err(|_| StoreError::corrupt("meta", "u32"))?,
    ))
}

pub(super) fn u64_from(b: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_le_bytes(
        b.try_into()
            .map_err(|_| StoreError::corrupt("meta", "u64"))?,
    ))
}

pub(super) fn action_from(raw: u32, table: &'static str) -> Result<Action, StoreError> {
    u8::try_from(raw)
        .ok()
        .and_then(Action::from_u8)
        .ok_or_else(|| StoreError::corrupt(table, "action"))
}

fn source_from(raw: u32, table: &'static str) -> Result<Source, StoreError> {
    u8::try_from(raw)
        .ok()
        .and_then(Source::from_u8)
        .ok_or_else(|| StoreError::corrupt(table, "source"))
}

/// The state an applied event becomes.
pub(super) fn state_to(e: &EventRecord) -> StoredState {
    StoredState {
        consent: e.consent.as_str().to_owned(),
        action: e.action as u32,
        occurred_at: e.occurred_at,
        recorded_at: e.recorded_at,
        source: e.source as u32,
        version: e.version,
        sequence: e.sequence,
    }
}

/// The record `load_states` feeds for a stored state.
pub(super) fn loaded_from(s: &StoredState) -> Result<crate::store::Loaded, StoreError> {
    Ok(crate::store::Loaded::State {
        decision: crate::domain::Decision {
            occurred_at: s.occurred_at,
            action: action_from(s.action, "contacts")?,
        },
        version: s.version,
        source: source_from(s.source, "contacts")?,
    })
}

pub(super) fn state_from(s: &StoredState) -> Result<StateRecord, StoreError> {
    Ok(StateRecord {
        consent: ConsentId::stored("consent", &s.consent)
            .map_err(|e| StoreError::corrupt("contacts", e.to_string()))?,
        action: action_from(s.action, "contacts")?,
        occurred_at: s.occurred_at,
        recorded_at: s.recorded_at,
        source: source_from(s.source, "contacts")?,
        version: s.version,
        sequence: s.sequence,
    })
}

pub(super) fn encode_idempotency(r: &IdempotencyRecord) -> [u8; 48] {
    let mut b = [0u8; 48];
    b[0..8].copy_from_slice(&r.sequence.to_le_bytes());
    b[8..16].copy_from_slice(&r.recorded_at.to_le_bytes());
    b[16..48].copy_from_slice(&r.fingerprint);
    b
}

pub(super) fn decode_idempotency(b: &[u8]) -> Result<IdempotencyRecord, StoreError> {
    if b.len() != 48 {
        return Err(StoreError::corrupt("idempotency", "record length"));
    }
    Ok(IdempotencyRecord {
        sequence: u64::from_le_bytes(b[0..8].try_into().expect("length checked")),
        recorded_at: i64::from_le_bytes(b[8..16].try_into().expect("length checked")),
        fingerprint: b[16..48].try_into().expect("length checked"),
    })
}

/// A tombstone's value: erased_at (8 bytes LE), then the reason's UTF-8.
pub(super) fn encode_tombstone(erased_at: i64, reason: &str) -> Vec<u8> {
    let mut value = erased_at.to_le_bytes().to_vec();
    value.extend_from_slice(reason.as_bytes());
    value
}

/// The erasure time of a tombstone's value.
pub(super) fn tombstone_erased_at(b: &[u8]) -> Result<i64, StoreError> {
    let at = b
        .get(..8)
        .ok_or_else(|| StoreError::corrupt("erasures", "record length"))?;
    Ok(i64::from_le_bytes(at.try_into().expect("8 bytes")))
}

/// Encodes an event with its link in the chain (none: not linked).
pub(super) fn encode_event(e: &EventRecord, link: Option<&crate::audit::Link>, buf: &mut Vec<u8>) {
    let link = link.map_or_else(Vec::new, |l| {
        let mut v = Vec::with_capacity(80);
        v.extend_from_slice(&l.salt.unwrap_or(crate::audit::NO_SALT));
        v.extend_from_slice(&l.leaf);
        v.extend_from_slice(&l.chain);
        v
    });
    StoredEvent {
        contact: e.contact.as_str().to_owned(),
        consent: e.consent.as_str().to_owned(),
        action: e.action as u32,
        occurred_at: e.occurred_at,
        recorded_at: e.recorded_at,
        source: e.source as u32,
        evidence: e.evidence.clone(),
        version: e.version,
        idempotency_key: e.idempotency_key.clone(),
        applied: e.applied,
        actor: e.actor.clone(),
        pending: e.pending,
        confirmed: e.confirmed,
        confirmation_link: e.confirmation_link,
        link,
    }
    .encode(buf)
    .expect("a Vec grows as needed");
}

pub(super) fn decode_event(sequence: u64, b: &[u8]) -> Result<EventRecord, StoreError> {
    decode_linked_event(sequence, b).map(|(e, _)| e)
}

/// An event and its link in the chain (none in a record without one).
pub(super) fn decode_linked_event(
    sequence: u64,
    b: &[u8],
) -> Result<(EventRecord, Option<crate::audit::Link>), StoreError> {
    let s = decode_stored_event(b)?;
    let link = (s.link.len() == 80).then(|| crate::audit::Link {
        sequence,
        kind: crate::audit::Kind::Event,
        salt: Some(s.link[..16].try_into().expect("16")),
        leaf: s.link[16..48].try_into().expect("32"),
        chain: s.link[48..].try_into().expect("32"),
        body: Vec::new(),
    });
    let bad = |e: crate::domain::FieldError| StoreError::corrupt("events", e.to_string());
    let event = EventRecord {
        contact: ContactId::stored("contact", &s.contact).map_err(bad)?,
        consent: ConsentId::stored("consent", &s.consent).map_err(bad)?,
        action: action_from(s.action, "events")?,
        occurred_at: s.occurred_at,
        recorded_at: s.recorded_at,
        source: source_from(s.source, "events")?,
        evidence: s.evidence,
        version: s.version,
        sequence,
        idempotency_key: s.idempotency_key,
        applied: s.applied,
        actor: s.actor,
        pending: s.pending,
        confirmed: s.confirmed,
        confirmation_link: s.confirmation_link,
        chain: link.as_ref().map(|l| l.chain),
    };
    Ok((event, link))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_names_the_table() {
        let event = EventRecord {
            contact: ContactId::parse("c", "anna@example.com").unwrap(),
            consent: ConsentId::parse("c", "marketing").unwrap(),
            action: Action::Withdraw,
            occurred_at: -5,
            recorded_at: 7,
            source: Source::UnsubscribeLink,
            evidence: [("ip".to_string(), "10.0.0.1".to_string())].into(),
            version: 3,
            sequence: 42,
            idempotency_key: Some("k".into()),
            applied: false,
            actor: "crm-sync".into(),
            pending: false,
            confirmed: false,
            confirmation_link: false,
            chain: None,
        };
        let mut buf = Vec::new();
        encode_event(&event, None, &mut buf);
        assert_eq!(decode_event(42, &buf).unwrap(), event);
        let state = state_from(&state_to(&event)).unwrap();
        assert_eq!(
            (state.consent, state.version, state.sequence),
            (event.consent.clone(), 3, 42)
        );

        let r = IdempotencyRecord {
            sequence: 9,
            recorded_at: -2,
            fingerprint: [3; 32],
        };
        assert_eq!(decode_idempotency(&encode_idempotency(&r)).unwrap(), r);
        assert_eq!(
            tombstone_erased_at(&encode_tombstone(-77, "asked")).unwrap(),
            -77
        );

        for err in [
            decode_idempotency(&[0; 47]).unwrap_err(),
            tombstone_erased_at(&[1, 2]).unwrap_err(),
            decode_event(1, &[0xff, 0xff]).unwrap_err(),
        ] {
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        }
        let mut bad_action = state_to(&event);
        bad_action.action = 9;
        assert!(
            state_from(&bad_action)
                .unwrap_err()
                .to_string()
                .contains("contacts")
        );
    }
}

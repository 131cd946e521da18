//! A write batch as column arrays, so that each table takes the whole
//! batch in one `INSERT ... SELECT FROM UNNEST($arrays)` statement.

use tokio_postgres::types::Json;

use super::decode::i64_of;
use crate::domain::PendingRecord;
use crate::store::{StoreError, WriteBatch};

/// A batch as column arrays, owned, ready to be sent.
#[derive(Default)]
pub(super) struct Columns {
    pub(super) events: EventColumns,
    pub(super) states: StateColumns,
    pub(super) keys: Vec<String>,
    pub(super) key_sequences: Vec<i64>,
    pub(super) key_times: Vec<i64>,
    pub(super) key_fingerprints: Vec<Vec<u8>>,
    pub(super) wordings: Vec<crate::domain::Wording>,
    pub(super) catalog: Option<serde_json::Value>,
    /// When that catalog comes into force.
    pub(super) catalog_at: i64,
    /// Its place in the feed (NULL: none).
    pub(super) catalog_sequence: Option<i64>,
    pub(super) next_sequence: i64,
    /// Pending records the batch adds to (`add`), sets afresh after a
    /// decision ended the wait earlier in the batch (`set`), or ends
    /// (`ended`: contact, consent).
    pub(super) pending_add: PendingColumns,
    pub(super) pending_set: PendingColumns,
    pub(super) pending_ended: (Vec<String>, Vec<String>),
}

#[derive(Default)]
pub(super) struct PendingColumns {
    pub(super) contact: Vec<String>,
    pub(super) consent: Vec<String>,
    pub(super) count: Vec<i32>,
    pub(super) last_at: Vec<i64>,
    pub(super) link_at: Vec<i64>,
}

#[derive(Default)]
pub(super) struct EventColumns {
    pub(super) sequence: Vec<i64>,
    pub(super) contact: Vec<String>,
    pub(super) consent: Vec<String>,
    pub(super) action: Vec<i16>,
    pub(super) occurred_at: Vec<i64>,
    pub(super) recorded_at: Vec<i64>,
    pub(super) source: Vec<i16>,
    pub(super) evidence: Vec<Json<crate::domain::Evidence>>,
    pub(super) version: Vec<i32>,
    pub(super) idempotency_key: Vec<Option<String>>,
    pub(super) applied: Vec<bool>,
    pub(super) actor: Vec<String>,
    pub(super) pending: Vec<bool>,
    pub(super) confirmed: Vec<bool>,
    pub(super) confirmation_link: Vec<bool>,
}

#[derive(Default)]
pub(super) struct StateColumns {
    pub(super) contact: Vec<String>,
    pub(super) consent: Vec<String>,
    pub(super) action: Vec<i16>,
    pub(super) occurred_at: Vec<i64>,
    pub(super) recorded_at: Vec<i64>,
    pub(super) source: Vec<i16>,
    pub(super) version: Vec<i32>,
    pub(super) sequence: Vec<i64>,
}

impl Columns {
    /// The batch as column arrays; it is consumed, so evidence, keys and
    /// actors move instead of being copied.
    pub(super) fn of(batch: WriteBatch) -> Result<Columns, StoreError> {
        let mut c = Columns {
            next_sequence: i64_of(batch.next_sequence, "next_sequence")?,
            catalog: batch
                .catalog
                .as_ref()
                .map(serde_json::to_value)
                .transpose()
                .map_err(|e| StoreError::corrupt("meta", format!("catalog: {e}")))?,
            catalog_at: batch.catalog_at,
            catalog_sequence: match batch.catalog_sequence {
                0 => None,
                s => Some(i64_of(s, "catalog_sequence")?),
            },
            wordings: batch.wordings,
            ..Default::default()
        };
        // The last applied event of a (contact, consent) in the batch is its
        // state; one row each, so that the upsert touches a row once.
        let mut last_state = std::collections::HashMap::new();
        for (i, e) in batch.events.iter().enumerate() {
            if e.applied {
                last_state.insert((e.contact.as_str(), e.consent.as_str()), i);
            }
        }
        // Pending records, folded per (contact, consent) in batch order:
        // (ended earlier in the batch, what the batch adds).
        let mut pending: std::collections::BTreeMap<(&str, &str), (bool, Option<PendingRecord>)> =
            std::collections::BTreeMap::new();
        for e in &batch.events {
            let slot = pending
                .entry((e.contact.as_str(), e.consent.as_str()))
                .or_insert((false, None));
            match PendingRecord::after(slot.1, e) {
                Some(p) => slot.1 = Some(p),
                None => *slot = (true, None),
            }
        }
        for ((contact, consent), (ended, added)) in pending {
            match added {
                None => {
                    c.pending_ended.0.push(contact.to_owned());
                    c.pending_ended.1.push(consent.to_owned());
                }
                Some(p) => {
                    let cols = if ended {
                        &mut c.pending_set
                    } else {
                        &mut c.pending_add
                    };
                    cols.contact.push(contact.to_owned());
                    cols.consent.push(consent.to_owned());
                    cols.count.push(i32::try_from(p.count).unwrap_or(i32::MAX));
                    cols.last_at.push(p.last_at);
                    cols.link_at.push(p.link_at);
                }
            }
        }
        let mut winners: Vec<usize> = last_state.into_values().collect();
        winners.sort_unstable();
        for i in winners {
            let e = &batch.events[i];
            let st = &mut c.states;
            st.contact.push(e.contact.to_string());
            st.consent.push(e.consent.to_string());
            st.action.push(e.action as i16);
            st.occurred_at.push(e.occurred_at);
            st.recorded_at.push(e.recorded_at);
            st.source.push(e.source as i16);
            st.version.push(e.version as i32);
            st.sequence.push(i64_of(e.sequence, "sequence")?);
        }
        for e in batch.events {
            let ev = &mut c.events;
            ev.sequence.push(i64_of(e.sequence, "sequence")?);
            ev.contact.push(e.contact.to_string());
            ev.consent.push(e.consent.to_string());
            ev.action.push(e.action as i16);
            ev.occurred_at.push(e.occurred_at);
            ev.recorded_at.push(e.recorded_at);
            ev.source.push(e.source as i16);
            ev.evidence.push(Json(e.evidence));
            ev.version.push(e.version as i32);
            ev.idempotency_key.push(e.idempotency_key);
            ev.applied.push(e.applied);
            ev.actor.push(e.actor);
            ev.pending.push(e.pending);
            ev.confirmed.push(e.confirmed);
            ev.confirmation_link.push(e.confirmation_link);
        }
        for (key, r) in batch.idempotency {
            c.keys.push(key);
            c.key_sequences.push(i64_of(r.sequence, "sequence")?);
            c.key_times.push(r.recorded_at);
            c.key_fingerprints.push(r.fingerprint.to_vec());
        }
        Ok(c)
    }
}

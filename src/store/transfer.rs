//! Moving everything from one store to another (`consentctl migrate`):
//! every event with its sequence, every idempotency key, every wording and
//! version, the catalog, the erasure key and tombstones, the link keys;
//! then a comparison of the two, record by record.

use std::collections::BTreeMap;

use super::{Loaded, StoreError, Transfer, WriteBatch};
use crate::domain::EventRecord;

/// Rows per transaction while copying.
const PAGE: usize = 10_000;

/// What was moved (and then found identical on both sides).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Moved {
    /// Events, applied or superseded.
    pub events: u64,
    /// States of (contact, consent) derived from them.
    pub states: u64,
    /// Idempotency keys still remembered.
    pub keys: u64,
    /// Wordings, every version.
    pub wordings: u64,
    /// Erased contacts.
    pub tombstones: u64,
    /// The sequence the next event gets.
    pub next_sequence: u64,
}

/// Why a move did not happen or does not check out.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The target already holds data: a move never merges.
    #[error("the target store is not empty ({0}); a migration only fills an empty store")]
    TargetNotEmpty(String),
    /// After the copy, the two stores differ.
    #[error("the stores differ after the copy: {0}")]
    Differs(String),
}

fn non_empty(store: &dyn Transfer) -> Result<Option<String>, StoreError> {
    let r = store.recover()?;
    Ok(if !store.events_after(0, 1)?.is_empty() {
        Some("it holds events".into())
    } else if r.catalog.is_some() {
        Some("it holds a catalog".into())
    } else if !r.wordings.is_empty() {
        Some("it holds wordings".into())
    } else if !r.erasures.is_empty() {
        Some("it holds erasures".into())
    } else if r.next_sequence > 1 {
        Some(format!("its next sequence is {}", r.next_sequence))
    } else {
        None
    })
}

/// Copies everything `from` holds into the empty store `to`, with the link
/// keys `link_keys` (for a store that shares them), then checks that the
/// two hold the same; `progress` hears the events copied so far.
pub fn copy(
    from: &dyn Transfer,
    to: &dyn Transfer,
    link_keys: &[String],
    progress: &mut dyn FnMut(u64),
) -> Result<Moved, TransferError> {
    if let Some(why) = non_empty(to)? {
        return Err(TransferError::TargetNotEmpty(why));
    }
    let recovered = from.recover()?;
    to.adopt(&recovered.erasure_key, &from.tombstones()?, link_keys)?;
    to.commit(&WriteBatch {
        catalog: recovered.catalog.clone(),
        wordings: from.wordings(None)?,
        next_sequence: 1,
        ..Default::default()
    })?;
    let (mut after, mut copied) = (0u64, 0u64);
    loop {
        let events = from.events_after(after, PAGE)?;
        let Some(last) = events.last().map(|e| e.sequence) else {
            break;
        };
        copied += events.len() as u64;
        to.commit(&WriteBatch {
            events,
            next_sequence: last + 1,
            ..Default::default()
        })?;
        after = last;
        progress(copied);
    }
    let mut key = String::new();
    loop {
        let keys = from.idempotency_keys(&key, PAGE)?;
        let Some(last) = keys.last().map(|(k, _)| k.clone()) else {
            break;
        };
        to.commit(&WriteBatch {
            idempotency: keys,
            next_sequence: after + 1,
            ..Default::default()
        })?;
        key = last;
    }
    to.commit(&WriteBatch {
        next_sequence: recovered.next_sequence.max(after + 1),
        ..Default::default()
    })?;
    compare(from, to)
}

fn all_events(store: &dyn Transfer, mut each: impl FnMut(EventRecord)) -> Result<u64, StoreError> {
    let (mut after, mut n) = (0, 0);
    loop {
        let page = store.events_after(after, PAGE)?;
        let Some(last) = page.last().map(|e| e.sequence) else {
            return Ok(n);
        };
        n += page.len() as u64;
        page.into_iter().for_each(&mut each);
        after = last;
    }
}

/// Every state and pending record, by (contact, consent, is it pending).
fn states(store: &dyn Transfer) -> Result<BTreeMap<(String, String, bool), Loaded>, StoreError> {
    let mut all = BTreeMap::new();
    store.load_states(&mut |contact, consent, d| {
        let pending = matches!(d, Loaded::Pending(_));
        all.insert((contact.to_owned(), consent.to_owned(), pending), d);
    })?;
    Ok(all)
}

/// Checks that two stores hold the same: every event, state, key, wording,
/// tombstone, the catalog, the erasure key and the sequence counter.
pub fn compare(a: &dyn Transfer, b: &dyn Transfer) -> Result<Moved, TransferError> {
    let differs = |what: &str| TransferError::Differs(what.to_owned());
    let (ra, rb) = (a.recover()?, b.recover()?);
    if ra.next_sequence != rb.next_sequence {
        return Err(differs("the next sequence"));
    }
    if ra.erasure_key != rb.erasure_key {
        return Err(differs("the erasure key"));
    }
    let json = |c: &Option<crate::domain::CatalogSpec>| serde_json::to_value(c).ok();
    if json(&ra.catalog) != json(&rb.catalog) {
        return Err(differs("the catalog"));
    }
    // Each store computes its own chain (the target's starts at the move):
    // the records are compared without it.
    let mut events_a = Vec::new();
    all_events(a, |e| events_a.push(EventRecord { chain: None, ..e }))?;
    let mut i = 0usize;
    let mut mismatch = None;
    let n = all_events(b, |e| {
        let e = EventRecord { chain: None, ..e };
        if mismatch.is_none() && events_a.get(i) != Some(&e) {
            mismatch = Some(e.sequence);
        }
        i += 1;
    })?;
    if let Some(sequence) = mismatch {
        return Err(TransferError::Differs(format!(
            "the event at sequence {sequence}"
        )));
    }
    if n as usize != events_a.len() {
        return Err(differs("the number of events"));
    }
    let (sa, sb) = (states(a)?, states(b)?);
    if sa != sb {
        return Err(differs("the states"));
    }
    let keys = |s: &dyn Transfer| -> Result<Vec<_>, StoreError> {
        let (mut all, mut after) = (Vec::new(), String::new());
        loop {
            let page = s.idempotency_keys(&after, PAGE)?;
            let Some(last) = page.last().map(|(k, _)| k.clone()) else {
                return Ok(all);
            };
            all.extend(page);
            after = last;
        }
    };
    let (ka, kb) = (keys(a)?, keys(b)?);
    if ka != kb {
        return Err(differs("the idempotency keys"));
    }
    let sorted_wordings = |s: &dyn Transfer| -> Result<Vec<_>, StoreError> {
        let mut w = s.wordings(None)?;
        w.sort_by(|x, y| (x.consent.as_str(), x.version).cmp(&(y.consent.as_str(), y.version)));
        Ok(w)
    };
    let (wa, wb) = (sorted_wordings(a)?, sorted_wordings(b)?);
    if wa != wb {
        return Err(differs("the wordings"));
    }
    let (mut ta, mut tb) = (a.tombstones()?, b.tombstones()?);
    ta.sort_by_key(|t| t.hash);
    tb.sort_by_key(|t| t.hash);
    if ta != tb {
        return Err(differs("the tombstones"));
    }
    Ok(Moved {
        events: n,
        states: sa.len() as u64,
        keys: ka.len() as u64,
        wordings: wa.len() as u64,
        tombstones: ta.len() as u64,
        next_sequence: ra.next_sequence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Action, ConsentId, ContactId, IdempotencyRecord, Source, Wording};
    use crate::store::{MemoryStore, Store, Tombstone};

    fn event(contact: &str, action: Action, sequence: u64) -> EventRecord {
        EventRecord {
            contact: ContactId::parse("contact", contact).unwrap(),
            consent: ConsentId::parse("consent", "marketing").unwrap(),
            action,
            occurred_at: sequence as i64,
            recorded_at: sequence as i64 + 1,
            source: Source::Form,
            evidence: [("ip".to_string(), "10.0.0.1".to_string())].into(),
            version: 1,
            sequence,
            idempotency_key: (sequence == 2).then(|| "k2".to_string()),
            applied: true,
            actor: "crm".into(),
            pending: false,
            confirmed: false,
            confirmation_link: false,
            chain: None,
        }
    }

    #[test]
    fn a_copy_holds_everything_and_refuses_a_store_with_data() {
        let from = MemoryStore::new().unwrap();
        from.commit(&WriteBatch {
            wordings: vec![Wording {
                consent: ConsentId::parse("consent", "marketing").unwrap(),
                version: 1,
                title: "News".into(),
                text: "I agree".into(),
                parent: None,
                channels: vec!["email".into()],
                brands: vec!["acme".into()],
                in_force_from: 1,
            }],
            next_sequence: 1,
            ..Default::default()
        })
        .unwrap();
        // Sequences with a gap (an erased contact's events are gone).
        from.commit(&WriteBatch {
            events: vec![
                event("anna", Action::Grant, 1),
                event("bob", Action::Grant, 2),
                event("anna", Action::Withdraw, 5),
            ],
            idempotency: vec![(
                "k2".into(),
                IdempotencyRecord {
                    sequence: 2,
                    recorded_at: 3,
                    fingerprint: [2; 32],
                },
            )],
            next_sequence: 9,
            ..Default::default()
        })
        .unwrap();
        from.erase(
            "carl",
            &Tombstone {
                hash: [3; 32],
                erased_at: 7,
                reason: "ticket".into(),
                sequence: 0,
            },
        )
        .unwrap();

        let to = MemoryStore::new().unwrap();
        let mut seen = 0;
        let moved = copy(&from, &to, &[], &mut |n| seen = n).unwrap();
        assert_eq!(
            moved,
            Moved {
                events: 3,
                states: 2,
                keys: 1,
                wordings: 1,
                tombstones: 1,
                next_sequence: 9,
            }
        );
        assert_eq!(seen, 3);
        // Each store links its own chain; the records are the same.
        let plain = crate::store::conformance::plain;
        assert_eq!(
            plain(to.history("anna").unwrap()),
            plain(from.history("anna").unwrap())
        );

        let err = copy(&from, &to, &[], &mut |_| {}).unwrap_err();
        assert!(matches!(err, TransferError::TargetNotEmpty(_)), "{err}");
        // And a difference is found, naming what differs.
        to.commit(&WriteBatch {
            events: vec![event("dan", Action::Grant, 9)],
            next_sequence: 10,
            ..Default::default()
        })
        .unwrap();
        let err = compare(&from, &to).unwrap_err();
        assert!(err.to_string().contains("sequence"), "{err}");
    }
}

//! A consumer's replica built from ExportStates and Watch (DESIGN.md §10),
//! compared with GetContact: what the snapshot suites and the node suites
//! check a snapshot with.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use consentd::pb::{self, watch_response::Change};

use super::{Consents, TestServer, watch_from};

/// What a consumer keeps of one contact.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Replica {
    /// Consent id → its state.
    pub(crate) states: BTreeMap<String, pb::ConsentState>,
    /// (address, its keyed hash), in the order added.
    pub(crate) addresses: Vec<(pb::Address, Vec<u8>)>,
    pub(crate) hash: Vec<u8>,
}

/// The state an applied event leaves.
fn state_of(e: &pb::ConsentEvent) -> pb::ConsentState {
    pb::ConsentState {
        consent_id: e.consent_id.clone(),
        action: e.action,
        occurred_at: e.occurred_at,
        source: e.source,
        version: e.version,
        recorded_at: e.recorded_at,
        sequence: e.sequence,
    }
}

/// Reads a whole snapshot: its rows by contact and its sequence.
pub(crate) async fn snapshot(
    cons: &mut Consents,
    purposes: &[&str],
    mut after_first: impl AsyncFnMut(),
) -> (HashMap<String, Replica>, u64) {
    let mut stream = cons
        .export_states(pb::ExportStatesRequest {
            purposes: purposes.iter().map(|p| p.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut rows = HashMap::new();
    let mut first = true;
    let mut at = None;
    let mut last_contact = String::new();
    loop {
        let m = stream
            .message()
            .await
            .unwrap()
            .expect("ends with `complete`");
        assert_eq!(*at.get_or_insert(m.sequence), m.sequence, "one sequence");
        if m.complete {
            assert!(m.contact_id.is_empty());
            assert!(stream.message().await.unwrap().is_none());
            return (rows, m.sequence);
        }
        assert!(m.contact_id > last_contact, "contacts in id order, once");
        last_contact = m.contact_id.clone();
        assert_eq!(m.addresses.len(), m.address_hashes.len());
        let replica = Replica {
            states: m
                .states
                .iter()
                .map(|s| (s.consent_id.clone(), s.clone()))
                .collect(),
            addresses: m.addresses.into_iter().zip(m.address_hashes).collect(),
            hash: m.contact_hash,
        };
        rows.insert(m.contact_id, replica);
        if first {
            first = false;
            after_first().await;
        }
    }
}

/// Applies a Watch from `from` to the replica until a checkpoint at or
/// past `until`.
pub(crate) async fn follow(
    server: &TestServer,
    replica: &mut HashMap<String, Replica>,
    from: u64,
    until: u64,
) {
    let mut stream = watch_from(server, from).await;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a record within 10 s")
            .unwrap()
            .unwrap();
        match next.change.unwrap() {
            Change::Checkpoint(c) if c.sequence >= until => return,
            Change::Checkpoint(_) | Change::Catalog(_) => {}
            Change::Event(e) => {
                let r = replica.entry(e.contact_id.clone()).or_default();
                r.hash = e.contact_hash.clone();
                if e.applied {
                    r.states.insert(e.consent_id.clone(), state_of(&e));
                }
            }
            Change::Address(a) if a.contact_id.is_empty() => {} // on an address itself
            Change::Address(a) => {
                let r = replica.entry(a.contact_id.clone()).or_default();
                r.hash = a.event.as_ref().unwrap().contact_hash.clone();
                match a.kind() {
                    pb::EventKind::AddressAdded => r
                        .addresses
                        .push((a.address.clone().unwrap(), a.address_hash)),
                    pb::EventKind::AddressRemoved => {
                        r.addresses.retain(|(_, h)| *h != a.address_hash)
                    }
                    other => panic!("a contact's address record of kind {other:?}"),
                }
            }
            Change::Erasure(e) => replica.retain(|_, r| r.hash != e.contact_hash),
        }
    }
}

pub(crate) async fn set_addresses(cons: &mut Consents, contact: &str, emails: &[&str]) -> u64 {
    cons.set_addresses(pb::SetAddressesRequest {
        contact_id: contact.into(),
        addresses: emails
            .iter()
            .map(|e| pb::Address {
                kind: pb::AddressKind::Email as i32,
                value: e.to_string(),
            })
            .collect(),
    })
    .await
    .unwrap()
    .into_inner()
    .sequence
}

pub(crate) async fn erase(cons: &mut Consents, contact: &str) {
    cons.erase_contact(pb::EraseContactRequest {
        contact_id: contact.into(),
        reason: "test".into(),
    })
    .await
    .unwrap();
}

/// Every contact's GetContact (states by consent, addresses) equals the
/// replica's; contacts the replica lacks hold nothing.
pub(crate) async fn assert_reproduces(
    cons: &mut Consents,
    replica: &HashMap<String, Replica>,
    all: &[String],
) {
    for contact in all {
        let got = cons
            .get_contact(pb::GetContactRequest {
                contact_id: contact.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let want = replica.get(contact).cloned().unwrap_or_default();
        let states: BTreeMap<String, pb::ConsentState> = got
            .states
            .into_iter()
            .map(|s| (s.consent_id.clone(), s))
            .collect();
        assert_eq!(states, want.states, "the states of {contact}");
        let addresses: Vec<pb::Address> = want.addresses.into_iter().map(|(a, _)| a).collect();
        assert_eq!(got.addresses, addresses, "the addresses of {contact}");
    }
}

//! The races the issue reported, each as one deterministic scene on two
//! nodes over the shared memory store: what the simulation finds by
//! chance, stated once by hand.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::wire::Wire;
use super::{Node, S, catalog};
use crate::clock::{Clock, ManualClock};
use crate::domain::{Action, Change, ChangeOutcome, ConsentId, ContactId, Evidence, Source};
use crate::error::ChangeError;
use crate::store::{MemoryStore, Store};

/// Two nodes over one store; B's clock runs `behind` seconds late. The
/// catalog is applied on A; B has not followed anything.
fn two_nodes(behind: i64) -> (Arc<MemoryStore>, Node, Node) {
    let store = Arc::new(MemoryStore::new().unwrap());
    let now = 1_000_000 * S;
    let mut a = Node::boot(Wire::new(store.clone()), ManualClock::new(now));
    let b = Node::boot(Wire::new(store.clone()), ManualClock::new(now - behind * S));
    a.committer.apply_catalog(catalog(0)).unwrap();
    (store, a, b)
}

fn change(who: &str, consent: &str, action: Action, source: Source) -> Change {
    Change {
        contact: ContactId::parse("contact", who).unwrap(),
        consent: ConsentId::parse("consent", consent).unwrap(),
        action,
        occurred_at: None,
        source,
        evidence: Evidence::new(),
        idempotency_key: None,
        issued_at: None,
        actor: String::new(),
        confirmed: false,
        resend: false,
        bulk: false,
        by_page: false,
        addresses: Vec::new(),
    }
}

fn record(node: &mut Node, change: Change) -> Result<ChangeOutcome, ChangeError> {
    let (tx, mut rx) = oneshot::channel();
    node.committer.commit_changes(vec![(change, tx)]);
    rx.try_recv().expect("answered")
}

#[test]
fn a_grant_on_a_node_whose_clock_runs_behind_comes_after_the_click_it_followed() {
    let (store, mut a, mut b) = two_nodes(3_600);
    let click = record(
        &mut a,
        change(
            "anna",
            "marketing",
            Action::Withdraw,
            Source::UnsubscribeLink,
        ),
    )
    .unwrap();
    // B's clock says an hour earlier; the grant reached it after the click.
    let grant = record(
        &mut b,
        change("anna", "marketing", Action::Grant, Source::Form),
    )
    .unwrap();
    let history = store.history("anna").unwrap();
    assert!(history[1].recorded_at > history[0].recorded_at);
    assert!(history[1].occurred_at > history[0].occurred_at);
    assert!(grant.applied, "the later decision (a form) wins");
    assert!(grant.sequence > click.sequence);
    assert!(
        b.clock.now() < history[0].recorded_at,
        "B's clock is behind"
    );
}

#[test]
fn a_system_grant_on_one_node_waits_for_the_person_who_unsubscribed_on_another() {
    let (store, mut a, mut b) = two_nodes(0);
    record(
        &mut a,
        change("anna", "marketing", Action::Grant, Source::Form),
    )
    .unwrap();
    record(
        &mut a,
        change(
            "anna",
            "marketing.acme",
            Action::Withdraw,
            Source::UnsubscribeLink,
        ),
    )
    .unwrap();
    a.clock.step(S);
    b.clock.step(S);
    // B's feed has brought nothing; its commit catches up first.
    let sync = record(
        &mut b,
        change("anna", "marketing", Action::Grant, Source::Api),
    )
    .unwrap();
    assert!(!sync.applied && sync.pending.is_some(), "{sync:?}");
    assert_eq!(store.history("anna").unwrap().len(), 3);
}

#[test]
fn an_erasure_on_one_node_refuses_an_earlier_grant_on_another() {
    let (store, mut a, mut b) = two_nodes(0);
    let mut stale = change("anna", "marketing", Action::Grant, Source::Import);
    stale.occurred_at = Some(a.clock.now() - 60 * S);
    record(
        &mut a,
        change("anna", "marketing", Action::Grant, Source::Form),
    )
    .unwrap();
    b.committer
        .erase(ContactId::parse("contact", "anna").unwrap(), "asked".into())
        .unwrap();
    // A has not followed the erasure; its commit does, and refuses.
    let refused = record(&mut a, stale).unwrap();
    assert_eq!((refused.applied, refused.sequence), (false, 0));
    assert!(store.history("anna").unwrap().is_empty());
    assert!(store.contact_states("anna").unwrap().is_empty());
    let idx = a.catalog.load().consent_idx("marketing").unwrap();
    assert!(a.index.get("anna", idx).is_none(), "A forgot her too");
}

#[test]
fn catalogs_applied_on_two_nodes_get_one_version_each_in_turn() {
    let (store, mut a, mut b) = two_nodes(0);
    let on_a = a.committer.apply_catalog(catalog(1)).unwrap();
    let on_b = b.committer.apply_catalog(catalog(2)).unwrap();
    let version = |c: &crate::domain::Catalog| c.latest_wording("marketing").unwrap().version;
    assert_eq!((version(&on_a), version(&on_b)), (2, 3));
    let texts: Vec<(u32, String)> = store
        .wordings(Some("marketing"))
        .unwrap()
        .into_iter()
        .map(|w| (w.version, w.text))
        .collect();
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert_eq!(texts[2].1, on_b.latest_wording("marketing").unwrap().text);
    // A learns B's apply at its next commit, under B's version.
    record(
        &mut a,
        change("anna", "marketing", Action::Grant, Source::Form),
    )
    .unwrap();
    assert_eq!(version(&a.catalog.load()), 3);
}

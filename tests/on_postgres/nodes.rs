//! Several nodes on one PostgreSQL database (DESIGN.md §5): a change made on
//! any node reaches every other through the store's change feed; freshness
//! tokens give read-your-writes across nodes; keys, erasures and catalogs
//! are shared; concurrent writers on different nodes converge.

use std::time::Duration;

use consentd::pb::{self, Action, Reason};

#[path = "../common/mod.rs"]
mod common;
#[path = "../soak_cycles/process.rs"]
mod process;

use common::*;

#[path = "node_addresses.rs"]
mod addresses;
#[path = "node_audit.rs"]
mod audit;
#[path = "node_faults.rs"]
mod faults;
#[path = "node_watch.rs"]
mod watch;

/// `n` nodes over one fresh database of the shared test server; the first
/// applies the example catalog at start, the others load it from the store.
async fn nodes(n: usize) -> (Vec<TestServer>, Vec<tempfile::TempDir>, String) {
    let url = Throwaway::shared()
        .expect("PostgreSQL for the tests")
        .fresh_database();
    let (servers, dirs) = nodes_on(&url, n, 5_000).await;
    (servers, dirs, url)
}

/// `n` nodes over the database at `url`, each waiting at most
/// `store_timeout_ms` for it.
async fn nodes_on(
    url: &str,
    n: usize,
    store_timeout_ms: u64,
) -> (Vec<TestServer>, Vec<tempfile::TempDir>) {
    let mut servers = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let mut config = consentd::Config::ephemeral(dir.path());
        config.store = url.to_owned();
        // One cluster, one checkpoint key (DESIGN.md §11).
        config.signing_key = Some(
            dirs.first()
                .map_or(dir.path(), |d: &tempfile::TempDir| d.path())
                .join("signing.key"),
        );
        config.store_timeout_ms = store_timeout_ms;
        if i == 0 {
            config.catalog = Some(example_catalog_path());
        }
        servers.push(TestServer::start_with(config).await);
        dirs.push(dir);
    }
    (servers, dirs)
}

fn fresh_check(contact: &str, min_sequence: u64) -> pb::CanSendRequest {
    let mut c = check(contact, "email", "zenith");
    c.min_sequence = min_sequence;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_node_is_read_on_the_others_with_its_token() {
    let (nodes, _dirs, _) = nodes(3).await;
    let mut a = nodes[0].consents().await;
    let granted = a
        .grant(change("anna", "marketing", None))
        .await
        .unwrap()
        .into_inner();
    // The first call on another node, with the token: already there.
    let mut b = nodes[1].eligibility().await;
    let answer = b
        .can_send(fresh_check("anna", granted.sequence))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.allowed, "{answer:?}");
    let mut c = nodes[2].consents().await;
    let contact = c
        .get_contact(pb::GetContactRequest {
            as_of: None,
            contact_id: "anna".into(),
            min_sequence: granted.sequence,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(contact.states.len(), 1);
    // A withdrawal on the third node reaches the first.
    let withdrawn = c
        .withdraw(change("anna", "marketing", None))
        .await
        .unwrap()
        .into_inner();
    let mut a_checks = nodes[0].eligibility().await;
    let answer = a_checks
        .can_send(fresh_check("anna", withdrawn.sequence))
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.allowed);
    assert_eq!(answer.reason(), Reason::Withdrawn);
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_applied_on_one_node_is_served_by_the_others() {
    let (nodes, _dirs, _) = nodes(3).await;
    reword(&nodes[2], "surveys", "Surveys, second wording").await;
    for node in &nodes[..2] {
        let mut cat = node.catalog().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let spec = cat
                .get_catalog(pb::GetCatalogRequest {})
                .await
                .unwrap()
                .into_inner();
            let surveys = spec.consents.iter().find(|c| c.id == "surveys").unwrap();
            if surveys.version == 2 {
                assert_eq!(surveys.text, "Surveys, second wording");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never propagated");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_erasures_hold_across_nodes() {
    let (nodes, _dirs, _) = nodes(3).await;
    let (mut a, mut b, mut c) = (
        nodes[0].consents().await,
        nodes[1].consents().await,
        nodes[2].consents().await,
    );
    let t = now() - 3600;
    let mut keyed = change("erin", "marketing", Some(t));
    keyed.idempotency_key = "signup:erin".into();
    let first = a.grant(keyed.clone()).await.unwrap().into_inner();
    // The same key on another node: a replay, with the first sequence.
    let replay = b.grant(keyed).await.unwrap().into_inner();
    assert_eq!((replay.applied, replay.sequence), (false, first.sequence));

    b.erase_contact(pb::EraseContactRequest {
        contact_id: "erin".into(),
        reason: "ticket 77".into(),
    })
    .await
    .unwrap();
    // A later write on the erasing node is the token that C has seen it.
    let token = b
        .grant(change("someone-else", "marketing", None))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    let mut c_checks = nodes[2].eligibility().await;
    let answer = c_checks
        .can_send(fresh_check("erin", token))
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.allowed);
    assert_eq!(answer.reason(), Reason::NoConsent);
    // A stale grant (decided before the erasure) is refused on C too.
    let stale = c
        .grant(change("erin", "marketing", Some(t)))
        .await
        .unwrap()
        .into_inner();
    assert!(!stale.applied);
    assert!(history(&nodes[2], "erin").await.is_empty());
    // A fresh one is taken.
    let fresh = c
        .grant(change("erin", "marketing", None))
        .await
        .unwrap()
        .into_inner();
    assert!(fresh.applied);
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_every_node_converge() {
    let (nodes, _dirs, _) = nodes(3).await;
    const CONTACTS: u64 = 12;
    let t = now() - 86_400;
    let mut writers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for w in 0..3u64 {
            let mut cons = node.consents().await;
            writers.push(tokio::spawn(async move {
                let mut highest = 0;
                // A small LCG per writer: the same run every time.
                let mut x = (n as u64 + 1) * 7919 + w * 104_729;
                for _ in 0..60 {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let contact = format!("busy-{}", (x >> 33) % CONTACTS);
                    // Decisions collide on purpose: few distinct times.
                    let at = t + ((x >> 20) % 40) as i64;
                    let c = change(&contact, "marketing", Some(at));
                    let sequence = if (x >> 40).is_multiple_of(2) {
                        cons.grant(c).await.unwrap().into_inner().sequence
                    } else {
                        cons.withdraw(c).await.unwrap().into_inner().sequence
                    };
                    highest = highest.max(sequence);
                }
                highest
            }));
        }
    }
    let mut token = 0;
    for w in writers {
        token = token.max(w.await.unwrap());
    }
    // Every node, once it has applied everything: the same answers, and
    // the ones the store's states give.
    let mut store_view = Vec::new();
    let mut cons = nodes[0].consents().await;
    for i in 0..CONTACTS {
        let states = cons
            .get_contact(pb::GetContactRequest {
                as_of: None,
                contact_id: format!("busy-{i}"),
                min_sequence: token,
            })
            .await
            .unwrap()
            .into_inner()
            .states;
        let granted = states
            .iter()
            .any(|s| s.consent_id == "marketing" && s.action() == Action::Grant);
        store_view.push(granted);
    }
    for node in &nodes {
        let mut elig = node.eligibility().await;
        for (i, granted) in store_view.iter().enumerate() {
            let answer = elig
                .can_send(fresh_check(&format!("busy-{i}"), token))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                answer.allowed, *granted,
                "node {} disagrees with the store on busy-{i}",
                node.grpc_addr
            );
        }
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_grant_right_after_an_erasure_elsewhere_is_refused_without_waiting() {
    let (nodes, _dirs, _) = nodes(2).await;
    let (mut b, mut c) = (nodes[0].consents().await, nodes[1].consents().await);
    let t = now() - 3600;
    for i in 0..20 {
        let who = format!("gone-{i}");
        b.grant(change(&who, "marketing", Some(t))).await.unwrap();
        b.erase_contact(pb::EraseContactRequest {
            contact_id: who.clone(),
            reason: "ticket".into(),
        })
        .await
        .unwrap();
        // At once, on the other node, which may not have heard yet: the
        // store refuses it under its commit lock if the node did not.
        let stale = c
            .grant(change(&who, "marketing", Some(t)))
            .await
            .unwrap()
            .into_inner();
        assert!(!stale.applied, "{who}: {stale:?}");
        assert_eq!(stale.sequence, 0);
    }
    let mut elig = nodes[1].eligibility().await;
    for i in 0..20 {
        let (allowed, _, _) = can_send(&mut elig, &format!("gone-{i}"), "email", "zenith").await;
        assert!(!allowed);
        assert!(history(&nodes[1], &format!("gone-{i}")).await.is_empty());
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_opened_on_another_node_right_after_an_erasure_record_nothing() {
    let (nodes, _dirs, _) = nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut cons = a.consents().await;
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    for i in 0..10 {
        let who = format!("linked-{i}");
        cons.grant(change(&who, "marketing", Some(now() - 60)))
            .await
            .unwrap();
        // Minted on node A; its pages served by node B.
        let link = unsubscribe_link(a, &who, "email", "acme").await;
        let unsubscribe = link_path(a, &link.url);
        let (status, _, page) = http(b.http_addr, "GET", &unsubscribe, &[], "").await;
        assert_eq!(status, 200, "{page}");
        let prefs = preference_path_in(&page);
        cons.erase_contact(pb::EraseContactRequest {
            contact_id: who.clone(),
            reason: "ticket".into(),
        })
        .await
        .unwrap();
        // At once, on node B, whose feed may not have applied the erasure:
        // the pages ask the store, and the clicks are ruled on its latest
        // view.
        for (method, path, fields) in [
            ("GET", &unsubscribe, ""),
            ("GET", &prefs, ""),
            ("POST", &prefs, "grant=marketing.orbit"),
            ("POST", &unsubscribe, "scope=all"),
        ] {
            let (status, _, page) = http(b.http_addr, method, path, &form, fields).await;
            assert_eq!(status, 410, "{who}: {method} {path} {fields}: {page}");
            assert!(page.contains("expired"), "{page}");
        }
        assert!(history(a, &who).await.is_empty(), "{who}");
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_withdrawal_on_one_node_blocks_the_address_on_the_others() {
    let (nodes, _dirs, _) = nodes(2).await;
    let mut a = nodes[0].consents().await;
    a.grant(change("kim", "marketing", Some(now() - 60)))
        .await
        .unwrap();
    let address = pb::Address {
        kind: pb::AddressKind::Email as i32,
        value: "Kim@Example.com".into(),
    };
    let mut stop = change("", "marketing", None);
    stop.address = Some(address.clone());
    stop.source = pb::Source::UnsubscribeLink as i32;
    let w = a.withdraw(stop).await.unwrap().into_inner();
    // Node B, with the token, reads the address's opt-out (its feed
    // carried it under the address's key, the same on every node).
    let mut check = fresh_check("kim", w.sequence);
    check.to = Some(pb::Address {
        kind: 0,
        value: "kim@example.com".into(),
    });
    let answer = nodes[1]
        .eligibility()
        .await
        .can_send(check)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.reason(), Reason::AddressWithdrawn, "{answer:?}");
    let view = nodes[1]
        .consents()
        .await
        .get_address(pb::GetAddressRequest {
            address: Some(address),
            min_sequence: w.sequence,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(view.events.len(), 1, "{view:?}");
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_sent_to_two_nodes_at_once_is_recorded_once() {
    let (nodes, _dirs, _) = nodes(2).await;
    for i in 0..30 {
        let mut c = change(&format!("twice-{i}"), "marketing", None);
        c.idempotency_key = format!("retry-{i}");
        let (mut a, mut b) = (nodes[0].consents().await, nodes[1].consents().await);
        let (ca, cb) = (c.clone(), c);
        let (ra, rb) = tokio::join!(a.grant(ca), b.grant(cb));
        let (ra, rb) = (ra.unwrap().into_inner(), rb.unwrap().into_inner());
        assert_eq!(
            u8::from(ra.applied) + u8::from(rb.applied),
            1,
            "exactly one records it: {ra:?} {rb:?}"
        );
        assert_eq!(
            ra.sequence, rb.sequence,
            "both answer the recorded sequence"
        );
        let mut cons = nodes[0].consents().await;
        let events = cons
            .get_history(pb::GetHistoryRequest {
                contact_id: format!("twice-{i}"),
                min_sequence: ra.sequence,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        assert_eq!(events.len(), 1, "twice-{i}");
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_grant_on_one_node_is_confirmed_through_another() {
    let (nodes, _dirs, _) = nodes(2).await;
    edit_catalog(&nodes[0], |s| {
        consent_mut(s, "marketing.zenith").double_opt_in = true
    })
    .await
    .unwrap();

    // Node A takes the sign-up as pending; node B sees it wait.
    let mut a = nodes[0].consents().await;
    let mut signup = change("pat", "marketing.zenith", None);
    signup.source = pb::Source::Form as i32;
    // The catalog reaches node A's writer before this; node B follows it.
    let r = a.grant(signup.clone()).await.unwrap().into_inner();
    assert!(r.pending, "{r:?}");
    let mut b = nodes[1].eligibility().await;
    let answer = b
        .can_send(fresh_check("pat", r.sequence))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.reason(), Reason::PendingConfirmation, "{answer:?}");

    // The re-send window is shared: node B sends no second link.
    let mut bc = nodes[1].consents().await;
    let again = bc.grant(signup).await.unwrap().into_inner();
    assert!(
        again.pending && again.confirmation_url.is_empty(),
        "{again:?}"
    );

    // The link node A minted confirms on node B's page.
    let token = &r.confirmation_url[r.confirmation_url.find("/c/").unwrap()..];
    let (_, _, page) = http(nodes[1].http_addr, "GET", token, &[], "").await;
    let form = format!("version={}", shown_version(&page));
    let (status, _, _) = http(nodes[1].http_addr, "POST", token, &[], &form).await;
    assert_eq!(status, 200);
    let last = history(&nodes[1], "pat").await.pop().unwrap();
    let mut ea = nodes[0].eligibility().await;
    let answer = ea
        .can_send(fresh_check("pat", last.sequence))
        .await
        .unwrap()
        .into_inner();
    assert!(
        answer.allowed,
        "node A follows the confirmation: {answer:?}"
    );
}

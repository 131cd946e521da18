//! Addresses and provider webhooks across nodes (DESIGN.md §9 over §5): a
//! contact's addresses set on one node decide checks on another; two nodes
//! replacing one contact's addresses at the same moment agree on one list
//! (never the union); a webhook received by one node blocks on every node,
//! and the same event delivered to two nodes at once records once.

use std::time::Duration;

use consentd::pb::{self, Reason};

use super::common::*;
use super::{fresh_check, nodes};

fn email(value: &str) -> pb::Address {
    pb::Address {
        kind: pb::AddressKind::Email as i32,
        value: value.into(),
    }
}

async fn set(server: &TestServer, contact: &str, value: &str) -> u64 {
    server
        .consents()
        .await
        .set_addresses(pb::SetAddressesRequest {
            contact_id: contact.into(),
            addresses: vec![email(value)],
        })
        .await
        .unwrap()
        .into_inner()
        .sequence
}

async fn reason(server: &TestServer, contact: &str, min_sequence: u64) -> Reason {
    server
        .eligibility()
        .await
        .can_send(fresh_check(contact, min_sequence))
        .await
        .unwrap()
        .into_inner()
        .reason()
}

async fn withdraw_on(server: &TestServer, value: &str) -> u64 {
    let mut c = change("", "marketing", None);
    c.address = Some(email(value));
    c.source = pb::Source::UnsubscribeLink as i32;
    server
        .consents()
        .await
        .withdraw(c)
        .await
        .unwrap()
        .into_inner()
        .sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_set_on_one_node_decide_checks_on_the_others() {
    let (nodes, _dirs, _) = nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    a.consents()
        .await
        .grant(change("kim", "marketing", Some(now() - 60)))
        .await
        .unwrap();
    let s = set(a, "kim", "kim@example.com").await;
    assert_eq!(reason(b, "kim", s).await, Reason::Granted);
    let w = withdraw_on(a, "kim@example.com").await;
    // Node B, without `to`, asks Kim's address (set on A) and finds the
    // withdrawal (recorded on A).
    assert_eq!(reason(b, "kim", w).await, Reason::AddressWithdrawn);
    let listed = b
        .consents()
        .await
        .get_contact(pb::GetContactRequest {
            as_of: None,
            contact_id: "kim".into(),
            min_sequence: w,
        })
        .await
        .unwrap()
        .into_inner()
        .addresses;
    assert_eq!(listed, vec![email("kim@example.com")]);
    // Replaced on B: A follows.
    let s = set(b, "kim", "kim@new.example").await;
    assert_eq!(reason(a, "kim", s).await, Reason::Granted);
    // Erased on A: B forgets her addresses, the address's opt-out stays.
    let erased = a
        .consents()
        .await
        .erase_contact(pb::EraseContactRequest {
            contact_id: "kim".into(),
            reason: "request".into(),
        })
        .await
        .unwrap();
    drop(erased);
    let s = withdraw_on(a, "kim@new.example").await;
    assert_eq!(reason(b, "kim", s).await, Reason::NoConsent);
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_replacing_one_contacts_addresses_at_once_agree_on_one_list() {
    let (nodes, _dirs, _) = nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    a.consents()
        .await
        .grant(change("lou", "marketing", Some(now() - 60)))
        .await
        .unwrap();
    for round in 0..8 {
        let (x, y) = (
            format!("lou{round}@a.example"),
            format!("lou{round}@b.example"),
        );
        let (sa, sb) = tokio::join!(set(a, "lou", &x), set(b, "lou", &y));
        let token = sa.max(sb);
        let listed = a
            .consents()
            .await
            .get_contact(pb::GetContactRequest {
                as_of: None,
                contact_id: "lou".into(),
                min_sequence: token,
            })
            .await
            .unwrap()
            .into_inner()
            .addresses;
        assert!(
            listed == vec![email(&x)] || listed == vec![email(&y)],
            "round {round}: one list wins, never both: {listed:?}"
        );
        // Both nodes' memories hold the same list: a withdrawal of the
        // winner blocks on both, of the loser on neither.
        let winner = listed[0].value.clone();
        let loser = if winner == x { &y } else { &x };
        let w = withdraw_on(a, loser).await;
        assert_eq!(reason(a, "lou", w).await, Reason::Granted, "round {round}");
        assert_eq!(reason(b, "lou", w).await, Reason::Granted, "round {round}");
        let w = withdraw_on(b, &winner).await;
        assert_eq!(
            reason(a, "lou", w).await,
            Reason::AddressWithdrawn,
            "round {round}"
        );
        assert_eq!(
            reason(b, "lou", w).await,
            Reason::AddressWithdrawn,
            "round {round}"
        );
    }
    for n in nodes {
        n.stop().await;
    }
}

const KEY: &str = "node-test-mailgun-key";

fn mailgun(token: &str, event: &str) -> String {
    sign::mailgun(KEY, now(), token, event)
}

async fn hook(server: &TestServer, body: &str) -> u16 {
    http(
        server.http_addr,
        "POST",
        "/hooks/mg",
        &[("Content-Type", "application/json")],
        body,
    )
    .await
    .0
}

/// Waits (at most 5 s) until `check` on `server` answers `want`.
async fn until(server: &TestServer, contact: &str, want: Reason) {
    for _ in 0..100 {
        if reason(server, contact, 0).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{contact} never answered {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_on_one_node_blocks_on_every_node_and_records_once() {
    let url = Throwaway::shared()
        .expect("PostgreSQL for the tests")
        .fresh_database();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let providers = dir.path().join("providers.toml");
        std::fs::write(
            &providers,
            format!(
                "[[provider]]\nname = \"mg\"\nkind = \"mailgun\"\nsigning_key = \"{KEY}\"\n[provider.consents]\n\"*\" = \"marketing\"\n"
            ),
        )
        .unwrap();
        let mut config = consentd::Config::ephemeral(dir.path());
        config.store = url.clone();
        // One cluster, one checkpoint key (DESIGN.md §11).
        config.signing_key = Some(
            dirs.first()
                .map_or(dir.path(), |d: &tempfile::TempDir| d.path())
                .join("signing.key"),
        );
        config.providers = Some(providers);
        if i == 0 {
            config.catalog = Some(example_catalog_path());
        }
        nodes.push(TestServer::start_with(config).await);
        dirs.push(dir);
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    for who in ["mia", "ned"] {
        a.consents()
            .await
            .grant(change(who, "marketing", Some(now() - 60)))
            .await
            .unwrap();
        set(a, who, &format!("{who}@example.com")).await;
    }
    // Received by A, in force on B.
    let unsub = r#"{"event":"unsubscribed","id":"n-1","recipient":"mia@example.com"}"#;
    assert_eq!(hook(a, &mailgun("tok-a", unsub)).await, 200);
    until(b, "mia", Reason::AddressWithdrawn).await;
    // The same event, delivered to both nodes at the same moment (each a
    // fresh signature): recorded once.
    let bounce =
        r#"{"event":"failed","severity":"permanent","id":"n-2","recipient":"ned@example.com"}"#;
    let (to_a, to_b) = (mailgun("tok-b", bounce), mailgun("tok-c", bounce));
    let (ra, rb) = tokio::join!(hook(a, &to_a), hook(b, &to_b));
    assert_eq!((ra, rb), (200, 200));
    until(a, "ned", Reason::Undeliverable).await;
    until(b, "ned", Reason::Undeliverable).await;
    let events = b
        .consents()
        .await
        .get_address(pb::GetAddressRequest {
            address: Some(email("ned@example.com")),
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1, "{events:?}");
    for n in nodes {
        n.stop().await;
    }
}

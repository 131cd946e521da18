//! Watch across nodes (DESIGN.md §10): each node serves what it has
//! applied; a consumer that moves from one node to another, resuming from
//! the last sequence it got, loses and repeats nothing; a snapshot taken
//! on one node and a Watch on the other reproduce every contact.

use std::time::Duration;

use consentd::pb::{self, watch_response::Change};

use super::common::*;
use super::nodes;

/// The sequences of a stream's records up to a checkpoint at `until`.
async fn sequences_until(server: &TestServer, from: u64, until: u64) -> Vec<u64> {
    let mut stream = watch_from(server, from).await;
    let mut out = Vec::new();
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("within 10 s")
            .unwrap()
            .unwrap();
        match r.change.unwrap() {
            Change::Checkpoint(c) if c.sequence >= until => return out,
            Change::Checkpoint(_) => {}
            Change::Event(e) => out.push(e.sequence),
            Change::Erasure(e) => out.push(e.sequence),
            Change::Address(a) => out.push(a.sequence),
            Change::Catalog(c) => out.push(c.sequence),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_moving_between_nodes_loses_and_repeats_nothing() {
    let (nodes, _dirs, _) = nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut last = 0;
    // Writes on both nodes, an erasure on one.
    for i in 0..10 {
        let node = if i % 2 == 0 { a } else { b };
        last = node
            .consents()
            .await
            .grant(change(&format!("w{i}"), "marketing", Some(now() - 60)))
            .await
            .unwrap()
            .into_inner()
            .sequence;
    }
    a.consents()
        .await
        .erase_contact(pb::EraseContactRequest {
            contact_id: "w3".into(),
            reason: "request".into(),
        })
        .await
        .unwrap();
    for i in 10..14 {
        last = b
            .consents()
            .await
            .grant(change(&format!("w{i}"), "marketing", Some(now() - 60)))
            .await
            .unwrap()
            .into_inner()
            .sequence;
    }
    // The whole stream from A; then half from A and the rest from B.
    let whole = sequences_until(a, 0, last).await;
    assert!(whole.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        whole.len(),
        15,
        "the catalog the nodes started with, 13 events and the erasure: {whole:?}"
    );
    let half = whole[6];
    // The consumer got up to `half` from A, then moved to B.
    let first: Vec<u64> = sequences_until(a, 0, half)
        .await
        .into_iter()
        .take_while(|s| *s <= half)
        .collect();
    let rest = sequences_until(b, half, last).await;
    let joined: Vec<u64> = first.into_iter().chain(rest).collect();
    assert_eq!(joined, whole);
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_from_one_node_and_a_watch_on_the_other_reproduce_every_contact() {
    use super::common::replica::{assert_reproduces, erase, follow, set_addresses, snapshot};
    let (nodes, _dirs, _) = nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    // More than two pages of the snapshot (256 each): the last page is read
    // after the writes below.
    let contacts: Vec<String> = (0..600).map(|i| format!("n-{i:03}")).collect();
    for (i, c) in contacts.iter().enumerate() {
        let node = if i % 2 == 0 { a } else { b };
        node.consents()
            .await
            .grant(change(c, "marketing", Some(now() - 600)))
            .await
            .unwrap();
    }
    set_addresses(&mut a.consents().await, "n-001", &["one@example.com"]).await;
    // The snapshot from B while A writes: newer states, an erasure, new
    // addresses land on A mid-snapshot.
    let mut writer = a.consents().await;
    let (mut replica, at) = snapshot(&mut b.consents().await, &[], async || {
        for c in &contacts[580..] {
            writer
                .withdraw(change(c, "marketing", Some(now())))
                .await
                .unwrap();
        }
        erase(&mut writer, "n-590").await;
        set_addresses(&mut writer, "n-599", &["late@example.com"]).await;
    })
    .await;
    assert_eq!(
        replica["n-599"].states["marketing"].action,
        pb::Action::Grant as i32,
        "the snapshot stands at its sequence"
    );
    let head = writer
        .grant(change("n-000", "surveys", None))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    // Watch from the snapshot's sequence on the other node.
    follow(a, &mut replica, at, head).await;
    assert_reproduces(&mut a.consents().await, &replica, &contacts).await;
    for n in nodes {
        n.stop().await;
    }
}

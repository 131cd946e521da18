//! Several nodes on one PostgreSQL database (DESIGN.md §5): a change made on
//! any node reaches every other through the store's change feed; freshness
//! tokens give read-your-writes across nodes; keys, erasures and catalogs
//! are shared; concurrent writers on different nodes converge.

use std::time::Duration;

use consentd::pb::{self, Action, Reason};
use tonic_health::pb::health_check_response::ServingStatus;

#[path = "../common/mod.rs"]
mod common;
#[path = "../soak_cycles/process.rs"]
mod process;

use common::*;

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
                    let r = if (x >> 40).is_multiple_of(2) {
                        cons.grant(c).await
                    } else {
                        cons.withdraw(c).await
                    };
                    highest = highest.max(r.unwrap().into_inner().sequence);
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
async fn the_database_restarted_under_check_traffic_on_two_nodes() {
    // A server of its own: the shared one stays up for the other tests.
    let pg = Throwaway::start().expect("a PostgreSQL server");
    if !pg.can_restart() {
        println!("SKIPPED: an external CONSENTD_TEST_DATABASE_URL cannot be restarted by the test");
        return;
    }
    let (nodes, _dirs) = nodes_on(&pg.fresh_database(), 2, 2_000).await;
    let mut a = nodes[0].consents().await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let who = format!("before-{i}");
        let r = a.grant(change(&who, "marketing", None)).await.unwrap();
        acknowledged.push((who, r.into_inner().sequence));
    }
    // Check traffic on both nodes for the whole outage: never a failure.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut checkers = Vec::new();
    for node in &nodes {
        let mut elig = node.eligibility().await;
        let stop = stop.clone();
        checkers.push(tokio::spawn(async move {
            let mut answered = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = elig
                    .can_send(check("before-3", "email", "zenith"))
                    .await
                    .expect("CanSend never fails while the database is away");
                assert!(r.into_inner().allowed);
                answered += 1;
            }
            answered
        }));
    }
    pg.stop_server();
    // Writes fail cleanly meanwhile, on either node.
    let mut b = nodes[1].consents().await;
    for cons in [&mut a, &mut b] {
        let err = cons
            .grant(change("during", "marketing", None))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.start_server().unwrap();
    // Both take writes again once they have reconnected.
    for cons in [&mut a, &mut b] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match cons.grant(change("after", "marketing", None)).await {
                Ok(r) => {
                    acknowledged.push(("after".into(), r.into_inner().sequence));
                    break;
                }
                Err(e) => {
                    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                    assert!(std::time::Instant::now() < deadline, "never came back");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in checkers {
        assert!(c.await.unwrap() > 0);
    }
    // Once the database is back, a write on one node is read with its
    // token on the other at once: a check waits at most 1 s for it, and
    // an answer (not UNAVAILABLE) means it arrived within that second.
    for round in 0..5 {
        let who = format!("back-{round}");
        let token = a
            .withdraw(change(&who, "marketing", None))
            .await
            .unwrap()
            .into_inner()
            .sequence;
        let mut elig = nodes[1].eligibility().await;
        let answer = elig
            .can_send(fresh_check(&who, token))
            .await
            .expect("the other node reaches the token within a second")
            .into_inner();
        assert_eq!(answer.reason(), Reason::Withdrawn, "{who}");
    }
    // Nothing acknowledged is lost, and the other node sees it all.
    let token = acknowledged.iter().map(|(_, s)| *s).max().unwrap();
    let mut elig = nodes[1].eligibility().await;
    for (who, _) in &acknowledged {
        let mut req = check(who, "email", "zenith");
        req.min_sequence = token;
        assert!(
            elig.can_send(req).await.unwrap().into_inner().allowed,
            "{who} was acknowledged"
        );
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_writes_loses_nothing_and_the_others_carry_on() {
    let (nodes, _dirs, url) = nodes(1).await;
    // A second node as a real process, killed with SIGKILL mid-writes.
    let dir = tempfile::tempdir().unwrap();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_consentd"));
    let victim = process::start_on(binary, dir.path(), None, Some(&url));
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", victim.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut cons = pb::consents_client::ConsentsClient::new(channel.clone());
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let who = format!("k{w}-{i}");
                match cons.grant(change(&who, "marketing", None)).await {
                    Ok(r) => acked.lock().unwrap().push((who, r.into_inner().sequence)),
                    Err(_) => return,
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    victim.kill();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    let token = acked.iter().map(|(_, s)| *s).max().unwrap();
    // The surviving node has every acknowledged grant.
    let mut elig = nodes[0].eligibility().await;
    for (who, _) in &acked {
        let mut req = check(who, "email", "zenith");
        req.min_sequence = token;
        assert!(
            elig.can_send(req).await.unwrap().into_inner().allowed,
            "{who}"
        );
    }
    // And the killed node, restarted, too.
    let again = process::start_on(binary, dir.path(), None, Some(&url));
    let mut elig =
        pb::eligibility_client::EligibilityClient::connect(format!("http://{}", again.grpc))
            .await
            .unwrap();
    for (who, _) in &acked {
        let mut req = check(who, "email", "zenith");
        req.min_sequence = token;
        assert!(
            elig.can_send(req).await.unwrap().into_inner().allowed,
            "{who}"
        );
    }
    again.kill();
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

/// Runs one SQL statement against the database at `url`.
async fn sql(url: &str, statement: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    client.batch_execute(statement).await.unwrap();
    drop(client);
    let _ = conn.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_a_node_cannot_read_stops_its_checks_and_writes_until_it_can() {
    let (nodes, _dirs, url) = nodes(2).await;
    let mut a = nodes[0].consents().await;
    let token = a
        .grant(change("anna", "marketing", None))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    let mut elig_b = nodes[1].eligibility().await;
    assert!(
        elig_b
            .can_send(fresh_check("anna", token))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    // A record no node can decode (an action that does not exist), as a
    // damaged row or a newer writer would leave it, at the next sequence.
    let bad = token + 1;
    sql(
        &url,
        &format!(
            "INSERT INTO consentd.events (sequence, contact, consent, action, occurred_at,
                 recorded_at, source, evidence, version, applied, actor)
             VALUES ({bad}, 'zoe', 'marketing', 9, 1, 1, 1, '{{}}', 1, true, 'x');
             UPDATE consentd.meta SET next_sequence = {bad} + 1;"
        ),
    )
    .await;
    // B's feed stops there: its checks say NOT_SERVING, never silently stale.
    wait_health(
        &nodes[1],
        "consent.v1.Eligibility",
        ServingStatus::NotServing,
    )
    .await;
    assert_eq!(
        health_of(&nodes[1], "",).await,
        Some(ServingStatus::NotServing)
    );
    // The operator sees which record (the log names it too).
    assert!(
        metrics(&nodes[1])
            .await
            .contains(&format!("consentd_feed_unreadable_sequence {bad}\n")),
        "the metric names the record"
    );
    // A write cannot be ruled on the latest view: refused.
    let mut b = nodes[1].consents().await;
    let refused = b.grant(change("bob", "marketing", None)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // The row is mended: the node reads on and serves again by itself.
    sql(
        &url,
        &format!("UPDATE consentd.events SET action = 1 WHERE sequence = {bad}"),
    )
    .await;
    wait_health(&nodes[1], "consent.v1.Eligibility", ServingStatus::Serving).await;
    assert!(
        metrics(&nodes[1])
            .await
            .contains("consentd_feed_unreadable_sequence 0\n")
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match b.grant(change("bob", "marketing", None)).await {
            Ok(r) => {
                assert!(r.into_inner().applied);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "writes never came back"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    for n in nodes {
        n.stop().await;
    }
}

/// Polls `health_of(service)` until it is `want`, for at most 30 s.
async fn wait_health(server: &TestServer, service: &str, want: ServingStatus) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while health_of(server, service).await != Some(want) {
        assert!(
            std::time::Instant::now() < deadline,
            "{service} never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_s_notices_name_no_one() {
    use futures_util::StreamExt;
    const ERIN: &str = "erin-notice@example.com";
    let (nodes, _dirs, url) = nodes(1).await;
    let (client, mut conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client.batch_execute("LISTEN consentd_feed").await.unwrap();
    let mut cons = nodes[0].consents().await;
    cons.grant(change(ERIN, "marketing", None)).await.unwrap();
    cons.erase_contact(pb::EraseContactRequest {
        contact_id: ERIN.into(),
        reason: "asked".into(),
    })
    .await
    .unwrap();
    cons.grant(change("someone-else", "marketing", None))
        .await
        .unwrap();
    // Three commits, three notices; none says who.
    let mut heard = Vec::new();
    while heard.len() < 3 {
        let payload = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a notice per commit")
            .expect("the listener runs");
        heard.push(payload);
    }
    assert!(
        heard
            .iter()
            .all(|p| !p.contains("erin") && !p.contains('@')),
        "{heard:?}"
    );
    drop(client);
    driver.abort();
    for n in nodes {
        n.stop().await;
    }
}

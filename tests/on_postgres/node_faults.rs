//! Several nodes when something goes wrong: the database restarted under
//! traffic, a node killed mid-writes, a record one node cannot read, and
//! the feed's notices (which must name no one).

use std::time::Duration;

use consentd::pb::{self, Reason};
use tonic_health::pb::health_check_response::ServingStatus;

use super::common::*;
use super::{fresh_check, nodes, nodes_on, process};

/// Asserts that every acknowledged grant (contact, sequence) is allowed on
/// the node behind `elig`, read with the newest of their tokens.
async fn all_allowed(
    elig: &mut pb::eligibility_service_client::EligibilityServiceClient<tonic::transport::Channel>,
    acknowledged: &[(String, u64)],
) {
    let token = acknowledged.iter().map(|(_, s)| *s).max().unwrap();
    for (who, _) in acknowledged {
        let mut req = check(who, "email", "zenith");
        req.min_sequence = token;
        assert!(
            elig.can_send(req).await.unwrap().into_inner().allowed,
            "{who} was acknowledged"
        );
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
    all_allowed(&mut nodes[1].eligibility().await, &acknowledged).await;
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_writes_loses_nothing_and_the_others_carry_on() {
    let (nodes, dirs, url) = nodes(1).await;
    // A second node as a real process, killed with SIGKILL mid-writes; it
    // signs with the cluster's key, as every node must.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        dirs[0].path().join("signing.key"),
        dir.path().join("signing.key"),
    )
    .unwrap();
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
        let mut cons = Consents(pb::consents_service_client::ConsentsServiceClient::new(
            channel.clone(),
        ));
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
    // The surviving node has every acknowledged grant.
    all_allowed(&mut nodes[0].eligibility().await, &acked).await;
    // And the killed node, restarted, too.
    let again = process::start_on(binary, dir.path(), None, Some(&url));
    let mut elig = pb::eligibility_service_client::EligibilityServiceClient::connect(format!(
        "http://{}",
        again.grpc
    ))
    .await
    .unwrap();
    all_allowed(&mut elig, &acked).await;
    again.kill();
    for n in nodes {
        n.stop().await;
    }
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
        "consent.v1.EligibilityService",
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
    wait_health(
        &nodes[1],
        "consent.v1.EligibilityService",
        ServingStatus::Serving,
    )
    .await;
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

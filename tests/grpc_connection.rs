//! One gRPC connection carrying every kind of call at once: CanSend,
//! Grant and Withdraw run on the connection's own task (see
//! `src/grpc/listen.rs`), batches and the rest on tasks of their own. A
//! call waiting there (a check for a freshness token, a write for its
//! commit) must neither hold up the others nor be forgotten when it is
//! woken, and stopping the server answers every call in flight.

mod common;

use std::time::Duration;

use common::raw::{grpc_framed, raw_call};
use common::*;
use consentd::pb::consents_service_client::ConsentsServiceClient;
use consentd::pb::{self, Reason};

/// A grant of `marketing` to `who`, answered within 10 s (a call on the
/// connection's task that is never woken fails here, not by hanging).
async fn grant_within(cons: &mut Consents, who: &str) -> pb::GrantResponse {
    tokio::time::timeout(
        Duration::from_secs(10),
        cons.grant(change(who, "marketing", None)),
    )
    .await
    .expect("a grant on the connection is answered")
    .unwrap()
    .into_inner()
}

/// A check waiting for its token on a connection does not hold up that
/// connection's other checks, and is answered, from the write it waited
/// for, once a Grant on the same connection commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_waiting_for_its_token_lets_the_connection_go_on_and_is_answered() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let mut cons = Consents(ConsentsServiceClient::new(channel.clone()));
    let mut elig = EligibilityServiceClient::new(channel.clone());
    let first = grant_within(&mut cons, "wait-0").await;

    // Asks about wait-1 once the next change is applied: none yet.
    let mut waiting = check("wait-1", "email", "acme");
    waiting.min_sequence = first.sequence + 1;
    let mut client = elig.clone();
    let waiter = tokio::spawn(async move { client.can_send(waiting).await });

    // Meanwhile the same connection answers at once.
    for _ in 0..200 {
        let answer = tokio::time::timeout(
            Duration::from_millis(900),
            can_send(&mut elig, "wait-0", "email", "acme"),
        )
        .await
        .expect("answered while another check waits on the connection");
        assert_eq!(answer.1, Reason::Granted);
    }
    assert!(!waiter.is_finished(), "its token is not reached yet");

    let second = grant_within(&mut cons, "wait-1").await;
    assert_eq!(second.sequence, first.sequence + 1);
    let answer = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiting check is woken by the commit")
        .unwrap()
        .unwrap()
        .into_inner();
    assert!(answer.allowed, "answered from the grant it waited for");
    assert_eq!(answer.reason(), Reason::Granted);
    server.stop().await;
}

/// Grants, withdrawals, checks and batches interleaved on one connection:
/// each answer is its own call's, and what a write acknowledged every
/// later check and batch on the connection sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_every_kind_interleaved_on_one_connection_each_get_their_answer() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            let mut cons = Consents(ConsentsServiceClient::new(channel.clone()));
            let mut elig = EligibilityServiceClient::new(channel);
            let who = format!("mix-{i}");
            let granted = cons
                .grant(change(&who, "marketing", None))
                .await
                .unwrap()
                .into_inner();
            let mut after = check(&who, "email", "acme");
            after.min_sequence = granted.sequence;
            assert!(elig.can_send(after).await.unwrap().into_inner().allowed);
            if i % 2 == 1 {
                let withdrawn = cons
                    .withdraw(change(&who, "marketing", None))
                    .await
                    .unwrap()
                    .into_inner();
                let mut after = check(&who, "email", "acme");
                after.min_sequence = withdrawn.sequence;
                let answer = elig.can_send(after).await.unwrap().into_inner();
                assert_eq!(answer.reason(), Reason::Withdrawn, "{who}");
            }
            // A batch of this contact and an unknown one, in order.
            let batch = elig
                .can_send_batch(pb::CanSendBatchRequest {
                    checks: vec![
                        check(&who, "email", "acme"),
                        check(&format!("nobody-{i}"), "email", "acme"),
                    ],
                    min_sequence: 0,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(batch.results.len(), 2);
            assert_eq!(batch.results[0].allowed, i % 2 == 0, "{who}");
            assert_eq!(batch.results[1].reason(), Reason::NoConsent);
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("every call on the connection is answered")
            .unwrap();
    }
    server.stop().await;
}

/// Stopping the server while one connection has writes in flight: every
/// write is answered, and each one acknowledged is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_answers_the_writes_in_flight_on_a_connection_and_keeps_the_acknowledged() {
    let server = TestServer::start().await;
    let data_dir = server.data_dir.clone();
    let channel = server.channel().await;
    let mut writers = Vec::new();
    for w in 0..32 {
        let channel = channel.clone();
        writers.push(tokio::spawn(async move {
            let mut cons = Consents(ConsentsServiceClient::new(channel));
            let mut acknowledged = Vec::new();
            for n in 0.. {
                let who = format!("stop-{w}-{n}");
                match cons.grant(change(&who, "marketing", None)).await {
                    Ok(_) => acknowledged.push(who),
                    Err(_) => return acknowledged,
                }
            }
            unreachable!()
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tokio::time::timeout(Duration::from_secs(30), server.stop())
        .await
        .expect("the stop ends once the calls in flight are answered");
    let mut acknowledged = Vec::new();
    for w in writers {
        let mine = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("every write in flight is answered once the server stops")
            .unwrap();
        acknowledged.extend(mine);
    }
    assert!(
        acknowledged.len() > 32,
        "writes went through before the stop"
    );

    let server = TestServer::start_in(&data_dir, Some(example_catalog_path())).await;
    let mut elig = server.eligibility().await;
    let batch = elig
        .can_send_batch(pb::CanSendBatchRequest {
            checks: acknowledged
                .iter()
                .map(|who| check(who, "email", "acme"))
                .take(consentd::grpc::MAX_BATCH_CHECKS)
                .collect(),
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    for (who, answer) in acknowledged.iter().zip(&batch.results) {
        assert!(answer.allowed, "{who} was acknowledged before the stop");
    }
    server.stop().await;
    drop(dir);
}

/// The same stop with each writer granting, then withdrawing, contact
/// after contact on one connection (Withdraw runs on the connection's
/// task too): every withdrawal acknowledged before the stop still holds
/// after a restart — a lost one would be a message to someone who said no.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_keeps_every_withdrawal_acknowledged_on_a_connection() {
    let server = TestServer::start().await;
    let data_dir = server.data_dir.clone();
    let channel = server.channel().await;
    let mut writers = Vec::new();
    for w in 0..16 {
        let channel = channel.clone();
        writers.push(tokio::spawn(async move {
            let mut cons = Consents(ConsentsServiceClient::new(channel));
            let mut withdrawn = Vec::new();
            for n in 0.. {
                let who = format!("unsub-{w}-{n}");
                if cons.grant(change(&who, "marketing", None)).await.is_err()
                    || cons
                        .withdraw(change(&who, "marketing", None))
                        .await
                        .is_err()
                {
                    return withdrawn;
                }
                withdrawn.push(who);
            }
            unreachable!()
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tokio::time::timeout(Duration::from_secs(30), server.stop())
        .await
        .expect("the stop ends once the calls in flight are answered");
    let mut withdrawn = Vec::new();
    for w in writers {
        let mine = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("every write in flight is answered once the server stops")
            .unwrap();
        withdrawn.extend(mine);
    }
    assert!(
        withdrawn.len() > 16,
        "withdrawals went through before the stop"
    );

    let server = TestServer::start_in(&data_dir, Some(example_catalog_path())).await;
    let mut elig = server.eligibility().await;
    for chunk in withdrawn.chunks(consentd::grpc::MAX_BATCH_CHECKS) {
        let batch = elig
            .can_send_batch(pb::CanSendBatchRequest {
                checks: chunk
                    .iter()
                    .map(|who| check(who, "email", "acme"))
                    .collect(),
                min_sequence: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(batch.results.len(), chunk.len());
        for (who, answer) in chunk.iter().zip(&batch.results) {
            assert!(!answer.allowed, "{who} withdrew before the stop");
            assert_eq!(answer.reason(), Reason::Withdrawn, "{who}");
        }
    }
    server.stop().await;
    drop(dir);
}

/// A Grant sent straight over HTTP/2 with its `grpc-timeout`, as any
/// client may send it, on the path that runs on the connection's task.
/// Returns the call's `grpc-status`.
async fn grant_with_timeout(addr: std::net::SocketAddr, who: &str, timeout: &str) -> String {
    use prost::Message;
    let message = pb::GrantRequest::from(change(who, "marketing", None)).encode_to_vec();
    raw_call(
        addr,
        "/consent.v1.ConsentsService/Grant",
        &[("grpc-timeout", timeout)],
        grpc_framed(&message),
    )
    .await
    .0
}

/// DESIGN.md rule 9 over this listener: a write whose caller's deadline
/// (`grpc-timeout`) has passed by the time the writer would take it
/// answers DEADLINE_EXCEEDED and records nothing; one with time to spare
/// is recorded. (The server cuts no call at the deadline itself: the
/// writes honour it, and a client that gives up resets its stream.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_past_its_grpc_timeout_records_nothing_and_one_in_time_is_recorded() {
    let server = TestServer::start().await;
    let status = grant_with_timeout(server.grpc_addr, "late", "1n").await;
    assert_eq!(status, "4", "DEADLINE_EXCEEDED");
    let status = grant_with_timeout(server.grpc_addr, "in-time", "10S").await;
    assert_eq!(status, "0");

    // The write in time was recorded after the late one would have been.
    let mut elig = server.eligibility().await;
    assert_eq!(
        can_send(&mut elig, "in-time", "email", "acme").await.1,
        Reason::Granted
    );
    assert_eq!(
        can_send(&mut elig, "late", "email", "acme").await.1,
        Reason::NoConsent,
        "a write past its deadline records nothing"
    );
    server.stop().await;
}

//! Consents.Import: a streamed bulk import with bad rows in the middle.

mod common;

use common::*;
use consentd::pb::{self, Action, Reason};

fn row(i: u64, action: Action, occurred_at: i64) -> pb::ImportRequest {
    let mut c = change(&format!("imp-{i}"), "marketing", Some(occurred_at));
    c.source = pb::Source::Import as i32;
    c.evidence = [("import_batch".to_string(), "crm-2026-11".to_string())].into();
    pb::ImportRequest {
        action: action as i32,
        change: Some(c),
    }
}

#[tokio::test]
async fn twenty_thousand_rows_with_two_bad_ones_in_the_middle() {
    let server = TestServer::start().await;
    let mut cons: Consents = server.consents().await;
    let t = now() - 86_400;

    // A withdrawal newer than what the import will claim.
    cons.withdraw(change("imp-7", "marketing", Some(t + 100)))
        .await
        .unwrap();

    let rows = (1..=20_000u64).map(move |i| match i {
        5_000 => pb::ImportRequest {
            action: Action::Grant as i32,
            change: Some(change("imp-5000", "marketing", None)), // no occurred_at
        },
        12_345 => pb::ImportRequest {
            action: Action::Grant as i32,
            change: Some(change("imp-12345", "no.such.consent", Some(t))),
        },
        _ => row(i, Action::Grant, t),
    });
    let summary = cons
        .import(tokio_stream::iter(rows))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.received, 20_000);
    assert_eq!(summary.rejected, 2);
    assert_eq!(
        summary.superseded, 1,
        "the old grant of imp-7 changed nothing"
    );
    assert_eq!(summary.applied, 19_997);
    let bad: Vec<u64> = summary.errors.iter().map(|e| e.row).collect();
    assert_eq!(bad, [5_000, 12_345]);
    assert!(
        summary.errors[0].reason.contains("occurred_at"),
        "{}",
        summary.errors[0].reason
    );
    assert!(
        summary.errors[1].reason.contains("no.such.consent"),
        "{}",
        summary.errors[1].reason
    );

    let mut elig = server.eligibility().await;
    assert_eq!(
        can_send(&mut elig, "imp-1", "email", "acme").await.1,
        Reason::Granted
    );
    assert_eq!(
        can_send(&mut elig, "imp-19999", "sms", "orbit").await.1,
        Reason::Granted
    );
    assert_eq!(
        can_send(&mut elig, "imp-7", "email", "acme").await.1,
        Reason::Withdrawn
    );
    assert_eq!(
        can_send(&mut elig, "imp-5000", "email", "acme").await.1,
        Reason::NoConsent
    );

    let h = cons
        .get_history(pb::GetHistoryRequest {
            contact_id: "imp-42".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].source(), pb::Source::Import);
    assert_eq!(h[0].occurred_at, Some(ts(t)));
    server.stop().await;
}

#[tokio::test]
async fn rows_without_action_or_change_are_rejected_and_an_empty_import_is_fine() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    let rows = vec![
        pb::ImportRequest {
            action: 0,
            change: Some(change("a", "marketing", Some(now() - 5))),
        },
        pb::ImportRequest {
            action: Action::Withdraw as i32,
            change: None,
        },
        pb::ImportRequest {
            action: 9,
            change: Some(change("a", "marketing", Some(now() - 5))),
        },
        row(1, Action::Withdraw, now() - 5),
    ];
    let s = cons
        .import(tokio_stream::iter(rows))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.received, s.applied, s.rejected), (4, 1, 3));
    assert!(s.errors[0].reason.starts_with("action"));
    assert!(s.errors[1].reason.starts_with("change"));

    let empty = cons
        .import(tokio_stream::iter(Vec::<pb::ImportRequest>::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(empty, pb::ImportResponse::default());
    server.stop().await;
}

#[tokio::test]
async fn a_fifth_import_at_once_is_refused_and_the_four_finish() {
    let server = TestServer::start().await;
    let t = now() - 86_400;
    let mut senders = Vec::new();
    let mut running = Vec::new();
    for i in 0..4u64 {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::ImportRequest>(16);
        tx.send(row(1_000 + i, Action::Grant, t)).await.unwrap();
        let mut cons = server.consents().await;
        running.push(tokio::spawn(async move {
            cons.import(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        }));
        senders.push(tx);
        // Its first row is recorded: the import holds its slot.
        while history(&server, &format!("imp-{}", 1_000 + i))
            .await
            .is_empty()
        {
            tokio::task::yield_now().await;
        }
    }
    let mut cons = server.consents().await;
    let refused = cons
        .import(tokio_stream::iter(vec![row(2_000, Action::Grant, t)]))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        history(&server, "imp-2000").await.is_empty(),
        "nothing recorded"
    );

    drop(senders);
    for r in running {
        assert_eq!(r.await.unwrap().unwrap().into_inner().applied, 1);
    }
    // With the slots free again, an import goes through.
    let summary = cons
        .import(tokio_stream::iter(vec![row(2_000, Action::Grant, t)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.applied, 1);
    server.stop().await;
}

#[tokio::test]
async fn calls_over_the_global_limit_are_refused_at_once_and_answered_again_after() {
    // Three calls in flight at most; an import holds its slot until it is
    // answered, so three open imports fill the server.
    let dir = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(dir.path());
    config.catalog = Some(example_catalog_path());
    config.max_calls_in_flight = 3;
    let server = TestServer::start_with(config).await;
    let t = now() - 86_400;
    let mut senders = Vec::new();
    let mut running = Vec::new();
    for i in 0..3u64 {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::ImportRequest>(16);
        tx.send(row(3_000 + i, Action::Grant, t)).await.unwrap();
        let mut cons = server.consents().await;
        running.push(tokio::spawn(async move {
            cons.import(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        }));
        senders.push(tx);
        if i < 2 {
            // With at most two imports open, a read still finds room.
            while history(&server, &format!("imp-{}", 3_000 + i))
                .await
                .is_empty()
            {
                tokio::task::yield_now().await;
            }
        }
    }
    // The third import takes the last slot: a check is refused, at once,
    // from any connection (the limit is over all of them).
    let mut elig = server.eligibility().await;
    let mut refused = None;
    for _ in 0..2_000 {
        match elig.can_send(check("imp-3000", "email", "acme")).await {
            Err(status) => {
                refused = Some(status);
                break;
            }
            // The third import may not have reached the server yet.
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
    let refused = refused.expect("a fourth call in flight is refused");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );

    // One import answered: its slot is free and checks are answered again.
    senders.remove(0);
    let first = running.remove(0).await.unwrap().unwrap().into_inner();
    assert_eq!(first.applied, 1);
    let answer = elig
        .can_send(check("imp-3000", "email", "acme"))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.allowed, "{answer:?}");
    drop(senders);
    for r in running {
        assert_eq!(r.await.unwrap().unwrap().into_inner().applied, 1);
    }
    server.stop().await;
}

//! Grant and Withdraw over a real socket: DESIGN.md rule 2 end to end.

mod common;

use common::*;
use consentd::pb::{self, Action, Reason};
use tonic::Code;

#[tokio::test]
async fn latest_decision_wins_whatever_the_arrival_order() {
    let server = TestServer::start().await;
    let mut elig = server.eligibility().await;
    let mut cons = server.consents().await;
    let t = now() - 10_000;

    // A withdrawal at t+100 arrives first; an import of an older grant
    // (t+50) arrives later and must not undo it.
    let w = cons
        .withdraw(change("c", "marketing", Some(t + 100)))
        .await
        .unwrap()
        .into_inner();
    assert!(w.applied);
    let g = cons
        .grant(change("c", "marketing", Some(t + 50)))
        .await
        .unwrap()
        .into_inner();
    assert!(!g.applied, "an older grant is superseded");
    assert_eq!(g.state.as_ref().unwrap().action(), Action::Withdraw);
    assert_eq!(g.state.unwrap().sequence, w.sequence);
    assert!(g.sequence > w.sequence);
    assert_eq!(
        can_send(&mut elig, "c", "email", "acme").await.1,
        Reason::Withdrawn
    );

    // A tie: WITHDRAW beats GRANT, in either order.
    cons.grant(change("d", "marketing", Some(t))).await.unwrap();
    let w = cons
        .withdraw(change("d", "marketing", Some(t)))
        .await
        .unwrap()
        .into_inner();
    assert!(w.applied);
    cons.withdraw(change("e", "marketing", Some(t)))
        .await
        .unwrap();
    let g = cons
        .grant(change("e", "marketing", Some(t)))
        .await
        .unwrap()
        .into_inner();
    assert!(!g.applied);
    for who in ["d", "e"] {
        assert_eq!(
            can_send(&mut elig, who, "email", "acme").await.1,
            Reason::Withdrawn,
            "{who}"
        );
    }

    // A tie of the same action: the event recorded first stays.
    let first = cons
        .grant(change("f", "marketing", Some(t)))
        .await
        .unwrap()
        .into_inner();
    let second = cons
        .grant(change("f", "marketing", Some(t)))
        .await
        .unwrap()
        .into_inner();
    assert!(!second.applied);
    assert_eq!(second.state.unwrap().sequence, first.sequence);

    // The history keeps what the system was told, in recording order,
    // including the superseded events.
    let history = cons
        .get_history(pb::GetHistoryRequest {
            contact_id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(history.len(), 2);
    assert_eq!(
        (history[0].action(), history[0].applied),
        (Action::Withdraw, true)
    );
    assert_eq!(
        (history[1].action(), history[1].applied),
        (Action::Grant, false)
    );
    assert!(history[0].sequence < history[1].sequence);
    assert_eq!(history[1].occurred_at, Some(ts(t + 50)));
    assert_eq!(
        history[1].evidence.get("form").map(String::as_str),
        Some("signup-2026")
    );
    assert_eq!(history[1].version, 1);
    assert!(history[1].recorded_at.unwrap().seconds >= now() - 60);
    server.stop().await;
}

#[tokio::test]
async fn occurred_at_defaults_clamps_and_rejects_the_far_future() {
    let server = TestServer::start().await;
    let mut elig = server.eligibility().await;
    let mut cons = server.consents().await;

    // A granting tool whose clock runs 4 minutes ahead: clamped to receipt time.
    let g = cons
        .grant(change("c", "marketing", Some(now() + 240)))
        .await
        .unwrap()
        .into_inner();
    let state = g.state.unwrap();
    assert_eq!(
        state.occurred_at, state.recorded_at,
        "clamped to the receipt time"
    );
    // So a later unsubscribe click (no occurred_at: now) beats it.
    let w = cons
        .withdraw(change("c", "marketing", None))
        .await
        .unwrap()
        .into_inner();
    assert!(w.applied);
    assert_eq!(
        can_send(&mut elig, "c", "email", "acme").await.1,
        Reason::Withdrawn
    );

    // More than 5 minutes ahead is an error, and records nothing.
    let err = cons
        .grant(change("x", "marketing", Some(now() + 400)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("occurred_at"), "{}", err.message());
    let h = cons
        .get_history(pb::GetHistoryRequest {
            contact_id: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(h.into_inner().events.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn idempotency_keys() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    let mut c = change("c", "marketing.acme", Some(now() - 100));
    c.idempotency_key = "form-submit-42".into();

    let first = cons.grant(c.clone()).await.unwrap().into_inner();
    assert!(first.applied);
    let again = cons.grant(c.clone()).await.unwrap().into_inner();
    assert!(!again.applied);
    assert_eq!(again.sequence, first.sequence, "the original sequence");

    // The same key for another change is refused.
    let mut other = c.clone();
    other.consent_id = "marketing.zenith".into();
    let err = cons.grant(other).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = cons.withdraw(c.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let h = cons
        .get_history(pb::GetHistoryRequest {
            contact_id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        h.into_inner().events.len(),
        1,
        "nothing recorded for repeats"
    );
    server.stop().await;
}

#[tokio::test]
async fn get_contact_unknown_consent_and_retired_consents() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    let mut cat = server.catalog().await;
    let t = now() - 100;
    cons.grant(change("c", "marketing.acme", Some(t)))
        .await
        .unwrap();
    cons.withdraw(change("c", "surveys", Some(t + 1)))
        .await
        .unwrap();

    let got = cons
        .get_contact(pb::GetContactRequest {
            as_of: None,
            contact_id: "c".into(),
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut states: Vec<(String, Action)> = got
        .states
        .iter()
        .map(|s| (s.consent_id.clone(), s.action()))
        .collect();
    states.sort();
    assert_eq!(
        states,
        [
            ("marketing.acme".to_string(), Action::Grant),
            ("surveys".to_string(), Action::Withdraw)
        ]
    );
    assert_eq!(got.states[0].source(), pb::Source::Form);
    assert_eq!(got.states[0].version, 1);
    let none = cons
        .get_contact(pb::GetContactRequest {
            as_of: None,
            contact_id: "nobody".into(),
            min_sequence: 0,
        })
        .await
        .unwrap();
    assert!(
        none.into_inner().states.is_empty(),
        "an unknown contact is not an error"
    );

    let err = cons
        .grant(change("c", "no.such.consent", None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("no.such.consent"));

    // Retire Acme: no new grants, withdrawals still accepted, state still decides.
    let mut spec = example_catalog();
    spec.consents
        .iter_mut()
        .find(|c| c.id == "marketing.acme")
        .unwrap()
        .retired = true;
    cat.apply_catalog(spec).await.unwrap();
    let err = cons
        .grant(change("d", "marketing.acme", None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let mut elig = server.eligibility().await;
    assert_eq!(
        can_send(&mut elig, "c", "sms", "acme").await,
        (true, Reason::Granted, "marketing.acme".into())
    );
    cons.withdraw(change("c", "marketing.acme", None))
        .await
        .unwrap();
    assert_eq!(
        can_send(&mut elig, "c", "sms", "acme").await.1,
        Reason::Withdrawn
    );
    server.stop().await;
}

#[tokio::test]
async fn concurrent_writers_all_land_with_unique_sequences() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let mut tasks = Vec::new();
    for w in 0..32 {
        let mut cons = Consents(pb::consents_service_client::ConsentsServiceClient::new(
            channel.clone(),
        ));
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let r = cons
                    .grant(change(&format!("w{w}-c{i}"), "marketing", None))
                    .await
                    .unwrap()
                    .into_inner();
                assert!(r.applied);
                seqs.push(r.sequence);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "every sequence is unique");

    let mut elig = server.eligibility().await;
    for w in 0..32 {
        for i in 0..25 {
            assert!(
                can_send(&mut elig, &format!("w{w}-c{i}"), "push", "orbit")
                    .await
                    .0
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_contact_with_2500_events_is_read_in_pages() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    let t = now() - 10_000;
    let rows: Vec<pb::ImportRequest> = (0..2_500)
        .map(|i| pb::ImportRequest {
            action: if i % 2 == 0 {
                pb::Action::Grant as i32
            } else {
                pb::Action::Withdraw as i32
            },
            change: Some(change("busy", "marketing", Some(t + i))),
        })
        .collect();
    let summary = cons
        .import(tokio_stream::iter(rows))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.received, 2_500);

    let page = |size: u32, token: String| pb::GetHistoryRequest {
        contact_id: "busy".into(),
        page_size: size,
        page_token: token,
        min_sequence: 0,
    };
    let mut all = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let p = cons.get_history(page(0, token)).await.unwrap().into_inner();
        assert!(p.events.len() <= 1_000, "page_size 0 means up to 1,000");
        pages += 1;
        all.extend(p.events);
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(all.len(), 2_500);
    assert!(
        all.windows(2).all(|w| w[0].sequence < w[1].sequence),
        "recording order"
    );
    // A larger page_size is capped; a small one is honoured.
    let big = cons
        .get_history(page(5_000, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(big.events.len(), 1_000);
    let small = cons
        .get_history(page(7, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(small.events.len(), 7);
    assert_eq!(small.events[..], all[..7]);
    // A token this server never issued is refused, naming the field.
    let bad = cons
        .get_history(page(10, "not-a-token!".into()))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().starts_with("page_token"), "{}", bad.message());
    server.stop().await;
}

#[tokio::test]
async fn a_freshness_token_is_honoured_and_one_not_reached_says_how_far_the_node_is() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    let mut elig = server.eligibility().await;
    let granted = cons
        .grant(change("fresh", "marketing", None))
        .await
        .unwrap()
        .into_inner();
    let mut req = check("fresh", "email", "acme");
    req.min_sequence = granted.sequence;
    assert!(elig.can_send(req).await.unwrap().into_inner().allowed);
    let batch = elig
        .can_send_batch(pb::CanSendBatchRequest {
            checks: vec![check("fresh", "email", "acme")],
            min_sequence: granted.sequence,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(batch.results[0].allowed);

    // A token from the future: UNAVAILABLE after the wait, naming how far
    // this node has got; nothing else is affected.
    let mut req = check("fresh", "email", "acme");
    req.min_sequence = granted.sequence + 1_000_000;
    let err = elig.can_send(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("min_sequence") && err.message().contains("applied changes up to"),
        "{}",
        err.message()
    );
    let history = cons
        .get_history(pb::GetHistoryRequest {
            contact_id: "fresh".into(),
            min_sequence: granted.sequence + 1_000_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(history.code(), Code::Unavailable);
    server.stop().await;
}

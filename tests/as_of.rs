//! As-of (DESIGN.md §10): CanSend and GetContact answer as the server
//! would have at a past time — the events recorded at or before it, the
//! catalog (wordings, `min_version`, `valid_for_days`) in force then, lapses
//! computed at it; an erased contact is unknown at every time. One contact
//! is walked through grants, a withdrawal, a pending grant, a confirmed
//! grant, a rewording with `min_version`, an expiry and an erasure, and
//! asked at each instant and just before it.

mod common;

use common::*;
use consentd::pb::{self, Reason};
use tonic::Code;

const SECOND: i64 = 1_000_000_000;

/// Nanoseconds since the epoch, now (not truncated to the second).
fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn at(nanos: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: nanos.div_euclid(SECOND),
        nanos: nanos.rem_euclid(SECOND) as i32,
    }
}

fn nanos(t: &prost_types::Timestamp) -> i64 {
    t.seconds * SECOND + i64::from(t.nanos)
}

/// (allowed, reason, decided_by) of CanSend(ann, email, acme) as of `t`.
async fn ask(server: &TestServer, t: i64) -> (bool, Reason, String) {
    let mut elig = server.eligibility().await;
    let r = elig
        .can_send(pb::CanSendRequest {
            as_of: Some(at(t)),
            ..check("ann", "email", "acme")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.as_of.map(|a| nanos(&a)),
        Some(t),
        "the answer names its time"
    );
    (r.allowed, r.reason(), r.decided_by)
}

/// GetContact as of `t`: (consent, action, version) of each state, and
/// the pending grants by consent.
async fn contact(server: &TestServer, t: i64) -> (Vec<(String, i32, u32)>, Vec<(String, u32)>) {
    let r = server
        .consents()
        .await
        .get_contact(pb::GetContactRequest {
            contact_id: "ann".into(),
            as_of: Some(at(t)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.as_of.map(|a| nanos(&a)), Some(t));
    let mut states: Vec<_> = r
        .states
        .into_iter()
        .map(|s| (s.consent_id, s.action, s.version))
        .collect();
    states.sort();
    let pending = r
        .pending
        .into_iter()
        .map(|p| (p.consent_id, p.count))
        .collect();
    (states, pending)
}

/// When the event of `sequence` was recorded.
async fn recorded(server: &TestServer, sequence: u64) -> i64 {
    let events = history(server, "ann").await;
    let e = events.iter().find(|e| e.sequence == sequence).unwrap();
    nanos(e.recorded_at.as_ref().unwrap())
}

const ACME: &str = "marketing.acme";

/// (consent, action, version) of each state.
type States = Vec<(String, i32, u32)>;

/// One instant of the timeline and what the server answered then.
#[derive(Clone)]
struct Step {
    name: &'static str,
    t: i64,
    allowed: bool,
    reason: Reason,
    states: States,
    pending: Vec<(String, u32)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_contact_asked_at_every_instant_of_its_timeline() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(server_dir.path(), Some(example_catalog_path())).await;
    let mut cons = server.consents().await;
    let grant = |c: pb::ConsentChange| {
        let server = &server;
        async move {
            let r = server.consents().await.grant(c).await.unwrap().into_inner();
            (r.sequence, r.pending)
        }
    };
    let before_all = now_nanos() - 5 * SECOND;

    // The person's decisions occurred weeks ago (an import would say so);
    // the server recorded them now, a few milliseconds apart.
    let days_ago = |d: i64| Some(now() - d * 86_400);
    // 1. A grant on a form.
    let (s1, _) = grant(change("ann", ACME, days_ago(40))).await;
    let t1 = recorded(&server, s1).await;
    // 2. The person withdraws (sticks: a later grant waits for them).
    let s2 = cons
        .withdraw(change("ann", ACME, days_ago(35)))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    let t2 = recorded(&server, s2).await;
    // 3. An API grant over that withdrawal: pending.
    let mut over = change("ann", ACME, days_ago(32));
    over.source = pb::Source::Api as i32;
    let (s3, pending) = grant(over.clone()).await;
    assert!(pending);
    let t3 = recorded(&server, s3).await;
    // 4. The person's confirmation (the caller vouches): granted, version 1.
    over.confirmed = true;
    let (s4, _) = grant(over).await;
    let t4 = recorded(&server, s4).await;
    // 5. A rewording that asks everyone again (min_version 2), with a
    //    30-day validity from now on.
    edit_catalog(&server, |s| {
        let c = consent_mut(s, ACME);
        c.text = "Acme news, now with partner offers.".into();
        c.min_version = 2;
        c.valid_for_days = 30;
    })
    .await
    .unwrap();
    let wordings = server
        .catalog()
        .await
        .get_wordings(pb::GetWordingsRequest {
            consent_id: ACME.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .wordings;
    let t5 = nanos(wordings.last().unwrap().in_force_from.as_ref().unwrap());
    // 6. A grant of the new wording that occurred 30 days less 2 s ago
    //    (later than every decision before: it decides).
    let (s6, _) = grant(change("ann", ACME, Some(now() - 30 * 86_400 + 2))).await;
    let t6 = recorded(&server, s6).await;
    // 7. Three seconds on, it has expired.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let t7 = now_nanos();

    use Reason::*;
    // (step, time, allowed, reason, ACME's (action, version), pending grants)
    let step = |name, t, allowed, reason, state: Option<(i32, u32)>, pending: u32| Step {
        name,
        t,
        allowed,
        reason,
        states: state.map_or(vec![], |(a, v)| vec![(ACME.to_owned(), a, v)]),
        pending: if pending == 0 {
            vec![]
        } else {
            vec![(ACME.to_owned(), pending)]
        },
    };
    let (grant_, withdraw_) = (pb::Action::Grant as i32, pb::Action::Withdraw as i32);
    let table = [
        step("before anything", before_all, false, NoConsent, None, 0),
        step("granted", t1, true, Granted, Some((grant_, 1)), 0),
        step("withdrawn", t2, false, Withdrawn, Some((withdraw_, 1)), 0),
        step(
            "a grant waits",
            t3,
            false,
            Withdrawn,
            Some((withdraw_, 1)),
            1,
        ),
        step("confirmed", t4, true, Granted, Some((grant_, 1)), 0),
        step("reworded", t5, false, StaleWording, Some((grant_, 1)), 0),
        step("granted again", t6, true, Granted, Some((grant_, 2)), 0),
        step("expired", t7, false, Expired, Some((grant_, 2)), 0),
    ];
    let mut previous: Option<Step> = None;
    for now in table {
        let (step, t) = (now.name, now.t);
        let (a, r, by) = ask(&server, t).await;
        assert_eq!((a, r), (now.allowed, now.reason), "CanSend at {step}");
        if matches!(now.reason, Granted | Withdrawn) {
            assert_eq!(by, ACME, "decided by, at {step}");
        }
        assert_eq!(
            contact(&server, t).await,
            (now.states.clone(), now.pending.clone()),
            "GetContact at {step}"
        );
        // Just before the instant, the answer of the step before (the
        // expiry has no instant of its own: it happens in between).
        if let Some(before) = previous.take()
            && step != "expired"
        {
            let (a0, r0, _) = ask(&server, t - 1).await;
            assert_eq!(
                (a0, r0),
                (before.allowed, before.reason),
                "CanSend just before {step}"
            );
            assert_eq!(
                contact(&server, t - 1).await,
                (before.states, before.pending),
                "GetContact just before {step}"
            );
        }
        previous = Some(now);
    }
    // Now, as of now and from memory agree.
    let live = can_send(&mut server.eligibility().await, "ann", "email", "acme").await;
    assert_eq!(ask(&server, now_nanos()).await, live);

    // 8. Erased: unknown at every time, even when it was granted.
    cons.erase_contact(pb::EraseContactRequest {
        contact_id: "ann".into(),
        reason: "art. 17".into(),
    })
    .await
    .unwrap();
    for t in [t1, t4, t6] {
        assert_eq!(ask(&server, t).await.1, NoConsent);
        assert_eq!(contact(&server, t).await, (vec![], vec![]));
    }
    server.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_survives_a_restart_and_bad_requests_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let s1 = server
        .consents()
        .await
        .grant(change("ann", ACME, Some(now() - 60)))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    let t1 = recorded(&server, s1).await;
    edit_catalog(&server, |s| consent_mut(s, ACME).min_version = 1)
        .await
        .unwrap();
    reword(&server, ACME, "Acme news, reworded.").await;
    edit_catalog(&server, |s| consent_mut(s, ACME).min_version = 2)
        .await
        .unwrap();
    assert_eq!(ask(&server, now_nanos()).await.1, Reason::StaleWording);
    let dir = server.stop().await.unwrap_or(dir);
    // Restarted without a catalog file: the kept one stays in force.
    let server = TestServer::start_in(dir.path(), None).await;
    // The catalogs were kept: at t1 the grant counted.
    assert_eq!(ask(&server, t1).await.1, Reason::Granted);
    assert_eq!(ask(&server, now_nanos()).await.1, Reason::StaleWording);

    let mut elig = server.eligibility().await;
    let bad = prost_types::Timestamp {
        seconds: 1,
        nanos: -1,
    };
    let err = elig
        .can_send(pb::CanSendRequest {
            as_of: Some(bad),
            ..check("ann", "email", "acme")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("as_of"), "{}", err.message());
    let err = elig
        .can_send(pb::CanSendRequest {
            as_of: Some(at(t1)),
            include_unsubscribe: true,
            ..check("ann", "email", "acme")
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("include_unsubscribe"),
        "{}",
        err.message()
    );
    let err = elig
        .can_send_batch(pb::CanSendBatchRequest {
            checks: vec![pb::CanSendRequest {
                as_of: Some(at(t1)),
                ..check("ann", "email", "acme")
            }],
            min_sequence: 0,
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("checks[0].as_of"),
        "{}",
        err.message()
    );
    server.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_reads_the_addresses_and_what_was_recorded_on_them_then() {
    use common::replica::set_addresses;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let mut cons = server.consents().await;
    cons.grant(change("ann", "marketing", Some(now() - 60)))
        .await
        .unwrap();
    let granted = now_nanos();
    set_addresses(&mut cons, "ann", &["ann@example.com"]).await;
    let addressed = now_nanos();
    // A STOP recorded on the address itself, for every contact using it.
    let mut stop = change("", "marketing", None);
    stop.address = Some(pb::Address {
        kind: pb::AddressKind::Email as i32,
        value: "Ann@Example.com".into(),
    });
    cons.withdraw(stop).await.unwrap();
    let stopped = now_nanos();
    let ask_to = |t: i64, to: Option<&str>| {
        let server = &server;
        let to = to.map(|v| pb::Address {
            kind: pb::AddressKind::Unspecified as i32,
            value: v.into(),
        });
        async move {
            server
                .eligibility()
                .await
                .can_send(pb::CanSendRequest {
                    as_of: Some(at(t)),
                    to,
                    ..check("ann", "email", "acme")
                })
                .await
                .unwrap()
                .into_inner()
                .reason()
        }
    };
    let to = Some("ann@example.com");
    assert_eq!(ask_to(addressed, to).await, Reason::Granted);
    assert_eq!(ask_to(stopped, to).await, Reason::AddressWithdrawn);
    // Without `to`: the addresses the contact held then.
    assert_eq!(ask_to(granted, None).await, Reason::Granted, "none yet");
    assert_eq!(ask_to(addressed, None).await, Reason::Granted);
    assert_eq!(ask_to(stopped, None).await, Reason::AddressWithdrawn);
    // Live and as of now agree; the address's opt-out outlives an erasure.
    let live = can_send_to(&server, "ann", "email", "acme", "ann@example.com").await;
    assert_eq!(ask_to(now_nanos(), to).await, live.reason());
    cons.erase_contact(pb::EraseContactRequest {
        contact_id: "ann".into(),
        reason: "art. 17".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        ask_to(addressed, to).await,
        Reason::NoConsent,
        "erased: unknown"
    );
    assert_eq!(ask_to(stopped, None).await, Reason::NoConsent);
    server.finish().await.unwrap();
}

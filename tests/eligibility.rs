//! CanSend and CanSendBatch over a real socket: DESIGN.md rule 3 end to end.

mod common;

use common::raw::raw_eligibility;
use common::*;
use consentd::pb::{self, Reason};

#[tokio::test]
async fn umbrella_brand_withdrawal_unsubscribe_all_and_regrant() {
    let server = TestServer::start().await;
    let mut elig = server.eligibility().await;
    let mut cons = server.consents().await;
    let t = now() - 1000;
    let who = "anna@example.com";

    // Opt-in: nothing recorded, nothing allowed.
    assert_eq!(
        can_send(&mut elig, who, "email", "acme").await,
        (false, Reason::NoConsent, String::new())
    );

    // The umbrella grant covers every brand and channel.
    cons.grant(change(who, "marketing", Some(t))).await.unwrap();
    for brand in ["acme", "zenith", "orbit"] {
        for channel in ["email", "sms", "push"] {
            let got = can_send(&mut elig, who, channel, brand).await;
            assert_eq!(
                got,
                (true, Reason::Granted, "marketing".into()),
                "{channel}/{brand}"
            );
        }
    }

    // Unsubscribing from Acme's e-mail stops exactly that.
    cons.withdraw(change(who, "marketing.acme.email", Some(t + 10)))
        .await
        .unwrap();
    assert_eq!(
        can_send(&mut elig, who, "email", "acme").await,
        (false, Reason::Withdrawn, "marketing.acme.email".into())
    );
    assert!(can_send(&mut elig, who, "sms", "acme").await.0);
    assert!(can_send(&mut elig, who, "email", "zenith").await.0);

    // "Unsubscribe from all" stops everything in the tree.
    cons.withdraw(change(who, "marketing", Some(t + 20)))
        .await
        .unwrap();
    for brand in ["acme", "zenith", "orbit"] {
        let got = can_send(&mut elig, who, "sms", brand).await;
        assert_eq!(
            got,
            (false, Reason::Withdrawn, "marketing".into()),
            "{brand}"
        );
    }

    // A grant given after it counts; a re-grant of the umbrella covers all again.
    cons.grant(change(who, "marketing.zenith.sms", Some(t + 30)))
        .await
        .unwrap();
    assert_eq!(
        can_send(&mut elig, who, "sms", "zenith").await,
        (true, Reason::Granted, "marketing.zenith.sms".into())
    );
    assert!(!can_send(&mut elig, who, "email", "zenith").await.0);
    cons.grant(change(who, "marketing", Some(t + 40)))
        .await
        .unwrap();
    assert_eq!(
        can_send(&mut elig, who, "email", "acme").await,
        (true, Reason::Granted, "marketing".into())
    );
    server.stop().await;
}

#[tokio::test]
async fn purposes_not_covered_and_decided_at() {
    let server = TestServer::start().await;
    let mut elig = server.eligibility().await;
    let mut cons = server.consents().await;
    let t = now() - 500;
    cons.grant(change("bob", "surveys", Some(t))).await.unwrap();

    let mut req = check("bob", "email", "orbit");
    req.purpose = "surveys".into();
    let r = elig.can_send(req.clone()).await.unwrap().into_inner();
    assert!(r.allowed);
    assert_eq!(r.decided_by, "surveys");
    assert_eq!(r.decided_at, Some(ts(t)));

    // Surveys cover e-mail only: SMS is not covered by that purpose at all.
    req.channel = "sms".into();
    let r = elig.can_send(req).await.unwrap().into_inner();
    assert_eq!((r.allowed, r.reason()), (false, Reason::NotCovered));

    // The default purpose (marketing) is independent of surveys.
    assert_eq!(
        can_send(&mut elig, "bob", "email", "orbit").await.1,
        Reason::NoConsent
    );
    server.stop().await;
}

#[tokio::test]
async fn batch_answers_in_order_with_invalid_items_in_their_slot() {
    let server = TestServer::start().await;
    let mut elig = server.eligibility().await;
    let mut cons = server.consents().await;
    cons.grant(change("c1", "marketing.acme", Some(now() - 60)))
        .await
        .unwrap();

    // Cells change from item to item, repeat (an unknown one too: a batch
    // looks a cell up again only when the names change) and come back.
    let checks = vec![
        check("c1", "email", "acme"),
        check("c1", "email", "zenith"),
        check("c1", "fax", "acme"),
        check("c1", "fax", "acme"),
        check("", "email", "acme"),
        check("c2", "sms", "acme"),
        check("c1", "email", "acme"),
    ];
    let results = elig
        .can_send_batch(pb::CanSendBatchRequest {
            checks,
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let reasons: Vec<Reason> = results.iter().map(|r| r.reason()).collect();
    assert_eq!(
        reasons,
        [
            Reason::Granted,
            Reason::NoConsent,
            Reason::Invalid,
            Reason::Invalid,
            Reason::Invalid,
            Reason::NoConsent,
            Reason::Granted
        ]
    );
    for r in &results[2..4] {
        assert!(r.error.contains("channel"), "{}", r.error);
    }
    assert!(
        results[4].error.contains("contact_id"),
        "{}",
        results[4].error
    );
    assert!(results[0].error.is_empty());
    assert_eq!(results[6], results[0]);

    let too_many = pb::CanSendBatchRequest {
        checks: vec![check("c1", "email", "acme"); 10_001],
        min_sequence: 0,
    };
    let err = elig.can_send_batch(too_many).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("checks"), "{}", err.message());

    let full = pb::CanSendBatchRequest {
        checks: vec![check("c1", "email", "acme"); 10_000],
        min_sequence: 0,
    };
    let r = elig.can_send_batch(full).await.unwrap().into_inner();
    assert_eq!(r.results.len(), 10_000);
    assert!(r.results.iter().all(|r| r.allowed));
    server.stop().await;
}

#[tokio::test]
async fn health_and_reflection_list_every_service() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status(), ServingStatus::Serving);

    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "consent.v1.EligibilityService",
        "consent.v1.ConsentsService",
        "consent.v1.CatalogService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }

    let body = reqwest_get(server.admin_addr, "/healthz").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    // A write and a few checks, then the on-call's view of them.
    let mut cons = server.consents().await;
    cons.grant(change("metric-anna", "marketing", None))
        .await
        .unwrap();
    let mut elig = server.eligibility().await;
    for _ in 0..3 {
        can_send(&mut elig, "metric-anna", "email", "acme").await;
    }
    let metrics = reqwest_get(server.admin_addr, "/metrics").await;
    assert!(metrics.contains("consentd_decisions_total"), "{metrics}");
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from {metrics}"))
    };
    assert!(value("consentd_can_send_seconds_bucket{le=\"+Inf\"}") >= 3.0);
    assert!(value("consentd_can_send_seconds_count") >= 3.0);
    assert!(value("consentd_write_seconds_count") >= 1.0);
    assert!(value("consentd_group_commit_seconds_count") >= 1.0);
    // Where the commit's time went: every store times its ruling, its
    // writes and its commit; only a shared one has a BEGIN and a lock.
    let step = |phase: &str| {
        value(&format!(
            "consentd_store_commit_phase_seconds_count{{phase=\"{phase}\"}}"
        ))
    };
    for phase in ["rule", "write", "commit"] {
        assert!(step(phase) >= 1.0, "{phase}");
    }
    if !on_postgres() {
        assert_eq!(step("begin"), 0.0, "redb has no BEGIN");
    }
    assert_eq!(value("consentd_writer_queue_depth"), 0.0);
    assert_eq!(value("consentd_store_failures_total"), 0.0);
    assert_eq!(value("consentd_shed_total{reason=\"queue_full\"}"), 0.0);
    server.stop().await;
}

/// A minimal HTTP/1.1 GET over a raw socket (keeps the test dependencies small).
async fn reqwest_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn an_allowed_answer_names_its_list_stable_per_deciding_consent_and_brand() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    let mut elig = server.eligibility().await;
    let list_id = |r: pb::CanSendResponse| (r.allowed, r.list_id);
    // Asked with the headers (`include_unsubscribe`), like the link.
    let check = |who, channel, brand| pb::CanSendRequest {
        include_unsubscribe: true,
        ..check(who, channel, brand)
    };
    cons.grant(change("lia", "marketing", Some(now() - 60)))
        .await
        .unwrap();
    let host = server.http_addr.ip().to_string();
    let acme = elig
        .can_send(check("lia", "email", "acme"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list_id(acme), (true, format!("marketing.acme.{host}")));
    let zenith = elig
        .can_send(check("lia", "sms", "zenith"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list_id(zenith), (true, format!("marketing.zenith.{host}")));
    // Another consent decides: another list; nothing decides: none.
    cons.grant(change("lia", "marketing.acme.email", None))
        .await
        .unwrap();
    let newsletter = elig
        .can_send(check("lia", "email", "acme"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list_id(newsletter),
        (true, format!("marketing.acme.email.acme.{host}"))
    );
    let none = elig
        .can_send(check("nobody", "email", "acme"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list_id(none), (false, String::new()));
    // A plain check carries neither.
    let plain = elig
        .can_send(common::check("lia", "email", "acme"))
        .await
        .unwrap()
        .into_inner();
    assert!(plain.allowed && plain.list_id.is_empty() && plain.unsubscribe_url.is_empty());
    server.stop().await;
}

/// CanSend is answered without tonic's codec (the hot path): the same
/// bytes as prost writes, and a clear status for what is not a check.
#[tokio::test]
async fn any_bytes_get_the_answer_prost_would_give_or_a_status_naming_the_request() {
    use prost::Message;
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    cons.grant(change("anna", "marketing.acme", Some(now() - 100)))
        .await
        .unwrap();
    let mut elig = server.eligibility().await;
    let with_url = pb::CanSendRequest {
        include_unsubscribe: true,
        ..check("anna", "email", "acme")
    };
    let typed = elig.can_send(with_url.clone()).await.unwrap().into_inner();
    assert!(typed.allowed && !typed.unsubscribe_url.is_empty() && !typed.list_id.is_empty());

    // Field by field as the generated client reads it; the URL differs
    // (a fresh nonce per link) and nothing else.
    let raw = raw_eligibility(&server, "CanSend", with_url.encode_to_vec(), &[])
        .await
        .unwrap();
    let read = pb::CanSendResponse::decode(&raw[..]).unwrap();
    assert_eq!(
        pb::CanSendResponse {
            unsubscribe_url: typed.unsubscribe_url.clone(),
            ..read.clone()
        },
        typed
    );
    assert_ne!(read.unsubscribe_url, typed.unsubscribe_url);
    assert_eq!(
        read.encode_to_vec(),
        raw,
        "prost's bytes, field order and all"
    );

    // Not a CanSendRequest: INVALID_ARGUMENT naming the request.
    for junk in [
        vec![0xff, 0xff, 0xff],
        vec![0x0a, 0x05, b'a'],
        vec![0x0a, 0x02, 0xc3, 0x28],
    ] {
        let status = raw_eligibility(&server, "CanSend", junk.clone(), &[])
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{junk:?}: {status:?}"
        );
        assert!(
            status
                .message()
                .starts_with("request: is not a CanSendRequest"),
            "{status:?}"
        );
    }
    let status = raw_eligibility(&server, "CanSendBatch", vec![0x0a, 0x09], &[])
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("request: is not a CanSendBatchRequest"),
        "{status:?}"
    );

    // A compressed message this server cannot read: UNIMPLEMENTED, saying so.
    let status = raw_eligibility(
        &server,
        "CanSend",
        with_url.encode_to_vec(),
        &[("grpc-encoding", "gzip")],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("compressed (gzip)"), "{status:?}");

    // An empty message is a check of nothing: each field named in turn.
    let status = raw_eligibility(&server, "CanSend", Vec::new(), &[])
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("contact"), "{status:?}");

    // A method the service does not have is tonic's UNIMPLEMENTED.
    let status = raw_eligibility(&server, "CanSendAll", with_url.encode_to_vec(), &[])
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

    // A batch answers item by item, as prost encodes it.
    let batch = pb::CanSendBatchRequest {
        checks: vec![check("anna", "email", "acme"), check("", "email", "acme")],
        min_sequence: 0,
    };
    let raw = raw_eligibility(&server, "CanSendBatch", batch.encode_to_vec(), &[])
        .await
        .unwrap();
    let read = pb::CanSendBatchResponse::decode(&raw[..]).unwrap();
    let typed = elig.can_send_batch(batch).await.unwrap().into_inner();
    assert_eq!(read, typed);
    assert_eq!(read.results[1].reason(), Reason::Invalid);
    assert!(
        read.results[1].error.starts_with("contact"),
        "{:?}",
        read.results[1]
    );
    server.stop().await;
}

/// A batch answers each check as CanSend does one by one — granted,
/// withdrawn, waiting for a confirmation, erased, never known, repeated —
/// for contacts spread over every shard of the index (a batch's states are
/// gathered by shard, a single check's looked up alone), in runs of the
/// same (purpose, channel, brand) and with one of the three changed at a
/// time, an unknown one between them (a batch keeps the cell of the
/// check before).
#[tokio::test]
async fn a_batch_answers_each_check_as_can_send_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(dir.path());
    config.catalog = Some(example_catalog_path());
    let server = TestServer::start_with(config).await;
    edit_catalog(&server, |spec| {
        consent_mut(spec, "marketing.orbit").double_opt_in = true;
    })
    .await
    .unwrap();
    let mut cons = server.consents().await;
    let t = now() - 3_600;
    let rows: Vec<pb::ImportRequest> = (0..300)
        .map(|i| {
            let consent = if i % 3 == 0 {
                "marketing.orbit"
            } else {
                "marketing"
            };
            let mut c = change(&format!("b{i}"), consent, Some(t + i));
            c.source = pb::Source::Import as i32;
            // Unconfirmed rows of a double opt-in consent wait.
            c.confirmed = i % 6 != 0;
            pb::ImportRequest {
                action: pb::Action::Grant as i32,
                change: Some(c),
            }
        })
        .collect();
    cons.import(tokio_stream::iter(rows)).await.unwrap();
    for i in (0..300).step_by(7) {
        cons.withdraw(change(&format!("b{i}"), "marketing", Some(t + 1_000)))
            .await
            .unwrap();
    }
    cons.erase_contact(pb::EraseContactRequest {
        contact_id: "b10".into(),
        reason: "test".into(),
    })
    .await
    .unwrap();

    let mut elig = server.eligibility().await;
    let checks: Vec<pb::CanSendRequest> = (0..400)
        .flat_map(|i| {
            let who = format!("b{}", (i * 37) % 330);
            let acme = check(&who, "email", "acme");
            let last = match i % 4 {
                0 => check(&who, "sms", "acme"),
                1 => pb::CanSendRequest {
                    purpose: "marketing".into(),
                    ..acme.clone()
                },
                // Surveys are by email only.
                2 => pb::CanSendRequest {
                    purpose: "surveys".into(),
                    ..check(&who, "sms", "acme")
                },
                _ => check(&who, "emails", "acme"),
            };
            [check(&who, "email", "orbit"), acme.clone(), acme, last]
        })
        .collect();
    let batch = elig
        .can_send_batch(pb::CanSendBatchRequest {
            checks: checks.clone(),
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(batch.len(), checks.len());
    let mut reasons = std::collections::HashSet::new();
    for (c, got) in checks.iter().zip(&batch) {
        match elig.can_send(c.clone()).await {
            Ok(one) => {
                let one = one.into_inner();
                assert_eq!(got, &one, "{c:?}");
                reasons.insert(one.reason());
            }
            Err(status) => {
                assert_eq!(got.reason(), Reason::Invalid, "{c:?}");
                assert!(status.message().contains(&got.error), "{status:?} {got:?}");
                reasons.insert(Reason::Invalid);
            }
        }
    }
    for r in [
        Reason::Granted,
        Reason::Withdrawn,
        Reason::PendingConfirmation,
        Reason::NoConsent,
        Reason::NotCovered,
        Reason::Invalid,
    ] {
        assert!(reasons.contains(&r), "{r:?} among {reasons:?}");
    }
    server.stop().await;
}

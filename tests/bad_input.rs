//! Bad input: INVALID_ARGUMENT naming the field (NOT_FOUND for an unknown
//! consent), and nothing is written.

mod common;

use common::raw::{grpc_framed, raw_call};
use common::*;
use consentd::pb::{self, Reason};
use tonic::Code;

#[tokio::test]
async fn bad_checks_name_the_field() {
    let server = TestServer::start().await;
    let mut elig = server.eligibility().await;
    let long = "x".repeat(257);
    let cases: Vec<(&str, pb::CanSendRequest)> = vec![
        ("contact_id", check("", "email", "acme")),
        ("contact_id", check(&long, "email", "acme")),
        ("contact_id", check("a\u{0}b", "email", "acme")),
        ("channel", check("c", "fax", "acme")),
        ("channel", check("c", "", "acme")),
        ("brand", check("c", "email", "nope")),
        (
            "purpose",
            pb::CanSendRequest {
                purpose: "marketing.acme".into(),
                ..check("c", "email", "acme")
            },
        ),
        (
            "purpose",
            pb::CanSendRequest {
                purpose: "ghost".into(),
                ..check("c", "email", "acme")
            },
        ),
    ];
    for (field, req) in cases {
        let err = elig.can_send(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_changes_name_the_field_and_write_nothing() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    let ok = || change("victim", "marketing", Some(now() - 10));
    let cases: Vec<(Code, &str, pb::ConsentChange)> = vec![
        (
            Code::InvalidArgument,
            "contact_id",
            pb::ConsentChange {
                contact_id: String::new(),
                ..ok()
            },
        ),
        (
            Code::InvalidArgument,
            "contact_id",
            pb::ConsentChange {
                contact_id: "x".repeat(300),
                ..ok()
            },
        ),
        (
            Code::InvalidArgument,
            "contact_id",
            pb::ConsentChange {
                contact_id: "tab\there".into(),
                ..ok()
            },
        ),
        (
            Code::InvalidArgument,
            "consent_id",
            pb::ConsentChange {
                consent_id: String::new(),
                ..ok()
            },
        ),
        (
            Code::InvalidArgument,
            "consent_id",
            pb::ConsentChange {
                consent_id: "Marketing!".into(),
                ..ok()
            },
        ),
        (
            Code::InvalidArgument,
            "source",
            pb::ConsentChange { source: 99, ..ok() },
        ),
        (
            Code::InvalidArgument,
            "occurred_at",
            pb::ConsentChange {
                occurred_at: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: -5,
                }),
                ..ok()
            },
        ),
        (
            Code::InvalidArgument,
            "occurred_at",
            pb::ConsentChange {
                occurred_at: Some(ts(now() + 3600)),
                ..ok()
            },
        ),
        (
            Code::InvalidArgument,
            "idempotency_key",
            pb::ConsentChange {
                idempotency_key: "k".repeat(300),
                ..ok()
            },
        ),
        (
            Code::InvalidArgument,
            "evidence",
            pb::ConsentChange {
                evidence: (0..40).map(|i| (format!("k{i}"), "v".into())).collect(),
                ..ok()
            },
        ),
        (
            Code::InvalidArgument,
            "evidence[ua]",
            pb::ConsentChange {
                evidence: [("ua".to_string(), "x".repeat(5000))].into(),
                ..ok()
            },
        ),
        (
            Code::NotFound,
            "consent_id",
            pb::ConsentChange {
                consent_id: "ghost".into(),
                ..ok()
            },
        ),
    ];
    for (code, field, req) in cases {
        let err = cons.grant(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{field}");
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
        let err = cons.withdraw(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{field} (withdraw)");
    }
    let history = cons
        .get_history(pb::GetHistoryRequest {
            contact_id: "victim".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(history.events.is_empty(), "nothing was recorded");
    let err = cons
        .get_history(pb::GetHistoryRequest {
            contact_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = cons
        .get_contact(pb::GetContactRequest {
            as_of: None,
            contact_id: "\n".into(),
            min_sequence: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut elig = server.eligibility().await;
    assert_eq!(
        can_send(&mut elig, "victim", "email", "acme").await.1,
        Reason::NoConsent
    );
    server.stop().await;
}

#[tokio::test]
async fn errors_quote_at_most_128_bytes_of_a_100_kib_value() {
    let server = TestServer::start().await;
    let mut elig = server.eligibility().await;
    let mut cons = server.consents().await;
    let huge = "x".repeat(100 * 1024);
    let mut statuses = Vec::new();
    // A CanSend this big is over its method's limit (RESOURCE_EXHAUSTED);
    // the Consents messages below are within theirs (INVALID_ARGUMENT).
    let mut too_big = Vec::new();
    let mut c = check("anna", "email", "acme");
    c.brand = huge.clone();
    too_big.push(elig.can_send(c).await.unwrap_err());
    let mut c = check("anna", "email", "acme");
    c.purpose = huge.clone();
    too_big.push(elig.can_send(c).await.unwrap_err());
    for s in &too_big {
        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
        assert!(s.message().len() < 300, "{s:?}");
    }
    statuses.push(cons.grant(change("anna", &huge, None)).await.unwrap_err());
    statuses.push(
        cons.grant(change(&huge, "marketing", None))
            .await
            .unwrap_err(),
    );
    let mut k = change("anna", "marketing", None);
    k.idempotency_key = huge.clone();
    statuses.push(cons.grant(k).await.unwrap_err());
    for s in statuses {
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        assert!(
            s.message().len() < 300,
            "{} bytes: {}…",
            s.message().len(),
            &s.message()[..200]
        );
        assert!(s.details().len() < 600, "rich details are cut too");
    }
    assert!(history(&server, "anna").await.is_empty(), "nothing changed");
    server.stop().await;
}

#[tokio::test]
async fn each_method_reads_only_as_much_as_its_request_needs() {
    let server = TestServer::start().await;
    let mut elig = server.eligibility().await;
    let mut big = check("anna", "email", "acme");
    big.purpose = "p".repeat(9 * 1024);
    // A single check never needs 9 KiB: refused as a whole, before decoding,
    // with the gRPC spec's code for a message over the limit.
    let refused = elig.can_send(big.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().starts_with("request:"),
        "{}",
        refused.message()
    );
    // The same check inside a batch is one bad item among good ones.
    let answers = elig
        .can_send_batch(pb::CanSendBatchRequest {
            checks: vec![big, check("anna", "email", "acme")],
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(answers[0].reason(), pb::Reason::Invalid);
    assert!(
        answers[0].error.starts_with("purpose"),
        "{}",
        answers[0].error
    );
    assert_eq!(answers[1].reason(), pb::Reason::NoConsent);

    // A Grant, or an import row, over the Consents messages' limit (128 KiB):
    // RESOURCE_EXHAUSTED with a short message, nothing recorded.
    let mut cons = server.consents().await;
    let mut huge = change("anna", "marketing", None);
    huge.evidence.insert("blob".into(), "x".repeat(200 * 1024));
    let refused = cons.grant(huge.clone()).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().starts_with("request:"), "{refused:?}");
    assert!(refused.message().len() < 100, "{refused:?}");
    let rows = vec![
        pb::ImportRequest {
            action: pb::Action::Grant as i32,
            change: Some(change("bob", "marketing", Some(1_700_000_000))),
        },
        pb::ImportRequest {
            action: pb::Action::Grant as i32,
            change: Some(huge),
        },
    ];
    let refused = cons.import(tokio_stream::iter(rows)).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        history(&server, "anna").await.is_empty(),
        "nothing of anna's"
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_link_requests_and_catalog_fields_name_the_field_and_change_nothing() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    let pref = |contact: &str, purpose: &str, brand: &str| pb::IssuePreferenceLinkRequest {
        contact_id: contact.into(),
        purpose: purpose.into(),
        brand: brand.into(),
    };
    for (req, code, field) in [
        (pref("", "", ""), Code::InvalidArgument, "contact_id"),
        (pref("anna", "nope", ""), Code::InvalidArgument, "purpose"),
        (
            pref("anna", "marketing.acme", ""),
            Code::InvalidArgument,
            "purpose",
        ),
        (pref("anna", "", "zzz"), Code::InvalidArgument, "brand"),
    ] {
        let e = cons.issue_preference_link(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(field), "{field}: {e:?}");
    }
    let confirm = |contact: &str, consent: &str| pb::IssueConfirmationLinkRequest {
        contact_id: contact.into(),
        consent_id: consent.into(),
    };
    for (req, code, field) in [
        (
            confirm("", "marketing"),
            Code::InvalidArgument,
            "contact_id",
        ),
        (
            confirm("anna", "Bad Id"),
            Code::InvalidArgument,
            "consent_id",
        ),
        (confirm("anna", "ghost"), Code::NotFound, "ghost"),
        (
            confirm("anna", "marketing"),
            Code::FailedPrecondition,
            "marketing",
        ),
    ] {
        let e = cons.issue_confirmation_link(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(field), "{field}: {e:?}");
    }
    assert!(
        history(&server, "anna").await.is_empty(),
        "nothing recorded"
    );

    let before = server
        .catalog()
        .await
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    type Edit = Box<dyn Fn(&mut pb::CatalogSpec)>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "brand_titles",
            Box::new(|s| {
                s.brand_titles.insert("ghost".into(), "Ghost".into());
            }),
        ),
        (
            "valid_for_days",
            Box::new(|s| consent_mut(s, "marketing").valid_for_days = 40_000),
        ),
        (
            "min_version",
            Box::new(|s| consent_mut(s, "marketing").min_version = 2),
        ),
    ];
    for (field, edit) in edits {
        let e = edit_catalog(&server, |s| edit(s)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(field), "{field}: {e:?}");
    }
    let after = server
        .catalog()
        .await
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, before, "the catalog is unchanged");
    server.stop().await;
}

/// Grant and Withdraw are read straight from the HTTP/2 request (not by
/// tonic's codec): what is not their message gets a status that says so,
/// a compression this server does not read is refused unread, and none of
/// it records anything.
#[tokio::test]
async fn a_write_that_is_not_its_message_is_refused_and_records_nothing() {
    use prost::Message;
    let server = TestServer::start().await;
    let addr = server.grpc_addr;
    let grant = "/consent.v1.ConsentsService/Grant";
    let withdraw = "/consent.v1.ConsentsService/Withdraw";
    // A field 1 (contact_id) that claims more bytes than follow.
    let garbage = grpc_framed(&[0x0a, 0x7f, b'a']);
    for (path, what) in [(grant, "GrantRequest"), (withdraw, "WithdrawRequest")] {
        let (status, message) = raw_call(addr, path, &[], garbage.clone()).await;
        assert_eq!(status, "3", "INVALID_ARGUMENT: {message}");
        assert!(
            message.contains(&format!("is%20not%20a%20{what}"))
                || message.contains(&format!("is not a {what}")),
            "{message}"
        );
    }
    let anna = pb::GrantRequest::from(change("anna", "marketing", None)).encode_to_vec();
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Headers, Vec<u8>, &str); 4] = [
        // Compressed with a codec this server does not read.
        (&[("grpc-encoding", "gzip")], grpc_framed(&anna), "12"),
        // Marked compressed without saying how.
        (&[], [&[1u8][..], &grpc_framed(&anna)[1..]].concat(), "13"),
        // Two messages where the method takes one.
        (&[], [grpc_framed(&anna), grpc_framed(&anna)].concat(), "13"),
        // No message at all.
        (&[], Vec::new(), "13"),
    ];
    for (headers, body, code) in cases {
        let (status, message) = raw_call(addr, grant, headers, body).await;
        assert_eq!(status, code, "{headers:?}: {message}");
        assert!(message.starts_with("request"), "{message}");
    }
    assert!(
        history(&server, "anna").await.is_empty(),
        "nothing recorded"
    );
    // The same bytes, framed as they should be, are a Grant.
    let (status, message) = raw_call(addr, grant, &[], grpc_framed(&anna)).await;
    assert_eq!(status, "0", "{message}");
    assert_eq!(history(&server, "anna").await.len(), 1);
    server.stop().await;
}

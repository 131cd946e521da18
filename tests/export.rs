//! ExportContact (GDPR Art. 15/20): states, the whole history and every
//! wording the person saw, in one answer.

mod common;

use common::*;
use consentd::pb;
use tonic::Code;

#[tokio::test]
async fn an_export_holds_the_history_and_the_exact_words_behind_it() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    let mut cat = server.catalog().await;
    cons.grant(change("anna", "marketing.acme", Some(now() - 100)))
        .await
        .unwrap();

    // The wording changes; Anna agrees again under the new words, then
    // withdraws from the newsletter.
    let mut spec = cat
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    let i = spec
        .consents
        .iter()
        .position(|c| c.id == "marketing.acme")
        .unwrap();
    spec.consents[i].text = "Acme, second wording.".into();
    cat.apply_catalog(spec).await.unwrap();
    cons.grant(change("anna", "marketing.acme", Some(now() - 50)))
        .await
        .unwrap();
    cons.withdraw(change("anna", "marketing.acme.email", None))
        .await
        .unwrap();
    cons.grant(change("bob", "surveys", None)).await.unwrap();

    let export = cons
        .export_contact(pb::ExportContactRequest {
            contact_id: "anna".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(export.contact_id, "anna");
    assert_eq!(export.events.len(), 3);
    assert!(export.events.iter().all(|e| e.contact_id == "anna"));
    assert_eq!(export.states.len(), 2);
    let mut words: Vec<_> = export
        .wordings
        .iter()
        .map(|w| (w.consent_id.as_str(), w.version, w.text.as_str()))
        .collect();
    words.sort();
    assert_eq!(words.len(), 3, "exactly the wordings referenced: {words:?}");
    assert_eq!(words[0].0, "marketing.acme");
    assert_eq!((words[1].1, words[1].2), (2, "Acme, second wording."));
    assert_eq!(words[2].0, "marketing.acme.email");
    // Every event's (consent, version) resolves to a wording in the export.
    for e in &export.events {
        assert!(
            export
                .wordings
                .iter()
                .any(|w| w.consent_id == e.consent_id && w.version == e.version),
            "{e:?}"
        );
    }
    assert!(export.exported_at.is_some());

    let nobody = cons
        .export_contact(pb::ExportContactRequest {
            contact_id: "nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(nobody.events.is_empty() && nobody.states.is_empty() && nobody.wordings.is_empty());
    let bad = cons
        .export_contact(pb::ExportContactRequest {
            contact_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("contact_id"), "{}", bad.message());
    server.stop().await;
}

#[tokio::test]
async fn a_long_history_is_exported_a_bounded_page_at_a_time() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    // 25 decisions on two consents, in time order.
    let t = now() - 10_000;
    for i in 0..25i64 {
        let consent = if i % 2 == 0 { "marketing" } else { "surveys" };
        let c = change("long", consent, Some(t + i));
        if i % 3 == 0 {
            cons.withdraw(c).await.unwrap();
        } else {
            cons.grant(c).await.unwrap();
        }
    }
    let page = |token: String| {
        let server = &server;
        async move {
            let mut cons = server.consents().await;
            cons.export_contact(pb::ExportContactRequest {
                contact_id: "long".into(),
                page_size: 10,
                page_token: token,
            })
            .await
            .map(tonic::Response::into_inner)
        }
    };
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let p = page(token).await.unwrap();
        token = p.next_page_token.clone();
        pages.push(p);
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(
        pages.iter().map(|p| p.events.len()).collect::<Vec<_>>(),
        vec![10, 10, 5]
    );
    // Every page carries the states, and the wordings of its own events.
    for p in &pages {
        assert_eq!(p.states.len(), 2);
        for e in &p.events {
            assert!(
                p.wordings
                    .iter()
                    .any(|w| w.consent_id == e.consent_id && w.version == e.version),
                "{} v{} without its wording",
                e.consent_id,
                e.version
            );
        }
    }
    // Together they are the whole history, in order, each event once.
    let all: Vec<u64> = pages
        .iter()
        .flat_map(|p| p.events.iter().map(|e| e.sequence))
        .collect();
    let history: Vec<u64> = history(&server, "long")
        .await
        .iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(all, history);
    // Without a page size: up to 1,000 in one page.
    let whole = cons
        .export_contact(pb::ExportContactRequest {
            contact_id: "long".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole.events.len(), 25);
    assert!(whole.next_page_token.is_empty());
    // A token this server did not issue names the field.
    let e = page("not a token".into()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("page_token"), "{}", e.message());
    server.stop().await;
}

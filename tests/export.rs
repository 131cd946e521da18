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
        })
        .await
        .unwrap()
        .into_inner();
    assert!(nobody.events.is_empty() && nobody.states.is_empty() && nobody.wordings.is_empty());
    let bad = cons
        .export_contact(pb::ExportContactRequest {
            contact_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("contact_id"), "{}", bad.message());
    server.stop().await;
}

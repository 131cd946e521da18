//! Versions and wordings (DESIGN.md §1, rule 8): versions never go back,
//! not across restarts; every wording ever in force stays readable.

mod common;

use common::*;
use consentd::pb;
use tonic::Code;

async fn catalog(server: &TestServer) -> pb::CatalogSpec {
    let mut cat = server.catalog().await;
    cat.get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn wordings(server: &TestServer, consent: &str) -> Result<Vec<pb::Wording>, tonic::Status> {
    let mut cat = server.catalog().await;
    cat.get_wordings(pb::GetWordingsRequest {
        consent_id: consent.into(),
    })
    .await
    .map(|r| r.into_inner().wordings)
}

fn position(spec: &pb::CatalogSpec, id: &str) -> usize {
    spec.consents.iter().position(|c| c.id == id).unwrap()
}

fn version(spec: &pb::CatalogSpec, id: &str) -> u32 {
    spec.consents[position(spec, id)].version
}

#[tokio::test]
async fn versions_and_wordings_survive_a_restart_without_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let mut spec = catalog(&server).await;
    let i = position(&spec, "marketing.acme");
    spec.consents[i].text = "Acme, second wording.".into();
    let mut cat = server.catalog().await;
    cat.apply_catalog(spec).await.unwrap();
    server.stop().await;

    // No --catalog: what is in force comes from the store, versions included.
    let server = TestServer::start_in(dir.path(), None).await;
    assert_eq!(version(&catalog(&server).await, "marketing.acme"), 2);
    let mut cons = server.consents().await;
    let granted = cons
        .grant(change("anna", "marketing.acme", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        granted.state.unwrap().version,
        2,
        "recorded under the words in force"
    );
    let texts: Vec<_> = wordings(&server, "marketing.acme")
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.version, w.text))
        .collect();
    assert_eq!(texts.len(), 2);
    assert_eq!(texts[1], (2, "Acme, second wording.".to_string()));
    assert!(
        texts[0]
            .1
            .starts_with("I agree to receive marketing messages from Acme")
    );

    // Restarting with the original file is an edit back: v3, never v1 again.
    server.stop().await;
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    assert_eq!(version(&catalog(&server).await, "marketing.acme"), 3);
    server.stop().await;
}

#[tokio::test]
async fn wordings_after_two_edits_a_retirement_and_a_removal() {
    let server = TestServer::start().await;
    let mut cat = server.catalog().await;
    for text in ["Acme, v2.", "Acme, v3."] {
        let mut spec = catalog(&server).await;
        let i = position(&spec, "marketing.acme");
        spec.consents[i].text = text.into();
        cat.apply_catalog(spec).await.unwrap();
    }
    let mut spec = catalog(&server).await;
    let i = position(&spec, "marketing.acme");
    spec.consents[i].retired = true;
    spec.consents[i].title = "Acme (retired)".into();
    // Nobody holds surveys: it can be deleted.
    spec.consents.remove(position(&spec, "surveys"));
    let applied = cat.apply_catalog(spec).await.unwrap().into_inner();
    assert_eq!(
        version(&applied, "marketing.acme"),
        3,
        "retiring asks nothing new"
    );

    let acme = wordings(&server, "marketing.acme").await.unwrap();
    let versions: Vec<_> = acme.iter().map(|w| (w.version, w.text.as_str())).collect();
    assert_eq!(versions[1..], [(2, "Acme, v2."), (3, "Acme, v3.")]);
    assert_eq!(acme[2].parent, "marketing");
    assert_eq!(acme[2].brands, ["acme"]);
    assert_eq!(
        acme[2].channels,
        ["email", "push", "sms"],
        "the effective scope, listed"
    );
    assert!(acme[1].in_force_from.unwrap().seconds <= acme[2].in_force_from.unwrap().seconds);

    let surveys = wordings(&server, "surveys").await.unwrap();
    assert_eq!(surveys.len(), 1, "a removed consent keeps its words");
    let all = wordings(&server, "").await.unwrap();
    assert_eq!(all.len(), 7 + 2, "seven first wordings and two edits");

    let missing = wordings(&server, "ghost").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        missing.message().contains("\"ghost\""),
        "{}",
        missing.message()
    );
    let bad = wordings(&server, "Not An Id").await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("consent_id"), "{}", bad.message());
    server.stop().await;
}

#[tokio::test]
async fn a_new_brand_bumps_every_consent_whose_scope_it_widens() {
    let server = TestServer::start().await;
    let mut spec = catalog(&server).await;
    spec.brands.push("nova".into());
    let mut cat = server.catalog().await;
    let applied = cat.apply_catalog(spec).await.unwrap().into_inner();
    // marketing lists no brands: it now covers nova too. Its per-brand
    // children list theirs. surveys lists channels only: all brands.
    assert_eq!(version(&applied, "marketing"), 2);
    assert_eq!(version(&applied, "surveys"), 2);
    for child in [
        "marketing.acme",
        "marketing.acme.email",
        "marketing.zenith.sms",
    ] {
        assert_eq!(version(&applied, child), 1, "{child}");
    }
    let marketing = wordings(&server, "marketing").await.unwrap();
    assert_eq!(marketing[1].brands, ["acme", "nova", "orbit", "zenith"]);
    server.stop().await;
}

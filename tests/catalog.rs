//! ApplyCatalog / GetCatalog: atomic replace, validation, versions, deletion.

mod common;

use common::*;
use consentd::pb;
use tonic::Code;

#[tokio::test]
async fn versions_bump_on_text_or_scope_change_only() {
    let server = TestServer::start().await;
    let mut cat = server.catalog().await;
    let v1 = cat
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v1.default_purpose, "marketing");
    assert!(v1.consents.iter().all(|c| c.version == 1));

    let mut spec = v1.clone();
    let find = |s: &mut pb::CatalogSpec, id: &str| -> usize {
        s.consents.iter().position(|c| c.id == id).unwrap()
    };
    let i = find(&mut spec, "marketing.acme");
    spec.consents[i].text = "New wording shown on the form.".into();
    let j = find(&mut spec, "marketing.orbit");
    spec.consents[j].title = "Only the title changes".into();
    let k = find(&mut spec, "marketing.zenith.sms");
    spec.consents[k].channels = vec!["sms".into(), "push".into()];
    let applied = cat.apply_catalog(spec).await.unwrap().into_inner();
    let version = |id: &str| {
        applied
            .consents
            .iter()
            .find(|c| c.id == id)
            .unwrap()
            .version
    };
    assert_eq!(version("marketing.acme"), 2);
    assert_eq!(version("marketing.orbit"), 1);
    assert_eq!(version("marketing.zenith.sms"), 2);
    assert_eq!(version("marketing"), 1);

    // A grant records the version in force.
    let mut cons = server.consents().await;
    let r = cons
        .grant(change("c", "marketing.acme", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state.unwrap().version, 2);
    server.stop().await;
}

#[tokio::test]
async fn an_invalid_catalog_changes_nothing() {
    let server = TestServer::start().await;
    let mut cat = server.catalog().await;
    let before = cat
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner();

    type Mutation = Box<dyn Fn(&mut pb::CatalogSpec)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "parent",
            Box::new(|s| s.consents[1].parent = "ghost".into()),
        ),
        (
            "cycle",
            Box::new(|s| s.consents[0].parent = "marketing.acme.email".into()),
        ),
        (
            "outside the parent",
            Box::new(|s| s.consents[2].brands = vec!["zenith".into()]),
        ),
        (
            "not declared",
            Box::new(|s| s.consents[0].channels = vec!["fax".into()]),
        ),
        (
            "declared twice",
            Box::new(|s| s.consents[1].id = "marketing".into()),
        ),
        (
            "default_purpose",
            Box::new(|s| s.default_purpose = "marketing.acme".into()),
        ),
        ("valid id", Box::new(|s| s.brands.push("Bad Brand".into()))),
        (
            "channel_addresses[\"fax\"]: \"fax\" is not a declared channel",
            Box::new(|s| {
                s.channel_addresses
                    .insert("fax".into(), pb::AddressKind::Phone as i32);
            }),
        ),
        (
            "channel_addresses[\"push\"]: 0 is not an address kind",
            Box::new(|s| {
                s.channel_addresses
                    .insert("push".into(), pb::AddressKind::Unspecified as i32);
            }),
        ),
    ];
    for (needle, mutate) in cases {
        let mut spec = before.clone();
        spec.channels.push("whatsapp".into()); // a valid change that must not land either
        mutate(&mut spec);
        let err = cat.apply_catalog(spec).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{needle}");
        assert!(
            err.message().contains(needle),
            "{needle}: {}",
            err.message()
        );
    }
    let after = cat
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, before);
    // The example catalog's channel → address kinds, as the wire says them.
    assert_eq!(
        before.channel_addresses,
        [
            ("email".to_owned(), pb::AddressKind::Email as i32),
            ("sms".to_owned(), pb::AddressKind::Phone as i32)
        ]
        .into()
    );
    server.stop().await;
}

#[tokio::test]
async fn deleting_a_held_consent_is_refused_retire_it_instead() {
    let server = TestServer::start().await;
    let mut cat = server.catalog().await;
    let mut cons = server.consents().await;
    let spec = cat
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    cons.grant(change("c", "marketing.orbit", None))
        .await
        .unwrap();

    let mut without_orbit = spec.clone();
    without_orbit.consents.retain(|c| c.id != "marketing.orbit");
    let err = cat.apply_catalog(without_orbit).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("marketing.orbit"),
        "{}",
        err.message()
    );

    // A consent nobody holds can go.
    let mut without_surveys = spec.clone();
    without_surveys.consents.retain(|c| c.id != "surveys");
    let applied = cat
        .apply_catalog(without_surveys)
        .await
        .unwrap()
        .into_inner();
    assert!(applied.consents.iter().all(|c| c.id != "surveys"));
    let mut elig = server.eligibility().await;
    let mut req = check("c", "email", "acme");
    req.purpose = "surveys".into();
    let err = elig.can_send(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("purpose"));
    server.stop().await;
}

#[tokio::test]
async fn channel_address_kinds_survive_a_restart_and_round_trip_the_toml() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    server.stop().await;
    // Restarted without a catalog file: the one in the store.
    let server = TestServer::start_in(dir.path(), None).await;
    let spec = server
        .catalog()
        .await
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        spec.channel_addresses.get("sms"),
        Some(&(pb::AddressKind::Phone as i32))
    );
    // The TOML form an operator edits says the kinds by name.
    let domain = consentd::grpc::catalog_from(spec).unwrap();
    let toml = toml::to_string_pretty(&domain).unwrap();
    assert!(toml.contains("[channel_addresses]"), "{toml}");
    assert!(toml.contains("sms = \"PHONE\""), "{toml}");
    server.stop().await;
}

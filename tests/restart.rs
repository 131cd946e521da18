//! Persistence: everything acknowledged is there after a restart.

mod common;

use common::*;
use consentd::pb::{self, Reason};

#[tokio::test]
async fn states_history_keys_catalog_and_sequence_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let mut cons = server.consents().await;
    let t = now() - 100;
    cons.grant(change("anna", "marketing", Some(t)))
        .await
        .unwrap();
    cons.withdraw(change("anna", "marketing.acme", Some(t + 1)))
        .await
        .unwrap();
    let mut keyed = change("bob", "surveys", Some(t));
    keyed.idempotency_key = "import-7:row-1".into();
    let keyed_seq = cons
        .grant(keyed.clone())
        .await
        .unwrap()
        .into_inner()
        .sequence;
    // A catalog change made over gRPC, not from the file.
    let mut cat = server.catalog().await;
    let mut spec = cat
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    spec.brands.push("nova".into());
    cat.apply_catalog(spec).await.unwrap();
    let last = cons
        .grant(change("carl", "marketing", None))
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    server.stop().await;

    // Restart without --catalog: the stored catalog is in force.
    let server = TestServer::start_in(dir.path(), None).await;
    let mut elig = server.eligibility().await;
    let mut cons = server.consents().await;
    assert_eq!(
        can_send(&mut elig, "anna", "email", "acme").await.1,
        Reason::Withdrawn
    );
    assert_eq!(
        can_send(&mut elig, "anna", "email", "zenith").await.1,
        Reason::Granted
    );
    assert_eq!(
        can_send(&mut elig, "carl", "sms", "nova").await.1,
        Reason::Granted
    );
    let h = cons
        .get_history(pb::GetHistoryRequest {
            contact_id: "anna".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(h.into_inner().events.len(), 2);

    let again = cons.grant(keyed).await.unwrap().into_inner();
    assert!(
        !again.applied,
        "the idempotency key is remembered across restarts"
    );
    assert_eq!(again.sequence, keyed_seq);
    let next = cons
        .grant(change("dora", "marketing", None))
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    assert!(
        next.sequence > last.sequence,
        "sequences keep increasing across restarts"
    );
    let at = |s: &pb::ConsentState| s.recorded_at.map(|t| (t.seconds, t.nanos));
    assert!(at(&next) > at(&last), "so do receipt times");

    // Held consents are still known to be held: deleting one is refused.
    let mut cat = server.catalog().await;
    let mut spec = cat
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    spec.consents.retain(|c| c.id != "surveys");
    let err = cat.apply_catalog(spec).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("surveys"), "{}", err.message());
    server.stop().await;
}

#[tokio::test]
async fn a_start_catalog_that_fails_to_apply_leaves_the_store_closed_and_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let mut cons = server.consents().await;
    cons.grant(change("anna", "marketing", None)).await.unwrap();
    server.stop().await;

    // A catalog that deletes a consent Anna holds: refused at start.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "channels = [\"email\"]\n").unwrap();
    let mut config = for_this_run(consentd::Config::ephemeral(dir.path()));
    config.catalog = Some(bad.clone());
    let err = consentd::server::Server::bind(&config)
        .await
        .err()
        .expect("the catalog is refused");
    assert!(format!("{err:#}").contains("held by contacts"), "{err:#}");

    // The writer was closed with it: the same data dir opens at once, as it was.
    let server = TestServer::start_in(dir.path(), None).await;
    let events = history(&server, "anna").await;
    assert_eq!(events.len(), 1);
    let mut cat = server.catalog().await;
    let spec = cat
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(spec.consents.iter().any(|c| c.id == "marketing"));
    server.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn data_files_and_keys_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    cons.grant(change("anna", "marketing", None)).await.unwrap();
    for entry in std::fs::read_dir(&server.data_dir).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?} is {mode:o}", entry.file_name());
    }
    server.stop().await;
}

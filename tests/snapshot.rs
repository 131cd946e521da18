//! ExportStates (DESIGN.md §10): a snapshot at one sequence, then a Watch
//! from that sequence, reproduce every GetContact, also when writes,
//! address changes and an erasure land while the snapshot is being read;
//! the purpose filter; bad requests name the field.

mod common;

use common::replica::*;
use common::*;
use consentd::pb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_then_watch_reproduces_every_contact_while_writes_go_on() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(server_dir.path(), Some(example_catalog_path())).await;
    let mut cons = server.consents().await;
    // More contacts than one page of the snapshot (256): writes land while
    // later pages are still to be read.
    let contacts: Vec<String> = (0..700).map(|i| format!("c-{i:04}")).collect();
    for (i, c) in contacts.iter().enumerate() {
        let consent = if i % 3 == 0 {
            "marketing.acme"
        } else {
            "marketing"
        };
        cons.grant(change(c, consent, Some(now() - 3600)))
            .await
            .unwrap();
    }
    for c in &contacts[..20] {
        cons.withdraw(change(c, "marketing", Some(now() - 1800)))
            .await
            .unwrap();
        cons.grant(change(c, "surveys", Some(now() - 1800)))
            .await
            .unwrap();
    }
    set_addresses(&mut cons, "c-0001", &["one@example.com", "two@example.com"]).await;
    set_addresses(&mut cons, "c-0690", &["late@example.com"]).await;
    erase(&mut cons, "c-0002").await;

    let mut writer = server.consents().await;
    let mut all = contacts.clone();
    all.push("d-new".into());
    let (mut replica, at) = snapshot(&mut cons, &[], async || {
        // After the first row, before the last pages are read: newer
        // states, a new address list, an erasure, a new contact, an older
        // change that does not decide.
        for c in &contacts[680..] {
            writer
                .withdraw(change(c, "marketing", Some(now())))
                .await
                .unwrap();
        }
        writer
            .grant(change("c-0650", "marketing", Some(now() - 7200)))
            .await
            .unwrap();
        set_addresses(&mut writer, "c-0690", &["new@example.com"]).await;
        erase(&mut writer, "c-0600").await;
        erase(&mut writer, "c-0001").await;
        writer
            .grant(change("d-new", "marketing", None))
            .await
            .unwrap();
    })
    .await;
    assert!(!replica.contains_key("c-0002"), "erased before: not in it");
    // The rows stand at the snapshot's sequence, not later.
    let late = &replica["c-0698"].states["marketing"];
    assert_eq!(late.action, pb::Action::Grant as i32);
    assert!(late.sequence <= at);
    assert_eq!(
        replica["c-0690"].addresses[0].0.value, "late@example.com",
        "its addresses as of the snapshot"
    );
    let head = writer
        .grant(change("c-0003", "surveys", None))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    follow(&server, &mut replica, at, head).await;
    assert!(
        !replica.contains_key("c-0600"),
        "an erasure after it, by hash"
    );
    assert_reproduces(&mut cons, &replica, &all).await;
    server.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purposes_filter_states_and_a_bad_purpose_is_named() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(server_dir.path(), Some(example_catalog_path())).await;
    let mut cons = server.consents().await;
    cons.grant(change("ann", "marketing", None)).await.unwrap();
    cons.grant(change("ann", "surveys", None)).await.unwrap();
    cons.grant(change("bob", "marketing.acme", None))
        .await
        .unwrap();
    let (rows, at) = snapshot(&mut cons, &["surveys"], async || {}).await;
    assert!(at >= 3);
    assert_eq!(rows.len(), 1, "bob holds nothing of surveys");
    assert_eq!(
        rows["ann"].states.keys().collect::<Vec<_>>(),
        vec!["surveys"]
    );
    let err = cons
        .export_states(pb::ExportStatesRequest {
            purposes: vec!["marketing.acme".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("purposes[0]"), "{}", err.message());
    // An empty store: no rows, still its sequence and `complete`.
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = TestServer::start_in(empty_dir.path(), Some(example_catalog_path())).await;
    let (rows, at) = snapshot(&mut empty.consents().await, &[], async || {}).await;
    assert!(rows.is_empty());
    assert_eq!(at, 1, "the catalog it started with took sequence 1");
    empty.finish().await.unwrap();
    server.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consentctl_export_all_writes_json_lines_or_csv_at_one_sequence() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(server_dir.path(), Some(example_catalog_path())).await;
    let mut cons = server.consents().await;
    cons.grant(change("ann", "marketing", None)).await.unwrap();
    cons.grant(change("ann", "surveys", None)).await.unwrap();
    cons.withdraw(change("bob", "marketing", None))
        .await
        .unwrap();
    let last = set_addresses(&mut cons, "bob", &["Bob@Example.com"]).await;
    let run = |args: &[&str]| {
        let args: Vec<&str> = ["export"].iter().chain(args).copied().collect();
        let (ok, out, err) = consentctl(&server, &args, &[]);
        assert!(ok, "{err}");
        assert!(err.contains(&format!("sequence {last}")), "{err}");
        out
    };
    let lines: Vec<serde_json::Value> = run(&["--all"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["contact_id"], "ann");
    assert_eq!(lines[0]["states"].as_array().unwrap().len(), 2);
    assert_eq!(lines[1]["contact_id"], "bob");
    assert_eq!(lines[1]["states"][0]["action"], "WITHDRAW");
    assert_eq!(lines[1]["addresses"][0]["value"], "bob@example.com");
    assert_eq!(lines[1]["addresses"][0]["hash"].as_str().unwrap().len(), 64);
    assert_eq!(
        lines[2],
        serde_json::json!({"complete": true, "sequence": last})
    );

    let csv = run(&["--all", "--format", "csv", "--purpose", "surveys"]);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert!(rows[0].starts_with("contact_id,consent_id,action,"));
    assert!(rows[1].starts_with("ann,surveys,GRANT,"), "{}", rows[1]);
    assert!(rows[1].ends_with(&format!(",{last}")), "{}", rows[1]);
    server.finish().await.unwrap();
}

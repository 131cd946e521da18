//! What only the PostgreSQL store has: a database that goes away and comes
//! back, and erasure measured in its tables.

use std::time::Duration;

use consentd::pb::{self, Reason};
use tonic_health::pb::health_check_response::ServingStatus;

#[path = "../common/mod.rs"]
mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_pauses_writes_while_checks_go_on() {
    // A server of its own: the shared one stays up for the other tests.
    let pg = Throwaway::start().expect("a PostgreSQL server");
    if !pg.can_restart() {
        println!("SKIPPED: an external CONSENTD_TEST_DATABASE_URL cannot be restarted by the test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(dir.path());
    config.catalog = Some(example_catalog_path());
    config.store = pg.fresh_database();
    config.store_timeout_ms = 2_000;
    let server = TestServer::start_with(config).await;
    let mut cons = server.consents().await;
    let mut elig = server.eligibility().await;
    cons.grant(change("anna", "marketing", None)).await.unwrap();
    cons.withdraw(change("bob", "marketing", None))
        .await
        .unwrap();

    pg.stop_server();
    // A write now: refused with UNAVAILABLE (never a hang past the store's
    // timeout), and nothing acknowledged.
    let started = std::time::Instant::now();
    let refused = cons
        .grant(change("bob", "marketing", None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // CanSend answers on from memory: anna yes, bob (withdrawn) no.
    assert!(can_send(&mut elig, "anna", "email", "acme").await.0);
    let (allowed, reason, _) = can_send(&mut elig, "bob", "email", "acme").await;
    assert!(!allowed);
    assert_eq!(reason, Reason::Withdrawn);
    // Health: writes NOT_SERVING, checks SERVING.
    wait_health(
        &server,
        "consent.v1.ConsentsService",
        ServingStatus::NotServing,
    )
    .await;
    assert_eq!(
        health_of(&server, "consent.v1.CatalogService").await,
        Some(ServingStatus::NotServing)
    );
    assert_eq!(
        health_of(&server, "consent.v1.EligibilityService").await,
        Some(ServingStatus::Serving)
    );
    // Reads that need the store say so.
    let read = cons
        .get_contact(pb::GetContactRequest {
            as_of: None,
            contact_id: "anna".into(),
            min_sequence: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(read.code(), tonic::Code::Unavailable, "{read:?}");

    // The database comes back: the server reconnects by itself.
    pg.start_server().unwrap();
    wait_health(
        &server,
        "consent.v1.ConsentsService",
        ServingStatus::Serving,
    )
    .await;
    let granted = cons
        .grant(change("bob", "marketing", None))
        .await
        .unwrap()
        .into_inner();
    assert!(granted.applied);
    assert!(can_send(&mut elig, "bob", "email", "acme").await.0);
    assert_eq!(history(&server, "bob").await.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn erasure_leaves_no_plaintext_in_any_table() {
    const ERIN: &str = "erin-pg@example.com";
    const ERIN_IP: &str = "203.0.113.99-PG-ERASEME";
    let server = TestServer::start().await;
    let url = database_for(&server.data_dir);
    let mut cons = server.consents().await;
    let mut grant = change(ERIN, "marketing", None);
    grant.evidence.insert("ip".into(), ERIN_IP.into());
    grant.idempotency_key = format!("signup:{ERIN}");
    cons.grant(grant).await.unwrap();
    cons.grant(change("fay-stays@example.com", "marketing", None))
        .await
        .unwrap();
    let before = tables_text(&url).await;
    assert!(before.contains(ERIN) && before.contains(ERIN_IP));

    cons.erase_contact(pb::EraseContactRequest {
        contact_id: ERIN.into(),
        reason: "ticket 12".into(),
    })
    .await
    .unwrap();
    // Once EraseContact has answered, no row holds the contact.
    let after = tables_text(&url).await;
    assert!(!after.contains(ERIN), "the contact id is still in a table");
    assert!(!after.contains(ERIN_IP), "the evidence is still in a table");
    assert!(after.contains("fay-stays@example.com"));
    assert!(
        after.contains("ticket 12"),
        "the tombstone keeps the reason"
    );
    let mut elig = server.eligibility().await;
    let (allowed, reason, _) = can_send(&mut elig, ERIN, "email", "acme").await;
    assert!(!allowed);
    assert_eq!(reason, Reason::NoConsent);
    server.stop().await;
}

async fn export(server: &TestServer, who: &str) -> pb::ExportContactResponse {
    let mut c = server.consents().await;
    let mut e = c
        .export_contact(pb::ExportContactRequest {
            contact_id: who.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // When it was made is the one field that may differ, and the chain:
    // the target links its own from the move (both verify on their own).
    e.exported_at = None;
    for event in &mut e.events {
        assert_eq!(event.chain.len(), 32, "every event is linked");
        event.chain.clear();
    }
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consentctl_migrate_moves_a_redb_store_to_postgres_whole() {
    // A server on redb (explicitly: this crate otherwise maps redb to
    // PostgreSQL), with history, a key, an erasure, two wording versions
    // and a link minted.
    let dir = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(dir.path());
    config.catalog = Some(example_catalog_path());
    let redb = consentd::store::RedbStore::open(dir.path()).unwrap();
    let a = TestServer::start_with_store(config, std::sync::Arc::new(redb)).await;
    let mut cons = a.consents().await;
    let t = now() - 3600;
    let mut grant = change("anna", "marketing", Some(t));
    grant.idempotency_key = "signup:anna".into();
    grant.evidence.insert("ip".into(), "203.0.113.7".into());
    let first = cons.grant(grant.clone()).await.unwrap().into_inner();
    cons.withdraw(change("anna", "marketing.acme", Some(t + 1)))
        .await
        .unwrap();
    // A CRM's grant over her withdrawal: pending, with its record.
    let mut resync = change("anna", "marketing", None);
    resync.source = pb::Source::Api as i32;
    assert!(cons.grant(resync).await.unwrap().into_inner().pending);
    cons.grant(change("bob", "marketing", Some(t)))
        .await
        .unwrap();
    cons.grant(change("carl", "marketing", Some(t)))
        .await
        .unwrap();
    cons.erase_contact(pb::EraseContactRequest {
        contact_id: "carl".into(),
        reason: "ticket 31".into(),
    })
    .await
    .unwrap();
    reword(&a, "surveys", "Surveys, second wording").await;
    // Her addresses (marks in her history), and an opt-out on one of them.
    let mailbox = pb::Address {
        kind: pb::AddressKind::Email as i32,
        value: "anna@example.com".into(),
    };
    cons.set_addresses(pb::SetAddressesRequest {
        contact_id: "anna".into(),
        addresses: vec![mailbox.clone()],
    })
    .await
    .unwrap();
    let mut stop = change("", "marketing", None);
    stop.address = Some(mailbox);
    stop.source = pb::Source::UnsubscribeLink as i32;
    cons.withdraw(stop).await.unwrap();
    let mut cat = a.catalog().await;
    let link = unsubscribe_link(&a, "bob", "email", "acme").await;
    let before = (export(&a, "anna").await, export(&a, "bob").await);
    let wordings_before = cat
        .get_wordings(pb::GetWordingsRequest::default())
        .await
        .unwrap()
        .into_inner();
    a.stop().await;

    // Move it.
    let url = Throwaway::shared().unwrap().fresh_database();
    let ctl = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_consentctl"))
            .args(args)
            .output()
            .unwrap()
    };
    let from = format!("redb:{}", dir.path().display());
    let out = ctl(&["migrate", "--from", &from, "--to", &url]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verified record by record"), "{stdout}");
    assert!(stdout.contains("1 tombstones"), "{stdout}");
    // A second run finds the target full and changes nothing.
    let again = ctl(&["migrate", "--from", &from, "--to", &url]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // The same server on PostgreSQL sees the same world.
    let other = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(other.path());
    config.store = url.clone();
    let b = TestServer::start_with(config).await;
    assert_eq!((export(&b, "anna").await, export(&b, "bob").await), before);
    assert_eq!(before.0.addresses.len(), 1, "the export lists her address");
    // Her address and its opt-out moved: a check without `to` refuses.
    let mut elig = b.eligibility().await;
    assert_eq!(
        can_send(&mut elig, "anna", "email", "zenith").await.1,
        pb::Reason::AddressWithdrawn
    );
    let mut cat = b.catalog().await;
    let wordings_after = cat
        .get_wordings(pb::GetWordingsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(wordings_after, wordings_before);
    let mut cons = b.consents().await;
    // The pending grant moved with its record.
    let anna = cons
        .get_contact(pb::GetContactRequest {
            as_of: None,
            contact_id: "anna".into(),
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (anna.pending.len(), anna.pending[0].consent_id.as_str()),
        (1, "marketing")
    );
    // The key still replays, with the sequence it first got.
    let replay = cons.grant(grant).await.unwrap().into_inner();
    assert_eq!((replay.applied, replay.sequence), (false, first.sequence));
    // The erasure holds: an old grant of carl's is refused.
    let stale = cons
        .grant(change("carl", "marketing", Some(t)))
        .await
        .unwrap()
        .into_inner();
    assert!(!stale.applied);
    // The link minted on redb withdraws on PostgreSQL.
    let path = &link.url[link.url.find("/u/").unwrap()..];
    let (status, _, _) = http(
        b.http_addr,
        "POST",
        path,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(status, 200);
    let mut elig = b.eligibility().await;
    assert!(!can_send(&mut elig, "bob", "email", "acme").await.0);
    b.stop().await;

    // And back, PostgreSQL → redb, with what B recorded since.
    let back = tempfile::tempdir().unwrap();
    let to = format!("redb:{}", back.path().display());
    let out = ctl(&["--json", "migrate", "--from", &url, "--to", &to]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verified"], true);
    assert_eq!(report["tombstones"], 1);
    assert_eq!(report["link_keys"], 1);
    // Closed cleanly: the redb file alone holds every commit (what follows
    // is read without the log), and it says schema 3, which any build of
    // that layout opens (4 would say its log may hold commits).
    let _ = std::fs::remove_file(back.path().join("consentd.log"));
    {
        use redb::ReadableDatabase;
        const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
        let db = redb::Database::open(back.path().join("consentd.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        let schema = txn.open_table(META).unwrap().get("schema_version").unwrap();
        assert_eq!(schema.unwrap().value(), 3u32.to_le_bytes());
    }
    let c = TestServer::start_with_store(
        consentd::Config::ephemeral(back.path()),
        std::sync::Arc::new(consentd::store::RedbStore::open(back.path()).unwrap()),
    )
    .await;
    let mut elig = c.eligibility().await;
    assert!(!can_send(&mut elig, "bob", "email", "acme").await.0);
    // Her consent, her address and its opt-out came back too.
    assert!(can_send(&mut elig, "anna", "sms", "zenith").await.0);
    assert_eq!(
        can_send(&mut elig, "anna", "email", "zenith").await.1,
        pb::Reason::AddressWithdrawn
    );
    c.stop().await;
}

/// Every commit updates the one `meta` row (the commit lock, the counter,
/// the chain head): it must stay on its page, pruned as it is read, or
/// each commit moves it to a new page and the lock's read slows with every
/// page (what a chain head 32 bytes wide once did: 4 MB after 3,000
/// commits, a quarter of the grants/s).
#[tokio::test]
async fn the_commit_lock_row_stays_on_one_page_through_many_commits() {
    let server = TestServer::start().await;
    let url = database_for(&server.data_dir);
    let mut cons = server.consents().await;
    for i in 0..1_000 {
        let consent = if i % 2 == 0 {
            "marketing"
        } else {
            "marketing.acme"
        };
        cons.grant(change(&format!("page-{i}"), consent, None))
            .await
            .unwrap();
    }
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT pg_relation_size('consentd.meta'), pg_column_size(m.*)
             FROM consentd.meta m",
            &[],
        )
        .await
        .unwrap();
    let (bytes, width): (i64, i32) = (row.get(0), row.get(1));
    assert!(
        width > 1_100,
        "a row as wide as the one that moved: {width} bytes"
    );
    assert!(
        bytes <= 2 * 8192,
        "meta spread over {} pages after 1,000 commits",
        bytes / 8192
    );
    server.stop().await;
}

/// `/metrics` says where a PostgreSQL commit's time goes, step by step:
/// every group commit that wrote counts once in each step, and the steps
/// with a round trip took time.
#[tokio::test]
async fn metrics_time_each_step_of_a_commit() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    for i in 0..5 {
        cons.grant(change(&format!("steps-{i}"), "marketing", None))
            .await
            .unwrap();
    }
    let text = metrics(&server).await;
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    let commits = value("consentd_commits_total");
    assert!(commits >= 5.0, "one commit per grant, sent one at a time");
    for phase in ["begin", "lock", "view", "rule", "write", "commit"] {
        let count = value(&format!(
            "consentd_store_commit_phase_seconds_count{{phase=\"{phase}\"}}"
        ));
        // The catalog's apply at start-up commits too, untimed.
        assert!(
            count >= 5.0 && count <= commits,
            "{phase}: {count} of {commits} commits"
        );
        let inf = value(&format!(
            "consentd_store_commit_phase_seconds_bucket{{phase=\"{phase}\",le=\"+Inf\"}}"
        ));
        assert_eq!(inf, count, "{phase}: the +Inf bucket holds every one");
    }
    for phase in ["begin", "lock", "write", "commit"] {
        let sum = value(&format!(
            "consentd_store_commit_phase_seconds_sum{{phase=\"{phase}\"}}"
        ));
        assert!(sum > 0.0, "{phase}: a round trip takes time");
    }
    server.stop().await;
}

/// Run only as the child of the test below: starts a throwaway server,
/// prints its temp dir and port, and ends without dropping it, as a
/// server kept in a static ends with its test binary.
#[test]
#[ignore = "run by a_throwaway_server_leaves_nothing_behind_its_process"]
fn throwaway_child() {
    if std::env::var_os("CONSENTD_THROWAWAY_CHILD").is_none() {
        return;
    }
    let pg = Throwaway::start().expect("a PostgreSQL server");
    let dir = pg.temp_dir().expect("a server of its own").to_path_buf();
    println!("THROWAWAY {} {}", pg.port(), dir.display());
    std::mem::forget(pg);
}

#[test]
fn a_throwaway_server_leaves_nothing_behind_its_process() {
    if common::throwaway::test_database_url().is_some() {
        println!("SKIPPED: with CONSENTD_TEST_DATABASE_URL the tests start no server");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "postgres_only::throwaway_child",
            "--ignored",
            "--nocapture",
        ])
        .env("CONSENTD_THROWAWAY_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the child failed: {stdout}");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("THROWAWAY "))
        .unwrap_or_else(|| panic!("the child said where its server is: {stdout}"));
    let (port, dir) = line.split_once(' ').unwrap();
    let dir = std::path::PathBuf::from(dir);
    assert!(dir.starts_with(std::env::temp_dir()), "{dir:?}");
    // The child is gone: its watchdog stops the server (a fast shutdown)
    // and removes the temp dir, data and log with it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while dir.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !dir.exists(),
        "{dir:?} is still there 30 s after its process ended"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_err(),
        "the server on port {port} still takes connections"
    );
}

//! EraseContact (DESIGN.md rule 5): the person is forgotten, stays
//! forgotten across restarts, and no byte of them remains in the data files.

mod common;

use common::*;
use consentd::pb::{self, Reason};

const ANNA: &str = "anna-eraseme@example.com";
const MARKER: &str = "198.51.100.77-ERASEME";

/// Whether the store of the data dir holds `needle` anywhere: the bytes of
/// its files (redb, freed pages included), or, in the PostgreSQL run, the
/// rows of its tables.
async fn store_holds(dir: &std::path::Path, needle: &str) -> bool {
    if on_postgres() {
        return tables_text(&database_for(dir)).await.contains(needle);
    }
    std::fs::read_dir(dir).unwrap().any(|e| {
        let bytes = std::fs::read(e.unwrap().path()).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    })
}

#[tokio::test]
async fn erasure_forgets_refuses_stale_grants_and_leaves_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let mut cons = server.consents().await;
    let t = now() - 3600;
    let mut grant = change(ANNA, "marketing", Some(t));
    grant.evidence.insert("ip".into(), MARKER.into());
    grant.idempotency_key = format!("signup:{ANNA}");
    cons.grant(grant).await.unwrap();
    cons.withdraw(change(ANNA, "marketing.acme", Some(t + 1)))
        .await
        .unwrap();
    cons.grant(change("bob-keeps@example.com", "marketing", Some(t)))
        .await
        .unwrap();
    let link = cons
        .issue_unsubscribe_link(pb::IssueUnsubscribeLinkRequest {
            to: None,
            contact_id: ANNA.into(),
            channel: "sms".into(),
            brand: "zenith".into(),
            purpose: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    let erased = cons
        .erase_contact(pb::EraseContactRequest {
            contact_id: ANNA.into(),
            reason: "GDPR art. 17 request, ticket 4711".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(erased.erased_at.unwrap().seconds >= now() - 60);

    let mut elig = server.eligibility().await;
    assert_eq!(
        can_send(&mut elig, ANNA, "sms", "zenith").await.1,
        Reason::NoConsent
    );
    assert!(history(&server, ANNA).await.is_empty());
    let states = cons
        .get_contact(pb::GetContactRequest {
            as_of: None,
            contact_id: ANNA.into(),
            min_sequence: 0,
        })
        .await
        .unwrap();
    assert!(states.into_inner().states.is_empty());

    // A stale re-import of the old grant is refused and records nothing.
    let stale = cons
        .grant(change(ANNA, "marketing", Some(t + 5)))
        .await
        .unwrap()
        .into_inner();
    assert!(!stale.applied);
    assert!(history(&server, ANNA).await.is_empty());

    // A link minted before the erasure confirms and records nothing: a
    // mail client's one-click POST gets a 200, with the expired page.
    let path = link_path(&server, &link.url);
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, _, page) = http(
        server.http_addr,
        "POST",
        &path,
        &form,
        "List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(status, 200);
    assert!(page.contains("expired"), "{page}");
    assert!(history(&server, ANNA).await.is_empty());

    // Everyone else is untouched.
    assert_eq!(
        can_send(&mut elig, "bob-keeps@example.com", "sms", "zenith")
            .await
            .1,
        Reason::Granted
    );
    server.stop().await;

    // After a restart no byte of Anna remains in the data files.
    TestServer::start_in(dir.path(), None).await.stop().await;
    assert!(
        store_holds(dir.path(), "bob-keeps@example.com").await,
        "the scan sees live data"
    );
    assert!(
        !store_holds(dir.path(), ANNA).await,
        "contact id left in the data files"
    );
    assert!(
        !store_holds(dir.path(), MARKER).await,
        "evidence left in the data files"
    );

    // The tombstone survives: stale still refused, a fresh grant accepted.
    let server = TestServer::start_in(dir.path(), None).await;
    let mut cons = server.consents().await;
    let stale = cons
        .grant(change(ANNA, "marketing", Some(t + 10)))
        .await
        .unwrap()
        .into_inner();
    assert!(!stale.applied);
    let fresh = cons
        .grant(change(ANNA, "marketing.zenith", None))
        .await
        .unwrap()
        .into_inner();
    assert!(fresh.applied);
    let mut elig = server.eligibility().await;
    assert_eq!(
        can_send(&mut elig, ANNA, "sms", "zenith").await.1,
        Reason::Granted
    );
    assert_eq!(
        can_send(&mut elig, "bob-keeps@example.com", "email", "acme")
            .await
            .1,
        Reason::Granted
    );
    assert_eq!(history(&server, ANNA).await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn erasing_an_unknown_contact_still_guards_against_stale_imports() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    cons.erase_contact(pb::EraseContactRequest {
        contact_id: "never-seen".into(),
        reason: String::new(),
    })
    .await
    .unwrap();
    let stale = cons
        .grant(change("never-seen", "marketing", Some(now() - 100)))
        .await
        .unwrap()
        .into_inner();
    assert!(!stale.applied);
    let err = cons
        .erase_contact(pb::EraseContactRequest {
            contact_id: String::new(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn no_plaintext_remains_within_60_seconds_while_the_server_runs() {
    const ERIN: &str = "erin-online-erase@example.com";
    const ERIN_IP: &str = "203.0.113.99-ERIN-ONLINE";
    // The default configuration: the purge follows the erasure by 10 s.
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    let mut grant = change(ERIN, "marketing", Some(now() - 60));
    grant.evidence.insert("ip".into(), ERIN_IP.into());
    cons.grant(grant).await.unwrap();
    // A withdrawal she made, then a CRM's grant over it: a pending grant,
    // which the store keeps with her id until the erasure.
    cons.withdraw(change(ERIN, "marketing.acme", None))
        .await
        .unwrap();
    let mut resync = change(ERIN, "marketing", None);
    resync.source = pb::Source::Api as i32;
    assert!(cons.grant(resync).await.unwrap().into_inner().pending);
    cons.grant(change("fay-stays@example.com", "marketing", None))
        .await
        .unwrap();
    cons.erase_contact(pb::EraseContactRequest {
        contact_id: ERIN.into(),
        reason: "ticket 9".into(),
    })
    .await
    .unwrap();
    let erased = std::time::Instant::now();
    // redb keeps freed pages until the rewrite (PostgreSQL's rows are gone
    // at once: its dead row versions are not readable as rows).
    if !on_postgres() {
        assert!(
            store_holds(&server.data_dir, ERIN_IP).await,
            "right after the erasure the bytes are still in freed pages"
        );
    }

    // The server keeps serving while the purge runs; poll until the files
    // are clean, for at most the 60 s the contract allows.
    let mut elig = server.eligibility().await;
    loop {
        assert!(
            can_send(&mut elig, "fay-stays@example.com", "email", "acme")
                .await
                .0
        );
        if !store_holds(&server.data_dir, ERIN).await
            && !store_holds(&server.data_dir, ERIN_IP).await
        {
            break;
        }
        assert!(
            erased.elapsed() < std::time::Duration::from_secs(60),
            "erased contact still in the data files after 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(store_holds(&server.data_dir, "fay-stays@example.com").await);
    // Writes go on in the rewritten file.
    cons.grant(change("gus-after@example.com", "marketing", None))
        .await
        .unwrap();
    assert_eq!(history(&server, "fay-stays@example.com").await.len(), 1);
    server.stop().await;
}

/// The path of the confirmation link a pending grant's answer carries.
fn confirmation_path(url: &str) -> String {
    url[url.find("/c/").expect("a confirmation link")..].to_owned()
}

/// Every page a link minted before an erasure opens: 410 and the expired
/// page, with no link to another page (DESIGN.md §8).
async fn all_expired(server: &TestServer, paths: &[&str]) {
    for path in paths {
        let (status, _, page) = http(server.http_addr, "GET", path, &[], "").await;
        assert_eq!(status, 410, "GET {path}: {page}");
        assert!(page.contains("expired"), "GET {path}: {page}");
        assert!(!page.contains("/p/"), "no preference link: {page}");
    }
}

#[tokio::test]
async fn links_minted_before_an_erasure_open_the_expired_page_and_record_nothing() {
    let server = TestServer::start().await;
    edit_catalog(&server, |s| {
        consent_mut(s, "marketing.zenith").double_opt_in = true
    })
    .await
    .unwrap();
    let mut cons = server.consents().await;
    cons.grant(change("erin", "marketing", Some(now() - 60)))
        .await
        .unwrap();
    let pending = cons
        .grant(change("erin", "marketing.zenith", None))
        .await
        .unwrap()
        .into_inner();
    assert!(pending.pending, "{pending:?}");
    let confirm = confirmation_path(&pending.confirmation_url);
    let unsubscribe = link_path(
        &server,
        &unsubscribe_link(&server, "erin", "email", "acme").await.url,
    );
    // The preference link the unsubscribe page shows, and one issued alone.
    let (_, _, page) = http(server.http_addr, "GET", &unsubscribe, &[], "").await;
    let shown = preference_path_in(&page);
    let issued = cons
        .issue_preference_link(pb::IssuePreferenceLinkRequest {
            contact_id: "erin".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let issued = link_path(&server, &issued);
    cons.erase_contact(pb::EraseContactRequest {
        contact_id: "erin".into(),
        reason: "asked".into(),
    })
    .await
    .unwrap();

    all_expired(&server, &[&unsubscribe, &shown, &issued, &confirm]).await;
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let version = format!("version={}", pending_version(&server).await);
    let posts: [(&str, &str, u16); 7] = [
        (&shown, "grant=marketing", 410),
        (&issued, "withdraw=marketing.acme", 410),
        (&confirm, &version, 410),
        (&confirm, "not_me=1", 410),
        (&unsubscribe, "scope=all", 410),
        (&unsubscribe, "scope=consent", 410),
        // A mail client's one-click POST: told so with a 200 (rule 4).
        (&unsubscribe, "List-Unsubscribe=One-Click", 200),
    ];
    for (path, fields, want) in posts {
        let (status, _, page) = http(server.http_addr, "POST", path, &form, fields).await;
        assert_eq!(status, want, "POST {path} {fields}: {page}");
        assert!(page.contains("expired"), "{fields}: {page}");
    }
    assert!(
        history(&server, "erin").await.is_empty(),
        "nothing recorded for her: not by the pages, not by a click"
    );
    let (allowed, reason, _) =
        can_send(&mut server.eligibility().await, "erin", "email", "acme").await;
    assert!(!allowed);
    assert_eq!(reason, pb::Reason::NoConsent);

    // Granted again since: the old unsubscribe link withdraws (rule 4), its
    // page offers no preference link; the other pages stay expired.
    cons.grant(change("erin", "marketing", None)).await.unwrap();
    let (status, _, page) = http(server.http_addr, "GET", &unsubscribe, &[], "").await;
    assert_eq!(status, 200, "{page}");
    assert!(!page.contains("/p/"), "{page}");
    all_expired(&server, &[&shown, &issued, &confirm]).await;
    let (status, _, page) = http(server.http_addr, "POST", &confirm, &form, &version).await;
    assert_eq!(status, 410, "{page}");
    let (status, _, page) = http(server.http_addr, "POST", &unsubscribe, &form, "scope=all").await;
    assert_eq!(status, 200, "{page}");
    let (allowed, reason, decided_by) =
        can_send(&mut server.eligibility().await, "erin", "email", "acme").await;
    assert!(!allowed);
    assert_eq!(
        (reason, decided_by.as_str()),
        (Reason::Withdrawn, "marketing")
    );
    let events = history(&server, "erin").await;
    assert_eq!(events.len(), 2, "the new grant and the click: {events:?}");
    server.stop().await;
}

/// The wording version of `marketing.zenith` in force.
async fn pending_version(server: &TestServer) -> u32 {
    let mut cat = server.catalog().await;
    let spec = cat
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    spec.consents
        .iter()
        .find(|c| c.id == "marketing.zenith")
        .unwrap()
        .version
}

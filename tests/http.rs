//! Unsubscribe links and the HTTP side, end to end over real sockets.

mod common;
#[path = "http/limits.rs"]
mod limits;

use common::*;
use consentd::pb::{self, Reason};
use tonic::Code;

#[tokio::test]
async fn get_changes_nothing_one_click_post_withdraws_exactly_the_most_specific() {
    let server = TestServer::start().await;
    let mut elig = server.eligibility().await;
    let mut cons = server.consents().await;
    cons.grant(change("anna", "marketing", Some(now() - 60)))
        .await
        .unwrap();

    let link = unsubscribe_link(&server, "anna", "email", "acme").await;
    assert_eq!(link.consent_id, "marketing.acme.email");
    let path = link_path(&server, &link.url);

    // A scanner's GET: a page, and nothing changes.
    let (status, head, body) = http(server.http_addr, "GET", &path, &[], "").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("The Acme newsletter") && body.contains("Acme Outdoor"),
        "the brand's display name: {body}"
    );
    // It links to anna's preference center, which opens on her states.
    let prefs = preference_path_in(&body);
    let (status, _, page) = http(server.http_addr, "GET", &prefs, &[], "").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("name=\"withdraw\" value=\"marketing\"") && page.contains("Acme Outdoor"),
        "her umbrella grant, the link's brand: {page}"
    );
    assert!(body.contains("<form method=\"post\">"));
    assert!(!head.to_ascii_lowercase().contains("set-cookie"));
    let (_, _, pl) = http(
        server.http_addr,
        "GET",
        &path,
        &[("Accept-Language", "pl-PL,pl;q=0.9")],
        "",
    )
    .await;
    assert!(pl.contains("lang=\"pl\"") && pl.contains("Wypisz"), "{pl}");
    assert_eq!(history(&server, "anna").await.len(), 1);
    assert!(can_send(&mut elig, "anna", "email", "acme").await.0);

    // RFC 8058 exactly as Gmail sends it.
    let gmail = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        (
            "User-Agent",
            "Mozilla/5.0 (compatible; Google-List-Unsubscribe)",
        ),
    ];
    let (status, head, body) = http(
        server.http_addr,
        "POST",
        &path,
        &gmail,
        "List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(!head.contains("Location:"), "no redirect");
    assert_eq!(
        can_send(&mut elig, "anna", "email", "acme").await,
        (false, Reason::Withdrawn, "marketing.acme.email".into())
    );
    assert!(
        can_send(&mut elig, "anna", "sms", "acme").await.0,
        "other channels untouched"
    );
    assert!(
        can_send(&mut elig, "anna", "email", "zenith").await.0,
        "other brands untouched"
    );

    let events = cons
        .get_history(pb::GetHistoryRequest {
            contact_id: "anna".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let last = events.last().unwrap();
    assert_eq!(last.source(), pb::Source::UnsubscribeLink);
    assert_eq!(
        last.evidence.get("ip").map(String::as_str),
        Some("127.0.0.1")
    );
    assert!(last.evidence["user_agent"].contains("Google-List-Unsubscribe"));

    // A replay is harmless.
    let (status, _, _) = http(
        server.http_addr,
        "POST",
        &path,
        &gmail,
        "List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(status, 200);
    assert!(!can_send(&mut elig, "anna", "email", "acme").await.0);
    assert!(can_send(&mut elig, "anna", "sms", "zenith").await.0);

    // The page's second button: everything in the purpose.
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, _, _) = http(server.http_addr, "POST", &path, &form, "scope=all").await;
    assert_eq!(status, 200);
    assert_eq!(
        can_send(&mut elig, "anna", "sms", "zenith").await,
        (false, Reason::Withdrawn, "marketing".into())
    );
    let (_, _, metrics) = http(server.admin_addr, "GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("consentd_unsubscribes_total 3"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn forged_and_altered_tokens_all_get_one_identical_404() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    cons.grant(change("bob", "marketing", Some(now() - 60)))
        .await
        .unwrap();
    let link = unsubscribe_link(&server, "bob", "sms", "zenith").await;
    let path = link_path(&server, &link.url);
    let token = path.trim_start_matches("/u/").to_owned();

    let mut responses = std::collections::HashSet::new();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for i in 0..50 {
        let mut t = token.clone().into_bytes();
        let at = (i * 7) % t.len();
        t[at] = alphabet
            .iter()
            .copied()
            .find(|&c| c != t[at] && (c as usize + i).is_multiple_of(3))
            .unwrap();
        let altered = String::from_utf8(t).unwrap();
        let method = if i % 2 == 0 { "POST" } else { "GET" };
        let (status, head, body) = http(
            server.http_addr,
            method,
            &format!("/u/{altered}"),
            &[("Content-Type", "application/x-www-form-urlencoded")],
            "List-Unsubscribe=One-Click",
        )
        .await;
        assert_eq!(status, 404, "{altered}");
        // Drop the Date header: everything else must be identical.
        let head: Vec<&str> = head
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
            .collect();
        responses.insert((head.join("\n"), body));
    }
    let junk_paths = [
        "/u/x".to_string(),
        "/u/".into(),
        "/u/AAAA".into(),
        "/u/%00".into(),
        "/u/%ff%fe".into(),
        format!("/u/{token}AA"),
        format!("/u/{token}/extra"),
        format!("//u/{token}"),
        format!("/u/{token}.html"),
        "/".into(),
        "/metrics".into(),
        "/healthz".into(),
        "/favicon.ico".into(),
        "/u".into(),
    ];
    for (path, method) in junk_paths
        .iter()
        .map(|p| (p.clone(), "POST"))
        .chain(junk_paths.iter().map(|p| (p.clone(), "GET")))
        .chain([(path.clone(), "PUT"), (path.clone(), "DELETE")])
    {
        let (status, head, body) = http(server.http_addr, method, &path, &[], "").await;
        assert_eq!(status, 404, "{method} {path}");
        let head: Vec<&str> = head
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
            .collect();
        responses.insert((head.join("\n"), body));
    }
    assert_eq!(
        responses.len(),
        1,
        "every refusal looks the same: {responses:?}"
    );
    assert_eq!(history(&server, "bob").await.len(), 1, "nothing changed");
    server.stop().await;
}

#[tokio::test]
async fn can_send_carries_the_link_and_uncovered_links_are_refused() {
    let server = TestServer::start().await;
    let mut elig = server.eligibility().await;
    let mut cons = server.consents().await;
    cons.grant(change("carl", "marketing.zenith", Some(now() - 60)))
        .await
        .unwrap();

    let mut req = check("carl", "sms", "zenith");
    req.include_unsubscribe = true;
    let r = elig.can_send(req.clone()).await.unwrap().into_inner();
    assert!(r.allowed);
    let path = link_path(&server, &r.unsubscribe_url);
    let (status, _, body) = http(server.http_addr, "GET", &path, &[], "").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("Zenith offers by SMS"),
        "the most specific consent: {body}"
    );

    req.brand = "acme".into();
    let r = elig.can_send(req).await.unwrap().into_inner();
    assert!(!r.allowed);
    assert!(
        r.unsubscribe_url.is_empty(),
        "no link for a message that may not be sent"
    );

    let batch = elig
        .can_send_batch(pb::CanSendBatchRequest {
            checks: vec![pb::CanSendRequest {
                include_unsubscribe: true,
                ..check("carl", "email", "zenith")
            }],
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(batch.results[0].unsubscribe_url.contains("/u/"));

    let err = cons
        .issue_unsubscribe_link(pb::IssueUnsubscribeLinkRequest {
            to: None,
            contact_id: "carl".into(),
            channel: "sms".into(),
            brand: "acme".into(),
            purpose: "surveys".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = cons
        .issue_unsubscribe_link(pb::IssueUnsubscribeLinkRequest {
            to: None,
            contact_id: "carl".into(),
            channel: "fax".into(),
            brand: "acme".into(),
            purpose: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("channel"));
    server.stop().await;
}

#[tokio::test]
async fn links_survive_restarts_and_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let mut cons = server.consents().await;
    cons.grant(change("dora", "marketing", Some(now() - 60)))
        .await
        .unwrap();
    let old = unsubscribe_link(&server, "dora", "email", "orbit").await;
    let old_token = old.url.rsplit('/').next().unwrap().to_owned();
    server.stop().await;

    // Restart with a new signing key configured: new links use it, old ones still work.
    let mut config = consentd::Config::ephemeral(dir.path());
    config.link_keys = vec![format!("k2={}", "A".repeat(43))];
    config.public_url = Some("https://consent.example.com/".into());
    let server = TestServer::start_with(config).await;
    let new = unsubscribe_link(&server, "dora", "sms", "orbit").await;
    assert!(
        new.url.starts_with("https://consent.example.com/u/"),
        "{}",
        new.url
    );
    let new_token = new.url.rsplit('/').next().unwrap().to_owned();
    assert_ne!(new_token, old_token);

    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    for token in [&old_token, &new_token] {
        let (status, _, _) = http(
            server.http_addr,
            "POST",
            &format!("/u/{token}"),
            &form,
            "List-Unsubscribe=One-Click",
        )
        .await;
        assert_eq!(status, 200);
    }
    let mut elig = server.eligibility().await;
    assert_eq!(
        can_send(&mut elig, "dora", "email", "orbit").await.1,
        Reason::Withdrawn
    );
    assert_eq!(
        can_send(&mut elig, "dora", "sms", "orbit").await.1,
        Reason::Withdrawn
    );
    assert_eq!(
        can_send(&mut elig, "dora", "sms", "acme").await.1,
        Reason::Granted
    );
    server.stop().await;
}

/// Clicks `link`, then checks that `contact`'s last event withdraws
/// `consent` and that CanSend for (channel, brand) is now WITHDRAWN.
async fn click_withdraws(
    server: &TestServer,
    link: &pb::IssueUnsubscribeLinkResponse,
    contact: &str,
    consent: &str,
    (channel, brand): (&str, &str),
) {
    assert_eq!(click(server, link).await, 200);
    let last = history(server, contact).await.pop().unwrap();
    assert_eq!(
        (last.consent_id.as_str(), last.action()),
        (consent, pb::Action::Withdraw)
    );
    let mut elig = server.eligibility().await;
    assert_eq!(
        can_send(&mut elig, contact, channel, brand).await.1,
        Reason::Withdrawn
    );
}

/// POSTs the one-click body to a link; the status code.
async fn click(server: &TestServer, link: &pb::IssueUnsubscribeLinkResponse) -> u16 {
    let path = link_path(server, &link.url);
    let (status, _, _) = http(
        server.http_addr,
        "POST",
        &path,
        &[],
        "List-Unsubscribe=One-Click",
    )
    .await;
    status
}

#[tokio::test]
async fn a_link_still_withdraws_after_its_consent_is_deleted_or_rescoped() {
    let server = TestServer::start().await;
    let mut elig = server.eligibility().await;
    let mut cons = server.consents().await;
    let mut cat = server.catalog().await;
    // People usually hold the umbrella: deleting a child they never held is allowed.
    for who in ["anna", "bob"] {
        cons.grant(change(who, "marketing", Some(now() - 60)))
            .await
            .unwrap();
    }
    let anna_link = unsubscribe_link(&server, "anna", "email", "acme").await;
    let bob_link = unsubscribe_link(&server, "bob", "sms", "zenith").await;
    assert_eq!(anna_link.consent_id, "marketing.acme.email");
    assert_eq!(bob_link.consent_id, "marketing.zenith.sms");

    let mut spec = example_catalog();
    spec.consents.retain(|c| c.id != "marketing.acme.email");
    let z = spec
        .consents
        .iter()
        .position(|c| c.id == "marketing.zenith.sms")
        .unwrap();
    spec.consents[z].channels = vec!["push".into()];
    cat.apply_catalog(spec).await.unwrap();

    // Anna's consent is gone: the most specific one now covering acme e-mail.
    click_withdraws(
        &server,
        &anna_link,
        "anna",
        "marketing.acme",
        ("email", "acme"),
    )
    .await;
    assert!(
        can_send(&mut elig, "anna", "email", "zenith").await.0,
        "only acme stops"
    );

    // Bob's consent no longer covers SMS: likewise.
    click_withdraws(
        &server,
        &bob_link,
        "bob",
        "marketing.zenith",
        ("sms", "zenith"),
    )
    .await;

    // A brand gone from the catalog: the purpose's root is what covers it.
    cons.grant(change("carol", "marketing", Some(now() - 60)))
        .await
        .unwrap();
    let carol_link = unsubscribe_link(&server, "carol", "push", "orbit").await;
    assert_eq!(carol_link.consent_id, "marketing.orbit");
    let mut spec = cat
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    spec.brands.retain(|b| b != "orbit");
    spec.brand_titles.remove("orbit");
    spec.consents.retain(|c| c.id != "marketing.orbit");
    cat.apply_catalog(spec).await.unwrap();
    // The root's withdrawal stops the whole purpose.
    click_withdraws(
        &server,
        &carol_link,
        "carol",
        "marketing",
        ("email", "acme"),
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn an_old_link_withdraws_a_grant_given_after_an_erasure() {
    let server = TestServer::start().await;
    let mut elig = server.eligibility().await;
    let mut cons = server.consents().await;
    cons.grant(change("anna", "marketing", Some(now() - 60)))
        .await
        .unwrap();
    let link = unsubscribe_link(&server, "anna", "email", "acme").await;
    cons.erase_contact(pb::EraseContactRequest {
        contact_id: "anna".into(),
        reason: "ticket 1".into(),
    })
    .await
    .unwrap();

    // Nothing held since the erasure: the click confirms and records nothing.
    assert_eq!(click(&server, &link).await, 200);
    assert!(history(&server, "anna").await.is_empty());

    // Anna signs up again; the old link in her old mail still unsubscribes.
    cons.grant(change("anna", "marketing", None)).await.unwrap();
    assert!(can_send(&mut elig, "anna", "email", "acme").await.0);
    assert_eq!(click(&server, &link).await, 200);
    let events = history(&server, "anna").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].action(), pb::Action::Withdraw);
    assert_eq!(events[1].actor, "unsubscribe-page");
    assert_eq!(
        can_send(&mut elig, "anna", "email", "acme").await.1,
        Reason::Withdrawn
    );
    server.stop().await;
}

#[tokio::test]
async fn a_link_reveals_neither_the_contact_nor_the_consent() {
    let server = TestServer::start().await;
    let contact = "anna.kowalska@example.com";
    let link = unsubscribe_link(&server, contact, "email", "acme").await;
    let token = link.url.rsplit('/').next().unwrap();
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .unwrap();
    for needle in [contact, "anna", "kowalska", "marketing", "acme", "email"] {
        assert!(
            !link.url[link.url.find("/u/").unwrap()..].contains(needle),
            "{needle}"
        );
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} readable in the token"
        );
    }
    server.stop().await;
}

/// Opens `n` connections that send half a request and never finish it.
async fn half_open(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            break;
        };
        let _ = s
            .write_all(b"GET /u/abc HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await;
        held.push(s);
    }
    held
}

#[tokio::test]
async fn half_open_sockets_do_not_starve_the_page_nor_can_send() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    cons.grant(change("anna", "marketing", Some(now() - 60)))
        .await
        .unwrap();
    let link = unsubscribe_link(&server, "anna", "email", "acme").await;
    // Client and server share this process's descriptors (the server
    // raised the limit at start): hold as many as half of them allow.
    let (fds, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let n = 1_000.min((fds.saturating_sub(256) / 2) as usize);
    let held = half_open(server.http_addr, n).await;
    assert!(held.len() >= n / 2, "opened {} of {n}", held.len());
    // The page and CanSend keep answering while they are held.
    let path = link_path(&server, &link.url);
    let (status, _, body) = http(server.http_addr, "GET", &path, &[], "").await;
    assert_eq!(status, 200, "{body}");
    let mut elig = server.eligibility().await;
    assert!(can_send(&mut elig, "anna", "email", "acme").await.0);
    drop(held);
    server.stop().await;
}

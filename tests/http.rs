//! Unsubscribe links and the HTTP side, end to end over real sockets.

mod common;

use common::*;
use consentd::pb::{self, Reason};
use tonic::Code;

async fn issue(
    server: &TestServer,
    contact: &str,
    channel: &str,
    brand: &str,
) -> pb::UnsubscribeLink {
    let mut cons = server.consents().await;
    cons.issue_unsubscribe_link(pb::IssueUnsubscribeLinkRequest {
        contact_id: contact.into(),
        channel: channel.into(),
        brand: brand.into(),
        purpose: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn get_changes_nothing_one_click_post_withdraws_exactly_the_most_specific() {
    let server = TestServer::start().await;
    let mut elig = server.eligibility().await;
    let mut cons = server.consents().await;
    cons.grant(change("anna", "marketing", Some(now() - 60)))
        .await
        .unwrap();

    let link = issue(&server, "anna", "email", "acme").await;
    assert_eq!(link.consent_id, "marketing.acme.email");
    let path = link_path(&server, &link.url);

    // A scanner's GET: a page, and nothing changes.
    let (status, head, body) = http(server.http_addr, "GET", &path, &[], "").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("The Acme newsletter") && body.contains("acme"),
        "{body}"
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
    let (_, _, metrics) = http(server.http_addr, "GET", "/metrics", &[], "").await;
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
    let link = issue(&server, "bob", "sms", "zenith").await;
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
    for junk in ["x", "", "AAAA", "%00", &format!("{token}AA")] {
        let (status, head, body) =
            http(server.http_addr, "POST", &format!("/u/{junk}"), &[], "").await;
        if junk.is_empty() {
            assert_eq!(status, 404);
            continue;
        }
        assert_eq!(status, 404, "{junk}");
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
        })
        .await
        .unwrap()
        .into_inner();
    assert!(batch.results[0].unsubscribe_url.contains("/u/"));

    let err = cons
        .issue_unsubscribe_link(pb::IssueUnsubscribeLinkRequest {
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
    let old = issue(&server, "dora", "email", "orbit").await;
    let old_token = old.url.rsplit('/').next().unwrap().to_owned();
    server.stop().await;

    // Restart with a new signing key configured: new links use it, old ones still work.
    let mut config = consentd::Config::ephemeral(dir.path());
    config.link_keys = vec![format!("k2={}", "A".repeat(43))];
    config.public_url = Some("https://consent.example.com/".into());
    let server = TestServer::start_with(config).await;
    let new = issue(&server, "dora", "sms", "orbit").await;
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

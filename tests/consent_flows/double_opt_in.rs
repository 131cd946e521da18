//! Double opt-in through the confirmation page, end to end: pending until
//! the person clicks, replays and forgeries record nothing.

use super::*;

#[tokio::test]
async fn a_double_opt_in_grant_waits_until_the_person_confirms_on_the_page() {
    let (server, _dir) = start(|_| {}).await;
    let mut cons = server.consents().await;

    let r = grant(
        &mut cons,
        grant_by("anna", "marketing.orbit", pb::Source::Form),
    )
    .await;
    assert!(!r.applied && r.pending, "{r:?}");
    assert!(r.state.is_none(), "a pending grant changes no state");
    let path = link_path(&server, &r.confirmation_url);
    assert!(path.starts_with("/c/"), "{path}");
    answers(
        &server,
        "anna",
        "email",
        "orbit",
        (false, Reason::PendingConfirmation),
    )
    .await;
    let events = history(&server, "anna").await;
    assert!(events[0].pending && !events[0].applied, "{:?}", events[0]);
    let contact = |id: &str| pb::GetContactRequest {
        as_of: None,
        contact_id: id.into(),
        min_sequence: 0,
    };
    let waiting = cons
        .get_contact(contact("anna"))
        .await
        .unwrap()
        .into_inner();
    assert!(waiting.states.is_empty());
    let p = &waiting.pending[0];
    assert_eq!(
        (p.consent_id.as_str(), p.count, p.waiting),
        ("marketing.orbit", 1, true)
    );
    assert!(p.link_sent_at.is_some(), "{p:?}");

    // A mail scanner's GET changes nothing; the page shows the exact words.
    let (status, _, body) = get(&server, &path).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("I agree to receive marketing messages from Orbit by e-mail, SMS and push notifications."), "{body}");
    assert!(
        body.contains("Orbit Travel"),
        "the brand's display name: {body}"
    );
    assert!(body.contains("name=\"not_me\""), "{body}");
    assert_eq!(history(&server, "anna").await.len(), 1);
    let (_, _, pl) = http(
        server.http_addr,
        "GET",
        &path,
        &[("Accept-Language", "pl-PL,pl;q=0.9")],
        "",
    )
    .await;
    assert!(
        pl.contains("Tak, zgadzam się") && pl.contains("lang=\"pl\""),
        "{pl}"
    );

    let form = format!("version={}", shown_version(&body));
    let ua = [
        ("User-Agent", "Mozilla/5.0 (phone)"),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let (status, _, done) = http(server.http_addr, "POST", &path, &ua, &form).await;
    assert_eq!(status, 200, "{done}");
    assert!(done.contains("You have confirmed"), "{done}");
    let (allowed, why, by) =
        can_send(&mut server.eligibility().await, "anna", "email", "orbit").await;
    assert_eq!(
        (allowed, why, by.as_str()),
        (true, Reason::Granted, "marketing.orbit")
    );

    let after = cons
        .get_contact(contact("anna"))
        .await
        .unwrap()
        .into_inner();
    assert!(after.pending.is_empty(), "the wait ended: {after:?}");
    let events = history(&server, "anna").await;
    let click = events.last().unwrap();
    assert_eq!(click.source(), pb::Source::ConfirmationLink);
    assert_eq!(click.action(), Action::Grant);
    assert!(click.applied && !click.pending);
    assert_eq!(click.actor, "confirmation-page");
    assert_eq!(
        click.evidence.get("user_agent").map(String::as_str),
        Some("Mozilla/5.0 (phone)")
    );
    assert_eq!(
        click.evidence.get("ip").map(String::as_str),
        Some("127.0.0.1")
    );

    // A replayed confirmation is harmless: a page, nothing recorded.
    let (status, _, again) = http(server.http_addr, "POST", &path, &ua, &form).await;
    assert_eq!(status, 200);
    assert!(again.contains("confirmed this already"), "{again}");
    assert_eq!(history(&server, "anna").await.len(), events.len());

    // A caller that timed out and retries with its key gets the link again.
    let mut keyed = grant_by("ida", "marketing.orbit", pb::Source::Form);
    keyed.idempotency_key = "signup-ida-1".into();
    let first = grant(&mut cons, keyed.clone()).await;
    let retry = grant(&mut cons, keyed).await;
    assert_eq!(retry.sequence, first.sequence);
    assert!(retry.pending && !retry.applied, "{retry:?}");
    assert!(retry.confirmation_url.contains("/c/"), "{retry:?}");
    assert_eq!(
        history(&server, "ida").await.len(),
        1,
        "the retry records nothing"
    );

    // A bare POST (no fields at all) confirms too: the wording in force.
    let r = grant(
        &mut cons,
        grant_by("abe", "marketing.orbit", pb::Source::Form),
    )
    .await;
    let bare = link_path(&server, &r.confirmation_url);
    let (status, _, done) = post(&server, &bare, "").await;
    assert_eq!(status, 200, "{done}");
    answers(&server, "abe", "email", "orbit", (true, Reason::Granted)).await;

    // A forged token gets the one 404; an unsubscribe token does not open
    // as a confirmation.
    let mut forged = path.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(
        http(server.http_addr, "POST", &forged, &ua, &form).await.0,
        404
    );
    let unsub = unsubscribe_link(&server, "anna", "email", "orbit").await;
    let token = link_path(&server, &unsub.url).replace("/u/", "/c/");
    assert_eq!(
        http(server.http_addr, "POST", &token, &ua, &form).await.0,
        404
    );
    server.stop().await;
}

#[tokio::test]
async fn a_caller_claiming_a_page_s_source_still_waits_for_the_person() {
    let (server, _dir) = start(|_| {}).await;
    let mut cons = server.consents().await;
    // A caller may name any source; only consentd's own pages confirm by
    // their click (DESIGN.md §8).
    // CONFIRMATION_LINK is the confirmation page's alone: a caller naming it
    // is refused, naming the field.
    let refused = cons
        .grant(grant_by(
            "claims-click",
            "marketing.orbit",
            pb::Source::ConfirmationLink,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().starts_with("source:"), "{refused:?}");
    for (who, source) in [("claims-prefs", pb::Source::PreferenceCenter)] {
        let r = grant(&mut cons, grant_by(who, "marketing.orbit", source)).await;
        assert!(!r.applied && r.pending, "{source:?}: {r:?}");
        assert!(!r.confirmation_url.is_empty(), "{source:?}: a link to mail");
        answers(
            &server,
            who,
            "email",
            "orbit",
            (false, Reason::PendingConfirmation),
        )
        .await;
        // The person's click on that link confirms it.
        let path = link_path(&server, &r.confirmation_url);
        let (status, _, _) = post(&server, &path, "").await;
        assert_eq!(status, 200);
        answers(&server, who, "email", "orbit", (true, Reason::Granted)).await;
    }
    // Only `confirmed` lets a caller vouch, whatever the source.
    let mut vouched = grant_by("vouched", "marketing.orbit", pb::Source::PreferenceCenter);
    vouched.confirmed = true;
    assert!(grant(&mut cons, vouched).await.applied);
    answers(
        &server,
        "vouched",
        "email",
        "orbit",
        (true, Reason::Granted),
    )
    .await;
}

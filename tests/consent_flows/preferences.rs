//! The preference center (DESIGN.md §7): every consent of the purpose
//! tree, nothing pre-ticked, one form; what is ticked is recorded.

use super::*;

#[tokio::test]
async fn the_preference_center_lists_the_tree_and_records_what_is_ticked() {
    let (server, _dir) = start(|_| {}).await;
    let mut cons = server.consents().await;
    cons.grant(change("jan", "marketing.acme", Some(now() - 60)))
        .await
        .unwrap();
    let url = cons
        .issue_preference_link(pb::IssuePreferenceLinkRequest {
            contact_id: "jan".into(),
            purpose: String::new(),
            brand: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let path = link_path(&server, &url);
    assert!(path.starts_with("/p/"), "{path}");

    let (status, _, page) = get(&server, &path).await;
    assert_eq!(status, 200, "{page}");
    for title in [
        "News and offers from all our brands",
        "News and offers from Acme",
        "The Acme newsletter",
        "Zenith offers by SMS",
        "News and offers from Orbit",
    ] {
        assert!(page.contains(title), "{title} listed: {page}");
    }
    assert!(
        !page.contains("Customer satisfaction surveys"),
        "another purpose"
    );
    assert!(!page.contains("checked"), "nothing pre-ticked: {page}");
    assert!(page.contains("Acme Outdoor"), "the brand's display name");
    assert!(
        page.contains("I agree to receive the Acme newsletter by e-mail."),
        "the wording"
    );
    assert!(
        page.contains("name=\"withdraw\" value=\"marketing.acme\""),
        "jan has it: {page}"
    );
    assert!(!page.contains("<script"), "no JavaScript");
    let (_, _, pl) = http(
        server.http_addr,
        "GET",
        &path,
        &[("Accept-Language", "pl")],
        "",
    )
    .await;
    assert!(pl.contains("Zapisz moje wybory"), "{pl}");

    // A grant through the page, with the version shown.
    let (status, _, after) = post(
        &server,
        &path,
        "grant=marketing.zenith&v.marketing.zenith=1",
    )
    .await;
    assert_eq!(status, 200, "{after}");
    assert!(after.contains("Saved."), "{after}");
    assert!(
        after.contains("name=\"withdraw\" value=\"marketing.zenith\""),
        "new state shown"
    );
    answers(&server, "jan", "sms", "zenith", (true, Reason::Granted)).await;
    let last = history(&server, "jan").await.pop().unwrap();
    assert_eq!(last.source(), pb::Source::PreferenceCenter);
    assert_eq!(
        last.evidence.get("version_shown").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        last.evidence.get("user_agent").map(String::as_str),
        Some("phone")
    );

    // A bare `grant=ID` (no version field) is the wording in force.
    let (status, _, _) = post(&server, &path, "grant=marketing").await;
    assert_eq!(status, 200);
    let last = history(&server, "jan").await.pop().unwrap();
    assert_eq!(
        (
            last.consent_id.as_str(),
            last.evidence.get("version_shown").map(String::as_str)
        ),
        ("marketing", Some("1"))
    );

    // A withdrawal through it.
    let (status, _, _) = post(&server, &path, "withdraw=marketing.acme").await;
    assert_eq!(status, 200);
    answers(&server, "jan", "sms", "acme", (false, Reason::Withdrawn)).await;
    let n = history(&server, "jan").await.len();

    // Bad forms change nothing: a consent of another purpose, an unknown
    // one, a grant and a withdrawal mixed with one bad field.
    for body in [
        "grant=surveys",
        "grant=no.such.consent",
        "withdraw=marketing.zenith&grant=surveys",
    ] {
        let (status, _, page) = post(&server, &path, body).await;
        assert_eq!(status, 400, "{body}: {page}");
        assert!(page.contains("Nothing was changed"), "{page}");
    }
    assert_eq!(history(&server, "jan").await.len(), n);
    answers(&server, "jan", "sms", "zenith", (true, Reason::Granted)).await;

    // A grant of a wording the person did not see is not recorded.
    let (_, _, page) = post(&server, &path, "grant=marketing.orbit&v.marketing.orbit=7").await;
    assert!(page.contains("changed while you read it"), "{page}");
    assert_eq!(history(&server, "jan").await.len(), n);

    // A retired consent is no longer offered, and a grant of it is refused.
    edit_catalog(&server, |s| {
        consent_mut(s, "marketing.orbit").retired = true
    })
    .await
    .unwrap();
    let (_, _, page) = get(&server, &path).await;
    assert!(!page.contains("News and offers from Orbit"), "{page}");
    let (status, _, page) = post(&server, &path, "grant=marketing.orbit&v.marketing.orbit=1").await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("no longer offered"), "{page}");
    assert_eq!(history(&server, "jan").await.len(), n);

    // Forged tokens get the one 404.
    let mut forged = path.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(get(&server, &forged).await.0, 404);
    assert_eq!(post(&server, &forged, "withdraw=marketing").await.0, 404);
    assert_eq!(get(&server, &path.replace("/p/", "/u/")).await.0, 404);
    server.stop().await;
}

#[tokio::test]
async fn every_page_names_the_controller_beside_the_brand() {
    const CONTROLLER: &str = "Acme Group S.A.";
    let (server, _dir) = start(|c| c.controller_name = Some(CONTROLLER.into())).await;
    let mut cons = server.consents().await;
    grant(&mut cons, grant_by("ivy", "marketing", pb::Source::Form)).await;
    // The unsubscribe page, and the preference page it links to.
    let link = unsubscribe_link(&server, "ivy", "email", "acme").await;
    let (_, _, unsubscribe) = get(&server, &link_path(&server, &link.url)).await;
    assert!(
        unsubscribe.contains(&format!("Acme Outdoor ({CONTROLLER})")),
        "{unsubscribe}"
    );
    let prefs = preference_path_in(&unsubscribe);
    let (_, _, preferences) = get(&server, &prefs).await;
    assert!(preferences.contains(CONTROLLER), "{preferences}");
    // The confirmation page names who asks, not "someone".
    let r = grant(
        &mut cons,
        grant_by("ivy", "marketing.orbit", pb::Source::Form),
    )
    .await;
    let (_, _, confirm) = get(&server, &link_path(&server, &r.confirmation_url)).await;
    assert!(confirm.contains(CONTROLLER), "{confirm}");
    assert!(!confirm.contains("Someone asked"), "{confirm}");
    server.stop().await;
}

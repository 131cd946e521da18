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

/// What a preference page says of one consent: CanSend across its scope
/// (`all`, `some`, `none`) and the other consents it follows, with whether
/// each allows.
fn says(page: &str, id: &str) -> (String, Vec<(String, bool)>) {
    let at = page
        .find(&format!("<fieldset id=\"c-{id}\">"))
        .unwrap_or_else(|| panic!("{id} listed: {page}"));
    let fieldset = &page[at..at + page[at..].find("</fieldset>").unwrap()];
    let attr = |s: &str, name: &str| {
        let from = s.find(&format!("{name}=\"")).map(|i| i + name.len() + 2)?;
        Some(s[from..from + s[from..].find('"').unwrap()].to_owned())
    };
    let reach = attr(fieldset, "data-cansend").expect("a state");
    let through = fieldset
        .split("<p class=\"through\"")
        .skip(1)
        .map(|p| {
            (
                attr(p, "data-decided-by").unwrap(),
                attr(p, "data-allows").unwrap() == "true",
            )
        })
        .collect();
    (reach, through)
}

/// The box a consent's fieldset offers: `grant` or `withdraw`.
fn offers(page: &str, id: &str) -> &'static str {
    if page.contains(&format!("name=\"withdraw\" value=\"{id}\"")) {
        "withdraw"
    } else {
        assert!(page.contains(&format!("name=\"grant\" value=\"{id}\"")));
        "grant"
    }
}

#[tokio::test]
async fn the_preference_page_says_what_can_send_decides_and_through_which_consent() {
    let (server, _dir) = start(|_| {}).await;
    let mut cons = server.consents().await;
    let url = cons
        .issue_preference_link(pb::IssuePreferenceLinkRequest {
            contact_id: "kim".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let path = link_path(&server, &url);
    let at = |ago: i64, consent: &str| change("kim", consent, Some(now() - ago));
    let none = || Vec::<(String, bool)>::new();
    let by = |id: &str, allows: bool| vec![(id.to_owned(), allows)];

    // The umbrella grant: every consent's messages go out through it.
    cons.grant(at(300, "marketing")).await.unwrap();
    let (_, _, page) = get(&server, &path).await;
    assert_eq!(says(&page, "marketing"), ("all".into(), none()));
    assert_eq!(
        says(&page, "marketing.acme.email"),
        ("all".into(), by("marketing", true))
    );
    assert!(
        page.contains(
            "Sent because you agreed to <strong>News and offers from all our brands</strong>"
        ),
        "{page}"
    );
    assert_eq!(offers(&page, "marketing.acme.email"), "withdraw");
    answers(&server, "kim", "email", "acme", (true, Reason::Granted)).await;

    // A brand's withdrawal below it: the umbrella now reaches only some.
    cons.withdraw(at(200, "marketing.acme")).await.unwrap();
    let (_, _, page) = get(&server, &path).await;
    assert_eq!(
        says(&page, "marketing"),
        ("some".into(), by("marketing.acme", false))
    );
    assert_eq!(says(&page, "marketing.acme"), ("none".into(), none()));
    assert_eq!(
        says(&page, "marketing.acme.email"),
        ("none".into(), by("marketing.acme", false))
    );
    assert!(
        page.contains("Not sent because you stopped <strong>News and offers from Acme</strong>"),
        "{page}"
    );
    assert_eq!(
        says(&page, "marketing.zenith"),
        ("all".into(), by("marketing", true))
    );
    answers(&server, "kim", "sms", "acme", (false, Reason::Withdrawn)).await;
    answers(&server, "kim", "sms", "zenith", (true, Reason::Granted)).await;

    // The newsletter granted again, then "unsubscribe from everything":
    // its own state is a grant, but CanSend stops it through the umbrella.
    cons.grant(at(100, "marketing.acme.email")).await.unwrap();
    cons.withdraw(at(50, "marketing")).await.unwrap();
    let (_, _, page) = get(&server, &path).await;
    for id in ["marketing", "marketing.acme", "marketing.orbit"] {
        assert_eq!(says(&page, id).0, "none", "{id}");
    }
    assert_eq!(
        says(&page, "marketing.acme.email"),
        ("none".into(), by("marketing", false)),
        "not 'you receive these': {page}"
    );
    assert_eq!(offers(&page, "marketing.acme.email"), "grant");
    answers(&server, "kim", "email", "acme", (false, Reason::Withdrawn)).await;

    // Ticking it is the person's latest word: CanSend and the page agree.
    let (status, _, page) = post(&server, &path, "grant=marketing.acme.email").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(says(&page, "marketing.acme.email"), ("all".into(), none()));
    // Its parent's e-mail goes out through it; SMS and push stay stopped
    // by the withdrawal of everything.
    assert_eq!(
        says(&page, "marketing.acme"),
        (
            "some".into(),
            vec![
                ("marketing".to_owned(), false),
                ("marketing.acme.email".to_owned(), true)
            ]
        )
    );
    answers(&server, "kim", "email", "acme", (true, Reason::Granted)).await;
    answers(&server, "kim", "sms", "acme", (false, Reason::Withdrawn)).await;
    server.stop().await;
}

//! Consent as people give it (DESIGN.md §7), end to end over real sockets:
//! double opt-in through the confirmation page, withdrawals that stick,
//! "this wasn't me", the guardrails against mail floods, re-consent on a
//! new wording, expiry, the preference center, and brand names on pages.

mod common;
#[path = "consent_flows/double_opt_in.rs"]
mod double_opt_in;
#[path = "consent_flows/preferences.rs"]
mod preferences;

use common::*;
use consentd::pb::{self, Action, Reason};
use tonic::Code;

/// The example catalog with `marketing.orbit` behind double opt-in.
async fn start(configure: impl FnOnce(&mut consentd::Config)) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(dir.path());
    config.catalog = Some(example_catalog_path());
    configure(&mut config);
    let server = TestServer::start_with(config).await;
    edit_catalog(&server, |spec| {
        consent_mut(spec, "marketing.orbit").double_opt_in = true;
    })
    .await
    .unwrap();
    (server, dir)
}

/// A GET of a page: (status, head, body).
async fn get(server: &TestServer, path: &str) -> (u16, String, String) {
    http(server.http_addr, "GET", path, &[], "").await
}

/// A form POST to a page, as a browser sends it: (status, head, body).
async fn post(server: &TestServer, path: &str, body: &str) -> (u16, String, String) {
    let form = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("User-Agent", "phone"),
    ];
    http(server.http_addr, "POST", path, &form, body).await
}

/// Asserts what CanSend answers for (contact, channel, brand).
async fn answers(
    server: &TestServer,
    contact: &str,
    channel: &str,
    brand: &str,
    want: (bool, Reason),
) {
    assert_eq!(
        reason(server, contact, channel, brand).await,
        want,
        "CanSend {contact} {channel} {brand}"
    );
}

fn grant_by(contact: &str, consent: &str, source: pb::Source) -> pb::ConsentChange {
    let mut c = change(contact, consent, None);
    c.source = source as i32;
    c
}

async fn grant(cons: &mut Consents, c: pb::ConsentChange) -> pb::GrantResponse {
    cons.grant(c).await.unwrap().into_inner()
}

async fn reason(server: &TestServer, contact: &str, channel: &str, brand: &str) -> (bool, Reason) {
    let (allowed, reason, _) =
        can_send(&mut server.eligibility().await, contact, channel, brand).await;
    (allowed, reason)
}

fn import_row(
    contact: &str,
    consent: &str,
    confirmed: bool,
    occurred_at: i64,
) -> pb::ImportRequest {
    let mut c = change(contact, consent, Some(occurred_at));
    c.source = pb::Source::Import as i32;
    c.confirmed = confirmed;
    pb::ImportRequest {
        action: Action::Grant as i32,
        change: Some(c),
    }
}

#[tokio::test]
async fn a_pending_child_never_overrides_a_confirmed_umbrella() {
    let (server, _dir) = start(|_| {}).await;
    let mut cons = server.consents().await;
    let r = grant(&mut cons, grant_by("ben", "marketing", pb::Source::Form)).await;
    assert!(r.applied);
    let r = grant(
        &mut cons,
        grant_by("ben", "marketing.orbit", pb::Source::Form),
    )
    .await;
    assert!(r.pending);
    let (allowed, why, by) = can_send(&mut server.eligibility().await, "ben", "sms", "orbit").await;
    assert_eq!(
        (allowed, why, by.as_str()),
        (true, Reason::Granted, "marketing")
    );
    // A later "unsubscribe from all" decides, pending or not.
    cons.withdraw(change("ben", "marketing", None))
        .await
        .unwrap();
    answers(&server, "ben", "sms", "orbit", (false, Reason::Withdrawn)).await;
    server.stop().await;
}

#[tokio::test]
async fn imports_take_confirmed_rows_and_keep_the_others_pending_until_a_link_is_sent() {
    let (server, _dir) = start(|_| {}).await;
    let mut cons = server.consents().await;
    let t = now() - 3_600;
    let summary = cons
        .import(tokio_stream::iter(vec![
            import_row("bob", "marketing.orbit", true, t),
            import_row("carl", "marketing.orbit", false, t),
            import_row("dora", "marketing", false, t),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            summary.received,
            summary.applied,
            summary.pending,
            summary.superseded
        ),
        (3, 2, 1, 0),
        "{summary:?}"
    );
    answers(&server, "bob", "email", "orbit", (true, Reason::Granted)).await;
    answers(
        &server,
        "carl",
        "email",
        "orbit",
        (false, Reason::PendingConfirmation),
    )
    .await;
    let bob = history(&server, "bob").await;
    assert!(
        bob[0].confirmed && bob[0].applied,
        "recorded as said: {:?}",
        bob[0]
    );

    // An import answers no row, so its pending rows get their first link
    // from IssueConfirmationLink; a second one inside the window gets none.
    let issue = |contact: &str, consent: &str| pb::IssueConfirmationLinkRequest {
        contact_id: contact.into(),
        consent_id: consent.into(),
    };
    let first = cons
        .issue_confirmation_link(issue("carl", "marketing.orbit"))
        .await
        .unwrap()
        .into_inner();
    assert!(first.url.contains("/c/"), "{first:?}");
    assert!(first.expires_at.unwrap().seconds > now() + 160 * 3600);
    let second = cons
        .issue_confirmation_link(issue("carl", "marketing.orbit"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.url, "", "one link per re-send window");
    let none = cons
        .issue_confirmation_link(issue("dora", "marketing.orbit"))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::FailedPrecondition, "{none:?}");

    // The link confirms.
    let path = link_path(&server, &first.url);
    let (_, _, body) = get(&server, &path).await;
    let form = format!("version={}", shown_version(&body));
    let (status, _, _) = post(&server, &path, &form).await;
    assert_eq!(status, 200);
    answers(&server, "carl", "email", "orbit", (true, Reason::Granted)).await;
    server.stop().await;
}

#[tokio::test]
async fn a_resync_over_a_persons_unsubscribe_stays_pending_unless_vouched_for() {
    let (server, _dir) = start(|_| {}).await;
    let mut cons = server.consents().await;
    cons.grant(change("eve", "marketing", Some(now() - 3_600)))
        .await
        .unwrap();
    // Eve unsubscribes from Acme's e-mail with the link in a mail.
    let link = unsubscribe_link(&server, "eve", "email", "acme").await;
    let path = link_path(&server, &link.url);
    let (status, _, _) = post(&server, &path, "List-Unsubscribe=One-Click").await;
    assert_eq!(status, 200);
    answers(&server, "eve", "email", "acme", (false, Reason::Withdrawn)).await;

    // The CRM re-syncs "eve: marketing granted" (now): pending, not applied.
    let summary = cons
        .import(tokio_stream::iter(vec![import_row(
            "eve",
            "marketing",
            false,
            now() + 1,
        )]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((summary.applied, summary.pending), (0, 1), "{summary:?}");
    answers(&server, "eve", "email", "acme", (false, Reason::Withdrawn)).await;
    // So does an API grant of the ancestor brand consent, with a link to mail.
    let r = grant(
        &mut cons,
        grant_by("eve", "marketing.acme", pb::Source::Api),
    )
    .await;
    assert!(r.pending && r.confirmation_url.contains("/c/"), "{r:?}");
    answers(&server, "eve", "email", "acme", (false, Reason::Withdrawn)).await;
    // Other brands were never withdrawn: the umbrella grant still covers them.
    answers(&server, "eve", "email", "zenith", (true, Reason::Granted)).await;

    // An operator who vouches for it (`confirmed`) undoes the withdrawal,
    // recorded with the operator's vouching.
    let mut vouched = grant_by("eve", "marketing.acme.email", pb::Source::Operator);
    vouched.confirmed = true;
    let r = grant(&mut cons, vouched).await;
    assert!(r.applied && !r.pending, "{r:?}");
    answers(&server, "eve", "email", "acme", (true, Reason::Granted)).await;
    let last = history(&server, "eve").await.pop().unwrap();
    assert!(last.confirmed && last.source() == pb::Source::Operator);

    // A caller claiming the confirmation page's source is refused naming
    // the field. (A Withdraw cannot say `confirmed`: WithdrawRequest has no
    // such field; an import row that says it is refused, tests/import.rs.)
    let e = cons
        .grant(grant_by("eve", "marketing", pb::Source::ConfirmationLink))
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("source"),
        "{e:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn this_wasnt_me_withdraws_for_good_and_the_link_confirms_nothing_after() {
    let (server, _dir) = start(|_| {}).await;
    let mut cons = server.consents().await;
    let r = grant(
        &mut cons,
        grant_by("fay", "marketing.orbit", pb::Source::Form),
    )
    .await;
    let path = link_path(&server, &r.confirmation_url);
    let (_, _, body) = get(&server, &path).await;
    let version = shown_version(&body);

    let (status, _, page) = post(&server, &path, "not_me=1").await;
    assert_eq!(status, 200);
    assert!(page.contains("this wasn't you"), "{page}");
    answers(&server, "fay", "push", "orbit", (false, Reason::Withdrawn)).await;
    let events = history(&server, "fay").await;
    let refusal = events.last().unwrap();
    assert_eq!(
        (refusal.action(), refusal.source()),
        (Action::Withdraw, pb::Source::ConfirmationLink)
    );

    let (status, _, page) = post(&server, &path, &format!("version={version}")).await;
    assert_eq!(status, 200);
    assert!(page.contains("this wasn't you"), "{page}");
    assert_eq!(
        history(&server, "fay").await.len(),
        events.len(),
        "nothing recorded"
    );
    answers(&server, "fay", "push", "orbit", (false, Reason::Withdrawn)).await;

    // It sticks: a system's later grant is pending again.
    let r = grant(&mut cons, grant_by("fay", "marketing", pb::Source::Import)).await;
    assert!(r.pending, "{r:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_confirmation_link_confirms_only_while_its_grant_is_the_latest_word() {
    let (server, _dir) = start(|_| {}).await;
    let mut cons = server.consents().await;
    let withdraw = |who: &str| {
        let mut w = change(who, "marketing.orbit", None);
        w.source = pb::Source::Api as i32;
        w
    };
    // "This wasn't me", then a later withdrawal elsewhere, then the link.
    let r = grant(
        &mut cons,
        grant_by("gus", "marketing.orbit", pb::Source::Form),
    )
    .await;
    let path = link_path(&server, &r.confirmation_url);
    post(&server, &path, "not_me=1").await;
    cons.withdraw(withdraw("gus")).await.unwrap();
    // A later withdrawal with no click before it: the link is over too.
    let r = grant(
        &mut cons,
        grant_by("hal", "marketing.orbit", pb::Source::Form),
    )
    .await;
    let other = link_path(&server, &r.confirmation_url);
    cons.withdraw(withdraw("hal")).await.unwrap();
    for (who, path) in [("gus", &path), ("hal", &other)] {
        let before = history(&server, who).await.len();
        let (status, _, page) = post(&server, path, "").await;
        assert_eq!(status, 200);
        assert!(page.contains("confirms nothing"), "{who}: {page}");
        assert!(!page.contains("You have confirmed"), "{who}: {page}");
        assert_eq!(
            history(&server, who).await.len(),
            before,
            "{who}: nothing recorded"
        );
        answers(&server, who, "push", "orbit", (false, Reason::Withdrawn)).await;
        // The page says so on a GET too, with no button.
        let (_, _, shown) = get(&server, path).await;
        assert!(!shown.contains("Yes, I agree"), "{who}: {shown}");
    }
    server.stop().await;
}

#[tokio::test]
async fn confirmation_mails_cannot_flood_anyone() {
    let (server, _dir) = start(|_| {}).await;
    let mut cons = server.consents().await;
    let first = grant(
        &mut cons,
        grant_by("kim", "marketing.orbit", pb::Source::Form),
    )
    .await;
    assert!(first.pending && !first.confirmation_url.is_empty());
    for i in 2..=20 {
        let r = grant(
            &mut cons,
            grant_by("kim", "marketing.orbit", pb::Source::Form),
        )
        .await;
        assert!(r.pending, "grant {i}: {r:?}");
        assert_eq!(
            r.confirmation_url, "",
            "grant {i}: no new link inside the window"
        );
    }
    let e = cons
        .grant(grant_by("kim", "marketing.orbit", pb::Source::Form))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(
        history(&server, "kim").await.len(),
        20,
        "the 21st records nothing"
    );
    // Another contact is not affected.
    let r = grant(
        &mut cons,
        grant_by("lea", "marketing.orbit", pb::Source::Form),
    )
    .await;
    assert!(r.pending && !r.confirmation_url.is_empty());

    let metrics = metrics(&server).await;
    assert!(
        metrics.contains("consentd_pending_grants_total 21"),
        "{metrics}"
    );
    assert!(
        metrics.contains("consentd_confirmation_links_total 2"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_expired_confirmation_link_says_so_and_records_nothing() {
    // A link's life of zero: every link is expired when it is opened.
    let (server, _dir) = start(|c| c.confirmation_ttl_hours = 0.0).await;
    let mut cons = server.consents().await;
    let r = grant(
        &mut cons,
        grant_by("max", "marketing.orbit", pb::Source::Form),
    )
    .await;
    let path = link_path(&server, &r.confirmation_url);
    let (status, _, page) = get(&server, &path).await;
    assert_eq!(status, 410, "{page}");
    assert!(page.contains("expired"), "{page}");
    let (status, _, page) = post(&server, &path, "version=1").await;
    assert_eq!(status, 410, "{page}");
    assert_eq!(
        history(&server, "max").await.len(),
        1,
        "only the pending grant"
    );
    // Nothing waits any more either.
    answers(&server, "max", "email", "orbit", (false, Reason::NoConsent)).await;
    server.stop().await;
}

#[tokio::test]
async fn a_new_wording_with_min_version_asks_for_consent_again() {
    let (server, _dir) = start(|_| {}).await;
    let mut cons = server.consents().await;
    assert!(
        grant(
            &mut cons,
            grant_by("gus", "marketing.acme", pb::Source::Form)
        )
        .await
        .applied
    );
    cons.withdraw(change("hal", "marketing.acme", None))
        .await
        .unwrap();
    answers(&server, "gus", "sms", "acme", (true, Reason::Granted)).await;

    // Asking for more than the wording the apply creates is refused.
    let e = edit_catalog(&server, |s| {
        consent_mut(s, "marketing.acme").min_version = 2
    })
    .await
    .unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("min_version"),
        "{e:?}"
    );
    let applied = edit_catalog(&server, |s| {
        let c = consent_mut(s, "marketing.acme");
        c.text = "Acme, reworded: news, offers and events by e-mail, SMS and push.".into();
        c.min_version = 2;
    })
    .await
    .unwrap();
    let acme = applied
        .consents
        .iter()
        .find(|c| c.id == "marketing.acme")
        .unwrap();
    assert_eq!((acme.version, acme.min_version), (2, 2));

    answers(&server, "gus", "sms", "acme", (false, Reason::StaleWording)).await;
    assert_eq!(
        reason(&server, "hal", "sms", "acme").await,
        (false, Reason::Withdrawn),
        "withdrawals always count"
    );
    assert!(
        grant(
            &mut cons,
            grant_by("gus", "marketing.acme", pb::Source::Form)
        )
        .await
        .applied
    );
    answers(&server, "gus", "sms", "acme", (true, Reason::Granted)).await;
    let metrics = metrics(&server).await;
    assert!(
        metrics.contains("consentd_decisions_total{reason=\"stale_wording\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn grants_older_than_valid_for_days_expire() {
    let (server, _dir) = start(|_| {}).await;
    let mut cons = server.consents().await;
    edit_catalog(&server, |s| {
        consent_mut(s, "marketing.zenith").valid_for_days = 30
    })
    .await
    .unwrap();
    let day = 86_400;
    cons.grant(change("ida", "marketing.zenith", Some(now() - 40 * day)))
        .await
        .unwrap();
    cons.grant(change("jon", "marketing.zenith", Some(now() - 20 * day)))
        .await
        .unwrap();
    answers(&server, "ida", "sms", "zenith", (false, Reason::Expired)).await;
    answers(&server, "jon", "sms", "zenith", (true, Reason::Granted)).await;
    cons.grant(change("ida", "marketing.zenith", None))
        .await
        .unwrap();
    answers(&server, "ida", "sms", "zenith", (true, Reason::Granted)).await;
    let metrics = metrics(&server).await;
    assert!(
        metrics.contains("consentd_decisions_total{reason=\"expired\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_pending_grant_its_link_and_the_new_catalog_fields_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let applied = edit_catalog(&server, |s| {
        let orbit = consent_mut(s, "marketing.orbit");
        orbit.double_opt_in = true;
        orbit.min_version = 1;
        orbit.valid_for_days = 365;
    })
    .await
    .unwrap();
    let mut cons = server.consents().await;
    let r = grant(
        &mut cons,
        grant_by("ola", "marketing.orbit", pb::Source::Form),
    )
    .await;
    let url = r.confirmation_url;
    let mut vouched = grant_by("pam", "marketing.orbit", pb::Source::Operator);
    vouched.confirmed = true;
    assert!(grant(&mut cons, vouched).await.applied);
    server.stop().await;

    // Started without --catalog: the stored catalog, new fields included.
    let server = TestServer::start_in(dir.path(), None).await;
    let mut cat = server.catalog().await;
    let stored = cat
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stored, applied,
        "double_opt_in, min_version, valid_for_days, brand_titles"
    );
    assert_eq!(stored.brand_titles["orbit"], "Orbit Travel");
    // The events keep their flags, the store its pending record.
    let ola = history(&server, "ola").await;
    assert!(ola[0].pending && !ola[0].applied, "{:?}", ola[0]);
    assert!(history(&server, "pam").await[0].confirmed);
    let mut cons = server.consents().await;
    let waiting = cons
        .get_contact(pb::GetContactRequest {
            as_of: None,
            contact_id: "ola".into(),
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(waiting.pending[0].count, 1);
    assert!(waiting.pending[0].waiting && waiting.pending[0].link_sent_at.is_some());
    answers(
        &server,
        "ola",
        "email",
        "orbit",
        (false, Reason::PendingConfirmation),
    )
    .await;
    // The re-send window holds across the restart.
    let again = grant(
        &mut cons,
        grant_by("ola", "marketing.orbit", pb::Source::Form),
    )
    .await;
    assert!(
        again.pending && again.confirmation_url.is_empty(),
        "{again:?}"
    );
    // The new server listens on another port; the token is what counts.
    let path = url[url.find("/c/").unwrap()..].to_owned();
    let (_, _, body) = get(&server, &path).await;
    let (status, _, _) = post(&server, &path, &format!("version={}", shown_version(&body))).await;
    assert_eq!(status, 200);
    answers(&server, "ola", "email", "orbit", (true, Reason::Granted)).await;
    server.stop().await;
}

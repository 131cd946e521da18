//! The e-mail providers' webhooks (DESIGN.md §9), each request signed
//! exactly as its provider documents with the test's own keys: Mailgun
//! (HMAC-SHA256, a 5-minute window, tokens once), Postmark (basic auth),
//! Amazon SES through SNS (RSA over the SNS string to sign, SignatureVersion
//! 1 and 2, a self-signed certificate pinned in the providers file) and
//! SendGrid's bounces. Forged, stale and replayed requests change nothing;
//! a hard bounce marks the address undeliverable (never a withdrawal) until
//! ClearUndeliverable; a complaint sticks.

mod common;
#[path = "hooks_mail/ses.rs"]
mod ses;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::*;
use consentd::pb::{self, Reason};

const MAILGUN_KEY: &str = "test-mailgun-signing-key-0123456789";
const TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:ses-acme";
/// The test's own RSA key, standing in for SNS's (its certificate is made
/// from it at test time).
const SNS_KEY: &str = include_str!("fixtures/sns-signing-key.pem");

fn sendgrid_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_bytes(&[42u8; 32].into()).unwrap()
}

/// A self-signed certificate over the SNS key, as a PEM file.
fn sns_certificate(dir: &std::path::Path) -> std::path::PathBuf {
    let key =
        rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(SNS_KEY, &rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["sns.eu-west-1.amazonaws.com".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let path = dir.join("sns.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path
}

fn providers(dir: &std::path::Path) -> std::path::PathBuf {
    sns_certificate(dir);
    let path = dir.join("providers.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[provider]]
name = "mailgun-acme"
kind = "mailgun"
brand = "acme"
signing_key = "{MAILGUN_KEY}"
[provider.consents]
"newsletter" = "marketing.acme.email"
"*" = "marketing.acme"

[[provider]]
name = "postmark-acme"
kind = "postmark"
brand = "acme"
username = "pm"
password = "s3cret"
[provider.consents]
"broadcast" = "marketing.acme.email"

[[provider]]
name = "ses-acme"
kind = "ses"
brand = "acme"
topic_arn = "{TOPIC}"
certificate = "sns.pem"
[provider.consents]
"*" = "marketing.acme"

[[provider]]
name = "mail-acme"
kind = "sendgrid"
brand = "acme"
public_key = "{}"
[provider.consents]
"*" = "marketing.acme"
"#,
            sign::sendgrid_public_key(&sendgrid_key())
        ),
    )
    .unwrap();
    path
}

async fn start(dir: &std::path::Path) -> TestServer {
    let mut config = consentd::Config::ephemeral(dir);
    config.catalog = Some(example_catalog_path());
    config.providers = Some(providers(dir));
    TestServer::start_with(config).await
}

async fn post(server: &TestServer, name: &str, headers: &[(&str, &str)], body: &str) -> u16 {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    http(
        server.http_addr,
        "POST",
        &format!("/hooks/{name}"),
        &all,
        body,
    )
    .await
    .0
}

/// CanSend of `who`'s marketing mail for Acme to `who@example.com`.
async fn mail_to(server: &TestServer, who: &str) -> Reason {
    can_send_to(server, who, "email", "acme", &format!("{who}@example.com"))
        .await
        .reason()
}

async fn address(server: &TestServer, who: &str) -> pb::GetAddressResponse {
    server
        .consents()
        .await
        .get_address(pb::GetAddressRequest {
            address: Some(pb::Address {
                kind: pb::AddressKind::Email as i32,
                value: format!("{who}@example.com"),
            }),
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn grant_all(server: &TestServer, who: &[&str]) {
    let mut cons = server.consents().await;
    for w in who {
        cons.grant(change(w, "marketing", Some(now() - 600)))
            .await
            .unwrap();
    }
}

/// A Mailgun webhook body, signed as Mailgun signs (`timestamp ‖ token`).
fn mailgun(key: &str, timestamp: i64, token: &str, event: &str) -> String {
    sign::mailgun(key, timestamp, token, event)
}

fn unix_now() -> i64 {
    now()
}

#[tokio::test]
async fn mailgun_events_are_verified_in_their_window_once_and_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    grant_all(&server, &["ann", "bob", "cat"]).await;
    let t = unix_now();
    let unsub = r#"{"event":"unsubscribed","id":"mg-1","recipient":"Ann@Example.com","tags":["newsletter"],"timestamp":1764800000.5}"#;
    // Forged (another key) or stale (6 minutes old): 403. (Mailgun signs
    // the timestamp and token only, not the event.)
    assert_eq!(
        post(
            &server,
            "mailgun-acme",
            &[],
            &mailgun("other", t, "tok-0", unsub)
        )
        .await,
        403
    );
    assert_eq!(
        post(
            &server,
            "mailgun-acme",
            &[],
            &mailgun(MAILGUN_KEY, t - 360, "tok-1", unsub)
        )
        .await,
        403
    );
    // Signed: Ann's newsletter (the tag's consent) is withdrawn on her address.
    let body = mailgun(MAILGUN_KEY, t, "tok-3", unsub);
    assert_eq!(post(&server, "mailgun-acme", &[], &body).await, 200);
    let view = address(&server, "ann").await;
    assert_eq!(view.states.len(), 1);
    assert_eq!(view.states[0].consent_id, "marketing.acme.email");
    assert_eq!(mail_to(&server, "ann").await, Reason::AddressWithdrawn);
    // The same request again (its token seen): refused, nothing more.
    assert_eq!(post(&server, "mailgun-acme", &[], &body).await, 403);
    // Delivered again with a fresh signature: the event id records once.
    let again = mailgun(MAILGUN_KEY, t, "tok-4", unsub);
    assert_eq!(post(&server, "mailgun-acme", &[], &again).await, 200);
    assert_eq!(address(&server, "ann").await.events.len(), 1);
    // A complaint (no tag: `*`) and a permanent failure.
    let complaint = r#"{"event":"complained","id":"mg-2","recipient":"bob@example.com"}"#;
    assert_eq!(
        post(
            &server,
            "mailgun-acme",
            &[],
            &mailgun(MAILGUN_KEY, t, "tok-5", complaint)
        )
        .await,
        200
    );
    let bob = address(&server, "bob").await;
    assert_eq!(bob.events[0].source(), pb::Source::Complaint);
    assert_eq!(bob.states[0].consent_id, "marketing.acme");
    let failed =
        r#"{"event":"failed","severity":"permanent","id":"mg-3","recipient":"cat@example.com"}"#;
    let temporary =
        r#"{"event":"failed","severity":"temporary","id":"mg-4","recipient":"cat@example.com"}"#;
    assert_eq!(
        post(
            &server,
            "mailgun-acme",
            &[],
            &mailgun(MAILGUN_KEY, t, "tok-6", temporary)
        )
        .await,
        200
    );
    assert_eq!(mail_to(&server, "cat").await, Reason::Granted);
    assert_eq!(
        post(
            &server,
            "mailgun-acme",
            &[],
            &mailgun(MAILGUN_KEY, t, "tok-7", failed)
        )
        .await,
        200
    );
    assert_eq!(mail_to(&server, "cat").await, Reason::Undeliverable);
    server.stop().await;
}

#[tokio::test]
async fn postmark_changes_need_its_basic_auth_and_follow_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    grant_all(&server, &["dan", "eve"]).await;
    let auth = format!("Basic {}", STANDARD.encode("pm:s3cret"));
    let wrong = format!("Basic {}", STANDARD.encode("pm:guess"));
    let change = |sid: &str, who: &str, suppress: bool, reason: &str, origin: &str| {
        format!(
            r#"{{"RecordType":"SubscriptionChange","MessageID":"{sid}","Recipient":"{who}@example.com","MessageStream":"broadcast","ChangedAt":"2026-12-01T10:00:0{}Z","SuppressSending":{suppress},"SuppressionReason":"{reason}","Origin":"{origin}"}}"#,
            if suppress { 0 } else { 5 }
        )
    };
    let unsub = change("m-1", "dan", true, "ManualSuppression", "Recipient");
    assert_eq!(
        post(
            &server,
            "postmark-acme",
            &[("Authorization", &wrong)],
            &unsub
        )
        .await,
        403
    );
    assert_eq!(post(&server, "postmark-acme", &[], &unsub).await, 403);
    assert_eq!(mail_to(&server, "dan").await, Reason::Granted);
    assert_eq!(
        post(
            &server,
            "postmark-acme",
            &[("Authorization", &auth)],
            &unsub
        )
        .await,
        200
    );
    assert_eq!(mail_to(&server, "dan").await, Reason::AddressWithdrawn);
    assert_eq!(
        post(
            &server,
            "postmark-acme",
            &[("Authorization", &auth)],
            &unsub
        )
        .await,
        200
    );
    assert_eq!(
        address(&server, "dan").await.events.len(),
        1,
        "retried: once"
    );
    // Reactivated by the account (not the person): it waits; by the
    // person (Origin Recipient): lifted.
    let by_admin = change("m-1", "dan", false, "", "Customer");
    assert_eq!(
        post(
            &server,
            "postmark-acme",
            &[("Authorization", &auth)],
            &by_admin
        )
        .await,
        200
    );
    assert_eq!(mail_to(&server, "dan").await, Reason::AddressWithdrawn);
    let by_dan = change("m-2", "dan", false, "", "Recipient");
    assert_eq!(
        post(
            &server,
            "postmark-acme",
            &[("Authorization", &auth)],
            &by_dan
        )
        .await,
        200
    );
    assert_eq!(mail_to(&server, "dan").await, Reason::Granted);
    // A hard bounce marks Eve's address undeliverable: not a withdrawal.
    let bounce = r#"{"RecordType":"Bounce","ID":4242,"Type":"HardBounce","Email":"eve@example.com","BouncedAt":"2026-12-01T10:00:00Z","MessageStream":"broadcast"}"#;
    assert_eq!(
        post(
            &server,
            "postmark-acme",
            &[("Authorization", &auth)],
            bounce
        )
        .await,
        200
    );
    assert_eq!(mail_to(&server, "eve").await, Reason::Undeliverable);
    let eve = address(&server, "eve").await;
    assert!(eve.undeliverable && eve.states.is_empty(), "{eve:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_hard_bounce_is_undeliverable_until_cleared_and_never_a_withdrawal() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    grant_all(&server, &["ida"]).await;
    let mut cons = server.consents().await;
    cons.set_addresses(pb::SetAddressesRequest {
        contact_id: "ida".into(),
        addresses: vec![pb::Address {
            kind: pb::AddressKind::Email as i32,
            value: "ida@example.com".into(),
        }],
    })
    .await
    .unwrap();
    let sendgrid = |body: &str| sign::sendgrid(&sendgrid_key(), "1764800000", body);
    let blocked = r#"[{"email":"ida@example.com","event":"bounce","type":"blocked","sg_event_id":"b-0","timestamp":1764800000}]"#;
    let bounce = r#"[{"email":"ida@example.com","event":"bounce","type":"bounce","sg_event_id":"b-1","timestamp":1764800000}]"#;
    for body in [blocked, bounce] {
        let headers = [
            ("X-Twilio-Email-Event-Webhook-Timestamp", "1764800000"),
            ("X-Twilio-Email-Event-Webhook-Signature", &*sendgrid(body)),
        ];
        assert_eq!(post(&server, "mail-acme", &headers, body).await, 200);
    }
    // With `to`, and without it (her only mailbox): UNDELIVERABLE.
    assert_eq!(mail_to(&server, "ida").await, Reason::Undeliverable);
    assert_eq!(
        can_send(&mut server.eligibility().await, "ida", "email", "acme")
            .await
            .1,
        Reason::Undeliverable
    );
    // SMS is another address: not touched. Her consent is not touched.
    assert_eq!(
        can_send(&mut server.eligibility().await, "ida", "sms", "acme")
            .await
            .1,
        Reason::Granted
    );
    let view = address(&server, "ida").await;
    assert!(view.undeliverable && view.undeliverable_since.is_some());
    assert!(
        view.states.is_empty(),
        "a bounce is not a withdrawal: {view:?}"
    );
    assert_eq!(view.events[0].kind(), pb::EventKind::Undeliverable);
    // Survives a restart.
    server.stop().await;
    let server = start(dir.path()).await;
    assert_eq!(mail_to(&server, "ida").await, Reason::Undeliverable);
    let mut cons = server.consents().await;
    let clear = |value: &str| pb::ClearUndeliverableRequest {
        address: Some(pb::Address {
            kind: pb::AddressKind::Email as i32,
            value: value.into(),
        }),
    };
    let cleared = cons
        .clear_undeliverable(clear("IDA@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert!(cleared.applied && cleared.sequence > 0);
    assert_eq!(mail_to(&server, "ida").await, Reason::Granted);
    // Clearing what is not marked records nothing; a bad address names the field.
    let again = cons
        .clear_undeliverable(clear("ida@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.applied && again.sequence == 0);
    let e = cons.clear_undeliverable(clear("nope")).await.unwrap_err();
    assert!(e.message().starts_with("address.value"), "{e:?}");
    let e = cons
        .clear_undeliverable(pb::ClearUndeliverableRequest { address: None })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("address"), "{e:?}");
    // The same bounce delivered again does not mark it again.
    let headers = [
        ("X-Twilio-Email-Event-Webhook-Timestamp", "1764800000"),
        ("X-Twilio-Email-Event-Webhook-Signature", &*sendgrid(bounce)),
    ];
    assert_eq!(post(&server, "mail-acme", &headers, bounce).await, 200);
    assert_eq!(mail_to(&server, "ida").await, Reason::Granted);
    let view = address(&server, "ida").await;
    assert_eq!(
        view.events.iter().map(|e| e.kind()).collect::<Vec<_>>(),
        vec![
            pb::EventKind::Undeliverable,
            pb::EventKind::UndeliverableCleared
        ]
    );
    server.stop().await;
}

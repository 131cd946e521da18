//! Provider webhooks (DESIGN.md §9): requests signed exactly as Twilio
//! signs them, with the test's own Auth Token; forged, tampered and unsigned
//! ones change nothing; a STOP on a number two contacts share blocks both, a
//! retried delivery records once, START lifts it.

mod common;

use common::*;
use consentd::pb::{self, Reason};

const TOKEN: &str = "test-auth-token-0123456789abcdef";
const SHARED: &str = "+48601234567";

fn providers(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("providers.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[provider]]
name = "sms-pl"
kind = "twilio"
brand = "zenith"
auth_token = "{TOKEN}"
[provider.consents]
"MG0123" = "marketing.zenith"
"*" = "marketing"

[[provider]]
name = "mail-acme"
kind = "sendgrid"
brand = "acme"
public_key = "{}"
[provider.consents]
"42" = "marketing.acme.email"
"*" = "marketing.acme"
"#,
            sign::sendgrid_public_key(&sendgrid_key())
        ),
    )
    .unwrap();
    path
}

/// The test's own SendGrid signing key (P-256).
fn sendgrid_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_bytes(&[42u8; 32].into()).unwrap()
}

/// SendGrid's signature: base64 DER ECDSA P-256/SHA-256 of timestamp ‖ body.
fn sendgrid_sign(key: &p256::ecdsa::SigningKey, timestamp: &str, body: &str) -> String {
    sign::sendgrid(key, timestamp, body)
}

async fn sendgrid_post(server: &TestServer, body: &str, signature: &str) -> u16 {
    let headers = [
        ("Content-Type", "application/json"),
        ("X-Twilio-Email-Event-Webhook-Timestamp", "1764800000"),
        ("X-Twilio-Email-Event-Webhook-Signature", signature),
    ];
    http(server.http_addr, "POST", "/hooks/mail-acme", &headers, body)
        .await
        .0
}

/// Twilio's signature: base64 HMAC-SHA1 of the URL and the sorted params.
fn sign(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    sign::twilio(token, url, params)
}

/// An inbound SMS as Twilio posts it.
fn sms<'a>(
    sid: &'a str,
    from: &'a str,
    body: &'a str,
    service: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("MessageSid", sid),
        ("AccountSid", "AC0000"),
        ("MessagingServiceSid", service),
        ("From", from),
        ("To", "+48500000000"),
        ("Body", body),
        ("NumMedia", "0"),
    ]
}

async fn post(
    server: &TestServer,
    params: &[(&str, &str)],
    signature: Option<&str>,
) -> (u16, String) {
    let body = serde_urlencoded::to_string(params).unwrap();
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(s) = signature {
        headers.push(("X-Twilio-Signature", s));
    }
    let (status, _, page) = http(server.http_addr, "POST", "/hooks/sms-pl", &headers, &body).await;
    (status, page)
}

async fn signed(server: &TestServer, params: &[(&str, &str)]) -> (u16, String) {
    let url = format!("http://{}/hooks/sms-pl", server.http_addr);
    post(server, params, Some(&sign(TOKEN, &url, params))).await
}

async fn sms_to(
    server: &TestServer,
    contact: &str,
    brand: &str,
    number: &str,
) -> (bool, Reason, String) {
    let r = can_send_to(server, contact, "sms", brand, number).await;
    (r.allowed, r.reason(), r.decided_by)
}

/// The events recorded on an address (GetAddress).
async fn events_on_address(
    server: &TestServer,
    kind: pb::AddressKind,
    value: &str,
) -> Vec<pb::ConsentEvent> {
    server
        .consents()
        .await
        .get_address(pb::GetAddressRequest {
            address: Some(pb::Address {
                kind: kind as i32,
                value: value.into(),
            }),
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .events
}

async fn events_on(server: &TestServer, number: &str) -> Vec<pb::ConsentEvent> {
    events_on_address(server, pb::AddressKind::Phone, number).await
}

#[tokio::test]
async fn a_signed_stop_blocks_the_number_for_everyone_and_start_lifts_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(dir.path());
    config.catalog = Some(example_catalog_path());
    config.providers = Some(providers(dir.path()));
    let server = TestServer::start_with(config).await;
    let mut cons = server.consents().await;
    for who in ["ewa", "jan"] {
        cons.grant(change(who, "marketing", Some(now() - 600)))
            .await
            .unwrap();
    }

    // Forged (another token), tampered (signed, then the body changed) and
    // unsigned requests: 403, nothing recorded.
    let stop = sms("SM0001", SHARED, " stop ", "MG0123");
    let url = format!("http://{}/hooks/sms-pl", server.http_addr);
    let forged = sign("not-the-token", &url, &stop);
    assert_eq!(post(&server, &stop, Some(&forged)).await.0, 403);
    let mut tampered = stop.clone();
    tampered[3].1 = "+48601999999";
    assert_eq!(
        post(&server, &tampered, Some(&sign(TOKEN, &url, &stop)))
            .await
            .0,
        403
    );
    assert_eq!(post(&server, &stop, None).await.0, 403);
    let wrong_url = sign(TOKEN, "http://elsewhere.example/hooks/sms-pl", &stop);
    assert_eq!(post(&server, &stop, Some(&wrong_url)).await.0, 403);
    assert!(events_on(&server, SHARED).await.is_empty());

    // The signed STOP: TwiML, and both contacts are blocked on that number
    // for the service's consent only.
    let (status, twiml) = signed(&server, &stop).await;
    assert_eq!(status, 200);
    assert!(twiml.contains("<Response/>"), "{twiml}");
    for who in ["ewa", "jan"] {
        assert_eq!(
            sms_to(&server, who, "zenith", SHARED).await,
            (false, Reason::AddressWithdrawn, "marketing.zenith".into()),
            "{who}"
        );
        assert!(
            sms_to(&server, who, "acme", SHARED).await.0,
            "other brands go on"
        );
        assert!(
            sms_to(&server, who, "zenith", "+48601000000").await.0,
            "other numbers go on"
        );
    }
    // Twilio retries a delivery: recorded once.
    assert_eq!(signed(&server, &stop).await.0, 200);
    let events = events_on(&server, SHARED).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.source(), pb::Source::SmsKeyword);
    assert_eq!(e.action(), pb::Action::Withdraw);
    assert_eq!(e.evidence["provider"], "sms-pl");
    assert_eq!(e.evidence["event_id"], "SM0001");
    assert_eq!(e.evidence["body_sha256"].len(), 64);
    assert_eq!(e.actor, "hook:sms-pl");

    // HELP and chatter record nothing, and are answered 200 (no retries).
    for (sid, body) in [("SM0002", "HELP"), ("SM0003", "stop it please")] {
        assert_eq!(
            signed(&server, &sms(sid, SHARED, body, "MG0123")).await.0,
            200
        );
    }
    assert_eq!(events_on(&server, SHARED).await.len(), 1);

    // A service the file does not name falls to "*": everything.
    let other = "+48601111111";
    assert_eq!(
        signed(&server, &sms("SM0004", other, "STOPALL", "MG9999"))
            .await
            .0,
        200
    );
    assert_eq!(
        sms_to(&server, "ewa", "acme", other).await,
        (false, Reason::AddressWithdrawn, "marketing".into())
    );

    // START lifts the STOP: the person's own word (it sticks no more).
    assert_eq!(
        signed(&server, &sms("SM0005", SHARED, "Start", "MG0123"))
            .await
            .0,
        200
    );
    assert_eq!(
        sms_to(&server, "jan", "zenith", SHARED).await.1,
        Reason::Granted
    );

    // Unknown endpoints and other methods: the one 404.
    let (status, _, _) = http(server.http_addr, "POST", "/hooks/nope", &[], "").await;
    assert_eq!(status, 404);
    let (status, _, _) = http(server.http_addr, "GET", "/hooks/sms-pl", &[], "").await;
    assert_eq!(status, 404);
    let text = metrics(&server).await;
    assert!(
        text.contains("consentd_hook_requests_total{outcome=\"refused\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("consentd_hook_requests_total{outcome=\"recorded\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("consentd_hook_requests_total{outcome=\"replayed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("consentd_hook_requests_total{outcome=\"ignored\"} 2"),
        "{text}"
    );

    // Erasing a contact leaves the number blocked for the other.
    assert_eq!(
        signed(&server, &sms("SM0006", SHARED, "STOP", "MG0123"))
            .await
            .0,
        200
    );
    cons.erase_contact(pb::EraseContactRequest {
        contact_id: "ewa".into(),
        reason: "asked".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        sms_to(&server, "jan", "zenith", SHARED).await.1,
        Reason::AddressWithdrawn
    );
    server.stop().await;
}

#[tokio::test]
async fn signed_sendgrid_events_withdraw_on_the_address_and_forgeries_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(dir.path());
    config.catalog = Some(example_catalog_path());
    config.providers = Some(providers(dir.path()));
    let server = TestServer::start_with(config).await;
    let mut cons = server.consents().await;
    for who in ["ala", "ben", "cyd", "dot"] {
        cons.grant(change(who, "marketing", Some(now() - 600)))
            .await
            .unwrap();
    }
    let body = r#"[
      {"email":"Ala@Example.com","event":"unsubscribe","sg_event_id":"ev-1","timestamp":1764800000},
      {"email":"ben@example.com","event":"group_unsubscribe","asm_group_id":42,"sg_event_id":"ev-2"},
      {"email":"cyd@example.com","event":"spamreport","sg_event_id":"ev-3"},
      {"email":"dot@example.com","event":"delivered","sg_event_id":"ev-4"}
    ]"#;
    let key = sendgrid_key();
    // Signed by another key, or over another body: 403, nothing recorded.
    let other = p256::ecdsa::SigningKey::from_bytes(&[43u8; 32].into()).unwrap();
    assert_eq!(
        sendgrid_post(&server, body, &sendgrid_sign(&other, "1764800000", body)).await,
        403
    );
    assert_eq!(
        sendgrid_post(&server, body, &sendgrid_sign(&key, "1764800000", "[]")).await,
        403
    );
    assert_eq!(
        sendgrid_post(&server, body, &sendgrid_sign(&key, "1764800001", body)).await,
        403
    );
    let email = |who: &str| format!("{who}@example.com");
    let mail_to = |who: &'static str| {
        let server = &server;
        async move {
            let r = can_send_to(server, who, "email", "acme", &format!("{who}@example.com")).await;
            (r.allowed, r.reason(), r.decided_by)
        }
    };
    assert!(mail_to("ala").await.0, "nothing recorded yet");

    let signature = sendgrid_sign(&key, "1764800000", body);
    assert_eq!(sendgrid_post(&server, body, &signature).await, 200);
    assert_eq!(
        mail_to("ala").await,
        (false, Reason::AddressWithdrawn, "marketing.acme".into())
    );
    assert_eq!(
        mail_to("ben").await,
        (
            false,
            Reason::AddressWithdrawn,
            "marketing.acme.email".into()
        )
    );
    assert_eq!(mail_to("cyd").await.1, Reason::AddressWithdrawn);
    assert!(mail_to("dot").await.0, "a delivery changes nothing");
    // Retried whole by SendGrid: recorded once.
    assert_eq!(sendgrid_post(&server, body, &signature).await, 200);
    let ala = events_on_address(&server, pb::AddressKind::Email, &email("ala")).await;
    assert_eq!(ala.len(), 1, "{ala:?}");
    assert_eq!(ala[0].source(), pb::Source::Provider);
    assert_eq!(ala[0].evidence["event_id"], "ev-1");
    assert_eq!(
        events_on_address(&server, pb::AddressKind::Email, &email("cyd")).await[0].source(),
        pb::Source::Complaint
    );
    assert!(
        events_on_address(&server, pb::AddressKind::Email, &email("dot"))
            .await
            .is_empty()
    );
    // A complaint sticks: a later import of the address's grant waits.
    let mut import = change("", "marketing.acme", None);
    import.address = Some(pb::Address {
        kind: pb::AddressKind::Email as i32,
        value: email("cyd"),
    });
    import.source = pb::Source::Import as i32;
    assert!(cons.grant(import).await.unwrap().into_inner().pending);
    assert_eq!(mail_to("cyd").await.1, Reason::AddressWithdrawn);
    // A batch bigger than a page's 16 KiB is read whole (webhooks have their
    // own limit): 300 deliveries and one unsubscribe.
    let mut events: Vec<String> = (0..300)
        .map(|i| format!(r#"{{"email":"x{i}@example.com","event":"delivered","sg_event_id":"big-{i}","smtp-id":"<{i}@mail.example>"}}"#))
        .collect();
    events.push(
        r#"{"email":"dot@example.com","event":"unsubscribe","sg_event_id":"big-last"}"#.into(),
    );
    let big = format!("[{}]", events.join(","));
    assert!(big.len() > 16 * 1024, "{}", big.len());
    assert_eq!(
        sendgrid_post(&server, &big, &sendgrid_sign(&key, "1764800000", &big)).await,
        200
    );
    assert_eq!(mail_to("dot").await.1, Reason::AddressWithdrawn);
    // The pages keep their own 16 KiB.
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, _, _) = http(
        server.http_addr,
        "POST",
        "/u/AAAA",
        &form,
        &"a".repeat(20 * 1024),
    )
    .await;
    assert_eq!(status, 413);
    // Other methods and odd paths under /hooks/ are the one 404.
    for (method, path) in [
        ("GET", "/hooks/mail-acme"),
        ("POST", "/hooks/"),
        ("POST", "/hooks/%FF"),
        ("POST", "/hooks/mail-acme/x"),
    ] {
        let (status, _, _) = http(server.http_addr, method, path, &[], "").await;
        assert_eq!(status, 404, "{method} {path}");
    }

    // Resubscribing to the group lifts Ben's.
    let resub = r#"[{"email":"ben@example.com","event":"group_resubscribe","asm_group_id":42,"sg_event_id":"ev-5"}]"#;
    assert_eq!(
        sendgrid_post(&server, resub, &sendgrid_sign(&key, "1764800000", resub)).await,
        200
    );
    assert!(mail_to("ben").await.0);
    server.stop().await;
}

#[test]
fn a_bad_providers_file_is_refused_at_start_naming_the_entry() {
    for (text, needle) in [
        (
            "[[provider]]\nname = \"Bad Name\"\nkind = \"twilio\"\nauth_token = \"t\"\n[provider.consents]\n\"*\" = \"m\"\n",
            "provider[0].name",
        ),
        (
            "[[provider]]\nname = \"a\"\nkind = \"twilio\"\n[provider.consents]\n\"*\" = \"m\"\n",
            "provider[0].auth_token",
        ),
        (
            "[[provider]]\nname = \"a\"\nkind = \"twilio\"\nauth_token = \"t\"\n",
            "provider[0].consents",
        ),
        ("[[provider]]\nname = \"a\"\nkind = \"fax\"\n", "fax"),
        (
            "[[provider]]\nname = \"a\"\nkind = \"sendgrid\"\npublic_key = \"bm90IGEga2V5\"\n[provider.consents]\n\"*\" = \"m\"\n",
            "provider[0].public_key",
        ),
    ] {
        let e = consentd::hooks::Hooks::parse(text, "https://x").unwrap_err();
        assert!(e.contains(needle), "{needle}: {e}");
    }
}

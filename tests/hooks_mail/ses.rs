//! Amazon SES through SNS: messages signed as SNS signs them (RSA over the
//! SNS string to sign, SignatureVersion 1 and 2) with the test's own key,
//! whose self-signed certificate the providers file pins.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use consentd::pb::{self, Reason};
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};

use super::common::*;
use super::{SNS_KEY, TOPIC, address, grant_all, mail_to, post, start};

/// An SNS message signed as SNS signs (version 1: SHA-1, 2: SHA-256).
fn sns(kind: &str, id: &str, topic: &str, message: &str, version: u8) -> String {
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(SNS_KEY).unwrap();
    let timestamp = "2026-12-01T10:00:00.000Z";
    let mut fields = vec![
        ("Message", message.to_owned()),
        ("MessageId", id.to_owned()),
        ("Timestamp", timestamp.to_owned()),
        ("TopicArn", topic.to_owned()),
        ("Type", kind.to_owned()),
    ];
    if kind == "SubscriptionConfirmation" {
        fields.push((
            "SubscribeURL",
            "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=t".into(),
        ));
        fields.push(("Token", "t".into()));
    }
    fields.sort_by(|a, b| a.0.cmp(b.0));
    let text: String = fields.iter().map(|(k, v)| format!("{k}\n{v}\n")).collect();
    let signature = match version {
        1 => rsa::pkcs1v15::SigningKey::<sha1::Sha1>::new(key)
            .sign(text.as_bytes())
            .to_vec(),
        _ => rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key)
            .sign(text.as_bytes())
            .to_vec(),
    };
    let mut body = serde_json::Map::new();
    for (k, v) in fields {
        body.insert(k.into(), v.into());
    }
    body.insert("SignatureVersion".into(), version.to_string().into());
    body.insert("Signature".into(), STANDARD.encode(signature).into());
    body.insert(
        "SigningCertURL".into(),
        "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-test.pem".into(),
    );
    serde_json::Value::Object(body).to_string()
}

#[tokio::test]
async fn ses_through_sns_is_verified_by_its_certificate_and_topic() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    grant_all(&server, &["fay", "gus", "hal"]).await;
    let complaint = |who: &str, feedback: &str| {
        format!(
            r#"{{"notificationType":"Complaint","complaint":{{"complainedRecipients":[{{"emailAddress":"{who}@example.com"}}],"complaintFeedbackType":"{feedback}","timestamp":"2026-12-01T10:00:00.000Z"}},"mail":{{"messageId":"x"}}}}"#
        )
    };
    // Another topic, a tampered message, a signature by another key: 403.
    let other_topic = sns(
        "Notification",
        "n-0",
        "arn:aws:sns:eu-west-1:1:other",
        &complaint("fay", "abuse"),
        2,
    );
    assert_eq!(post(&server, "ses-acme", &[], &other_topic).await, 403);
    let tampered =
        sns("Notification", "n-1", TOPIC, &complaint("fay", "abuse"), 2).replace("fay@", "gus@");
    assert_eq!(post(&server, "ses-acme", &[], &tampered).await, 403);
    let mut forged: serde_json::Value = serde_json::from_str(&sns(
        "Notification",
        "n-1",
        TOPIC,
        &complaint("fay", "abuse"),
        2,
    ))
    .unwrap();
    forged["SignatureVersion"] = "1".into();
    assert_eq!(
        post(&server, "ses-acme", &[], &forged.to_string()).await,
        403
    );
    assert_eq!(mail_to(&server, "fay").await, Reason::Granted);
    // A subscription confirmation is verified and logged, never visited.
    let confirm = sns(
        "SubscriptionConfirmation",
        "c-1",
        TOPIC,
        "You have chosen to subscribe",
        1,
    );
    assert_eq!(post(&server, "ses-acme", &[], &confirm).await, 200);
    // Signed (both versions): a complaint withdraws, as a complaint; the
    // retried delivery records once; `not-spam` records nothing.
    let signed = sns("Notification", "n-1", TOPIC, &complaint("fay", "abuse"), 1);
    assert_eq!(post(&server, "ses-acme", &[], &signed).await, 200);
    assert_eq!(post(&server, "ses-acme", &[], &signed).await, 200);
    assert_eq!(mail_to(&server, "fay").await, Reason::AddressWithdrawn);
    let fay = address(&server, "fay").await;
    assert_eq!(fay.events.len(), 1);
    assert_eq!(fay.events[0].source(), pb::Source::Complaint);
    assert_eq!(fay.events[0].evidence["provider"], "ses-acme");
    let not_spam = sns(
        "Notification",
        "n-2",
        TOPIC,
        &complaint("gus", "not-spam"),
        2,
    );
    assert_eq!(post(&server, "ses-acme", &[], &not_spam).await, 200);
    assert_eq!(mail_to(&server, "gus").await, Reason::Granted);
    // A permanent bounce marks the address undeliverable, a transient none.
    let bounce = |kind: &str| {
        format!(
            r#"{{"notificationType":"Bounce","bounce":{{"bounceType":"{kind}","bouncedRecipients":[{{"emailAddress":"hal@example.com"}}],"timestamp":"2026-12-01T10:00:00.000Z"}}}}"#
        )
    };
    assert_eq!(
        post(
            &server,
            "ses-acme",
            &[],
            &sns("Notification", "n-3", TOPIC, &bounce("Transient"), 2)
        )
        .await,
        200
    );
    assert_eq!(mail_to(&server, "hal").await, Reason::Granted);
    assert_eq!(
        post(
            &server,
            "ses-acme",
            &[],
            &sns("Notification", "n-4", TOPIC, &bounce("Permanent"), 2)
        )
        .await,
        200
    );
    assert_eq!(mail_to(&server, "hal").await, Reason::Undeliverable);
    // The complaint sticks against a later import of a grant on the address.
    let mut import = change("", "marketing.acme", None);
    import.address = Some(pb::Address {
        kind: pb::AddressKind::Email as i32,
        value: "fay@example.com".into(),
    });
    import.source = pb::Source::Import as i32;
    assert!(
        server
            .consents()
            .await
            .grant(import)
            .await
            .unwrap()
            .into_inner()
            .pending
    );
    assert_eq!(mail_to(&server, "fay").await, Reason::AddressWithdrawn);
    server.stop().await;
}

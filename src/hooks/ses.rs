//! Amazon SES notifications through SNS (DESIGN.md §9). Each SNS message is
//! verified before its content is read: its `TopicArn` must be the file's
//! `topic_arn`; its `Signature` is an RSA PKCS#1 v1.5 signature
//! (`SignatureVersion` 1: SHA-1, 2: SHA-256) over the message's fields as
//! `Name\nValue\n` pairs in byte order of the names, under the certificate
//! pinned in the file (`certificate`, a PEM file), or else the one at
//! `SigningCertURL`, fetched only over https from an SNS host
//! (`sns.<region>.amazonaws.com`) and kept. A `SubscriptionConfirmation`
//! is logged with its URL, never visited (the operator confirms it). A
//! `Notification`'s `Message` is SES's: a `Complaint` (not `not-spam`)
//! withdraws `*`'s consent for each complained recipient, as a complaint; a
//! `Bounce` of type `Permanent` marks each bounced recipient
//! undeliverable. Keyed by the SNS `MessageId` and the recipient.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rsa::RsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use serde::Deserialize;
use x509_cert::Certificate;
use x509_cert::der::{DecodePem, Encode};

use super::signal::{Says, Signal, apply};
use super::{Outcome, Provider};
use crate::authority::Authority;
use crate::domain::{AddressKind, Source, UnixNanos};

/// Largest certificate fetched, in bytes.
const MAX_CERTIFICATE: usize = 64 * 1024;

/// The keys of certificates fetched from SNS, by URL.
#[derive(Debug, Default)]
pub(super) struct Fetched(Mutex<HashMap<String, RsaPublicKey>>);

/// The RSA key of a PEM certificate.
pub(super) fn key_of_pem(pem: &[u8]) -> Result<RsaPublicKey, String> {
    let cert = Certificate::from_pem(pem).map_err(|e| format!("is not a PEM certificate: {e}"))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| e.to_string())?;
    RsaPublicKey::from_public_key_der(&spki)
        .map_err(|e| format!("does not hold an RSA public key: {e}"))
}

/// Whether a `SigningCertURL` may be fetched: https, on an SNS host, a
/// `.pem` path, nothing else in it.
pub(super) fn sns_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("https://") else {
        return false;
    };
    let Some((host, path)) = rest.split_once('/') else {
        return false;
    };
    let labels: Vec<&str> = host.split('.').collect();
    let region_ok = |r: &str| {
        !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let host_ok = match labels.as_slice() {
        ["sns", region, "amazonaws", "com"] => region_ok(region),
        ["sns", region, "amazonaws", "com", "cn"] => region_ok(region),
        _ => false,
    };
    host_ok
        && path.ends_with(".pem")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

/// One SNS message, as far as its signature and content go.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "Type", default)]
    kind: String,
    #[serde(rename = "MessageId", default)]
    message_id: String,
    #[serde(rename = "TopicArn", default)]
    topic_arn: String,
    #[serde(rename = "Subject", default)]
    subject: Option<String>,
    #[serde(rename = "Message", default)]
    message: String,
    #[serde(rename = "Timestamp", default)]
    timestamp: String,
    #[serde(rename = "SignatureVersion", default)]
    signature_version: String,
    #[serde(rename = "Signature", default)]
    signature: String,
    #[serde(rename = "SigningCertURL", default)]
    signing_cert_url: String,
    #[serde(rename = "SubscribeURL", default)]
    subscribe_url: Option<String>,
    #[serde(rename = "Token", default)]
    token: Option<String>,
}

/// The text SNS signs: the message's fields as `Name\nValue\n`, in byte
/// order of the names (`Subject` only when present).
fn string_to_sign(e: &Envelope) -> Option<String> {
    let mut fields: Vec<(&str, &str)> = vec![
        ("Message", &e.message),
        ("MessageId", &e.message_id),
        ("Timestamp", &e.timestamp),
        ("TopicArn", &e.topic_arn),
        ("Type", &e.kind),
    ];
    match e.kind.as_str() {
        "Notification" => {
            if let Some(s) = &e.subject {
                fields.push(("Subject", s));
            }
        }
        "SubscriptionConfirmation" | "UnsubscribeConfirmation" => {
            fields.push(("SubscribeURL", e.subscribe_url.as_deref()?));
            fields.push(("Token", e.token.as_deref()?));
        }
        _ => return None,
    }
    fields.sort_by(|a, b| a.0.cmp(b.0));
    Some(fields.iter().map(|(k, v)| format!("{k}\n{v}\n")).collect())
}

/// Whether `signature` (base64) signs `text` under `key` by the scheme of
/// `version` ("1": SHA-1, "2": SHA-256).
pub(super) fn verify(key: &RsaPublicKey, version: &str, text: &[u8], signature: &str) -> bool {
    let Ok(raw) = STANDARD.decode(signature.trim()) else {
        return false;
    };
    let Ok(signature) = Signature::try_from(raw.as_slice()) else {
        return false;
    };
    match version {
        "1" => VerifyingKey::<sha1::Sha1>::new(key.clone())
            .verify(text, &signature)
            .is_ok(),
        "2" => VerifyingKey::<sha2::Sha256>::new(key.clone())
            .verify(text, &signature)
            .is_ok(),
        _ => false,
    }
}

/// The key to check `e` with: the pinned certificate's, else the one at
/// its `SigningCertURL` (an SNS host only), fetched once.
async fn key_for(provider: &Provider, e: &Envelope) -> Option<RsaPublicKey> {
    if let Some(pinned) = &provider.ses_key {
        return Some(pinned.clone());
    }
    if !sns_url(&e.signing_cert_url) {
        return None;
    }
    if let Some(k) = provider
        .fetched
        .0
        .lock()
        .expect("certificates lock")
        .get(&e.signing_cert_url)
    {
        return Some(k.clone());
    }
    match fetch(&e.signing_cert_url)
        .await
        .and_then(|pem| key_of_pem(&pem))
    {
        Ok(k) => {
            provider
                .fetched
                .0
                .lock()
                .expect("certificates lock")
                .insert(e.signing_cert_url.clone(), k.clone());
            Some(k)
        }
        Err(why) => {
            tracing::warn!(provider = %provider.name, url = %e.signing_cert_url, why = %why, "SNS signing certificate not fetched");
            None
        }
    }
}

pub(super) async fn receive(authority: &Authority, provider: &Provider, body: &[u8]) -> Outcome {
    let Ok(e) = serde_json::from_slice::<Envelope>(body) else {
        return Outcome::Refused;
    };
    if provider.topic_arn.as_deref() != Some(e.topic_arn.as_str()) {
        return Outcome::Refused;
    }
    let Some(text) = string_to_sign(&e) else {
        return Outcome::Refused;
    };
    let Some(key) = key_for(provider, &e).await else {
        return Outcome::Refused;
    };
    if !verify(&key, &e.signature_version, text.as_bytes(), &e.signature) {
        return Outcome::Refused;
    }
    match e.kind.as_str() {
        "Notification" => {}
        "SubscriptionConfirmation" => {
            tracing::warn!(
                provider = %provider.name,
                topic = %e.topic_arn,
                url = e.subscribe_url.as_deref().unwrap_or_default(),
                "SNS asks to confirm the subscription: visit the URL to confirm it (consentd never does)"
            );
            return Outcome::Ignored("a subscription confirmation (logged)".into());
        }
        other => return Outcome::Ignored(format!("an SNS {other}")),
    }
    let Ok(message) = serde_json::from_str::<Message>(&e.message) else {
        return Outcome::Ignored("a notification that is not an SES event".into());
    };
    let signals = signals(&e.message_id, message);
    apply(authority, provider, signals, body).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    #[serde(default)]
    notification_type: Option<String>,
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    complaint: Option<Complaint>,
    #[serde(default)]
    bounce: Option<Bounce>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Complaint {
    #[serde(default)]
    complained_recipients: Vec<Recipient>,
    #[serde(default)]
    complaint_feedback_type: Option<String>,
    #[serde(default)]
    timestamp: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bounce {
    #[serde(default)]
    bounce_type: String,
    #[serde(default)]
    bounced_recipients: Vec<Recipient>,
    #[serde(default)]
    timestamp: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Recipient {
    #[serde(default)]
    email_address: String,
}

fn signals(message_id: &str, m: Message) -> Vec<Signal> {
    let event = m.notification_type.or(m.event_type).unwrap_or_default();
    let (says, recipients, at) = match (event.as_str(), m.complaint, m.bounce) {
        ("Complaint", Some(c), _) if c.complaint_feedback_type.as_deref() != Some("not-spam") => (
            Says::Withdraw(Source::Complaint),
            c.complained_recipients,
            c.timestamp,
        ),
        ("Bounce", _, Some(b)) if b.bounce_type == "Permanent" => {
            (Says::Bounce, b.bounced_recipients, b.timestamp)
        }
        _ => return Vec::new(),
    };
    let at = time::OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| UnixNanos::try_from(t.unix_timestamp_nanos()).ok());
    recipients
        .into_iter()
        .map(|r| Signal {
            event_id: format!("{message_id}:{}", r.email_address),
            kind: AddressKind::Email,
            address: r.email_address,
            says,
            event: event.clone(),
            scopes: Vec::new(),
            occurred_at: at,
        })
        .collect()
}

/// GETs a certificate over https (the host's certificate checked against
/// the system's roots), at most [`MAX_CERTIFICATE`] bytes, within 10 s.
async fn fetch(url: &str) -> Result<Vec<u8>, String> {
    tokio::time::timeout(std::time::Duration::from_secs(10), fetch_now(url))
        .await
        .map_err(|_| "timed out".to_owned())?
}

async fn fetch_now(url: &str) -> Result<Vec<u8>, String> {
    use http_body_util::{BodyExt, Empty, Limited};
    let uri: axum::http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let host = uri.host().ok_or("no host")?.to_owned();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), 443))
        .await
        .map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = axum::http::Request::get(uri.path())
        .header(axum::http::header::HOST, host)
        .body(Empty::<hyper::body::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_CERTIFICATE)
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body.to_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sns_hosts_are_fetched_from() {
        for ok in [
            "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc123.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-x.pem",
        ] {
            assert!(sns_url(ok), "{ok}");
        }
        for bad in [
            "http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc123.pem",
            "https://sns.eu-west-1.amazonaws.com.evil.example/x.pem",
            "https://evil.example/sns.eu-west-1.amazonaws.com/x.pem",
            "https://sns.eu-west-1.amazonaws.com@evil.example/x.pem",
            "https://sns..amazonaws.com/x.pem",
            "https://sns.eu-west-1.amazonaws.com/x.txt",
            "https://sns.eu-west-1.amazonaws.com/x.pem?u=https://evil",
            "https://s3.amazonaws.com/x.pem",
        ] {
            assert!(!sns_url(bad), "{bad}");
        }
    }

    #[test]
    fn the_string_to_sign_is_the_fields_in_name_order() {
        let e: Envelope = serde_json::from_str(
            r#"{"Type":"Notification","MessageId":"m","TopicArn":"arn:t","Subject":"s","Message":"{}","Timestamp":"2026-12-01T00:00:00.000Z"}"#,
        )
        .unwrap();
        assert_eq!(
            string_to_sign(&e).unwrap(),
            "Message\n{}\nMessageId\nm\nSubject\ns\nTimestamp\n2026-12-01T00:00:00.000Z\nTopicArn\narn:t\nType\nNotification\n"
        );
        let c: Envelope = serde_json::from_str(
            r#"{"Type":"SubscriptionConfirmation","MessageId":"m","TopicArn":"arn:t","Message":"x","Timestamp":"t","SubscribeURL":"https://u","Token":"k"}"#,
        )
        .unwrap();
        assert_eq!(
            string_to_sign(&c).unwrap(),
            "Message\nx\nMessageId\nm\nSubscribeURL\nhttps://u\nTimestamp\nt\nToken\nk\nTopicArn\narn:t\nType\nSubscriptionConfirmation\n"
        );
        let no_token: Envelope = serde_json::from_str(
            r#"{"Type":"SubscriptionConfirmation","MessageId":"m","TopicArn":"arn:t","Message":"x","Timestamp":"t","SubscribeURL":"https://u"}"#,
        )
        .unwrap();
        assert!(string_to_sign(&no_token).is_none());
    }

    #[test]
    fn ses_events_map_as_the_contract_says() {
        let read = |json: &str| signals("m1", serde_json::from_str(json).unwrap());
        let s = read(
            r#"{"notificationType":"Complaint","complaint":{"complainedRecipients":[{"emailAddress":"a@x.example"},{"emailAddress":"b@x.example"}],"complaintFeedbackType":"abuse","timestamp":"2026-12-01T10:00:00.000Z"}}"#,
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].event_id, "m1:b@x.example");
        assert_eq!(s[0].says, Says::Withdraw(Source::Complaint));
        assert!(read(r#"{"notificationType":"Complaint","complaint":{"complainedRecipients":[{"emailAddress":"a@x.example"}],"complaintFeedbackType":"not-spam"}}"#).is_empty());
        let b = read(
            r#"{"eventType":"Bounce","bounce":{"bounceType":"Permanent","bouncedRecipients":[{"emailAddress":"a@x.example"}],"timestamp":"2026-12-01T10:00:00Z"}}"#,
        );
        assert_eq!(b[0].says, Says::Bounce);
        assert!(read(r#"{"notificationType":"Bounce","bounce":{"bounceType":"Transient","bouncedRecipients":[{"emailAddress":"a@x.example"}]}}"#).is_empty());
        assert!(read(r#"{"notificationType":"Delivery"}"#).is_empty());
    }
}

//! SendGrid's signed Event Webhook (DESIGN.md §9): the header
//! `X-Twilio-Email-Event-Webhook-Signature` is a base64 DER ECDSA P-256 /
//! SHA-256 signature of the `X-Twilio-Email-Event-Webhook-Timestamp`
//! header's value followed by the raw body, under the public key SendGrid
//! shows (base64 DER). The body is a JSON array of events; each becomes a
//! change on the event's e-mail address, keyed by its `sg_event_id`:
//! `unsubscribe` withdraws the consent mapped from `*`; `group_unsubscribe`
//! and `group_resubscribe` withdraw and lift the one mapped from the event's
//! `asm_group_id`; `spamreport` withdraws `*`'s as a complaint; a `bounce`
//! (not `blocked`) marks the address undeliverable; everything else
//! (delivery, opens, deferrals) records nothing.

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;

use super::signal::{Says, Signal, apply};
use super::{Outcome, Provider};
use crate::authority::Authority;
use crate::domain::{AddressKind, Source};

/// The verifying key of a `public_key` (base64 DER, as SendGrid shows it).
pub(super) fn key(public_key: &str) -> Result<VerifyingKey, String> {
    let der = STANDARD
        .decode(public_key.trim())
        .map_err(|_| "is not base64".to_owned())?;
    VerifyingKey::from_public_key_der(&der)
        .map_err(|e| format!("is not a P-256 public key in DER: {e}"))
}

/// Whether `signature` (base64 DER) signs `timestamp ‖ body` under `key`.
pub(super) fn verify(key: &VerifyingKey, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Ok(der) = STANDARD.decode(signature.trim()) else {
        return false;
    };
    let Ok(signature) = Signature::from_der(&der) else {
        return false;
    };
    let mut signed = Vec::with_capacity(timestamp.len() + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(body);
    key.verify(&signed, &signature).is_ok()
}

/// One event of the array, as far as consentd reads it.
#[derive(Debug, Deserialize)]
struct Event {
    #[serde(default)]
    email: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    sg_event_id: String,
    #[serde(default)]
    asm_group_id: Option<serde_json::Value>,
    /// Unix seconds.
    #[serde(default)]
    timestamp: Option<i64>,
    /// A bounce's type: `bounce` (hard) or `blocked`.
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

pub(super) async fn receive(
    authority: &Authority,
    provider: &Provider,
    headers: &HeaderMap,
    body: &[u8],
) -> Outcome {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(signature), Some(timestamp)) = (
        header("x-twilio-email-event-webhook-signature"),
        header("x-twilio-email-event-webhook-timestamp"),
    ) else {
        return Outcome::Refused;
    };
    let Some(key) = &provider.verifying_key else {
        return Outcome::Refused;
    };
    if !verify(key, timestamp, body, signature) {
        return Outcome::Refused;
    }
    let Ok(events) = serde_json::from_slice::<Vec<Event>>(body) else {
        return Outcome::Ignored("a body that is not a JSON array of events".into());
    };
    let signals = events.into_iter().filter_map(signal).collect();
    apply(authority, provider, signals, body).await
}

/// What one event says, if anything consentd records.
fn signal(e: Event) -> Option<Signal> {
    let group = e.asm_group_id.as_ref().map(|g| match g {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let (says, scopes) = match e.event.as_str() {
        "unsubscribe" => (Says::Withdraw(Source::Provider), vec![]),
        "group_unsubscribe" => (Says::Withdraw(Source::Provider), Vec::from_iter(group)),
        "group_resubscribe" => (Says::Lift(Source::Provider), Vec::from_iter(group)),
        "spamreport" => (Says::Withdraw(Source::Complaint), vec![]),
        // A `blocked` bounce is temporary: only a `bounce` is hard.
        "bounce" if e.kind.as_deref() != Some("blocked") => (Says::Bounce, vec![]),
        _ => return None,
    };
    Some(Signal {
        event_id: e.sg_event_id,
        kind: AddressKind::Email,
        address: e.email,
        says,
        event: e.event,
        scopes,
        occurred_at: e.timestamp.and_then(|t| t.checked_mul(1_000_000_000)),
    })
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::EncodePublicKey;

    use super::*;

    /// SendGrid's own example (the test vector of its Node SDK,
    /// `packages/eventwebhook/src/eventwebhook.spec.js`): this key,
    /// timestamp and payload with this signature verify; a changed byte of
    /// the signature, payload or timestamp does not.
    #[test]
    fn the_published_example_verifies() {
        let key = key("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==").unwrap();
        let signature = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=";
        let payload =
            br#"{"category":"example_payload","event":"test_event","message_id":"message_id"}"#;
        assert!(verify(&key, "1588788367", payload, signature));
        let changed = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH3j/0=";
        assert!(!verify(&key, "1588788367", payload, changed));
        assert!(!verify(&key, "1588788367", b"payload", signature));
        assert!(!verify(&key, "timestamp", payload, signature));
        let other = super::key("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWHw8REntlo7aNDthvj+y7GjUuFDb/R1NGe1OPzpA==").unwrap();
        assert!(!verify(&other, "1588788367", payload, signature));
    }

    #[test]
    fn a_signature_over_timestamp_and_body_verifies_and_nothing_else_does() {
        let signing = SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
        let der = signing.verifying_key().to_public_key_der().unwrap();
        let key = key(&STANDARD.encode(der.as_bytes())).unwrap();
        let body = br#"[{"email":"a@example.com","event":"unsubscribe","sg_event_id":"e1"}]"#;
        let mut signed = b"1700000000".to_vec();
        signed.extend_from_slice(body);
        let signature: Signature = signing.sign(&signed);
        let header = STANDARD.encode(signature.to_der().as_bytes());
        assert!(verify(&key, "1700000000", body, &header));
        assert!(!verify(&key, "1700000001", body, &header), "another time");
        assert!(!verify(&key, "1700000000", b"[]", &header), "another body");
        assert!(!verify(&key, "1700000000", body, "AAAA"));
        let other = SigningKey::from_bytes(&[8u8; 32].into()).unwrap();
        let other_der = other.verifying_key().to_public_key_der().unwrap();
        let other_key = super::key(&STANDARD.encode(other_der.as_bytes())).unwrap();
        assert!(
            !verify(&other_key, "1700000000", body, &header),
            "another key"
        );
        assert!(super::key("not base64 at all!").is_err());
        assert!(super::key(&STANDARD.encode(b"not DER")).is_err());
    }
}

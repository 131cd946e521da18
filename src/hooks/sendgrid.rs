//! SendGrid's signed Event Webhook (DESIGN.md §9): the header
//! `X-Twilio-Email-Event-Webhook-Signature` is a base64 DER ECDSA P-256 /
//! SHA-256 signature of the `X-Twilio-Email-Event-Webhook-Timestamp`
//! header's value followed by the raw body, under the public key SendGrid
//! shows (base64 DER). The body is a JSON array of events; each becomes a
//! change on the event's e-mail address, keyed by its `sg_event_id`:
//! `unsubscribe` withdraws the consent mapped from `*`; `group_unsubscribe`
//! and `group_resubscribe` withdraw and lift the one mapped from the event's
//! `asm_group_id`; `spamreport` withdraws `*`'s as a complaint; everything
//! else (delivery, opens, bounces until undeliverable addresses exist)
//! records nothing.

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;

use super::{Outcome, Provider, digest};
use crate::authority::{Authority, KindOf, RawAddress};
use crate::domain::{Action, AddressKind, ConsentId, Evidence, Source};

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
    let body_digest = digest(body);
    let (mut recorded, mut replayed) = (None, None);
    for e in events {
        let group = e.asm_group_id.as_ref().map(|g| match g {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        let (action, source, scope) = match e.event.as_str() {
            "unsubscribe" => (Action::Withdraw, Source::Provider, None),
            "group_unsubscribe" => (Action::Withdraw, Source::Provider, group.as_deref()),
            "group_resubscribe" => (Action::Grant, Source::Provider, group.as_deref()),
            "spamreport" => (Action::Withdraw, Source::Complaint, None),
            _ => continue,
        };
        if e.sg_event_id.is_empty() {
            continue;
        }
        let Some(consent) = provider.consent_for(scope) else {
            continue;
        };
        let Ok(consent) = ConsentId::parse("consents", consent) else {
            continue;
        };
        let to = RawAddress {
            kind: KindOf::Kind(AddressKind::Email),
            value: &e.email,
        };
        let Ok((_, key)) = authority.addressing().read("email", to) else {
            continue;
        };
        let mut evidence = Evidence::new();
        evidence.insert("provider".into(), provider.name.clone());
        evidence.insert("event_id".into(), e.sg_event_id.clone());
        evidence.insert("event".into(), e.event.clone());
        evidence.insert("body_sha256".into(), body_digest.clone());
        if let Some(g) = &group {
            evidence.insert("asm_group_id".into(), g.clone());
        }
        let change = super::change_on(
            provider,
            key,
            consent,
            action,
            source,
            &e.sg_event_id,
            evidence,
        );
        match super::record(authority, change).await {
            Ok((sequence, true)) => replayed = Some(sequence),
            Ok((sequence, false)) => recorded = Some(sequence),
            Err(crate::authority::ChangeError::UnknownConsent(_)) => continue,
            // The batch is retried whole; what was recorded replays.
            Err(err) => return Outcome::Failed(err.to_string()),
        }
    }
    match (recorded, replayed) {
        (Some(sequence), _) => Outcome::Recorded(sequence),
        (None, Some(sequence)) => Outcome::Replayed(sequence),
        (None, None) => Outcome::Ignored("no event that changes consent".into()),
    }
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::EncodePublicKey;

    use super::*;

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

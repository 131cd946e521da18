//! Requests signed exactly as each provider documents (DESIGN.md §9), with
//! the caller's own keys: what the tests and `benches/hooks.rs` post to
//! `/hooks/{name}`.
#![allow(dead_code)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A Mailgun webhook body: `event` (the `event-data` JSON) under a
/// signature of `timestamp ‖ token` (hex HMAC-SHA256 under `key`).
pub(crate) fn mailgun(key: &str, timestamp: i64, token: &str, event: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{timestamp}{token}").as_bytes());
    let signature = hex(&mac.finalize().into_bytes());
    format!(
        r#"{{"signature":{{"timestamp":"{timestamp}","token":"{token}","signature":"{signature}"}},"event-data":{event}}}"#
    )
}

/// SendGrid's `X-Twilio-Email-Event-Webhook-Signature`: base64 DER ECDSA
/// P-256 / SHA-256 of `timestamp ‖ body`.
pub(crate) fn sendgrid(key: &p256::ecdsa::SigningKey, timestamp: &str, body: &str) -> String {
    use p256::ecdsa::signature::Signer;
    let signature: p256::ecdsa::Signature = key.sign(format!("{timestamp}{body}").as_bytes());
    STANDARD.encode(signature.to_der().as_bytes())
}

/// Twilio's `X-Twilio-Signature`: base64 HMAC-SHA1 of the URL followed by
/// every parameter's name and value, sorted by name.
pub(crate) fn twilio<K: AsRef<str>, V: AsRef<str>>(
    token: &str,
    url: &str,
    params: &[(K, V)],
) -> String {
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    sorted.sort();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The base64 DER of a P-256 public key, as SendGrid shows it.
pub(crate) fn sendgrid_public_key(key: &p256::ecdsa::SigningKey) -> String {
    use p256::pkcs8::EncodePublicKey;
    STANDARD.encode(key.verifying_key().to_public_key_der().unwrap().as_bytes())
}

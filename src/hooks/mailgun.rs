//! Mailgun webhooks (DESIGN.md §9): the JSON body carries
//! `signature.{timestamp, token, signature}`, where `signature` is the hex
//! HMAC-SHA256 of `timestamp` followed by `token` under the webhook signing
//! key. A request more than 5 minutes from now, or whose token was seen
//! before, is refused like a forgery. `event-data.event`: `unsubscribed`
//! withdraws the consent mapped from the first of its `tags` that maps
//! (else `*`), `complained` likewise as a complaint, `failed` with
//! `severity` `permanent` marks the recipient undeliverable; keyed by
//! `event-data.id`.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::signal::{Says, Signal, apply};
use super::{Outcome, Provider, unhex};
use crate::authority::Authority;
use crate::domain::{AddressKind, Source, UnixNanos};

/// How far a request's timestamp may be from now, in seconds.
pub(super) const WINDOW_SECS: i64 = 300;

/// Most tokens remembered: beyond it the oldest go first (a replay of one
/// of those still records nothing: its event id is the idempotency key).
const MAX_TOKENS: usize = 1 << 20;

/// Tokens seen within the window: a set to ask, and a queue in arrival
/// order (with when each may be forgotten) to forget them cheaply.
#[derive(Debug, Default)]
pub(super) struct Tokens(Mutex<Seen>);

#[derive(Debug, Default)]
struct Seen {
    set: HashSet<String>,
    queue: VecDeque<(i64, String)>,
}

impl Tokens {
    fn seen(&self, token: &str) -> bool {
        self.0.lock().expect("tokens lock").set.contains(token)
    }

    /// Remembers a token until its window closes; forgets those whose
    /// window closed (from the front of the queue: amortised constant).
    fn remember(&self, token: &str, timestamp: i64, now: i64) {
        let mut seen = self.0.lock().expect("tokens lock");
        let Seen { set, queue } = &mut *seen;
        while let Some((until, _)) = queue.front() {
            if *until >= now && queue.len() < MAX_TOKENS {
                break;
            }
            if let Some((_, old)) = queue.pop_front() {
                set.remove(&old);
            }
        }
        if set.insert(token.to_owned()) {
            queue.push_back((timestamp + WINDOW_SECS, token.to_owned()));
        }
    }
}

/// Whether `signature` (hex) is the HMAC-SHA256 of `timestamp ‖ token`
/// under `key`; compared in constant time.
pub(super) fn verify(key: &str, timestamp: &str, token: &str, signature: &str) -> bool {
    let Some(given) = unhex(signature.trim()) else {
        return false;
    };
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    mac.verify_slice(&given).is_ok()
}

#[derive(Debug, Deserialize)]
struct Body {
    signature: Signed,
    #[serde(rename = "event-data", default)]
    event_data: Option<EventData>,
}

#[derive(Debug, Deserialize)]
struct Signed {
    timestamp: String,
    token: String,
    signature: String,
}

#[derive(Debug, Deserialize)]
struct EventData {
    #[serde(default)]
    event: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    severity: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    timestamp: Option<f64>,
}

pub(super) async fn receive(
    authority: &Authority,
    provider: &Provider,
    body: &[u8],
    now: UnixNanos,
) -> Outcome {
    let Ok(request) = serde_json::from_slice::<Body>(body) else {
        return Outcome::Refused;
    };
    let s = &request.signature;
    let key = provider.signing_key.as_deref().unwrap_or_default();
    if !verify(key, &s.timestamp, &s.token, &s.signature) {
        return Outcome::Refused;
    }
    let now_secs = now / 1_000_000_000;
    let Ok(timestamp) = s.timestamp.trim().parse::<i64>() else {
        return Outcome::Refused;
    };
    if (now_secs - timestamp).abs() > WINDOW_SECS || provider.tokens.seen(&s.token) {
        return Outcome::Refused;
    }
    let signals = request.event_data.and_then(signal).into_iter().collect();
    let outcome = apply(authority, provider, signals, body).await;
    if !matches!(outcome, Outcome::Failed(_)) {
        // A delivery the store could not take may come again as it was.
        provider.tokens.remember(&s.token, timestamp, now_secs);
    }
    outcome
}

fn signal(e: EventData) -> Option<Signal> {
    let says = match e.event.as_str() {
        "unsubscribed" => Says::Withdraw(Source::Provider),
        "complained" => Says::Withdraw(Source::Complaint),
        "failed" if e.severity == "permanent" => Says::Bounce,
        _ => return None,
    };
    Some(Signal {
        event_id: e.id,
        kind: AddressKind::Email,
        address: e.recipient,
        says,
        event: e.event,
        scopes: e.tags,
        occurred_at: e
            .timestamp
            .filter(|t| t.is_finite() && *t > 0.0 && *t < 1e10)
            .map(|t| (t * 1e9) as UnixNanos),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signed as Mailgun's "securing webhooks" page says: hex HMAC-SHA256
    /// of timestamp ‖ token (its example token) under the signing key.
    #[test]
    fn a_signature_over_timestamp_and_token_verifies_and_nothing_else_does() {
        let key = "key-example-signing-key";
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(b"1529006854a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let token = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0";
        assert!(verify(key, "1529006854", token, &hex));
        assert!(verify(key, "1529006854", token, &hex.to_uppercase()));
        assert!(!verify(key, "1529006855", token, &hex));
        assert!(!verify(key, "1529006854", "another-token", &hex));
        assert!(!verify("another key", "1529006854", token, &hex));
        assert!(!verify(key, "1529006854", token, "not hex"));
    }

    #[test]
    fn a_token_is_remembered_for_its_window_only() {
        let tokens = Tokens::default();
        tokens.remember("t1", 1000, 1000);
        assert!(tokens.seen("t1"));
        tokens.remember("t2", 1400, 1301);
        assert!(!tokens.seen("t1"), "forgotten once its window closed");
        assert!(tokens.seen("t2"));
    }
}

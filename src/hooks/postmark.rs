//! Postmark webhooks (DESIGN.md §9): Postmark signs nothing; its webhook
//! URL carries basic auth (`https://user:pass@host/hooks/NAME`), checked in
//! constant time against the file's `username` and `password`. The body is
//! one JSON record, by `RecordType`: a `SubscriptionChange` with
//! `SuppressSending` true withdraws the consent mapped from its
//! `MessageStream` (a `SpamComplaint` reason as a complaint; a
//! `HardBounce` reason marks the address undeliverable instead), false
//! lifts it (as the person's when `Origin` is `Recipient`, else as a
//! system's, which waits over the person's withdrawal); a `SpamComplaint`
//! record withdraws as a complaint; a `Bounce` of `Type` `HardBounce`
//! marks the address undeliverable. Keyed by the record's `ID`, or for a
//! subscription change (which has none) by its message, time and state.

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::signal::{Says, Signal, apply};
use super::{Outcome, Provider};
use crate::authority::Authority;
use crate::domain::{AddressKind, Source, UnixNanos};

/// Whether the `Authorization` header is basic auth with exactly this
/// username and password; compared in constant time.
pub(super) fn verify(headers: &HeaderMap, username: &str, password: &str) -> bool {
    let Some(given) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
    else {
        return false;
    };
    let expected = format!("{username}:{password}");
    bool::from(given.ct_eq(expected.as_bytes()))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Record {
    #[serde(default)]
    record_type: String,
    #[serde(rename = "ID", default)]
    id: Option<serde_json::Value>,
    #[serde(rename = "MessageID", default)]
    message_id: String,
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    message_stream: String,
    #[serde(default)]
    suppress_sending: bool,
    #[serde(default)]
    suppression_reason: String,
    #[serde(default)]
    origin: String,
    #[serde(default)]
    changed_at: String,
    #[serde(default)]
    bounced_at: String,
    #[serde(rename = "Type", default)]
    kind: String,
}

pub(super) async fn receive(
    authority: &Authority,
    provider: &Provider,
    headers: &HeaderMap,
    body: &[u8],
) -> Outcome {
    let username = provider.username.as_deref().unwrap_or_default();
    let password = provider.password.as_deref().unwrap_or_default();
    if !verify(headers, username, password) {
        return Outcome::Refused;
    }
    let Ok(record) = serde_json::from_slice::<Record>(body) else {
        return Outcome::Ignored("a body that is not a JSON record".into());
    };
    let signals = signal(record).into_iter().collect();
    apply(authority, provider, signals, body).await
}

fn signal(r: Record) -> Option<Signal> {
    let id = match &r.id {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let stream = (!r.message_stream.is_empty()).then(|| r.message_stream.clone());
    let (says, address, event_id, at) = match r.record_type.as_str() {
        "SubscriptionChange" => {
            let says = match (r.suppress_sending, r.suppression_reason.as_str()) {
                (true, "HardBounce") => Says::Bounce,
                (true, "SpamComplaint") => Says::Withdraw(Source::Complaint),
                (true, _) => Says::Withdraw(Source::Provider),
                (false, _) if r.origin == "Recipient" => Says::Lift(Source::Provider),
                (false, _) => Says::Lift(Source::Api),
            };
            let key = format!(
                "SubscriptionChange:{}:{}:{}",
                r.message_id, r.changed_at, r.suppress_sending
            );
            (says, r.recipient, key, r.changed_at)
        }
        "SpamComplaint" => (
            Says::Withdraw(Source::Complaint),
            r.email,
            format!("SpamComplaint:{id}"),
            r.bounced_at,
        ),
        "Bounce" if r.kind == "HardBounce" => {
            (Says::Bounce, r.email, format!("Bounce:{id}"), r.bounced_at)
        }
        _ => return None,
    };
    if event_id.ends_with(':') {
        return None;
    }
    Some(Signal {
        event_id,
        kind: AddressKind::Email,
        address,
        says,
        event: r.record_type,
        scopes: Vec::from_iter(stream),
        occurred_at: parse_time(&at),
    })
}

/// An ISO 8601 time as Postmark writes it, in nanoseconds.
fn parse_time(at: &str) -> Option<UnixNanos> {
    let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_must_match_exactly() {
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert("authorization", value.parse().unwrap());
            h
        };
        let good = format!("Basic {}", STANDARD.encode("pm:s3cret"));
        assert!(verify(&with(&good), "pm", "s3cret"));
        for bad in [
            format!("Basic {}", STANDARD.encode("pm:s3cre")),
            format!("Basic {}", STANDARD.encode("pm:s3cretx")),
            format!("Basic {}", STANDARD.encode("PM:s3cret")),
            format!("Bearer {}", STANDARD.encode("pm:s3cret")),
            "Basic !!!".to_owned(),
        ] {
            assert!(!verify(&with(&bad), "pm", "s3cret"), "{bad}");
        }
        assert!(!verify(&HeaderMap::new(), "pm", "s3cret"));
    }

    #[test]
    fn records_map_as_the_contract_says() {
        let read = |json: &str| signal(serde_json::from_str(json).unwrap());
        let s = read(r#"{"RecordType":"SubscriptionChange","MessageID":"m1","Recipient":"a@x.example","MessageStream":"broadcast","ChangedAt":"2026-12-01T10:00:00Z","SuppressSending":true,"SuppressionReason":"ManualSuppression","Origin":"Recipient"}"#).unwrap();
        assert_eq!(s.says, Says::Withdraw(Source::Provider));
        assert_eq!(s.scopes, vec!["broadcast".to_owned()]);
        assert_eq!(s.occurred_at, Some(1_796_119_200_000_000_000));
        let s = read(r#"{"RecordType":"SubscriptionChange","MessageID":"m1","Recipient":"a@x.example","ChangedAt":"2026-12-01T10:00:00Z","SuppressSending":true,"SuppressionReason":"HardBounce"}"#).unwrap();
        assert_eq!(s.says, Says::Bounce);
        let s = read(r#"{"RecordType":"SubscriptionChange","MessageID":"m1","Recipient":"a@x.example","ChangedAt":"2026-12-01T11:00:00Z","SuppressSending":false,"Origin":"Customer"}"#).unwrap();
        assert_eq!(s.says, Says::Lift(Source::Api));
        let s = read(r#"{"RecordType":"SpamComplaint","ID":42,"Email":"a@x.example","BouncedAt":"2026-12-01T10:00:00Z"}"#).unwrap();
        assert_eq!(
            (s.says, s.event_id.as_str()),
            (Says::Withdraw(Source::Complaint), "SpamComplaint:42")
        );
        assert!(
            read(r#"{"RecordType":"Bounce","ID":7,"Type":"SoftBounce","Email":"a@x.example"}"#)
                .is_none()
        );
        assert!(read(r#"{"RecordType":"Delivery","ID":7,"Recipient":"a@x.example"}"#).is_none());
        assert!(
            read(r#"{"RecordType":"SpamComplaint","Email":"a@x.example"}"#).is_none(),
            "no id"
        );
    }
}

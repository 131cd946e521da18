//! Twilio inbound SMS (DESIGN.md §9): `X-Twilio-Signature` is the base64
//! HMAC-SHA1, under the account's Auth Token, of the URL as Twilio called
//! it followed by every POST parameter's name and value, sorted by name.
//! A message whose whole body is an opt-out keyword (STOP, STOPALL,
//! UNSUBSCRIBE, CANCEL, END, QUIT; any case) withdraws the consent mapped
//! from its MessagingServiceSid, else its To number, else `*`, on the
//! sender's address (`From`); START, YES, UNSTOP lift it; HELP and anything
//! else record nothing. The answer is an empty TwiML `<Response/>`.

use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::signal::{Says, Signal, apply};
use super::{Outcome, Provider, text_xml};
use crate::authority::Authority;
use crate::domain::{Action, AddressKind, Source};

const OPT_OUT: [&str; 6] = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"];
const OPT_IN: [&str; 3] = ["START", "YES", "UNSTOP"];

/// Whether `signature` (the header, base64) signs `url` and `params` under
/// `token`; compared in constant time.
pub(super) fn verify(token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    let Ok(given) = STANDARD.decode(signature.trim()) else {
        return false;
    };
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut mac =
        Hmac::<Sha1>::new_from_slice(token.as_bytes()).expect("HMAC takes any key length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    mac.verify_slice(&given).is_ok()
}

pub(super) async fn receive(
    authority: &Authority,
    provider: &Provider,
    url: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Outcome {
    let token = provider.auth_token.as_deref().unwrap_or_default();
    let Some(signature) = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return Outcome::Refused;
    };
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
    if !verify(token, url, &params, signature) {
        return Outcome::Refused;
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    let keyword = param("Body").trim().to_ascii_uppercase();
    let action = if OPT_OUT.contains(&keyword.as_str()) {
        Action::Withdraw
    } else if OPT_IN.contains(&keyword.as_str()) {
        Action::Grant
    } else {
        return Outcome::Ignored(format!(
            "a message that is not an opt-out or opt-in keyword ({} bytes)",
            keyword.len()
        ));
    };
    let says = match action {
        Action::Withdraw => Says::Withdraw(Source::SmsKeyword),
        Action::Grant => Says::Lift(Source::SmsKeyword),
    };
    let scopes = [param("MessagingServiceSid"), param("To")]
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let signal = Signal {
        event_id: param("MessageSid").to_owned(),
        kind: AddressKind::Phone,
        address: param("From").to_owned(),
        says,
        event: keyword,
        scopes,
        occurred_at: None,
    };
    apply(authority, provider, vec![signal], body).await
}

/// The empty TwiML answer: no reply message from consentd.
pub(super) fn answer() -> Response {
    text_xml("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Twilio's own example (its request-validation docs): Auth Token
    /// `12345`, this URL and these parameters sign to this header.
    #[test]
    fn the_published_example_verifies_and_a_changed_one_does_not() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert!(verify(
            "12345",
            url,
            &params,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
        // The order parameters arrive in does not matter.
        let mut shuffled = params.clone();
        shuffled.reverse();
        assert!(verify(
            "12345",
            url,
            &shuffled,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
        assert!(!verify(
            "12346",
            url,
            &params,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
        assert!(!verify(
            "12345",
            "https://mycompany.com/myapp.php",
            &params,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
        let mut changed = params.clone();
        changed[2].1 = "1235".into();
        assert!(!verify(
            "12345",
            url,
            &changed,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
        assert!(!verify("12345", url, &params, "not base64!"));
        assert!(!verify("12345", url, &params, ""));
    }
}

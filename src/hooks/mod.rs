//! Provider webhooks on the public listener (DESIGN.md §9): `POST
//! /hooks/{name}`, one per `[[provider]]` of `--providers FILE`. Each
//! request is verified before anything is read from it (a bad one is 403
//! and records nothing); what it reports becomes a change on the address it
//! names, with the provider's event id as the idempotency key, so a retried
//! delivery records once. Built so far: Twilio (inbound SMS keywords) and
//! SendGrid (the signed Event Webhook).

mod mailgun;
mod postmark;
mod sendgrid;
mod ses;
mod signal;
mod twilio;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::authority::Authority;

/// The providers file: one `[[provider]]` per endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    provider: Vec<Provider>,
}

/// Which provider's format and signature an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Twilio Programmable Messaging: inbound SMS, `X-Twilio-Signature`.
    Twilio,
    /// SendGrid's signed Event Webhook (ECDSA P-256).
    Sendgrid,
    /// Mailgun webhooks (HMAC-SHA256, 5-minute window, tokens once).
    Mailgun,
    /// Postmark webhooks (basic auth in the URL).
    Postmark,
    /// Amazon SES notifications through SNS (RSA, SignatureVersion 1 and 2).
    Ses,
}

/// One endpoint, as the file declares it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// `POST /hooks/{name}`: `[a-z0-9-]{1,64}`.
    pub name: String,
    /// Its format and signature.
    pub kind: Kind,
    /// The brand its messages are sent for (evidence; scopes to come).
    #[serde(default)]
    pub brand: String,
    /// Twilio: the account's Auth Token, the HMAC key of its signatures.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// SendGrid: the verification key, base64 DER, as SendGrid shows it.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Mailgun: the webhook signing key, the HMAC key of its signatures.
    #[serde(default)]
    pub signing_key: Option<String>,
    /// Postmark: the basic-auth username of its webhook URL.
    #[serde(default)]
    pub username: Option<String>,
    /// Postmark: the basic-auth password of its webhook URL.
    #[serde(default)]
    pub password: Option<String>,
    /// SES: the SNS topic the notifications must come from.
    #[serde(default)]
    pub topic_arn: Option<String>,
    /// SES: the SNS signing certificate, a PEM file (relative to the
    /// providers file); absent, it is fetched from the SNS host.
    #[serde(default)]
    pub certificate: Option<std::path::PathBuf>,
    /// SES: the pinned certificate's key, read at start.
    #[serde(skip)]
    ses_key: Option<rsa::RsaPublicKey>,
    /// SES: keys of certificates fetched from SNS, by URL.
    #[serde(skip)]
    fetched: std::sync::Arc<ses::Fetched>,
    /// Mailgun: the tokens seen within the window (replays refused).
    #[serde(skip)]
    tokens: std::sync::Arc<mailgun::Tokens>,
    /// SendGrid: that key, read at start.
    #[serde(skip)]
    verifying_key: Option<p256::ecdsa::VerifyingKey>,
    /// The URL exactly as the provider calls it (the signature covers it);
    /// default: `--public-url` + the request's path and query.
    #[serde(default)]
    pub url: Option<String>,
    /// The provider's scope → the consent its opt-outs withdraw (`*`: any
    /// other scope). Twilio: MessagingServiceSid, else the To number.
    #[serde(default)]
    pub consents: BTreeMap<String, String>,
}

impl Provider {
    /// The consent a scope maps to: the first of `scopes` the file names,
    /// else `*`.
    pub fn consent_for<'a>(&self, scopes: impl IntoIterator<Item = &'a str>) -> Option<&str> {
        scopes
            .into_iter()
            .find_map(|s| self.consents.get(s))
            .or_else(|| self.consents.get("*"))
            .map(String::as_str)
    }
}

/// What happened to the requests each outcome counts.
#[derive(Debug, Default)]
pub struct Counts {
    recorded: AtomicU64,
    replayed: AtomicU64,
    ignored: AtomicU64,
    refused: AtomicU64,
}

/// Every endpoint, by name.
#[derive(Debug, Default)]
pub struct Hooks {
    by_name: BTreeMap<String, Provider>,
    public_url: String,
    counts: Counts,
}

impl Hooks {
    /// No endpoints (no `--providers`).
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads `--providers FILE`; every mistake is an error naming it.
    pub fn load(path: &Path, public_url: &str) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--providers {}: {e}", path.display()))?;
        Self::parse_in(&text, public_url, path.parent())
            .map_err(|e| anyhow::anyhow!("--providers {}: {e}", path.display()))
    }

    /// Parses a providers file.
    pub fn parse(text: &str, public_url: &str) -> Result<Self, String> {
        Self::parse_in(text, public_url, None)
    }

    /// Reads a providers file's text; relative certificate paths are read
    /// in `base` (the file's directory).
    pub fn parse_in(text: &str, public_url: &str, base: Option<&Path>) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_name = BTreeMap::new();
        for (i, mut p) in file.provider.into_iter().enumerate() {
            let at = format!("provider[{i}]");
            let ok_name = !p.name.is_empty()
                && p.name.len() <= 64
                && p.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok_name {
                return Err(format!(
                    "{at}.name: {:?} must be 1 to 64 of a-z, 0-9 and -",
                    p.name
                ));
            }
            match p.kind {
                Kind::Twilio if p.auth_token.as_deref().is_none_or(str::is_empty) => {
                    return Err(format!("{at}.auth_token: a twilio endpoint needs one"));
                }
                Kind::Twilio => {}
                Kind::Sendgrid => {
                    let key = p.public_key.as_deref().unwrap_or_default();
                    p.verifying_key =
                        Some(sendgrid::key(key).map_err(|e| format!("{at}.public_key: {e}"))?);
                }
                Kind::Mailgun if p.signing_key.as_deref().is_none_or(str::is_empty) => {
                    return Err(format!("{at}.signing_key: a mailgun endpoint needs one"));
                }
                Kind::Mailgun => {}
                Kind::Ses => {
                    if p.topic_arn.as_deref().is_none_or(str::is_empty) {
                        return Err(format!(
                            "{at}.topic_arn: an ses endpoint needs the SNS topic it takes"
                        ));
                    }
                    if let Some(file) = &p.certificate {
                        let file = match base {
                            Some(dir) if file.is_relative() => dir.join(file),
                            _ => file.clone(),
                        };
                        let pem = std::fs::read(&file)
                            .map_err(|e| format!("{at}.certificate: {}: {e}", file.display()))?;
                        p.ses_key = Some(
                            ses::key_of_pem(&pem).map_err(|e| format!("{at}.certificate: {e}"))?,
                        );
                    }
                }
                Kind::Postmark => {
                    for (field, value) in [("username", &p.username), ("password", &p.password)] {
                        if value.as_deref().is_none_or(str::is_empty) {
                            return Err(format!(
                                "{at}.{field}: a postmark endpoint needs one (its webhook URL's basic auth)"
                            ));
                        }
                    }
                }
            }
            if p.consents.is_empty() {
                return Err(format!(
                    "{at}.consents: map at least one scope (or \"*\") to a consent"
                ));
            }
            if by_name.insert(p.name.clone(), p).is_some() {
                return Err(format!("{at}.name: declared twice"));
            }
        }
        Ok(Self {
            by_name,
            public_url: public_url.trim_end_matches('/').to_owned(),
            counts: Counts::default(),
        })
    }

    /// The endpoint named `name`, if the file declares it.
    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.by_name.get(name)
    }

    /// How many endpoints the file declares.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Prometheus lines: requests by outcome.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("# HELP consentd_hook_requests_total Provider webhook requests by outcome.\n");
        out.push_str("# TYPE consentd_hook_requests_total counter\n");
        let c = &self.counts;
        for (outcome, n) in [
            ("recorded", &c.recorded),
            ("replayed", &c.replayed),
            ("ignored", &c.ignored),
            ("refused", &c.refused),
        ] {
            let _ = writeln!(
                out,
                "consentd_hook_requests_total{{outcome=\"{outcome}\"}} {}",
                n.load(Relaxed)
            );
        }
    }

    /// `POST /hooks/{name}`: `None` when no endpoint has that name (the
    /// caller answers the one 404).
    pub(crate) async fn receive(
        &self,
        authority: &Authority,
        name: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<Response> {
        let provider = self.by_name.get(name)?;
        let url = provider
            .url
            .clone()
            .unwrap_or_else(|| format!("{}{path_and_query}", self.public_url));
        let outcome = match provider.kind {
            Kind::Twilio => twilio::receive(authority, provider, &url, headers, body).await,
            Kind::Sendgrid => sendgrid::receive(authority, provider, headers, body).await,
            Kind::Mailgun => mailgun::receive(authority, provider, body, authority.now()).await,
            Kind::Postmark => postmark::receive(authority, provider, headers, body).await,
            Kind::Ses => ses::receive(authority, provider, body).await,
        };
        let counter = match &outcome {
            Outcome::Recorded(sequence) => {
                tracing::debug!(provider = name, sequence, "webhook event recorded");
                &self.counts.recorded
            }
            Outcome::Replayed(sequence) => {
                tracing::debug!(provider = name, sequence, "webhook event already recorded");
                &self.counts.replayed
            }
            Outcome::Ignored(why) => {
                tracing::info!(provider = name, why = %why, "webhook event maps to nothing");
                &self.counts.ignored
            }
            Outcome::Refused => {
                tracing::warn!(provider = name, "webhook refused: bad or missing signature");
                &self.counts.refused
            }
            Outcome::Failed(e) => {
                tracing::error!(provider = name, error = %e, "webhook event not recorded");
                return Some((StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response());
            }
        };
        counter.fetch_add(1, Relaxed);
        Some(match (provider.kind, outcome) {
            (_, Outcome::Refused) => (StatusCode::FORBIDDEN, "signature\n").into_response(),
            (Kind::Twilio, _) => twilio::answer(),
            (_, _) => (StatusCode::OK, "").into_response(),
        })
    }
}

/// What one request came to.
#[derive(Debug)]
enum Outcome {
    /// Recorded (the sequence).
    Recorded(u64),
    /// Its event id was recorded before: nothing new.
    Replayed(u64),
    /// Verified, but it maps to nothing (why); answered 200 so that the
    /// provider does not retry.
    Ignored(String),
    /// Not verified: 403, nothing read further, nothing recorded.
    Refused,
    /// Verified and mapped, but the store could not take it: 503, the
    /// provider retries.
    Failed(String),
}

/// The bytes of a hex string (either case), if it is one.
fn unhex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The hex SHA-256 of a request body: the evidence that names what came.
fn digest(body: &[u8]) -> String {
    Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A plain-text content type, for answers providers only log.
fn text_xml(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}

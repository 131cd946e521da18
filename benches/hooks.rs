//! Provider webhooks under load: signed requests of each kind posted to a
//! running consentd's `/hooks/{name}`, verification on, every event a new
//! address withdrawal (or bounce) recorded durably before the answer.
//!
//! ```text
//! cargo bench --bench hooks [-- --seconds 8 --inflight 32 --batch 100]
//! ```
//!
//! Starts consentd in process (temp data dir, examples/catalog.toml, redb)
//! with a providers file of the bench's own keys, then for `--seconds` each:
//! 1. Twilio inbound SMS STOPs (HMAC-SHA1 over URL and params), one event
//!    per request;
//! 2. Mailgun `unsubscribed` (HMAC-SHA256, 5-minute window, each token
//!    once), one event per request;
//! 3. SendGrid Event Webhook batches of `--batch` unsubscribes (ECDSA
//!    P-256 over timestamp ‖ body), one signature per request;
//! 4. forged requests (a wrong signature), refused with 403: what
//!    verification alone costs.
//!
//! Prints requests/s, events/s and latency per phase.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::sign;
use tonic::Status;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Seconds per phase.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    inflight: usize,
    /// Events per SendGrid request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const TWILIO_TOKEN: &str = "bench-twilio-auth-token";
const MAILGUN_KEY: &str = "bench-mailgun-signing-key";

fn sendgrid_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_bytes(&[77u8; 32].into()).unwrap()
}

type Http = Client<HttpConnector, Full<Bytes>>;

/// POSTs `body` to `url` with `headers`; an error unless the answer is `want`.
async fn post(
    client: &Http,
    url: &str,
    headers: &[(&str, String)],
    body: String,
    want: u16,
) -> Result<(), Status> {
    let mut req = hyper::Request::post(url);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Status::internal(e.to_string()))?;
    let res = client
        .request(req)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let status = res.status().as_u16();
    let _ = res.into_body().collect().await;
    if status == want {
        Ok(())
    } else {
        Err(Status::internal(format!("answered {status}")))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server_rt = support::runtime("server")?;
    let client_rt = support::runtime("client")?;
    let dir = tempfile::tempdir()?;
    let providers = dir.path().join("providers.toml");
    let public_key = sign::sendgrid_public_key(&sendgrid_key());
    std::fs::write(
        &providers,
        format!(
            r#"
[[provider]]
name = "sms"
kind = "twilio"
auth_token = "{TWILIO_TOKEN}"
[provider.consents]
"*" = "marketing.zenith"

[[provider]]
name = "mg"
kind = "mailgun"
signing_key = "{MAILGUN_KEY}"
[provider.consents]
"*" = "marketing.acme"

[[provider]]
name = "sg"
kind = "sendgrid"
public_key = "{public_key}"
[provider.consents]
"*" = "marketing.acme"
"#
        ),
    )?;
    let mut config = consentd::Config::ephemeral(dir.path());
    config.catalog = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/catalog.toml").into());
    config.providers = Some(providers);
    let http = support::serve(&server_rt, &config)?.1;
    println!(
        "consentd hooks: {http}, {} s/phase, {} in flight, SendGrid batches of {}, {} cores",
        args.seconds,
        args.inflight,
        args.batch,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let base = format!("http://{http}");
    client_rt.block_on(async move {
        let client: Http = Client::builder(TokioExecutor::new()).build_http();
        let client = Arc::new(client);
        let seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let next = move || seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let next = Arc::new(next);

        // 1. Twilio STOPs.
        let (c, n, url) = (client.clone(), next.clone(), format!("{base}/hooks/sms"));
        let twilio = support::closed_loop(args.inflight, args.seconds, move |_, _| {
            let (c, url) = (c.clone(), url.clone());
            let i = n();
            async move {
                let params = vec![
                    ("MessageSid", format!("SM{i:032}")),
                    ("From", format!("+4860{:07}", i % 10_000_000)),
                    ("To", "+48500000000".to_owned()),
                    ("Body", "STOP".to_owned()),
                ];
                let signature = sign::twilio(TWILIO_TOKEN, &url, &params);
                let body = serde_urlencoded::to_string(&params).unwrap();
                let headers = [
                    ("content-type", "application/x-www-form-urlencoded".to_owned()),
                    ("x-twilio-signature", signature),
                ];
                post(&c, &url, &headers, body, 200).await.map(|_| 1)
            }
        })
        .await;
        println!("{}", twilio.line("Twilio STOP (1 event/request)", "events"));

        // 2. Mailgun unsubscribes.
        let (c, n, url) = (client.clone(), next.clone(), format!("{base}/hooks/mg"));
        let mailgun = support::closed_loop(args.inflight, args.seconds, move |_, _| {
            let (c, url) = (c.clone(), url.clone());
            let i = n();
            async move {
                let event = format!(
                    r#"{{"event":"unsubscribed","id":"mg-{i}","recipient":"mg{i}@bench.example"}}"#
                );
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                let body = sign::mailgun(MAILGUN_KEY, now, &format!("token-{i:044}"), &event);
                let headers = [("content-type", "application/json".to_owned())];
                post(&c, &url, &headers, body, 200).await.map(|_| 1)
            }
        })
        .await;
        println!("{}", mailgun.line("Mailgun (1 event/request)", "events"));

        // 3. SendGrid batches.
        let (c, n, url) = (client.clone(), next.clone(), format!("{base}/hooks/sg"));
        let batch = args.batch;
        let started = Instant::now();
        let sendgrid = support::closed_loop(args.inflight, args.seconds, move |_, _| {
            let (c, url) = (c.clone(), url.clone());
            let first = n();
            for _ in 1..batch {
                n();
            }
            async move {
                let events: Vec<String> = (first..first + batch as u64)
                    .map(|i| {
                        format!(
                            r#"{{"email":"sg{i}@bench.example","event":"unsubscribe","sg_event_id":"sg-{i}","timestamp":1764800000}}"#
                        )
                    })
                    .collect();
                let body = format!("[{}]", events.join(","));
                let timestamp = "1764800000";
                let headers = [
                    ("content-type", "application/json".to_owned()),
                    ("x-twilio-email-event-webhook-timestamp", timestamp.to_owned()),
                    (
                        "x-twilio-email-event-webhook-signature",
                        sign::sendgrid(&sendgrid_key(), timestamp, &body),
                    ),
                ];
                post(&c, &url, &headers, body, 200).await.map(|_| batch as u64)
            }
        })
        .await;
        let _ = started;
        println!(
            "{}  = {:.0} requests/s",
            sendgrid.line(&format!("SendGrid ({batch} events/request)"), "events"),
            sendgrid.ops as f64 / batch as f64 / sendgrid.seconds
        );

        // 4. Forged: verification only, nothing recorded.
        let (c, url) = (client.clone(), format!("{base}/hooks/sg"));
        let forged = support::closed_loop(args.inflight, args.seconds, move |_, i| {
            let (c, url) = (c.clone(), url.clone());
            async move {
                let body = format!(
                    r#"[{{"email":"x{i}@bench.example","event":"unsubscribe","sg_event_id":"f-{i}"}}]"#
                );
                let other = p256::ecdsa::SigningKey::from_bytes(&[78u8; 32].into()).unwrap();
                let headers = [
                    ("content-type", "application/json".to_owned()),
                    ("x-twilio-email-event-webhook-timestamp", "1764800000".to_owned()),
                    (
                        "x-twilio-email-event-webhook-signature",
                        sign::sendgrid(&other, "1764800000", &body),
                    ),
                ];
                post(&c, &url, &headers, body, 403).await.map(|_| 1)
            }
        })
        .await;
        println!("{}", forged.line("SendGrid forged (403, nothing read)", "requests"));
    });
    Ok(())
}

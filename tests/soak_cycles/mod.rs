//! The soak runner: the real `consentd` binary, mixed traffic (grants,
//! withdrawals, imports, erasures, link clicks, catalog changes), SIGKILL
//! mid-traffic, restart, and a check of everything acknowledged. Shared by
//! `tests/soak.rs` (a few cycles) and `benches/soak.rs` (hundreds).
//!
//! After each restart, for every contact touched:
//! - every acknowledged change is in the history with its sequence, unless
//!   an acknowledged erasure came after it (then nothing older is left);
//! - the index agrees with the stored states: CanSend(email, zenith), which
//!   only `marketing` decides in this traffic, is allowed exactly when the
//!   stored state of `marketing` is a grant;
//! - every acknowledged catalog text is among the wordings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consentd::pb::eligibility_service_client::EligibilityServiceClient;
use consentd::pb::{
    self, catalog_service_client::CatalogServiceClient,
    consents_service_client::ConsentsServiceClient,
};
use tonic::transport::Channel;

mod process;

use process::start;

const CONTACTS: u64 = 60;

fn catalog_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/catalog.toml")
}

/// What the clients were told, across cycles.
#[derive(Default)]
pub(crate) struct Acknowledged {
    /// contact → (sequence, recorded after this many erasures) of changes.
    changes: HashMap<String, Vec<u64>>,
    /// contact → sequences at or below which nothing may remain (erasures).
    erased_below: HashMap<String, u64>,
    /// Catalog texts acknowledged for marketing.orbit.
    texts: Vec<String>,
    pub(crate) total: u64,
}

fn change(contact: &str, action: pb::Action) -> pb::ConsentChange {
    pb::ConsentChange {
        contact_id: contact.into(),
        consent_id: "marketing".into(),
        occurred_at: None,
        source: pb::Source::Form as i32,
        evidence: [("soak".to_string(), format!("{action:?}"))].into(),
        idempotency_key: String::new(),
        confirmed: false,
        address: None,
    }
}

fn contact(n: u64) -> String {
    format!("soak-{n:03}")
}

/// The contacts that get erased (written by one worker only).
fn erased_contact(n: u64) -> String {
    format!("erase-{:02}", n % 8)
}

/// One cycle: start, run traffic for `traffic`, SIGKILL, restart, verify.
pub(crate) async fn cycle(
    binary: &Path,
    data_dir: &Path,
    acked: &Arc<Mutex<Acknowledged>>,
    cycle: u64,
    traffic: Duration,
) {
    let server = start(binary, data_dir, None);
    let channel = Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    if cycle == 0 {
        let spec = consentd::server::read_catalog(&catalog_path()).unwrap();
        CatalogServiceClient::new(channel.clone())
            .apply_catalog(pb::ApplyCatalogRequest {
                catalog: Some(consentd::grpc::catalog_to(&spec)),
            })
            .await
            .unwrap();
    }
    let deadline = Instant::now() + traffic;
    let mut workers = Vec::new();
    for w in 0..6u64 {
        let channel = channel.clone();
        let acked = acked.clone();
        let http = server.http;
        workers.push(tokio::spawn(async move {
            let mut cons = ConsentsServiceClient::new(channel.clone());
            let mut cat = CatalogServiceClient::new(channel);
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                let who = contact((w * 7919 + i * 104_729 + cycle) % CONTACTS);
                match (w + i) % 10 {
                    0 => {
                        // An import of three rows for three contacts.
                        let t = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_secs() as i64;
                        let rows: Vec<pb::ImportRequest> = (0..3)
                            .map(|k| {
                                let mut c = change(&contact((i + k) % CONTACTS), pb::Action::Grant);
                                c.occurred_at = Some(prost_types::Timestamp {
                                    seconds: t - 5,
                                    nanos: 0,
                                });
                                pb::ImportRequest {
                                    action: pb::Action::Grant as i32,
                                    change: Some(c),
                                }
                            })
                            .collect();
                        // Acknowledged rows are checked through their contacts' grants below.
                        let _ = cons.import(tokio_stream::iter(rows)).await;
                    }
                    1 if w == 0 => {
                        // Only this worker touches the erase-* contacts, so
                        // an erasure never races a write of another worker.
                        let target = erased_contact(i);
                        if let Ok(r) = cons
                            .grant(pb::GrantRequest::from(change(&target, pb::Action::Grant)))
                            .await
                        {
                            let mut a = acked.lock().unwrap();
                            a.changes
                                .entry(target.clone())
                                .or_default()
                                .push(r.into_inner().sequence);
                            a.total += 1;
                        }
                        if i % 3 == 1
                            && cons
                                .erase_contact(pb::EraseContactRequest {
                                    contact_id: target.clone(),
                                    reason: "soak".into(),
                                })
                                .await
                                .is_ok()
                        {
                            // Everything acknowledged so far for it is gone.
                            let mut a = acked.lock().unwrap();
                            let below = a
                                .changes
                                .get(&target)
                                .and_then(|v| v.iter().max().copied())
                                .unwrap_or(0);
                            a.erased_below.insert(target.clone(), below);
                            a.changes.remove(&target);
                            a.total += 1;
                        }
                    }
                    2 => {
                        // A link click (withdraws acme e-mail only).
                        if let Ok(link) = cons
                            .issue_unsubscribe_link(pb::IssueUnsubscribeLinkRequest {
                                to: None,
                                contact_id: who.clone(),
                                channel: "email".into(),
                                brand: "acme".into(),
                                purpose: String::new(),
                            })
                            .await
                        {
                            let path = link
                                .into_inner()
                                .url
                                .split_once("/u/")
                                .map(|(_, t)| format!("/u/{t}"));
                            if let Some(path) = path {
                                let _ = post(http, &path).await;
                            }
                        }
                    }
                    3 if w == 1 && i % 5 == 3 => {
                        let mut spec = cat
                            .get_catalog(pb::GetCatalogRequest {})
                            .await
                            .map(|r| r.into_inner().catalog.unwrap_or_default());
                        if let Ok(spec) = spec.as_mut() {
                            let text = format!("Orbit, wording of cycle {cycle} step {i}");
                            if let Some(d) =
                                spec.consents.iter_mut().find(|c| c.id == "marketing.orbit")
                            {
                                d.text = text.clone();
                            }
                            let apply = pb::ApplyCatalogRequest {
                                catalog: Some(spec.clone()),
                            };
                            if cat.apply_catalog(apply).await.is_ok() {
                                let mut a = acked.lock().unwrap();
                                a.texts.push(text);
                                a.total += 1;
                            }
                        }
                    }
                    k => {
                        let action = if k % 2 == 0 {
                            pb::Action::Grant
                        } else {
                            pb::Action::Withdraw
                        };
                        let c = change(&who, action);
                        let r = match action {
                            pb::Action::Grant => cons
                                .grant(pb::GrantRequest::from(c))
                                .await
                                .map(|r| r.into_inner().sequence),
                            _ => cons
                                .withdraw(pb::WithdrawRequest::from(c))
                                .await
                                .map(|r| r.into_inner().sequence),
                        };
                        if let Ok(sequence) = r {
                            let mut a = acked.lock().unwrap();
                            a.changes.entry(who).or_default().push(sequence);
                            a.total += 1;
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    // The kill lands while the last calls may still be in the writer.
    server.kill();

    let server = start(binary, data_dir, None);
    let channel = Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    verify(&channel, acked).await;
    server.kill();
}

async fn post(addr: SocketAddr, path: &str) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let body = "List-Unsubscribe=One-Click";
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(())
}

async fn verify(channel: &Channel, acked: &Arc<Mutex<Acknowledged>>) {
    let mut cons = ConsentsServiceClient::new(channel.clone());
    let mut elig = EligibilityServiceClient::new(channel.clone());
    let (changes, erased, texts) = {
        let a = acked.lock().unwrap();
        (a.changes.clone(), a.erased_below.clone(), a.texts.clone())
    };
    let everyone = (0..CONTACTS).map(contact).chain((0..8).map(erased_contact));
    for who in everyone {
        let export = cons
            .export_contact(pb::ExportContactRequest {
                contact_id: who.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let have: std::collections::HashSet<u64> =
            export.events.iter().map(|e| e.sequence).collect();
        for s in changes.get(&who).into_iter().flatten() {
            assert!(have.contains(s), "{who}: acknowledged sequence {s} lost");
        }
        if let Some(&below) = erased.get(&who) {
            assert!(
                export.events.iter().all(|e| e.sequence > below),
                "{who}: an event from before its erasure came back"
            );
        }
        // The index (CanSend) agrees with the stored state of marketing.
        let stored_grant = export
            .states
            .iter()
            .find(|s| s.consent_id == "marketing")
            .is_some_and(|s| s.action() == pb::Action::Grant);
        let answer = elig
            .can_send(pb::CanSendRequest {
                as_of: None,
                contact_id: who.clone(),
                channel: "email".into(),
                brand: "zenith".into(),
                purpose: String::new(),
                include_unsubscribe: false,
                min_sequence: 0,
                to: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.allowed, stored_grant,
            "{who}: index and store disagree"
        );
    }
    if !texts.is_empty() {
        let wordings = CatalogServiceClient::new(channel.clone())
            .get_wordings(pb::GetWordingsRequest {
                consent_id: "marketing.orbit".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .wordings;
        for t in &texts {
            assert!(
                wordings.iter().any(|w| &w.text == t),
                "acknowledged wording {t:?} lost"
            );
        }
    }
}

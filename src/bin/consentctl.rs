//! `consentctl`: the command line for the people and scripts of internal
//! tools. Human output by default, `--json` for scripts; address and token
//! from flags or `CONSENTD_ADDR` / `CONSENTD_TOKEN`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use consentd::pb::{
    self, catalog_client::CatalogClient, consents_client::ConsentsClient,
    eligibility_client::EligibilityClient,
};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(name = "consentctl", version, about = "Talk to a consentd server")]
struct Cli {
    /// consentd gRPC address.
    #[arg(
        long,
        env = "CONSENTD_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    addr: String,
    /// Bearer token (roles: check, write, admin).
    #[arg(long, env = "CONSENTD_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate to trust for an https:// address.
    #[arg(long, env = "CONSENTD_CA", global = true)]
    ca: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply or show the catalog.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Record a consent.
    Grant(ChangeArgs),
    /// Record a withdrawal.
    Withdraw(ChangeArgs),
    /// May this contact be sent this message?
    Check {
        contact: String,
        channel: String,
        brand: String,
        #[arg(long, default_value = "")]
        purpose: String,
    },
    /// Every event of a contact, oldest first.
    History { contact: String },
    /// Forget a contact (GDPR art. 17).
    Erase {
        contact: String,
        #[arg(long)]
        reason: String,
    },
    /// Mint an unsubscribe link.
    Link {
        contact: String,
        channel: String,
        brand: String,
        #[arg(long, default_value = "")]
        purpose: String,
    },
    /// Import a CSV: contact_id, consent_id, action, occurred_at (RFC 3339),
    /// source, and evidence columns prefixed `evidence.`.
    Import { file: PathBuf },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Validate and apply a TOML catalog, atomically.
    Apply { file: PathBuf },
    /// Print the catalog in force.
    Show,
}

#[derive(clap::Args)]
struct ChangeArgs {
    contact: String,
    consent: String,
    /// When the person decided (RFC 3339); default: now.
    #[arg(long)]
    occurred_at: Option<String>,
    /// form, import, operator, unsubscribe_link, preference_center, api.
    #[arg(long, default_value = "operator")]
    source: String,
    /// Evidence, KEY=VALUE, repeatable.
    #[arg(long = "evidence", value_parser = parse_kv)]
    evidence: Vec<(String, String)>,
    /// Idempotency key.
    #[arg(long)]
    key: Option<String>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn parse_time(s: &str) -> anyhow::Result<prost_types::Timestamp> {
    let t = OffsetDateTime::parse(s.trim(), &Rfc3339).map_err(|_| {
        anyhow::anyhow!("{s:?} is not an RFC 3339 time (e.g. 2026-10-01T10:00:00Z)")
    })?;
    Ok(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    })
}

fn show_time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| {
            OffsetDateTime::from_unix_timestamp_nanos(
                t.seconds as i128 * 1_000_000_000 + t.nanos as i128,
            )
            .ok()
        })
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn parse_source(s: &str) -> anyhow::Result<pb::Source> {
    Ok(
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "" => pb::Source::Unspecified,
            "form" => pb::Source::Form,
            "import" => pb::Source::Import,
            "operator" => pb::Source::Operator,
            "unsubscribe_link" => pb::Source::UnsubscribeLink,
            "preference_center" => pb::Source::PreferenceCenter,
            "api" => pb::Source::Api,
            other => bail!("unknown source {other:?}"),
        },
    )
}

fn parse_action(s: &str) -> pb::Action {
    match s.trim().to_ascii_lowercase().as_str() {
        "grant" => pb::Action::Grant,
        "withdraw" => pb::Action::Withdraw,
        _ => pb::Action::Unspecified,
    }
}

/// Attaches the bearer token to every call.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

type Intercepted = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

struct Clients {
    eligibility: EligibilityClient<Intercepted>,
    consents: ConsentsClient<Intercepted>,
    catalog: CatalogClient<Intercepted>,
}

async fn connect(cli: &Cli) -> anyhow::Result<Clients> {
    let addr = if cli.addr.contains("://") {
        cli.addr.clone()
    } else {
        format!("http://{}", cli.addr)
    };
    let mut endpoint = Endpoint::from_shared(addr.clone())?.connect_timeout(Duration::from_secs(5));
    if addr.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &cli.ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let bearer = Bearer(
        cli.token
            .as_ref()
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .context("the token is not a valid header value")?,
    );
    Ok(Clients {
        eligibility: EligibilityClient::with_interceptor(channel.clone(), bearer.clone()),
        consents: ConsentsClient::with_interceptor(channel.clone(), bearer.clone()),
        catalog: CatalogClient::with_interceptor(channel, bearer),
    })
}

fn state_json(s: &pb::ConsentState) -> serde_json::Value {
    json!({
        "consent_id": s.consent_id, "action": s.action().as_str_name(),
        "occurred_at": show_time(&s.occurred_at), "recorded_at": show_time(&s.recorded_at),
        "source": s.source().as_str_name(), "version": s.version, "sequence": s.sequence,
    })
}

fn print(json_mode: bool, value: serde_json::Value, human: impl FnOnce() -> String) {
    if json_mode {
        println!("{value}");
    } else {
        println!("{}", human());
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        let msg = match e.downcast_ref::<tonic::Status>() {
            Some(s) => format!("{:?}: {}", s.code(), s.message()),
            None => format!("{e:#}"),
        };
        eprintln!("consentctl: {msg}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut c = connect(&cli).await?;
    let json_mode = cli.json;
    match cli.command {
        Command::Catalog {
            command: CatalogCommand::Apply { file },
        } => {
            let spec = consentd::server::read_catalog(&file)?;
            let applied = c
                .catalog
                .apply_catalog(consentd::grpc::catalog_to(&spec))
                .await?
                .into_inner();
            let versions: Vec<_> = applied
                .consents
                .iter()
                .map(|d| json!({"id": d.id, "version": d.version, "retired": d.retired}))
                .collect();
            print(
                json_mode,
                json!({"applied": true, "consents": versions}),
                || {
                    let mut out = format!(
                        "catalog applied: {} channels, {} brands, {} consents",
                        applied.channels.len(),
                        applied.brands.len(),
                        applied.consents.len()
                    );
                    for d in &applied.consents {
                        out.push_str(&format!(
                            "\n  {:<32} v{}{}",
                            d.id,
                            d.version,
                            if d.retired { " (retired)" } else { "" }
                        ));
                    }
                    out
                },
            );
        }
        Command::Catalog {
            command: CatalogCommand::Show,
        } => {
            let spec = c
                .catalog
                .get_catalog(pb::GetCatalogRequest {})
                .await?
                .into_inner();
            let domain = consentd::grpc::catalog_from(spec);
            if json_mode {
                println!("{}", serde_json::to_string(&domain)?);
            } else {
                print!("{}", toml::to_string_pretty(&domain)?);
            }
        }
        Command::Grant(a) => change(&mut c, pb::Action::Grant, a, json_mode).await?,
        Command::Withdraw(a) => change(&mut c, pb::Action::Withdraw, a, json_mode).await?,
        Command::Check {
            contact,
            channel,
            brand,
            purpose,
        } => {
            let r = c
                .eligibility
                .can_send(pb::CanSendRequest {
                    contact_id: contact.clone(),
                    channel,
                    brand,
                    purpose,
                    include_unsubscribe: true,
                })
                .await?
                .into_inner();
            print(
                json_mode,
                json!({"allowed": r.allowed, "reason": r.reason().as_str_name(), "decided_by": r.decided_by,
                       "decided_at": show_time(&r.decided_at), "unsubscribe_url": r.unsubscribe_url}),
                || {
                    let verdict = if r.allowed { "ALLOWED" } else { "NOT ALLOWED" };
                    let by = if r.decided_by.is_empty() {
                        String::new()
                    } else {
                        format!(" by {} at {}", r.decided_by, show_time(&r.decided_at))
                    };
                    format!("{verdict}: {}{by}", r.reason().as_str_name())
                },
            );
        }
        Command::History { contact } => {
            let events = c
                .consents
                .get_history(pb::GetHistoryRequest {
                    contact_id: contact.clone(),
                })
                .await?
                .into_inner()
                .events;
            let list: Vec<_> = events
                .iter()
                .map(|e| json!({"sequence": e.sequence, "consent_id": e.consent_id, "action": e.action().as_str_name(),
                    "occurred_at": show_time(&e.occurred_at), "recorded_at": show_time(&e.recorded_at),
                    "source": e.source().as_str_name(), "version": e.version, "applied": e.applied,
                    "evidence": e.evidence, "idempotency_key": e.idempotency_key}))
                .collect();
            print(
                json_mode,
                json!({"contact_id": contact, "events": list}),
                || {
                    if events.is_empty() {
                        return format!("{contact}: no events");
                    }
                    let mut out = format!("{contact}: {} events", events.len());
                    for e in &events {
                        let mut ev: Vec<_> =
                            e.evidence.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        ev.sort();
                        out.push_str(&format!(
                            "\n  #{:<8} {:<8} {:<28} v{} occurred {} via {}{} {}",
                            e.sequence,
                            e.action().as_str_name(),
                            e.consent_id,
                            e.version,
                            show_time(&e.occurred_at),
                            e.source().as_str_name(),
                            if e.applied { "" } else { " (superseded)" },
                            ev.join(" ")
                        ));
                    }
                    out
                },
            );
        }
        Command::Erase { contact, reason } => {
            let r = c
                .consents
                .erase_contact(pb::EraseContactRequest {
                    contact_id: contact.clone(),
                    reason,
                })
                .await?
                .into_inner();
            print(
                json_mode,
                json!({"erased_at": show_time(&r.erased_at)}),
                || format!("{contact} erased at {}", show_time(&r.erased_at)),
            );
        }
        Command::Link {
            contact,
            channel,
            brand,
            purpose,
        } => {
            let r = c
                .consents
                .issue_unsubscribe_link(pb::IssueUnsubscribeLinkRequest {
                    contact_id: contact,
                    channel,
                    brand,
                    purpose,
                })
                .await?
                .into_inner();
            print(
                json_mode,
                json!({"url": r.url, "consent_id": r.consent_id}),
                || format!("{}\n(withdraws {})", r.url, r.consent_id),
            );
        }
        Command::Import { file } => import(&mut c, &file, json_mode).await?,
    }
    Ok(())
}

async fn change(
    c: &mut Clients,
    action: pb::Action,
    a: ChangeArgs,
    json_mode: bool,
) -> anyhow::Result<()> {
    let req = pb::ConsentChange {
        contact_id: a.contact.clone(),
        consent_id: a.consent.clone(),
        occurred_at: a.occurred_at.as_deref().map(parse_time).transpose()?,
        source: parse_source(&a.source)? as i32,
        evidence: a.evidence.into_iter().collect(),
        idempotency_key: a.key.unwrap_or_default(),
    };
    let r = match action {
        pb::Action::Withdraw => c.consents.withdraw(req).await?,
        _ => c.consents.grant(req).await?,
    }
    .into_inner();
    print(
        json_mode,
        json!({"applied": r.applied, "sequence": r.sequence, "state": r.state.as_ref().map(state_json)}),
        || {
            let what = if r.applied {
                "recorded"
            } else {
                "recorded, superseded by a newer decision (or a repeated key)"
            };
            let state = r
                .state
                .as_ref()
                .map(|s| {
                    format!(
                        "; state: {} since {}",
                        s.action().as_str_name(),
                        show_time(&s.occurred_at)
                    )
                })
                .unwrap_or_default();
            format!(
                "{} {} {}: {what} (sequence {}){state}",
                action.as_str_name(),
                a.contact,
                a.consent,
                r.sequence
            )
        },
    );
    Ok(())
}

/// (CSV row, reason) of rows rejected.
type RowErrors = Vec<(u64, String)>;

async fn import(c: &mut Clients, file: &std::path::Path, json_mode: bool) -> anyhow::Result<()> {
    use tokio_stream::wrappers::ReceiverStream;

    // One pass to count rows, for the progress bar's ETA.
    let total = {
        let mut r =
            csv::Reader::from_path(file).with_context(|| format!("reading {}", file.display()))?;
        r.records().count() as u64
    };
    let mut reader = csv::Reader::from_path(file)?;
    let headers = reader.headers()?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(contact), Some(consent), Some(action), Some(occurred)) = (
        col("contact_id"),
        col("consent_id"),
        col("action"),
        col("occurred_at"),
    ) else {
        bail!("the header row must name contact_id, consent_id, action and occurred_at");
    };
    let source = col("source");
    let evidence: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            h.trim()
                .strip_prefix("evidence.")
                .map(|k| (i, k.to_owned()))
        })
        .collect();

    let bar = if json_mode {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows  {per_sec}  ETA {eta}")
            .expect("a valid template"),
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ImportRow>(4096);
    let bar2 = bar.clone();
    // CSV rows the client could not even send, and the CSV row of each sent row.
    let producer = tokio::task::spawn_blocking(move || -> anyhow::Result<(RowErrors, Vec<u64>)> {
        let mut local = Vec::new();
        let mut sent = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let row = i as u64 + 1;
            bar2.inc(1);
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    local.push((row, format!("unreadable CSV row: {e}")));
                    continue;
                }
            };
            let field = |i: usize| record.get(i).unwrap_or("").to_owned();
            let occurred_at = match parse_time(&field(occurred)) {
                Ok(t) => t,
                Err(e) => {
                    local.push((row, format!("occurred_at: {e:#}")));
                    continue;
                }
            };
            let src = match source.map(|s| parse_source(&field(s))).transpose() {
                Ok(s) => s.unwrap_or(pb::Source::Import),
                Err(e) => {
                    local.push((row, format!("source: {e:#}")));
                    continue;
                }
            };
            let ev: HashMap<String, String> = evidence
                .iter()
                .map(|(i, k)| (k.clone(), field(*i)))
                .filter(|(_, v)| !v.is_empty())
                .collect();
            let msg = pb::ImportRow {
                action: parse_action(&field(action)) as i32,
                change: Some(pb::ConsentChange {
                    contact_id: field(contact),
                    consent_id: field(consent),
                    occurred_at: Some(occurred_at),
                    source: src as i32,
                    evidence: ev,
                    idempotency_key: String::new(),
                }),
            };
            sent.push(row);
            if tx.blocking_send(msg).is_err() {
                break;
            }
        }
        Ok((local, sent))
    });
    let summary = c.consents.import(ReceiverStream::new(rx)).await;
    let (local, sent) = producer.await??;
    bar.finish_and_clear();
    let summary = summary?.into_inner();

    // Server rows count only what was sent: map them back to CSV rows.
    let rows = sent.len() as u64 + local.len() as u64;
    let total_rejected = summary.rejected + local.len() as u64;
    let mut rejected: Vec<(u64, String)> = local;
    rejected.extend(summary.errors.iter().map(|e| {
        (
            sent.get(e.row.saturating_sub(1) as usize)
                .copied()
                .unwrap_or(0),
            e.reason.clone(),
        )
    }));
    rejected.sort();
    print(
        json_mode,
        json!({"rows": rows,
               "applied": summary.applied, "superseded": summary.superseded, "rejected": total_rejected,
               "errors": rejected.iter().map(|(r, e)| json!({"row": r, "reason": e})).collect::<Vec<_>>()}),
        || {
            let mut out = format!(
                "imported {}: {} applied, {} superseded, {} rejected",
                file.display(),
                summary.applied,
                summary.superseded,
                total_rejected
            );
            for (row, reason) in &rejected {
                out.push_str(&format!("\n  row {row}: {reason}"));
            }
            out
        },
    );
    Ok(())
}

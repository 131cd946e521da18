//! `consentctl`: the command line for the people and scripts of internal
//! tools. Human output by default, `--json` for scripts; address and token
//! from flags or `CONSENTD_ADDR` / `CONSENTD_TOKEN`.
//!
//! Layout: `args.rs` the commands and value parsers, `render.rs` the output,
//! `import.rs` the CSV import; this file connects and dispatches.

mod addresses;
mod args;
mod audit;
mod import;
mod migrate;
mod render;
mod watch;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use consentd::pb::{
    self, catalog_service_client::CatalogServiceClient,
    consents_service_client::ConsentsServiceClient,
    eligibility_service_client::EligibilityServiceClient,
};
use serde_json::json;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use args::{AuditCommand, CatalogCommand, ChangeArgs, Cli, Command, parse_source, parse_time};

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
/// The Consents client, as the import streams through it.
type Consents = ConsentsServiceClient<Intercepted>;

struct Clients {
    eligibility: EligibilityServiceClient<Intercepted>,
    consents: Consents,
    catalog: CatalogServiceClient<Intercepted>,
    changes: consentd::pb::changes_service_client::ChangesServiceClient<Intercepted>,
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
        eligibility: EligibilityServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        consents: ConsentsServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        catalog: CatalogServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        changes: consentd::pb::changes_service_client::ChangesServiceClient::with_interceptor(
            channel, bearer,
        ),
    })
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
    if let Command::Migrate { from, to } = &cli.command {
        let (from, to, json_mode) = (from.clone(), to.clone(), cli.json);
        return tokio::task::spawn_blocking(move || migrate::migrate(&from, &to, json_mode))
            .await?;
    }
    if let Command::Audit { command } = cli.command {
        let json_mode = cli.json;
        return tokio::task::spawn_blocking(move || match command {
            AuditCommand::Key { signing_key, pem } => audit::key(&signing_key, pem, json_mode),
            AuditCommand::Checkpoint { store } => audit::checkpoint(&store, json_mode),
            AuditCommand::Verify {
                store,
                key,
                checkpoints,
            } => audit::verify_store(&store, &key, &checkpoints, json_mode),
        })
        .await?;
    }
    let mut c = connect(&cli).await?;
    let json_mode = cli.json;
    match cli.command {
        Command::Catalog {
            command: CatalogCommand::Apply { file },
        } => {
            let spec = consentd::server::read_catalog(&file)?;
            let applied = c
                .catalog
                .apply_catalog(pb::ApplyCatalogRequest {
                    catalog: Some(consentd::grpc::catalog_to(&spec)),
                })
                .await?
                .into_inner()
                .catalog
                .unwrap_or_default();
            render::catalog_applied(json_mode, &applied);
        }
        Command::Catalog {
            command: CatalogCommand::Show,
        } => {
            let spec = c
                .catalog
                .get_catalog(pb::GetCatalogRequest {})
                .await?
                .into_inner()
                .catalog
                .unwrap_or_default();
            let domain = consentd::grpc::catalog_from(spec)?;
            if json_mode {
                println!("{}", serde_json::to_string(&domain)?);
            } else {
                print!("{}", toml::to_string_pretty(&domain)?);
            }
        }
        Command::Catalog {
            command: CatalogCommand::Wordings { consent },
        } => {
            let wordings = c
                .catalog
                .get_wordings(pb::GetWordingsRequest {
                    consent_id: consent.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .wordings;
            render::wordings(json_mode, &wordings);
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
                    as_of: None,
                    min_sequence: 0,
                    contact_id: contact,
                    channel,
                    brand,
                    purpose,
                    include_unsubscribe: true,
                    to: None,
                })
                .await?
                .into_inner();
            render::check(json_mode, &r);
        }
        Command::History { contact } => {
            // Every page, in order.
            let mut events = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = c
                    .consents
                    .get_history(pb::GetHistoryRequest {
                        min_sequence: 0,
                        contact_id: contact.clone(),
                        page_size: 0,
                        page_token,
                    })
                    .await?
                    .into_inner();
                events.extend(page.events);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            render::history(json_mode, &contact, &events);
        }
        Command::Export {
            all: true,
            format,
            purposes,
            out,
            ..
        } => watch::snapshot(&mut c, purposes, format, out).await?,
        Command::Export {
            contact: Some(contact),
            out,
            ..
        } => {
            // Page by page (the server bounds each), merged into one
            // document: the last page's states and addresses, every event,
            // every wording once.
            let mut export = pb::ExportContactResponse::default();
            let mut page_token = String::new();
            loop {
                let page = c
                    .consents
                    .export_contact(pb::ExportContactRequest {
                        contact_id: contact.clone(),
                        page_size: 0,
                        page_token,
                    })
                    .await?
                    .into_inner();
                export.contact_id = page.contact_id;
                export.states = page.states;
                export.addresses = page.addresses;
                export.exported_at = page.exported_at;
                export.events.extend(page.events);
                for w in page.wordings {
                    if !export.wordings.contains(&w) {
                        export.wordings.push(w);
                    }
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            let text = serde_json::to_string_pretty(&render::export(&export))?;
            match out {
                Some(path) => std::fs::write(&path, text + "\n")
                    .with_context(|| format!("writing {}", path.display()))?,
                None => println!("{text}"),
            }
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
            let at = render::show_time(&r.erased_at);
            render::print(json_mode, json!({"erased_at": at}), || {
                format!("{contact} erased at {at}")
            });
        }
        Command::Link {
            contact,
            channel,
            brand,
            purpose,
            to,
        } => {
            let r = c
                .consents
                .issue_unsubscribe_link(pb::IssueUnsubscribeLinkRequest {
                    contact_id: contact,
                    channel,
                    brand,
                    purpose,
                    to: to.as_deref().map(addresses::parse_address),
                })
                .await?
                .into_inner();
            render::print(
                json_mode,
                json!({"url": r.url, "consent_id": r.consent_id}),
                || format!("{}\n(withdraws {})", r.url, r.consent_id),
            );
        }
        Command::PreferenceLink {
            contact,
            purpose,
            brand,
        } => {
            let r = c
                .consents
                .issue_preference_link(pb::IssuePreferenceLinkRequest {
                    contact_id: contact,
                    purpose,
                    brand,
                })
                .await?
                .into_inner();
            render::print(json_mode, json!({"url": r.url}), || r.url.clone());
        }
        Command::ConfirmLink { contact, consent } => {
            let r = c
                .consents
                .issue_confirmation_link(pb::IssueConfirmationLinkRequest {
                    contact_id: contact,
                    consent_id: consent,
                })
                .await?
                .into_inner();
            let expires = render::show_time(&r.expires_at);
            render::print(
                json_mode,
                json!({"url": r.url, "expires_at": expires}),
                || {
                    if r.url.is_empty() {
                        format!(
                            "a confirmation link went out within the re-send window: none sent now (a grant still waits until {expires})"
                        )
                    } else {
                        format!(
                            "{}
(works until {expires})",
                            r.url
                        )
                    }
                },
            );
        }
        Command::Import { file } => import::import(&mut c.consents, &file, json_mode).await?,
        Command::Watch {
            from,
            purposes,
            until_caught_up,
        } => watch::watch(&mut c, from, purposes, until_caught_up).await?,
        Command::Addresses { contact, set, none } => {
            addresses::addresses(&mut c, contact, set, none, json_mode).await?
        }
        Command::Address {
            address,
            clear_undeliverable,
        } => addresses::address(&mut c, address, clear_undeliverable, json_mode).await?,
        Command::Reconcile {
            provider,
            providers,
            suppressions,
            addresses: named,
            upload,
            apply,
        } => {
            let r = addresses::Reconcile {
                provider,
                providers,
                suppressions,
                addresses: named,
                upload,
                apply,
            };
            addresses::reconcile(&mut c, r, json_mode).await?
        }
        Command::Migrate { .. } | Command::Audit { .. } => {
            unreachable!("handled before connecting")
        }
        Command::Export { .. } => unreachable!("clap asks for a contact or --all"),
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
        confirmed: a.confirmed,
        address: None,
    };
    let r = match action {
        pb::Action::Withdraw => {
            let w = c
                .consents
                .withdraw(pb::WithdrawRequest::from(req))
                .await?
                .into_inner();
            pb::GrantResponse {
                applied: w.applied,
                state: w.state,
                sequence: w.sequence,
                ..Default::default()
            }
        }
        _ => c
            .consents
            .grant(pb::GrantRequest::from(req))
            .await?
            .into_inner(),
    };
    render::change(json_mode, action, &a.contact, &a.consent, &r);
    Ok(())
}

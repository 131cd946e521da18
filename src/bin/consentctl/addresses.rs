//! Addresses for operators (DESIGN.md §9): `addresses` shows or replaces a
//! contact's addresses, `address` shows what is recorded on one address
//! (and clears its undeliverable mark), `reconcile` compares a provider's
//! suppression export with what consentd holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use consentd::pb;
use futures_util::stream::{self, StreamExt};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::render::{print, short, show_time};
use crate::{Clients, Consents};

/// An address as typed: `email:VALUE`, `phone:VALUE`, or VALUE (an e-mail
/// address when it holds `@`, else a phone number).
pub(crate) fn parse_address(s: &str) -> pb::Address {
    let (kind, value) = match s.split_once(':') {
        Some(("email", v)) => (pb::AddressKind::Email, v),
        Some(("phone", v)) => (pb::AddressKind::Phone, v),
        _ if s.contains('@') => (pb::AddressKind::Email, s),
        _ => (pb::AddressKind::Phone, s),
    };
    pb::Address {
        kind: kind as i32,
        value: value.to_owned(),
    }
}

fn show(a: &pb::Address) -> String {
    let kind = match a.kind() {
        pb::AddressKind::Email => "email",
        pb::AddressKind::Phone => "phone",
        pb::AddressKind::Unspecified => "address",
    };
    format!("{kind}:{}", a.value)
}

/// `addresses CONTACT [--set ADDRESS]... [--none]`.
pub(crate) async fn addresses(
    c: &mut Clients,
    contact: String,
    set: Vec<String>,
    none: bool,
    json_mode: bool,
) -> anyhow::Result<()> {
    let list = if set.is_empty() && !none {
        c.consents
            .get_contact(pb::GetContactRequest {
                as_of: None,
                contact_id: contact.clone(),
                min_sequence: 0,
            })
            .await?
            .into_inner()
            .addresses
    } else {
        c.consents
            .set_addresses(pb::SetAddressesRequest {
                contact_id: contact.clone(),
                addresses: set.iter().map(|s| parse_address(s)).collect(),
            })
            .await?
            .into_inner()
            .addresses
    };
    let shown: Vec<String> = list.iter().map(show).collect();
    print(
        json_mode,
        json!({"contact_id": contact, "addresses": shown}),
        || match shown.is_empty() {
            true => format!("{contact}: no addresses"),
            false => format!("{contact}: {}", shown.join(", ")),
        },
    );
    Ok(())
}

/// `address ADDRESS [--clear-undeliverable]`.
pub(crate) async fn address(
    c: &mut Clients,
    value: String,
    clear_undeliverable: bool,
    json_mode: bool,
) -> anyhow::Result<()> {
    let address = parse_address(&value);
    let mut min_sequence = 0;
    if clear_undeliverable {
        let r = c
            .consents
            .clear_undeliverable(pb::ClearUndeliverableRequest {
                address: Some(address.clone()),
            })
            .await?
            .into_inner();
        min_sequence = r.sequence;
    }
    let v = c
        .consents
        .get_address(pb::GetAddressRequest {
            address: Some(address),
            min_sequence,
        })
        .await?
        .into_inner();
    let name = v.address.as_ref().map(show).unwrap_or_default();
    let states: Vec<_> = v
        .states
        .iter()
        .map(|s| {
            json!({"consent_id": s.consent_id, "action": short(s.action().as_str_name()),
            "occurred_at": show_time(&s.occurred_at), "source": short(s.source().as_str_name())})
        })
        .collect();
    let events: Vec<_> = v
        .events
        .iter()
        .map(|e| {
            json!({"sequence": e.sequence, "kind": short(e.kind().as_str_name()),
            "consent_id": e.consent_id, "action": short(e.action().as_str_name()),
            "occurred_at": show_time(&e.occurred_at), "source": short(e.source().as_str_name()),
            "actor": e.actor, "evidence": e.evidence.iter().collect::<BTreeMap<_, _>>()})
        })
        .collect();
    print(
        json_mode,
        json!({"address": name, "undeliverable": v.undeliverable,
            "undeliverable_since": show_time(&v.undeliverable_since),
            "states": states, "events": events}),
        || {
            let mut out = name.clone();
            if v.undeliverable {
                out.push_str(&format!(
                    "\n  UNDELIVERABLE since {}",
                    show_time(&v.undeliverable_since)
                ));
            }
            if v.states.is_empty() {
                out.push_str("\n  no withdrawal recorded on it");
            }
            for s in &v.states {
                out.push_str(&format!(
                    "\n  {:<8} {:<28} {} via {}",
                    short(s.action().as_str_name()),
                    s.consent_id,
                    show_time(&s.occurred_at),
                    short(s.source().as_str_name())
                ));
            }
            out
        },
    );
    Ok(())
}

/// What `reconcile` is told.
pub(crate) struct Reconcile {
    pub(crate) provider: String,
    pub(crate) providers: PathBuf,
    pub(crate) suppressions: PathBuf,
    pub(crate) addresses: Option<PathBuf>,
    pub(crate) upload: Option<PathBuf>,
    pub(crate) apply: bool,
}

/// One row of an export: the address and its provider scope, if any.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    address: String,
    scope: Option<String>,
}

/// Reads a CSV export: the address column (`email`, `address`,
/// `EmailAddress`, `recipient`, any case) and, when there is one, the
/// provider's scope column (`tag`, `group_id`/`asm_group_id`,
/// `MessageStream`). Returns the rows and the file's SHA-256.
fn read_export(path: &Path) -> anyhow::Result<(Vec<Row>, String)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut csv = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes.as_slice());
    let names: Vec<String> = csv
        .headers()?
        .iter()
        .map(|h| h.to_ascii_lowercase().replace([' ', '_', '-'], ""))
        .collect();
    let find = |wanted: &[&str]| names.iter().position(|n| wanted.contains(&n.as_str()));
    let Some(at) = find(&["email", "address", "emailaddress", "recipient"]) else {
        bail!(
            "{}: no address column (email, address, EmailAddress or recipient) in its header",
            path.display()
        );
    };
    let scope_at = find(&["tag", "groupid", "asmgroupid", "messagestream"]);
    let mut rows = Vec::new();
    for record in csv.records() {
        let record = record?;
        let address = record.get(at).unwrap_or_default().to_owned();
        if address.is_empty() {
            continue;
        }
        let scope = scope_at
            .and_then(|i| record.get(i))
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        rows.push(Row { address, scope });
    }
    Ok((rows, digest))
}

/// The consents whose withdrawal on an address covers `consent`'s scope:
/// itself and its ancestors.
fn covering(catalog: &pb::CatalogSpec, consent: &str) -> BTreeSet<String> {
    let parents: HashMap<&str, &str> = catalog
        .consents
        .iter()
        .map(|c| (c.id.as_str(), c.parent.as_str()))
        .collect();
    let mut out = BTreeSet::new();
    let mut at = consent;
    while !at.is_empty() && out.insert(at.to_owned()) {
        at = parents.get(at).copied().unwrap_or_default();
    }
    out
}

/// Whether consentd holds a withdrawal on `address` covering `consent`
/// (`None`: the address does not read).
async fn withdrawn(
    mut consents: Consents,
    address: pb::Address,
    covers: &BTreeSet<String>,
) -> anyhow::Result<Option<bool>> {
    match consents
        .get_address(pb::GetAddressRequest {
            address: Some(address),
            min_sequence: 0,
        })
        .await
    {
        Ok(v) => Ok(Some(v.into_inner().states.iter().any(|s| {
            s.action() == pb::Action::Withdraw && covers.contains(&s.consent_id)
        }))),
        Err(s) if s.code() == tonic::Code::InvalidArgument => Ok(None),
        Err(s) => Err(s.into()),
    }
}

/// `reconcile`: the provider suppresses, consentd would allow (to record,
/// `--apply`); consentd withdrew, the provider does not list (to upload).
pub(crate) async fn reconcile(
    c: &mut Clients,
    r: Reconcile,
    json_mode: bool,
) -> anyhow::Result<()> {
    let hooks = consentd::hooks::Hooks::load(&r.providers, "")?;
    let Some(provider) = hooks.provider(&r.provider) else {
        bail!(
            "{}: no [[provider]] named {:?}",
            r.providers.display(),
            r.provider
        );
    };
    let kind = match provider.kind {
        consentd::hooks::Kind::Twilio => pb::AddressKind::Phone,
        _ => pb::AddressKind::Email,
    };
    let catalog = c
        .catalog
        .get_catalog(pb::GetCatalogRequest {})
        .await?
        .into_inner()
        .catalog
        .unwrap_or_default();
    let (rows, digest) = read_export(&r.suppressions)?;
    let of = |value: &str| pb::Address {
        kind: kind as i32,
        value: value.to_owned(),
    };
    // Each suppressed address, with the consent its scope maps to.
    let checks: Vec<(Row, String)> = rows
        .into_iter()
        .filter_map(|row| {
            let consent = provider.consent_for(row.scope.as_deref())?.to_owned();
            Some((row, consent))
        })
        .collect();
    let results: Vec<_> = stream::iter(checks.iter().map(|(row, consent)| {
        let covers = covering(&catalog, consent);
        let consents = c.consents.clone();
        async move { withdrawn(consents, of(&row.address), &covers).await }
    }))
    .buffered(16)
    .collect()
    .await;
    let (mut to_withdraw, mut unreadable, mut agree) = (Vec::new(), Vec::new(), 0usize);
    for ((row, consent), result) in checks.iter().zip(results) {
        match result? {
            Some(true) => agree += 1,
            Some(false) => to_withdraw.push((row.address.clone(), consent.clone())),
            None => unreadable.push(row.address.clone()),
        }
    }
    // The other way: of the addresses named, those consentd withdrew (for
    // the provider's `*` consent) that the export does not list.
    let mut to_upload = Vec::new();
    if let Some(path) = &r.addresses {
        // Compared as written, in one case and without spaces (the server
        // normalises fully; this only pairs the two files' rows).
        let same = |a: &str| a.trim().to_lowercase().replace([' ', '-', '(', ')'], "");
        let listed: BTreeSet<String> = checks.iter().map(|(r, _)| same(&r.address)).collect();
        let all = provider.consent_for(None).unwrap_or_default().to_owned();
        let covers = covering(&catalog, &all);
        let (named, _) = read_export(path)?;
        let candidates: Vec<String> = named
            .into_iter()
            .map(|r| r.address)
            .filter(|a| !listed.contains(&same(a)))
            .collect();
        let results: Vec<_> = stream::iter(candidates.iter().map(|a| {
            let consents = c.consents.clone();
            let covers = &covers;
            async move { withdrawn(consents, of(a), covers).await }
        }))
        .buffered(16)
        .collect()
        .await;
        for (a, result) in candidates.into_iter().zip(results) {
            if result? == Some(true) {
                to_upload.push(a);
            }
        }
    }
    if let Some(path) = &r.upload {
        let mut text = String::from("email\n");
        for a in &to_upload {
            text.push_str(a);
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut recorded = 0usize;
    if r.apply {
        let file = r
            .suppressions
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (address, consent) in &to_withdraw {
            let evidence = [
                ("provider", r.provider.clone()),
                ("reconcile_file", file.clone()),
                ("file_sha256", digest.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            let w = c
                .consents
                .withdraw(pb::WithdrawRequest {
                    contact_id: String::new(),
                    consent_id: consent.clone(),
                    occurred_at: None,
                    source: pb::Source::Provider as i32,
                    evidence,
                    idempotency_key: format!("reconcile:{}:{consent}:{address}", &digest[..16]),
                    address: Some(of(address)),
                })
                .await?
                .into_inner();
            if w.applied {
                recorded += 1;
            }
        }
    }
    let report = json!({
        "provider": r.provider,
        "file_sha256": digest,
        "suppressed": checks.len(),
        "agree": agree,
        "to_withdraw": to_withdraw.iter().map(|(a, c)| json!({"address": a, "consent_id": c})).collect::<Vec<_>>(),
        "recorded": recorded,
        "to_upload": to_upload,
        "unreadable": unreadable,
    });
    print(json_mode, report, || {
        let mut out = format!(
            "{}: {} suppressed by the provider, {} withdrawn here too",
            r.provider,
            checks.len(),
            agree
        );
        out.push_str(&format!(
            "\n  {} the provider suppresses that consentd would allow{}",
            to_withdraw.len(),
            if r.apply {
                format!(" ({recorded} recorded as withdrawals)")
            } else if to_withdraw.is_empty() {
                String::new()
            } else {
                " (--apply records them)".to_owned()
            }
        ));
        for (a, consent) in &to_withdraw {
            out.push_str(&format!("\n    {a}  {consent}"));
        }
        if r.addresses.is_some() {
            out.push_str(&format!(
                "\n  {} consentd withdrew that the provider does not list{}",
                to_upload.len(),
                r.upload
                    .as_ref()
                    .map(|p| format!(" (written to {})", p.display()))
                    .unwrap_or_default()
            ));
            for a in &to_upload {
                out.push_str(&format!("\n    {a}"));
            }
        }
        if !unreadable.is_empty() {
            out.push_str(&format!(
                "\n  {} rows that are not addresses: {}",
                unreadable.len(),
                unreadable.join(", ")
            ));
        }
        out
    });
    Ok(())
}

//! Output: every answer as one JSON object (`--json`, for scripts) or as
//! lines for people. Times are RFC 3339.

use consentd::pb;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A protobuf timestamp as RFC 3339 (empty when absent).
pub(crate) fn show_time(t: &Option<prost_types::Timestamp>) -> String {
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

/// Prints `value` in JSON mode, else what `human` renders.
pub(crate) fn print(json_mode: bool, value: Value, human: impl FnOnce() -> String) {
    if json_mode {
        println!("{value}");
    } else {
        println!("{}", human());
    }
}

/// A wire enum name as DESIGN.md says it, without its type's prefix
/// (`REASON_GRANTED` is `GRANTED`, `SOURCE_UNSUBSCRIBE_LINK` is
/// `UNSUBSCRIBE_LINK`): what consentctl prints.
pub(crate) fn short(name: &'static str) -> &'static str {
    name.split_once('_').map_or(name, |(_, rest)| rest)
}

pub(crate) fn state_json(s: &pb::ConsentState) -> Value {
    json!({
        "consent_id": s.consent_id, "action": short(s.action().as_str_name()),
        "occurred_at": show_time(&s.occurred_at), "recorded_at": show_time(&s.recorded_at),
        "source": short(s.source().as_str_name()), "version": s.version, "sequence": s.sequence,
    })
}

fn event_json(e: &pb::ConsentEvent) -> Value {
    let evidence: std::collections::BTreeMap<_, _> = e.evidence.iter().collect();
    json!({"sequence": e.sequence, "kind": short(e.kind().as_str_name()),
        "address": e.address.as_ref().map(|a| a.value.clone()).unwrap_or_default(),
        "consent_id": e.consent_id, "action": short(e.action().as_str_name()),
        "occurred_at": show_time(&e.occurred_at), "recorded_at": show_time(&e.recorded_at),
        "source": short(e.source().as_str_name()), "version": e.version, "applied": e.applied,
        "evidence": evidence, "idempotency_key": e.idempotency_key, "actor": e.actor})
}

fn wording_json(w: &pb::Wording) -> Value {
    json!({"consent_id": w.consent_id, "version": w.version, "title": w.title,
        "text": w.text, "parent": w.parent, "channels": w.channels, "brands": w.brands,
        "in_force_from": show_time(&w.in_force_from)})
}

/// `export`: everything held about a contact, as one JSON document (also
/// without `--json`: it is meant to be attached to a reply).
pub(crate) fn export(e: &pb::ExportContactResponse) -> Value {
    json!({
        "contact_id": e.contact_id,
        "exported_at": show_time(&e.exported_at),
        "states": e.states.iter().map(state_json).collect::<Vec<_>>(),
        "events": e.events.iter().map(event_json).collect::<Vec<_>>(),
        "wordings": e.wordings.iter().map(wording_json).collect::<Vec<_>>(),
        "addresses": e.addresses.iter().map(|a| a.value.clone()).collect::<Vec<_>>(),
    })
}

/// `catalog apply`: the versions the server assigned.
pub(crate) fn catalog_applied(json_mode: bool, applied: &pb::CatalogSpec) {
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

/// `catalog wordings`: each version with its words and scope.
pub(crate) fn wordings(json_mode: bool, wordings: &[pb::Wording]) {
    let list: Vec<_> = wordings
        .iter()
        .map(|w| {
            json!({"consent_id": w.consent_id, "version": w.version, "title": w.title,
            "text": w.text, "parent": w.parent, "channels": w.channels, "brands": w.brands,
            "in_force_from": show_time(&w.in_force_from)})
        })
        .collect();
    print(json_mode, json!({"wordings": list}), || {
        let mut out = String::new();
        for w in wordings {
            let since = match show_time(&w.in_force_from) {
                t if t.is_empty() => "before wordings were kept".to_string(),
                t => format!("in force from {t}"),
            };
            out.push_str(&format!(
                "{} v{} ({since}): {}\n  channels: {}; brands: {}{}\n  {}\n",
                w.consent_id,
                w.version,
                w.title,
                w.channels.join(", "),
                w.brands.join(", "),
                if w.parent.is_empty() {
                    String::new()
                } else {
                    format!("; parent: {}", w.parent)
                },
                w.text
            ));
        }
        out.trim_end().to_owned()
    });
}

/// `grant` / `withdraw`: what was recorded and the state after it (a
/// withdrawal answers as a grant that is never pending).
pub(crate) fn change(
    json_mode: bool,
    action: pb::Action,
    contact: &str,
    consent: &str,
    r: &pb::GrantResponse,
) {
    print(
        json_mode,
        json!({"applied": r.applied, "sequence": r.sequence, "state": r.state.as_ref().map(state_json),
               "pending": r.pending, "confirmation_url": r.confirmation_url}),
        || {
            let what = if r.applied {
                "recorded".to_owned()
            } else if r.pending && r.confirmation_url.is_empty() {
                "recorded as pending, waiting for the person's confirmation (a link went out within the re-send window)".to_owned()
            } else if r.pending {
                format!(
                    "recorded as pending: mail the person this confirmation link: {}",
                    r.confirmation_url
                )
            } else {
                "recorded, superseded by a newer decision (or a repeated key)".to_owned()
            };
            let state = r
                .state
                .as_ref()
                .map(|s| {
                    format!(
                        "; state: {} since {}",
                        short(s.action().as_str_name()),
                        show_time(&s.occurred_at)
                    )
                })
                .unwrap_or_default();
            format!(
                "{} {contact} {consent}: {what} (sequence {}){state}",
                short(action.as_str_name()),
                r.sequence
            )
        },
    );
}

/// `check`: the verdict and what decided it.
pub(crate) fn check(json_mode: bool, r: &pb::CanSendResponse) {
    print(
        json_mode,
        json!({"allowed": r.allowed, "reason": short(r.reason().as_str_name()), "decided_by": r.decided_by,
               "decided_at": show_time(&r.decided_at), "unsubscribe_url": r.unsubscribe_url}),
        || {
            let verdict = if r.allowed { "ALLOWED" } else { "NOT ALLOWED" };
            let by = if r.decided_by.is_empty() {
                String::new()
            } else {
                format!(" by {} at {}", r.decided_by, show_time(&r.decided_at))
            };
            format!("{verdict}: {}{by}", short(r.reason().as_str_name()))
        },
    );
}

/// `history`: every event, oldest first.
pub(crate) fn history(json_mode: bool, contact: &str, events: &[pb::ConsentEvent]) {
    let list: Vec<_> = events.iter().map(event_json).collect();
    print(
        json_mode,
        json!({"contact_id": contact, "events": list}),
        || {
            if events.is_empty() {
                return format!("{contact}: no events");
            }
            let mut out = format!("{contact}: {} events", events.len());
            for e in events {
                let mut ev: Vec<_> = e.evidence.iter().map(|(k, v)| format!("{k}={v}")).collect();
                ev.sort();
                out.push_str(&format!(
                    "\n  #{:<8} {:<8} {:<28} v{} occurred {} via {}{} {}",
                    e.sequence,
                    short(e.action().as_str_name()),
                    match (&e.address, e.consent_id.is_empty()) {
                        (Some(a), true) => format!("{} {}", short(e.kind().as_str_name()), a.value),
                        (None, true) => short(e.kind().as_str_name()).to_owned(),
                        _ => e.consent_id.clone(),
                    },
                    e.version,
                    show_time(&e.occurred_at),
                    short(e.source().as_str_name()),
                    if e.applied { "" } else { " (superseded)" },
                    ev.join(" ")
                ));
            }
            out
        },
    );
}

/// `import`: the counts and every rejected CSV row.
pub(crate) fn import(
    json_mode: bool,
    file: &std::path::Path,
    rows: u64,
    summary: &pb::ImportResponse,
    total_rejected: u64,
    rejected: &[(u64, String)],
) {
    print(
        json_mode,
        json!({"rows": rows,
               "applied": summary.applied, "superseded": summary.superseded, "rejected": total_rejected,
               "pending": summary.pending,
               "errors": rejected.iter().map(|(r, e)| json!({"row": r, "reason": e})).collect::<Vec<_>>()}),
        || {
            let mut out = format!(
                "imported {}: {} applied, {} pending confirmation, {} superseded, {} rejected",
                file.display(),
                summary.applied,
                summary.pending,
                summary.superseded,
                total_rejected
            );
            for (row, reason) in rejected {
                out.push_str(&format!("\n  row {row}: {reason}"));
            }
            out
        },
    );
}

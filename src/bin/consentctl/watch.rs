//! `consentctl export --all`: a snapshot of every contact's states at one
//! sequence, as JSON lines or CSV.
//!
//! `consentctl watch`: the change feed as JSON lines, one record each, for
//! a sync job or a person tailing it. When the stream ends (the consumer
//! fell behind, the server restarted) it resumes from the last sequence it
//! printed, after a pause that grows to 10 s; it never prints a record
//! twice nor skips one.

use std::io::Write;
use std::time::Duration;

use consentd::pb::{self, watch_response::Change};
use serde_json::{Value, json};

use crate::Clients;
use crate::args::SnapshotFormat;
use crate::render::{short, show_time, state_json};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `export --all`: the snapshot, written as it streams (nothing is held
/// but a row); its sequence and size to standard error at the end.
pub(crate) async fn snapshot(
    c: &mut Clients,
    purposes: Vec<String>,
    format: SnapshotFormat,
    out: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let sink: Box<dyn Write> = match &out {
        Some(path) => Box::new(std::fs::File::create(path)?),
        None => Box::new(std::io::stdout().lock()),
    };
    let sink = std::io::BufWriter::new(sink);
    let (mut csv, mut lines) = match format {
        SnapshotFormat::Csv => (Some(csv::Writer::from_writer(sink)), None),
        SnapshotFormat::Jsonl => (None, Some(sink)),
    };
    if let Some(w) = csv.as_mut() {
        w.write_record([
            "contact_id",
            "consent_id",
            "action",
            "occurred_at",
            "recorded_at",
            "source",
            "version",
            "sequence",
            "snapshot_sequence",
        ])?;
    }
    let mut stream = c
        .consents
        .export_states(pb::ExportStatesRequest { purposes })
        .await?
        .into_inner();
    let mut contacts = 0u64;
    while let Some(row) = stream.message().await? {
        if row.complete {
            if let Some(w) = lines.as_mut() {
                writeln!(w, "{}", json!({"complete": true, "sequence": row.sequence}))?;
                w.flush()?;
            }
            if let Some(w) = csv.as_mut() {
                w.flush()?;
            }
            eprintln!(
                "snapshot at sequence {}: {contacts} contacts; go on with `consentctl watch --from {}`",
                row.sequence, row.sequence
            );
            return Ok(());
        }
        contacts += 1;
        if let Some(w) = csv.as_mut() {
            for s in &row.states {
                w.write_record([
                    row.contact_id.as_str(),
                    &s.consent_id,
                    short(s.action().as_str_name()),
                    &show_time(&s.occurred_at),
                    &show_time(&s.recorded_at),
                    short(s.source().as_str_name()),
                    &s.version.to_string(),
                    &s.sequence.to_string(),
                    &row.sequence.to_string(),
                ])?;
            }
        }
        if let Some(w) = lines.as_mut() {
            let addresses: Vec<Value> = row
                .addresses
                .iter()
                .zip(&row.address_hashes)
                .map(|(a, h)| {
                    json!({"kind": short(a.kind().as_str_name()), "value": a.value, "hash": hex(h)})
                })
                .collect();
            let states: Vec<Value> = row.states.iter().map(state_json).collect();
            let line = json!({"contact_id": row.contact_id, "contact_hash": hex(&row.contact_hash),
                "sequence": row.sequence, "states": states, "addresses": addresses});
            writeln!(w, "{line}")?;
        }
    }
    anyhow::bail!("the snapshot ended before it was whole; run it again")
}

/// One record as a JSON line; its sequence.
fn line(change: &Change) -> (Value, u64) {
    match change {
        Change::Event(e) => (
            json!({"type": "event", "sequence": e.sequence, "contact_id": e.contact_id,
                "consent_id": e.consent_id, "action": short(e.action().as_str_name()),
                "occurred_at": show_time(&e.occurred_at), "recorded_at": show_time(&e.recorded_at),
                "source": short(e.source().as_str_name()), "version": e.version,
                "applied": e.applied, "pending": e.pending, "actor": e.actor}),
            e.sequence,
        ),
        Change::Address(a) => {
            let hash = hex(&a.address_hash);
            let event = a.event.as_ref();
            (
                json!({"type": "address", "sequence": a.sequence,
                    "kind": short(a.kind().as_str_name()), "address_hash": hash,
                    "contact_id": a.contact_id,
                    "address": a.address.as_ref().map(|x| x.value.clone()).unwrap_or_default(),
                    "consent_id": event.map(|e| e.consent_id.clone()).unwrap_or_default(),
                    "action": event.map(|e| short(e.action().as_str_name())).unwrap_or_default(),
                    "source": event.map(|e| short(e.source().as_str_name())).unwrap_or_default()}),
                a.sequence,
            )
        }
        Change::Erasure(e) => {
            let hash = hex(&e.contact_hash);
            (
                json!({"type": "erasure", "sequence": e.sequence, "contact_hash": hash}),
                e.sequence,
            )
        }
        Change::Catalog(c) => (
            json!({"type": "catalog", "sequence": c.sequence, "version": c.version}),
            c.sequence,
        ),
        Change::Checkpoint(c) => (
            json!({"type": "checkpoint", "sequence": c.sequence, "at": show_time(&c.at)}),
            c.sequence,
        ),
    }
}

pub(crate) async fn watch(
    c: &mut Clients,
    from: u64,
    purposes: Vec<String>,
    until_caught_up: bool,
) -> anyhow::Result<()> {
    let mut last = from;
    let mut pause = Duration::from_millis(500);
    let stdout = std::io::stdout();
    loop {
        let request = pb::WatchRequest {
            from_sequence: last,
            purposes: purposes.clone(),
        };
        let mut stream = match c.changes.watch(request).await {
            Ok(s) => s.into_inner(),
            // A request that can never work is the caller's to fix.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::InvalidArgument
                        | tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated
                ) =>
            {
                return Err(s.into());
            }
            Err(s) => {
                eprintln!(
                    "consentctl watch: {}: {}; again in {pause:?}",
                    s.code(),
                    s.message()
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(r)) => {
                    let Some(change) = r.change else { continue };
                    let (value, sequence) = line(&change);
                    let checkpoint = matches!(change, Change::Checkpoint(_));
                    // A checkpoint may repeat the last sequence: never a record.
                    if checkpoint || sequence > last {
                        let mut out = stdout.lock();
                        writeln!(out, "{value}")?;
                        out.flush()?;
                    }
                    last = last.max(sequence);
                    pause = Duration::from_millis(500);
                    if checkpoint && until_caught_up {
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(s) => {
                    eprintln!(
                        "consentctl watch: {}: {}; resuming from {last}",
                        s.code(),
                        s.message()
                    );
                    break;
                }
            }
        }
        tokio::time::sleep(pause).await;
    }
}

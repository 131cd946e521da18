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
use crate::render::{short, show_time};

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
            let hash: String = a.address_hash.iter().map(|b| format!("{b:02x}")).collect();
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
            let hash: String = e.contact_hash.iter().map(|b| format!("{b:02x}")).collect();
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

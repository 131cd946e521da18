//! `consentctl import FILE.csv`: the CSV columns are `contact_id`,
//! `consent_id`, `action`, `occurred_at` (RFC 3339), optional `source`, and
//! evidence columns prefixed `evidence.`. Rows the client cannot read are
//! reported without being sent; the rest stream to the server as they are
//! read.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use consentd::pb;
use tokio_stream::wrappers::ReceiverStream;

use crate::Consents;
use crate::args::{parse_action, parse_flag, parse_source, parse_time};
use crate::render;

/// (CSV row, reason) of rows rejected.
type RowErrors = Vec<(u64, String)>;

/// Streams the CSV to `Consents.Import` while reading it, with a progress
/// bar, and reports rejected rows by their CSV row number.
pub(crate) async fn import(
    consents: &mut Consents,
    file: &Path,
    json_mode: bool,
) -> anyhow::Result<()> {
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
    let confirmed = col("confirmed");
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
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ImportRequest>(4096);
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
            let msg = pb::ImportRequest {
                action: parse_action(&field(action)) as i32,
                change: Some(pb::ConsentChange {
                    contact_id: field(contact),
                    consent_id: field(consent),
                    occurred_at: Some(occurred_at),
                    source: src as i32,
                    evidence: ev,
                    idempotency_key: String::new(),
                    confirmed: confirmed.is_some_and(|i| parse_flag(&field(i))),
                    address: None,
                }),
            };
            sent.push(row);
            if tx.blocking_send(msg).is_err() {
                break;
            }
        }
        Ok((local, sent))
    });
    let summary = consents.import(ReceiverStream::new(rx)).await;
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
    render::import(json_mode, file, rows, &summary, total_rejected, &rejected);
    Ok(())
}

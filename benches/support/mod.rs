//! What more than one bench needs (each uses its own part of it).
#![allow(dead_code)]

/// Resident memory of this process, in bytes (Linux; 0 elsewhere).
pub(crate) fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Row `i` of a bench import: a grant of `marketing.zenith` to a new
/// contact, decided in the past, with one evidence entry.
pub(crate) fn import_row(i: u64, batch: &str) -> consentd::pb::ImportRow {
    use consentd::pb;
    pb::ImportRow {
        action: pb::Action::Grant as i32,
        change: Some(pb::ConsentChange {
            contact_id: format!("import-{i:09}"),
            consent_id: "marketing.zenith".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + i as i64,
                nanos: 0,
            }),
            source: pb::Source::Import as i32,
            evidence: [("import_batch".to_string(), batch.to_string())].into(),
            ..Default::default()
        }),
    }
}

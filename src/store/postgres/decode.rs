//! Driver errors as [`StoreError`]s, and rows as domain records: every
//! value read from PostgreSQL is checked here, so that a damaged row is an
//! error naming its table, never a panic or a wrong decision.

use tokio_postgres::types::Json;

use crate::domain::{
    Action, ConsentId, ContactId, EventRecord, PendingRecord, Source, StateRecord, Wording,
};
use crate::store::StoreError;

pub(super) fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(e))
}

/// Whether PostgreSQL's error means "not now" rather than "never": the
/// connection is gone or refused, the server is shutting down or starting,
/// out of resources, or the transaction lost a race (nothing committed).
pub(super) fn transient(code: &str) -> bool {
    ["08", "53", "57P", "40"]
        .iter()
        .any(|c| code.starts_with(c))
}

/// Maps a driver error. `in_doubt`: COMMIT was sent and may have landed.
pub(super) fn pg(e: tokio_postgres::Error, in_doubt: bool) -> StoreError {
    match e.as_db_error() {
        Some(db) if !transient(db.code().code()) => backend(e),
        // The server answered: whatever it said, the transaction is over.
        Some(db) => StoreError::Unavailable {
            in_doubt: false,
            cause: format!("{} ({})", db.message(), db.code().code()),
        },
        // No answer: the connection failed or closed.
        None => StoreError::Unavailable {
            in_doubt,
            cause: with_sources(&e),
        },
    }
}

/// An error and its causes, `outer: inner: ...` (the driver's own message
/// leaves out why, e.g. which certificate check failed).
pub(super) fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

pub(super) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e, false),
        other => StoreError::Unavailable {
            in_doubt: false,
            cause: format!("no connection to PostgreSQL: {other}"),
        },
    }
}

pub(super) fn i64_of(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::corrupt("events", format!("{what} {v} too large")))
}

pub(super) fn u64_of(v: i64, table: &'static str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::corrupt(table, format!("negative value {v}")))
}

pub(super) fn action_of(raw: i16, table: &'static str) -> Result<Action, StoreError> {
    u8::try_from(raw)
        .ok()
        .and_then(Action::from_u8)
        .ok_or_else(|| StoreError::corrupt(table, format!("action {raw}")))
}

pub(super) fn source_of(raw: i16, table: &'static str) -> Result<Source, StoreError> {
    u8::try_from(raw)
        .ok()
        .and_then(Source::from_u8)
        .ok_or_else(|| StoreError::corrupt(table, format!("source {raw}")))
}

pub(super) fn contact_of(raw: &str, table: &'static str) -> Result<ContactId, StoreError> {
    ContactId::stored("contact", raw).map_err(|e| StoreError::corrupt(table, e.to_string()))
}

pub(super) fn consent_of(raw: &str, table: &'static str) -> Result<ConsentId, StoreError> {
    ConsentId::stored("consent", raw).map_err(|e| StoreError::corrupt(table, e.to_string()))
}

/// An event row's columns, its chain value included (kept in the row).
pub(super) const EVENT_COLUMNS: &str = "sequence, contact, consent, action, occurred_at, recorded_at, \
                             source, evidence, version, idempotency_key, applied, actor, \
                             pending, confirmed, confirmation_link, link_chain AS chain_value";

/// An event row; an undecodable one is an error naming its sequence.
pub(super) fn event_from(row: &tokio_postgres::Row) -> Result<EventRecord, StoreError> {
    event_fields(row).map_err(|e| match row.try_get::<_, i64>("sequence") {
        Ok(sequence) => StoreError::Unreadable {
            sequence: u64::try_from(sequence).unwrap_or(0),
            what: format!("events: {e}"),
        },
        Err(_) => e,
    })
}

fn event_fields(row: &tokio_postgres::Row) -> Result<EventRecord, StoreError> {
    let Json(evidence) = row.try_get("evidence").map_err(backend)?;
    Ok(EventRecord {
        sequence: u64_of(row.try_get("sequence").map_err(backend)?, "events")?,
        contact: contact_of(row.try_get("contact").map_err(backend)?, "events")?,
        consent: consent_of(row.try_get("consent").map_err(backend)?, "events")?,
        action: action_of(row.try_get("action").map_err(backend)?, "events")?,
        occurred_at: row.try_get("occurred_at").map_err(backend)?,
        recorded_at: row.try_get("recorded_at").map_err(backend)?,
        source: source_of(row.try_get("source").map_err(backend)?, "events")?,
        evidence,
        version: u32::try_from(row.try_get::<_, i32>("version").map_err(backend)?)
            .map_err(|_| StoreError::corrupt("events", "version"))?,
        idempotency_key: row.try_get("idempotency_key").map_err(backend)?,
        applied: row.try_get("applied").map_err(backend)?,
        actor: row.try_get("actor").map_err(backend)?,
        pending: row.try_get("pending").map_err(backend)?,
        confirmed: row.try_get("confirmed").map_err(backend)?,
        confirmation_link: row.try_get("confirmation_link").map_err(backend)?,
        chain: match row.columns().iter().any(|c| c.name() == "chain_value") {
            true => row
                .try_get::<_, Option<Vec<u8>>>("chain_value")
                .map_err(backend)?
                .and_then(|v| v.try_into().ok()),
            false => None,
        },
    })
}

pub(super) fn pending_from(
    row: &tokio_postgres::Row,
) -> Result<(String, String, PendingRecord), StoreError> {
    Ok((
        row.try_get(0).map_err(backend)?,
        row.try_get(1).map_err(backend)?,
        PendingRecord {
            count: u32::try_from(row.try_get::<_, i32>(2).map_err(backend)?)
                .map_err(|_| StoreError::corrupt("pending", "count"))?,
            last_at: row.try_get(3).map_err(backend)?,
            link_at: row.try_get(4).map_err(backend)?,
        },
    ))
}

pub(super) fn state_from(row: &tokio_postgres::Row) -> Result<StateRecord, StoreError> {
    Ok(StateRecord {
        consent: consent_of(row.try_get("consent").map_err(backend)?, "states")?,
        action: action_of(row.try_get("action").map_err(backend)?, "states")?,
        occurred_at: row.try_get("occurred_at").map_err(backend)?,
        recorded_at: row.try_get("recorded_at").map_err(backend)?,
        source: source_of(row.try_get("source").map_err(backend)?, "states")?,
        version: u32::try_from(row.try_get::<_, i32>("version").map_err(backend)?)
            .map_err(|_| StoreError::corrupt("states", "version"))?,
        sequence: u64_of(row.try_get("sequence").map_err(backend)?, "states")?,
    })
}

pub(super) fn wording_from(row: &tokio_postgres::Row) -> Result<Wording, StoreError> {
    Ok(Wording {
        consent: consent_of(row.try_get("consent").map_err(backend)?, "wordings")?,
        version: u32::try_from(row.try_get::<_, i32>("version").map_err(backend)?)
            .map_err(|_| StoreError::corrupt("wordings", "version"))?,
        title: row.try_get("title").map_err(backend)?,
        text: row.try_get("text").map_err(backend)?,
        parent: row.try_get("parent").map_err(backend)?,
        channels: row.try_get("channels").map_err(backend)?,
        brands: row.try_get("brands").map_err(backend)?,
        in_force_from: row.try_get("in_force_from").map_err(backend)?,
    })
}

/// An erasure row `(sequence, hash, erased_at, reason)`.
pub(super) fn erasure_from(
    row: &tokio_postgres::Row,
) -> Result<(u64, crate::store::Tombstone), StoreError> {
    let hash: Vec<u8> = row.try_get(1).map_err(backend)?;
    let sequence = u64_of(row.try_get(0).map_err(backend)?, "erasures")?;
    Ok((
        sequence,
        crate::store::Tombstone {
            hash: hash
                .try_into()
                .map_err(|_| StoreError::corrupt("erasures", "hash length"))?,
            erased_at: row.try_get(2).map_err(backend)?,
            reason: row.try_get(3).map_err(backend)?,
            sequence,
        },
    ))
}

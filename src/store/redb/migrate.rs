//! Migrations of the redb layout, run once by the open that finds an old
//! schema version, inside its transaction.

use prost::Message;
use redb::ReadableTable;

use super::{CONTACTS, HISTORY};
use crate::store::StoreError;
use crate::store::redb::codec::{ContactRecord, decode_contact};

/// Schema 1 → 2: the event sequences kept inside each contact's record
/// move to the `history` table. One transaction: all or nothing.
pub(super) fn migrate_1_to_2(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let mut contacts = txn.open_table(CONTACTS)?;
    let mut history = txn.open_table(HISTORY)?;
    let records: Vec<(String, ContactRecord)> = contacts
        .range::<&str>(..)?
        .map(|row| {
            let (k, v) = row?;
            Ok((k.value().to_owned(), decode_contact(v.value())?))
        })
        .collect::<Result<_, StoreError>>()?;
    for (contact, mut record) in records {
        for &sequence in &record.events {
            history.insert((contact.as_str(), sequence), ())?;
        }
        record.events.clear();
        contacts.insert(contact.as_str(), record.encode_to_vec().as_slice())?;
    }
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "data file migrated to schema 2 (per-contact history index)"
    );
    Ok(())
}

//! Marks: what the server records beside consent decisions, in the same
//! event stream, so that every store, the feed, history, erasure and
//! migration carry them without a table of their own (DESIGN.md §9):
//!
//! - [`Mark::Holds`], on a contact: the contact sends to an address (its
//!   kind and keyed hash). A GRANT adds it, a WITHDRAW removes it;
//!   `Consents.SetAddresses` records the difference with the list it
//!   replaces. The normalised value rides in the evidence of the GRANT
//!   (`address`), so GetContact and ExportContact list it, and an erasure
//!   takes it with the contact's history.
//! - [`Mark::Undeliverable`], on an address's key: a WITHDRAW is a hard
//!   bounce (the address is undeliverable), a GRANT is
//!   `Consents.ClearUndeliverable`. Rule 2 orders them like decisions; it
//!   is not consent and never a withdrawal of one.
//! - [`Mark::SetAddresses`]: the change a SetAddresses sends the writer,
//!   which rules the list into `Holds` events on its latest view; never
//!   stored itself.
//!
//! A mark's id starts with the control character no consent id may hold,
//! so a mark never meets a consent of the catalog.

use super::address::AddressKind;
use super::catalog::ConsentIdx;
use super::ids::{ADDRESS_MARK, ConsentId, hex_into};

/// The interned index the undeliverable mark is held under in the index,
/// beside an address's decisions: beyond every consent a catalog interns.
pub const UNDELIVERABLE: ConsentIdx = ConsentIdx::MAX;

/// Most addresses one contact holds.
pub const MAX_ADDRESSES_PER_CONTACT: usize = 16;

/// The evidence key of a `Holds` GRANT that carries the address's value.
pub const ADDRESS_EVIDENCE: &str = "address";

const UNDELIVERABLE_ID: &str = "\u{1}undeliverable";
const SET_ADDRESSES_ID: &str = "\u{1}addresses";
const EMAIL_PREFIX: &str = "\u{1}email:";
const PHONE_PREFIX: &str = "\u{1}phone:";

/// A mark, read from its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The contact sends to the address of this kind and keyed hash.
    Holds {
        /// Its kind.
        kind: AddressKind,
        /// Its keyed hash ([`super::AddressHasher::hash`]).
        hash: [u8; 32],
    },
    /// The address (the subject) is undeliverable (a WITHDRAW) or cleared
    /// (a GRANT).
    Undeliverable,
    /// A SetAddresses on its way to the writer.
    SetAddresses,
}

impl Mark {
    /// The mark behind an id, if it is one (one byte compared for a
    /// consent id).
    pub fn of(id: &str) -> Option<Mark> {
        if !id.starts_with(ADDRESS_MARK) {
            return None;
        }
        match id {
            UNDELIVERABLE_ID => return Some(Mark::Undeliverable),
            SET_ADDRESSES_ID => return Some(Mark::SetAddresses),
            _ => {}
        }
        let (kind, hex) = if let Some(hex) = id.strip_prefix(EMAIL_PREFIX) {
            (AddressKind::Email, hex)
        } else if let Some(hex) = id.strip_prefix(PHONE_PREFIX) {
            (AddressKind::Phone, hex)
        } else {
            return None;
        };
        let hash = unhex(hex)?;
        Some(Mark::Holds { kind, hash })
    }

    /// The id this mark is recorded under.
    pub fn id(self) -> ConsentId {
        ConsentId::of_mark(match self {
            Mark::Undeliverable => UNDELIVERABLE_ID.to_owned(),
            Mark::SetAddresses => SET_ADDRESSES_ID.to_owned(),
            Mark::Holds { kind, hash } => {
                let prefix = match kind {
                    AddressKind::Email => EMAIL_PREFIX,
                    AddressKind::Phone => PHONE_PREFIX,
                };
                let mut hex = [0u8; 64];
                hex_into(&hash, &mut hex);
                format!(
                    "{prefix}{}",
                    std::str::from_utf8(&hex).expect("hex digits are ASCII")
                )
            }
        })
    }
}

fn unhex(hex: &str) -> Option<[u8; 32]> {
    let b = hex.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (digit(b[2 * i])? << 4) | digit(b[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mark_reads_back_from_its_id_and_nothing_else_is_one() {
        let mut hash = [0u8; 32];
        for (i, b) in hash.iter_mut().enumerate() {
            *b = (i * 37 + 5) as u8;
        }
        for mark in [
            Mark::Undeliverable,
            Mark::SetAddresses,
            Mark::Holds {
                kind: AddressKind::Email,
                hash,
            },
            Mark::Holds {
                kind: AddressKind::Phone,
                hash,
            },
        ] {
            let id = mark.id();
            assert!(id.is_mark());
            assert_eq!(Mark::of(id.as_str()), Some(mark));
            assert_eq!(ConsentId::stored("c", id.as_str()).unwrap(), id);
        }
        for not in [
            "marketing",
            "\u{1}",
            "\u{1}email:00",
            "\u{1}email:",
            "\u{1}fax:0000000000000000000000000000000000000000000000000000000000000000",
            "\u{1}email:000000000000000000000000000000000000000000000000000000000000000G",
            "\u{1}email:000000000000000000000000000000000000000000000000000000000000000A",
        ] {
            assert_eq!(Mark::of(not), None, "{not:?}");
        }
        assert!(ConsentId::stored("c", "\u{1}what").is_err());
        assert!(ConsentId::parse("c", "\u{1}undeliverable").is_err());
    }
}

//! Who was erased, and when (DESIGN.md rule 5), without keeping who.
//!
//! An erased contact is named only by a keyed hash (HMAC-SHA256 under a
//! secret kept in the store), so the tombstone that refuses stale changes
//! holds no plaintext of the contact id.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::event::UnixNanos;

type HmacSha256 = Hmac<Sha256>;

/// The keyed hash that names a contact in a tombstone: cheap to clone, so
/// the pages can name a contact to the store the way the writer does.
#[derive(Clone)]
pub struct ContactHasher {
    mac: HmacSha256,
}

impl ContactHasher {
    /// The hasher under the store's erasure key.
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            mac: HmacSha256::new_from_slice(key).expect("HMAC takes any key length"),
        }
    }

    /// The keyed hash of `contact`.
    pub fn hash(&self, contact: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(contact.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// Every erasure, by keyed hash of the contact.
pub struct Erasures {
    hasher: ContactHasher,
    erased: HashMap<[u8; 32], UnixNanos>,
}

impl Erasures {
    /// The erasures on file, under the store's erasure key.
    pub fn new(key: &[u8; 32], erased: impl IntoIterator<Item = ([u8; 32], UnixNanos)>) -> Self {
        Self {
            hasher: ContactHasher::new(key),
            erased: erased.into_iter().collect(),
        }
    }

    /// The keyed hash that names `contact` in a tombstone.
    pub fn hash(&self, contact: &str) -> [u8; 32] {
        self.hasher.hash(contact)
    }

    /// The hasher, for whoever asks the store about one contact.
    pub fn hasher(&self) -> ContactHasher {
        self.hasher.clone()
    }

    /// When `contact` was erased, if it was. Costs nothing while no one was.
    pub fn erased_at(&self, contact: &str) -> Option<UnixNanos> {
        if self.erased.is_empty() {
            return None;
        }
        self.erased.get(&self.hash(contact)).copied()
    }

    /// Remembers an erasure (the latest one counts).
    pub fn record(&mut self, hash: [u8; 32], erased_at: UnixNanos) {
        self.erased.insert(hash, erased_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erasures_are_found_by_keyed_hash_only() {
        let mut e = Erasures::new(&[1; 32], []);
        assert_eq!(e.erased_at("anna"), None);
        let h = e.hash("anna");
        assert_ne!(
            h,
            Erasures::new(&[2; 32], []).hash("anna"),
            "the key matters"
        );
        e.record(h, 50);
        assert_eq!(e.erased_at("anna"), Some(50));
        assert_eq!(e.erased_at("anna "), None);
        let reopened = Erasures::new(&[1; 32], [(h, 50)]);
        assert_eq!(reopened.erased_at("anna"), Some(50));
    }
}

//! The memory store's chain (DESIGN.md §11): linked under the contents'
//! lock, like everything else it keeps.

use super::Contents;
use crate::audit::{GENESIS, Held, Kind, Link, Linker, link_batch, salts, wording_digest};
use crate::store::{StoreError, Tombstone, WriteBatch};

fn no_salt(e: getrandom::Error) -> StoreError {
    StoreError::Io(std::io::Error::other(format!("no random salt: {e}")))
}

/// One fresh salt.
pub(super) fn salt() -> Result<[u8; 16], StoreError> {
    Ok(salts(1).map_err(no_salt)?[0])
}

impl Contents {
    pub(super) fn head(&self) -> Option<(u64, [u8; 32])> {
        self.chain.last_key_value().map(|(s, l)| (*s, l.chain))
    }

    /// The links of a batch's records, from the head (nothing moves yet).
    pub(super) fn links_of(&self, batch: &WriteBatch) -> Result<Vec<Link>, StoreError> {
        let head = self.head().map_or(GENESIS, |(_, c)| c);
        let (links, _) = link_batch(head, batch, &mut |consent, version| {
            // The wording kept wins over the same version sent again.
            self.wordings
                .get(&(consent.to_owned(), version))
                .or_else(|| {
                    batch
                        .wordings
                        .iter()
                        .find(|w| w.consent.as_str() == consent && w.version == version)
                })
                .map_or([0; 32], wording_digest)
        })
        .map_err(no_salt)?;
        Ok(links)
    }

    /// Links an erasure; the records it deleted keep their links, without
    /// their salts.
    pub(super) fn link_erasure(&mut self, t: &Tombstone, erased: &[u64], salt: [u8; 16]) {
        for s in erased {
            if let Some(l) = self.chain.get_mut(s) {
                l.salt = None;
            }
        }
        let mut linker = Linker::from(self.head().map_or(GENESIS, |(_, c)| c));
        linker.erasure(t.sequence, &t.hash, t.erased_at, &t.reason, erased, salt);
        for l in linker.finish() {
            self.chain.insert(l.sequence, l);
        }
    }

    pub(super) fn links_after(&self, after: u64, limit: usize) -> Vec<(Link, Held)> {
        self.chain
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(s, l)| {
                let held = match l.kind {
                    Kind::Event => self
                        .events
                        .get(s)
                        .map_or(Held::Missing, |e| Held::Event(Box::new(e.clone()))),
                    Kind::Erasure => Held::Erasure,
                    Kind::Catalog => {
                        let at = l.body.as_slice().try_into().map(i64::from_be_bytes).ok();
                        self.catalogs
                            .iter()
                            .find(|(t, _)| Some(*t) == at)
                            .map_or(Held::Missing, |(t, c)| {
                                Held::Catalog(*t, Box::new(c.clone()))
                            })
                    }
                };
                (l.clone(), held)
            })
            .collect()
    }
}

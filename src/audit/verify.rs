//! Recomputing the chain from what a store holds (`consentctl audit
//! verify`): every record's leaf from its salt and canonical form, every
//! link from the one before, every checkpoint's signature and chain. The
//! first record that does not verify is named by its sequence.
//!
//! What each finding means:
//! - a record that does not match its leaf was changed after it was
//!   committed (or its salt was);
//! - a link that does not follow from the one before: a record between
//!   them was deleted, or a link rewritten;
//! - a record gone without an erasure that lists it: deleted by hand;
//! - a checkpoint whose chain differs from the store's: the records up to
//!   it were rewritten and the chain recomputed (only a signature, which
//!   needs the key, catches that).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ed25519_dalek::VerifyingKey;

use super::note::{self, Checkpoint};
use super::record::{Canonical, GENESIS, Held, Kind, Link, leaf, link, wording_digest};
use crate::store::{Store, StoreError};

/// Links read per page.
const PAGE: usize = 10_000;

/// What a verification found in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records whose leaf and link were recomputed.
    pub records: u64,
    /// Links of erased records (their link checked, their record gone).
    pub erased: u64,
    /// Signed checkpoints checked against the chain.
    pub checkpoints: u64,
    /// The last sequence and its chain.
    pub head: Option<(u64, [u8; 32])>,
}

/// Why a verification failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record, link or checkpoint does not verify.
    #[error("sequence {sequence} does not verify: {what}")]
    Failed {
        /// The first sequence that does not verify.
        sequence: u64,
        /// Why.
        what: String,
    },
    /// A checkpoint note does not verify on its own.
    #[error("checkpoint {label} does not verify: {what}")]
    Note {
        /// Which one (its sequence, or where it came from).
        label: String,
        /// Why.
        what: String,
    },
}

fn failed(sequence: u64, what: impl Into<String>) -> VerifyError {
    VerifyError::Failed {
        sequence,
        what: what.into(),
    }
}

/// The sequences an erasure record lists, read from its canonical form.
fn erased_list(body: &[u8]) -> Option<Vec<u64>> {
    let rest = body.get(2 + 32 + 8..)?;
    let reason_len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let rest = rest.get(4 + reason_len..)?;
    let n = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let list = rest.get(4..)?;
    if list.len() != n * 8 {
        return None;
    }
    Some(
        list.chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8")))
            .collect(),
    )
}

/// Verifies the chain of `store`, its checkpoints and `extra` (notes kept
/// outside it), every signature by `key`; `progress` hears the records
/// verified so far.
pub fn verify(
    store: &dyn Store,
    key: &VerifyingKey,
    extra: &[String],
    progress: &mut dyn FnMut(u64),
) -> Result<Verified, VerifyError> {
    let digests: HashMap<(String, u32), [u8; 32]> = store
        .wordings(None)?
        .iter()
        .map(|w| {
            (
                (w.consent.as_str().to_owned(), w.version),
                wording_digest(w),
            )
        })
        .collect();
    // Every checkpoint, each signature checked first.
    let mut checkpoints: BTreeMap<u64, Vec<(String, Checkpoint)>> = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = store.checkpoints(after, PAGE)?;
        let Some(last) = page.last().map(|(s, _)| *s) else {
            break;
        };
        for (sequence, text) in page {
            let cp = note::verify(&text, key).map_err(|what| VerifyError::Note {
                label: format!("at {sequence} (kept in the store)"),
                what,
            })?;
            if cp.sequence != sequence {
                return Err(VerifyError::Note {
                    label: format!("at {sequence} (kept in the store)"),
                    what: format!("it is kept under {sequence} but signs {}", cp.sequence),
                });
            }
            checkpoints
                .entry(sequence)
                .or_default()
                .push((format!("kept at {sequence}"), cp));
        }
        after = last;
    }
    for (i, text) in extra.iter().enumerate() {
        let cp = note::verify(text, key).map_err(|what| VerifyError::Note {
            label: format!("#{} given", i + 1),
            what,
        })?;
        checkpoints
            .entry(cp.sequence)
            .or_default()
            .push((format!("#{} given", i + 1), cp));
    }
    let mut out = Verified::default();
    let mut canonical = Canonical::default();
    let mut prev: Option<(u64, [u8; 32])> = None;
    // Erased records not yet listed by an erasure.
    let mut unaccounted: BTreeSet<u64> = BTreeSet::new();
    let mut last_checkpoint = 0;
    let mut after = 0;
    loop {
        let page = store.links_after(after, PAGE)?;
        let Some(last) = page.last().map(|(l, _)| l.sequence) else {
            break;
        };
        for (l, held) in &page {
            check_one(
                l,
                held,
                &digests,
                &mut canonical,
                &mut unaccounted,
                &mut out,
            )?;
            let before = prev.map_or(GENESIS, |(_, c)| c);
            if link(&before, l.sequence, &l.leaf) != l.chain {
                // Sequences are given without gaps: a link that does not
                // follow after a gap names the first record missing.
                let first_missing = prev.map_or(1, |(s, _)| s + 1);
                return Err(match prev {
                    _ if first_missing < l.sequence => failed(
                        first_missing,
                        format!(
                            "the record and its link are gone (deleted by hand): the link at {} \
                             does not follow from the one before the gap",
                            l.sequence
                        ),
                    ),
                    Some((s, _)) => failed(
                        l.sequence,
                        format!("its link does not follow from the one at {s}: rewritten"),
                    ),
                    None => failed(l.sequence, "the first link does not start the chain"),
                });
            }
            prev = Some((l.sequence, l.chain));
            if let Some(cps) = checkpoints.remove(&l.sequence) {
                for (label, cp) in cps {
                    if cp.chain != l.chain {
                        return Err(failed(
                            l.sequence,
                            format!(
                                "the chain differs from the signed checkpoint {label}: a record \
                                 after {last_checkpoint} and up to {} was changed or deleted and \
                                 the chain recomputed",
                                l.sequence
                            ),
                        ));
                    }
                    out.checkpoints += 1;
                    last_checkpoint = l.sequence;
                }
            }
        }
        after = last;
        progress(out.records + out.erased);
    }
    if let Some(s) = unaccounted.first() {
        return Err(failed(
            *s,
            "the record is gone, its salt cleared, and no erasure lists it",
        ));
    }
    if let Some((s, (label, _))) = checkpoints.iter().next().map(|(s, v)| (*s, v[0].clone())) {
        return Err(failed(
            s,
            format!("the signed checkpoint {label} names a record the chain does not hold"),
        ));
    }
    let head = store.chain_head()?;
    if head != prev {
        let s = head.map_or(0, |(s, _)| s).max(prev.map_or(0, |(s, _)| s));
        return Err(failed(s, "the store's head is not the last link"));
    }
    out.head = prev;
    Ok(out)
}

fn check_one(
    l: &Link,
    held: &Held,
    digests: &HashMap<(String, u32), [u8; 32]>,
    canonical: &mut Canonical,
    unaccounted: &mut BTreeSet<u64>,
    out: &mut Verified,
) -> Result<(), VerifyError> {
    let s = l.sequence;
    let bytes: &[u8] = match (held, l.kind) {
        (Held::Unreadable(what), _) => {
            return Err(failed(s, format!("the record does not decode: {what}")));
        }
        (Held::Missing, _) if l.salt.is_some() => {
            return Err(failed(
                s,
                format!(
                    "the {} is gone but was never erased (deleted by hand)",
                    l.kind.name()
                ),
            ));
        }
        (Held::Missing, Kind::Event) => {
            unaccounted.insert(s);
            out.erased += 1;
            return Ok(());
        }
        (Held::Missing, _) => {
            return Err(failed(s, format!("the {} is gone", l.kind.name())));
        }
        (_, _) if l.salt.is_none() => {
            return Err(failed(
                s,
                "the record is held but its salt was cleared (as if erased)",
            ));
        }
        (Held::Event(e), Kind::Event) => {
            if e.sequence != s {
                return Err(failed(s, "the event held names another sequence"));
            }
            let d = digests
                .get(&(e.consent.as_str().to_owned(), e.version))
                .copied()
                .unwrap_or([0; 32]);
            canonical.event(e, &d)
        }
        (Held::Catalog(at, spec), Kind::Catalog) => canonical.catalog(*at, spec),
        (Held::Erasure, Kind::Erasure) => {
            let list = erased_list(&l.body)
                .ok_or_else(|| failed(s, "the erasure record does not decode"))?;
            for e in list {
                if !unaccounted.remove(&e) {
                    return Err(failed(
                        s,
                        format!("the erasure lists {e}, which is not an erased record before it"),
                    ));
                }
            }
            &l.body
        }
        (_, kind) => {
            return Err(failed(
                s,
                format!(
                    "the link is of an {} but another record is held",
                    kind.name()
                ),
            ));
        }
    };
    let salt = l.salt.expect("checked above");
    if leaf(&salt, bytes) != l.leaf {
        return Err(failed(
            s,
            format!(
                "the {} differs from what was committed (it does not match its leaf)",
                l.kind.name()
            ),
        ));
    }
    out.records += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_erasure_body_lists_what_it_erased() {
        let mut c = Canonical::default();
        let body = c.erasure(&[1; 32], 5, "ticket 7", &[3, 9]).to_vec();
        assert_eq!(erased_list(&body), Some(vec![3, 9]));
        assert_eq!(erased_list(&body[..body.len() - 1]), None);
    }
}

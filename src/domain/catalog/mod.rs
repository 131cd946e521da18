//! The catalog: channels, brands and consent definitions, validated and
//! compiled into the lookup tables the hot path reads.
//!
//! Invariants kept by [`Catalog::compile`]:
//! - every id is well formed and unique, every parent exists, no cycles;
//! - a child's effective scope lies inside its parent's;
//! - a consent keeps its interned index across catalog versions (states in
//!   the index refer to consents by that index), and indices are never reused;
//! - `version` starts at 1 and grows by one whenever the text, the parent
//!   or the effective scope changes; it never goes back and is never reused
//!   (the latest wording of every id ever declared is kept).
//!
//! Layout: this file holds the types and the lookups; `compile.rs` the
//! validation and compilation of a declared catalog.

mod compile;

pub use compile::Compiled;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::address::AddressKind;
use super::ids::{ConsentId, FieldError, quote};
use super::terms::{Terms, short_version};
use super::wording::Wording;

/// Lookup maps on the hot path hash short ids: foldhash, not SipHash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A consent interned to a small integer, stable for the life of the process.
pub type ConsentIdx = u32;

/// Most channels a catalog declares.
pub const MAX_CHANNELS: usize = 256;
/// Most brands a catalog declares.
pub const MAX_BRANDS: usize = 10_000;
/// Most consents a catalog declares.
pub const MAX_CONSENTS: usize = 10_000;
/// Longest consent title, in bytes.
pub const MAX_TITLE_LEN: usize = 512;
/// Longest consent wording, in bytes.
pub const MAX_TEXT_LEN: usize = 64 * 1024;
/// Upper bound on precomputed (purpose, channel, brand) cells.
pub const MAX_COVER_CELLS: usize = 4_000_000;
/// Upper bound on the entries of all covering sets together (each consent
/// counts once per cell of its scope): 16M entries are 64 MiB, whatever a
/// 100 KiB catalog asks for.
pub const MAX_COVER_ENTRIES: usize = 16_000_000;

/// The catalog as declared: by `ApplyCatalog`, the TOML file, or the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogSpec {
    /// Every channel messages travel by.
    pub channels: Vec<String>,
    /// The company's brands.
    pub brands: Vec<String>,
    /// Every consent definition.
    pub consents: Vec<ConsentSpec>,
    /// The purpose a CanSend without one uses.
    pub default_purpose: Option<String>,
    /// Brand id → the name pages show (the id when absent).
    pub brand_titles: BTreeMap<String, String>,
    /// Channel → the kind of address it sends to (DESIGN.md §9; TOML
    /// `[channel_addresses] email = "EMAIL"`). A channel without one sends
    /// to no address consentd knows of.
    pub channel_addresses: BTreeMap<String, AddressKind>,
}

/// One consent definition as declared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsentSpec {
    /// Its id, `[a-z0-9][a-z0-9_.-]{0,63}`.
    pub id: String,
    /// A short title for pages and tools.
    pub title: String,
    /// The wording shown to the person.
    pub text: String,
    /// The consent whose scope includes this one; none for a purpose.
    pub parent: Option<String>,
    /// Channels covered; empty: all (a root) or the parent's (a child).
    pub channels: Vec<String>,
    /// Brands covered; empty: all (a root) or the parent's (a child).
    pub brands: Vec<String>,
    /// Assigned by the server; ignored on input.
    pub version: u32,
    /// Retired: keeps deciding with the states it has, takes no new GRANT.
    pub retired: bool,
    /// A GRANT is pending until the person confirms it (double opt-in),
    /// unless the change says `confirmed`.
    pub double_opt_in: bool,
    /// GRANT states recorded under an older version no longer count; 0:
    /// every version counts. At most the consent's own version.
    pub min_version: u32,
    /// A GRANT state older than this many days no longer counts; 0: never
    /// lapses.
    pub valid_for_days: u32,
}

/// Longest `valid_for_days`: a century.
pub const MAX_VALID_FOR_DAYS: u32 = 36_500;

/// A compiled consent definition.
#[derive(Debug, Clone)]
pub struct Consent {
    /// Its id.
    pub id: ConsentId,
    /// Its interned index.
    pub idx: ConsentIdx,
    /// Normalized spec (sorted scope lists, server-assigned version).
    pub spec: ConsentSpec,
    /// The id of the root of its tree (its purpose).
    pub purpose: ConsentIdx,
    /// Steps from its root (0 for a purpose).
    pub depth: u16,
    /// Effective channels, as indices into the catalog's channels.
    pub channels: Vec<u32>,
    /// Effective brands, as indices into the catalog's brands.
    pub brands: Vec<u32>,
}

/// The compiled catalog. Immutable; replaced whole on every apply.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    spec: CatalogSpec,
    channels: HashMap<String, u32>,
    brands: HashMap<String, u32>,
    /// Root consent id → purpose ordinal.
    purposes: HashMap<String, u32>,
    /// Purpose ordinal → root consent.
    roots: Vec<ConsentIdx>,
    by_id: HashMap<String, ConsentIdx>,
    /// Indexed by `ConsentIdx`; `None` for a consent deleted since interning.
    consents: Vec<Option<Consent>>,
    /// Interned ids by `ConsentIdx`, carried from catalog to catalog. Leaked
    /// on purpose: one string per distinct consent id ever declared, so that
    /// a CanSend answer can name its consent without allocating or counting
    /// references.
    names: Vec<&'static str>,
    /// Covering sets per (purpose, channel, brand), most specific first.
    covers: Vec<Box<[ConsentIdx]>>,
    default_purpose: Option<u32>,
    /// `--default-purpose`, used when the spec names none.
    fallback_default: Option<String>,
    /// The latest wording of every consent id ever declared, removed ones
    /// too: what the next compile compares against, so that versions never
    /// go back and are never reused.
    wordings: HashMap<String, Arc<Wording>>,
    /// Lapse terms by `ConsentIdx` (default for deleted consents).
    terms: Vec<Terms>,
    /// Whether any consent lapses at all (by version or by age).
    lapses: bool,
    /// By `ConsentIdx`: its ancestors and descendants (a withdrawal of any
    /// of them by the person makes a system's grant pending).
    related: Vec<Box<[ConsentIdx]>>,
}

/// Where a check names its purpose, channel and brand, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// The purpose's ordinal.
    pub purpose: u32,
    /// The channel's index.
    pub channel: u32,
    /// The brand's index.
    pub brand: u32,
}

/// The cell the check before named, for the next check of a batch, which
/// mostly names the same (purpose, channel, brand): compared byte for
/// byte it is found without the two or three hash lookups of
/// [`Catalog::cell`] (a tenth of a cached batch's decision time). Only
/// for one catalog: a batch decides over one snapshot.
#[derive(Debug, Default)]
pub(crate) struct LastCell<'a>(Option<([&'a str; 3], Cell)>);

impl<'a> LastCell<'a> {
    /// [`Catalog::cell`] of `catalog`, the one every call passes.
    #[inline]
    pub(crate) fn cell(
        &mut self,
        catalog: &Catalog,
        purpose: &'a str,
        channel: &'a str,
        brand: &'a str,
    ) -> Result<Cell, FieldError> {
        if let Some(([p, c, b], cell)) = self.0
            && same(p, purpose)
            && same(c, channel)
            && same(b, brand)
        {
            return Ok(cell);
        }
        let cell = catalog.cell(purpose, channel, brand)?;
        self.0 = Some(([purpose, channel, brand], cell));
        Ok(cell)
    }
}

/// Equal strings, compared in line: an id is a few bytes, where a call to
/// `memcmp` for each of the three costs more than the comparison.
#[inline]
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}

impl Catalog {
    /// An empty catalog; `fallback_default` is the configured default purpose.
    pub fn empty(fallback_default: Option<String>) -> Self {
        Self {
            fallback_default,
            ..Self::default()
        }
    }

    /// The normalized spec, with versions, as `GetCatalog` answers it.
    pub fn spec(&self) -> &CatalogSpec {
        &self.spec
    }

    /// The kind of address `channel` sends to, if the catalog maps it.
    #[inline]
    pub fn address_kind(&self, channel: &str) -> Option<AddressKind> {
        self.spec.channel_addresses.get(channel).copied()
    }

    /// The latest wording of a consent id ever declared (removed ones too).
    pub fn latest_wording(&self, id: &str) -> Option<&Wording> {
        self.wordings.get(id).map(|w| &**w)
    }

    /// The interned index of a consent id, if it is defined.
    pub fn consent_idx(&self, id: &str) -> Option<ConsentIdx> {
        self.by_id.get(id).copied()
    }

    /// The compiled consent behind an index, if it is still defined.
    pub fn consent(&self, idx: ConsentIdx) -> Option<&Consent> {
        self.consents.get(idx as usize).and_then(Option::as_ref)
    }

    /// Every consent currently defined.
    pub fn consents(&self) -> impl Iterator<Item = &Consent> {
        self.consents.iter().flatten()
    }

    /// The consent id behind an index (for answers).
    pub fn consent_id(&self, idx: ConsentIdx) -> &'static str {
        self.names.get(idx as usize).copied().unwrap_or("")
    }

    /// Compiles the (purpose, channel, brand) of a check; errors name the field.
    pub fn cell(&self, purpose: &str, channel: &str, brand: &str) -> Result<Cell, FieldError> {
        let channel = *self
            .channels
            .get(channel)
            .ok_or_else(|| unknown("channel", channel))?;
        let brand = *self
            .brands
            .get(brand)
            .ok_or_else(|| unknown("brand", brand))?;
        let purpose = self.purpose(purpose)?;
        Ok(Cell {
            purpose,
            channel,
            brand,
        })
    }

    fn purpose(&self, purpose: &str) -> Result<u32, FieldError> {
        if purpose.is_empty() {
            if let Some(p) = self.default_purpose {
                return Ok(p);
            }
            if self.roots.len() == 1 {
                return Ok(0);
            }
            return Err(FieldError::new(
                "purpose",
                "is required: no default purpose is configured and the catalog has more than one",
            ));
        }
        if let Some(&p) = self.purposes.get(purpose) {
            return Ok(p);
        }
        if self.by_id.contains_key(purpose) {
            return Err(FieldError::new(
                "purpose",
                format!("{} is not a purpose (a root consent)", quote(purpose)),
            ));
        }
        Err(unknown("purpose", purpose))
    }

    /// Lapse terms by interned consent, for [`crate::domain::verdict`];
    /// empty when no consent lapses (CanSend then skips the check).
    pub fn terms(&self) -> &[Terms] {
        if self.lapses { &self.terms } else { &[] }
    }

    /// The ancestors and descendants of a consent, sorted.
    pub fn related(&self, idx: ConsentIdx) -> &[ConsentIdx] {
        self.related.get(idx as usize).map_or(&[], |r| &r[..])
    }

    /// The name pages show for a brand: its title, else its id.
    pub fn brand_title<'a>(&'a self, brand: &'a str) -> &'a str {
        self.spec
            .brand_titles
            .get(brand)
            .map_or(brand, String::as_str)
    }

    /// The root consent of a purpose named by id (empty: the default), for
    /// the pages that list a purpose tree.
    pub fn purpose_root(&self, purpose: &str) -> Result<ConsentIdx, FieldError> {
        let p = self.purpose(purpose)?;
        Ok(self.roots[p as usize])
    }

    /// Every consent of the tree under `root` (itself included), parents
    /// before children, then by id.
    pub fn tree(&self, root: ConsentIdx) -> Vec<&Consent> {
        let mut v: Vec<&Consent> = self.consents().filter(|c| c.purpose == root).collect();
        v.sort_by(|a, b| (a.depth, a.id.as_str()).cmp(&(b.depth, b.id.as_str())));
        v
    }

    /// Every cell a consent's scope takes in: its purpose, each of its
    /// effective channels with each of its effective brands. CanSend for
    /// one of them decides among that cell's covering set, of which the
    /// consent is one member.
    pub fn cells_of(&self, consent: &Consent) -> Vec<Cell> {
        let Some(&purpose) = self.purposes.get(self.consent_id(consent.purpose)) else {
            return Vec::new();
        };
        consent
            .channels
            .iter()
            .flat_map(|&channel| {
                consent.brands.iter().map(move |&brand| Cell {
                    purpose,
                    channel,
                    brand,
                })
            })
            .collect()
    }

    /// The covering set of a cell, most specific first (DESIGN.md rule 3, 4).
    pub fn covering(&self, cell: Cell) -> &[ConsentIdx] {
        let i = (cell.purpose as usize * self.channels.len() + cell.channel as usize)
            * self.brands.len()
            + cell.brand as usize;
        &self.covers[i]
    }
}

fn unknown(field: &str, value: &str) -> FieldError {
    FieldError::new(field, format!("unknown {field} {}", quote(value)))
}

#[cfg(test)]
mod tests;

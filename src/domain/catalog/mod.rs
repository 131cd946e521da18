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

    /// The interned index of a consent id, if it is defined.
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
mod tests {
    use super::*;
    use crate::domain::Wording;

    pub(crate) fn consent(
        id: &str,
        parent: Option<&str>,
        channels: &[&str],
        brands: &[&str],
    ) -> ConsentSpec {
        ConsentSpec {
            id: id.into(),
            title: format!("{id} title"),
            text: format!("I agree to {id}"),
            parent: parent.map(Into::into),
            channels: channels.iter().map(|s| s.to_string()).collect(),
            brands: brands.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn spec() -> CatalogSpec {
        CatalogSpec {
            channels: vec!["email".into(), "sms".into()],
            brands: vec!["a".into(), "b".into()],
            consents: vec![
                consent("marketing", None, &[], &[]),
                consent("marketing.a", Some("marketing"), &[], &["a"]),
                consent("marketing.a.email", Some("marketing.a"), &["email"], &[]),
                consent("marketing.b", Some("marketing"), &[], &["b"]),
                consent("surveys", None, &["email"], &[]),
            ],
            default_purpose: Some("marketing".into()),
            brand_titles: Default::default(),
        }
    }

    fn ids(cat: &Catalog, cover: &[ConsentIdx]) -> Vec<String> {
        cover
            .iter()
            .map(|&i| cat.consent_id(i).to_owned())
            .collect()
    }

    #[test]
    fn covering_sets_most_specific_first() {
        let (cat, _) = Catalog::empty(None)
            .compile(spec(), 0)
            .unwrap()
            .into_parts();
        let cell = cat.cell("", "email", "a").unwrap();
        assert_eq!(
            ids(&cat, cat.covering(cell)),
            ["marketing.a.email", "marketing.a", "marketing"]
        );
        let cell = cat.cell("marketing", "sms", "a").unwrap();
        assert_eq!(ids(&cat, cat.covering(cell)), ["marketing.a", "marketing"]);
        let cell = cat.cell("marketing", "sms", "b").unwrap();
        assert_eq!(ids(&cat, cat.covering(cell)), ["marketing.b", "marketing"]);
        let cell = cat.cell("surveys", "sms", "b").unwrap();
        assert!(cat.covering(cell).is_empty(), "surveys covers email only");
    }

    #[test]
    fn purpose_resolution() {
        let (cat, _) = Catalog::empty(None)
            .compile(spec(), 0)
            .unwrap()
            .into_parts();
        assert_eq!(cat.cell("", "email", "a").unwrap().purpose, 0);
        assert_eq!(cat.cell("surveys", "email", "a").unwrap().purpose, 1);
        assert_eq!(
            cat.cell("marketing.a", "email", "a").unwrap_err().field,
            "purpose"
        );
        assert_eq!(cat.cell("nope", "email", "a").unwrap_err().field, "purpose");
        assert_eq!(cat.cell("", "fax", "a").unwrap_err().field, "channel");
        assert_eq!(cat.cell("", "email", "zzz").unwrap_err().field, "brand");

        let mut no_default = spec();
        no_default.default_purpose = None;
        let (cat, _) = Catalog::empty(None)
            .compile(no_default.clone(), 0)
            .unwrap()
            .into_parts();
        assert_eq!(cat.cell("", "email", "a").unwrap_err().field, "purpose");
        let (cat, _) = Catalog::empty(Some("surveys".into()))
            .compile(no_default.clone(), 0)
            .unwrap()
            .into_parts();
        assert_eq!(
            cat.cell("", "email", "a").unwrap().purpose,
            1,
            "configured default"
        );
        no_default.consents.pop();
        let (cat, _) = Catalog::empty(None)
            .compile(no_default, 0)
            .unwrap()
            .into_parts();
        assert_eq!(
            cat.cell("", "email", "a").unwrap().purpose,
            0,
            "the only root"
        );
    }

    #[test]
    fn a_small_catalog_cannot_ask_for_huge_covering_sets() {
        // ~100 KB of ids: 256 channels, 4,000 brands, 2,000 nested consents
        // that all inherit the whole scope.
        let mut s = CatalogSpec {
            channels: (0..256).map(|i| format!("c{i}")).collect(),
            brands: (0..4_000).map(|i| format!("b{i}")).collect(),
            ..Default::default()
        };
        s.consents.push(consent("root", None, &[], &[]));
        for i in 1..2_000 {
            s.consents
                .push(consent(&format!("n{i}"), Some("root"), &[], &[]));
        }
        // Refused by counting, before the ~8 GB the sets would take.
        let err = Catalog::empty(None).compile(s, 0).unwrap_err();
        assert_eq!(err.field, "consents");
        assert!(err.problem.contains("covering sets"), "{err}");
    }

    #[test]
    fn invalid_catalogs_name_the_field() {
        type Mutation = Box<dyn Fn(&mut CatalogSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "consents[1].parent",
                Box::new(|s| s.consents[1].parent = Some("ghost".into())),
            ),
            (
                "consents[0].parent",
                Box::new(|s| s.consents[0].parent = Some("marketing.b".into())),
            ),
            (
                "consents[2].channels",
                Box::new(|s| s.consents[2].channels = vec!["fax".into()]),
            ),
            (
                "consents[2].brands",
                Box::new(|s| s.consents[2].brands = vec!["b".into()]),
            ),
            (
                "consents[1].id",
                Box::new(|s| s.consents[1].id = "marketing".into()),
            ),
            (
                "consents[1].id",
                Box::new(|s| s.consents[1].id = "Bad Id".into()),
            ),
            (
                "consents[1].text",
                Box::new(|s| s.consents[1].text = "x".repeat(MAX_TEXT_LEN + 1)),
            ),
            ("channels[1]", Box::new(|s| s.channels[1] = "email".into())),
            ("brands[0]", Box::new(|s| s.brands[0] = "".into())),
            (
                "default_purpose",
                Box::new(|s| s.default_purpose = Some("marketing.a".into())),
            ),
        ];
        for (field, mutate) in cases {
            let mut s = spec();
            mutate(&mut s);
            let err = Catalog::empty(None).compile(s, 0).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn versions_and_stable_indices() {
        let (v1, _) = Catalog::empty(None)
            .compile(spec(), 0)
            .unwrap()
            .into_parts();
        assert!(v1.spec().consents.iter().all(|c| c.version == 1));
        let a_email = v1.consent_idx("marketing.a.email").unwrap();

        let mut next = spec();
        next.consents[0].title = "New title only".into(); // no bump
        next.consents[1].text = "New wording".into(); // bump
        next.consents[3].channels = vec!["sms".into()]; // scope: bump
        next.consents.remove(4); // surveys deleted
        next.consents.push(consent("newsletter", None, &[], &[]));
        let (v2, removed) = v1.compile(next, 0).unwrap().into_parts();
        let version = |id: &str| {
            v2.spec()
                .consents
                .iter()
                .find(|c| c.id == id)
                .unwrap()
                .version
        };
        assert_eq!(version("marketing"), 1);
        assert_eq!(version("marketing.a"), 2);
        assert_eq!(version("marketing.b"), 2);
        assert_eq!(version("newsletter"), 1);
        assert_eq!(removed, vec![v1.consent_idx("surveys").unwrap()]);
        assert_eq!(v2.consent_idx("marketing.a.email"), Some(a_email));
        assert!(v2.consent_idx("newsletter").unwrap() > v1.consent_idx("surveys").unwrap());

        let (v3, _) = v2.compile(v2.spec().clone(), 0).unwrap().into_parts();
        assert_eq!(
            v3.spec(),
            v2.spec(),
            "re-applying the same catalog changes nothing"
        );
    }

    fn version(cat: &Catalog, id: &str) -> u32 {
        cat.spec()
            .consents
            .iter()
            .find(|c| c.id == id)
            .unwrap()
            .version
    }

    #[test]
    fn a_scope_widened_by_inheritance_bumps_the_version() {
        let v1 = Catalog::empty(None).compile(spec(), 1).unwrap();
        assert_eq!(
            v1.wordings.len(),
            5,
            "every new consent gets its first wording"
        );
        let v1 = v1.catalog;
        let mut wider = spec();
        wider.brands.push("c".into());
        let v2 = v1.compile(wider, 2).unwrap();
        // marketing lists no brands, so it now covers c too; marketing.a and
        // marketing.b list theirs; marketing.a.email inherits a's.
        assert_eq!(version(&v2.catalog, "marketing"), 2);
        assert_eq!(version(&v2.catalog, "marketing.a"), 1);
        assert_eq!(version(&v2.catalog, "marketing.a.email"), 1);
        assert_eq!(
            version(&v2.catalog, "surveys"),
            2,
            "a root with every brand"
        );
        let bumped: Vec<_> = v2
            .wordings
            .iter()
            .map(|w| (w.consent.as_str(), w.version))
            .collect();
        assert_eq!(bumped, [("marketing", 2), ("surveys", 2)]);
        let w = v2.catalog.latest_wording("marketing").unwrap();
        assert_eq!(w.brands, ["a", "b", "c"], "the effective scope, listed");
        assert_eq!(w.channels, ["email", "sms"]);
        assert_eq!(w.in_force_from, 2);

        // A child inheriting a changed scope is bumped too.
        let mut narrower = v2.catalog.spec().clone();
        narrower.consents[1].brands = vec!["a".into(), "b".into()];
        let v3 = v2.catalog.compile(narrower, 3).unwrap();
        assert_eq!(version(&v3.catalog, "marketing.a"), 2);
        assert_eq!(
            version(&v3.catalog, "marketing.a.email"),
            2,
            "it lists no brands: it inherits a's, now a and b"
        );
        assert_eq!(version(&v3.catalog, "marketing.b"), 1);
    }

    #[test]
    fn versions_never_go_back_nor_repeat() {
        let v1 = Catalog::empty(None).compile(spec(), 1).unwrap().catalog;
        let mut edited = spec();
        edited.consents[4].text = "Surveys, reworded".into();
        edited.consents[0].title = "A new title asks nothing new".into();
        let v2 = v1.compile(edited, 2).unwrap();
        assert_eq!(version(&v2.catalog, "surveys"), 2);
        assert_eq!(version(&v2.catalog, "marketing"), 1);
        assert_eq!(v2.wordings.len(), 1, "a title change makes no wording");
        assert_eq!(
            v2.catalog.spec().consents[0].title,
            "A new title asks nothing new"
        );

        // Removed, then declared again with its first words: numbering goes on.
        let mut without = v2.catalog.spec().clone();
        without.consents.remove(4);
        let v3 = v2.catalog.compile(without, 3).unwrap().catalog;
        assert_eq!(
            v3.latest_wording("surveys").unwrap().version,
            2,
            "kept when removed"
        );
        let v4 = v3.compile(spec(), 4).unwrap();
        assert_eq!(version(&v4.catalog, "surveys"), 3);

        // Declared versions are ignored.
        let mut claims = v4.catalog.spec().clone();
        claims.consents[0].version = 99;
        let v5 = v4.catalog.compile(claims, 5).unwrap();
        assert_eq!(version(&v5.catalog, "marketing"), 1);
        assert!(v5.wordings.is_empty());
    }

    #[test]
    fn restore_keeps_versions_and_adopts_a_catalog_without_wordings() {
        let v1 = Catalog::empty(None).compile(spec(), 1).unwrap().catalog;
        let mut edited = spec();
        edited.consents[1].text = "Brand a, reworded".into();
        let v2 = v1.compile(edited, 2).unwrap().catalog;
        let latest: Vec<Wording> = v2
            .spec()
            .consents
            .iter()
            .map(|c| v2.latest_wording(&c.id).unwrap().clone())
            .collect();

        let restored = Catalog::restore(None, v2.spec().clone(), latest.clone()).unwrap();
        assert!(
            restored.wordings.is_empty(),
            "nothing new on a plain restart"
        );
        assert_eq!(restored.catalog.spec(), v2.spec());
        // The next edit after a restart continues from the stored versions.
        let mut again = v2.spec().clone();
        again.consents[1].text = "Brand a, third wording".into();
        let v3 = restored.catalog.compile(again, 3).unwrap().catalog;
        assert_eq!(version(&v3, "marketing.a"), 3);

        // A catalog stored before wordings were kept: its versions stand.
        let adopted = Catalog::restore(None, v2.spec().clone(), Vec::new()).unwrap();
        assert_eq!(version(&adopted.catalog, "marketing.a"), 2);
        assert_eq!(adopted.wordings.len(), 5);
        assert!(adopted.wordings.iter().all(|w| w.in_force_from == 0));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Small catalogs with arbitrary parents and scopes, valid or not.
    fn arbitrary_spec() -> impl Strategy<Value = CatalogSpec> {
        let ids = proptest::collection::vec("[a-e][a-e.]{0,3}", 0..8);
        (
            proptest::collection::vec("[a-d]{1,2}", 0..4),
            proptest::collection::vec("[w-z]{1,2}", 0..4),
            ids,
            proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 8),
        )
            .prop_map(|(channels, brands, ids, picks)| {
                let consents = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| {
                        let (p, c, b) = picks[i % picks.len()];
                        ConsentSpec {
                            id: id.clone(),
                            parent: (p % 3 != 0).then(|| ids[p as usize % ids.len()].clone()),
                            channels: channels.iter().take(c as usize % 3).cloned().collect(),
                            brands: brands
                                .iter()
                                .skip(b as usize % 2)
                                .take(1)
                                .cloned()
                                .collect(),
                            text: format!("words {i}"),
                            ..Default::default()
                        }
                    })
                    .collect();
                CatalogSpec {
                    channels,
                    brands,
                    consents,
                    default_purpose: None,
                    brand_titles: Default::default(),
                }
            })
    }

    proptest! {
        /// Compiling never panics; an error names a field of the spec; a
        /// success covers every cell only with consents whose scope holds it,
        /// most specific first.
        #[test]
        fn compile_is_total_and_covers_only_what_scopes_hold(spec in arbitrary_spec()) {
            match Catalog::empty(None).compile(spec.clone(), 1) {
                Err(e) => {
                    let known = ["channels", "brands", "consents", "default_purpose"];
                    prop_assert!(known.iter().any(|k| e.field.starts_with(k)), "{}", e);
                }
                Ok(compiled) => {
                    let cat = compiled.catalog;
                    let roots: Vec<&ConsentSpec> =
                        cat.spec().consents.iter().filter(|c| c.parent.is_none()).collect();
                    for root in roots {
                        for ch in &spec.channels {
                            for br in &spec.brands {
                                let cell = cat.cell(&root.id, ch, br).unwrap();
                                let cover = cat.covering(cell);
                                let mut depth = u16::MAX;
                                for &idx in cover {
                                    let c = cat.consent(idx).unwrap();
                                    let ch_i = spec.channels.iter().position(|x| x == ch).unwrap();
                                    let br_i = spec.brands.iter().position(|x| x == br).unwrap();
                                    prop_assert!(c.channels.contains(&(ch_i as u32)));
                                    prop_assert!(c.brands.contains(&(br_i as u32)));
                                    prop_assert_eq!(cat.consent_id(c.purpose), root.id.as_str());
                                    prop_assert!(c.depth <= depth, "most specific first");
                                    depth = c.depth;
                                }
                            }
                        }
                    }
                    // Compiling its own output again changes no version.
                    let again = cat.compile(cat.spec().clone(), 2).unwrap();
                    prop_assert!(again.wordings.is_empty());
                    prop_assert_eq!(again.catalog.spec(), cat.spec());
                }
            }
        }
    }
}

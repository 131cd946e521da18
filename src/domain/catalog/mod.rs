//! The catalog: channels, brands and consent definitions, validated and
//! compiled into the lookup tables the hot path reads.
//!
//! Invariants kept by [`Catalog::compile`]:
//! - every id is well formed and unique, every parent exists, no cycles;
//! - a child's effective scope lies inside its parent's;
//! - a consent keeps its interned index across catalog versions (states in
//!   the index refer to consents by that index), and indices are never reused;
//! - `version` starts at 1 and grows by one whenever text or scope changes.
//!
//! Layout: this file holds the types and the lookups; `compile.rs` the
//! validation and compilation of a declared catalog.

mod compile;

use serde::{Deserialize, Serialize};

use super::ids::{ConsentId, FieldError};

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
}

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
                format!("{purpose:?} is not a purpose (a root consent)"),
            ));
        }
        Err(unknown("purpose", purpose))
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
    FieldError::new(field, format!("unknown {field} {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (cat, _) = Catalog::empty(None).compile(spec()).unwrap();
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
        let (cat, _) = Catalog::empty(None).compile(spec()).unwrap();
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
        let (cat, _) = Catalog::empty(None).compile(no_default.clone()).unwrap();
        assert_eq!(cat.cell("", "email", "a").unwrap_err().field, "purpose");
        let (cat, _) = Catalog::empty(Some("surveys".into()))
            .compile(no_default.clone())
            .unwrap();
        assert_eq!(
            cat.cell("", "email", "a").unwrap().purpose,
            1,
            "configured default"
        );
        no_default.consents.pop();
        let (cat, _) = Catalog::empty(None).compile(no_default).unwrap();
        assert_eq!(
            cat.cell("", "email", "a").unwrap().purpose,
            0,
            "the only root"
        );
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
            let err = Catalog::empty(None).compile(s).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn versions_and_stable_indices() {
        let (v1, _) = Catalog::empty(None).compile(spec()).unwrap();
        assert!(v1.spec().consents.iter().all(|c| c.version == 1));
        let a_email = v1.consent_idx("marketing.a.email").unwrap();

        let mut next = spec();
        next.consents[0].title = "New title only".into(); // no bump
        next.consents[1].text = "New wording".into(); // bump
        next.consents[3].channels = vec!["sms".into()]; // scope: bump
        next.consents.remove(4); // surveys deleted
        next.consents.push(consent("newsletter", None, &[], &[]));
        let (v2, removed) = v1.compile(next).unwrap();
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

        let (v3, _) = v2.compile(v2.spec().clone()).unwrap();
        assert_eq!(
            v3.spec(),
            v2.spec(),
            "re-applying the same catalog changes nothing"
        );
    }
}

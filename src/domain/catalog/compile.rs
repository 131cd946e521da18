//! Validating a declared catalog and compiling it into the lookup tables
//! the hot path reads, as the successor of the catalog in force (indices
//! and versions carry over).

use super::{
    Catalog, CatalogSpec, Consent, ConsentIdx, ConsentSpec, HashMap, MAX_BRANDS, MAX_CHANNELS,
    MAX_CONSENTS, MAX_COVER_CELLS, MAX_COVER_ENTRIES, MAX_TEXT_LEN, MAX_TITLE_LEN,
    MAX_VALID_FOR_DAYS, Terms, short_version,
};
use std::collections::HashSet;
use std::sync::Arc;

use crate::domain::event::UnixNanos;
use crate::domain::ids::{ConsentId, FieldError, check_id, quote};
use crate::domain::wording::Wording;

/// What a successful compile gives.
#[derive(Debug)]
pub struct Compiled {
    /// The new catalog.
    pub catalog: Catalog,
    /// Consents the spec deletes; the caller refuses the apply if any
    /// contact holds state for one of them.
    pub removed: Vec<ConsentIdx>,
    /// Wordings that come into force with this catalog (new consents, and
    /// consents whose terms changed), to be kept for good.
    pub wordings: Vec<Wording>,
}

impl Compiled {
    /// (catalog, removed), for callers that keep no wordings.
    pub fn into_parts(self) -> (Catalog, Vec<ConsentIdx>) {
        (self.catalog, self.removed)
    }
}

/// Where the version of a consent without a wording on file comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FirstVersion {
    /// A consent never declared before: version 1.
    One,
    /// A catalog stored before wordings were kept: its stored version.
    Declared,
}

impl Catalog {
    /// Validates `spec` and compiles it as the successor of `self`; new
    /// wordings come into force at `now`.
    ///
    /// Versions are the server's: each consent keeps the version of its
    /// latest wording (of every id ever declared, removed ones too) while
    /// its text, parent and effective scope stay the same, and gets the
    /// next one when any of them changes. Declared versions are ignored.
    pub fn compile(&self, spec: CatalogSpec, now: UnixNanos) -> Result<Compiled, FieldError> {
        self.compile_with(spec, now, FirstVersion::One)
    }

    /// The catalog kept in the store, with the latest wording of every
    /// consent ever declared: what start-up recovers. A stored consent that
    /// has no wording yet (written before wordings were kept) keeps its
    /// stored version; its wording is returned, in force from 0 (unknown).
    pub fn restore(
        fallback_default: Option<String>,
        spec: CatalogSpec,
        latest: Vec<Wording>,
    ) -> Result<Compiled, FieldError> {
        let mut base = Catalog::empty(fallback_default);
        base.wordings = latest
            .into_iter()
            .map(|w| (w.consent.to_string(), Arc::new(w)))
            .collect();
        base.compile_with(spec, 0, FirstVersion::Declared)
    }

    /// The catalog another node applied to a shared store (`spec`, and the
    /// latest wording of every consent as stored there), as the successor
    /// of `self`: interned indices kept, versions as that node gave them,
    /// no new wording (it stored them).
    pub fn follow(&self, spec: CatalogSpec, latest: Vec<Wording>) -> Result<Catalog, FieldError> {
        let mut base = self.clone();
        for w in latest {
            base.wordings.insert(w.consent.to_string(), Arc::new(w));
        }
        Ok(base.compile_with(spec, 0, FirstVersion::Declared)?.catalog)
    }

    fn compile_with(
        &self,
        spec: CatalogSpec,
        now: UnixNanos,
        first: FirstVersion,
    ) -> Result<Compiled, FieldError> {
        let channels = declare("channels", &spec.channels, MAX_CHANNELS)?;
        let brands = declare("brands", &spec.brands, MAX_BRANDS)?;
        if spec.consents.len() > MAX_CONSENTS {
            return Err(FieldError::new(
                "consents",
                format!(
                    "has {} entries, at most {MAX_CONSENTS} allowed",
                    spec.consents.len()
                ),
            ));
        }

        // Ids, parents, texts.
        let mut position: HashMap<&str, usize> = HashMap::default();
        for (i, c) in spec.consents.iter().enumerate() {
            let field = |f: &str| format!("consents[{i}].{f}");
            check_id(&field("id"), &c.id)?;
            if position.insert(&c.id, i).is_some() {
                return Err(FieldError::new(
                    field("id"),
                    format!("{} is declared twice", quote(&c.id)),
                ));
            }
            check_text(&field("title"), &c.title, MAX_TITLE_LEN)?;
            check_text(&field("text"), &c.text, MAX_TEXT_LEN)?;
        }
        let mut parent_of: Vec<Option<usize>> = Vec::with_capacity(spec.consents.len());
        for (i, c) in spec.consents.iter().enumerate() {
            parent_of.push(match c.parent.as_deref() {
                None | Some("") => None,
                Some(p) => Some(*position.get(p).ok_or_else(|| {
                    FieldError::new(
                        format!("consents[{i}].parent"),
                        format!("unknown consent {}", quote(p)),
                    )
                })?),
            });
        }

        // Depth and root of each consent; a walk longer than the catalog is a cycle.
        let n = spec.consents.len();
        let mut depth = vec![0u16; n];
        let mut root = vec![0usize; n];
        for i in 0..n {
            let (mut at, mut steps) = (i, 0usize);
            while let Some(p) = parent_of[at] {
                steps += 1;
                if steps > n {
                    return Err(FieldError::new(
                        format!("consents[{i}].parent"),
                        format!("{} is part of a parent cycle", quote(&spec.consents[i].id)),
                    ));
                }
                at = p;
            }
            depth[i] = steps as u16;
            root[i] = at;
        }

        // Effective scopes, parents before children.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| depth[i]);
        let mut eff_channels: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut eff_brands: Vec<Vec<u32>> = vec![Vec::new(); n];
        for &i in &order {
            let c = &spec.consents[i];
            let parent = parent_of[i];
            eff_channels[i] = scope(
                &format!("consents[{i}].channels"),
                &c.channels,
                &channels,
                parent.map(|p| &eff_channels[p]),
            )?;
            eff_brands[i] = scope(
                &format!("consents[{i}].brands"),
                &c.brands,
                &brands,
                parent.map(|p| &eff_brands[p]),
            )?;
        }

        // Roots become purposes, in declaration order.
        let roots_pos: Vec<usize> = (0..n).filter(|&i| parent_of[i].is_none()).collect();
        let purposes: HashMap<String, u32> = roots_pos
            .iter()
            .enumerate()
            .map(|(ord, &i)| (spec.consents[i].id.clone(), ord as u32))
            .collect();
        let default_purpose = match spec.default_purpose.as_deref() {
            None | Some("") => None,
            Some(p) => Some(*purposes.get(p).ok_or_else(|| {
                FieldError::new(
                    "default_purpose",
                    format!("{} is not a root consent of this catalog", quote(p)),
                )
            })?),
        }
        .or_else(|| {
            self.fallback_default
                .as_deref()
                .and_then(|p| purposes.get(p).copied())
        });

        let cells = roots_pos.len() * channels.len() * brands.len();
        if cells > MAX_COVER_CELLS {
            return Err(FieldError::new(
                "consents",
                format!(
                    "purposes x channels x brands = {cells}, at most {MAX_COVER_CELLS} allowed"
                ),
            ));
        }
        // Bounded before anything is allocated for them.
        let entries: usize = (0..n)
            .map(|i| eff_channels[i].len() * eff_brands[i].len())
            .sum();
        if entries > MAX_COVER_ENTRIES {
            return Err(FieldError::new(
                "consents",
                format!(
                    "the covering sets would hold {entries} entries (each consent once per \
                     channel x brand of its scope), at most {MAX_COVER_ENTRIES} allowed"
                ),
            ));
        }

        // Interned indices: kept for known ids, fresh (never reused) for new ones.
        let mut consents: Vec<Option<Consent>> = vec![None; self.consents.len()];
        let mut by_id = HashMap::with_capacity_and_hasher(n, Default::default());
        let mut idx_of = vec![0 as ConsentIdx; n];
        let mut names = self.names.clone();
        for (i, c) in spec.consents.iter().enumerate() {
            idx_of[i] = self.by_id.get(&c.id).copied().unwrap_or_else(|| {
                names.push(Box::leak(c.id.clone().into_boxed_str()));
                (names.len() - 1) as ConsentIdx
            });
            by_id.insert(c.id.clone(), idx_of[i]);
        }
        let next = names.len() as ConsentIdx;
        consents.resize(next as usize, None);

        let mut normalized = Vec::with_capacity(n);
        let mut wordings = self.wordings.clone();
        let mut new_wordings = Vec::new();
        let names_of = |declared: &[String], indices: &[u32]| {
            let mut v: Vec<String> = indices
                .iter()
                .map(|&i| declared[i as usize].clone())
                .collect();
            v.sort_unstable();
            v
        };
        for (i, c) in spec.consents.iter().enumerate() {
            let id = ConsentId::parse("id", &c.id)?;
            let mut norm = ConsentSpec {
                id: c.id.clone(),
                title: c.title.clone(),
                text: c.text.clone(),
                parent: c.parent.clone().filter(|p| !p.is_empty()),
                channels: sorted_unique(&c.channels),
                brands: sorted_unique(&c.brands),
                version: 1,
                retired: c.retired,
                double_opt_in: c.double_opt_in,
                min_version: c.min_version,
                valid_for_days: c.valid_for_days,
            };
            let mut terms = Wording {
                consent: id.clone(),
                version: 0,
                title: norm.title.clone(),
                text: norm.text.clone(),
                parent: norm.parent.clone(),
                channels: names_of(&spec.channels, &eff_channels[i]),
                brands: names_of(&spec.brands, &eff_brands[i]),
                in_force_from: now,
            };
            norm.version = match self.wordings.get(&c.id) {
                Some(latest) if latest.same_terms(&terms) => latest.version,
                Some(latest) => latest.version + 1,
                None if first == FirstVersion::Declared => c.version.max(1),
                None => 1,
            };
            if norm.min_version > norm.version {
                return Err(FieldError::new(
                    format!("consents[{i}].min_version"),
                    format!(
                        "is {}, above the version this catalog gives {} ({})",
                        norm.min_version,
                        quote(&c.id),
                        norm.version
                    ),
                ));
            }
            if norm.valid_for_days > MAX_VALID_FOR_DAYS {
                return Err(FieldError::new(
                    format!("consents[{i}].valid_for_days"),
                    format!(
                        "is {}, at most {MAX_VALID_FOR_DAYS} allowed",
                        norm.valid_for_days
                    ),
                ));
            }
            if self
                .wordings
                .get(&c.id)
                .is_none_or(|w| w.version != norm.version)
            {
                terms.version = norm.version;
                wordings.insert(c.id.clone(), Arc::new(terms.clone()));
                new_wordings.push(terms);
            }
            consents[idx_of[i] as usize] = Some(Consent {
                id,
                idx: idx_of[i],
                spec: norm.clone(),
                purpose: idx_of[root[i]],
                depth: depth[i],
                channels: std::mem::take(&mut eff_channels[i]),
                brands: std::mem::take(&mut eff_brands[i]),
            });
            normalized.push(norm);
        }

        // Covering sets, most specific first: deepest, then smallest id.
        let (nc, nb) = (channels.len(), brands.len());
        let mut covers: Vec<Vec<ConsentIdx>> = vec![Vec::new(); cells];
        let purpose_of_root: HashMap<usize, usize> = roots_pos
            .iter()
            .enumerate()
            .map(|(ord, &i)| (i, ord))
            .collect();
        let mut by_specificity: Vec<usize> = (0..n).collect();
        by_specificity.sort_by(|&a, &b| {
            depth[b]
                .cmp(&depth[a])
                .then_with(|| spec.consents[a].id.cmp(&spec.consents[b].id))
        });
        for &i in &by_specificity {
            let p = purpose_of_root[&root[i]];
            let c = consents[idx_of[i] as usize]
                .as_ref()
                .expect("every declared consent was compiled above");
            for &ch in &c.channels {
                for &br in &c.brands {
                    covers[(p * nc + ch as usize) * nb + br as usize].push(idx_of[i]);
                }
            }
        }

        // Lapse terms and relatives (ancestors, descendants) by index.
        let mut terms = vec![Terms::default(); next as usize];
        let mut related: Vec<Vec<ConsentIdx>> = vec![Vec::new(); next as usize];
        for (i, c) in normalized.iter().enumerate() {
            terms[idx_of[i] as usize] = Terms {
                min_version: short_version(c.min_version),
                valid_for: i64::from(c.valid_for_days) * 86_400 * 1_000_000_000,
            };
            let mut at = parent_of[i];
            while let Some(p) = at {
                related[idx_of[i] as usize].push(idx_of[p]);
                related[idx_of[p] as usize].push(idx_of[i]);
                at = parent_of[p];
            }
        }
        let lapses = terms.iter().any(|t| t.valid_for > 0 || t.min_version > 0);

        for channel in spec.channel_addresses.keys() {
            if !channels.contains_key(channel) {
                return Err(FieldError::new(
                    format!("channel_addresses[{}]", quote(channel)),
                    format!("{} is not a declared channel", quote(channel)),
                ));
            }
        }

        for (brand, title) in &spec.brand_titles {
            let field = format!("brand_titles[{}]", quote(brand));
            if !brands.contains_key(brand) {
                return Err(FieldError::new(
                    field,
                    format!("{} is not a declared brand", quote(brand)),
                ));
            }
            check_text(&field, title, MAX_TITLE_LEN)?;
        }

        let removed = self
            .by_id
            .iter()
            .filter(|(id, _)| !by_id.contains_key(*id))
            .map(|(_, &idx)| idx)
            .collect();

        let catalog = Catalog {
            spec: CatalogSpec {
                channels: spec.channels,
                brands: spec.brands,
                consents: normalized,
                default_purpose: spec.default_purpose.filter(|p| !p.is_empty()),
                brand_titles: spec.brand_titles,
                channel_addresses: spec.channel_addresses,
            },
            channels,
            brands,
            purposes,
            roots: roots_pos.iter().map(|&i| idx_of[i]).collect(),
            by_id,
            consents,
            names,
            covers: covers.into_iter().map(Vec::into_boxed_slice).collect(),
            default_purpose,
            fallback_default: self.fallback_default.clone(),
            wordings,
            terms,
            lapses,
            related: related
                .into_iter()
                .map(|mut r| {
                    r.sort_unstable();
                    r.into_boxed_slice()
                })
                .collect(),
        };
        Ok(Compiled {
            catalog,
            removed,
            wordings: new_wordings,
        })
    }
}

/// Title and text may be empty (a catalog can be sketched before its
/// wording is final); only their size is limited.
fn check_text(field: &str, text: &str, max: usize) -> Result<(), FieldError> {
    if text.len() > max {
        return Err(FieldError::new(
            field,
            format!("is {} bytes, at most {max} allowed", text.len()),
        ));
    }
    Ok(())
}

fn declare(field: &str, ids: &[String], max: usize) -> Result<HashMap<String, u32>, FieldError> {
    if ids.len() > max {
        return Err(FieldError::new(
            field,
            format!("has {} entries, at most {max} allowed", ids.len()),
        ));
    }
    let mut map = HashMap::with_capacity_and_hasher(ids.len(), Default::default());
    for (i, id) in ids.iter().enumerate() {
        check_id(&format!("{field}[{i}]"), id)?;
        if map.insert(id.clone(), i as u32).is_some() {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                format!("{} is declared twice", quote(id)),
            ));
        }
    }
    Ok(map)
}

/// A consent's effective scope: its own list, or all (root) / the parent's
/// (child) when empty. A child's own list must lie inside the parent's.
fn scope(
    field: &str,
    listed: &[String],
    declared: &HashMap<String, u32>,
    parent: Option<&Vec<u32>>,
) -> Result<Vec<u32>, FieldError> {
    if listed.is_empty() {
        return Ok(match parent {
            Some(p) => p.clone(),
            None => {
                let mut all: Vec<u32> = declared.values().copied().collect();
                all.sort_unstable();
                all
            }
        });
    }
    let mut own = Vec::with_capacity(listed.len());
    for id in listed {
        let &i = declared.get(id).ok_or_else(|| {
            FieldError::new(
                field,
                format!("{} is not declared in the catalog", quote(id)),
            )
        })?;
        if let Some(p) = parent
            && p.binary_search(&i).is_err()
        {
            return Err(FieldError::new(
                field,
                format!("{} is outside the parent's scope", quote(id)),
            ));
        }
        own.push(i);
    }
    own.sort_unstable();
    own.dedup();
    Ok(own)
}

fn sorted_unique(v: &[String]) -> Vec<String> {
    let set: HashSet<&String> = v.iter().collect();
    let mut out: Vec<String> = set.into_iter().cloned().collect();
    out.sort();
    out
}

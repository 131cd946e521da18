//! The catalog's rules, table by table, and its properties.

use super::*;
use crate::domain::{AddressKind, Wording};

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
        channel_addresses: [("email".to_owned(), AddressKind::Email)].into(),
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
fn a_consents_cells_are_its_scope_and_each_covering_set_holds_it() {
    let (cat, _) = Catalog::empty(None)
        .compile(spec(), 0)
        .unwrap()
        .into_parts();
    let cells = |id: &str| {
        let c = cat.consent(cat.consent_idx(id).unwrap()).unwrap();
        let mut v: Vec<Cell> = cat.cells_of(c);
        v.sort_by_key(|c| (c.channel, c.brand));
        for cell in &v {
            assert!(cat.covering(*cell).contains(&c.idx), "{id}: {cell:?}");
        }
        v
    };
    let at = |purpose: &str, channel: &str, brand: &str| cat.cell(purpose, channel, brand).unwrap();
    assert_eq!(
        cells("marketing"),
        [
            at("marketing", "email", "a"),
            at("marketing", "email", "b"),
            at("marketing", "sms", "a"),
            at("marketing", "sms", "b"),
        ]
    );
    assert_eq!(cells("marketing.a.email"), [at("marketing", "email", "a")]);
    assert_eq!(
        cells("marketing.b"),
        [at("marketing", "email", "b"), at("marketing", "sms", "b")]
    );
    assert_eq!(
        cells("surveys"),
        [at("surveys", "email", "a"), at("surveys", "email", "b")]
    );
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
        (
            "channel_addresses[\"fax\"]",
            Box::new(|s| {
                s.channel_addresses.insert("fax".into(), AddressKind::Phone);
            }),
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
                    channel_addresses: Default::default(),
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

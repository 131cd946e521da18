//! The in-process decision path at 1M and 10M contacts: validate the check,
//! resolve (purpose, channel, brand) to its covering set, look the contact up
//! in the index and decide — exactly `authority::answer_check`, which every
//! CanSend runs. Also prints the index's memory per contact. And a batch
//! of 1,000 checks: read from its bytes (`read_batch`), and answered whole
//! on cached keys as the server does once the body is read
//! (`answer_batch`: read, decided, the answer written).
//!
//! `cargo bench --bench decision [-- answer_batch]`

#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;

use consentd::authority::{Addressing, KindOf, RawAddress, answer_check};
use consentd::clock::SystemClock;
use consentd::domain::ids::{ADDRESS_KEY_LEN, address_key};
use consentd::domain::{
    Action, AddressHasher, AddressKind, Catalog, ContactId, HeldState, PhoneRegion,
};
use consentd::index::Index;
use consentd::pb;
use criterion::{Criterion, criterion_group, criterion_main};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn catalog() -> Catalog {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/catalog.toml");
    let spec = consentd::server::read_catalog(std::path::Path::new(path)).unwrap();
    Catalog::empty(None).compile(spec, 0).unwrap().catalog
}

/// A CRM-style id: 12 bytes, stored inline in the index key.
fn contact(i: u64) -> String {
    format!("crm-{i:08}")
}

fn build(cat: &Catalog, n: u64) -> Index {
    let umbrella = cat.consent_idx("marketing").unwrap();
    let before = support::rss_bytes();
    let index = Index::with_capacity(0);
    for i in 0..n {
        index.put(
            &contact(i),
            HeldState {
                occurred_at: 1_700_000_000_000_000_000 + i as i64,
                consent: umbrella,
                action: if i % 10 == 0 {
                    Action::Withdraw
                } else {
                    Action::Grant
                },
                by_person: false,
                version: 1,
            },
        );
    }
    let after = support::rss_bytes();
    if let Ok(r) = std::fs::read_to_string("/proc/self/smaps_rollup")
        && let Some(l) = r.lines().find(|l| l.starts_with("AnonHugePages"))
    {
        eprintln!("{l}");
    }
    eprintln!(
        "index: {n} contacts with one state each: {:.1} bytes/contact (RSS delta)",
        (after.saturating_sub(before)) as f64 / n as f64
    );
    index
}

/// The same catalog where the umbrella lapses after a year: every check
/// then reads the clock and compares the grant's age.
fn expiring(cat: &Catalog) -> Catalog {
    let mut spec = cat.spec().clone();
    for c in &mut spec.consents {
        c.valid_for_days = 365;
    }
    cat.compile(spec, 0).unwrap().catalog
}

/// Memory per address state: `n` address withdrawals (what a provider's
/// STOP or unsubscribe leaves), each under its keyed hash, in an index of
/// their own.
fn address_states(cat: &Catalog, n: u64) {
    let umbrella = cat.consent_idx("marketing").unwrap();
    let before = support::rss_bytes();
    let index = Index::with_capacity(0);
    for j in 0..n {
        let mut hash = [0u8; 32];
        hash[..8].copy_from_slice(&j.to_le_bytes());
        index.put(
            ContactId::of_address(&hash).as_str(),
            HeldState {
                occurred_at: 1_800_000_000_000_000_000 + j as i64,
                consent: umbrella,
                action: Action::Withdraw,
                by_person: true,
                version: 1,
            },
        );
    }
    eprintln!(
        "index: {n} address withdrawals: {:.1} bytes/address state (RSS delta)",
        support::rss_bytes().saturating_sub(before) as f64 / n as f64
    );
    drop(index);
}

/// The List-Unsubscribe URL of an allowed CanSend, on its own: the claim
/// borrowed from the request and sealed into the URL (what CanSend does),
/// against an owned claim minted and then formatted into a URL.
fn unsubscribe_url(c: &mut Criterion) {
    use base64::Engine;
    use consentd::domain::ConsentId;
    use consentd::links::{Claim, ClaimRef, LinkKind, Links};
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
    let links = Links::with_keys(
        "bench",
        &[&format!("k1={secret}")],
        &[],
        "https://consent.acme.example",
    )
    .unwrap();
    let contacts: Vec<String> = (0..1024).map(contact).collect();
    let mut group = c.benchmark_group("unsubscribe_url");
    let mut i = 0usize;
    group.bench_function("sealed into the URL", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(links.url_for(&ClaimRef {
                kind: LinkKind::Unsubscribe,
                contact: &contacts[i],
                consent: "marketing.acme.email",
                purpose: "marketing",
                channel: "email",
                brand: "acme",
                issued_at: 1_790_000_000_123_456_789,
                to: None,
                sequence: 0,
            }))
        })
    });
    group.bench_function("owned claim, minted, formatted", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            let claim = Claim {
                kind: LinkKind::Unsubscribe,
                contact: ContactId::parse("contact_id", &contacts[i]).unwrap(),
                consent: ConsentId::parse("consent_id", "marketing.acme.email").unwrap(),
                purpose: ConsentId::parse("consent_id", "marketing").unwrap(),
                channel: "email".to_owned(),
                brand: "acme".to_owned(),
                issued_at: 1_790_000_000_123_456_789,
                to: None,
                sequence: 0,
            };
            black_box(links.url_of(LinkKind::Unsubscribe, &links.mint(&claim)))
        })
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    let cat = catalog();
    let lapsing = expiring(&cat);
    let clock = SystemClock;
    let clock_now = || consentd::clock::Clock::now(&clock);
    for (label, n) in [("1M", 1_000_000u64), ("10M", 10_000_000)] {
        let index = build(&cat, n);
        // Random probes (a fixed LCG), most of them known contacts.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let probes: Vec<String> = (0..1 << 16)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                contact((x >> 20) % (n + n / 10))
            })
            .collect();
        let mut group = c.benchmark_group(format!("answer_check/{label}"));
        let mut i = 0usize;
        group.bench_function("email/acme", |b| {
            b.iter(|| {
                i = (i + 1) & ((1 << 16) - 1);
                black_box(
                    answer_check(&cat, &index, &clock, &probes[i], "email", "acme", "", None)
                        .unwrap(),
                )
            })
        });
        // A CanSendBatch's lookups: 1,000 random contacts gathered at once
        // (`Index::gather`), the window moving through the probes.
        let mut k = 0usize;
        group.bench_function("gather 1000", |b| {
            b.iter(|| {
                k = (k + 1000) % ((1 << 16) - 1000);
                black_box(index.gather(probes[k..k + 1000].iter().map(String::as_str)))
            })
        });
        if n == 1_000_000 {
            group.bench_function("email/acme+expiry", |b| {
                b.iter(|| {
                    i = (i + 1) & ((1 << 16) - 1);
                    black_box(
                        answer_check(
                            &lapsing, &index, &clock, &probes[i], "email", "acme", "", None,
                        )
                        .unwrap(),
                    )
                })
            });
            // The same checks naming the address (`to`): read, normalised,
            // hashed, and its own state looked up (1 in 100 withdrawn).
            let addressing = Addressing::new(AddressHasher::new(&[9; 32]), PhoneRegion::NONE);
            let to: Vec<String> = probes.iter().map(|p| format!("{p}@Example.com")).collect();
            let umbrella = cat.consent_idx("marketing").unwrap();
            for (n, address) in to.iter().enumerate().step_by(100) {
                let raw = RawAddress {
                    kind: KindOf::Unspecified,
                    value: address,
                };
                let (_, hash) = addressing.read_to_hash(&cat, "email", raw).unwrap();
                index.put(
                    ContactId::of_address(&hash).as_str(),
                    HeldState {
                        occurred_at: 1_800_000_000_000_000_000 + n as i64,
                        consent: umbrella,
                        action: Action::Withdraw,
                        by_person: true,
                        version: 1,
                    },
                );
            }
            group.bench_function("email/acme+to", |b| {
                b.iter(|| {
                    i = (i + 1) & ((1 << 16) - 1);
                    let raw = RawAddress {
                        kind: KindOf::Unspecified,
                        value: &to[i],
                    };
                    // As the server does: read once, the key written in place.
                    let (_, hash) = addressing.read_to_hash(&cat, "email", raw).unwrap();
                    let mut buf = [0u8; ADDRESS_KEY_LEN];
                    let key = address_key(&hash, &mut buf);
                    black_box(
                        answer_check(
                            &cat,
                            &index,
                            &clock,
                            &probes[i],
                            "email",
                            "acme",
                            "",
                            Some(key),
                        )
                        .unwrap(),
                    )
                })
            });
            // Every contact given one e-mail address (SetAddresses): a check
            // without `to` now asks it too (DESIGN.md §9, fail closed).
            let before = support::rss_bytes();
            for j in 0..n {
                let mut hash = [0u8; 32];
                hash[..8].copy_from_slice(&j.to_le_bytes());
                index.set_address(&contact(j), (AddressKind::Email, hash), true);
            }
            eprintln!(
                "index: {n} contacts' addresses (one each): {:.1} bytes/address (RSS delta)",
                support::rss_bytes().saturating_sub(before) as f64 / n as f64
            );
            group.bench_function("email/acme+addresses", |b| {
                b.iter(|| {
                    i = (i + 1) & ((1 << 16) - 1);
                    black_box(
                        answer_check(&cat, &index, &clock, &probes[i], "email", "acme", "", None)
                            .unwrap(),
                    )
                })
            });
            address_states(&cat, n);
            let cell = cat.cell("", "email", "acme").unwrap();
            let cover = cat.covering(cell);
            group.bench_function("parts/cell", |b| {
                b.iter(|| {
                    black_box(
                        cat.cell(black_box(""), black_box("email"), black_box("acme"))
                            .unwrap(),
                    )
                })
            });
            group.bench_function("parts/index", |b| {
                b.iter(|| {
                    i = (i + 1) & ((1 << 16) - 1);
                    black_box(index.verdict(
                        consentd::index::Held::Lookup,
                        &probes[i],
                        cover,
                        cat.terms(),
                        clock_now,
                    ))
                })
            });
        }
        group.finish();
        drop(index);
    }
}

/// Reading a CanSendBatch of 1,000 checks from its bytes, as the server
/// does before deciding any (in place: the strings borrowed, UTF-8 checked).
fn read_batch(c: &mut Criterion) {
    use prost::Message;
    let request = pb::CanSendBatchRequest {
        checks: (0..1000)
            .map(|i| pb::CanSendRequest {
                contact_id: contact(i * 7919),
                channel: "email".into(),
                brand: "acme".into(),
                purpose: "marketing".into(),
                ..Default::default()
            })
            .collect(),
        min_sequence: 0,
    }
    .encode_to_vec();
    c.bench_function("read_batch/1000 checks", |b| {
        b.iter(|| black_box(consentd::grpc::read_batch(black_box(&request))))
    });
}

/// A whole CanSendBatch of 1,000 checks on cached keys as the server
/// answers it once the body is read: read in place, decided over the
/// index, the answer written (`consentd::grpc::answer_batch`); what the
/// load bench's cached-key batches cost the server beside HTTP/2 and TCP.
fn answer_batch(c: &mut Criterion) {
    use prost::Message;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let store = consentd::store::RedbStore::open(dir.path()).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/catalog.toml");
    let spec = consentd::server::read_catalog(std::path::Path::new(path)).unwrap();
    support::write_contacts(&store, &spec, 1000).unwrap();
    let links = consentd::links::Links::open(dir.path(), &[], "http://127.0.0.1:8080").unwrap();
    let store: Arc<dyn consentd::store::Store> = Arc::new(store);
    let (authority, _) =
        consentd::authority::Authority::open(store, links, Default::default()).unwrap();
    // As the load bench's lean client asks: 1,000 of the cached contacts.
    let request = pb::CanSendBatchRequest {
        checks: (0..1000u64)
            .map(|i| pb::CanSendRequest {
                contact_id: support::crm_contact(1 + (i * 7919) % 1000),
                channel: "email".into(),
                brand: "acme".into(),
                ..Default::default()
            })
            .collect(),
        min_sequence: 0,
    }
    .encode_to_vec();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert!(
        rt.block_on(consentd::grpc::answer_batch(&authority, &request))
            .unwrap()
            > 1000
    );
    c.bench_function("answer_batch/1000 cached checks", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(consentd::grpc::answer_batch(
                    &authority,
                    black_box(&request),
                ))
                .unwrap(),
            )
        })
    });
    rt.block_on(authority.close()).unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = unsubscribe_url, read_batch, answer_batch, bench
}
criterion_main!(benches);

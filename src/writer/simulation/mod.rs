//! The simulation test (DESIGN.md §5, "one view per commit"; the shape of
//! FoundationDB's simulator and TigerBeetle's VOPR): several nodes, each a
//! real writer ([`Committer`]) with its own index, catalog and clock, share
//! one memory store in one process. A seeded scheduler interleaves grants
//! and withdrawals of every source, erasures, catalog applies, pending
//! grants and confirmations, pages of the feed delivered late or not at
//! all, a store out of reach, commits in doubt and node restarts, and after
//! every step checks the invariants (`invariants.rs`). Everything follows
//! from the seed, so a failure is replayed exactly:
//!
//! ```text
//! CONSENTD_SIM_SEED=<seed> cargo test --lib writer::simulation -- --nocapture
//! ```
//!
//! The normal run tries 10,000 schedules; `a_million_schedules` (ignored)
//! takes `CONSENTD_SIM_SCHEDULES` of them on every core.

mod invariants;
mod races;
mod wire;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{oneshot, watch};

use self::wire::Wire;
use super::committer::{Committer, Reports};
use super::{Options, rebuild};
use crate::clock::{Clock, ManualClock};
use crate::domain::{
    Action, Catalog, CatalogSpec, Change, ChangeOutcome, ConsentId, ConsentSpec, ContactId,
    Evidence, Source,
};
use crate::error::ChangeError;
use crate::index::Index;
use crate::metrics::Metrics;
use crate::store::{Backend, Cursor, MemoryStore, SharedStore};

const S: i64 = 1_000_000_000;
/// Nodes per schedule.
const NODES: usize = 3;
/// Steps per schedule.
const STEPS: usize = 40;
/// Schedules in the normal test run.
const SCHEDULES: u64 = 10_000;
/// Contacts and consents a schedule plays with: few, so that they meet.
const CONTACTS: [&str; 4] = ["anna", "bob", "carl", "dora"];
const CONSENTS: [&str; 4] = ["marketing", "marketing.acme", "marketing.zenith", "news"];
/// How far each node's clock is off (the third runs behind).
const SKEW: [i64; NODES] = [0, 2 * S, -40 * S];
/// Sources of every kind: people, systems, the pages.
const SOURCES: [Source; 8] = [
    Source::Unspecified,
    Source::Form,
    Source::Import,
    Source::Operator,
    Source::UnsubscribeLink,
    Source::PreferenceCenter,
    Source::Api,
    Source::ConfirmationLink,
];

/// A seeded generator (SplitMix64): a schedule is its seed.
pub(super) struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with `percent` % probability.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
}

/// One node: a writer, its index and catalog, its clock, its wire.
pub(super) struct Node {
    pub(super) committer: Committer,
    pub(super) index: Arc<Index>,
    pub(super) catalog: Arc<ArcSwap<Catalog>>,
    wire: Arc<Wire>,
    clock: Arc<ManualClock>,
    /// The feed's own catalog cursor.
    feed_version: u64,
    _watches: (watch::Receiver<Option<String>>, watch::Receiver<bool>),
}

impl Node {
    /// Starts (or restarts) a node over the store, as the server does.
    fn boot(wire: Arc<Wire>, clock: Arc<ManualClock>) -> Node {
        let options = Options {
            clock: clock.clone(),
            confirmation_ttl: Duration::from_secs(600),
            confirmation_resend: Duration::from_secs(60),
            erasure_purge_after: Duration::ZERO,
            ..Default::default()
        };
        let rebuilt = rebuild(&*wire, &options).expect("a node boots while the store answers");
        let catalog = Arc::new(ArcSwap::from_pointee(rebuilt.catalog));
        let (failure, failed) = watch::channel(None);
        let (available, up) = watch::channel(true);
        let feed_version = rebuilt.start.catalog_version;
        let shared: Arc<dyn SharedStore> = wire.clone();
        let committer = Committer::new(
            Backend::Shared(shared),
            rebuilt.index.clone(),
            catalog.clone(),
            rebuilt.start,
            Arc::new(Metrics::default()),
            Reports {
                failure,
                available,
                lag: Arc::default(),
            },
        );
        Node {
            committer,
            index: rebuilt.index,
            catalog,
            wire,
            clock,
            feed_version,
            _watches: (failed, up),
        }
    }

    /// Every change up to this sequence is applied here.
    pub(super) fn applied(&self) -> u64 {
        self.committer.applied.get()
    }

    /// One page of the feed, as the feed thread would read it.
    fn deliver(&mut self, limit: usize) {
        let cursor = Cursor {
            sequence: self.applied(),
            catalog_version: self.feed_version,
        };
        if let Ok(changes) = self.wire.changes_after(cursor, limit) {
            if let Some(c) = &changes.catalog {
                self.feed_version = c.version;
            }
            self.committer.apply_changes(changes);
        }
    }

    /// The writer probes the store now (its backoff skipped).
    fn probe(&mut self) {
        if let Some(down) = &mut self.committer.down {
            down.next_probe = Instant::now();
        }
        self.committer.probe_if_due();
    }
}

/// The catalog, with wording `variant` of the umbrella's text.
fn catalog(variant: u64) -> CatalogSpec {
    let consent = |id: &str, parent: Option<&str>, brands: &[&str]| ConsentSpec {
        id: id.into(),
        title: id.into(),
        text: format!("I agree to {id}"),
        parent: parent.map(str::to_owned),
        brands: brands.iter().map(|b| b.to_string()).collect(),
        ..Default::default()
    };
    let mut umbrella = consent("marketing", None, &[]);
    umbrella.text = format!("News from all our brands, as worded in variant {variant}");
    let mut news = consent("news", None, &[]);
    news.double_opt_in = true;
    CatalogSpec {
        channels: vec!["email".into(), "sms".into()],
        brands: vec!["acme".into(), "zenith".into()],
        consents: vec![
            umbrella,
            consent("marketing.acme", Some("marketing"), &["acme"]),
            consent("marketing.zenith", Some("marketing"), &["zenith"]),
            news,
        ],
        ..Default::default()
    }
}

/// An acknowledged answer: what the store must keep.
pub(super) struct Acked {
    pub(super) sequence: u64,
    pub(super) contact: String,
    pub(super) applied: bool,
}

/// One schedule's world.
pub(super) struct World {
    pub(super) store: Arc<MemoryStore>,
    pub(super) nodes: Vec<Node>,
    /// Wall-clock time, before each node's skew.
    now: i64,
    /// Answers that said "recorded".
    pub(super) acked: Vec<Acked>,
    /// Erasures that answered: (contact, erased_at).
    pub(super) erased: Vec<(String, i64)>,
    /// What happened, for the report of a failure.
    pub(super) trace: Vec<String>,
}

impl World {
    fn new() -> World {
        let store = Arc::new(MemoryStore::new().expect("a memory store"));
        let now = 1_000_000 * S;
        let nodes = (0..NODES)
            .map(|i| Node::boot(Wire::new(store.clone()), ManualClock::new(now + SKEW[i])))
            .collect();
        let mut world = World {
            store,
            nodes,
            now,
            acked: Vec::new(),
            erased: Vec::new(),
            trace: Vec::new(),
        };
        let _ = world.nodes[0].committer.apply_catalog(catalog(0));
        world
    }

    /// One random step.
    fn step(&mut self, rng: &mut Rng) {
        let n = rng.below(NODES as u64) as usize;
        match rng.below(100) {
            0..=44 => {
                let changes: Vec<Change> =
                    (0..1 + rng.below(3)).map(|_| self.change(rng, n)).collect();
                self.trace.push(format!("node {n}: {}", describe(&changes)));
                self.commit(n, changes);
            }
            45..=51 => {
                let contact = rng.pick(&CONTACTS);
                let erased = self.nodes[n].committer.erase(
                    ContactId::parse("contact", contact).expect("valid"),
                    "asked".into(),
                );
                self.trace
                    .push(format!("node {n}: erase {contact} -> {erased:?}"));
                if let Ok(at) = erased {
                    self.erased.push((contact.to_owned(), at));
                }
            }
            52..=55 => {
                let variant = rng.below(3);
                let applied = self.nodes[n].committer.apply_catalog(catalog(variant));
                self.trace.push(format!(
                    "node {n}: catalog variant {variant} -> {}",
                    applied.map_or_else(
                        |e| e.to_string(),
                        |c| format!("version {}", c.spec().consents[0].version)
                    )
                ));
            }
            56..=79 => {
                let limit = 1 + rng.below(6) as usize;
                self.nodes[n].deliver(limit);
                self.trace.push(format!(
                    "node {n}: feed page of {limit} (applied {})",
                    self.nodes[n].applied()
                ));
            }
            80..=83 => {
                self.nodes[n].wire.cut.store(true, Ordering::SeqCst);
                self.trace.push(format!("node {n}: store out of reach"));
            }
            84..=88 => {
                self.nodes[n].wire.cut.store(false, Ordering::SeqCst);
                self.nodes[n].probe();
                self.trace.push(format!("node {n}: store back, probed"));
            }
            89..=91 => {
                self.nodes[n].wire.lose_answer.store(true, Ordering::SeqCst);
                self.trace
                    .push(format!("node {n}: its next commit's answer will be lost"));
            }
            92..=94 => {
                let (wire, clock) = (self.nodes[n].wire.clone(), self.nodes[n].clock.clone());
                wire.cut.store(false, Ordering::SeqCst);
                wire.lose_answer.store(false, Ordering::SeqCst);
                self.nodes[n] = Node::boot(wire, clock);
                self.trace.push(format!("node {n}: restarted"));
            }
            _ => {
                let by = (1 + rng.below(20) as i64) * S / 2;
                self.now += by;
                for node in &self.nodes {
                    node.clock.step(by);
                }
                self.trace.push(format!("time +{} ms", by / 1_000_000));
            }
        }
    }

    /// A random change, as a caller of node `n` would send it.
    fn change(&self, rng: &mut Rng, n: usize) -> Change {
        let now = self.nodes[n].clock.now();
        let action = if rng.chance(55) {
            Action::Grant
        } else {
            Action::Withdraw
        };
        let source = rng.pick(&SOURCES);
        // A click on one of the pages, through a link minted earlier (maybe
        // before an erasure): recorded at the click, with the link's issue
        // time and the page's actor. A page source without it is a caller
        // merely naming that source.
        let page = match source {
            Source::UnsubscribeLink if action == Action::Withdraw => {
                Some(crate::authority::PAGE_ACTOR)
            }
            Source::ConfirmationLink => Some(crate::authority::CONFIRM_ACTOR),
            Source::PreferenceCenter => Some(crate::authority::PREFERENCES_ACTOR),
            _ => None,
        };
        let click = page.is_some() && rng.chance(60);
        let issued_at = click.then(|| now - rng.below(120) as i64 * S);
        Change {
            contact: ContactId::parse("contact", rng.pick(&CONTACTS)).expect("valid"),
            consent: ConsentId::parse("consent", rng.pick(&CONSENTS)).expect("valid"),
            action,
            occurred_at: match rng.below(3) {
                _ if click => None,
                0 => None,
                1 => Some(now - rng.below(60) as i64 * S),
                _ => Some(now - rng.below(3_000) as i64 * S),
            },
            source,
            evidence: Evidence::new(),
            idempotency_key: rng.chance(20).then(|| format!("key-{}", rng.below(6))),
            issued_at,
            actor: match page {
                Some(actor) if click => actor.to_owned(),
                _ => format!("node-{n}"),
            },
            confirmed: !click && rng.chance(10),
            resend: false,
            bulk: !click && rng.chance(10),
            by_page: click,
            addresses: Vec::new(),
        }
    }

    /// Commits changes as one group on node `n`; keeps what was answered.
    fn commit(&mut self, n: usize, changes: Vec<Change>) {
        let mut queued = Vec::new();
        let mut answers = Vec::new();
        for change in changes {
            let (tx, rx) = oneshot::channel::<Result<ChangeOutcome, ChangeError>>();
            answers.push((change.contact.to_string(), rx));
            queued.push((change, tx));
        }
        self.nodes[n].committer.commit_changes(queued);
        for (contact, mut rx) in answers {
            let answer = rx.try_recv().expect("answered by the end of the group");
            self.trace.push(format!("   -> {answer:?}"));
            if let Ok(outcome) = answer
                && outcome.sequence > 0
            {
                self.acked.push(Acked {
                    sequence: outcome.sequence,
                    contact,
                    applied: outcome.applied,
                });
            }
        }
    }

    /// Brings the store back to every node and feeds each until it has
    /// applied everything: after this, every node must agree.
    fn settle(&mut self) {
        for node in &mut self.nodes {
            node.wire.cut.store(false, Ordering::SeqCst);
            node.wire.lose_answer.store(false, Ordering::SeqCst);
            node.probe();
            for _ in 0..1_000 {
                let before = node.applied();
                node.deliver(64);
                if node.applied() == before {
                    break;
                }
            }
        }
        self.trace.push("settled: every node caught up".into());
    }
}

fn describe(changes: &[Change]) -> String {
    changes
        .iter()
        .map(|c| {
            format!(
                "{:?} {}/{} {:?}{}{} at {:?}",
                c.action,
                c.contact,
                c.consent,
                c.source,
                if c.confirmed { " confirmed" } else { "" },
                c.idempotency_key
                    .as_deref()
                    .map_or(String::new(), |k| format!(" key {k}")),
                c.occurred_at.map(|t| t / S),
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs schedule `seed`; `Err` says what broke, after which step.
pub(super) fn run(seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed);
    let mut world = World::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for step in 0..STEPS {
            world.step(&mut rng);
            invariants::check(&world).map_err(|e| format!("after step {step}: {e}"))?;
        }
        world.settle();
        invariants::check(&world).map_err(|e| format!("after settling: {e}"))?;
        invariants::converged(&world).map_err(|e| format!("after settling: {e}"))
    }));
    let failure = match outcome {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => e,
        Err(panic) => format!(
            "panicked: {}",
            panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default()
        ),
    };
    Err(format!(
        "schedule {seed} failed {failure}\nreplay: CONSENTD_SIM_SEED={seed} cargo test --lib writer::simulation -- --nocapture\ntrace:\n  {}",
        world.trace.join("\n  ")
    ))
}

/// Runs `count` schedules from `first`; panics with the first failure.
fn run_many(first: u64, count: u64) {
    for seed in first..first + count {
        if let Err(report) = run(seed) {
            panic!("{report}");
        }
    }
}

#[test]
fn ten_thousand_schedules_keep_every_invariant() {
    if let Some(seed) = std::env::var("CONSENTD_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        match run(seed) {
            Ok(()) => println!("schedule {seed}: every invariant held"),
            Err(report) => panic!("{report}"),
        }
        return;
    }
    run_many(0, SCHEDULES);
}

/// The long run: `CONSENTD_SIM_SCHEDULES` (default 1,000,000) schedules on
/// every core, from `CONSENTD_SIM_FIRST` (default 1,000,000, past the
/// normal run's).
#[test]
#[ignore = "long: cargo test --release --lib a_million_schedules -- --ignored"]
fn a_million_schedules() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (first, count) = (
        env("CONSENTD_SIM_FIRST", 1_000_000),
        env("CONSENTD_SIM_SCHEDULES", 1_000_000),
    );
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                let mut seed = first + t;
                while seed < first + count {
                    if let Err(report) = run(seed) {
                        panic!("{report}");
                    }
                    seed += threads;
                }
            });
        }
    });
    println!(
        "{count} schedules kept every invariant in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

//! The canonical form of every record the store commits, its leaf and its
//! link in the chain (DESIGN.md §11):
//!
//! ```text
//! leaf  = SHA-256(salt ‖ canonical record)          salt: 16 random bytes
//! chain = SHA-256("consentd/v1" ‖ previous chain ‖ u64be(sequence) ‖ leaf)
//! ```
//!
//! The first record's previous chain is 32 zero bytes. The canonical form
//! is an encoding of its own, so that anyone can rebuild it from what the
//! store (or an export) holds: a version byte (1), a kind byte, then the
//! fields in a fixed order; integers big-endian, a string as u32be length
//! and its bytes, an optional string as a byte 0 (none) or 1 and the
//! string, a list as u32be count and its items.
//!
//! - **event** (kind 1): contact, consent, action (u8: 1 grant, 2
//!   withdraw), occurred_at (i64), recorded_at (i64), source (u8), the
//!   evidence as a list of (key, value) in key order, version (u32), the
//!   digest of the wording of (consent, version) (32 bytes, zeros when
//!   there is none), the idempotency key (optional string), actor, and
//!   one byte of flags (1 applied, 2 pending, 4 confirmed, 8 confirmation
//!   link minted);
//! - **erasure** (kind 2): the contact's keyed hash (32 bytes), erased_at
//!   (i64), the reason, and the list of the sequences it erased (u64,
//!   ascending): so a record missing from the store is accounted for by
//!   an erasure, and one deleted by hand is not;
//! - **catalog apply** (kind 3): in_force_from (i64), then the catalog as
//!   JSON (the serde form of `CatalogSpec`, fields in declaration order,
//!   maps sorted).
//!
//! A wording's digest is `SHA-256("consentd/wording/v1" ‖ consent ‖
//! version ‖ title ‖ text ‖ parent ‖ channels ‖ brands ‖ in_force_from)` in
//! the same encoding: an event names the exact words it was given under,
//! and a wording edited by hand breaks the first event that used it.

use sha2::{Digest, Sha256};

use crate::domain::{CatalogSpec, EventRecord, UnixNanos, Wording};

/// The domain prefix of every chain link.
pub const CHAIN_DOMAIN: &[u8] = b"consentd/v1";
const WORDING_DOMAIN: &[u8] = b"consentd/wording/v1";
/// The version byte every canonical record starts with.
pub const CANONICAL_VERSION: u8 = 1;
/// The chain before the first record.
pub const GENESIS: [u8; 32] = [0; 32];
/// The salt of records committed before the chain existed (a store
/// migrated to it): they had none.
pub const NO_SALT: [u8; 16] = [0; 16];

/// What kind of record a link covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A Grant, a Withdraw, an address change: one event.
    Event = 1,
    /// An erasure: the contact's records went, its tombstone stays.
    Erasure = 2,
    /// A catalog applied.
    Catalog = 3,
}

impl Kind {
    /// The kind stored as `v`.
    pub fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Event),
            2 => Some(Kind::Erasure),
            3 => Some(Kind::Catalog),
            _ => None,
        }
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Event => "event",
            Kind::Erasure => "erasure",
            Kind::Catalog => "catalog apply",
        }
    }
}

/// One record's place in the chain, as a store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The record's sequence.
    pub sequence: u64,
    /// What it covers.
    pub kind: Kind,
    /// The salt of its leaf; `None` once an erasure deleted the record.
    pub salt: Option<[u8; 16]>,
    /// SHA-256(salt ‖ canonical record).
    pub leaf: [u8; 32],
    /// The chain through this record.
    pub chain: [u8; 32],
    /// What the link itself keeps of its record: an erasure's whole
    /// canonical form (its tombstone may be replaced by a later erasure of
    /// the same contact), a catalog's in_force_from (8 bytes, to find it);
    /// empty for an event.
    pub body: Vec<u8>,
}

/// The canonical bytes of records, built into one buffer.
#[derive(Debug, Default)]
pub struct Canonical(Vec<u8>);

impl Canonical {
    fn start(&mut self, kind: Kind) {
        self.0.clear();
        self.0.push(CANONICAL_VERSION);
        self.0.push(kind as u8);
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
    fn count(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// The bytes built last.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// An event, given the digest of its wording ([`wording_digest`];
    /// zeros when there is none).
    pub fn event(&mut self, e: &EventRecord, wording: &[u8; 32]) -> &[u8] {
        self.start(Kind::Event);
        self.str(e.contact.as_str());
        self.str(e.consent.as_str());
        self.u8(e.action as u8);
        self.i64(e.occurred_at);
        self.i64(e.recorded_at);
        self.u8(e.source as u8);
        self.count(e.evidence.len());
        for (k, v) in &e.evidence {
            self.str(k);
            self.str(v);
        }
        self.u32(e.version);
        self.0.extend_from_slice(wording);
        self.opt_str(e.idempotency_key.as_deref());
        self.str(&e.actor);
        self.u8(u8::from(e.applied)
            | u8::from(e.pending) << 1
            | u8::from(e.confirmed) << 2
            | u8::from(e.confirmation_link) << 3);
        &self.0
    }

    /// An erasure: the contact's keyed hash, when, why, and the sequences
    /// of the records it deleted (ascending).
    pub fn erasure(
        &mut self,
        hash: &[u8; 32],
        erased_at: UnixNanos,
        reason: &str,
        erased: &[u64],
    ) -> &[u8] {
        self.start(Kind::Erasure);
        self.0.extend_from_slice(hash);
        self.i64(erased_at);
        self.str(reason);
        self.count(erased.len());
        for s in erased {
            self.u64(*s);
        }
        &self.0
    }

    /// A catalog applied, in force from `at`.
    pub fn catalog(&mut self, at: UnixNanos, spec: &CatalogSpec) -> &[u8] {
        self.start(Kind::Catalog);
        self.i64(at);
        // Serialising a plain struct of strings, vectors and sorted maps
        // cannot fail.
        let json = serde_json::to_vec(spec).unwrap_or_default();
        self.bytes(&json);
        &self.0
    }
}

/// The digest of one wording, as events name it.
pub fn wording_digest(w: &Wording) -> [u8; 32] {
    let mut c = Canonical::default();
    c.0.extend_from_slice(WORDING_DOMAIN);
    c.str(w.consent.as_str());
    c.u32(w.version);
    c.str(&w.title);
    c.str(&w.text);
    c.opt_str(w.parent.as_deref());
    c.count(w.channels.len());
    for ch in &w.channels {
        c.str(ch);
    }
    c.count(w.brands.len());
    for b in &w.brands {
        c.str(b);
    }
    c.i64(w.in_force_from);
    Sha256::digest(&c.0).into()
}

/// SHA-256(salt ‖ canonical).
pub fn leaf(salt: &[u8; 16], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(canonical);
    h.finalize().into()
}

/// The chain through a record, from the chain before it.
pub fn link(previous: &[u8; 32], sequence: u64, leaf: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(CHAIN_DOMAIN);
    h.update(previous);
    h.update(sequence.to_be_bytes());
    h.update(leaf);
    h.finalize().into()
}

/// Fresh salts, one per record (one call to the OS for all of them).
pub fn salts(n: usize) -> Result<Vec<[u8; 16]>, getrandom::Error> {
    let mut raw = vec![0u8; n * 16];
    getrandom::fill(&mut raw)?;
    Ok(raw
        .chunks_exact(16)
        .map(|c| c.try_into().expect("16 bytes"))
        .collect())
}

/// Links records into the chain, one after another, from a store's head.
#[derive(Debug)]
pub struct Linker {
    head: [u8; 32],
    last: Option<(u64, [u8; 32])>,
    canonical: Canonical,
    links: Vec<Link>,
}

impl Linker {
    /// Continues the chain from `head` (its value through the last record).
    pub fn from(head: [u8; 32]) -> Linker {
        Linker {
            head,
            last: None,
            canonical: Canonical::default(),
            links: Vec::new(),
        }
    }

    /// The chain through the last record linked.
    pub fn head(&self) -> [u8; 32] {
        self.head
    }

    fn push(&mut self, sequence: u64, kind: Kind, salt: [u8; 16], body: Vec<u8>) {
        let leaf = leaf(&salt, self.canonical.as_bytes());
        self.head = link(&self.head, sequence, &leaf);
        self.last = Some((sequence, self.head));
        self.links.push(Link {
            sequence,
            kind,
            salt: Some(salt),
            leaf,
            chain: self.head,
            body,
        });
    }

    /// Links an event.
    pub fn event(&mut self, e: &EventRecord, wording: &[u8; 32], salt: [u8; 16]) {
        self.canonical.event(e, wording);
        self.push(e.sequence, Kind::Event, salt, Vec::new());
    }

    /// Links a catalog apply.
    pub fn catalog(&mut self, sequence: u64, at: UnixNanos, spec: &CatalogSpec, salt: [u8; 16]) {
        self.canonical.catalog(at, spec);
        self.push(sequence, Kind::Catalog, salt, at.to_be_bytes().to_vec());
    }

    /// Links an erasure (its canonical form is kept in the link's body).
    pub fn erasure(
        &mut self,
        sequence: u64,
        hash: &[u8; 32],
        erased_at: UnixNanos,
        reason: &str,
        erased: &[u64],
        salt: [u8; 16],
    ) {
        let body = self
            .canonical
            .erasure(hash, erased_at, reason, erased)
            .to_vec();
        self.push(sequence, Kind::Erasure, salt, body);
    }

    /// The links made since the last take, in order (the chain goes on).
    pub fn take(&mut self) -> Vec<Link> {
        std::mem::take(&mut self.links)
    }

    /// The sequence and chain of the last record linked, if any.
    pub fn last(&self) -> Option<(u64, [u8; 32])> {
        self.last
    }

    /// The links made, in order.
    pub fn finish(self) -> Vec<Link> {
        self.links
    }
}

/// Links a write batch's records (its events and its catalog, in sequence
/// order) onto `head`, with fresh salts; `wording` gives the digest of a
/// (consent, version ≥ 1) as the store holds it. Returns the links and the new
/// head.
pub fn link_batch(
    head: [u8; 32],
    batch: &crate::store::WriteBatch,
    wording: &mut dyn FnMut(&str, u32) -> [u8; 32],
) -> Result<(Vec<Link>, [u8; 32]), getrandom::Error> {
    let catalog = batch
        .catalog
        .as_ref()
        .filter(|_| batch.catalog_sequence > 0);
    let n = batch.events.len() + usize::from(catalog.is_some());
    let mut salts = salts(n)?.into_iter();
    let mut linker = Linker::from(head);
    let mut catalog_done = catalog.is_none();
    for e in &batch.events {
        if !catalog_done && batch.catalog_sequence < e.sequence {
            let spec = catalog.expect("not done");
            linker.catalog(
                batch.catalog_sequence,
                batch.catalog_at,
                spec,
                salts.next().expect("n"),
            );
            catalog_done = true;
        }
        // Version 0: a mark (an address, a bounce), never a wording. Not
        // looked up: each address is an id of its own.
        let digest = match e.version {
            0 => [0; 32],
            v => wording(e.consent.as_str(), v),
        };
        linker.event(e, &digest, salts.next().expect("n"));
    }
    if !catalog_done {
        let spec = catalog.expect("not done");
        linker.catalog(
            batch.catalog_sequence,
            batch.catalog_at,
            spec,
            salts.next().expect("n"),
        );
    }
    let head = linker.head();
    Ok((linker.finish(), head))
}

/// A record committed before the chain existed, other than an event, as a
/// store's one-time linking finds it (with no salt, and an erasure with no
/// list: its records were gone before).
#[derive(Debug)]
pub enum Prior {
    /// An erasure: the keyed hash, erased_at, the reason.
    Erasure([u8; 32], UnixNanos, String),
    /// A catalog apply: in_force_from, the catalog.
    Catalog(UnixNanos, Box<CatalogSpec>),
}

impl Prior {
    /// Links it under `sequence`, unsalted.
    pub fn link(self, linker: &mut Linker, sequence: u64) {
        match self {
            Prior::Erasure(hash, at, reason) => {
                linker.erasure(sequence, &hash, at, &reason, &[], NO_SALT)
            }
            Prior::Catalog(at, spec) => linker.catalog(sequence, at, &spec, NO_SALT),
        }
    }
}

/// A link's record as the store holds it now, for verification.
#[derive(Debug, Clone)]
pub enum Held {
    /// The event under the link's sequence.
    Event(Box<EventRecord>),
    /// The catalog kept for the link, with the time it is kept under.
    Catalog(UnixNanos, Box<CatalogSpec>),
    /// An erasure: the record is the link's own body.
    Erasure,
    /// Nothing is held under the sequence.
    Missing,
    /// Something is held that does not decode (what is wrong with it).
    Unreadable(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Action, ConsentId, ContactId, Source};

    fn event() -> EventRecord {
        EventRecord {
            contact: ContactId::parse("c", "anna").unwrap(),
            consent: ConsentId::parse("c", "marketing").unwrap(),
            action: Action::Grant,
            occurred_at: 1,
            recorded_at: 2,
            source: Source::Form,
            evidence: [("ip".to_string(), "10.0.0.1".to_string())].into(),
            version: 1,
            sequence: 7,
            idempotency_key: None,
            applied: true,
            actor: "crm".into(),
            pending: false,
            confirmed: false,
            confirmation_link: false,
            chain: None,
        }
    }

    #[test]
    fn every_field_of_an_event_changes_its_leaf() {
        let base = event();
        let mut c = Canonical::default();
        let leaf_of = |e: &EventRecord, w: &[u8; 32]| {
            let mut c = Canonical::default();
            leaf(&NO_SALT, c.event(e, w))
        };
        let original = leaf_of(&base, &[0; 32]);
        type Edit = Box<dyn Fn(&mut EventRecord)>;
        let changes: Vec<Edit> = vec![
            Box::new(|e| e.contact = ContactId::parse("c", "annb").unwrap()),
            Box::new(|e| e.consent = ConsentId::parse("c", "marketinh").unwrap()),
            Box::new(|e| e.action = Action::Withdraw),
            Box::new(|e| e.occurred_at += 1),
            Box::new(|e| e.recorded_at += 1),
            Box::new(|e| e.source = Source::Api),
            Box::new(|e| {
                e.evidence.insert("ip".into(), "10.0.0.2".into());
            }),
            Box::new(|e| e.version = 2),
            Box::new(|e| e.idempotency_key = Some(String::new())),
            Box::new(|e| e.actor = "crn".into()),
            Box::new(|e| e.applied = false),
            Box::new(|e| e.pending = true),
            Box::new(|e| e.confirmed = true),
            Box::new(|e| e.confirmation_link = true),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut e = base.clone();
            change(&mut e);
            assert_ne!(leaf_of(&e, &[0; 32]), original, "change {i}");
        }
        assert_ne!(leaf_of(&base, &[1; 32]), original, "the wording");
        // Length prefixes: moving a byte between fields changes the record.
        let mut a = base.clone();
        a.evidence = [("ab".to_string(), "c".to_string())].into();
        let mut b = base.clone();
        b.evidence = [("a".to_string(), "bc".to_string())].into();
        assert_ne!(
            c.event(&a, &[0; 32]).to_vec(),
            c.event(&b, &[0; 32]).to_vec()
        );
    }

    #[test]
    fn a_chain_is_its_links_in_order() {
        let e = event();
        let mut l = Linker::from(GENESIS);
        l.event(&e, &[0; 32], NO_SALT);
        l.erasure(8, &[3; 32], 9, "ticket", &[7], [1; 16]);
        let links = l.finish();
        let mut c = Canonical::default();
        let first = link(&GENESIS, 7, &leaf(&NO_SALT, c.event(&e, &[0; 32])));
        assert_eq!(links[0].chain, first);
        let second = link(&first, 8, &leaf(&[1; 16], &links[1].body));
        assert_eq!(links[1].chain, second);
        assert_eq!(links[1].body[..2], [CANONICAL_VERSION, Kind::Erasure as u8]);
    }
}

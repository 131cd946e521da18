//! Addresses through the authority (DESIGN.md §9): reading one from a
//! request, naming it to the stores, CanSend's `to`, and GetAddress.
//!
//! An address's own records are kept under [`ContactId::of_address`], the
//! keyed hash of its normalised value, so address events go through the same
//! writer, rules, stores and feed as a contact's; what differs is in the
//! ruling (an address GRANT is never pending for double opt-in: it is not
//! consent) and in CanSend, which reads an address's state only to block.

use std::time::Instant;

use crate::domain::{
    Action, Address, AddressHasher, AddressKind, Catalog, Change, ChangeOutcome, ContactId,
    EventRecord, Evidence, FieldError, MAX_ADDRESSES_PER_CONTACT, Mark, PhoneRegion, Source,
    StateRecord, UNDELIVERABLE, UnixNanos,
};

use super::{Authority, ChangeError, ReadError};

/// How addresses are read and named: the hasher under the store's key,
/// and the region of national phone numbers.
#[derive(Clone)]
pub struct Addressing {
    hasher: AddressHasher,
    region: PhoneRegion,
}

/// The kind an address in a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindOf {
    /// Left unspecified: the channel's, where there is one.
    Unspecified,
    /// Named.
    Kind(AddressKind),
    /// A number the contract does not define.
    Unknown(i32),
}

/// An address as a request carries it, not yet read.
#[derive(Debug, Clone, Copy)]
pub struct RawAddress<'a> {
    /// Its kind.
    pub kind: KindOf,
    /// Its value as written.
    pub value: &'a str,
}

impl Addressing {
    /// Addresses named under `hasher`, national phone numbers read in
    /// `region`.
    pub fn new(hasher: AddressHasher, region: PhoneRegion) -> Self {
        Self { hasher, region }
    }

    /// Reads an address whose kind must be named (a change, GetAddress);
    /// errors name `field.kind` or `field.value`.
    pub fn read(
        &self,
        field: &str,
        raw: RawAddress<'_>,
    ) -> Result<(Address, ContactId), FieldError> {
        let kind = match raw.kind {
            KindOf::Kind(k) => k,
            KindOf::Unspecified => {
                return Err(FieldError::new(
                    format!("{field}.kind"),
                    "is required (ADDRESS_KIND_EMAIL or ADDRESS_KIND_PHONE)",
                ));
            }
            KindOf::Unknown(n) => return Err(unknown_kind(field, n)),
        };
        self.named(field, kind, raw.value)
    }

    /// Reads CanSend's `to` for `channel`: its kind may be left to the
    /// channel's, and must agree with it when the channel has one. Answers
    /// its kind and keyed hash (the check looks it up by
    /// [`crate::domain::ids::address_key`], a link carries it). What a check
    /// with `to` costs beyond one without: `benches/decision.rs`.
    pub fn read_to_hash(
        &self,
        catalog: &Catalog,
        channel: &str,
        raw: RawAddress<'_>,
    ) -> Result<(AddressKind, [u8; 32]), FieldError> {
        let of_channel = catalog.spec().channel_addresses.get(channel).copied();
        let kind = match (raw.kind, of_channel) {
            (KindOf::Unknown(n), _) => return Err(unknown_kind("to", n)),
            (KindOf::Kind(k), Some(c)) if k != c => {
                return Err(FieldError::new(
                    "to.kind",
                    format!(
                        "is {}, but channel {} sends to {} addresses",
                        k.name(),
                        crate::domain::ids::quote(channel),
                        c.name()
                    ),
                ));
            }
            (KindOf::Kind(k), _) => k,
            (KindOf::Unspecified, Some(c)) => c,
            (KindOf::Unspecified, None) => {
                return Err(FieldError::new(
                    "to.kind",
                    format!(
                        "is required: channel {} has no address kind in the catalog's channel_addresses",
                        crate::domain::ids::quote(channel)
                    ),
                ));
            }
        };
        let address = Address::parse("to.value", kind, raw.value, self.region)?;
        Ok((kind, self.hasher.hash(&address)))
    }

    /// The address's key and its keyed hash, for an address already read.
    pub fn key_of(&self, address: &Address) -> (ContactId, [u8; 32]) {
        let hash = self.hasher.hash(address);
        (ContactId::of_address(&hash), hash)
    }

    fn named(
        &self,
        field: &str,
        kind: AddressKind,
        value: &str,
    ) -> Result<(Address, ContactId), FieldError> {
        let address = Address::parse(&format!("{field}.value"), kind, value, self.region)?;
        let key = ContactId::of_address(&self.hasher.hash(&address));
        Ok((address, key))
    }
}

fn unknown_kind(field: &str, n: i32) -> FieldError {
    FieldError::new(
        format!("{field}.kind"),
        format!("{n} is not an address kind (ADDRESS_KIND_EMAIL or ADDRESS_KIND_PHONE)"),
    )
}

/// What GetAddress answers.
#[derive(Debug, Clone)]
pub struct AddressView {
    /// The address, normalised.
    pub address: Address,
    /// Its state per consent it has decided on.
    pub states: Vec<StateRecord>,
    /// Every event recorded on it, in recording order.
    pub events: Vec<EventRecord>,
    /// Since when a hard bounce marks it undeliverable, if one does.
    pub undeliverable: Option<UnixNanos>,
}

/// A change of an address's undeliverable mark (DESIGN.md §9): a WITHDRAW
/// is a hard bounce, a GRANT lifts it; `at` is when (None: now).
pub fn undeliverable_change(
    key: ContactId,
    action: Action,
    at: Option<UnixNanos>,
    source: Source,
    evidence: Evidence,
    idempotency_key: Option<String>,
    actor: String,
) -> Change {
    Change {
        contact: key,
        consent: Mark::Undeliverable.id(),
        action,
        occurred_at: at,
        source,
        evidence,
        idempotency_key,
        issued_at: None,
        actor,
        confirmed: false,
        resend: false,
        bulk: false,
        by_page: false,
        addresses: Vec::new(),
    }
}

impl Authority {
    /// How this node reads and names addresses.
    pub fn addressing(&self) -> &Addressing {
        &self.addressing
    }

    /// GetAddress: the states and history recorded on an address, once
    /// `min_sequence` is applied here.
    pub async fn address(
        &self,
        raw: RawAddress<'_>,
        min_sequence: u64,
    ) -> Result<AddressView, ReadError> {
        let (address, key) = self.addressing.read("address", raw)?;
        self.fresh(min_sequence).await?;
        let (states, events) = self
            .read(move |store| {
                Ok((
                    store.contact_states(key.as_str())?,
                    store.history(key.as_str())?,
                ))
            })
            .await?;
        let (marks, states): (Vec<_>, Vec<_>) =
            states.into_iter().partition(|s| s.consent.is_mark());
        let undeliverable = marks
            .iter()
            .find(|s| s.action == Action::Withdraw)
            .map(|s| s.occurred_at);
        Ok(AddressView {
            address,
            states,
            events,
            undeliverable,
        })
    }

    /// SetAddresses: the contact's addresses from now on (read as the
    /// fields `addresses[i]`, duplicates once, at most
    /// [`MAX_ADDRESSES_PER_CONTACT`]); the writer records what changed.
    /// Returns them as normalised, and the sequence of the last event
    /// recorded (0: nothing changed).
    pub async fn set_addresses(
        &self,
        contact: ContactId,
        raw: &[RawAddress<'_>],
        actor: String,
        deadline: Option<Instant>,
    ) -> Result<(Vec<Address>, u64), ChangeError> {
        let mut read: Vec<(Address, [u8; 32])> = Vec::with_capacity(raw.len());
        for (i, r) in raw.iter().enumerate() {
            let (address, _) = self.addressing.read(&format!("addresses[{i}]"), *r)?;
            if !read.iter().any(|(a, _)| *a == address) {
                let hash = self.addressing.hasher.hash(&address);
                read.push((address, hash));
            }
        }
        if read.len() > MAX_ADDRESSES_PER_CONTACT {
            return Err(FieldError::new(
                "addresses",
                format!(
                    "names {} addresses, at most {MAX_ADDRESSES_PER_CONTACT} allowed",
                    read.len()
                ),
            )
            .into());
        }
        let addresses = read.iter().map(|(a, _)| a.clone()).collect();
        let change = Change {
            contact,
            consent: Mark::SetAddresses.id(),
            action: Action::Grant,
            occurred_at: None,
            source: Source::Api,
            evidence: Evidence::new(),
            idempotency_key: None,
            issued_at: None,
            actor,
            confirmed: false,
            resend: false,
            bulk: false,
            by_page: false,
            addresses: read,
        };
        let outcome = self.change(change, deadline).await?;
        Ok((addresses, outcome.sequence))
    }

    /// ClearUndeliverable: lifts the mark a hard bounce left on the
    /// address. Records nothing when no bounce marks it.
    pub async fn clear_undeliverable(
        &self,
        raw: RawAddress<'_>,
        actor: String,
        deadline: Option<Instant>,
    ) -> Result<ChangeOutcome, ChangeError> {
        let (_, key) = self.addressing.read("address", raw)?;
        let marked = self
            .index
            .get(key.as_str(), UNDELIVERABLE)
            .is_some_and(|h| h.action == Action::Withdraw);
        if !marked {
            return Ok(ChangeOutcome {
                applied: false,
                state: None,
                sequence: 0,
                pending: None,
            });
        }
        let change = undeliverable_change(
            key,
            Action::Grant,
            None,
            Source::Api,
            Evidence::new(),
            None,
            actor,
        );
        self.change(change, deadline).await
    }
}

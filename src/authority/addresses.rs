//! Addresses through the authority (DESIGN.md §9): reading one from a
//! request, naming it to the stores, CanSend's `to`, and GetAddress.
//!
//! An address's own records are kept under [`ContactId::of_address`], the
//! keyed hash of its normalised value, so address events go through the same
//! writer, rules, stores and feed as a contact's; what differs is in the
//! ruling (an address GRANT is never pending for double opt-in: it is not
//! consent) and in CanSend, which reads an address's state only to block.

use crate::domain::{
    Address, AddressHasher, AddressKind, Catalog, ContactId, EventRecord, FieldError, PhoneRegion,
    StateRecord,
};

use super::{Authority, ReadError};

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
    /// channel's, and must agree with it when the channel has one. What a
    /// check with `to` costs beyond one without (`benches/decision.rs`).
    pub fn read_to(
        &self,
        catalog: &Catalog,
        channel: &str,
        raw: RawAddress<'_>,
    ) -> Result<ContactId, FieldError> {
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
        Ok(self.named("to", kind, raw.value)?.1)
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
}

impl Authority {
    /// How this node reads and names addresses.
    pub fn addressing(&self) -> &Addressing {
        &self.addressing
    }

    /// The key of CanSend's `to`, read against the catalog in force.
    pub(super) fn to_key(
        &self,
        catalog: &Catalog,
        channel: &str,
        to: Option<RawAddress<'_>>,
    ) -> Result<Option<ContactId>, FieldError> {
        to.map(|raw| self.addressing.read_to(catalog, channel, raw))
            .transpose()
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
        Ok(AddressView {
            address,
            states,
            events,
        })
    }
}

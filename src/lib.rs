//! consentd: the consent authority that e-mail and SMS dispatchers ask,
//! before every message, "may I send this to this person?".
//!
//! # Layout
//!
//! Dependencies point down this list; nothing below knows what is above it.
//!
//! - [`server`]: wiring: listeners, health, reflection, auth, graceful
//!   shutdown (explicit: stop serving, drain, close the writer).
//! - [`grpc`] and `http`: thin transports. A handler validates the request
//!   into domain types, calls the [`authority`], and maps the answer (gRPC
//!   maps each error family in one place, `grpc/status.rs`; CanSend and
//!   CanSendBatch are read and written in place, `grpc/eligibility.rs`).
//!   `auth`: bearer roles.
//! - [`authority`]: the façade, the one set of operations every transport
//!   calls (CanSend, changes, import, erasure, links, the confirmation and
//!   preference pages, reads, catalog).
//! - `writer`: the single writer thread: group commit, then index, then
//!   replies; rulings come from [`domain::ruling`].
//! - [`index`]: the in-memory concurrent index every CanSend reads.
//! - [`store`]: the backend-neutral storage interface, its backends
//!   ([`store::RedbStore`], [`store::PgStore`], [`store::MemoryStore`]) and
//!   the conformance suite they all pass.
//! - [`links`]: sealed link tokens (unsubscribe, confirmation, preferences)
//!   and their key ring; `metrics`:
//!   counters; `clock`: wall-clock time; `error`: why an operation failed,
//!   one enum per operation family.
//! - [`domain`]: ids, the catalog, events and states, the resolution of a
//!   CanSend (lapsed grants included) and the write rules, pending grants,
//!   all pure (DESIGN.md §2, §7). No tokio, tonic or redb.
//! - [`config`]: flags and `CONSENTD_*` variables.
#![deny(unsafe_code)]

pub mod audit;
mod auth;
pub mod authority;
pub mod clock;
pub mod config;
pub mod domain;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod hooks;
mod http;
pub mod index;
pub mod links;
mod metrics;
pub mod server;
pub mod store;
mod writer;

/// Generated protobuf and gRPC code for `consent.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("consent.v1");

    /// Encoded descriptors, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("consent_descriptor");
}

pub use authority::{
    Answer, Authority, CatalogError, ChangeError, EraseError, LinkError, ReadError, WriteError,
};
pub use config::Config;

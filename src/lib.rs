//! consentd: the consent authority that e-mail and SMS dispatchers ask,
//! before every message, "may I send this to this person?".
//!
//! # Layout
//!
//! - [`domain`]: ids, the catalog, events and states, and the pure rules
//!   (DESIGN.md §2). No tokio, tonic or redb.
//! - [`index`]: the in-memory concurrent index every CanSend reads.
//! - [`store`]: the [`store::Store`] trait and its redb implementation.
//! - [`writer`]: the single writer thread (group commit; commit, then index).
//! - [`links`]: signed unsubscribe links and their key ring.
//! - [`authority`]: the operations gRPC and HTTP share.
//! - [`grpc`]: thin tonic handlers; [`http`]: health, metrics.
//! - [`server`]: wiring, health, reflection, graceful shutdown.
//! - [`auth`]: bearer-token roles.
//! - [`config`]: flags and `CONSENTD_*` variables.
#![forbid(unsafe_code)]

mod auth;
pub mod authority;
mod clock;
pub mod config;
pub mod domain;
mod error;
pub mod grpc;
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

pub use authority::{Answer, Authority, Error};
pub use config::Config;

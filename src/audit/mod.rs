//! Evidence an outsider can check (DESIGN.md §11): every record the store
//! commits is linked into one hash chain (`record.rs`), checkpoints of the
//! chain are signed with an Ed25519 key (`note.rs`), and a verifier
//! recomputes the chain from what a store holds (`verify.rs`).

mod checkpointer;
pub mod note;
mod record;
mod verify;

pub use checkpointer::Checkpoints;
pub use verify::{Verified, VerifyError, verify};

pub use record::{
    CANONICAL_VERSION, CHAIN_DOMAIN, Canonical, GENESIS, Held, Kind, Link, Linker, NO_SALT, Prior,
    leaf, link, link_batch, salts, wording_digest,
};

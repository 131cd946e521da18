//! The domain: ids, the catalog, events and states, the pure resolution of
//! DESIGN.md rules 2 and 3 (which state decides a CanSend) and the write
//! rules (how a change is ruled). Knows nothing of tokio, tonic or redb.

pub mod address;
pub mod catalog;
pub mod erasure;
pub mod event;
pub mod fold;
pub mod ids;
pub mod mark;
pub mod pending;
pub mod resolve;
pub mod ruling;
pub mod terms;
pub mod wording;

pub use address::{Address, AddressHasher, AddressKind, PhoneRegion};
pub(crate) use catalog::LastCell;
pub use catalog::{Catalog, CatalogSpec, Cell, Compiled, Consent, ConsentIdx, ConsentSpec};
pub use erasure::{ContactHasher, Erasures};
pub use event::{
    Action, Change, Decision, EventRecord, Evidence, IdempotencyRecord, Source, StateRecord,
    UnixNanos,
};
pub use fold::{Folded, fold};
pub use ids::{ConsentId, ContactId, FieldError};
pub use mark::{MAX_ADDRESSES_PER_CONTACT, Mark, UNDELIVERABLE};
pub use pending::{MAX_PENDING_PER_CONTACT, PendingRecord};
pub use resolve::{HeldState, Verdict, verdict};
pub use ruling::{ChangeOutcome, Known, PendingGrant, Ruling, rule};
pub use terms::{Lapse, Terms, short_version};
pub use wording::Wording;

//! The domain: ids, the catalog, events and states, and the pure resolution
//! of DESIGN.md rules 2 and 3. Knows nothing of tokio, tonic or redb.

pub mod catalog;
pub mod event;
pub mod ids;
pub mod resolve;

pub use catalog::{Catalog, CatalogSpec, Cell, Consent, ConsentIdx, ConsentSpec};
pub use event::{Action, Change, Decision, EventRecord, Evidence, Source, StateRecord, UnixNanos};
pub use ids::{ConsentId, ContactId, FieldError};
pub use resolve::{HeldState, Verdict, verdict};

//! The store conformance suites over the memory store.

use std::sync::Arc;

use super::MemoryStore;
use crate::store::conformance::{Fixture, conformance_suite};

/// Reopen hands back the same store: the process never stopped.
struct Memory(Option<Arc<MemoryStore>>);

impl Fixture for Memory {
    fn fresh(&mut self) -> Arc<dyn crate::store::Transfer> {
        let store = Arc::new(MemoryStore::new().unwrap());
        self.0 = Some(store.clone());
        store
    }

    fn reopen(&mut self) -> Arc<dyn crate::store::Transfer> {
        self.0.clone().expect("fresh first")
    }
}

conformance_suite!(Memory(None));

mod shared {
    use std::sync::Arc;

    use crate::store::shared_conformance::{SharedFixture, shared_conformance_suite};
    use crate::store::{MemoryStore, SharedStore};

    /// Two nodes in one process share one store.
    struct Shared;

    impl SharedFixture for Shared {
        fn pair(&mut self) -> (Arc<dyn SharedStore>, Arc<dyn SharedStore>) {
            let store = Arc::new(MemoryStore::new().unwrap());
            (store.clone(), store)
        }
    }

    shared_conformance_suite!(Shared);
}

//! A short soak: a few SIGKILL cycles of the real binary under mixed
//! traffic, every acknowledged outcome checked after each restart. The long
//! run is `cargo bench --bench soak -- --cycles 100`.

#[path = "soak_cycles/mod.rs"]
mod soak_cycles;

use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_outcomes_survive_sigkill_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let acked = Arc::new(Mutex::new(soak_cycles::Acknowledged::default()));
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_consentd"));
    for cycle in 0..3 {
        soak_cycles::cycle(
            binary,
            dir.path(),
            &acked,
            cycle,
            Duration::from_millis(300),
        )
        .await;
    }
    assert!(
        acked.lock().unwrap().total > 50,
        "the traffic did something"
    );
}

//! The soak runner: `cargo bench --bench soak -- --cycles 100 [--millis 500]`
//! kills the real binary with SIGKILL after each burst of mixed traffic
//! (grants, withdrawals, imports, erasures, link clicks, catalog changes),
//! restarts it on the same data dir and checks every acknowledged outcome,
//! and that the index agrees with the stored states.

#[path = "../tests/soak_cycles/mod.rs"]
mod soak_cycles;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn main() {
    let mut cycles = 100u64;
    let mut millis = 500u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cycles" => {
                cycles = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--cycles N")
            }
            "--millis" => {
                millis = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--millis N")
            }
            _ => {}
        }
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let acked = Arc::new(Mutex::new(soak_cycles::Acknowledged::default()));
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_consentd"));
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    for cycle in 0..cycles {
        runtime.block_on(soak_cycles::cycle(
            binary,
            dir.path(),
            &acked,
            cycle,
            Duration::from_millis(millis),
        ));
        if (cycle + 1) % 10 == 0 {
            println!(
                "soak: {} SIGKILL cycles, {} acknowledged outcomes checked, {:.0} s",
                cycle + 1,
                acked.lock().unwrap().total,
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "soak: {cycles} SIGKILL cycles passed; {} acknowledged outcomes held",
        acked.lock().unwrap().total
    );
}

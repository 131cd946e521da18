//! Sets `cfg(pg_available)` where the PostgreSQL tests can run (server
//! binaries installed, or `CONSENTD_TEST_DATABASE_URL` set).
//!
//! The protos are not compiled here: their generated code is checked in
//! (`src/pb/`), so a first build compiles no proto compiler;
//! `tests/protos.rs` checks it against `proto/`.

use std::{env, path::PathBuf};

/// Whether a PostgreSQL server can be started (or is named) for tests.
fn postgres_for_tests() -> bool {
    println!("cargo::rustc-check-cfg=cfg(pg_available)");
    println!("cargo:rerun-if-env-changed=CONSENTD_TEST_DATABASE_URL");
    println!("cargo:rerun-if-env-changed=CONSENTD_TEST_PG_BIN");
    println!("cargo:rerun-if-changed=/usr/lib/postgresql");
    if env::var("CONSENTD_TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        return true;
    }
    if let Ok(dir) = env::var("CONSENTD_TEST_PG_BIN") {
        return PathBuf::from(dir).join("initdb").exists();
    }
    std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|v| v.path().join("bin/initdb").exists())
        || env::var_os("PATH").is_some_and(|p| {
            env::split_paths(&p).any(|d| d.join("initdb").exists() && d.join("postgres").exists())
        })
}

fn main() {
    if postgres_for_tests() {
        println!("cargo:rustc-cfg=pg_available");
    }
}

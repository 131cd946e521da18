//! Compiles `proto/` with protox (pure Rust: no system `protoc` needed),
//! and sets `cfg(pg_available)` where the PostgreSQL tests can run (server
//! binaries installed, or `CONSENTD_TEST_DATABASE_URL` set).

use std::{env, path::PathBuf};

use prost::Message;

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if postgres_for_tests() {
        println!("cargo:rustc-cfg=pg_available");
    }
    let proto = "proto/consent/v1/consent.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // Served by gRPC reflection, so grpcurl works without the .proto file.
    std::fs::write(out.join("consent_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

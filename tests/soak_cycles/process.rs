//! The real `consentd` binary as a child process on ephemeral ports: for
//! the SIGKILL tests and the soak runner.
// Each includer (crash test, soak) uses its own part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The running binary and its addresses.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) grpc: SocketAddr,
    pub(crate) http: SocketAddr,
}

/// Starts `binary` on ephemeral ports over `data_dir`, applying `catalog`
/// at start if given; returns once it logs that it serves.
pub(crate) fn start(binary: &Path, data_dir: &Path, catalog: Option<&Path>) -> Running {
    start_on(binary, data_dir, catalog, None)
}

/// As [`start`], over the store `store` names (`--store`) when given.
pub(crate) fn start_on(
    binary: &Path,
    data_dir: &Path,
    catalog: Option<&Path>,
    store: Option<&str>,
) -> Running {
    let mut command = Command::new(binary);
    if let Some(store) = store {
        command.args(["--store", store]);
    }
    command
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .args(["--erasure-purge-seconds", "0"])
        .arg("--data-dir")
        .arg(data_dir);
    if let Some(catalog) = catalog {
        command.arg("--catalog").arg(catalog);
    }
    let mut child = command
        .env("RUST_LOG", "info")
        .env("CONSENTD_LOG_FORMAT", "text")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting consentd");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let field = |line: &str, name: &str| -> SocketAddr {
        line.split(&format!("{name}="))
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .expect("an address in the serving line")
    };
    let (grpc, http) = loop {
        let line = lines
            .next()
            .expect("consentd exited before serving")
            .expect("log line");
        if line.contains("consentd serving") {
            break (field(&line, "grpc_addr"), field(&line, "http_addr"));
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Running { child, grpc, http }
}

impl Running {
    /// SIGKILL: no shutdown, no flush.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

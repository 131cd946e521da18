//! The end-to-end suites again, over PostgreSQL: every server these tests
//! start stores in a database of a throwaway PostgreSQL server (one per
//! data dir, so restarts find their data; see `common::database_for`).
//! The SIGKILL test kills the real binary running on PostgreSQL.
//! Then what only PostgreSQL has: the database going away and coming back,
//! and erasure measured in its tables.
//!
//! Where no PostgreSQL server binaries are installed (and
//! `CONSENTD_TEST_DATABASE_URL` names none), one test prints SKIPPED.
// Each suite brings its own `mod common;`, as it does when it runs alone.
#![allow(clippy::duplicate_mod)]

#[cfg(pg_available)]
#[path = "addresses.rs"]
mod addresses;
#[cfg(pg_available)]
#[path = "as_of.rs"]
mod as_of;
#[cfg(pg_available)]
#[path = "audit.rs"]
mod audit;
#[cfg(pg_available)]
#[path = "catalog.rs"]
mod catalog;
#[cfg(pg_available)]
#[path = "consent_flows.rs"]
mod consent_flows;
#[cfg(pg_available)]
#[path = "contact_addresses.rs"]
mod contact_addresses;
#[cfg(pg_available)]
#[path = "crash.rs"]
mod crash;
#[cfg(pg_available)]
#[path = "eligibility.rs"]
mod eligibility;
#[cfg(pg_available)]
#[path = "erasure.rs"]
mod erasure;
#[cfg(pg_available)]
#[path = "export.rs"]
mod export;
#[cfg(pg_available)]
#[path = "hooks.rs"]
mod hooks;
#[cfg(pg_available)]
#[path = "hooks_mail.rs"]
mod hooks_mail;
#[cfg(pg_available)]
#[path = "http.rs"]
mod http;
#[cfg(pg_available)]
#[path = "import.rs"]
mod import;
#[cfg(pg_available)]
#[path = "mutations.rs"]
mod mutations;
#[cfg(pg_available)]
#[path = "receipts.rs"]
mod receipts;
#[cfg(pg_available)]
#[path = "reconcile.rs"]
mod reconcile;
#[cfg(pg_available)]
#[path = "restart.rs"]
mod restart;
#[cfg(pg_available)]
#[path = "snapshot.rs"]
mod snapshot;
#[cfg(pg_available)]
#[path = "watch.rs"]
mod watch;
#[cfg(pg_available)]
#[path = "wordings.rs"]
mod wordings;

#[cfg(pg_available)]
#[path = "on_postgres/nodes.rs"]
mod nodes;
#[cfg(pg_available)]
#[path = "on_postgres/postgres_only.rs"]
mod postgres_only;

#[cfg(not(pg_available))]
#[test]
fn postgres_suites() {
    println!(
        "SKIPPED: no PostgreSQL server binaries (initdb, postgres) were found when this was \
         built, and CONSENTD_TEST_DATABASE_URL is not set: the suites did not run on PostgreSQL"
    );
}

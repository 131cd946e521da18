//! `consentctl migrate --from redb:DIR --to postgres://...` (and back):
//! opens both stores directly, copies everything with
//! `consentd::store::transfer`, then compares them record by record.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use consentd::store::postgres::redact;
use consentd::store::{PgStore, RedbStore, SharedStore, Transfer, transfer};
use serde_json::json;

/// A store opened for the move: read out or filled through [`Transfer`];
/// PostgreSQL also shares link keys ([`SharedStore`]).
pub(crate) struct Opened {
    pub(crate) transfer: Arc<dyn Transfer>,
    shared: Option<Arc<dyn SharedStore>>,
}

/// Where a store lives, as the command line names it.
pub(crate) enum Place {
    Redb(PathBuf),
    Postgres(String),
}

impl Place {
    pub(crate) fn parse(s: &str) -> anyhow::Result<Place> {
        if let Some(dir) = s.strip_prefix("redb:") {
            return Ok(Place::Redb(PathBuf::from(dir)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Place::Postgres(s.to_owned()));
        }
        bail!(
            "{:?} is neither redb:DATA_DIR nor a postgres:// URL",
            redact(s)
        )
    }

    pub(crate) fn shown(&self) -> String {
        match self {
            Place::Redb(dir) => format!("redb:{}", dir.display()),
            Place::Postgres(url) => redact(url),
        }
    }

    pub(crate) fn open(&self, must_exist: bool) -> anyhow::Result<Opened> {
        Ok(match self {
            Place::Redb(dir) => {
                if must_exist && !dir.join("consentd.redb").exists() {
                    bail!("{} holds no consentd.redb", dir.display());
                }
                std::fs::create_dir_all(dir)?;
                let store = RedbStore::open(dir)
                    .with_context(|| format!("opening {} (is a server using it?)", self.shown()))?;
                Opened {
                    transfer: Arc::new(store),
                    shared: None,
                }
            }
            Place::Postgres(url) => {
                let store = Arc::new(
                    PgStore::open(url).with_context(|| format!("opening {}", self.shown()))?,
                );
                Opened {
                    transfer: store.clone(),
                    shared: Some(store),
                }
            }
        })
    }

    /// The link keys kept with this store: the data dir's key file, or the
    /// database's shared ring.
    fn link_keys(&self, store: &Opened) -> anyhow::Result<Vec<String>> {
        Ok(match (self, &store.shared) {
            (Place::Redb(dir), _) => consentd::links::read_key_file(dir)?.unwrap_or_default(),
            (Place::Postgres(_), Some(shared)) => {
                shared.link_keys(&consentd::links::generate_key()?)?
            }
            (Place::Postgres(_), None) => Vec::new(),
        })
    }
}

pub(crate) fn migrate(from: &str, to: &str, json_mode: bool) -> anyhow::Result<()> {
    let (from, to) = (Place::parse(from)?, Place::parse(to)?);
    let source = from.open(true)?;
    let target = to.open(false)?;
    let keys = from.link_keys(&source)?;
    if let Place::Redb(dir) = &to
        && consentd::links::read_key_file(dir)?.is_some()
    {
        bail!(
            "{} already has a link key file; a migration only fills an empty store",
            dir.display()
        );
    }
    let started = std::time::Instant::now();
    let moved = transfer::copy(&*source.transfer, &*target.transfer, &keys, &mut |n| {
        if !json_mode {
            eprint!("\rcopied {n} events");
        }
    })?;
    if let Place::Redb(dir) = &to
        && !keys.is_empty()
    {
        consentd::links::write_key_file(dir, &keys)?;
    }
    if !keys.is_empty() && to.link_keys(&target)? != keys {
        bail!("the link keys differ after the copy");
    }
    // Closed cleanly: a redb target's log checkpointed into its file (which
    // then says schema 3 again, openable by any build of it).
    target
        .transfer
        .close()
        .context("closing the target store")?;
    source
        .transfer
        .close()
        .context("closing the source store")?;
    let seconds = started.elapsed().as_secs_f64();
    if json_mode {
        println!(
            "{}",
            json!({
                "from": from.shown(), "to": to.shown(), "seconds": seconds,
                "events": moved.events, "states": moved.states, "idempotency_keys": moved.keys,
                "wordings": moved.wordings, "tombstones": moved.tombstones,
                "link_keys": keys.len(), "next_sequence": moved.next_sequence, "verified": true,
            })
        );
    } else {
        eprintln!();
        println!(
            "moved {} → {} in {seconds:.1} s and verified record by record: {} events, {} states, {} idempotency keys, {} wordings, {} tombstones, {} link keys; next sequence {}",
            from.shown(),
            to.shown(),
            moved.events,
            moved.states,
            moved.keys,
            moved.wordings,
            moved.tombstones,
            keys.len(),
            moved.next_sequence
        );
    }
    Ok(())
}

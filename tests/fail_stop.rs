//! Fail-stop and power loss (DESIGN.md rule 6), over a redb storage backend
//! that injects faults: a failed write or sync stops all writing, the reply
//! in doubt says "outcome unknown", health turns NOT_SERVING and the server
//! exits with an error; and whatever was acknowledged survives a power cut
//! at any point.

mod common;

use std::io;
use std::sync::{Arc, Mutex};

use common::*;
use consentd::domain::{Action, ConsentId, ContactId, EventRecord, Source};
use consentd::pb;
use consentd::store::{RedbStore, Store, WriteBatch};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// An in-memory disk: `volatile` is what reads see, `durable` what a
/// power cut leaves (the bytes as of the last sync).
#[derive(Debug, Default)]
struct Platters {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    /// Write, set_len and sync operations so far.
    ops: u64,
    /// Power is cut at this operation: it and everything after it fail.
    cut_at: Option<u64>,
    cut: bool,
    fail_next_sync: bool,
    fail_next_write: bool,
}

#[derive(Debug, Clone, Default)]
struct Disk(Arc<Mutex<Platters>>);

impl Disk {
    fn lock(&self) -> std::sync::MutexGuard<'_, Platters> {
        self.0.lock().unwrap()
    }

    /// What the machine finds after the power comes back.
    fn after_power_loss(&self) -> Disk {
        let durable = self.lock().durable.clone();
        Disk(Arc::new(Mutex::new(Platters {
            volatile: durable.clone(),
            durable,
            ..Default::default()
        })))
    }

    fn step(p: &mut Platters) -> io::Result<()> {
        p.ops += 1;
        if p.cut_at == Some(p.ops) {
            p.cut = true;
        }
        if p.cut {
            return Err(io::Error::other("power lost"));
        }
        Ok(())
    }
}

impl redb::StorageBackend for Disk {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().volatile.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let p = self.lock();
        if p.cut {
            return Err(io::Error::other("power lost"));
        }
        let start = offset as usize;
        let src = p
            .volatile
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut p = self.lock();
        Disk::step(&mut p)?;
        p.volatile.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut p = self.lock();
        Disk::step(&mut p)?;
        if std::mem::take(&mut p.fail_next_sync) {
            return Err(io::Error::other("EIO on fsync"));
        }
        p.durable = p.volatile.clone();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut p = self.lock();
        Disk::step(&mut p)?;
        if std::mem::take(&mut p.fail_next_write) {
            return Err(io::Error::other("ENOSPC: no space left on device"));
        }
        let end = offset as usize + data.len();
        if p.volatile.len() < end {
            p.volatile.resize(end, 0);
        }
        p.volatile[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}

/// A server over `disk`, the example catalog applied.
async fn serve_on(disk: &Disk) -> (TestServer, tempfile::TempDir) {
    serve_in(disk, tempfile::tempdir().unwrap()).await
}

/// A server over `disk` with `dir` as its data dir (its signing key: the
/// same machine after a power cut).
async fn serve_in(disk: &Disk, dir: tempfile::TempDir) -> (TestServer, tempfile::TempDir) {
    let mut config = consentd::Config::ephemeral(dir.path());
    config.catalog = Some(example_catalog_path());
    let store = Arc::new(RedbStore::open_with_backend(disk.clone()).unwrap());
    (TestServer::start_with_store(config, store).await, dir)
}

async fn fail_stop_on(arm: fn(&mut Platters), expected: &str) {
    let disk = Disk::default();
    let (server, _dir) = serve_on(&disk).await;
    let mut cons = server.consents().await;
    let kept = cons
        .grant(change("anna", "marketing", None))
        .await
        .unwrap()
        .into_inner();
    assert!(kept.applied);
    assert_eq!(health_of(&server, "").await, Some(ServingStatus::Serving));

    arm(&mut disk.lock());
    let doubt = cons
        .grant(change("bob", "marketing", None))
        .await
        .unwrap_err();
    assert_eq!(doubt.code(), Code::Unavailable, "{doubt:?}");
    assert!(
        doubt.message().contains("outcome unknown"),
        "{}",
        doubt.message()
    );

    // The server stops: serve() returns the failure (the process exits
    // non-zero), naming the cause.
    let err = server
        .finish()
        .await
        .expect_err("fail-stop is an error exit");
    assert!(format!("{err:#}").contains(expected), "{err:#}");

    // After the power comes back: the acknowledged grant is there.
    let store = RedbStore::open_with_backend(disk.after_power_loss()).unwrap();
    assert_eq!(store.history("anna").unwrap().len(), 1);
    assert!(
        store.history("bob").unwrap().len() <= 1,
        "bob's outcome was unknown"
    );
}

#[tokio::test]
async fn a_failed_sync_stops_the_server_and_loses_nothing_acknowledged() {
    fail_stop_on(|p| p.fail_next_sync = true, "EIO on fsync").await;
}

#[tokio::test]
async fn a_failed_write_stops_the_server_and_loses_nothing_acknowledged() {
    fail_stop_on(|p| p.fail_next_write = true, "no space left").await;
}

#[tokio::test]
async fn health_turns_not_serving_and_writes_are_refused_once_the_store_failed() {
    let disk = Disk::default();
    let (server, _dir) = serve_on(&disk).await;
    let channel = server.channel().await;
    let mut cons = Consents(
        consentd::pb::consents_service_client::ConsentsServiceClient::new(channel.clone()),
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    cons.grant(change("anna", "marketing", None)).await.unwrap();
    disk.lock().fail_next_sync = true;
    let _ = cons.grant(change("bob", "marketing", None)).await;
    // The server goes NOT_SERVING, then away; it never serves writes again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "consent.v1.ConsentsService".into(),
            })
            .await
            .map(|r| r.into_inner().status());
        match status {
            Ok(ServingStatus::Serving) => {
                assert!(std::time::Instant::now() < deadline, "still SERVING");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            // NOT_SERVING, or the connection is already closed.
            _ => break,
        }
    }
    if let Ok(r) = cons.grant(change("carl", "marketing", None)).await {
        panic!("a write was accepted after a store failure: {r:?}");
    }
    assert!(server.finish().await.is_err());
}

fn event(n: u64) -> EventRecord {
    EventRecord {
        contact: ContactId::parse("contact", &format!("contact-{n:04}")).unwrap(),
        consent: ConsentId::parse("consent", "marketing").unwrap(),
        action: if n.is_multiple_of(3) {
            Action::Withdraw
        } else {
            Action::Grant
        },
        occurred_at: n as i64,
        recorded_at: n as i64,
        source: Source::Form,
        evidence: [("n".to_string(), n.to_string())].into(),
        version: 1,
        sequence: n,
        idempotency_key: None,
        applied: true,
        actor: "crm".into(),
        pending: false,
        confirmed: false,
        confirmation_link: false,
        chain: None,
    }
}

/// For every crash point: commit until the power is cut, then power up and
/// check that every acknowledged batch is there, and nothing that was never
/// attempted.
#[test]
fn acknowledged_writes_survive_a_power_cut_at_every_point() {
    const BATCHES: u64 = 12;
    const PER_BATCH: u64 = 3;
    // How many operations an uninterrupted run takes.
    let probe = Disk::default();
    {
        let store = RedbStore::open_with_backend(probe.clone()).unwrap();
        for b in 0..BATCHES {
            commit(&store, b, PER_BATCH).unwrap();
        }
    }
    let total_ops = probe.lock().ops;
    assert!(total_ops > 20, "{total_ops} operations");

    let mut cut_points = 0;
    for cut_at in 1..=total_ops {
        let disk = Disk::default();
        disk.lock().cut_at = Some(cut_at);
        let mut acknowledged = Vec::new();
        if let Ok(store) = RedbStore::open_with_backend(disk.clone()) {
            for b in 0..BATCHES {
                match commit(&store, b, PER_BATCH) {
                    Ok(()) => acknowledged.push(b),
                    Err(_) => break,
                }
            }
        }
        let recovered = disk.after_power_loss();
        let Ok(store) = RedbStore::open_with_backend(recovered) else {
            // A cut before the first sync leaves an empty disk: a fresh
            // start, with nothing acknowledged to lose.
            assert!(
                acknowledged.is_empty(),
                "cut at {cut_at}: unreadable after acks"
            );
            continue;
        };
        cut_points += 1;
        for &b in &acknowledged {
            for n in b * PER_BATCH + 1..=(b + 1) * PER_BATCH {
                let history: Vec<_> = store
                    .history(&format!("contact-{n:04}"))
                    .unwrap()
                    .into_iter()
                    .map(|e| EventRecord { chain: None, ..e })
                    .collect();
                assert_eq!(
                    history,
                    vec![event(n)],
                    "cut at op {cut_at}: batch {b} lost"
                );
            }
        }
        let highest = store.recover().unwrap().next_sequence;
        assert!(
            highest <= BATCHES * PER_BATCH + 1,
            "cut at {cut_at}: invented data"
        );
        // Atomic batches: a batch is there whole or not at all.
        for b in 0..BATCHES {
            let present = (b * PER_BATCH + 1..=(b + 1) * PER_BATCH)
                .filter(|n| {
                    !store
                        .history(&format!("contact-{n:04}"))
                        .unwrap()
                        .is_empty()
                })
                .count() as u64;
            assert!(
                present == 0 || present == PER_BATCH,
                "cut at {cut_at}: batch {b} torn"
            );
        }
    }
    eprintln!("power cut at each of {total_ops} operations; {cut_points} left a store to recover");
    assert!(
        cut_points as u64 > total_ops / 2,
        "most cut points recover a store"
    );
}

fn commit(
    store: &RedbStore,
    batch: u64,
    per_batch: u64,
) -> Result<(), consentd::store::StoreError> {
    let first = batch * per_batch + 1;
    store
        .commit(&WriteBatch {
            events: (first..first + per_batch).map(event).collect(),
            next_sequence: first + per_batch,
            ..Default::default()
        })
        .map(drop)
}

#[tokio::test]
async fn the_acknowledged_grant_is_read_back_after_power_loss_through_the_server() {
    let disk = Disk::default();
    let (server, dir) = serve_on(&disk).await;
    let mut cons = server.consents().await;
    for who in ["anna", "bob", "carl"] {
        cons.grant(change(who, "marketing", None)).await.unwrap();
    }
    // Power cut now: the next operation and all after it fail.
    {
        let mut p = disk.lock();
        p.cut_at = Some(p.ops + 1);
    }
    let _ = cons.withdraw(change("anna", "marketing", None)).await;
    let _ = server.finish().await;

    let (server, _dir) = serve_in(&disk.after_power_loss(), dir).await;
    let mut elig = server.eligibility().await;
    for who in ["bob", "carl"] {
        assert!(can_send(&mut elig, who, "email", "acme").await.0, "{who}");
    }
    let anna = history(&server, "anna").await;
    assert!(!anna.is_empty() && anna[0].action() == pb::Action::Grant);
    server.stop().await;
}

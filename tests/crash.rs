//! kill -9 mid-stream: every acknowledged write is there after a restart.
//!
//! Runs the real `consentd` binary, writes from many concurrent clients,
//! sends SIGKILL while writes are in flight, restarts on the same data dir
//! and checks every acknowledged grant: visible to CanSend and in the history
//! with the sequence it was acknowledged with.

mod common;
#[path = "soak_cycles/process.rs"]
mod process;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use process::Running;

/// The binary over `data_dir` (in the PostgreSQL run, over its database),
/// the example catalog applied at start.
fn start(data_dir: &std::path::Path) -> Running {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_consentd"));
    let store = on_postgres().then(|| database_for(data_dir));
    process::start_on(
        binary,
        data_dir,
        Some(&example_catalog_path()),
        store.as_deref(),
    )
}
use consentd::pb::{self, consents_service_client::ConsentsServiceClient};
use tonic::transport::Channel;

/// The chain's part of the receipt of `contact`'s event `sequence`.
async fn chain_of_receipt(channel: &Channel, contact: &str, sequence: u64) -> serde_json::Value {
    let r = ConsentsServiceClient::new(channel.clone())
        .get_receipt(pb::GetReceiptRequest {
            contact_id: contact.into(),
            sequence,
        })
        .await
        .unwrap()
        .into_inner();
    let v: serde_json::Value = serde_json::from_str(&r.receipt_json).unwrap();
    assert!(v["chain"]["salt"].is_string(), "{v}");
    v["chain"].clone()
}

async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let channel = connect(server.grpc).await;

    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let (first_acks_tx, mut first_acks) = tokio::sync::mpsc::channel::<()>(1024);
    let mut writers = Vec::new();
    for w in 0..24 {
        let mut client = Consents(ConsentsServiceClient::new(channel.clone()));
        let acked = acked.clone();
        let tx = first_acks_tx.clone();
        writers.push(tokio::spawn(async move {
            // Bounded: stops at the first error (the kill) or after 5,000 writes.
            for i in 0..5_000 {
                let contact = format!("w{w}-{i}");
                match client.grant(change(&contact, "marketing.acme", None)).await {
                    Ok(r) => {
                        acked
                            .lock()
                            .unwrap()
                            .push((contact, r.into_inner().sequence));
                        let _ = tx.try_send(());
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    drop(first_acks_tx);
    // Kill once a few hundred writes were acknowledged, with writers in flight.
    for _ in 0..300 {
        first_acks
            .recv()
            .await
            .expect("writers stopped before the kill");
    }
    // Receipts of acknowledged grants, given out while writes go on: the
    // chain's part of each (record, salt, leaf, chain) must read the same
    // after the restart (redb replays its log with the salts it gave out).
    let given: Vec<(String, u64)> = acked.lock().unwrap()[..20].to_vec();
    let mut receipts = Vec::new();
    for (contact, sequence) in &given {
        receipts.push(chain_of_receipt(&channel, contact, *sequence).await);
    }
    server.kill();
    for w in writers {
        w.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() >= 300);

    let mut server = start(dir.path());
    let channel = connect(server.grpc).await;
    let mut elig = pb::eligibility_service_client::EligibilityServiceClient::new(channel.clone());
    let mut cons = Consents(ConsentsServiceClient::new(channel.clone()));
    for (contact, sequence) in &acked {
        let r = elig
            .can_send(check(contact, "email", "acme"))
            .await
            .unwrap()
            .into_inner();
        assert!(r.allowed, "{contact} was acknowledged but is lost");
        let h = cons
            .get_history(pb::GetHistoryRequest {
                contact_id: contact.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(h.events.len(), 1, "{contact}");
        assert_eq!(h.events[0].sequence, *sequence, "{contact}");
    }

    for ((contact, sequence), before) in given.iter().zip(&receipts) {
        let after = chain_of_receipt(&channel, contact, *sequence).await;
        assert_eq!(&after, before, "the receipt of {contact} changed");
    }

    // A graceful stop: SIGTERM, clean exit.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

//! A data dir on a real, small filesystem filled until the disk is full
//! (DESIGN.md rule 6): the server stops instead of answering on, and after
//! the filesystem grows and the server restarts, every acknowledged grant
//! is there.
//!
//! Mounting needs root (a tmpfs of a few MiB); elsewhere the test prints
//! SKIPPED. The injected faults of `fail_stop.rs` run everywhere.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A tmpfs mounted for the test, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { path, _dir: dir })
    }

    fn grow(&self, mib: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m"), "tmpfs"])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "remount failed");
    }

    fn data_dir(&self) -> &Path {
        &self.path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_server_and_loses_nothing_acknowledged() {
    let Some(disk) = SmallDisk::mount(4) else {
        println!("SKIPPED: cannot mount a small tmpfs here (needs root)");
        return;
    };
    let server = TestServer::start_in(disk.data_dir(), Some(example_catalog_path())).await;

    // Eight writers grant until the server refuses; each keeps the contacts
    // whose grant was acknowledged.
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut cons = server.consents().await;
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0.. {
                let contact = format!("w{w}-contact-{i:06}-{}", "x".repeat(64));
                let mut c = change(&contact, "marketing", None);
                c.evidence = [("form".to_string(), "y".repeat(512))].into();
                match cons.grant(c).await {
                    Ok(r) => {
                        assert!(r.into_inner().applied);
                        acknowledged.push(contact);
                    }
                    Err(status) => return (acknowledged, status),
                }
            }
            unreachable!()
        }));
    }
    let mut acknowledged = Vec::new();
    for w in writers {
        let (mine, status) = w.await.unwrap();
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ),
            "{status:?}"
        );
        acknowledged.extend(mine);
    }
    assert!(
        acknowledged.len() > 100,
        "only {} grants fit",
        acknowledged.len()
    );

    // The server stopped on its own, with an error naming the disk.
    let err = tokio::time::timeout(Duration::from_secs(30), server.finish())
        .await
        .expect("the server stops")
        .expect_err("a full disk is an error exit");
    assert!(
        format!("{err:#}").to_lowercase().contains("space"),
        "{err:#}"
    );

    // More space, a restart: everything acknowledged is there.
    disk.grow(64);
    let server = TestServer::start_in(disk.data_dir(), None).await;
    let mut elig = server.eligibility().await;
    for contact in &acknowledged {
        let (allowed, _, _) = can_send(&mut elig, contact, "email", "acme").await;
        assert!(allowed, "{contact} was acknowledged and is lost");
    }
    // And it takes writes again.
    let mut cons = server.consents().await;
    cons.grant(change("after-the-disk-grew", "marketing", None))
        .await
        .unwrap();
    server.stop().await;
    println!("{} acknowledged grants held", acknowledged.len());
}

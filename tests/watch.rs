//! Watch (DESIGN.md §10): every committed record after a sequence, in
//! sequence order, exactly once within a stream, resumable (also after a
//! restart), with checkpoints; an erasure is a keyed hash and the erased
//! contact's events are not streamed to a consumer that starts after it;
//! bad requests name the field; a consumer that does not read is ended
//! with RESOURCE_EXHAUSTED and resumes.

mod common;

use std::time::Duration;

use common::*;
use consentd::pb::{self, changes_service_client::ChangesServiceClient, watch_response::Change};
use tonic::Code;

async fn changes(server: &TestServer) -> ChangesServiceClient<tonic::transport::Channel> {
    ChangesServiceClient::new(server.channel().await)
}

/// Reads a stream until a checkpoint at or past `until`; returns the
/// records before it (checkpoints left out) and that checkpoint's sequence.
async fn read_until(
    stream: &mut tonic::Streaming<pb::WatchResponse>,
    until: u64,
) -> (Vec<Change>, u64) {
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a record or a checkpoint within 10 s")
            .unwrap()
            .expect("the stream goes on");
        match next.change.unwrap() {
            Change::Checkpoint(c) if c.sequence >= until => return (out, c.sequence),
            Change::Checkpoint(_) => {}
            other => out.push(other),
        }
    }
}

fn sequence(c: &Change) -> u64 {
    match c {
        Change::Event(e) => e.sequence,
        Change::Erasure(e) => e.sequence,
        Change::Address(a) => a.sequence,
        Change::Catalog(c) => c.sequence,
        Change::Checkpoint(c) => c.sequence,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_once_in_order_resumable_and_an_erasure_names_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let mut cons = server.consents().await;
    let mut last = 0;
    for who in ["ann", "bob", "cat"] {
        last = cons
            .grant(change(who, "marketing", Some(now() - 60)))
            .await
            .unwrap()
            .into_inner()
            .sequence;
    }
    // A stream from the beginning: the catalog the server started with,
    // three events, then a checkpoint.
    let mut stream = watch_from(&server, 0).await;
    let (first, at) = read_until(&mut stream, last).await;
    assert_eq!(first.len(), 4);
    assert!(matches!(&first[0], Change::Catalog(c) if c.sequence == 1 && c.version == 1));
    assert!(first[1..].iter().all(|c| matches!(c, Change::Event(_))));
    assert_eq!(at, last);
    // Live: a withdrawal, an address record, an erasure arrive in order.
    let w = cons
        .withdraw(change("ann", "marketing", None))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    let set = cons
        .set_addresses(pb::SetAddressesRequest {
            contact_id: "bob".into(),
            addresses: vec![pb::Address {
                kind: pb::AddressKind::Email as i32,
                value: "bob@example.com".into(),
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .sequence;
    cons.erase_contact(pb::EraseContactRequest {
        contact_id: "cat".into(),
        reason: "request".into(),
    })
    .await
    .unwrap();
    let after = cons
        .grant(change("dan", "surveys", None))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    let (live, _) = read_until(&mut stream, after).await;
    let seqs: Vec<u64> = live.iter().map(sequence).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    assert_eq!(seqs.len(), 4, "{live:?}");
    assert_eq!(seqs[0], w);
    match &live[1] {
        Change::Address(a) => {
            assert_eq!(a.sequence, set);
            assert_eq!(a.kind(), pb::EventKind::AddressAdded);
            assert_eq!(a.contact_id, "bob");
            assert_eq!(a.address.as_ref().unwrap().value, "bob@example.com");
            assert_eq!(a.address_hash.len(), 32);
        }
        other => panic!("an address record, not {other:?}"),
    }
    match &live[2] {
        Change::Erasure(e) => {
            assert_eq!(e.contact_hash.len(), 32);
            assert!(!format!("{e:?}").contains("cat"));
        }
        other => panic!("an erasure, not {other:?}"),
    }
    assert_eq!(seqs[3], after);
    drop(stream);

    // A consumer starting after the erasure never sees Cat's events; one
    // resuming from the middle gets the rest, each once.
    let mut stream = watch_from(&server, 0).await;
    let (replay, _) = read_until(&mut stream, after).await;
    for c in &replay {
        if let Change::Event(e) = c {
            assert_ne!(e.contact_id, "cat", "an erased contact's events are gone");
        }
    }
    let resumed_from = sequence(&replay[1]);
    let mut stream = watch_from(&server, resumed_from).await;
    let (rest, _) = read_until(&mut stream, after).await;
    assert_eq!(
        rest.iter().map(sequence).collect::<Vec<_>>(),
        replay[2..].iter().map(sequence).collect::<Vec<_>>()
    );
    drop(stream);

    // After a restart the sequences stand: resuming loses and repeats nothing.
    server.stop().await;
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let mut stream = watch_from(&server, resumed_from).await;
    let (again, _) = read_until(&mut stream, after).await;
    assert_eq!(
        again.iter().map(sequence).collect::<Vec<_>>(),
        replay[2..].iter().map(sequence).collect::<Vec<_>>()
    );
    // The next commit takes a sequence past the erasure's.
    let next = server
        .consents()
        .await
        .grant(change("eve", "marketing", None))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    assert!(next > after);
    let (tail, _) = read_until(&mut stream, next).await;
    assert_eq!(tail.iter().map(sequence).collect::<Vec<_>>(), vec![next]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purposes_filter_decisions_and_bad_requests_name_the_field() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    cons.grant(change("ann", "marketing.acme", None))
        .await
        .unwrap();
    let last = cons
        .grant(change("ann", "surveys", None))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    let mut watch = changes(&server).await;
    let mut stream = watch
        .watch(pb::WatchRequest {
            from_sequence: 0,
            purposes: vec!["surveys".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let (only, _) = read_until(&mut stream, last).await;
    assert_eq!(only.len(), 2, "{only:?}");
    assert!(
        matches!(only[0], Change::Catalog(_)),
        "catalogs always come"
    );
    match &only[1] {
        Change::Event(e) => assert_eq!(e.consent_id, "surveys"),
        other => panic!("{other:?}"),
    }
    for (request, field) in [
        (
            pb::WatchRequest {
                from_sequence: last + 100,
                purposes: vec![],
            },
            "from_sequence",
        ),
        (
            pb::WatchRequest {
                from_sequence: 0,
                purposes: vec!["marketing.acme".into()],
            },
            "purposes[0]",
        ),
    ] {
        let e = watch.watch(request).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_checkpoints_and_a_consumer_that_does_not_read_is_ended() {
    let server = TestServer::start().await;
    // Idle: checkpoints keep coming, at least every 5 s.
    let mut stream = watch_from(&server, 0).await;
    let started = std::time::Instant::now();
    let mut checkpoints = 0;
    while checkpoints < 2 {
        let next = tokio::time::timeout(Duration::from_secs(7), stream.message())
            .await
            .expect("a checkpoint within 7 s")
            .unwrap()
            .unwrap();
        if let Some(Change::Checkpoint(_)) = next.change {
            checkpoints += 1;
        }
    }
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "the second one waits"
    );
    drop(stream);

    // A consumer that opens a stream and does not read while 30,000 records
    // are committed (more than the stream's buffer and the transport's
    // windows hold) is ended with RESOURCE_EXHAUSTED; it resumes from the
    // last sequence it got.
    let mut lazy = watch_from(&server, 0).await;
    let mut import = server.consents().await;
    const ROWS: u64 = 30_000;
    let rows = (0..ROWS).map(|i| pb::ImportRequest {
        action: pb::Action::Grant as i32,
        change: Some(change(&format!("bulk-{i}"), "marketing", Some(now() - 60))),
    });
    import.import(tokio_stream::iter(rows)).await.unwrap();
    // A stream waits 5 s for a consumer that takes nothing.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let mut got = 0u64;
    let mut last = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), lazy.message())
            .await
            .expect("the stream ends or goes on")
        {
            Ok(Some(r)) => {
                got += 1;
                assert!(got <= ROWS + 10, "never ended");
                if let Some(Change::Event(e)) = r.change {
                    last = e.sequence;
                }
            }
            Ok(None) => panic!("ended without a status after {got} records"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(got < ROWS, "it got {got} before it was ended");
    // The catalog the server started with took sequence 1.
    let head = ROWS + 1;
    let mut resumed = watch_from(&server, last).await;
    let (rest, _) = read_until(&mut resumed, head).await;
    assert_eq!(rest.len() as u64 + last, head, "the rest, once");

    // A consumer that reads slowly (a pause of 300 ms every 3,000 records,
    // as a sync job writing batches) is waited for, never cut off.
    let mut slow = watch_from(&server, 0).await;
    let mut got = 0u64;
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), slow.message())
            .await
            .expect("a record within 10 s")
            .expect("never ended")
            .expect("the stream goes on");
        match r.change {
            Some(Change::Checkpoint(c)) if c.sequence >= head => break,
            Some(Change::Checkpoint(_)) | None => {}
            Some(_) => got += 1,
        }
        if got.is_multiple_of(3_000) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert_eq!(got, head, "every record, the catalog's too");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consentctl_watch_prints_json_lines_and_resumes_from_a_sequence() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    let mut sequences = Vec::new();
    for who in ["ann", "bob", "cat"] {
        sequences.push(
            cons.grant(change(who, "marketing", None))
                .await
                .unwrap()
                .into_inner()
                .sequence,
        );
    }
    let run = |from: u64| {
        let from = from.to_string();
        let (ok, out, err) = consentctl(
            &server,
            &["watch", "--from", &from, "--until-caught-up"],
            &[],
        );
        assert!(ok, "{err}");
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let lines = run(0);
    assert_eq!(
        lines.len(),
        5,
        "the catalog, three events and a checkpoint: {lines:?}"
    );
    assert_eq!(lines[0]["type"], "catalog");
    assert_eq!(lines[1]["type"], "event");
    assert_eq!(lines[1]["contact_id"], "ann");
    assert_eq!(lines[4]["type"], "checkpoint");
    assert_eq!(lines[4]["sequence"], sequences[2]);
    // From the first event on: the other two, then the checkpoint.
    let rest = run(sequences[0]);
    assert_eq!(
        rest.iter()
            .filter(|l| l["type"] == "event")
            .map(|l| l["sequence"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        sequences[1..].to_vec()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_applied_takes_its_place_in_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let mut cons = server.consents().await;
    let before = cons
        .grant(change("ann", "marketing", None))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    reword(&server, "marketing.acme", "Acme news, reworded.").await;
    let after = cons
        .grant(change("bob", "marketing.acme", None))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    assert_eq!(after, before + 2, "the catalog took the sequence between");
    let (all, _) = read_until(&mut watch_from(&server, 0).await, after).await;
    let catalogs: Vec<&pb::CatalogVersion> = all
        .iter()
        .filter_map(|c| match c {
            Change::Catalog(c) => Some(c),
            _ => None,
        })
        .collect();
    // The catalog file at start, then the rewording.
    assert_eq!(catalogs.len(), 2, "{all:?}");
    assert_eq!(catalogs[1].sequence, before + 1);
    assert_eq!(catalogs[1].version, catalogs[0].version + 1);
    let order: Vec<u64> = all.iter().map(sequence).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    // Resumed from the catalog's sequence: only what came after it.
    let (rest, _) = read_until(&mut watch_from(&server, before + 1).await, after).await;
    assert_eq!(rest.len(), 1);
    assert_eq!(sequence(&rest[0]), after);
    // After a restart (the catalog file applied again only if it changed).
    let dir = server.stop().await.unwrap_or(dir);
    let server = TestServer::start_in(dir.path(), None).await;
    let (again, _) = read_until(&mut watch_from(&server, 0).await, after).await;
    assert_eq!(again, all, "the same records, in the same places");
    server.finish().await.unwrap();
}

//! Reading out (DESIGN.md §10), against a running consentd:
//!
//! ```text
//! cargo bench --bench watch [-- --contacts 1000000 --consumers 10 --slow 100]
//! ```
//!
//! Starts consentd in process (temp data dir, examples/catalog.toml, redb),
//! imports `--contacts` grants (one contact each), then measures:
//! 1. Watch from 0 to the head, one consumer: events/s;
//! 2. the same with `--consumers` at once: events/s each and in all;
//! 3. propagation: a consumer at the head while 32 writers grant for
//!    `--seconds`; for each event, the time from its `recorded_at` (taken
//!    by the writer before the group commit) to its arrival at the
//!    consumer: p50/p99 (it includes the commit's fsync);
//! 4. memory per slow consumer: `--slow` streams from 0 that never read:
//!    the resident memory (server and client: one process) before and
//!    while they wait with full buffers, divided by their number; then,
//!    past the stall limit, each is ended (RESOURCE_EXHAUSTED once read);
//! 5. ExportStates of every state (the snapshot): seconds and states/s;
//! 6. as-of: CanSend and GetContact `as_of` for a contact with 100 events,
//!    one call at a time: p50/p99.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use clap::Parser;
use consentd::pb::{
    self, changes_service_client::ChangesServiceClient,
    consents_service_client::ConsentsServiceClient,
    eligibility_service_client::EligibilityServiceClient, watch_response::Change,
};
use hdrhistogram::Histogram;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Contacts imported first (one grant each).
    #[arg(long, default_value_t = 1_000_000)]
    contacts: u64,
    /// Consumers reading the whole feed at once (phase 2).
    #[arg(long, default_value_t = 10)]
    consumers: usize,
    /// Streams that never read (phase 4).
    #[arg(long, default_value_t = 100)]
    slow: usize,
    /// Seconds of the propagation and as-of phases.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn nanos_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn nanos(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref()
        .map_or(0, |t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
}

fn timestamp(n: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: n.div_euclid(1_000_000_000),
        nanos: n.rem_euclid(1_000_000_000) as i32,
    }
}

/// Reads a Watch from `from` until a checkpoint at or past `until`; the
/// events it carried.
async fn drain(channel: tonic::transport::Channel, from: u64, until: u64) -> u64 {
    let mut watch = ChangesServiceClient::new(channel);
    let mut stream = watch
        .watch(pb::WatchRequest {
            from_sequence: from,
            purposes: vec![],
        })
        .await
        .expect("watch")
        .into_inner();
    let mut events = 0;
    while let Some(m) = stream.message().await.expect("the stream goes on") {
        match m.change {
            Some(Change::Checkpoint(c)) if c.sequence >= until => return events,
            Some(Change::Checkpoint(_)) | None => {}
            Some(_) => events += 1,
        }
    }
    events
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server_rt = support::runtime("server")?;
    let client_rt = support::runtime("client")?;
    let dir = tempfile::tempdir()?;
    let mut config = consentd::Config::ephemeral(dir.path());
    config.catalog = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/catalog.toml").into());
    let addr = support::serve(&server_rt, &config)?.0;
    println!(
        "consentd watch: {addr}, {} contacts, {} cores",
        args.contacts,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    client_rt.block_on(async move {
        let channel = support::channels(addr, 1).await.remove(0);
        let mut consents = ConsentsServiceClient::new(channel.clone());
        let started = Instant::now();
        let rows = args.contacts;
        let stream = tokio_stream::iter((0..rows).map(|i| support::import_row(i, "watch")));
        consents.import(stream).await.expect("import");
        println!(
            "import of {rows} grants: {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let head = consents
            .grant(pb::GrantRequest {
                contact_id: "head".into(),
                consent_id: "marketing".into(),
                ..Default::default()
            })
            .await
            .expect("grant")
            .into_inner()
            .sequence;

        // 1. One consumer, the whole feed.
        let started = Instant::now();
        let events = drain(channel.clone(), 0, head).await;
        let s = started.elapsed().as_secs_f64();
        println!(
            "Watch, 1 consumer, from 0:          {:>10.0} events/s ({events} events in {s:.2} s)",
            events as f64 / s
        );

        // 2. Many consumers at once, each on its own connection.
        let channels = support::channels(addr, args.consumers).await;
        let started = Instant::now();
        let tasks: Vec<_> = channels
            .into_iter()
            .map(|c| tokio::spawn(drain(c, 0, head)))
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("consumer");
        }
        let s = started.elapsed().as_secs_f64();
        println!(
            "Watch, {} consumers, from 0:        {:>10.0} events/s each, {:.0} in all ({s:.2} s)",
            args.consumers,
            total as f64 / s / args.consumers as f64,
            total as f64 / s
        );

        // 3. Propagation: a consumer at the head while writers grant.
        let mut watch = ChangesServiceClient::new(support::channels(addr, 1).await.remove(0));
        let mut tail = watch
            .watch(pb::WatchRequest {
                from_sequence: head,
                purposes: vec![],
            })
            .await
            .expect("watch")
            .into_inner();
        let consumer = tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).unwrap();
            while let Ok(Some(m)) = tail.message().await {
                if let Some(Change::Event(e)) = m.change {
                    if e.contact_id == "stop" {
                        break;
                    }
                    let _ = hist.record((nanos_now() - nanos(&e.recorded_at)).max(1_000) as u64);
                }
            }
            hist
        });
        let writers = support::channels(addr, 4).await;
        let grants = support::closed_loop(32, args.seconds, move |t, i| {
            let mut c = ConsentsServiceClient::new(writers[t % writers.len()].clone());
            async move {
                c.grant(pb::GrantRequest {
                    contact_id: format!("live-{t}-{i}"),
                    consent_id: "marketing".into(),
                    ..Default::default()
                })
                .await
                .map(|_| 1)
            }
        })
        .await;
        consents
            .grant(pb::GrantRequest {
                contact_id: "stop".into(),
                consent_id: "marketing".into(),
                ..Default::default()
            })
            .await
            .expect("grant");
        let hist = consumer.await.expect("consumer");
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e6;
        println!("{}", grants.line("Grants meanwhile (32 writers)", "grants"));
        println!(
            "Propagation, recorded → consumer:   p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} events)",
            ms(0.5),
            ms(0.99),
            hist.max() as f64 / 1e6,
            hist.len()
        );

        // 4. Slow consumers: streams that never read. Live heap (jemalloc's
        // count of allocated bytes), not RSS: freed memory stays resident.
        let allocated = || {
            let _ = tikv_jemalloc_ctl::epoch::advance();
            tikv_jemalloc_ctl::stats::allocated::read().unwrap_or(0) as f64
        };
        let before = allocated();
        let slow_channels = support::channels(addr, args.slow.min(50)).await;
        let mut slow = Vec::new();
        for i in 0..args.slow {
            let mut w = ChangesServiceClient::new(slow_channels[i % slow_channels.len()].clone());
            slow.push(
                w.watch(pb::WatchRequest {
                    from_sequence: 0,
                    purposes: vec![],
                })
                .await
                .expect("watch")
                .into_inner(),
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let during = allocated();
        // Past the stall limit: each is ended, its buffer freed.
        tokio::time::sleep(consentd::authority::STALL + Duration::from_secs(2)).await;
        println!(
            "{} slow consumers (never read):     {:.0} KiB each while they wait (heap {:.0} → {:.0} MiB, server and client in one process)",
            args.slow,
            (during - before) / 1024.0 / args.slow as f64,
            before / 1048576.0,
            during / 1048576.0
        );
        let mut ended = 0;
        for mut s in slow {
            loop {
                match s.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        if e.code() == tonic::Code::ResourceExhausted {
                            ended += 1;
                        }
                        break;
                    }
                }
            }
        }
        drop(slow_channels);
        println!(
            "  of which ended with RESOURCE_EXHAUSTED once read: {ended}; heap after: {:.0} MiB",
            allocated() / 1048576.0
        );

        // 5. The snapshot.
        let started = Instant::now();
        let mut stream = consents
            .export_states(pb::ExportStatesRequest { purposes: vec![] })
            .await
            .expect("export")
            .into_inner();
        let (mut contacts, mut states) = (0u64, 0u64);
        while let Some(row) = stream.message().await.expect("row") {
            if row.complete {
                break;
            }
            contacts += 1;
            states += row.states.len() as u64;
        }
        let s = started.elapsed().as_secs_f64();
        println!(
            "ExportStates:                       {s:.2} s for {states} states of {contacts} contacts ({:.0} states/s)",
            states as f64 / s
        );

        // 6. As-of for a contact with 100 events.
        let mut times = Vec::new();
        for i in 0..100 {
            let change = pb::GrantRequest {
                contact_id: "hundred".into(),
                consent_id: "marketing.acme".into(),
                occurred_at: Some(timestamp(nanos_now() - 86_400_000_000_000 + i)),
                ..Default::default()
            };
            if i % 2 == 0 {
                consents.grant(change).await.expect("grant");
            } else {
                consents
                    .withdraw(pb::WithdrawRequest {
                        contact_id: change.contact_id,
                        consent_id: change.consent_id,
                        occurred_at: change.occurred_at,
                        ..Default::default()
                    })
                    .await
                    .expect("withdraw");
            }
            times.push(nanos_now());
        }
        let mid = times[49];
        let ch = channel.clone();
        let check = support::closed_loop(1, args.seconds, move |_, _| {
            let mut e = EligibilityServiceClient::new(ch.clone());
            async move {
                e.can_send(pb::CanSendRequest {
                    contact_id: "hundred".into(),
                    channel: "email".into(),
                    brand: "acme".into(),
                    as_of: Some(timestamp(mid)),
                    ..Default::default()
                })
                .await
                .map(|_| 1)
            }
        })
        .await;
        println!("{}", check.line("CanSend as_of, 100 events", "calls"));
        let ch = channel.clone();
        let read = support::closed_loop(1, args.seconds, move |_, _| {
            let mut c = ConsentsServiceClient::new(ch.clone());
            async move {
                c.get_contact(pb::GetContactRequest {
                    contact_id: "hundred".into(),
                    as_of: Some(timestamp(mid)),
                    ..Default::default()
                })
                .await
                .map(|_| 1)
            }
        })
        .await;
        println!("{}", read.line("GetContact as_of, 100 events", "calls"));
    });
    Ok(())
}

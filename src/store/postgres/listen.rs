//! The change feed's wake-up: one connection LISTENs on the feed's channel
//! and wakes the node's feed at every commit. A notice carries nothing (no
//! contact, no hash): it only says "read the feed now". A notice missed
//! costs at most the feed's idle wait, never a change: the feed reads the
//! store by sequence.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::FEED_CHANNEL;
use super::decode::pg;
use crate::store::StoreError;

/// The notices of the change feed, as heard by a connection that LISTENs.
#[derive(Debug, Default)]
pub(super) struct Ears {
    lock: Mutex<()>,
    /// Told with every notice, so that a waiting node wakes.
    woke: Condvar,
    /// Notices since the node last asked.
    pending: AtomicUsize,
}

impl Ears {
    fn hear(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.woke.notify_all();
    }

    /// Waits for a notice (one heard since the last call counts), at most
    /// `timeout`.
    pub(super) fn wait(&self, timeout: Duration) {
        let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.pending.load(Ordering::SeqCst) == 0 {
            let _ = self
                .woke
                .wait_timeout_while(guard, timeout, |_| self.pending.load(Ordering::SeqCst) == 0)
                .unwrap_or_else(|e| e.into_inner());
        }
        self.pending.store(0, Ordering::SeqCst);
    }
}

/// Keeps one connection LISTENing on the feed's channel, reconnecting with
/// backoff; `ready` is told once the first LISTEN holds.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    ears: Arc<Ears>,
    ready: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
) {
    use futures_util::StreamExt;
    let mut ready = Some(ready);
    let mut backoff = Duration::from_secs(1);
    loop {
        let outcome = async {
            let (client, mut connection) = config.connect(tls.clone()).await?;
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let driver = tokio::spawn(async move {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(Ok(message)) = messages.next().await {
                    if let tokio_postgres::AsyncMessage::Notification(_) = message {
                        let _ = tx.send(());
                    }
                }
            });
            client
                .batch_execute(&format!("LISTEN {FEED_CHANNEL}"))
                .await?;
            Ok::<_, tokio_postgres::Error>((client, driver, rx))
        }
        .await;
        match outcome {
            Ok((client, driver, mut rx)) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                }
                backoff = Duration::from_secs(1);
                while rx.recv().await.is_some() {
                    ears.hear();
                }
                let _ = driver.await;
                drop(client);
            }
            Err(e) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(pg(e, false)));
                    return;
                }
            }
        }
        // Until the next LISTEN holds, notices are missed: read now, then
        // every idle wait.
        tracing::warn!("the change feed's listening connection dropped; reconnecting");
        ears.hear();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(8));
    }
}

//! How far this node's index has caught up with the store: every change up
//! to [`Applied::get`] is reflected in what it answers. Freshness tokens
//! (`min_sequence`) wait on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The applied sequence, and a wake-up for those waiting on it.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    sequence: AtomicU64,
    changed: Notify,
}

impl Applied {
    /// Every change up to this sequence is applied.
    pub(crate) fn get(&self) -> u64 {
        self.sequence.load(Ordering::Acquire)
    }

    /// Records that every change up to `to` is applied (never goes back).
    pub(crate) fn advance(&self, to: u64) {
        if self.sequence.fetch_max(to, Ordering::AcqRel) < to {
            self.changed.notify_waiters();
        }
    }

    /// Waits until `target` is applied, at most `within`; `Err` with the
    /// sequence reached when it is not.
    pub(crate) async fn reach(&self, target: u64, within: Duration) -> Result<(), u64> {
        if self.get() >= target {
            return Ok(());
        }
        let wait = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                // Registered before the check: no advance slips between.
                changed.as_mut().enable();
                if self.get() >= target {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .map_err(|_| self.get())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_waiter_is_woken_by_the_advance_it_waits_for_and_times_out_otherwise() {
        let applied = Arc::new(Applied::default());
        applied.advance(5);
        assert_eq!(applied.reach(5, Duration::ZERO).await, Ok(()));
        let waiter = tokio::spawn({
            let a = applied.clone();
            async move { a.reach(9, Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        applied.advance(7);
        applied.advance(3); // never goes back
        assert_eq!(applied.get(), 7);
        applied.advance(9);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(
            applied.reach(10, Duration::from_millis(20)).await,
            Err(9),
            "not reached: says how far it got"
        );
    }
}

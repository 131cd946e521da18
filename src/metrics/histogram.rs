//! The latency histograms `/metrics` shows: fixed buckets of relaxed
//! atomics, read into snapshots that add up over a thread's stripes and
//! render as Prometheus series (labelled or not).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds: 50 µs to 1 s.
const BUCKETS_MICROS: [u64; 13] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// A Prometheus histogram of latencies: a few relaxed atomic adds per
/// observation, no lock, no allocation.
#[derive(Default)]
pub(crate) struct Histogram {
    /// Observations at or below each bound; the last slot is +Inf.
    buckets: [AtomicU64; BUCKETS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub(crate) fn observe(&self, took: Duration) {
        let micros = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let slot = BUCKETS_MICROS
            .iter()
            .position(|&b| micros <= b)
            .unwrap_or(BUCKETS_MICROS.len());
        self.buckets[slot].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    /// Bucket counts (not cumulative) and the sum, in microseconds.
    pub(super) fn snapshot(&self) -> Snapshot {
        Snapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum_micros: self.sum_micros.load(Relaxed),
        }
    }

    pub(super) fn render(&self, out: &mut String, name: &str, help: &str) {
        self.snapshot().render(out, name, help);
    }
}

/// What a [`Histogram`] held when read; adds up over stripes.
#[derive(Default)]
pub(super) struct Snapshot {
    buckets: [u64; BUCKETS_MICROS.len() + 1],
    sum_micros: u64,
}

impl Snapshot {
    pub(super) fn add(mut self, other: Snapshot) -> Snapshot {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_micros += other.sum_micros;
        self
    }

    pub(super) fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(out, name, "");
    }

    /// One series of a histogram, its labels (`key="value",`) first.
    pub(super) fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket;
            match BUCKETS_MICROS.get(i) {
                Some(&b) => {
                    let le = b as f64 / 1e6;
                    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_micros as f64 / 1e6;
        let braced = labels.trim_end_matches(',');
        let braced = if braced.is_empty() {
            String::new()
        } else {
            format!("{{{braced}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braced} {sum}\n{name}_count{braced} {cumulative}"
        );
    }
}

//! Counters for `GET /metrics` (Prometheus text format).
//!
//! Plain relaxed atomics: the hot path counts, it never logs. A handful of
//! fixed series does not justify a metrics framework and its per-call
//! label lookups.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

mod histogram;

pub(crate) use histogram::Histogram;
use histogram::Snapshot;

use crate::domain::Verdict;
use crate::store::CommitPhases;

/// CanSend answers counted locally (over a batch) before touching the
/// shared counters.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    granted: u64,
    withdrawn: u64,
    no_consent: u64,
    not_covered: u64,
    invalid: u64,
    pending_confirmation: u64,
    expired: u64,
    stale_wording: u64,
    address_withdrawn: u64,
    undeliverable: u64,
}

impl Tally {
    /// Counts one answered check by its verdict.
    pub(crate) fn verdict(&mut self, v: Verdict) {
        *match v {
            Verdict::Granted { .. } => &mut self.granted,
            Verdict::Withdrawn { .. } => &mut self.withdrawn,
            Verdict::NoConsent => &mut self.no_consent,
            Verdict::NotCovered => &mut self.not_covered,
            Verdict::PendingConfirmation => &mut self.pending_confirmation,
            Verdict::Expired => &mut self.expired,
            Verdict::StaleWording => &mut self.stale_wording,
            Verdict::AddressWithdrawn { .. } => &mut self.address_withdrawn,
            Verdict::Undeliverable { .. } => &mut self.undeliverable,
        } += 1;
    }

    /// Counts one check refused as invalid.
    pub(crate) fn invalid(&mut self) {
        self.invalid += 1;
    }

    /// The counts in [`REASONS`] order.
    fn counts(&self) -> [u64; REASONS.len()] {
        [
            self.granted,
            self.withdrawn,
            self.no_consent,
            self.not_covered,
            self.invalid,
            self.pending_confirmation,
            self.expired,
            self.stale_wording,
            self.address_withdrawn,
            self.undeliverable,
        ]
    }
}

/// The `reason` label of `consentd_decisions_total`, in [`Tally::counts`]
/// order.
const REASONS: [&str; 10] = [
    "granted",
    "withdrawn",
    "no_consent",
    "not_covered",
    "invalid",
    "pending_confirmation",
    "expired",
    "stale_wording",
    "address_withdrawn",
    "undeliverable",
];

/// Stripes of the CanSend counters. Every CanSend counts its answer and
/// its time: one counter shared by every core would move its cache line
/// from core to core on every call. Each thread adds to a stripe of its
/// own instead (threads take stripes in turn as they first count; more
/// threads than stripes share, still correctly), and a scrape sums them.
const STRIPES: usize = 16;

/// One stripe: a thread's CanSend answers by reason and handler times, on
/// cache lines of their own.
#[derive(Default)]
#[repr(align(128))]
struct CheckStripe {
    decisions: [AtomicU64; REASONS.len()],
    seconds: Histogram,
}

/// This thread's stripe.
fn stripe() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// Why a call was refused to keep the server within bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Shed {
    /// Its deadline passed while it waited for the writer.
    Deadline,
    /// The writer's queue was full.
    QueueFull,
    /// Too many imports were running.
    Imports,
}

#[derive(Default)]
pub(crate) struct Metrics {
    /// CanSend answers by reason, and CanSend and CanSendBatch handler
    /// times, striped by thread.
    checks: Box<[CheckStripe; STRIPES]>,
    /// Grant and Withdraw calls: queue, ruling, commit, reply.
    pub(crate) write_seconds: Histogram,
    /// One group commit: ruling and the store transaction.
    pub(crate) commit_seconds: Histogram,
    /// A group commit, step by step ([`CommitPhases::steps`]).
    commit_phase_seconds: [Histogram; 6],
    /// A shared store's change feed: from an event's recording (on any
    /// node) to this node applying it.
    pub(crate) feed_delay_seconds: Histogram,
    /// Grants taken as pending, and confirmation links sent for them.
    pending_grants: AtomicU64,
    confirmation_links: AtomicU64,
    /// Clicks on confirmation pages: confirmed, "this wasn't me".
    confirmations: AtomicU64,
    not_me: AtomicU64,
    /// Changes recorded through the preference center.
    preference_changes: AtomicU64,
    commits: AtomicU64,
    committed_changes: AtomicU64,
    commit_micros: AtomicU64,
    commit_failures: AtomicU64,
    unsubscribes: AtomicU64,
    imported_rows: AtomicU64,
    erasures: AtomicU64,
    purges: AtomicU64,
    purge_micros: AtomicU64,
    store_failures: AtomicU64,
    store_unavailable: AtomicU64,
    shed_deadline: AtomicU64,
    shed_queue_full: AtomicU64,
    shed_imports: AtomicU64,
}

impl Metrics {
    /// Adds a tally of answers: one add per reason, not per check, on
    /// this thread's stripe.
    pub(crate) fn decisions(&self, t: &Tally) {
        let stripe = &self.checks[stripe()].decisions;
        for (counter, n) in stripe.iter().zip(t.counts()) {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
    }

    /// Counts the handler time of one CanSend or CanSendBatch call.
    pub(crate) fn check_took(&self, took: Duration) {
        self.checks[stripe()].seconds.observe(took);
    }

    pub(crate) fn commit(&self, changes: usize, took: Duration) {
        self.commit_seconds.observe(took);
        self.commits.fetch_add(1, Relaxed);
        self.committed_changes.fetch_add(changes as u64, Relaxed);
        self.commit_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// Counts where a group commit spent its time; a step the store does
    /// not take (zero: redb has no BEGIN, lock or view) is not counted.
    pub(crate) fn commit_phases(&self, phases: &CommitPhases) {
        for (h, (_, took)) in self.commit_phase_seconds.iter().zip(phases.steps()) {
            if !took.is_zero() {
                h.observe(took);
            }
        }
    }

    pub(crate) fn commit_failed(&self) {
        self.commit_failures.fetch_add(1, Relaxed);
    }

    /// A confirmed unsubscribe click (page or RFC 8058 one-click POST).
    pub(crate) fn unsubscribed(&self) {
        self.unsubscribes.fetch_add(1, Relaxed);
    }

    /// A grant taken as pending; `link` when a confirmation link went out.
    pub(crate) fn pending_grant(&self, link: bool) {
        self.pending_grants.fetch_add(1, Relaxed);
        if link {
            self.confirmation_links.fetch_add(1, Relaxed);
        }
    }

    /// A click on a confirmation page that recorded something.
    pub(crate) fn confirmation_click(&self, not_me: bool) {
        if not_me {
            self.not_me.fetch_add(1, Relaxed);
        } else {
            self.confirmations.fetch_add(1, Relaxed);
        }
    }

    /// Changes recorded by one preference-center form.
    pub(crate) fn preference_changes(&self, n: u64) {
        self.preference_changes.fetch_add(n, Relaxed);
    }

    pub(crate) fn imported(&self, rows: u64) {
        self.imported_rows.fetch_add(rows, Relaxed);
    }

    /// A call refused to keep the server within bounds.
    pub(crate) fn shed(&self, reason: Shed) {
        let c = match reason {
            Shed::Deadline => &self.shed_deadline,
            Shed::QueueFull => &self.shed_queue_full,
            Shed::Imports => &self.shed_imports,
        };
        c.fetch_add(1, Relaxed);
    }

    /// A store failure that stopped writing (fail-stop).
    pub(crate) fn store_failed(&self) {
        self.store_failures.fetch_add(1, Relaxed);
    }

    /// The store became unreachable (writes pause until it answers).
    pub(crate) fn store_unavailable(&self) {
        self.store_unavailable.fetch_add(1, Relaxed);
    }

    /// A purge of erased contacts from the data files, and its pause.
    pub(crate) fn purged(&self, took: Duration) {
        self.purges.fetch_add(1, Relaxed);
        self.purge_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
    }

    pub(crate) fn erased(&self) {
        self.erasures.fetch_add(1, Relaxed);
    }

    /// Renders every series; `contacts` is read from the index and
    /// `queue_depth` from the writer at scrape time.
    pub(crate) fn render(
        &self,
        contacts: usize,
        queue_depth: usize,
        applied: u64,
        lag: (u64, Duration),
        unreadable: u64,
    ) -> String {
        let mut out = String::with_capacity(4096);
        let checks = self
            .checks
            .iter()
            .fold(Snapshot::default(), |sum, s| sum.add(s.seconds.snapshot()));
        checks.render(
            &mut out,
            "consentd_can_send_seconds",
            "CanSend and CanSendBatch calls, handler time.",
        );
        self.write_seconds.render(
            &mut out,
            "consentd_write_seconds",
            "Grant and Withdraw calls: queue wait, ruling, commit and reply.",
        );
        self.commit_seconds.render(
            &mut out,
            "consentd_group_commit_seconds",
            "Group commits: ruling a batch and its store transaction.",
        );
        let _ = writeln!(
            out,
            "# HELP consentd_store_commit_phase_seconds A group commit, by step: begin (connection, BEGIN), lock (the commit lock, waiting included), view (what the others committed), rule (the writer), write (the rows), commit (COMMIT and its WAL flush; on redb the pages written and fsync'd). redb takes rule, write and commit only.\n# TYPE consentd_store_commit_phase_seconds histogram"
        );
        for (h, (phase, _)) in self
            .commit_phase_seconds
            .iter()
            .zip(CommitPhases::default().steps())
        {
            h.snapshot().render_series(
                &mut out,
                "consentd_store_commit_phase_seconds",
                &format!("phase=\"{phase}\","),
            );
        }
        self.feed_delay_seconds.render(
            &mut out,
            "consentd_feed_delay_seconds",
            "Change feed (several nodes): from an event's recording to this node applying it.",
        );
        let _ = writeln!(
            out,
            "# HELP consentd_writer_queue_depth Commands waiting for the writer.\n# TYPE consentd_writer_queue_depth gauge\nconsentd_writer_queue_depth {queue_depth}"
        );
        let _ = writeln!(
            out,
            "# HELP consentd_applied_sequence Every change up to this sequence is applied on this node (freshness tokens wait for it).\n# TYPE consentd_applied_sequence gauge\nconsentd_applied_sequence {applied}"
        );
        let _ = writeln!(
            out,
            "# HELP consentd_feed_lag_events Changes committed to a shared store that this node's feed has not read yet.\n# TYPE consentd_feed_lag_events gauge\nconsentd_feed_lag_events {}\n# HELP consentd_feed_lag_seconds How long this node's feed has been behind without a break (0: caught up).\n# TYPE consentd_feed_lag_seconds gauge\nconsentd_feed_lag_seconds {}",
            lag.0,
            lag.1.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "# HELP consentd_feed_unreadable_sequence The sequence of a shared record this node cannot read (0: none); checks and writes stop until it can.\n# TYPE consentd_feed_unreadable_sequence gauge\nconsentd_feed_unreadable_sequence {unreadable}"
        );
        let get = |c: &AtomicU64| c.load(Relaxed);
        out.push_str("# HELP consentd_decisions_total CanSend answers by reason.\n");
        out.push_str("# TYPE consentd_decisions_total counter\n");
        for (i, reason) in REASONS.iter().enumerate() {
            let n: u64 = self
                .checks
                .iter()
                .map(|s| s.decisions[i].load(Relaxed))
                .sum();
            let _ = writeln!(out, "consentd_decisions_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP consentd_pending_grants_total Grants taken as pending (double opt-in, or over a withdrawal the person made).\n# TYPE consentd_pending_grants_total counter\nconsentd_pending_grants_total {}\n# HELP consentd_confirmation_links_total Confirmation links minted for pending grants.\n# TYPE consentd_confirmation_links_total counter\nconsentd_confirmation_links_total {}",
            get(&self.pending_grants),
            get(&self.confirmation_links)
        );
        let _ = writeln!(
            out,
            "# HELP consentd_confirmation_clicks_total Clicks on confirmation pages that recorded a change, by button.\n# TYPE consentd_confirmation_clicks_total counter\nconsentd_confirmation_clicks_total{{button=\"confirm\"}} {}\nconsentd_confirmation_clicks_total{{button=\"not_me\"}} {}",
            get(&self.confirmations),
            get(&self.not_me)
        );
        let _ = writeln!(
            out,
            "# HELP consentd_preference_changes_total Changes recorded through the preference center.\n# TYPE consentd_preference_changes_total counter\nconsentd_preference_changes_total {}",
            get(&self.preference_changes)
        );
        out.push_str(
            "# HELP consentd_shed_total Calls refused to stay within bounds, by reason.\n",
        );
        out.push_str("# TYPE consentd_shed_total counter\n");
        for (reason, c) in [
            ("deadline", &self.shed_deadline),
            ("queue_full", &self.shed_queue_full),
            ("imports", &self.shed_imports),
        ] {
            let _ = writeln!(out, "consentd_shed_total{{reason=\"{reason}\"}} {}", get(c));
        }
        for (name, help, kind, value) in [
            (
                "consentd_commits_total",
                "Durable write transactions (group commits).",
                "counter",
                get(&self.commits),
            ),
            (
                "consentd_committed_changes_total",
                "Grants and withdrawals made durable.",
                "counter",
                get(&self.committed_changes),
            ),
            (
                "consentd_commit_failures_total",
                "Write transactions that failed; none of their changes was acknowledged.",
                "counter",
                get(&self.commit_failures),
            ),
            (
                "consentd_unsubscribes_total",
                "Unsubscribe link POSTs confirmed.",
                "counter",
                get(&self.unsubscribes),
            ),
            (
                "consentd_imported_rows_total",
                "Rows received by Import, valid or not.",
                "counter",
                get(&self.imported_rows),
            ),
            (
                "consentd_erasures_total",
                "Contacts erased.",
                "counter",
                get(&self.erasures),
            ),
            (
                "consentd_store_failures_total",
                "Store errors that stopped writing (fail-stop; the process exits).",
                "counter",
                get(&self.store_failures),
            ),
            (
                "consentd_store_unavailable_total",
                "Times the store became unreachable (writes paused until it answered).",
                "counter",
                get(&self.store_unavailable),
            ),
            (
                "consentd_erasure_purges_total",
                "Rewrites of the data files that removed erased contacts.",
                "counter",
                get(&self.purges),
            ),
            (
                "consentd_contacts",
                "Contacts holding at least one state.",
                "gauge",
                contacts as u64,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP consentd_erasure_purge_seconds_total Time writes waited for erasure purges.\n# TYPE consentd_erasure_purge_seconds_total counter\nconsentd_erasure_purge_seconds_total {}",
            get(&self.purge_micros) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP consentd_commit_seconds_total Time spent deciding and committing batches.\n# TYPE consentd_commit_seconds_total counter\nconsentd_commit_seconds_total {}",
            get(&self.commit_micros) as f64 / 1e6
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, series: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("{series} in {text}"))
    }

    /// Counts made on many threads (more than there are stripes) all show
    /// in one scrape, each once.
    #[test]
    fn counts_from_every_thread_add_up() {
        let metrics = std::sync::Arc::new(Metrics::default());
        let threads: Vec<_> = (0..STRIPES as u64 + 5)
            .map(|t| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let mut tally = Tally::default();
                        tally.verdict(Verdict::NoConsent);
                        tally.invalid();
                        metrics.decisions(&tally);
                        metrics.check_took(Duration::from_micros(10 + t));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = metrics.render(0, 0, 0, (0, Duration::ZERO), 0);
        let n = 1000 * (STRIPES as u64 + 5);
        assert_eq!(
            line(&text, "consentd_decisions_total{reason=\"no_consent\"}"),
            format!("consentd_decisions_total{{reason=\"no_consent\"}} {n}")
        );
        assert_eq!(
            line(&text, "consentd_decisions_total{reason=\"invalid\"}"),
            format!("consentd_decisions_total{{reason=\"invalid\"}} {n}")
        );
        assert_eq!(
            line(&text, "consentd_decisions_total{reason=\"granted\"}"),
            "consentd_decisions_total{reason=\"granted\"} 0"
        );
        assert_eq!(
            line(&text, "consentd_can_send_seconds_count"),
            format!("consentd_can_send_seconds_count {n}")
        );
        assert_eq!(
            line(&text, "consentd_can_send_seconds_bucket{le=\"0.00005\"}"),
            format!("consentd_can_send_seconds_bucket{{le=\"0.00005\"}} {n}"),
            "every time was under 50 µs"
        );
    }

    /// A commit's steps are one histogram, one series per step, each with
    /// its own buckets, sum and count under its `phase` label.
    #[test]
    fn commit_steps_render_as_one_labelled_histogram() {
        let metrics = Metrics::default();
        let ms = Duration::from_millis;
        let phases = CommitPhases {
            begin: ms(1),
            lock: ms(2),
            view: Duration::ZERO,
            rule: ms(3),
            write: ms(4),
            commit: ms(30),
        };
        metrics.commit_phases(&phases);
        metrics.commit_phases(&phases);
        let text = metrics.render(0, 0, 0, (0, Duration::ZERO), 0);
        let name = "consentd_store_commit_phase_seconds";
        assert_eq!(text.matches(&format!("# TYPE {name} histogram")).count(), 1);
        for (phase, took) in phases.steps() {
            let sum = 2.0 * took.as_secs_f64();
            // A step not taken (the view, here) is not counted.
            let count = if took.is_zero() { 0 } else { 2 };
            assert_eq!(
                line(&text, &format!("{name}_sum{{phase=\"{phase}\"}}")),
                format!("{name}_sum{{phase=\"{phase}\"}} {sum}")
            );
            assert_eq!(
                line(&text, &format!("{name}_count{{phase=\"{phase}\"}}")),
                format!("{name}_count{{phase=\"{phase}\"}} {count}")
            );
        }
        assert_eq!(
            line(
                &text,
                &format!("{name}_bucket{{phase=\"commit\",le=\"0.025\"}}")
            ),
            format!("{name}_bucket{{phase=\"commit\",le=\"0.025\"}} 0"),
            "30 ms is above the 25 ms bucket"
        );
        assert_eq!(
            line(
                &text,
                &format!("{name}_bucket{{phase=\"commit\",le=\"0.05\"}}")
            ),
            format!("{name}_bucket{{phase=\"commit\",le=\"0.05\"}} 2")
        );
    }
}

//! DESIGN.md rule 3: which of a contact's states decides a CanSend.
//!
//! Pure and allocation-free: the hot path calls [`verdict`] with the states the
//! index holds for the contact and the covering set the catalog precomputed.

use super::catalog::ConsentIdx;
use super::event::{Action, Decision, Source, UnixNanos};
pub use super::terms::Now;
use super::terms::{Lapse, Terms, short_version};

/// One state as the in-memory index holds it: 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldState {
    /// When the person decided.
    pub occurred_at: UnixNanos,
    /// Which consent.
    pub consent: ConsentIdx,
    /// What they decided.
    pub action: Action,
    /// Decided by the person themselves (a form, a link, the preference
    /// center): such a withdrawal sticks (DESIGN.md §7).
    pub by_person: bool,
    /// The consent's version when recorded (saturating: see
    /// [`crate::domain::terms::short_version`]).
    pub version: u16,
}

impl HeldState {
    /// The state of `consent` as the index holds it.
    pub fn of(consent: ConsentIdx, decision: Decision, version: u32, source: Source) -> Self {
        HeldState {
            occurred_at: decision.occurred_at,
            consent,
            action: decision.action,
            by_person: source.is_the_person(),
            version: short_version(version),
        }
    }

    /// The part of the state that rule 2 compares.
    pub fn decision(self) -> Decision {
        Decision {
            occurred_at: self.occurred_at,
            action: self.action,
        }
    }
}

/// The answer to CanSend, before it is dressed for the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A GRANT decides: allowed.
    Granted {
        /// The deciding consent.
        by: ConsentIdx,
        /// When the person decided.
        at: UnixNanos,
    },
    /// A WITHDRAW decides: not allowed.
    Withdrawn {
        /// The deciding consent.
        by: ConsentIdx,
        /// When the person decided.
        at: UnixNanos,
    },
    /// No state of the covering set: not allowed (opt-in).
    NoConsent,
    /// No consent covers the channel and brand: not allowed.
    NotCovered,
    /// Nothing counts, and a grant was given to a wording older than its
    /// consent's `min_version`.
    StaleWording,
    /// Nothing counts, and a grant lapsed by age.
    Expired,
    /// Nothing counts, and a pending grant of the covering set waits for
    /// the person's confirmation.
    PendingConfirmation,
    /// The contact's decision allows, but a withdrawal recorded on the
    /// address the message goes to decides against it (DESIGN.md §9).
    AddressWithdrawn {
        /// The deciding consent of the address's withdrawal.
        by: ConsentIdx,
        /// When it was decided.
        at: UnixNanos,
    },
    /// The contact's decision allows, but the address the message goes to
    /// hard-bounced and was not cleared since (DESIGN.md §9): not consent,
    /// and never a withdrawal.
    Undeliverable {
        /// When the bounce occurred.
        at: UnixNanos,
    },
}

impl Verdict {
    /// Whether the message may be sent.
    pub fn allowed(self) -> bool {
        matches!(self, Verdict::Granted { .. })
    }

    /// The deciding consent and when it was decided, if a state decides.
    pub fn decided(self) -> Option<(ConsentIdx, UnixNanos)> {
        match self {
            Verdict::Granted { by, at }
            | Verdict::Withdrawn { by, at }
            | Verdict::AddressWithdrawn { by, at } => Some((by, at)),
            _ => None,
        }
    }
}

/// Decides from `states` over `cover`, which lists the covering consents most
/// specific first (deepest, then smallest id), so a position in it is the
/// specificity rank. `terms` (by interned consent; empty when nothing
/// lapses) say when a GRANT state stops counting at `now` (read only for a
/// grant of a consent that lapses by age).
///
/// Among the covered states that count, the latest `occurred_at` wins; on a
/// tie a WITHDRAW beats a GRANT, then the more specific consent wins. When
/// none counts, a lapsed grant says why (stale wording before age); the
/// caller turns the remaining [`Verdict::NoConsent`] into
/// [`Verdict::PendingConfirmation`] when a pending grant waits.
#[inline]
pub fn verdict(
    states: &[HeldState],
    cover: &[ConsentIdx],
    terms: &[Terms],
    now: &impl Now,
) -> Verdict {
    if cover.is_empty() {
        return Verdict::NotCovered;
    }
    // (state, rank): smaller rank = more specific.
    let mut best: Option<(HeldState, usize)> = None;
    let mut lapsed: Option<Lapse> = None;
    for s in states {
        let Some(rank) = cover.iter().position(|&c| c == s.consent) else {
            continue;
        };
        if s.action == Action::Grant
            && let Some(t) = terms.get(s.consent as usize)
            && let Some(why) = t.lapse(s.version, s.occurred_at, now)
        {
            lapsed = lapsed.max(Some(why));
            continue;
        }
        let better = match best {
            None => true,
            Some((b, b_rank)) => {
                (
                    s.occurred_at,
                    s.action == Action::Withdraw,
                    std::cmp::Reverse(rank),
                ) > (
                    b.occurred_at,
                    b.action == Action::Withdraw,
                    std::cmp::Reverse(b_rank),
                )
            }
        };
        if better {
            best = Some((*s, rank));
        }
    }
    match best {
        None => match lapsed {
            Some(Lapse::Stale) => Verdict::StaleWording,
            Some(Lapse::Expired) => Verdict::Expired,
            None => Verdict::NoConsent,
        },
        Some((s, _)) => match s.action {
            Action::Grant => Verdict::Granted {
                by: s.consent,
                at: s.occurred_at,
            },
            Action::Withdraw => Verdict::Withdrawn {
                by: s.consent,
                at: s.occurred_at,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    // Interned ids of a small tree: 0 = marketing (umbrella), 1 = marketing.a
    // (brand a), 2 = marketing.a.email (brand a, email), 3 = marketing.b.
    const UMB: u32 = 0;
    const A: u32 = 1;
    const A_EMAIL: u32 = 2;
    const B: u32 = 3;
    // Covering sets, most specific first.
    const A_EMAIL_COVER: &[u32] = &[A_EMAIL, A, UMB];
    const B_EMAIL_COVER: &[u32] = &[B, UMB];

    fn s(consent: u32, action: Action, occurred_at: i64) -> HeldState {
        HeldState {
            occurred_at,
            consent,
            action,
            by_person: false,
            version: 1,
        }
    }

    /// No consent lapses.
    const NONE: &[Terms] = &[];

    #[test]
    fn rule_3_table() {
        let g = |by, at| Verdict::Granted { by, at };
        let w = |by, at| Verdict::Withdrawn { by, at };
        #[rustfmt::skip]
        let table: &[(&str, &[HeldState], &[u32], Verdict)] = &[
            ("no states: opt-in", &[], A_EMAIL_COVER, Verdict::NoConsent),
            ("empty covering set", &[s(UMB, Grant, 1)], &[], Verdict::NotCovered),
            ("state outside the cover", &[s(B, Grant, 1)], A_EMAIL_COVER, Verdict::NoConsent),
            ("umbrella grant covers every brand (a)", &[s(UMB, Grant, 1)], A_EMAIL_COVER, g(UMB, 1)),
            ("umbrella grant covers every brand (b)", &[s(UMB, Grant, 1)], B_EMAIL_COVER, g(UMB, 1)),
            ("later brand withdrawal stops that brand",
                &[s(UMB, Grant, 1), s(A, Withdraw, 2)], A_EMAIL_COVER, w(A, 2)),
            ("... and leaves the others",
                &[s(UMB, Grant, 1), s(A, Withdraw, 2)], B_EMAIL_COVER, g(UMB, 1)),
            ("unsubscribe from all stops everything",
                &[s(A_EMAIL, Grant, 1), s(B, Grant, 2), s(UMB, Withdraw, 3)], B_EMAIL_COVER, w(UMB, 3)),
            ("... including the most specific grant",
                &[s(A_EMAIL, Grant, 1), s(B, Grant, 2), s(UMB, Withdraw, 3)], A_EMAIL_COVER, w(UMB, 3)),
            ("re-grant of the umbrella covers every brand again",
                &[s(A, Withdraw, 2), s(UMB, Grant, 3)], A_EMAIL_COVER, g(UMB, 3)),
            ("a grant after unsubscribe-from-all counts",
                &[s(UMB, Withdraw, 2), s(A_EMAIL, Grant, 3)], A_EMAIL_COVER, g(A_EMAIL, 3)),
            ("an older specific grant loses to a newer umbrella withdrawal",
                &[s(A_EMAIL, Grant, 2), s(UMB, Withdraw, 3)], A_EMAIL_COVER, w(UMB, 3)),
            ("tie: withdraw beats grant",
                &[s(A_EMAIL, Grant, 5), s(UMB, Withdraw, 5)], A_EMAIL_COVER, w(UMB, 5)),
            ("tie: withdraw beats grant, either order",
                &[s(UMB, Withdraw, 5), s(A_EMAIL, Grant, 5)], A_EMAIL_COVER, w(UMB, 5)),
            ("tie of grants: the most specific decides",
                &[s(UMB, Grant, 5), s(A_EMAIL, Grant, 5), s(A, Grant, 5)], A_EMAIL_COVER, g(A_EMAIL, 5)),
            ("tie of withdrawals: the most specific decides",
                &[s(UMB, Withdraw, 5), s(A, Withdraw, 5)], A_EMAIL_COVER, w(A, 5)),
        ];
        for (name, states, cover, want) in table {
            assert_eq!(verdict(states, cover, NONE, &0), *want, "{name}");
            // The order the index holds states in never matters.
            let mut rev = states.to_vec();
            rev.reverse();
            assert_eq!(verdict(&rev, cover, NONE, &0), *want, "{name} (reversed)");
        }
    }

    #[test]
    fn equal_depth_ties_break_by_id_through_the_cover_order() {
        // Two siblings at the same depth cover the same cell; the catalog
        // orders them by id, so the smaller id (earlier position) decides.
        let cover = &[7, 9, UMB];
        let states = [s(9, Grant, 4), s(7, Grant, 4)];
        assert_eq!(
            verdict(&states, cover, NONE, &0),
            Verdict::Granted { by: 7, at: 4 }
        );
    }

    #[test]
    fn lapsed_grants_stop_counting_and_say_why() {
        const DAY: i64 = 86_400 * 1_000_000_000;
        let now = 100 * DAY;
        // UMB must be re-consented from version 2; A lapses after 30 days.
        let mut terms = vec![Terms::default(); 4];
        terms[UMB as usize].min_version = 2;
        terms[A as usize].valid_for = 30 * DAY;
        let v = |mut st: HeldState, version| {
            st.version = version;
            st
        };
        let g = |by, at| Verdict::Granted { by, at };
        let w = |by, at| Verdict::Withdrawn { by, at };
        #[rustfmt::skip]
        let table: &[(&str, &[HeldState], Verdict)] = &[
            ("a grant under the old wording is stale",
                &[v(s(UMB, Grant, now), 1)], Verdict::StaleWording),
            ("a grant under the new wording counts",
                &[v(s(UMB, Grant, now), 2)], g(UMB, now)),
            ("a withdrawal under the old wording still counts",
                &[v(s(UMB, Withdraw, now), 1)], w(UMB, now)),
            ("a grant older than valid_for has expired",
                &[s(A, Grant, now - 31 * DAY)], Verdict::Expired),
            ("a younger one counts",
                &[s(A, Grant, now - 29 * DAY)], g(A, now - 29 * DAY)),
            ("stale wording outranks expiry",
                &[s(A, Grant, now - 31 * DAY), v(s(UMB, Grant, now), 1)], Verdict::StaleWording),
            ("an older grant that counts decides over a newer lapsed one",
                &[v(s(UMB, Grant, now - DAY), 2), s(A, Grant, now - 40 * DAY)], g(UMB, now - DAY)),
            ("a lapsed grant does not hide an older withdrawal",
                &[s(A, Grant, now - 31 * DAY), s(UMB, Withdraw, now - 50 * DAY)], w(UMB, now - 50 * DAY)),
            ("a consent without terms never lapses",
                &[s(A_EMAIL, Grant, 1)], g(A_EMAIL, 1)),
        ];
        for (name, states, want) in table {
            assert_eq!(
                verdict(states, A_EMAIL_COVER, &terms, &now),
                *want,
                "{name}"
            );
        }
    }
}

//! The double opt-in confirmation (`/c/{token}`, DESIGN.md §7, §8) as
//! operations of the authority: minting and re-sending the link, where a
//! link stands, and its two buttons.

use crate::domain::{
    Action, Change, ChangeOutcome, ConsentId, ContactId, Evidence, Source, StateRecord, UnixNanos,
};
use crate::links::{Claim, LinkKind};

use super::pages::{Shown, SinceIssue, shown};
use super::{Authority, ChangeError, LinkError, ReadError};

/// The actor of what the confirmation page records.
pub const CONFIRM_ACTOR: &str = "confirmation-page";

/// Where a confirmation link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// It can be confirmed (or refused).
    Open,
    /// Older than `--confirmation-ttl-hours`, or minted before the contact
    /// was erased: nothing can be recorded.
    Expired,
    /// Confirmed already by a click on this link.
    Confirmed,
    /// The person said "this wasn't me" on this link.
    Refused,
    /// Its consent is gone from the catalog or retired.
    Gone,
    /// Another decision on its consent came since the link was minted (a
    /// withdrawal, a grant): its pending grant is no longer the person's
    /// latest word, so it confirms nothing.
    Superseded,
}

/// What the confirmation page shows.
#[derive(Debug, Clone)]
pub struct ConfirmPage {
    /// What the token asserts.
    pub claim: Claim,
    /// The consent, with the wording the person is asked to confirm.
    pub consent: Option<Shown>,
    /// Where the link stands.
    pub status: Confirmation,
}

/// What a POST to a confirmation page did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmed {
    /// Recorded: the grant (or, `not_me`, the withdrawal) is durable.
    Recorded {
        /// Whether it was "this wasn't me".
        not_me: bool,
        /// The consent as the page showed it.
        consent: Option<Shown>,
        /// The link to the receipt of what was recorded.
        receipt: Option<String>,
    },
    /// Nothing recorded, and why.
    Nothing(Confirmation),
    /// The wording changed since the page was shown: show it again.
    WordingChanged,
}

/// Where a confirmation stands given the state of its consent (DESIGN.md
/// §8): it confirms only while the pending grant it was minted for is the
/// person's latest word. Any decision at or after its issue settles it: a
/// click on a confirmation link (confirmed, or "this wasn't me"), or any
/// other decision since (a later withdrawal, a grant by other means).
fn settled(claim: &Claim, state: Option<&StateRecord>) -> Option<Confirmation> {
    let s = state?;
    if s.occurred_at < claim.issued_at {
        return None;
    }
    Some(match (s.source, s.action) {
        (Source::ConfirmationLink, Action::Grant) => Confirmation::Confirmed,
        (Source::ConfirmationLink, Action::Withdraw) => Confirmation::Refused,
        _ => Confirmation::Superseded,
    })
}

impl Authority {
    /// The confirmation link for a grant just taken as pending (empty when
    /// none goes out: not pending, or inside the re-send window).
    pub fn confirmation_url(
        &self,
        contact: &ContactId,
        consent: &ConsentId,
        outcome: &ChangeOutcome,
    ) -> String {
        let Some(pending) = outcome.pending else {
            return String::new();
        };
        if !pending.replay {
            self.metrics.pending_grant(pending.link);
        }
        // A grant on an address that waits (a system's grant over the
        // person's own address withdrawal) has no one to mail a link to:
        // only the person's own word on the address, or `confirmed`, lifts it.
        if !pending.link || contact.is_address() {
            return String::new();
        }
        self.mint_confirmation(contact, consent, pending.recorded_at)
    }

    fn mint_confirmation(
        &self,
        contact: &ContactId,
        consent: &ConsentId,
        issued_at: UnixNanos,
    ) -> String {
        let catalog = self.catalog.load();
        let purpose = catalog
            .consent_idx(consent.as_str())
            .and_then(|i| catalog.consent(i))
            .map(|c| catalog.consent_id(c.purpose))
            .and_then(|p| ConsentId::parse("purpose", p).ok())
            .unwrap_or_else(|| consent.clone());
        let claim = Claim {
            kind: LinkKind::Confirm,
            contact: contact.clone(),
            consent: consent.clone(),
            purpose,
            channel: String::new(),
            brand: String::new(),
            issued_at,
            to: None,
            sequence: 0,
        };
        self.links
            .url_of(LinkKind::Confirm, &self.links.mint(&claim))
    }

    /// When a confirmation link issued at `issued_at` stops working.
    pub fn confirmation_expires_at(&self, issued_at: UnixNanos) -> UnixNanos {
        issued_at.saturating_add(self.confirmation_ttl)
    }

    /// IssueConfirmationLink: re-sends the confirmation of a grant that
    /// waits. It records one more pending grant (source OPERATOR, counted
    /// towards the limits), so the re-send window holds across restarts and
    /// nodes; the URL is empty inside it. FAILED_PRECONDITION when no
    /// grant of that consent waits.
    pub async fn resend_confirmation(
        &self,
        contact: ContactId,
        consent: ConsentId,
        actor: &str,
    ) -> Result<(String, UnixNanos), LinkError> {
        let idx = self
            .catalog
            .load()
            .consent_idx(consent.as_str())
            .ok_or_else(|| LinkError::UnknownConsent(consent.to_string()))?;
        let now = self.clock.now();
        let ttl = self.confirmation_ttl;
        let waits = self
            .index
            .pending(contact.as_str())
            .iter()
            .any(|(c, p)| *c == idx && p.waits(now, ttl));
        if !waits {
            return Err(LinkError::NothingPending(consent.to_string()));
        }
        let mut evidence = Evidence::new();
        evidence.insert("resend".into(), "true".into());
        let change = Change {
            contact,
            consent,
            action: Action::Grant,
            occurred_at: None,
            source: Source::Operator,
            evidence,
            idempotency_key: None,
            issued_at: None,
            actor: actor.to_owned(),
            confirmed: false,
            resend: true,
            bulk: false,
            by_page: false,
            addresses: Vec::new(),
        };
        let recorded = self.record(change, None).await?;
        let issued = recorded.outcome.pending.map_or(now, |p| p.recorded_at);
        Ok((
            recorded.confirmation_url,
            self.confirmation_expires_at(issued),
        ))
    }

    /// Opens a confirmation token and gathers what its page shows; `None`
    /// for any token that is not an authentic confirmation link.
    pub async fn confirm_page(&self, token: &str) -> Result<Option<ConfirmPage>, ReadError> {
        let Some(claim) = self.confirmation_claim(token) else {
            return Ok(None);
        };
        let (consent, status) = self.confirmation_status(&claim).await?;
        Ok(Some(ConfirmPage {
            claim,
            consent,
            status,
        }))
    }

    /// What an authentic confirmation token asserts; `None` for any other.
    pub fn confirmation_claim(&self, token: &str) -> Option<Claim> {
        self.links
            .verify(token)
            .filter(|c| c.kind == LinkKind::Confirm)
    }

    async fn confirmation_status(
        &self,
        claim: &Claim,
    ) -> Result<(Option<Shown>, Confirmation), ReadError> {
        let (consent, retired) = {
            let catalog = self.catalog.load();
            let idx = catalog.consent_idx(claim.consent.as_str());
            (
                idx.and_then(|i| shown(&catalog, i)),
                idx.and_then(|i| catalog.consent(i))
                    .is_some_and(|c| c.spec.retired),
            )
        };
        let contact = claim.contact.clone();
        let id = claim.consent.clone();
        let state = self
            .read(move |store| store.state(contact.as_str(), id.as_str()))
            .await?;
        // Minted before the contact was erased: it confirms nothing after
        // (rule 5), whatever was granted since.
        let erased = self.since_issue(claim).await? != SinceIssue::Kept;
        let status = if erased {
            Confirmation::Expired
        } else if let Some(settled) = settled(claim, state.as_ref()) {
            settled
        } else if self.clock.now() >= self.confirmation_expires_at(claim.issued_at) {
            Confirmation::Expired
        } else if consent.is_none() || retired {
            Confirmation::Gone
        } else {
            Confirmation::Open
        };
        Ok((consent, status))
    }

    /// A POST to a confirmation page: confirms (records the GRANT at the
    /// click, if `version`, when given, is still the wording in force) or, with
    /// `not_me`, records "this wasn't me" (a WITHDRAW that sticks).
    pub async fn confirm(
        &self,
        claim: &Claim,
        not_me: bool,
        version: Option<u32>,
        evidence: Evidence,
    ) -> Result<Confirmed, ChangeError> {
        let (consent, status) = self.confirmation_status(claim).await?;
        match status {
            Confirmation::Open => {}
            // "This wasn't me" is a withdrawal: it is always taken, even on
            // a retired consent, as long as the link is alive.
            Confirmation::Gone if not_me && consent.is_some() => {}
            other => return Ok(Confirmed::Nothing(other)),
        }
        // A form that names the version it showed confirms that version
        // only; a bare POST (DESIGN.md §8: any POST without `not_me`
        // confirms) takes the wording the page shows now.
        if !not_me && version.is_some() && consent.as_ref().map(|c| c.version) != version {
            return Ok(Confirmed::WordingChanged);
        }
        let change = Change {
            contact: claim.contact.clone(),
            consent: claim.consent.clone(),
            action: if not_me {
                Action::Withdraw
            } else {
                Action::Grant
            },
            occurred_at: None,
            source: Source::ConfirmationLink,
            evidence,
            idempotency_key: None,
            issued_at: Some(claim.issued_at),
            actor: CONFIRM_ACTOR.to_owned(),
            confirmed: false,
            resend: false,
            bulk: false,
            by_page: true,
            addresses: Vec::new(),
        };
        let outcome = self.writer.change_waiting(change).await?;
        if outcome.sequence == 0 {
            // Minted before the contact was erased (an erasure that came
            // between the page and the click): nothing to confirm.
            return Ok(Confirmed::Nothing(Confirmation::Expired));
        }
        self.metrics.confirmation_click(not_me);
        let receipt = self.receipt_url(&claim.contact, &claim.consent, outcome.sequence);
        Ok(Confirmed::Recorded {
            not_me,
            consent,
            receipt,
        })
    }
}

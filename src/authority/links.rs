//! Unsubscribe links through the authority (DESIGN.md rule 4): minting one
//! for a check, the page behind it, and the click that withdraws.
//!
//! A link never does nothing: its target is resolved again at click time,
//! against the catalog then in force — the minted consent if it still
//! covers the link's (purpose, channel, brand), else the most specific
//! consent that covers them now, else the purpose's root. So a link keeps
//! working when its consent is deleted or re-scoped, and after a click that
//! answered "unsubscribed" CanSend for that (contact, channel, brand,
//! purpose) is not allowed.

use crate::domain::{
    Action, AddressKind, Catalog, Change, ChangeOutcome, ConsentId, ConsentIdx, ContactId,
    Evidence, Source, ids::check_contact,
};
use crate::links::{Claim, ClaimRef, LinkKind};

use super::pages::SinceIssue;
use super::{Authority, ChangeError, LinkError, RawAddress, ReadError};

/// The actor of what the unsubscribe page records.
pub const PAGE_ACTOR: &str = "unsubscribe-page";

/// What the page behind a link shows.
#[derive(Debug, Clone)]
pub struct LinkPage {
    /// What the token asserts.
    pub claim: Claim,
    /// The display name of the brand the link was minted for.
    pub brand: String,
    /// The contact's preference center for the link's purpose.
    pub preferences_url: Option<String>,
    /// Title of the consent the link withdraws (its id if untitled).
    pub consent_title: String,
    /// Title of the purpose's root ("everything").
    pub purpose_title: String,
    /// The contact was erased at or after the link's issue and holds
    /// nothing since: the link has nothing left to withdraw (rule 4), and
    /// its page is the expired page.
    pub expired: bool,
}

impl Authority {
    /// The one-click URL withdrawing `consent` for this contact, channel, brand.
    /// With `to` (its kind and keyed hash), a click withdraws on that
    /// address too.
    pub fn unsubscribe_url(
        &self,
        contact: &str,
        channel: &str,
        brand: &str,
        consent: ConsentIdx,
        to: Option<(AddressKind, [u8; 32])>,
    ) -> String {
        let catalog = self.catalog.load();
        let purpose = catalog.consent(consent).map_or(consent, |c| c.purpose);
        // Borrowed as they are: the contact was validated by the check
        // that chose this consent, the ids are the catalog's.
        self.links.url_for(&ClaimRef {
            kind: LinkKind::Unsubscribe,
            contact,
            consent: catalog.consent_id(consent),
            purpose: catalog.consent_id(purpose),
            channel,
            brand,
            issued_at: self.clock.now(),
            to,
            sequence: 0,
        })
    }

    /// IssueUnsubscribeLink: the URL and the consent it withdraws; with
    /// `to`, the link withdraws on that address too (its kind may be left
    /// to the channel's).
    pub fn issue_link(
        &self,
        contact: &str,
        channel: &str,
        brand: &str,
        purpose: &str,
        to: Option<RawAddress<'_>>,
    ) -> Result<(String, &'static str), LinkError> {
        check_contact("contact_id", contact)?;
        let catalog = self.catalog.load();
        let to = to
            .map(|raw| self.addressing.read_to_hash(&catalog, channel, raw))
            .transpose()?;
        let cell = catalog.cell(purpose, channel, brand)?;
        let &target = catalog
            .covering(cell)
            .first()
            .ok_or_else(|| LinkError::NotCovered {
                channel: channel.to_owned(),
                brand: brand.to_owned(),
            })?;
        Ok((
            self.unsubscribe_url(contact, channel, brand, target, to),
            catalog.consent_id(target),
        ))
    }

    /// Verifies a link token and gathers what its page shows; `None` for
    /// any token that is not authentic.
    pub async fn link_page(&self, token: &str) -> Result<Option<LinkPage>, ReadError> {
        let Some(claim) = self
            .links
            .verify(token)
            .filter(|c| c.kind == LinkKind::Unsubscribe)
        else {
            return Ok(None);
        };
        let since = self.since_issue(&claim).await?;
        let catalog = self.catalog.load();
        let title = |idx: Option<ConsentIdx>, fallback: &str| {
            idx.and_then(|i| catalog.consent(i))
                .map(|c| {
                    if c.spec.title.is_empty() {
                        c.id.to_string()
                    } else {
                        c.spec.title.clone()
                    }
                })
                .unwrap_or_else(|| fallback.to_owned())
        };
        let target = link_target(&catalog, &claim, false);
        let root = link_target(&catalog, &claim, true);
        Ok(Some(LinkPage {
            consent_title: title(target, claim.consent.as_str()),
            purpose_title: title(root, claim.purpose.as_str()),
            brand: catalog.brand_title(&claim.brand).to_owned(),
            // Its page would be the expired page: not offered.
            preferences_url: (since == SinceIssue::Kept)
                .then(|| self.preference_url_for(&claim))
                .flatten(),
            expired: since == SinceIssue::Erased,
            claim,
        }))
    }

    /// Withdraws what a verified link names, resolved now (see the module
    /// docs): its consent, or with `everything` the root of its purpose.
    /// Returns once durable; `None` when the link's whole purpose is gone
    /// from the catalog (then nobody holds anything it could withdraw). An
    /// outcome with sequence 0 recorded nothing: the link was minted before
    /// the contact was erased and the contact holds nothing since (rule 4).
    pub async fn unsubscribe(
        &self,
        claim: &Claim,
        everything: bool,
        evidence: Evidence,
    ) -> Result<Option<ChangeOutcome>, ChangeError> {
        let consent = {
            let catalog = self.catalog.load();
            let Some(target) = link_target(&catalog, claim, everything) else {
                return Ok(None);
            };
            ConsentId::parse("consent_id", catalog.consent_id(target))
                .expect("catalog ids are valid")
        };
        let change = Change {
            contact: claim.contact.clone(),
            consent,
            action: Action::Withdraw,
            occurred_at: None,
            source: Source::UnsubscribeLink,
            evidence,
            idempotency_key: None,
            issued_at: Some(claim.issued_at),
            actor: PAGE_ACTOR.to_owned(),
            confirmed: false,
            resend: false,
            bulk: false,
            by_page: true,
            addresses: Vec::new(),
        };
        let outcome = self.writer.change_waiting(change.clone()).await?;
        // Minted with `to`: the address is withdrawn too, for every contact
        // that sends to it (DESIGN.md §9) — unless the click recorded
        // nothing on the contact (a link from before its erasure).
        if let Some((_, hash)) = claim.to
            && outcome.sequence != 0
        {
            let on_address = Change {
                contact: ContactId::of_address(&hash),
                issued_at: None,
                ..change
            };
            self.writer.change_waiting(on_address).await?;
        }
        self.metrics.unsubscribed();
        Ok(Some(outcome))
    }
}

/// The consent a click on `claim` withdraws under `catalog`: with
/// `everything` the purpose's root; else the minted consent if it still
/// covers the link's (purpose, channel, brand), else the most specific one
/// covering them now, else the root. `None` only when the purpose is gone.
fn link_target(catalog: &Catalog, claim: &Claim, everything: bool) -> Option<ConsentIdx> {
    let root = catalog
        .consent_idx(claim.purpose.as_str())
        .filter(|&i| catalog.consent(i).is_some_and(|c| c.depth == 0));
    if everything {
        return root;
    }
    let cover = catalog
        .cell(claim.purpose.as_str(), &claim.channel, &claim.brand)
        .map(|cell| catalog.covering(cell))
        .unwrap_or_default();
    let minted = catalog.consent_idx(claim.consent.as_str());
    minted
        .filter(|m| cover.contains(m))
        .or_else(|| cover.first().copied())
        .or(root)
}

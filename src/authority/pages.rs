//! The pages people use besides unsubscribing (DESIGN.md §7): the double
//! opt-in confirmation (`/c/{token}`) and the preference center
//! (`/p/{token}`), as operations of the authority. The HTTP side renders
//! what these return and never decides anything itself.
//!
//! Both kinds of link are sealed like unsubscribe links (see
//! [`crate::links`]); a token of another kind does not open here.
//! - A confirmation link names (contact, consent) and its issue time; it
//!   works for `--confirmation-ttl-hours`. A click records a GRANT with
//!   source CONFIRMATION_LINK at the click; "this wasn't me" records a
//!   WITHDRAW with the same source, after which that link confirms nothing.
//!   A second click on either button records nothing more.
//! - A preference link names (contact, purpose) and, when minted from an
//!   unsubscribe page, the brand. Its form lists every consent of the
//!   purpose tree that is not retired; a POST is checked whole before
//!   anything is recorded, and a grant counts only for the wording shown.

use std::collections::BTreeMap;

use crate::domain::{
    Action, Catalog, Change, ChangeOutcome, ConsentId, ConsentIdx, ContactId, Evidence, Source,
    StateRecord, UnixNanos, ids::check_contact,
};
use crate::links::{Claim, LinkKind};

use super::{Authority, ChangeError, LinkError, ReadError};

/// The actor of what the confirmation page records.
pub const CONFIRM_ACTOR: &str = "confirmation-page";
/// The actor of what the preference center records.
pub const PREFERENCES_ACTOR: &str = "preference-page";

/// One consent as a page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// Its id (the form's field value).
    pub id: String,
    /// Its title (the id when untitled).
    pub title: String,
    /// The wording in force, exactly.
    pub text: String,
    /// The version of that wording.
    pub version: u32,
    /// Display names of the brands it covers, when it does not cover all.
    pub brands: Vec<String>,
    /// Steps from the purpose's root (for indenting).
    pub depth: u16,
}

/// Where a confirmation link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// It can be confirmed (or refused).
    Open,
    /// Older than `--confirmation-ttl-hours`: nothing can be recorded.
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
    },
    /// Nothing recorded, and why.
    Nothing(Confirmation),
    /// The wording changed since the page was shown: show it again.
    WordingChanged,
}

/// One consent of a preference page, with this contact's state.
#[derive(Debug, Clone)]
pub struct PreferenceItem {
    /// The consent as shown.
    pub consent: Shown,
    /// Whether this contact's state of this consent allows messages.
    pub allowed: bool,
    /// Whether a grant of it waits for the person's confirmation.
    pub pending: bool,
}

/// What the preference page shows.
#[derive(Debug, Clone)]
pub struct PreferencePage {
    /// What the token asserts.
    pub claim: Claim,
    /// The brand's display name, when the link was minted for one.
    pub brand_title: Option<String>,
    /// The purpose's title.
    pub purpose_title: String,
    /// Every consent of the purpose tree that is not retired, parents first.
    pub items: Vec<PreferenceItem>,
}

/// Why a preference POST recorded nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreferenceRefusal {
    /// A field names a consent outside the link's purpose tree, or one the
    /// catalog lacks.
    Unknown(String),
    /// A grant names a retired consent.
    Retired(String),
    /// The same consent is both granted and withdrawn.
    Both(String),
    /// More fields than the tree has consents.
    TooMany,
}

/// What a preference POST did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreferenceResult {
    /// Consents granted (as shown).
    pub granted: Vec<String>,
    /// Consents withdrawn.
    pub withdrawn: Vec<String>,
    /// Grants not recorded because the wording changed since it was shown.
    pub reworded: Vec<String>,
    /// Changes refused because the contact was erased after the link was
    /// issued (nothing of them was recorded).
    pub erased: bool,
}

/// The title of a consent, or its id when it has none.
fn title_of(catalog: &Catalog, idx: ConsentIdx) -> String {
    catalog.consent(idx).map_or_else(
        || catalog.consent_id(idx).to_owned(),
        |c| {
            if c.spec.title.is_empty() {
                c.id.to_string()
            } else {
                c.spec.title.clone()
            }
        },
    )
}

fn shown(catalog: &Catalog, idx: ConsentIdx) -> Option<Shown> {
    let c = catalog.consent(idx)?;
    let all = catalog.spec().brands.len();
    let brands = if c.brands.len() == all {
        Vec::new()
    } else {
        c.brands
            .iter()
            .filter_map(|&b| catalog.spec().brands.get(b as usize))
            .map(|b| catalog.brand_title(b).to_owned())
            .collect()
    };
    Some(Shown {
        id: c.id.to_string(),
        title: title_of(catalog, idx),
        text: c.spec.text.clone(),
        version: c.spec.version,
        brands,
        depth: c.depth,
    })
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
        if !pending.link {
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
        let status = if let Some(settled) = settled(claim, state.as_ref()) {
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
        };
        let outcome = self.writer.change_waiting(change).await?;
        if outcome.sequence == 0 {
            // Minted before the contact was erased: nothing to confirm.
            return Ok(Confirmed::Nothing(Confirmation::Gone));
        }
        self.metrics.confirmation_click(not_me);
        Ok(Confirmed::Recorded { not_me, consent })
    }

    /// IssuePreferenceLink: the URL of the contact's preference center for
    /// a purpose (empty: the default), naming `brand` on the page when set.
    pub fn issue_preference_link(
        &self,
        contact: &str,
        purpose: &str,
        brand: &str,
    ) -> Result<String, LinkError> {
        self.preference_link_at(contact, purpose, brand, self.clock.now())
    }

    /// A preference link that counts from `issued_at` (DESIGN.md §8: a
    /// link a page shows carries the first link's issue time, so that an
    /// erasure after that first link reaches it too).
    fn preference_link_at(
        &self,
        contact: &str,
        purpose: &str,
        brand: &str,
        issued_at: UnixNanos,
    ) -> Result<String, LinkError> {
        check_contact("contact_id", contact)?;
        let catalog = self.catalog.load();
        let root = catalog.purpose_root(purpose)?;
        if !brand.is_empty() && !catalog.spec().brands.iter().any(|b| b == brand) {
            return Err(crate::domain::FieldError::new(
                "brand",
                format!("unknown brand {}", crate::domain::ids::quote(brand)),
            )
            .into());
        }
        let root_id =
            ConsentId::parse("purpose", catalog.consent_id(root)).expect("catalog ids are valid");
        let claim = Claim {
            kind: LinkKind::Preferences,
            contact: ContactId::parse("contact_id", contact).expect("checked above"),
            consent: root_id.clone(),
            purpose: root_id,
            channel: String::new(),
            brand: brand.to_owned(),
            issued_at,
        };
        Ok(self
            .links
            .url_of(LinkKind::Preferences, &self.links.mint(&claim)))
    }

    /// The preference URL for the contact of an unsubscribe link: it
    /// carries that link's issue time, not the time the page was viewed.
    pub fn preference_url_for(&self, claim: &Claim) -> Option<String> {
        self.preference_link_at(
            claim.contact.as_str(),
            claim.purpose.as_str(),
            &claim.brand,
            claim.issued_at,
        )
        .ok()
    }

    /// Opens a preference token and gathers its page; `None` for any token
    /// that is not an authentic preference link, or whose purpose is gone.
    pub fn preference_page(&self, token: &str) -> Option<PreferencePage> {
        let claim = self
            .links
            .verify(token)
            .filter(|c| c.kind == LinkKind::Preferences)?;
        self.preferences_of(claim)
    }

    /// The preference page of a verified claim, with the states now.
    pub fn preferences_of(&self, claim: Claim) -> Option<PreferencePage> {
        let catalog = self.catalog.load();
        let root = catalog.purpose_root(claim.purpose.as_str()).ok()?;
        let now = self.clock.now();
        let ttl = self.confirmation_ttl;
        let pending = self.index.pending(claim.contact.as_str());
        let items = catalog
            .tree(root)
            .into_iter()
            .filter(|c| !c.spec.retired)
            .filter_map(|c| {
                let verdict =
                    self.index
                        .verdict(claim.contact.as_str(), &[c.idx], catalog.terms(), now);
                let allowed = verdict.allowed();
                Some(PreferenceItem {
                    consent: shown(&catalog, c.idx)?,
                    allowed,
                    // A grant waits, whatever else (a withdrawal) stands.
                    pending: !allowed
                        && pending
                            .iter()
                            .any(|(i, p)| *i == c.idx && p.waits(now, ttl)),
                })
            })
            .collect();
        Some(PreferencePage {
            brand_title: (!claim.brand.is_empty())
                .then(|| catalog.brand_title(&claim.brand).to_owned()),
            purpose_title: title_of(&catalog, root),
            items,
            claim,
        })
    }

    /// A preference POST: checks every field against the link's purpose
    /// tree first (nothing is recorded when one is wrong), then records
    /// each withdrawal and each grant whose wording is the one shown
    /// (`shown`: consent id → version; a grant without one is taken for
    /// the wording in force), with source PREFERENCE_CENTER.
    pub async fn set_preferences(
        &self,
        claim: &Claim,
        grants: &[String],
        withdrawals: &[String],
        shown_versions: &BTreeMap<String, u32>,
        evidence: Evidence,
    ) -> Result<Result<PreferenceResult, PreferenceRefusal>, ChangeError> {
        let plan = {
            let catalog = self.catalog.load();
            let Ok(root) = catalog.purpose_root(claim.purpose.as_str()) else {
                return Ok(Err(PreferenceRefusal::Unknown(claim.purpose.to_string())));
            };
            let tree = catalog.tree(root);
            if grants.len() + withdrawals.len() > 2 * tree.len() {
                return Ok(Err(PreferenceRefusal::TooMany));
            }
            let in_tree = |id: &str| tree.iter().find(|c| c.id.as_str() == id).copied();
            let mut plan = Vec::new();
            for id in withdrawals {
                let c = in_tree(id).ok_or_else(|| PreferenceRefusal::Unknown(id.clone()));
                match c {
                    Ok(c) => plan.push((c.id.clone(), Action::Withdraw, c.spec.version)),
                    Err(e) => return Ok(Err(e)),
                }
            }
            for id in grants {
                let Some(c) = in_tree(id) else {
                    return Ok(Err(PreferenceRefusal::Unknown(id.clone())));
                };
                if c.spec.retired {
                    return Ok(Err(PreferenceRefusal::Retired(id.clone())));
                }
                if withdrawals.contains(id) {
                    return Ok(Err(PreferenceRefusal::Both(id.clone())));
                }
                plan.push((c.id.clone(), Action::Grant, c.spec.version));
            }
            plan.sort_by(|a, b| (a.0.as_str(), a.1 as u8).cmp(&(b.0.as_str(), b.1 as u8)));
            plan.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
            plan
        };
        let mut result = PreferenceResult::default();
        for (consent, action, version) in plan {
            // A form names the version it showed; a bare field (a client of
            // its own) is taken for the wording in force.
            let seen = shown_versions.get(consent.as_str()).copied();
            if action == Action::Grant && seen.is_some_and(|v| v != version) {
                result.reworded.push(consent.to_string());
                continue;
            }
            let mut evidence = evidence.clone();
            evidence.insert("version_shown".into(), seen.unwrap_or(version).to_string());
            let change = Change {
                contact: claim.contact.clone(),
                consent: consent.clone(),
                action,
                occurred_at: None,
                source: Source::PreferenceCenter,
                evidence,
                idempotency_key: None,
                issued_at: Some(claim.issued_at),
                actor: PREFERENCES_ACTOR.to_owned(),
                confirmed: false,
                resend: false,
                bulk: false,
                by_page: true,
            };
            let outcome = self.writer.change_waiting(change).await?;
            if outcome.sequence == 0 {
                // From before an erasure of the contact: not recorded.
                result.erased = true;
                continue;
            }
            match action {
                Action::Grant => result.granted.push(consent.to_string()),
                Action::Withdraw => result.withdrawn.push(consent.to_string()),
            }
        }
        self.metrics
            .preference_changes((result.granted.len() + result.withdrawn.len()) as u64);
        Ok(Ok(result))
    }
}

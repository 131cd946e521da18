//! The preference center (`/p/{token}`, DESIGN.md §7, §8) as operations
//! of the authority: minting its link, what its page shows, and a POST.

use std::collections::BTreeMap;

use crate::domain::{
    Action, Change, ConsentId, ConsentIdx, ContactId, Evidence, Source, UnixNanos,
    ids::check_contact,
};
use crate::index::Held;
use crate::links::{Claim, LinkKind};

use super::pages::{Shown, SinceIssue, shown, title_of};
use super::{Authority, ChangeError, LinkError, ReadError};

/// The actor of what the preference center records.
pub const PREFERENCES_ACTOR: &str = "preference-page";

/// What CanSend answers across a consent's scope: every (channel, brand)
/// it covers in its purpose, each decided by its own covering set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Every message of its scope may be sent.
    All,
    /// Some may, some may not (a decision of another consent of the tree
    /// covers part of its scope).
    Some,
    /// None may.
    None,
}

/// Another consent that decides part of a consent's scope, as CanSend
/// names it in `decided_by` (an umbrella grant, a withdrawal above).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Through {
    /// Its id.
    pub id: String,
    /// Its title (the id when untitled).
    pub title: String,
    /// Whether its decision allows (a grant) or stops (a withdrawal).
    pub allows: bool,
}

/// One consent of a preference page, with what CanSend decides for it.
#[derive(Debug, Clone)]
pub struct PreferenceItem {
    /// The consent as shown.
    pub consent: Shown,
    /// What CanSend answers now across the consent's scope.
    pub reach: Reach,
    /// The other consents whose decision CanSend follows for part or all
    /// of its scope, in catalog order; empty when its own state decides
    /// everywhere (or nothing does).
    pub through: Vec<Through>,
    /// Whether a grant of it waits for the person's confirmation.
    pub pending: bool,
}

impl PreferenceItem {
    /// Whether some of its messages go out now (its box then withdraws).
    pub fn allowed(&self) -> bool {
        self.reach != Reach::None
    }
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

/// What opening a preference link finds.
#[derive(Debug, Clone)]
pub enum PreferenceOpen {
    /// The page.
    Page(Box<PreferencePage>),
    /// The contact was erased at or after the link's issue (DESIGN.md §8):
    /// the expired page, and nothing can be recorded.
    Expired,
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
    /// The link to the receipt of each change recorded: (consent, URL).
    pub receipts: Vec<(String, String)>,
}

impl Authority {
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
            to: None,
            sequence: 0,
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
    pub async fn preference_page(&self, token: &str) -> Result<Option<PreferenceOpen>, ReadError> {
        let Some(claim) = self
            .links
            .verify(token)
            .filter(|c| c.kind == LinkKind::Preferences)
        else {
            return Ok(None);
        };
        if self.since_issue(&claim).await? != SinceIssue::Kept {
            return Ok(Some(PreferenceOpen::Expired));
        }
        Ok(self
            .preferences_of(claim)
            .map(|p| PreferenceOpen::Page(Box::new(p))))
    }

    /// The preference page of a verified claim, as CanSend decides now: for
    /// each consent, every cell of its scope is decided over that cell's
    /// covering set, exactly as a check of it would be (DESIGN.md §8).
    pub fn preferences_of(&self, claim: Claim) -> Option<PreferencePage> {
        let catalog = self.catalog.load();
        let root = catalog.purpose_root(claim.purpose.as_str()).ok()?;
        let now = self.clock.now();
        let ttl = self.confirmation_ttl;
        let contact = claim.contact.as_str();
        let pending = self.index.pending(contact);
        let items = catalog
            .tree(root)
            .into_iter()
            .filter(|c| !c.spec.retired)
            .filter_map(|c| {
                let (mut allowed, mut stopped) = (0usize, 0usize);
                let mut through: Vec<(ConsentIdx, bool)> = Vec::new();
                for cell in catalog.cells_of(c) {
                    let verdict = self.index.verdict(
                        Held::Lookup,
                        contact,
                        catalog.covering(cell),
                        catalog.terms(),
                        now,
                    );
                    if verdict.allowed() {
                        allowed += 1;
                    } else {
                        stopped += 1;
                    }
                    if let Some((by, _)) = verdict.decided()
                        && by != c.idx
                        && !through.contains(&(by, verdict.allowed()))
                    {
                        through.push((by, verdict.allowed()));
                    }
                }
                through.sort_unstable();
                let reach = match (allowed, stopped) {
                    (0, _) => Reach::None,
                    (_, 0) => Reach::All,
                    _ => Reach::Some,
                };
                Some(PreferenceItem {
                    consent: shown(&catalog, c.idx)?,
                    reach,
                    through: through
                        .into_iter()
                        .map(|(by, allows)| Through {
                            id: catalog.consent_id(by).to_owned(),
                            title: title_of(&catalog, by),
                            allows,
                        })
                        .collect(),
                    // A grant waits, whatever else (a withdrawal) stands.
                    pending: reach == Reach::None
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
        if self.since_issue(claim).await? != SinceIssue::Kept {
            return Ok(Ok(PreferenceResult {
                erased: true,
                ..PreferenceResult::default()
            }));
        }
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
                addresses: Vec::new(),
            };
            let outcome = self.writer.change_waiting(change).await?;
            if outcome.sequence == 0 {
                // From before an erasure of the contact: not recorded.
                result.erased = true;
                continue;
            }
            if let Some(url) = self.receipt_url(&claim.contact, &consent, outcome.sequence) {
                result.receipts.push((consent.to_string(), url));
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

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
//!
//! Every page reached from a link, and every link such a page shows,
//! counts from the first link's issue time: a contact erased at or after it
//! gets the expired page and nothing is recorded (DESIGN.md §8). Whether
//! that is so is asked of the store, so a node whose feed has not applied
//! the erasure yet answers as the node that erased.

use crate::domain::{Catalog, ConsentIdx};
use crate::links::Claim;

use super::{Authority, ReadError};

/// Where the contact of a link stands against erasures since its issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SinceIssue {
    /// Not erased since the link was issued.
    Kept,
    /// Erased at or after the link's issue time, and granted nothing since.
    Erased,
    /// Erased since, then granted again: only a withdrawal still counts
    /// (DESIGN.md rule 4, 5).
    ErasedThenGranted,
}

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

/// The title of a consent, or its id when it has none.
pub(super) fn title_of(catalog: &Catalog, idx: ConsentIdx) -> String {
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

pub(super) fn shown(catalog: &Catalog, idx: ConsentIdx) -> Option<Shown> {
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

impl Authority {
    /// Whether the contact of `claim` was erased at or after the link's
    /// issue time (an erasure at that very time counts, as for changes),
    /// and whether it holds state again since.
    pub(super) async fn since_issue(&self, claim: &Claim) -> Result<SinceIssue, ReadError> {
        let hash = self.hasher.hash(claim.contact.as_str());
        let contact = claim.contact.clone();
        let issued_at = claim.issued_at;
        self.read(move |store| {
            let Some(erased_at) = store.erased_at(&hash)? else {
                return Ok(SinceIssue::Kept);
            };
            if issued_at > erased_at {
                return Ok(SinceIssue::Kept);
            }
            // Only a decision counts: addresses set since are no consent.
            let decided = store
                .contact_states(contact.as_str())?
                .iter()
                .any(|s| !s.consent.is_mark());
            Ok(if decided {
                SinceIssue::ErasedThenGranted
            } else {
                SinceIssue::Erased
            })
        })
        .await
    }
}

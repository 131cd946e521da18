//! Wordings: every version of every consent as it was in force (DESIGN.md
//! §1 and rule 8). An event's (consent, version) points at exactly one
//! wording, so the words a person agreed to can always be shown. Wordings
//! are append-only: never rewritten, never deleted, not when a consent is
//! retired or removed from the catalog.

use super::event::UnixNanos;
use super::ids::ConsentId;

/// One version of one consent, as it came into force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wording {
    /// The consent.
    pub consent: ConsentId,
    /// Its version: 1, then +1 whenever the text, the parent or the
    /// effective scope changes.
    pub version: u32,
    /// The title when this version came into force.
    pub title: String,
    /// The words shown to the person.
    pub text: String,
    /// The parent consent, none for a purpose.
    pub parent: Option<String>,
    /// Effective channels, listed explicitly (sorted), inheritance resolved.
    pub channels: Vec<String>,
    /// Effective brands, listed explicitly (sorted), inheritance resolved.
    pub brands: Vec<String>,
    /// When this version came into force (0: before wordings were kept).
    pub in_force_from: UnixNanos,
}

impl Wording {
    /// Whether `other` asks the person the same thing: same text, parent
    /// and effective scope. A title change alone asks nothing new.
    pub fn same_terms(&self, other: &Wording) -> bool {
        self.text == other.text
            && self.parent == other.parent
            && self.channels == other.channels
            && self.brands == other.brands
    }
}

//! Receipts (DESIGN.md §11): one event of a contact as a signed JSON
//! document a person, or anyone they show it to, can check without trusting
//! the operator's database: what was decided, under which exact words, by
//! whom and how; the record's canonical form, salt, leaf and chain value
//! (SHA-256(salt ‖ record) is the leaf, the chain links it), and the first
//! signed checkpoint that covers it, when one is signed yet. The receipt is
//! signed with the checkpoint key (Ed25519, detached, over the JSON's
//! bytes). The same event always gives the same receipt until a
//! checkpoint covers it, then the same one for good.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::json;

use super::Authority;
use crate::audit::{Canonical, Held, Kind, wording_digest};
use crate::domain::{Action, ConsentId, ContactId, Mark, UnixNanos};
use crate::error::ReadError;
use crate::links::{Claim, LinkKind};

/// A signed receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The receipt, JSON (UTF-8): exactly the bytes signed.
    pub json: String,
    /// The Ed25519 signature over `json`.
    pub signature: Vec<u8>,
    /// The C2SP key id of the signing key (4 bytes).
    pub key_id: Vec<u8>,
}

/// The receipt format's name and version.
pub const RECEIPT_VERSION: &str = "consentd-receipt/1";

fn rfc3339(t: UnixNanos) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl Authority {
    /// The link to the receipt page of the event `sequence` (of `contact`,
    /// on `consent`), shown to the person after they act; none without a
    /// signing key or for nothing recorded.
    pub fn receipt_url(
        &self,
        contact: &ContactId,
        consent: &ConsentId,
        sequence: u64,
    ) -> Option<String> {
        if sequence == 0 || self.signer.is_none() {
            return None;
        }
        let claim = Claim {
            kind: LinkKind::Receipt,
            contact: contact.clone(),
            consent: consent.clone(),
            purpose: consent.clone(),
            channel: String::new(),
            brand: String::new(),
            issued_at: self.clock.now(),
            to: None,
            sequence,
        };
        Some(
            self.links
                .url_of(LinkKind::Receipt, &self.links.mint(&claim)),
        )
    }

    /// The claim of an authentic receipt link.
    pub fn receipt_claim(&self, token: &str) -> Option<Claim> {
        self.links
            .verify(token)
            .filter(|c| c.kind == LinkKind::Receipt)
    }

    /// The signed receipt of the event `sequence` of `contact`; not found
    /// when the contact holds no such consent decision (never recorded,
    /// another contact's, an address mark, or erased).
    pub async fn receipt(&self, contact: ContactId, sequence: u64) -> Result<Receipt, ReadError> {
        if sequence == 0 {
            return Err(crate::domain::FieldError::new("sequence", "must be above 0").into());
        }
        let Some(signer) = self.signer.clone() else {
            return Err(ReadError::Failed(
                "receipts need a signing key (none configured)".into(),
            ));
        };
        let not_found = || {
            ReadError::NotFound(format!(
                "contact_id {contact} holds no consent decision at sequence {sequence}"
            ))
        };
        let id = contact.clone();
        let (link, event, wordings, checkpoint) = self
            .read(move |store| {
                let mut links = store.links_after(sequence - 1, 1)?;
                let found = links.pop().filter(|(l, _)| l.sequence == sequence);
                let (link, event) = match found {
                    Some((l, Held::Event(e))) if l.kind == Kind::Event && e.contact == id => {
                        (Some(l), Some(*e))
                    }
                    _ => (None, None),
                };
                let wordings = match &event {
                    Some(e) => store.wordings(Some(e.consent.as_str()))?,
                    None => Vec::new(),
                };
                let checkpoint = store.checkpoints(sequence - 1, 1)?.pop();
                Ok((link, event, wordings, checkpoint))
            })
            .await?;
        let (Some(link), Some(e)) = (link, event) else {
            return Err(not_found());
        };
        if Mark::of(e.consent.as_str()).is_some() {
            return Err(not_found());
        }
        let wording = wordings.iter().find(|w| w.version == e.version);
        let digest = wording.map_or([0; 32], wording_digest);
        let mut canonical = Canonical::default();
        let record = canonical.event(&e, &digest).to_vec();
        let state = match (e.action, e.pending) {
            (Action::Grant, true) => "pending",
            (Action::Grant, false) => "given",
            (Action::Withdraw, _) => "withdrawn",
        };
        let receipt = json!({
            "receipt": RECEIPT_VERSION,
            "receipt_id": format!("{}/{}", signer.origin(), sequence),
            "controller": &*self.controller,
            "contact_id": e.contact.as_str(),
            "consent": {
                "id": e.consent.as_str(),
                "version": e.version,
                "title": wording.map(|w| w.title.as_str()),
                "text": wording.map(|w| w.text.as_str()),
                "parent": wording.and_then(|w| w.parent.as_deref()),
                "channels": wording.map(|w| &w.channels),
                "brands": wording.map(|w| &w.brands),
                "in_force_from": wording.map(|w| rfc3339(w.in_force_from)),
            },
            "action": match e.action { Action::Grant => "GRANT", Action::Withdraw => "WITHDRAW" },
            "state": state,
            "source": format!("{:?}", e.source),
            "occurred_at": rfc3339(e.occurred_at),
            "recorded_at": rfc3339(e.recorded_at),
            "evidence": &e.evidence,
            "actor": &e.actor,
            "chain": {
                "origin": signer.origin(),
                "sequence": sequence,
                "record": B64.encode(&record),
                "salt": link.salt.map(|s| B64.encode(s)),
                "leaf": B64.encode(link.leaf),
                "chain": B64.encode(link.chain),
            },
            "checkpoint": checkpoint.map(|(_, note)| note),
            "public_key": signer.public_key_base64(),
        });
        let json = serde_json::to_string_pretty(&receipt)
            .map_err(|e| ReadError::Failed(format!("receipt: {e}")))?;
        let (signature, key_id) = signer.sign_raw(json.as_bytes());
        Ok(Receipt {
            json,
            signature,
            key_id,
        })
    }
}

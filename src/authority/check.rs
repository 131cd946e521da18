//! CanSend and CanSendBatch whole, as one call each: the freshness wait,
//! the decision over one catalog snapshot, the one-click link of an allowed
//! answer that asked for it, and the counting. A transport only converts.

use std::time::Instant;

use super::{Answer, Authority, RawAddress, ReadError};
use crate::domain::FieldError;

/// One check as a transport received it.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// Whom to message.
    pub contact: &'a str,
    /// How.
    pub channel: &'a str,
    /// For which brand.
    pub brand: &'a str,
    /// For which purpose (empty: the default).
    pub purpose: &'a str,
    /// Whether an allowed answer carries the List-Unsubscribe URL.
    pub include_unsubscribe: bool,
    /// The address the message goes to, if the caller names it.
    pub to: Option<RawAddress<'a>>,
}

/// The whole answer to one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The decision.
    pub answer: Answer,
    /// The one-click URL, for an allowed answer that asked for it; empty
    /// otherwise.
    pub unsubscribe_url: String,
    /// The List-Id of an allowed answer that asked for its headers (RFC
    /// 2919): stable per (deciding consent, brand); empty otherwise.
    pub list_id: String,
}

impl Authority {
    /// CanSend: waits until `min_sequence` is applied here (at most 1 s),
    /// decides, adds the link when asked, and counts the call.
    pub async fn check(&self, check: Check<'_>, min_sequence: u64) -> Result<Checked, ReadError> {
        let started = Instant::now();
        self.fresh(min_sequence).await?;
        let answer = self.can_send(&check)?;
        let checked = self.dress(&check, answer);
        self.observe_check(started.elapsed());
        Ok(checked)
    }

    /// CanSendBatch: waits for `min_sequence`, then answers every item in
    /// order over one catalog snapshot, handing each answer to `each` as
    /// it is decided; a bad item gets its own error.
    pub async fn check_batch<'a, T: 'a>(
        &self,
        items: &'a [T],
        min_sequence: u64,
        fields: impl Fn(&'a T) -> Check<'a>,
        each: impl FnMut(Result<Checked, FieldError>),
    ) -> Result<(), ReadError> {
        let started = Instant::now();
        self.fresh(min_sequence).await?;
        self.can_send_each(items, fields, each);
        self.observe_check(started.elapsed());
        Ok(())
    }

    /// An answer with its link, when the check asked and it is allowed.
    #[inline]
    pub(super) fn dress(&self, check: &Check<'_>, answer: Answer) -> Checked {
        let unsubscribe_url = match answer.unsubscribe {
            // A link minted for `to` withdraws on it too.
            Some(target) if check.include_unsubscribe && answer.verdict.allowed() => {
                self.unsubscribe_url(check.contact, check.channel, check.brand, target, answer.to)
            }
            _ => String::new(),
        };
        // Like the link, only for a caller building the message's headers:
        // a plain check stays one small answer.
        let list_id = if check.include_unsubscribe && answer.verdict.allowed() {
            format!(
                "{}.{}.{}",
                answer.decided_by,
                check.brand,
                self.links.host()
            )
        } else {
            String::new()
        };
        Checked {
            answer,
            unsubscribe_url,
            list_id,
        }
    }
}

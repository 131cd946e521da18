//! The load bench's baseline: a bare tonic server answering CanSend and
//! CanSendBatch from a `DashMap`, the least a tonic server can do.
//!
//! With `full`, an answer about a known contact also carries what
//! consentd's does (DESIGN.md §3): the deciding consent and when it was
//! decided. The client's CPU per call depends on the answer's size, and
//! the client shares the cores, so the rate ratio against the minimal
//! answer counts the contract's fields against consentd.

use consentd::pb::{self, eligibility_service_server::EligibilityService};
use dashmap::DashMap;
use tonic::{Request, Response, Status};

/// The baseline: the least a tonic server can do for a CanSend.
pub(crate) struct Bare {
    pub(crate) map: DashMap<String, bool>,
    /// Answer with the deciding consent and decision time too.
    pub(crate) full: bool,
}

impl Bare {
    fn answer(&self, contact_id: &str) -> pb::CanSendResponse {
        let held = self.map.get(contact_id).map(|v| *v);
        let allowed = held == Some(true);
        let known = self.full && held.is_some();
        pb::CanSendResponse {
            allowed,
            reason: match held {
                Some(true) => pb::Reason::Granted,
                Some(false) => pb::Reason::Withdrawn,
                None => pb::Reason::NoConsent,
            } as i32,
            decided_by: if known {
                "marketing.acme.email".into()
            } else {
                String::new()
            },
            decided_at: known.then_some(prost_types::Timestamp {
                seconds: 1_764_000_000,
                nanos: 123_456_789,
            }),
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl EligibilityService for Bare {
    async fn can_send(
        &self,
        r: Request<pb::CanSendRequest>,
    ) -> Result<Response<pb::CanSendResponse>, Status> {
        Ok(Response::new(self.answer(&r.get_ref().contact_id)))
    }

    async fn can_send_batch(
        &self,
        r: Request<pb::CanSendBatchRequest>,
    ) -> Result<Response<pb::CanSendBatchResponse>, Status> {
        let results = r
            .get_ref()
            .checks
            .iter()
            .map(|c| self.answer(&c.contact_id))
            .collect();
        Ok(Response::new(pb::CanSendBatchResponse { results }))
    }
}

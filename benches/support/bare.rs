//! The load bench's baseline: a bare tonic server answering CanSend and
//! CanSendBatch from a `DashMap`, the least a tonic server can do.

use consentd::pb::{self, eligibility_service_server::EligibilityService};
use dashmap::DashMap;
use tonic::{Request, Response, Status};

/// The baseline: the least a tonic server can do for a CanSend.
pub(crate) struct Bare {
    pub(crate) map: DashMap<String, bool>,
}

impl Bare {
    fn answer(&self, contact_id: &str) -> pb::CanSendResponse {
        let allowed = self.map.get(contact_id).is_some_and(|v| *v);
        pb::CanSendResponse {
            allowed,
            reason: if allowed {
                pb::Reason::Granted
            } else {
                pb::Reason::NoConsent
            } as i32,
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

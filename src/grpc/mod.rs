//! The gRPC side: thin handlers over [`Authority`]. Each handler validates
//! the request into domain types (or INVALID_ARGUMENT naming the field),
//! calls the authority, and converts the answer with small free functions.

mod admission;
pub(crate) mod convert;
mod eligibility;
pub(crate) mod listen;
mod records;
mod status;
mod unary;
mod watch;
mod wire;
mod writes;

pub(crate) use admission::AdmissionLayer;
use admission::{actor, deadline};

use tonic::{Request, Response, Status};

use crate::authority::Authority;
use crate::domain::{Action, ConsentId, ContactId, FieldError};
use crate::pb;

pub use convert::{catalog_from, catalog_to, timestamp};
pub(crate) use eligibility::Eligibility;
pub use eligibility::MAX_BATCH_CHECKS;
pub use status::invalid;
pub(crate) use watch::ChangesApi;
pub(crate) use writes::{MAX_CHANGE_MESSAGE_BYTES, Writes};

/// Reads a CanSendBatchRequest as the server does, in place; how many
/// checks it holds (`benches/decision.rs` times this).
#[doc(hidden)]
pub fn read_batch(message: &[u8]) -> usize {
    wire::batch_in(message, MAX_BATCH_CHECKS).map_or(0, |b| b.checks.len())
}

/// Answers a CanSendBatchRequest as the server does once its body is read
/// (read, decide, write the framed answer); the answer's length in bytes
/// (`benches/decision.rs` times this on cached keys).
#[doc(hidden)]
pub async fn answer_batch(authority: &Authority, message: &[u8]) -> Result<usize, tonic::Status> {
    Eligibility::new(authority.clone())
        .can_send_batch(message)
        .await
        .map(|b| b.len())
}

// ------------------------------------------------------------ ConsentsService

/// `consent.v1.ConsentsService`: grants, withdrawals, imports, reads,
/// erasure, links.
pub(crate) struct ConsentsApi {
    authority: Authority,
}

impl ConsentsApi {
    pub(crate) fn new(authority: Authority) -> Self {
        Self { authority }
    }

    /// Records a Grant or Withdraw sent through tonic's codec (the
    /// server answers both in [`writes`] before they get here; a router
    /// without the admission layer would not).
    async fn change(
        &self,
        action: Action,
        request: Request<pb::ConsentChange>,
    ) -> Result<crate::authority::Recorded, Status> {
        let actor = actor(&request).to_owned();
        let deadline = deadline(&request);
        record(
            &self.authority,
            action,
            request.into_inner(),
            &actor,
            deadline,
        )
        .await
    }
}

/// Records a Grant or Withdraw (as a change an import row would carry):
/// the request validated into a change (INVALID_ARGUMENT naming the
/// field), then recorded by the writer.
async fn record(
    authority: &Authority,
    action: Action,
    change: pb::ConsentChange,
    actor: &str,
    deadline: Option<std::time::Instant>,
) -> Result<crate::authority::Recorded, Status> {
    let change = convert::change_from(
        action,
        change,
        authority.now(),
        actor,
        authority.addressing(),
    )
    .map_err(invalid)?;
    Ok(authority.record(change, deadline).await?)
}

#[tonic::async_trait]
impl pb::consents_service_server::ConsentsService for ConsentsApi {
    async fn grant(
        &self,
        request: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let recorded = self
            .change(Action::Grant, request.map(pb::ConsentChange::from))
            .await?;
        Ok(Response::new(convert::granted_to(
            recorded.outcome,
            recorded.confirmation_url,
        )))
    }

    async fn withdraw(
        &self,
        request: Request<pb::WithdrawRequest>,
    ) -> Result<Response<pb::WithdrawResponse>, Status> {
        let recorded = self
            .change(Action::Withdraw, request.map(pb::ConsentChange::from))
            .await?;
        Ok(Response::new(convert::withdrawn_to(recorded.outcome)))
    }

    async fn get_contact(
        &self,
        request: Request<pb::GetContactRequest>,
    ) -> Result<Response<pb::GetContactResponse>, Status> {
        let r = request.get_ref();
        let contact = ContactId::parse("contact_id", &r.contact_id).map_err(invalid)?;
        let as_of = r
            .as_of
            .as_ref()
            .map(|t| convert::nanos_from("as_of", t))
            .transpose()
            .map_err(invalid)?;
        let view = match as_of {
            Some(at) => {
                self.authority.fresh(r.min_sequence).await?;
                self.authority.contact_as_of(contact, at).await?
            }
            None => self.authority.contact(contact, r.min_sequence).await?,
        };
        Ok(Response::new(pb::GetContactResponse {
            as_of: r.as_of,
            contact_id: view.contact.to_string(),
            states: view.states.into_iter().map(convert::state_to).collect(),
            pending: view.pending.into_iter().map(convert::pending_to).collect(),
            addresses: view.addresses.iter().map(convert::address_to).collect(),
        }))
    }

    async fn get_address(
        &self,
        request: Request<pb::GetAddressRequest>,
    ) -> Result<Response<pb::GetAddressResponse>, Status> {
        let r = request.get_ref();
        let raw = r
            .address
            .as_ref()
            .map(convert::raw_address)
            .ok_or_else(|| invalid(FieldError::new("address", "is required")))?;
        let view = self.authority.address(raw, r.min_sequence).await?;
        let address = convert::address_to(&view.address);
        Ok(Response::new(pb::GetAddressResponse {
            states: view.states.into_iter().map(convert::state_to).collect(),
            events: view
                .events
                .into_iter()
                .map(|e| pb::ConsentEvent {
                    address: Some(address.clone()),
                    ..convert::event_to(e)
                })
                .collect(),
            address: Some(address),
            undeliverable: view.undeliverable.is_some(),
            undeliverable_since: view.undeliverable.map(timestamp),
        }))
    }

    async fn set_addresses(
        &self,
        request: Request<pb::SetAddressesRequest>,
    ) -> Result<Response<pb::SetAddressesResponse>, Status> {
        let actor = actor(&request).to_owned();
        let deadline = deadline(&request);
        let r = request.get_ref();
        let contact = ContactId::parse("contact_id", &r.contact_id).map_err(invalid)?;
        let raw: Vec<_> = r.addresses.iter().map(convert::raw_address).collect();
        let (addresses, sequence) = self
            .authority
            .set_addresses(contact, &raw, actor, deadline)
            .await?;
        Ok(Response::new(pb::SetAddressesResponse {
            addresses: addresses.iter().map(convert::address_to).collect(),
            sequence,
        }))
    }

    async fn clear_undeliverable(
        &self,
        request: Request<pb::ClearUndeliverableRequest>,
    ) -> Result<Response<pb::ClearUndeliverableResponse>, Status> {
        let actor = actor(&request).to_owned();
        let deadline = deadline(&request);
        let raw = request
            .get_ref()
            .address
            .as_ref()
            .map(convert::raw_address)
            .ok_or_else(|| invalid(FieldError::new("address", "is required")))?;
        let outcome = self
            .authority
            .clear_undeliverable(raw, actor, deadline)
            .await?;
        Ok(Response::new(pb::ClearUndeliverableResponse {
            applied: outcome.applied,
            sequence: outcome.sequence,
        }))
    }

    async fn issue_unsubscribe_link(
        &self,
        request: Request<pb::IssueUnsubscribeLinkRequest>,
    ) -> Result<Response<pb::IssueUnsubscribeLinkResponse>, Status> {
        let r = request.get_ref();
        let to = r.to.as_ref().map(convert::raw_address);
        let (url, consent) =
            self.authority
                .issue_link(&r.contact_id, &r.channel, &r.brand, &r.purpose, to)?;
        Ok(Response::new(pb::IssueUnsubscribeLinkResponse {
            url,
            consent_id: consent.to_owned(),
        }))
    }

    async fn issue_preference_link(
        &self,
        request: Request<pb::IssuePreferenceLinkRequest>,
    ) -> Result<Response<pb::IssuePreferenceLinkResponse>, Status> {
        let r = request.get_ref();
        let url = self
            .authority
            .issue_preference_link(&r.contact_id, &r.purpose, &r.brand)?;
        Ok(Response::new(pb::IssuePreferenceLinkResponse { url }))
    }

    async fn issue_confirmation_link(
        &self,
        request: Request<pb::IssueConfirmationLinkRequest>,
    ) -> Result<Response<pb::IssueConfirmationLinkResponse>, Status> {
        let actor = actor(&request).to_owned();
        let r = request.into_inner();
        let contact = ContactId::parse("contact_id", &r.contact_id).map_err(invalid)?;
        let consent = ConsentId::parse("consent_id", &r.consent_id).map_err(invalid)?;
        let (url, expires_at) = self
            .authority
            .resend_confirmation(contact, consent, &actor)
            .await?;
        Ok(Response::new(pb::IssueConfirmationLinkResponse {
            url,
            expires_at: Some(timestamp(expires_at)),
        }))
    }

    async fn import(
        &self,
        request: Request<tonic::Streaming<pb::ImportRequest>>,
    ) -> Result<Response<pb::ImportResponse>, Status> {
        let actor = actor(&request).to_owned();
        let mut rows = request.into_inner();
        let mut import = self.authority.import()?;
        while let Some(row) = rows.message().await? {
            import
                .row(convert::row_from(
                    row,
                    self.authority.now(),
                    &actor,
                    self.authority.addressing(),
                ))
                .await?;
        }
        Ok(Response::new(convert::summary_to(import.finish().await?)))
    }

    async fn erase_contact(
        &self,
        request: Request<pb::EraseContactRequest>,
    ) -> Result<Response<pb::EraseContactResponse>, Status> {
        let actor = actor(&request).to_owned();
        let r = request.into_inner();
        let contact = ContactId::parse("contact_id", &r.contact_id).map_err(invalid)?;
        let erased_at = self.authority.erase(contact, r.reason, &actor).await?;
        Ok(Response::new(pb::EraseContactResponse {
            erased_at: Some(timestamp(erased_at)),
        }))
    }

    type ExportStatesStream = watch::StatesStream;

    async fn export_states(
        &self,
        request: Request<pb::ExportStatesRequest>,
    ) -> Result<Response<Self::ExportStatesStream>, Status> {
        watch::export_states(&self.authority, request.into_inner())
    }

    async fn export_contact(
        &self,
        request: Request<pb::ExportContactRequest>,
    ) -> Result<Response<pb::ExportContactResponse>, Status> {
        let r = request.into_inner();
        let contact = ContactId::parse("contact_id", &r.contact_id).map_err(invalid)?;
        let export = self
            .authority
            .export(contact, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(convert::export_to(export)))
    }

    async fn get_history(
        &self,
        request: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        let r = request.into_inner();
        let contact = ContactId::parse("contact_id", &r.contact_id).map_err(invalid)?;
        let (events, next_page_token) = self
            .authority
            .history(contact, r.page_size, &r.page_token, r.min_sequence)
            .await?;
        Ok(Response::new(pb::GetHistoryResponse {
            events: events.into_iter().map(convert::event_to).collect(),
            next_page_token,
        }))
    }

    async fn get_receipt(
        &self,
        request: Request<pb::GetReceiptRequest>,
    ) -> Result<Response<pb::GetReceiptResponse>, Status> {
        let r = request.into_inner();
        let contact = ContactId::parse("contact_id", &r.contact_id).map_err(invalid)?;
        let receipt = self.authority.receipt(contact, r.sequence).await?;
        Ok(Response::new(pb::GetReceiptResponse {
            receipt_json: receipt.json,
            signature: receipt.signature,
            key_id: receipt.key_id,
        }))
    }
}

// ------------------------------------------------------------- CatalogService

/// `consent.v1.CatalogService`: apply and read the catalog.
pub(crate) struct CatalogApi {
    authority: Authority,
}

impl CatalogApi {
    pub(crate) fn new(authority: Authority) -> Self {
        Self { authority }
    }
}

#[tonic::async_trait]
impl pb::catalog_service_server::CatalogService for CatalogApi {
    async fn apply_catalog(
        &self,
        request: Request<pb::ApplyCatalogRequest>,
    ) -> Result<Response<pb::ApplyCatalogResponse>, Status> {
        let spec = request
            .into_inner()
            .catalog
            .ok_or_else(|| invalid(FieldError::new("catalog", "is required")))?;
        let spec = catalog_from(spec).map_err(invalid)?;
        let catalog = self.authority.apply_catalog(spec).await?;
        Ok(Response::new(pb::ApplyCatalogResponse {
            catalog: Some(catalog_to(catalog.spec())),
        }))
    }

    async fn get_catalog(
        &self,
        _request: Request<pb::GetCatalogRequest>,
    ) -> Result<Response<pb::GetCatalogResponse>, Status> {
        // Reading the catalog is open to every role: dispatchers and tools
        // need its channels, brands and consents.
        Ok(Response::new(pb::GetCatalogResponse {
            catalog: Some(catalog_to(self.authority.catalog().spec())),
        }))
    }

    async fn get_wordings(
        &self,
        request: Request<pb::GetWordingsRequest>,
    ) -> Result<Response<pb::GetWordingsResponse>, Status> {
        let wordings = self
            .authority
            .wordings(&request.get_ref().consent_id)
            .await?;
        Ok(Response::new(pb::GetWordingsResponse {
            wordings: wordings.into_iter().map(convert::wording_to).collect(),
        }))
    }
}

//! The gRPC side: thin handlers over [`Authority`]. Each handler validates
//! the request into domain types (or INVALID_ARGUMENT naming the field),
//! calls the authority, and converts the answer with small free functions.

mod convert;

use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::{Auth, Role};
use crate::authority::{Answer, Authority, LinkRefusal};
use crate::domain::{Action, ContactId, FieldError, Verdict};
use crate::pb;
use crate::store::StoreError;
use crate::writer::{ChangeOutcome, WriteError, now_nanos};
use std::collections::VecDeque;
use tokio::sync::oneshot;

pub use convert::{catalog_from, catalog_to, timestamp};

/// Most checks in one CanSendBatch (DESIGN.md §3).
pub const MAX_BATCH_CHECKS: usize = 10_000;

/// INVALID_ARGUMENT naming the field, with a BadRequest detail for clients
/// that read rich errors.
pub fn invalid(e: FieldError) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        e.to_string(),
        ErrorDetails::with_bad_request_violation(e.field, e.problem),
    )
}

fn storage(e: StoreError) -> Status {
    // Storage details stay in the log; the client learns only that it failed.
    tracing::error!(error = %e, "storage error");
    Status::internal("storage error; nothing was changed")
}

fn write_error(e: WriteError) -> Status {
    match e {
        WriteError::Invalid(f) => invalid(f),
        WriteError::UnknownConsent(id) => {
            Status::not_found(format!("consent_id: consent {id:?} is not in the catalog"))
        }
        WriteError::FailedPrecondition(m) => Status::failed_precondition(m),
        WriteError::Store(s) => storage(s),
        // Already logged by the writer, with the batch size.
        WriteError::CommitFailed(_) => Status::internal("storage error; nothing was changed"),
        WriteError::Closed => Status::unavailable("shutting down"),
    }
}

fn reason(v: Verdict) -> pb::Reason {
    match v {
        Verdict::Granted { .. } => pb::Reason::Granted,
        Verdict::Withdrawn { .. } => pb::Reason::Withdrawn,
        Verdict::NoConsent => pb::Reason::NoConsent,
        Verdict::NotCovered => pb::Reason::NotCovered,
    }
}

fn answer_to(a: Answer, unsubscribe_url: String) -> pb::CanSendResponse {
    let decided_at = match a.verdict {
        Verdict::Granted { at, .. } | Verdict::Withdrawn { at, .. } => Some(timestamp(at)),
        Verdict::NoConsent | Verdict::NotCovered => None,
    };
    pb::CanSendResponse {
        allowed: a.verdict.allowed(),
        reason: reason(a.verdict) as i32,
        decided_by: a.decided_by.to_owned(),
        decided_at,
        unsubscribe_url,
        error: String::new(),
    }
}

// ---------------------------------------------------------------- Eligibility

pub struct EligibilityService {
    authority: Authority,
    auth: Auth,
}

impl EligibilityService {
    pub fn new(authority: Authority, auth: Auth) -> Self {
        Self { authority, auth }
    }

    /// The List-Unsubscribe URL, for an allowed answer that asked for it.
    fn link_for(&self, r: &pb::CanSendRequest, a: &Answer) -> String {
        match a.unsubscribe {
            Some(target) if r.include_unsubscribe && a.verdict.allowed() => self
                .authority
                .unsubscribe_url(&r.contact_id, &r.channel, &r.brand, target),
            _ => String::new(),
        }
    }
}

#[tonic::async_trait]
impl pb::eligibility_server::Eligibility for EligibilityService {
    async fn can_send(
        &self,
        request: Request<pb::CanSendRequest>,
    ) -> Result<Response<pb::CanSendResponse>, Status> {
        self.auth.require(&request, Role::Check)?;
        let r = request.get_ref();
        let answer = self
            .authority
            .can_send(&r.contact_id, &r.channel, &r.brand, &r.purpose)
            .map_err(invalid)?;
        let url = self.link_for(r, &answer);
        Ok(Response::new(answer_to(answer, url)))
    }

    async fn can_send_batch(
        &self,
        request: Request<pb::CanSendBatchRequest>,
    ) -> Result<Response<pb::CanSendBatchResponse>, Status> {
        self.auth.require(&request, Role::Check)?;
        let checks = &request.get_ref().checks;
        if checks.len() > MAX_BATCH_CHECKS {
            return Err(invalid(FieldError::new(
                "checks",
                format!(
                    "has {} items, at most {MAX_BATCH_CHECKS} allowed",
                    checks.len()
                ),
            )));
        }
        let results = self
            .authority
            .can_send_many(checks, |c| {
                (&c.contact_id, &c.channel, &c.brand, &c.purpose)
            })
            .into_iter()
            .zip(checks)
            .map(|(answer, check)| match answer {
                Ok(a) => {
                    let url = self.link_for(check, &a);
                    answer_to(a, url)
                }
                Err(e) => pb::CanSendResponse {
                    reason: pb::Reason::Invalid as i32,
                    error: e.to_string(),
                    ..Default::default()
                },
            })
            .collect();
        Ok(Response::new(pb::CanSendBatchResponse { results }))
    }
}

// ---------------------------------------------------------------- Consents

/// Import rows queued at the writer at once (two full group commits).
const MAX_IMPORT_IN_FLIGHT: usize = 8192;
/// Longest erasure reason kept with a tombstone.
const MAX_REASON_LEN: usize = 1024;
/// Rejected rows listed in an import summary.
const MAX_IMPORT_ERRORS: usize = 1000;

fn reject(summary: &mut pb::ImportSummary, row: u64, reason: String) {
    summary.rejected += 1;
    if summary.errors.len() < MAX_IMPORT_ERRORS {
        summary.errors.push(pb::RowError { row, reason });
    }
}

pub struct ConsentsService {
    authority: Authority,
    auth: Auth,
}

impl ConsentsService {
    pub fn new(authority: Authority, auth: Auth) -> Self {
        Self { authority, auth }
    }

    async fn change(
        &self,
        action: Action,
        c: pb::ConsentChange,
    ) -> Result<Response<pb::ChangeResult>, Status> {
        let change = convert::change_from(action, c, now_nanos()).map_err(invalid)?;
        let out = self.authority.change(change).await.map_err(write_error)?;
        Ok(Response::new(pb::ChangeResult {
            applied: out.applied,
            state: out.state.map(convert::state_to),
            sequence: out.sequence,
        }))
    }
}

#[tonic::async_trait]
impl pb::consents_server::Consents for ConsentsService {
    async fn grant(
        &self,
        request: Request<pb::ConsentChange>,
    ) -> Result<Response<pb::ChangeResult>, Status> {
        self.auth.require(&request, Role::Write)?;
        self.change(Action::Grant, request.into_inner()).await
    }

    async fn withdraw(
        &self,
        request: Request<pb::ConsentChange>,
    ) -> Result<Response<pb::ChangeResult>, Status> {
        self.auth.require(&request, Role::Write)?;
        self.change(Action::Withdraw, request.into_inner()).await
    }

    async fn get_contact(
        &self,
        request: Request<pb::GetContactRequest>,
    ) -> Result<Response<pb::ContactConsents>, Status> {
        self.auth.require(&request, Role::Write)?;
        let contact =
            ContactId::parse("contact_id", &request.get_ref().contact_id).map_err(invalid)?;
        let states = self.authority.contact_states(&contact).map_err(storage)?;
        Ok(Response::new(pb::ContactConsents {
            contact_id: contact.to_string(),
            states: states.into_iter().map(convert::state_to).collect(),
        }))
    }

    async fn issue_unsubscribe_link(
        &self,
        request: Request<pb::IssueUnsubscribeLinkRequest>,
    ) -> Result<Response<pb::UnsubscribeLink>, Status> {
        self.auth.require(&request, Role::Write)?;
        let r = request.get_ref();
        let (url, consent) = self
            .authority
            .issue_link(&r.contact_id, &r.channel, &r.brand, &r.purpose)
            .map_err(|e| match e {
                LinkRefusal::Invalid(f) => invalid(f),
                e @ LinkRefusal::NotCovered { .. } => Status::failed_precondition(e.to_string()),
            })?;
        Ok(Response::new(pb::UnsubscribeLink {
            url,
            consent_id: consent.to_owned(),
        }))
    }

    async fn import(
        &self,
        request: Request<tonic::Streaming<pb::ImportRow>>,
    ) -> Result<Response<pb::ImportSummary>, Status> {
        self.auth.require(&request, Role::Write)?;
        let mut rows = request.into_inner();
        let mut summary = pb::ImportSummary::default();
        // Rows queued at the writer and not yet answered: bounded, so a
        // million-row import never sits in memory at once.
        let mut pending: VecDeque<(u64, oneshot::Receiver<Result<ChangeOutcome, WriteError>>)> =
            VecDeque::new();
        let tally = |summary: &mut pb::ImportSummary,
                     row: u64,
                     result: Result<ChangeOutcome, WriteError>|
         -> Result<(), Status> {
            match result {
                Ok(out) if out.applied => summary.applied += 1,
                Ok(_) => summary.superseded += 1,
                Err(e @ (WriteError::Store(_) | WriteError::CommitFailed(_))) => {
                    return Err(write_error(e));
                }
                Err(WriteError::Closed) => return Err(Status::unavailable("shutting down")),
                Err(e) => reject(summary, row, e.to_string()),
            }
            Ok(())
        };
        while let Some(row) = rows.message().await? {
            summary.received += 1;
            let n = summary.received;
            match convert::row_from(row, now_nanos()) {
                Ok(change) => {
                    let rx = self.authority.submit(change).await.map_err(write_error)?;
                    pending.push_back((n, rx));
                }
                Err(e) => reject(&mut summary, n, e.to_string()),
            }
            while pending.len() >= MAX_IMPORT_IN_FLIGHT {
                let (row, rx) = pending.pop_front().expect("not empty");
                tally(
                    &mut summary,
                    row,
                    rx.await.unwrap_or(Err(WriteError::Closed)),
                )?;
            }
        }
        for (row, rx) in pending {
            tally(
                &mut summary,
                row,
                rx.await.unwrap_or(Err(WriteError::Closed)),
            )?;
        }
        self.authority.metrics().imported(summary.received);
        tracing::info!(
            received = summary.received,
            applied = summary.applied,
            superseded = summary.superseded,
            rejected = summary.rejected,
            "import done"
        );
        Ok(Response::new(summary))
    }

    async fn erase_contact(
        &self,
        request: Request<pb::EraseContactRequest>,
    ) -> Result<Response<pb::EraseContactResponse>, Status> {
        self.auth.require(&request, Role::Admin)?;
        let r = request.into_inner();
        let contact = ContactId::parse("contact_id", &r.contact_id).map_err(invalid)?;
        if r.reason.len() > MAX_REASON_LEN || r.reason.chars().any(char::is_control) {
            return Err(invalid(FieldError::new(
                "reason",
                format!("must be at most {MAX_REASON_LEN} bytes without control characters"),
            )));
        }
        let erased_at = self
            .authority
            .erase(contact, r.reason)
            .await
            .map_err(write_error)?;
        Ok(Response::new(pb::EraseContactResponse {
            erased_at: Some(timestamp(erased_at)),
        }))
    }

    async fn get_history(
        &self,
        request: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::History>, Status> {
        self.auth.require(&request, Role::Write)?;
        let contact =
            ContactId::parse("contact_id", &request.get_ref().contact_id).map_err(invalid)?;
        let events = self.authority.history(&contact).map_err(storage)?;
        Ok(Response::new(pb::History {
            events: events.into_iter().map(convert::event_to).collect(),
        }))
    }
}

// ---------------------------------------------------------------- Catalog

pub struct CatalogService {
    authority: Authority,
    auth: Auth,
}

impl CatalogService {
    pub fn new(authority: Authority, auth: Auth) -> Self {
        Self { authority, auth }
    }
}

#[tonic::async_trait]
impl pb::catalog_server::Catalog for CatalogService {
    async fn apply_catalog(
        &self,
        request: Request<pb::CatalogSpec>,
    ) -> Result<Response<pb::CatalogSpec>, Status> {
        self.auth.require(&request, Role::Admin)?;
        let spec = catalog_from(request.into_inner());
        let catalog = self
            .authority
            .apply_catalog(spec)
            .await
            .map_err(write_error)?;
        Ok(Response::new(catalog_to(catalog.spec())))
    }

    async fn get_catalog(
        &self,
        request: Request<pb::GetCatalogRequest>,
    ) -> Result<Response<pb::CatalogSpec>, Status> {
        // Reading the catalog is open to every role: dispatchers and tools
        // need its channels, brands and consents.
        self.auth
            .require_any(&request, &[Role::Check, Role::Write, Role::Admin])?;
        Ok(Response::new(catalog_to(self.authority.catalog().spec())))
    }
}

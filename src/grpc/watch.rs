//! `consent.v1.ChangesService`: the Watch stream on the wire. A decision on
//! a contact is an `event`; what concerns an address (a contact's address
//! added or removed, a decision or bounce recorded on the address) is an
//! `address` record naming the address by its keyed hash; an erasure names
//! its contact by its keyed hash only.

use std::pin::Pin;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::convert::{address_to, event_to, state_to, timestamp};
use super::status::invalid;
use crate::authority::{Authority, SnapshotItem, WatchEnd, WatchItem, Watched};
use crate::domain::{Action, Address, EventRecord, Mark, mark::ADDRESS_EVIDENCE};
use crate::pb;

/// `consent.v1.ChangesService`.
pub(crate) struct ChangesApi {
    authority: Authority,
    /// Turns true when the server shuts down: every stream then ends with
    /// UNAVAILABLE (its consumer resumes elsewhere), so no stream holds the
    /// shutdown up.
    stop: watch::Receiver<bool>,
}

impl ChangesApi {
    pub(crate) fn new(authority: Authority, stop: watch::Receiver<bool>) -> Self {
        Self { authority, stop }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::changes_service_server::ChangesService for ChangesApi {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let r = request.into_inner();
        let rx = self
            .authority
            .watch(r.from_sequence, &r.purposes)
            .map_err(invalid)?;
        let mut stop = self.stop.clone();
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        let ended = Status::unavailable(
            "the server is shutting down; resume from the last sequence received",
        );
        let stream = ReceiverStream::new(rx)
            .map(response)
            .take_until(stopped)
            .chain(futures_util::stream::once(async move { Err(ended) }));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The stream of an ExportStates.
pub(super) type StatesStream =
    Pin<Box<dyn Stream<Item = Result<pb::ExportStatesResponse, Status>> + Send>>;

/// `ConsentsService.ExportStates`: the snapshot's rows, each with the
/// sequence it stands at, then the last message saying it is whole.
pub(super) fn export_states(
    authority: &Authority,
    r: pb::ExportStatesRequest,
) -> Result<Response<StatesStream>, Status> {
    let (sequence, rx) = authority.export_states(&r.purposes).map_err(invalid)?;
    let row = move |item: SnapshotItem| -> Result<pb::ExportStatesResponse, Status> {
        Ok(match item? {
            Some(row) => pb::ExportStatesResponse {
                contact_id: row.contact,
                states: row.states.into_iter().map(state_to).collect(),
                sequence,
                addresses: row.addresses.iter().map(|(a, _)| address_to(a)).collect(),
                address_hashes: row.addresses.iter().map(|(_, h)| h.to_vec()).collect(),
                contact_hash: row.contact_hash.to_vec(),
                complete: false,
            },
            None => pb::ExportStatesResponse {
                sequence,
                complete: true,
                ..Default::default()
            },
        })
    };
    Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(row))))
}

/// One record of the stream on the wire, or the status that ends it.
fn response(item: WatchItem) -> Result<pb::WatchResponse, Status> {
    use pb::watch_response::Change;
    let change = match item {
        Ok(Watched::Event(e, hash)) => {
            let contact_hash = hash.map(|h| h.to_vec()).unwrap_or_default();
            match address_change(&e) {
                Some(kind) => Change::Address(address_record(kind, e, contact_hash)),
                None => Change::Event(pb::ConsentEvent {
                    contact_hash,
                    ..event_to(e)
                }),
            }
        }
        Ok(Watched::Erasure { sequence, hash }) => Change::Erasure(pb::Erasure {
            sequence,
            contact_hash: hash.to_vec(),
        }),
        Ok(Watched::Catalog { sequence, version }) => {
            Change::Catalog(pb::CatalogVersion { version, sequence })
        }
        Ok(Watched::Checkpoint { sequence, at }) => Change::Checkpoint(pb::Checkpoint {
            sequence,
            at: Some(timestamp(at)),
        }),
        Err(WatchEnd::Behind) => {
            return Err(Status::resource_exhausted(WatchEnd::Behind.to_string()));
        }
        Err(e @ WatchEnd::Unavailable(_)) => return Err(Status::unavailable(e.to_string())),
    };
    Ok(pb::WatchResponse {
        change: Some(change),
    })
}

/// The kind of address record an event is, if it is one.
fn address_change(e: &EventRecord) -> Option<pb::EventKind> {
    let mark = Mark::of(e.consent.as_str());
    match (mark, e.contact.is_address(), e.action) {
        (Some(Mark::Holds { .. }), _, Action::Grant) => Some(pb::EventKind::AddressAdded),
        (Some(Mark::Holds { .. }), _, Action::Withdraw) => Some(pb::EventKind::AddressRemoved),
        (Some(_), true, Action::Withdraw) => Some(pb::EventKind::Undeliverable),
        (Some(_), true, Action::Grant) => Some(pb::EventKind::UndeliverableCleared),
        (None, true, _) => Some(pb::EventKind::Unspecified),
        _ => None,
    }
}

fn address_record(kind: pb::EventKind, e: EventRecord, contact_hash: Vec<u8>) -> pb::AddressChange {
    let (hash, contact_id, address) = match Mark::of(e.consent.as_str()) {
        Some(Mark::Holds { kind: k, hash }) => {
            let value = match e.action {
                Action::Grant => e
                    .evidence
                    .get(ADDRESS_EVIDENCE)
                    .cloned()
                    .unwrap_or_default(),
                Action::Withdraw => String::new(),
            };
            (
                hash,
                e.contact.to_string(),
                Some(address_to(&Address::recorded(k, value))),
            )
        }
        _ => (
            e.contact.address_hash().unwrap_or_default(),
            String::new(),
            None,
        ),
    };
    pb::AddressChange {
        sequence: e.sequence,
        kind: kind as i32,
        address_hash: hash.to_vec(),
        contact_id,
        address,
        event: Some(pb::ConsentEvent {
            contact_hash,
            ..event_to(e)
        }),
    }
}

//! A contact's addresses (DESIGN.md §9): SetAddresses replaces them, in the
//! contact's history with the actor; a CanSend without `to` then needs
//! every address of the channel's kind to allow (fail closed); GetContact
//! and ExportContact list them; they outlive a restart and go with an
//! erasure, while the opt-outs recorded on them stay.

mod common;

use common::*;
use consentd::pb::{self, Reason};
use tonic::Code;

fn email(value: &str) -> pb::Address {
    pb::Address {
        kind: pb::AddressKind::Email as i32,
        value: value.into(),
    }
}

fn phone(value: &str) -> pb::Address {
    pb::Address {
        kind: pb::AddressKind::Phone as i32,
        value: value.into(),
    }
}

async fn set(
    cons: &mut Consents,
    contact: &str,
    addresses: Vec<pb::Address>,
) -> Result<pb::SetAddressesResponse, tonic::Status> {
    cons.set_addresses(pb::SetAddressesRequest {
        contact_id: contact.into(),
        addresses,
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn listed(cons: &mut Consents, contact: &str) -> Vec<(i32, String)> {
    cons.get_contact(pb::GetContactRequest {
        as_of: None,
        contact_id: contact.into(),
        min_sequence: 0,
    })
    .await
    .unwrap()
    .into_inner()
    .addresses
    .into_iter()
    .map(|a| (a.kind, a.value))
    .collect()
}

async fn reason(server: &TestServer, contact: &str, channel: &str) -> Reason {
    can_send(&mut server.eligibility().await, contact, channel, "acme")
        .await
        .1
}

fn withdrawal_on(address: pb::Address, consent: &str) -> pb::ConsentChange {
    let mut c = change("", consent, None);
    c.address = Some(address);
    c.source = pb::Source::UnsubscribeLink as i32;
    c
}

#[tokio::test]
async fn without_to_every_address_of_the_channels_kind_must_allow() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let mut cons = server.consents().await;
    cons.grant(change("mum", "marketing", Some(now() - 600)))
        .await
        .unwrap();
    let r = set(
        &mut cons,
        "mum",
        vec![email(" Mum@Home.EXAMPLE "), phone("+48 600 100 200")],
    )
    .await
    .unwrap();
    assert_eq!(
        r.addresses,
        vec![email("mum@home.example"), phone("+48600100200")]
    );
    assert!(r.sequence > 0);
    assert_eq!(reason(&server, "mum", "email").await, Reason::Granted);

    // Her mailbox is withdrawn (by the person, on the address): a check
    // without `to` is refused for e-mail, and SMS to her phone still goes.
    cons.withdraw(withdrawal_on(email("mum@home.example"), "marketing.acme"))
        .await
        .unwrap();
    assert_eq!(
        reason(&server, "mum", "email").await,
        Reason::AddressWithdrawn
    );
    assert_eq!(reason(&server, "mum", "sms").await, Reason::Granted);
    // CanSendBatch likewise, item by item.
    let batch = server
        .eligibility()
        .await
        .can_send_batch(pb::CanSendBatchRequest {
            checks: vec![
                check("mum", "email", "acme"),
                check("mum", "sms", "acme"),
                check("mum", "email", "zenith"),
            ],
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        batch.iter().map(|r| r.reason()).collect::<Vec<_>>(),
        vec![Reason::AddressWithdrawn, Reason::Granted, Reason::Granted]
    );
    // Another contact with no addresses is not touched.
    cons.grant(change("dad", "marketing", Some(now() - 600)))
        .await
        .unwrap();
    assert_eq!(reason(&server, "dad", "email").await, Reason::Granted);

    // She moves to another mailbox: the withdrawn one is no longer hers.
    let r = set(
        &mut cons,
        "mum",
        vec![phone("+48600100200"), email("mum@new.example")],
    )
    .await
    .unwrap();
    assert_eq!(reason(&server, "mum", "email").await, Reason::Granted);
    assert_eq!(
        listed(&mut cons, "mum").await,
        vec![
            (pb::AddressKind::Phone as i32, "+48600100200".to_owned()),
            (pb::AddressKind::Email as i32, "mum@new.example".to_owned()),
        ]
    );
    // The same list again records nothing.
    let again = set(
        &mut cons,
        "mum",
        vec![email("mum@new.example"), phone("+48600100200")],
    )
    .await
    .unwrap();
    assert_eq!(again.sequence, 0);
    assert!(r.sequence > 0);

    // Her history says who changed what, as address events (no mark ids).
    let events = history(&server, "mum").await;
    let kinds: Vec<_> = events
        .iter()
        .filter(|e| e.kind != pb::EventKind::Unspecified as i32)
        .map(|e| {
            (
                e.kind(),
                e.address
                    .as_ref()
                    .map(|a| a.value.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (pb::EventKind::AddressAdded, "mum@home.example".into()),
            (pb::EventKind::AddressAdded, "+48600100200".into()),
            (pb::EventKind::AddressRemoved, String::new()),
            (pb::EventKind::AddressAdded, "mum@new.example".into()),
        ]
    );
    assert!(events.iter().all(|e| !e.consent_id.contains('\u{1}')));
    // Her consent states are only consents.
    let view = cons
        .get_contact(pb::GetContactRequest {
            as_of: None,
            contact_id: "mum".into(),
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        view.states
            .iter()
            .map(|s| s.consent_id.as_str())
            .collect::<Vec<_>>(),
        vec!["marketing"]
    );

    // The new mailbox withdrawn too; a restart keeps both her addresses
    // and the refusal.
    cons.withdraw(withdrawal_on(email("mum@new.example"), "marketing"))
        .await
        .unwrap();
    assert_eq!(
        reason(&server, "mum", "email").await,
        Reason::AddressWithdrawn
    );
    server.stop().await;
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let mut cons = server.consents().await;
    assert_eq!(
        reason(&server, "mum", "email").await,
        Reason::AddressWithdrawn
    );
    assert_eq!(reason(&server, "mum", "sms").await, Reason::Granted);
    assert_eq!(listed(&mut cons, "mum").await.len(), 2);

    // ExportContact lists them with everything else.
    let export = cons
        .export_contact(pb::ExportContactRequest {
            contact_id: "mum".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(export.addresses.len(), 2);
    assert!(
        export
            .wordings
            .iter()
            .all(|w| !w.consent_id.contains('\u{1}'))
    );

    // Erased: her addresses go with her, the address's opt-out stays (a new
    // contact record on the same mailbox is still refused).
    cons.erase_contact(pb::EraseContactRequest {
        contact_id: "mum".into(),
        reason: "ticket 7".into(),
    })
    .await
    .unwrap();
    assert!(listed(&mut cons, "mum").await.is_empty());
    cons.grant(change("mum-2", "marketing", None))
        .await
        .unwrap();
    set(&mut cons, "mum-2", vec![email("mum@new.example")])
        .await
        .unwrap();
    assert_eq!(
        reason(&server, "mum-2", "email").await,
        Reason::AddressWithdrawn
    );
    // Nothing of the erased contact's addresses stays in the store.
    server.stop().await;
    let gone = ["mum@home.example", "+48600100200"];
    if on_postgres() {
        let text = tables_text(&database_for(dir.path())).await;
        for value in gone {
            assert!(!text.contains(value), "{value} is in a table");
        }
    } else {
        for file in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(file.unwrap().path()).unwrap();
            for value in gone {
                assert!(
                    !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                    "{value} is in the data files"
                );
            }
        }
    }
}

#[tokio::test]
async fn bad_address_lists_name_the_field_and_change_nothing() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    set(&mut cons, "ola", vec![email("ola@example.com")])
        .await
        .unwrap();
    let cases: Vec<(Vec<pb::Address>, &str)> = vec![
        (
            vec![email("ola@example.com"), email("not an address")],
            "addresses[1].value",
        ),
        (
            vec![pb::Address {
                kind: pb::AddressKind::Unspecified as i32,
                value: "ola@example.com".into(),
            }],
            "addresses[0].kind",
        ),
        (vec![phone("600 100 200")], "addresses[0].value"),
        (
            (0..17)
                .map(|i| email(&format!("ola{i}@example.com")))
                .collect(),
            "addresses",
        ),
    ];
    for (addresses, field) in cases {
        let e = set(&mut cons, "ola", addresses).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    let e = set(&mut cons, "", vec![]).await.unwrap_err();
    assert!(e.message().contains("contact_id"), "{}", e.message());
    // Sixteen is allowed; duplicates count once.
    let sixteen: Vec<_> = (0..16)
        .map(|i| email(&format!("ola{i}@example.com")))
        .chain(std::iter::once(email("OLA0@example.com")))
        .collect();
    assert_eq!(
        set(&mut cons, "ola2", sixteen)
            .await
            .unwrap()
            .addresses
            .len(),
        16
    );
    assert_eq!(
        listed(&mut cons, "ola").await,
        vec![(pb::AddressKind::Email as i32, "ola@example.com".to_owned())]
    );
    server.stop().await;
}

async fn one_click(server: &TestServer, url: &str) -> u16 {
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    http(
        server.http_addr,
        "POST",
        &link_path(server, url),
        &form,
        "List-Unsubscribe=One-Click",
    )
    .await
    .0
}

async fn address_states(cons: &mut Consents, value: &str) -> Vec<String> {
    cons.get_address(pb::GetAddressRequest {
        address: Some(email(value)),
        min_sequence: 0,
    })
    .await
    .unwrap()
    .into_inner()
    .states
    .into_iter()
    .map(|s| format!("{}:{}", s.consent_id, s.action().as_str_name()))
    .collect()
}

#[tokio::test]
async fn a_link_minted_for_an_address_withdraws_on_the_contact_and_on_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let mut cons = server.consents().await;
    for who in ["kim", "lee", "max"] {
        cons.grant(change(who, "marketing", Some(now() - 600)))
            .await
            .unwrap();
    }
    // Kim and Lee share a mailbox; the link is minted for Kim's mail to it.
    let link = cons
        .issue_unsubscribe_link(pb::IssueUnsubscribeLinkRequest {
            contact_id: "kim".into(),
            channel: "email".into(),
            brand: "acme".into(),
            purpose: String::new(),
            to: Some(pb::Address {
                kind: 0,
                value: "Home@Example.com".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!link.url.contains("home"), "the token shows no address");
    assert_eq!(one_click(&server, &link.url).await, 200);
    let kim = can_send(&mut server.eligibility().await, "kim", "email", "acme").await;
    assert_eq!(kim.1, Reason::Withdrawn);
    assert_eq!(
        address_states(&mut cons, "home@example.com").await,
        vec![format!("{}:ACTION_WITHDRAW", link.consent_id)]
    );
    // Lee's own consent stands, but not by mail to that mailbox.
    let mut c = check("lee", "email", "acme");
    c.to = Some(email("home@example.com"));
    let lee = server
        .eligibility()
        .await
        .can_send(c.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lee.reason(), Reason::AddressWithdrawn);
    c.to = Some(email("lee@work.example"));
    assert!(
        server
            .eligibility()
            .await
            .can_send(c)
            .await
            .unwrap()
            .into_inner()
            .allowed
    );

    // A CanSend that asks for the headers with `to` mints such a link too.
    let mut c = check("max", "email", "acme");
    c.to = Some(email("max@example.com"));
    c.include_unsubscribe = true;
    let r = server
        .eligibility()
        .await
        .can_send(c)
        .await
        .unwrap()
        .into_inner();
    assert!(r.allowed && !r.unsubscribe_url.is_empty());
    // Minted before an erasure of Max: the click records nothing, on the
    // contact or on the address.
    cons.erase_contact(pb::EraseContactRequest {
        contact_id: "max".into(),
        reason: "request".into(),
    })
    .await
    .unwrap();
    // Given addresses again since (no consent): still nothing to withdraw.
    set(&mut cons, "max", vec![email("max@example.com")])
        .await
        .unwrap();
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let path = link_path(&server, &r.unsubscribe_url);
    let (status, _, page) = http(
        server.http_addr,
        "POST",
        &path,
        &form,
        "List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(status, 200);
    assert!(page.contains("expired"), "the expired page: {page}");
    let (status, _, page) = http(server.http_addr, "GET", &path, &[], "").await;
    assert_eq!(status, 410, "its page too: {page}");
    assert!(
        address_states(&mut cons, "max@example.com")
            .await
            .is_empty()
    );
    assert!(
        history(&server, "max")
            .await
            .iter()
            .all(|e| e.kind() == pb::EventKind::AddressAdded),
        "the old link recorded nothing on Max"
    );
    // A link without `to` withdraws on the contact only (as before).
    let plain = cons
        .issue_unsubscribe_link(pb::IssueUnsubscribeLinkRequest {
            contact_id: "lee".into(),
            channel: "email".into(),
            brand: "acme".into(),
            purpose: String::new(),
            to: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one_click(&server, &plain.url).await, 200);
    assert!(
        address_states(&mut cons, "lee@work.example")
            .await
            .is_empty()
    );
    // A bad `to` names the field.
    let e = cons
        .issue_unsubscribe_link(pb::IssueUnsubscribeLinkRequest {
            contact_id: "lee".into(),
            channel: "email".into(),
            brand: "acme".into(),
            purpose: String::new(),
            to: Some(email("nope")),
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("to.value"), "{e:?}");
    server.stop().await;
}

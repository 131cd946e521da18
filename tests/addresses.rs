//! Addresses (DESIGN.md §9): a withdrawal recorded on an address blocks it
//! for every contact that sends to it, whatever each contact's own consent;
//! an address GRANT only lifts; the opt-out outlives an erasure and a
//! restart, and no store holds the address's text.

mod common;

use common::*;
use consentd::pb::{self, Reason};
use tonic::Code;

const SHARED: &str = "family@example.com";

fn email(value: &str) -> pb::Address {
    pb::Address {
        kind: pb::AddressKind::Email as i32,
        value: value.into(),
    }
}

/// A change recorded on an address instead of a contact.
fn on_address(address: pb::Address, consent: &str, source: pb::Source) -> pb::ConsentChange {
    let mut c = change("", consent, None);
    c.address = Some(address);
    c.source = source as i32;
    c
}

/// CanSend for `contact` by e-mail to `to` (the kind left to the channel's).
async fn to(server: &TestServer, contact: &str, brand: &str, to: &str) -> (bool, Reason, String) {
    let r = can_send_to(server, contact, "email", brand, to).await;
    (r.allowed, r.reason(), r.decided_by)
}

#[tokio::test]
async fn an_address_withdrawal_blocks_every_contact_that_sends_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let mut cons = server.consents().await;
    // Two contacts (a duplicate, a household) share one mailbox.
    for who in ["mum", "dad"] {
        cons.grant(change(who, "marketing", Some(now() - 600)))
            .await
            .unwrap();
    }
    assert_eq!(
        to(&server, "mum", "acme", SHARED).await,
        (true, Reason::Granted, "marketing".into())
    );

    // The provider reports an unsubscribe by address, written its own way.
    let w = cons
        .withdraw(on_address(
            email("  Family@EXAMPLE.com "),
            "marketing.acme",
            pb::Source::UnsubscribeLink,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(w.applied, "{w:?}");
    for who in ["mum", "dad"] {
        assert_eq!(
            to(&server, who, "acme", SHARED).await,
            (false, Reason::AddressWithdrawn, "marketing.acme".into()),
            "{who}"
        );
        // Its scope only: Zenith's mail to the same address still goes.
        assert_eq!(to(&server, who, "zenith", SHARED).await.1, Reason::Granted);
        // Another address of hers is not touched.
        assert!(to(&server, who, "acme", "mum@work.example").await.0);
    }
    // The contacts' own decisions are unchanged.
    let (allowed, reason, _) =
        can_send(&mut server.eligibility().await, "mum", "email", "acme").await;
    assert_eq!((allowed, reason), (true, Reason::Granted));

    // An address GRANT never gives consent: a contact with none stays out.
    let g = cons
        .grant(on_address(
            email(SHARED),
            "marketing.acme",
            pb::Source::Form,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        g.applied && !g.pending && g.confirmation_url.is_empty(),
        "{g:?}"
    );
    assert_eq!(
        to(&server, "nobody", "acme", SHARED).await.1,
        Reason::NoConsent
    );
    // ...it only lifts the withdrawal.
    assert_eq!(to(&server, "mum", "acme", SHARED).await.1, Reason::Granted);

    // Withdrawn again; the address's own record answers GetAddress, and
    // names no contact.
    cons.withdraw(on_address(
        email(SHARED),
        "marketing",
        pb::Source::UnsubscribeLink,
    ))
    .await
    .unwrap();
    let view = cons
        .get_address(pb::GetAddressRequest {
            address: Some(email("FAMILY@example.com")),
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(view.address, Some(email(SHARED)));
    assert_eq!(view.events.len(), 3, "{view:?}");
    assert!(
        view.events
            .iter()
            .all(|e| e.contact_id.is_empty() && e.address == Some(email(SHARED)))
    );
    assert_eq!(view.states.len(), 2);

    // Erasing a contact never lifts its addresses' opt-outs.
    cons.erase_contact(pb::EraseContactRequest {
        contact_id: "mum".into(),
        reason: "asked".into(),
    })
    .await
    .unwrap();
    cons.grant(change("mum", "marketing", None)).await.unwrap();
    assert_eq!(
        to(&server, "mum", "zenith", SHARED).await.1,
        Reason::AddressWithdrawn
    );
    server.stop().await;

    // Nor does a restart; and no store file holds the address's text.
    let server = TestServer::start_in(dir.path(), None).await;
    assert_eq!(
        to(&server, "dad", "orbit", SHARED).await,
        (false, Reason::AddressWithdrawn, "marketing".into())
    );
    assert!(
        history(&server, "dad").await.len() == 1,
        "address events are not the contact's"
    );
    server.stop().await;
    if !on_postgres() {
        for file in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(file.unwrap().path()).unwrap();
            assert!(
                !bytes.windows(SHARED.len()).any(|w| w == SHARED.as_bytes()),
                "the address's text is in the data files"
            );
        }
    } else {
        let text = tables_text(&database_for(dir.path())).await;
        assert!(!text.contains(SHARED), "the address's text is in a table");
    }
}

#[tokio::test]
async fn a_persons_address_withdrawal_sticks_against_a_systems_grant() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    cons.grant(change("pat", "marketing", Some(now() - 600)))
        .await
        .unwrap();
    cons.withdraw(on_address(
        email("pat@example.com"),
        "marketing",
        pb::Source::UnsubscribeLink,
    ))
    .await
    .unwrap();
    // A CRM sync re-grants the address: taken as pending, no link to mail,
    // still blocked.
    let sync = cons
        .grant(on_address(
            email("pat@example.com"),
            "marketing",
            pb::Source::Import,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        sync.pending && !sync.applied && sync.confirmation_url.is_empty(),
        "{sync:?}"
    );
    assert_eq!(
        to(&server, "pat", "acme", "pat@example.com").await.1,
        Reason::AddressWithdrawn
    );
    // An operator vouching for the person lifts it.
    let mut vouched = on_address(email("pat@example.com"), "marketing", pb::Source::Operator);
    vouched.confirmed = true;
    assert!(cons.grant(vouched).await.unwrap().into_inner().applied);
    assert_eq!(
        to(&server, "pat", "acme", "pat@example.com").await.1,
        Reason::Granted
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_addresses_name_the_field_and_change_nothing() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    let mut both = on_address(email("a@example.com"), "marketing", pb::Source::Form);
    both.contact_id = "anna".into();
    let no_kind = on_address(
        pb::Address {
            kind: 0,
            value: "a@example.com".into(),
        },
        "marketing",
        pb::Source::Form,
    );
    let bad_mail = on_address(email("not an address"), "marketing", pb::Source::Form);
    let national = on_address(
        pb::Address {
            kind: pb::AddressKind::Phone as i32,
            value: "601 234 567".into(),
        },
        "marketing",
        pb::Source::Form,
    );
    for (c, field) in [
        (both, "address"),
        (no_kind, "address.kind"),
        (bad_mail, "address.value"),
        (national, "address.value"),
    ] {
        let e = cons.withdraw(c).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().starts_with(field), "{field}: {e:?}");
    }
    // A national number names the way out.
    let e = cons
        .get_address(pb::GetAddressRequest {
            address: Some(pb::Address {
                kind: pb::AddressKind::Phone as i32,
                value: "601 234 567".into(),
            }),
            min_sequence: 0,
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("--phone-region"), "{e:?}");

    // CanSend's `to`: a kind against the channel's, a channel without one.
    let mut c = check("anna", "email", "acme");
    c.to = Some(pb::Address {
        kind: pb::AddressKind::Phone as i32,
        value: "+48601234567".into(),
    });
    let e = server.eligibility().await.can_send(c).await.unwrap_err();
    assert!(e.message().starts_with("to.kind"), "{e:?}");
    let mut c = check("anna", "push", "acme");
    c.to = Some(email("a@example.com"));
    let r = server.eligibility().await.can_send(c).await;
    assert!(
        r.is_ok(),
        "a kind named is enough on a channel without one: {r:?}"
    );
    let mut c = check("anna", "push", "acme");
    c.to = Some(pb::Address {
        kind: 0,
        value: "a@example.com".into(),
    });
    let e = server.eligibility().await.can_send(c).await.unwrap_err();
    assert!(e.message().starts_with("to.kind"), "{e:?}");
    // In a batch, a bad `to` is that item's error; the others are answered.
    let mut bad = check("anna", "email", "acme");
    bad.to = Some(email("nope"));
    let batch = server
        .eligibility()
        .await
        .can_send_batch(pb::CanSendBatchRequest {
            checks: vec![bad, check("anna", "email", "acme")],
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.results[0].reason(), Reason::Invalid);
    assert!(batch.results[0].error.starts_with("to.value"));
    assert_eq!(batch.results[1].reason(), Reason::NoConsent);
    server.stop().await;
}

#[tokio::test]
async fn phone_numbers_are_one_address_however_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(dir.path());
    config.catalog = Some(example_catalog_path());
    config.phone_region = Some("PL".into());
    let server = TestServer::start_with(config).await;
    let mut cons = server.consents().await;
    cons.grant(change("ola", "marketing", Some(now() - 60)))
        .await
        .unwrap();
    cons.withdraw(on_address(
        pb::Address {
            kind: pb::AddressKind::Phone as i32,
            value: "601-234-567".into(),
        },
        "marketing.zenith",
        pb::Source::UnsubscribeLink,
    ))
    .await
    .unwrap();
    for written in ["+48 601 234 567", "0048601234567", "601234567"] {
        let r = can_send_to(&server, "ola", "sms", "zenith", written).await;
        assert_eq!(r.reason(), Reason::AddressWithdrawn, "{written}");
    }
    let view = cons
        .get_address(pb::GetAddressRequest {
            address: Some(pb::Address {
                kind: pb::AddressKind::Phone as i32,
                value: "601 234 567".into(),
            }),
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(view.address.unwrap().value, "+48601234567");
    server.stop().await;
}

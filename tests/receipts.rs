//! Receipts (DESIGN.md §11), end to end, on redb and (in
//! `tests/on_postgres.rs`) on PostgreSQL: GetReceipt's signed JSON against
//! the history and the published key, the checkpoint that comes to cover
//! it, and the page a person reaches after they act (`/r/{token}`).

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use consentd::pb;

/// A receipt names what the person agreed to, in the words of the time; its
/// signature verifies with the published key; its record hashes to its
/// leaf; after a checkpoint it carries the signed note that covers it; an
/// erasure takes it.
#[tokio::test]
async fn a_receipt_is_signed_and_matches_the_history_and_a_checkpoint_covers_it() {
    use consentd::audit::note;
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let mut c = server.consents().await;
    let granted = c
        .grant(change("anna", "marketing.acme", None))
        .await
        .unwrap()
        .into_inner();
    c.grant(change("bob", "marketing", None)).await.unwrap();
    let receipt = |c: &mut Consents, contact: &str, sequence: u64| {
        let request = pb::GetReceiptRequest {
            contact_id: contact.into(),
            sequence,
        };
        let mut client = c.0.clone();
        async move { client.get_receipt(request).await }
    };
    let r = receipt(&mut c, "anna", granted.sequence)
        .await
        .unwrap()
        .into_inner();
    let v: serde_json::Value = serde_json::from_str(&r.receipt_json).unwrap();
    let event = history(&server, "anna").await.remove(0);
    let wordings = server
        .catalog()
        .await
        .get_wordings(pb::GetWordingsRequest {
            consent_id: "marketing.acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .wordings;
    assert_eq!(v["consent"]["id"], "marketing.acme");
    assert_eq!(v["consent"]["text"], wordings[0].text.as_str());
    assert_eq!(v["consent"]["version"], event.version);
    assert_eq!(
        (v["action"].as_str(), v["state"].as_str()),
        (Some("GRANT"), Some("given"))
    );
    assert_eq!(v["evidence"]["form"], "signup-2026");
    assert_eq!(v["chain"]["sequence"], event.sequence);
    assert_eq!(
        v["chain"]["chain"],
        B64.encode(&event.chain),
        "the chain GetHistory shows"
    );
    assert_eq!(event.chain.len(), 32);
    let b = |k: &str| B64.decode(v["chain"][k].as_str().unwrap()).unwrap();
    let mut h = Sha256::new();
    h.update(b("salt"));
    h.update(b("record"));
    assert_eq!(
        h.finalize().to_vec(),
        b("leaf"),
        "SHA-256(salt ‖ record) is the leaf"
    );
    // The signature, with the key consentctl prints.
    let key = dir.path().join("signing.key");
    let (_, public, _) =
        consentctl_alone(&["audit", "key", "--signing-key", key.to_str().unwrap()]);
    let key = note::parse_public_key(&public).unwrap();
    assert_eq!(v["public_key"], public.trim());
    let sig = ed25519_dalek::Signature::from_slice(&r.signature).unwrap();
    key.verify_strict(r.receipt_json.as_bytes(), &sig).unwrap();
    assert_eq!(r.key_id, note::key_id("consentd", &key).to_vec());
    let mut changed = r.receipt_json.clone().into_bytes();
    let at = r.receipt_json.find("GRANT").unwrap();
    changed[at..at + 5].copy_from_slice(b"GRANX");
    assert!(key.verify_strict(&changed, &sig).is_err());

    // Withdrawals stick: her own withdrawal, then a system's grant over it
    // waits for her (double opt-in): its receipt says so, and the
    // withdrawal's says she withdrew.
    let withdrawn = c
        .withdraw(change("anna", "marketing.acme", None))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    let mut over = change("anna", "marketing.acme", None);
    over.source = pb::Source::Api as i32;
    let waiting = c.grant(over).await.unwrap().into_inner();
    assert!(waiting.pending);
    let state = |json: &str| {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        (
            v["action"].as_str().unwrap().to_owned(),
            v["state"].as_str().unwrap().to_owned(),
        )
    };
    let r = receipt(&mut c, "anna", withdrawn)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        state(&r.receipt_json),
        ("WITHDRAW".into(), "withdrawn".into())
    );
    let r = receipt(&mut c, "anna", waiting.sequence)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&r.receipt_json), ("GRANT".into(), "pending".into()));

    // Bad and unknown requests.
    let err = receipt(&mut c, "anna", 0).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("sequence"), "{}", err.message());
    let err = receipt(&mut c, "", 1).await.unwrap_err();
    assert!(err.message().contains("contact_id"), "{}", err.message());
    let bobs = history(&server, "bob").await[0].sequence;
    let err = receipt(&mut c, "anna", bobs).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "another contact's event");
    server.stop().await;

    // After the shutdown checkpoint and a restart: the note that covers it.
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let mut c = server.consents().await;
    let r = receipt(&mut c, "anna", granted.sequence)
        .await
        .unwrap()
        .into_inner();
    let v: serde_json::Value = serde_json::from_str(&r.receipt_json).unwrap();
    let cp = note::verify(v["checkpoint"].as_str().unwrap(), &key).unwrap();
    assert!(cp.sequence >= granted.sequence, "{cp:?}");
    c.erase_contact(pb::EraseContactRequest {
        contact_id: "anna".into(),
        reason: "art. 17".into(),
    })
    .await
    .unwrap();
    let err = receipt(&mut c, "anna", granted.sequence).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::NotFound,
        "an erasure takes its receipts"
    );
    server.stop().await;
}

/// The page after an unsubscribe links to the receipt of what was just
/// recorded; its download is the signed receipt; a forged link and one to
/// an erased contact's receipt get the one 404.
#[tokio::test]
async fn the_unsubscribe_page_links_its_receipt_and_an_erasure_takes_it() {
    let server = TestServer::start().await;
    let mut c = server.consents().await;
    c.grant(change("ola", "marketing", None)).await.unwrap();
    let link = unsubscribe_link(&server, "ola", "email", "acme").await;
    let path = link_path(&server, &link.url);
    let (status, _, page) = http(server.http_addr, "POST", &path, &[], "").await;
    assert_eq!(status, 200, "{page}");
    let needle = "class=\"receipt-link\" href=\"";
    let at = page.find(needle).expect(&page) + needle.len();
    let receipt_url = &page[at..at + page[at..].find('"').unwrap()];
    let receipt_path = link_path(&server, receipt_url);
    assert!(receipt_path.starts_with("/r/"), "{receipt_path}");
    let (status, _, html) = http(server.http_addr, "GET", &receipt_path, &[], "").await;
    assert_eq!(status, 200);
    assert!(html.contains("You withdrew your consent"), "{html}");
    let (status, head, json) = http(
        server.http_addr,
        "GET",
        &format!("{receipt_path}?format=json"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(head.to_lowercase().contains("application/json"), "{head}");
    let d: serde_json::Value = serde_json::from_str(&json).unwrap();
    let receipt = d["receipt"].as_str().unwrap();
    let v: serde_json::Value = serde_json::from_str(receipt).unwrap();
    assert_eq!(
        (v["action"].as_str(), v["source"].as_str()),
        (Some("WITHDRAW"), Some("UnsubscribeLink"))
    );
    let withdrawal = history(&server, "ola").await.pop().unwrap();
    assert_eq!(v["chain"]["sequence"], withdrawal.sequence);
    let key = consentd::audit::note::parse_public_key(v["public_key"].as_str().unwrap()).unwrap();
    let sig = B64.decode(d["signature"].as_str().unwrap()).unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
    key.verify_strict(receipt.as_bytes(), &sig).unwrap();

    // A token altered by one character: the one 404.
    let mut forged = receipt_path.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let (status, _, _) = http(server.http_addr, "GET", &forged, &[], "").await;
    assert_eq!(status, 404);
    // Erased: the link minted before is dead.
    c.erase_contact(pb::EraseContactRequest {
        contact_id: "ola".into(),
        reason: "art. 17".into(),
    })
    .await
    .unwrap();
    let (status, _, body) = http(server.http_addr, "GET", &receipt_path, &[], "").await;
    assert_eq!(status, 404);
    assert!(!body.contains("ola"));
    server.stop().await;
}

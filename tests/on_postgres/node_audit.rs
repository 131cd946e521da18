//! The chain across nodes (DESIGN.md §11): two nodes writing at the same
//! moment extend one chain, in sequence order, under the commit lock; an
//! erasure on one is linked among the other's writes; every checkpoint
//! either signs verifies with the one key; a receipt from either node is
//! the same; a node given another key refuses to start.

use consentd::pb;

use super::common::*;
use super::nodes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_writing_at_once_extend_one_chain_that_verifies() {
    let (nodes, dirs, url) = nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    // 2 × 8 writers at once, on both nodes, then an erasure on one while
    // the other writes: of a contact the other node has granted by then
    // (erased before its grant, the grant would stand, rightly).
    let (granted, first_granted) = tokio::sync::oneshot::channel::<()>();
    let mut granted = Some(granted);
    let mut tasks = Vec::new();
    for (n, node) in [a, b].into_iter().enumerate() {
        for w in 0..8 {
            let mut c = node.consents().await;
            let mut tell = if (n, w) == (1, 0) {
                granted.take()
            } else {
                None
            };
            tasks.push(tokio::spawn(async move {
                let mut last = 0;
                for i in 0..25 {
                    let who = format!("n{n}-w{w}-{i}");
                    last = c
                        .grant(change(&who, "marketing", None))
                        .await
                        .unwrap()
                        .into_inner()
                        .sequence;
                    if let Some(tell) = tell.take() {
                        let _ = tell.send(());
                    }
                }
                last
            }));
        }
    }
    let mut erase = a.consents().await;
    let erased = tokio::spawn(async move {
        first_granted.await.unwrap();
        erase
            .erase_contact(pb::EraseContactRequest {
                contact_id: "n1-w0-0".into(),
                reason: "art. 17".into(),
            })
            .await
    });
    for t in tasks {
        t.await.unwrap();
    }
    erased.await.unwrap().unwrap();

    // The same receipt from either node.
    let seq = history(a, "n0-w1-3").await[0].sequence;
    let receipt = |node: &TestServer| {
        let node_addr = node.grpc_addr;
        async move {
            let ch = tonic::transport::Channel::from_shared(format!("http://{node_addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            pb::consents_service_client::ConsentsServiceClient::new(ch)
                .get_receipt(pb::GetReceiptRequest {
                    contact_id: "n0-w1-3".into(),
                    sequence: seq,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let (ra, rb) = (receipt(a).await, receipt(b).await);
    assert_eq!(ra.receipt_json, rb.receipt_json);
    assert_eq!(ra.signature, rb.signature);

    let key = dirs[0].path().join("signing.key");
    for node in nodes {
        node.stop().await;
    }
    let (_, public, _) =
        consentctl_alone(&["audit", "key", "--signing-key", key.to_str().unwrap()]);
    let (ok, out, err) = consentctl_alone(&[
        "--json",
        "audit",
        "verify",
        "--store",
        &url,
        "--key",
        public.trim(),
    ]);
    assert!(ok, "{out} {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // The catalog, 400 grants less the erased contact's one, the erasure.
    assert_eq!(v["records"], 1 + 399 + 1, "{v}");
    assert_eq!(v["erased"], 1, "{v}");
    assert!(
        v["checkpoints"].as_u64().unwrap() >= 2,
        "each node signed at its stop: {v}"
    );

    // A node with a key of its own refuses to start on this store.
    let dir = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(dir.path());
    config.store = url.clone();
    let err = match consentd::server::Server::bind(&config).await {
        Ok(_) => panic!("a node with another key started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("--signing-key"), "{err}");
}

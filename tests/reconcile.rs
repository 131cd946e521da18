//! `consentctl reconcile` (DESIGN.md §9) on the sample exports in
//! `examples/suppressions/`, against a running server: it reports what the
//! provider suppresses that consentd would allow and, of the addresses
//! named, what consentd withdrew that the provider does not list; `--apply`
//! records the first as address withdrawals (source PROVIDER, the file and
//! its digest in the evidence) and never grants. And `consentctl addresses`
//! / `address` for operators.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use consentd::pb::{self, Reason};

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/suppressions")
}

fn providers(dir: &Path) -> PathBuf {
    let path = dir.join("providers.toml");
    std::fs::write(
        &path,
        r#"
[[provider]]
name = "mail-acme"
kind = "sendgrid"
brand = "acme"
public_key = "PUBLIC_KEY"
[provider.consents]
"*" = "marketing.acme"

[[provider]]
name = "mailgun-acme"
kind = "mailgun"
brand = "acme"
signing_key = "k"
[provider.consents]
"newsletter" = "marketing.acme.email"
"*" = "marketing.acme"

[[provider]]
name = "postmark-acme"
kind = "postmark"
brand = "acme"
username = "u"
password = "p"
[provider.consents]
"*" = "marketing.acme"
"#
        .replace("PUBLIC_KEY", &sendgrid_public_key()),
    )
    .unwrap();
    path
}

/// The base64 DER of a P-256 key of the test's own (SendGrid's format).
fn sendgrid_public_key() -> String {
    sign::sendgrid_public_key(&p256::ecdsa::SigningKey::from_bytes(&[9u8; 32].into()).unwrap())
}

fn ctl(server: &TestServer, providers: &Path, args: &[&str]) -> (bool, String, String) {
    consentctl(
        server,
        args,
        &[("CONSENTD_PROVIDERS", providers.as_os_str())],
    )
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"))
}

async fn withdraw_address(server: &TestServer, value: &str, consent: &str) {
    let mut c = change("", consent, None);
    c.address = Some(pb::Address {
        kind: pb::AddressKind::Email as i32,
        value: value.into(),
    });
    c.source = pb::Source::UnsubscribeLink as i32;
    server.consents().await.withdraw(c).await.unwrap();
}

async fn states_on(server: &TestServer, value: &str) -> Vec<pb::ConsentState> {
    server
        .consents()
        .await
        .get_address(pb::GetAddressRequest {
            address: Some(pb::Address {
                kind: pb::AddressKind::Email as i32,
                value: value.into(),
            }),
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reports_both_ways_and_apply_only_withdraws() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let providers = providers(dir.path());
    // consentd already holds Ann's opt-out (the provider's too) and Dan's
    // (which the provider lacks).
    withdraw_address(&server, "ann@example.com", "marketing").await;
    withdraw_address(&server, "dan@example.com", "marketing.acme").await;
    // A withdrawal of a narrower consent does not cover the provider's.
    withdraw_address(&server, "cat@example.com", "marketing.acme.email").await;
    let sendgrid = samples().join("sendgrid-global-unsubscribes.csv");
    let upload = dir.path().join("upload.csv");
    let args = |apply: bool| {
        let mut a = vec![
            "--json".to_owned(),
            "reconcile".into(),
            "--provider".into(),
            "mail-acme".into(),
            "--suppressions".into(),
            sendgrid.to_str().unwrap().into(),
            "--addresses".into(),
            samples().join("addresses.csv").to_str().unwrap().into(),
            "--upload".into(),
            upload.to_str().unwrap().into(),
        ];
        if apply {
            a.push("--apply".into());
        }
        a
    };
    let run = |apply: bool| {
        let a = args(apply);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        ctl(&server, &providers, &a)
    };
    let (ok, out, err) = run(false);
    assert!(ok, "{err}");
    let report = json(&out);
    assert_eq!(report["suppressed"], 3);
    assert_eq!(report["agree"], 1, "{report}");
    assert_eq!(
        report["to_withdraw"],
        serde_json::json!([{"address": "Bob@Example.com", "consent_id": "marketing.acme"}])
    );
    assert_eq!(report["to_upload"], serde_json::json!(["dan@example.com"]));
    assert_eq!(report["unreadable"], serde_json::json!(["not-an-address"]));
    assert_eq!(report["recorded"], 0);
    assert_eq!(
        std::fs::read_to_string(&upload).unwrap(),
        "email\ndan@example.com\n"
    );
    assert!(
        states_on(&server, "bob@example.com").await.is_empty(),
        "a report records nothing"
    );

    // --apply records Bob's, as the provider's, naming the file.
    server
        .consents()
        .await
        .grant(change("bob", "marketing", Some(now() - 600)))
        .await
        .unwrap();
    let (ok, out, err) = run(true);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["recorded"], 1);
    let bob = states_on(&server, "bob@example.com").await;
    assert_eq!(bob.len(), 1);
    assert_eq!(
        (bob[0].consent_id.as_str(), bob[0].source()),
        ("marketing.acme", pb::Source::Provider)
    );
    let r = can_send_to(&server, "bob", "email", "acme", "bob@example.com").await;
    assert_eq!(r.reason(), Reason::AddressWithdrawn);
    // Run again: nothing left to record; nothing was ever granted.
    let (ok, out, _) = run(true);
    assert!(ok);
    let again = json(&out);
    assert_eq!(
        (again["recorded"].as_u64(), again["agree"].as_u64()),
        (Some(0), Some(2))
    );
    assert!(
        states_on(&server, "ann@example.com")
            .await
            .iter()
            .all(|s| s.action() == pb::Action::Withdraw)
    );

    // Mailgun's export names a tag: the tag's consent; `*` the default.
    let (ok, out, err) = ctl(
        &server,
        &providers,
        &[
            "--json",
            "reconcile",
            "--provider",
            "mailgun-acme",
            "--suppressions",
            samples().join("mailgun-unsubscribes.csv").to_str().unwrap(),
            "--apply",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(json(&out)["recorded"], 2);
    assert_eq!(
        states_on(&server, "eve@example.com").await[0].consent_id,
        "marketing.acme.email"
    );
    assert_eq!(
        states_on(&server, "fay@example.com").await[0].consent_id,
        "marketing.acme"
    );
    // Postmark's, human output; an unknown provider is an error naming it.
    let (ok, out, err) = ctl(
        &server,
        &providers,
        &[
            "reconcile",
            "--provider",
            "postmark-acme",
            "--suppressions",
            samples()
                .join("postmark-suppressions.csv")
                .to_str()
                .unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("1 the provider suppresses that consentd would allow"),
        "{out}"
    );
    assert!(out.contains("gil@example.com"), "{out}");
    let (ok, _, err) = ctl(
        &server,
        &providers,
        &[
            "reconcile",
            "--provider",
            "ghost",
            "--suppressions",
            "x.csv",
        ],
    );
    assert!(!ok && err.contains("ghost"), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_set_and_read_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let providers = providers(dir.path());
    let (ok, out, err) = ctl(
        &server,
        &providers,
        &[
            "--json",
            "addresses",
            "ola",
            "--set",
            "Ola@Example.com",
            "--set",
            "phone:+48 600 100 200",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        json(&out)["addresses"],
        serde_json::json!(["email:ola@example.com", "phone:+48600100200"])
    );
    let (ok, out, _) = ctl(&server, &providers, &["addresses", "ola"]);
    assert!(
        ok && out.contains("email:ola@example.com, phone:+48600100200"),
        "{out}"
    );
    withdraw_address(&server, "ola@example.com", "marketing").await;
    let (ok, out, _) = ctl(
        &server,
        &providers,
        &["--json", "address", "ola@example.com"],
    );
    assert!(ok);
    let v = json(&out);
    assert_eq!(v["states"][0]["consent_id"], "marketing");
    assert_eq!(v["undeliverable"], false);
    let (ok, out, _) = ctl(&server, &providers, &["history", "ola"]);
    assert!(ok && out.contains("ADDRESS_ADDED ola@example.com"), "{out}");
    let (ok, _, err) = ctl(&server, &providers, &["address", "email:nope"]);
    assert!(!ok && err.contains("address.value"), "{err}");
    let (ok, out, _) = ctl(&server, &providers, &["addresses", "ola", "--none"]);
    assert!(ok && out.contains("no addresses"), "{out}");
    server.stop().await;
}

//! consentctl driven as a subprocess against a running server.

mod common;

use std::process::Command;

use common::*;

const TOKEN: &str = "ops-token-0123456789abcdef";

fn ctl(server: &TestServer, args: &[&str]) -> (bool, String, String) {
    consentctl(server, args, &[("CONSENTD_TOKEN", TOKEN.as_ref())])
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(dir.path());
    config.tokens = vec![format!("check+write+admin:{TOKEN}")];
    let server = TestServer::start_with(config).await;
    let catalog = example_catalog_path();

    let (ok, out, err) = ctl(&server, &["catalog", "apply", catalog.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("7 consents"), "{out}");
    let (ok, out, _) = ctl(&server, &["--json", "catalog", "show"]);
    assert!(ok);
    assert_eq!(json(&out)["default_purpose"], "marketing");
    let (ok, out, _) = ctl(&server, &["--json", "catalog", "wordings", "surveys"]);
    assert!(ok);
    let w = &json(&out)["wordings"][0];
    assert_eq!(
        (w["consent_id"].as_str(), w["version"].as_u64()),
        (Some("surveys"), Some(1))
    );
    assert_eq!(w["channels"], serde_json::json!(["email"]));
    let (ok, out, _) = ctl(&server, &["catalog", "wordings", "marketing.acme.email"]);
    assert!(
        ok && out.contains("I agree to receive the Acme newsletter by e-mail."),
        "{out}"
    );
    let (ok, _, err) = ctl(&server, &["catalog", "wordings", "ghost"]);
    assert!(!ok && err.contains("NotFound"), "{err}");

    let (ok, out, err) = ctl(
        &server,
        &[
            "--json",
            "grant",
            "anna",
            "marketing",
            "--source",
            "form",
            "--evidence",
            "form=shop-42",
            "--occurred-at",
            "2026-10-01T10:00:00+02:00",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(json(&out)["applied"], true);
    let (_, out, _) = ctl(&server, &["--json", "check", "anna", "email", "acme"]);
    let v = json(&out);
    assert_eq!(
        (v["allowed"].as_bool(), v["decided_by"].as_str()),
        (Some(true), Some("marketing"))
    );
    assert_eq!(v["decided_at"], "2026-10-01T08:00:00Z");
    assert!(v["unsubscribe_url"].as_str().unwrap().contains("/u/"));

    let (ok, out, _) = ctl(&server, &["withdraw", "anna", "marketing.acme"]);
    assert!(ok && out.contains("WITHDRAW"), "{out}");
    let (_, out, _) = ctl(&server, &["check", "anna", "email", "acme"]);
    assert!(
        out.starts_with("NOT ALLOWED: WITHDRAWN by marketing.acme"),
        "{out}"
    );
    let (_, out, _) = ctl(&server, &["--json", "history", "anna"]);
    let events = json(&out)["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["evidence"]["form"], "shop-42");

    let (ok, out, _) = ctl(&server, &["--json", "link", "anna", "sms", "zenith"]);
    assert!(ok);
    assert_eq!(json(&out)["consent_id"], "marketing.zenith.sms");

    // Import with bad rows in the middle: reported by their CSV row number.
    let csv = dir.path().join("import.csv");
    let mut text = String::from("contact_id,consent_id,action,occurred_at,source,evidence.batch\n");
    for i in 1..=300 {
        let line = match i {
            100 => format!("imp-{i},marketing,grant,yesterday,import,b1\n"),
            200 => format!("imp-{i},ghost,grant,2026-10-01T10:00:00Z,import,b1\n"),
            250 => format!("imp-{i},marketing,maybe,2026-10-01T10:00:00Z,import,b1\n"),
            _ => format!("imp-{i},marketing,grant,2026-10-01T10:00:00Z,import,b1\n"),
        };
        text.push_str(&line);
    }
    std::fs::write(&csv, text).unwrap();
    let (ok, out, err) = ctl(&server, &["--json", "import", csv.to_str().unwrap()]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["rows"], 300);
    assert_eq!(v["applied"], 297);
    assert_eq!(v["rejected"], 3);
    let rows: Vec<u64> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["row"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, [100, 200, 250]);
    let (_, out, _) = ctl(&server, &["import", csv.to_str().unwrap()]);
    assert!(out.contains("row 200: consent \"ghost\""), "{out}");

    let file = dir.path().join("anna.json");
    let (ok, _, err) = ctl(
        &server,
        &["export", "anna", "--out", file.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    let export = json(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(export["contact_id"], "anna");
    assert!(!export["events"].as_array().unwrap().is_empty());
    assert!(
        export["wordings"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("I agree")
    );
    let (ok, out, _) = ctl(&server, &["erase", "anna", "--reason", "ticket 7"]);
    assert!(ok && out.contains("erased at"), "{out}");
    let (_, out, _) = ctl(&server, &["check", "anna", "email", "zenith"]);
    assert!(out.starts_with("NOT ALLOWED: NO_CONSENT"), "{out}");

    // Errors: a clear message and a failing exit status.
    let (ok, _, err) = ctl(&server, &["check", "anna", "fax", "acme"]);
    assert!(!ok);
    assert!(
        err.contains("InvalidArgument") && err.contains("channel"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_consentctl"))
        .args(["check", "anna", "email", "acme"])
        .env("CONSENTD_ADDR", server.grpc_addr.to_string())
        .env("CONSENTD_TOKEN", "wrong-token-0123456789")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_opt_in_preferences_and_the_new_catalog_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(dir.path());
    config.tokens = vec![format!("check+write+admin:{TOKEN}")];
    let server = TestServer::start_with(config).await;
    // The example catalog with the Orbit consent behind double opt-in, a
    // re-consent floor and an expiry.
    let text = std::fs::read_to_string(example_catalog_path())
        .unwrap()
        .replace(
            "id = \"marketing.orbit\"\n",
            "id = \"marketing.orbit\"\ndouble_opt_in = true\nmin_version = 1\nvalid_for_days = 730\n",
        );
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(&catalog, text).unwrap();
    let (ok, _, err) = ctl(&server, &["catalog", "apply", catalog.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, out, _) = ctl(&server, &["catalog", "show"]);
    assert!(ok);
    for line in [
        "double_opt_in = true",
        "min_version = 1",
        "valid_for_days = 730",
        "acme = \"Acme Outdoor\"",
    ] {
        assert!(out.contains(line), "{line} in {out}");
    }

    // A sign-up is pending, with the link to mail.
    let (ok, out, err) = ctl(
        &server,
        &[
            "--json",
            "grant",
            "una",
            "marketing.orbit",
            "--source",
            "form",
        ],
    );
    assert!(ok, "{err}");
    let r = json(&out);
    assert_eq!(
        (r["applied"].as_bool(), r["pending"].as_bool()),
        (Some(false), Some(true))
    );
    assert!(
        r["confirmation_url"].as_str().unwrap().contains("/c/"),
        "{r}"
    );
    let (_, out, _) = ctl(&server, &["check", "una", "email", "orbit"]);
    assert!(out.contains("PENDING_CONFIRMATION"), "{out}");
    // Re-sending inside the window sends nothing new.
    let (ok, out, err) = ctl(&server, &["confirm-link", "una", "marketing.orbit"]);
    assert!(ok, "{err}");
    assert!(out.contains("none sent now"), "{out}");
    let (ok, _, err) = ctl(&server, &["confirm-link", "nobody", "marketing.orbit"]);
    assert!(!ok && err.contains("FailedPrecondition"), "{err}");
    // An operator who vouches for the confirmation.
    let (ok, out, _) = ctl(
        &server,
        &["--json", "grant", "vic", "marketing.orbit", "--confirmed"],
    );
    assert!(ok);
    assert_eq!(json(&out)["applied"].as_bool(), Some(true));
    let (_, out, _) = ctl(&server, &["check", "vic", "email", "orbit"]);
    assert!(
        out.contains("ALLOWED") && !out.contains("NOT ALLOWED"),
        "{out}"
    );

    // A CSV with a `confirmed` column: confirmed rows apply, others wait.
    let csv = dir.path().join("doi.csv");
    std::fs::write(
        &csv,
        "contact_id,consent_id,action,occurred_at,confirmed\n\
         wes,marketing.orbit,grant,2026-10-01T10:00:00Z,true\n\
         xia,marketing.orbit,grant,2026-10-01T10:00:00Z,false\n",
    )
    .unwrap();
    let (ok, out, err) = ctl(&server, &["--json", "import", csv.to_str().unwrap()]);
    assert!(ok, "{err}");
    let s = json(&out);
    assert_eq!(
        (s["applied"].as_u64(), s["pending"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    // The imported pending row gets its first link on request.
    let (ok, out, err) = ctl(&server, &["confirm-link", "xia", "marketing.orbit"]);
    assert!(ok && out.contains("/c/"), "{out}{err}");

    let (ok, out, err) = ctl(
        &server,
        &["--json", "preference-link", "una", "--brand", "orbit"],
    );
    assert!(ok, "{err}");
    let url = json(&out)["url"].as_str().unwrap().to_owned();
    assert!(url.contains("/p/"), "{url}");
    let path = link_path(&server, &url);
    let (status, _, page) = http(server.http_addr, "GET", &path, &[], "").await;
    assert_eq!(status, 200);
    assert!(page.contains("Orbit Travel"), "{page}");
    server.stop().await;
}

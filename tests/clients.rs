//! The dispatcher clients in `examples/clients/` (Python and TypeScript on
//! Node), run as their pages in `docs/` say against a real server: one
//! CanSendBatch for a send list with a deadline, the unsubscribe URL in the
//! List-Unsubscribe headers (and a one-click POST to it unsubscribes),
//! `min_sequence` after the dispatcher's own withdrawal, retries on
//! UNAVAILABLE that end in an answer once the server comes, and no send at
//! all when no answer comes.
//!
//! Python needs `examples/clients/python/.venv` (or `CONSENTD_TEST_PYTHON`,
//! a python with grpcio-tools); Node needs `npm ci` in
//! `examples/clients/typescript`. `.ci/run` sets up both; where one is
//! missing its test prints SKIPPED.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use consentd::pb::{self, Reason};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A client, ready to run: the command line up to its own flags.
struct Client {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    _generated: Option<tempfile::TempDir>,
}

/// The Python client, its stubs generated now from the proto (as its page
/// says); `None` where no python with grpcio-tools is found.
fn python() -> Option<Client> {
    let venv = root().join("examples/clients/python/.venv/bin/python");
    let python = std::env::var_os("CONSENTD_TEST_PYTHON")
        .map(PathBuf::from)
        .or_else(|| venv.exists().then_some(venv))?;
    let generated = tempfile::tempdir().unwrap();
    let status = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root().join("proto"))
        .arg(format!("--python_out={}", generated.path().display()))
        .arg(format!("--grpc_python_out={}", generated.path().display()))
        .arg("consent/v1/consent.proto")
        .status()
        .ok()?;
    assert!(status.success(), "grpc_tools.protoc failed");
    Some(Client {
        name: "python",
        program: python,
        args: vec![
            root()
                .join("examples/clients/python/dispatch.py")
                .display()
                .to_string(),
        ],
        env: vec![("PYTHONPATH".into(), generated.path().display().to_string())],
        _generated: Some(generated),
    })
}

/// The TypeScript client, built now (types generated from the proto, then
/// tsc); `None` where its `node_modules` were not installed.
fn typescript() -> Option<Client> {
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let dir = root().join("examples/clients/typescript");
    if !dir.join("node_modules/.bin/tsc").exists() {
        return None;
    }
    // Once per run: both tests share the build.
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        let out = Command::new("npm")
            .args(["run", "-s", "build"])
            .current_dir(&dir)
            .output()
            .expect("npm runs");
        assert!(
            out.status.success(),
            "npm run build: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        *built = true;
    }
    Some(Client {
        name: "typescript",
        program: PathBuf::from("node"),
        args: vec![dir.join("dist/src/dispatch.js").display().to_string()],
        env: Vec::new(),
        _generated: None,
    })
}

impl Client {
    fn command(&self, target: &str, send_list: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args)
            .args(["--target", target, "--send-list"])
            .arg(send_list)
            .args(extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs it to the end: (one decision per recipient, what it logged).
    async fn run(&self, target: &str, send_list: &Path, extra: &[&str]) -> (Vec<Value>, String) {
        let child = self.command(target, send_list, extra).spawn().unwrap();
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        decisions(self.name, out)
    }
}

fn decisions(name: &str, out: Output) -> (Vec<Value>, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{name} failed: {stderr}");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {e}: {l}")))
        .collect();
    (lines, stderr)
}

fn send_list(dir: &Path) -> PathBuf {
    let path = dir.join("send-list.json");
    let list = serde_json::json!([
        {"contact_id": "anna@example.com", "channel": "email", "brand": "acme"},
        {"contact_id": "bob@example.com", "channel": "email", "brand": "acme"},
        {"contact_id": "carol@example.com", "channel": "sms", "brand": "zenith"},
    ]);
    std::fs::write(&path, list.to_string()).unwrap();
    path
}

/// (send, reason) of each decision.
fn verdicts(d: &[Value]) -> Vec<(bool, &str)> {
    d.iter()
        .map(|d| (d["send"].as_bool().unwrap(), d["reason"].as_str().unwrap()))
        .collect()
}

async fn the_dispatch_loop(client: Client) {
    let server = TestServer::start().await;
    let target = server.grpc_addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let list = send_list(dir.path());
    let mut cons = server.consents().await;
    for who in ["anna@example.com", "carol@example.com"] {
        cons.grant(change(who, "marketing", Some(now() - 60)))
            .await
            .unwrap();
    }

    // Carol complained: the dispatcher withdraws, then checks its list
    // with the sequence that withdrawal answered.
    let complaint = ["--withdraw", "carol@example.com=marketing"];
    let (d, _) = client.run(&target, &list, &complaint).await;
    assert_eq!(
        verdicts(&d),
        [
            (true, "REASON_GRANTED"),
            (false, "REASON_NO_CONSENT"),
            (false, "REASON_WITHDRAWN")
        ],
        "{}: {d:?}",
        client.name
    );
    let headers = &d[0]["headers"];
    assert_eq!(
        headers["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click",
        "{d:?}"
    );
    assert_eq!(headers["List-Id"], "<marketing.acme.127.0.0.1>", "{d:?}");
    let header = headers["List-Unsubscribe"].as_str().unwrap();
    let url = header
        .strip_prefix('<')
        .and_then(|h| h.strip_suffix('>'))
        .unwrap_or_else(|| panic!("<url>: {header}"));
    assert!(d[1]["headers"].as_object().unwrap().is_empty());

    // The header works: a mail client's one-click POST unsubscribes her.
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let path = link_path(&server, url);
    let (status, _, _) = http(
        server.http_addr,
        "POST",
        &path,
        &form,
        "List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(status, 200);

    // The next run sends her nothing; the complaint, retried with its key,
    // is recorded once.
    let (d, _) = client.run(&target, &list, &complaint).await;
    assert_eq!(d[0]["send"], false, "{d:?}");
    assert_eq!(d[0]["reason"], "REASON_WITHDRAWN");
    let carol = history(&server, "carol@example.com").await;
    assert_eq!(carol.len(), 2, "the grant and one withdrawal: {carol:?}");
    assert_eq!(carol[1].source(), pb::Source::Api);
    let (allowed, reason, _) = can_send(
        &mut server.eligibility().await,
        "anna@example.com",
        "email",
        "acme",
    )
    .await;
    assert_eq!((allowed, reason), (false, Reason::Withdrawn));
    server.stop().await;
}

/// A loopback port nothing listens on (for now).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn no_answer_is_no_send_and_a_late_server_is_waited_for(client: Client) {
    let dir = tempfile::tempdir().unwrap();
    let list = send_list(dir.path());

    // Nothing listens: retried until the deadline, then nothing is sent.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let (d, log) = client.run(&nowhere, &list, &["--deadline-ms", "800"]).await;
    assert_eq!(d.len(), 3, "{}: {d:?}", client.name);
    assert!(
        verdicts(&d).iter().all(|v| *v == (false, "NO_ANSWER")),
        "{}: fails closed: {d:?}",
        client.name
    );
    assert!(log.contains("attempt 2: UNAVAILABLE"), "retried: {log}");

    // The server comes up while the client retries: it gets its answer.
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let child = client
        .command(&target, &list, &["--deadline-ms", "15000"])
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let data = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(data.path());
    config.catalog = Some(example_catalog_path());
    config.grpc_addr = target.parse().unwrap();
    let server = TestServer::start_with(config).await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let (d, log) = decisions(client.name, out);
    assert!(log.contains("attempt 1: UNAVAILABLE"), "{log}");
    assert_eq!(
        verdicts(&d),
        [
            (false, "REASON_NO_CONSENT"),
            (false, "REASON_NO_CONSENT"),
            (false, "REASON_NO_CONSENT")
        ],
        "{}: answered once the server came: {d:?}",
        client.name
    );
    server.stop().await;
}

macro_rules! client_tests {
    ($($name:ident: $client:ident;)*) => {$(
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn runs_the_dispatch_loop() {
                let Some(client) = $client() else {
                    println!("SKIPPED: the {} client's runtime is not set up (see docs/clients-{}.md)",
                        stringify!($client), stringify!($client));
                    return;
                };
                the_dispatch_loop(client).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fails_closed_and_retries_until_the_server_answers() {
                let Some(client) = $client() else {
                    println!("SKIPPED: the {} client's runtime is not set up (see docs/clients-{}.md)",
                        stringify!($client), stringify!($client));
                    return;
                };
                no_answer_is_no_send_and_a_late_server_is_waited_for(client).await;
            }
        }
    )*};
}

client_tests! {
    python_client: python;
    typescript_client: typescript;
}

//! Shared harness: a real server on ephemeral loopback ports over a temp
//! data dir, and clients connected to it.
#![allow(dead_code)]

pub(crate) mod raw;
pub(crate) mod replica;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub(crate) use consentd::pb::eligibility_service_client::EligibilityServiceClient;
use consentd::pb::{
    self, catalog_service_client::CatalogServiceClient,
    consents_service_client::ConsentsServiceClient,
};
use consentd::{Config, server::Server};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// The ConsentsService client as the tests use it: Grant and Withdraw take
/// the change both requests carry field for field (`pb::ConsentChange`,
/// converted by `GrantRequest::from` / `WithdrawRequest::from`); every other
/// call is the generated client's, through `Deref`.
pub(crate) struct Consents(pub(crate) ConsentsServiceClient<Channel>);

impl Consents {
    pub(crate) async fn grant(
        &mut self,
        c: pb::ConsentChange,
    ) -> Result<tonic::Response<pb::GrantResponse>, tonic::Status> {
        self.0.grant(pb::GrantRequest::from(c)).await
    }

    pub(crate) async fn withdraw(
        &mut self,
        c: pb::ConsentChange,
    ) -> Result<tonic::Response<pb::WithdrawResponse>, tonic::Status> {
        self.0.withdraw(pb::WithdrawRequest::from(c)).await
    }
}

impl std::ops::Deref for Consents {
    type Target = ConsentsServiceClient<Channel>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Consents {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// The CatalogService client as the tests use it: ApplyCatalog takes and
/// GetCatalog answers the catalog itself (unwrapped from its request and
/// response); GetWordings is the generated client's.
pub(crate) struct Catalog(pub(crate) CatalogServiceClient<Channel>);

impl Catalog {
    pub(crate) async fn apply_catalog(
        &mut self,
        spec: pb::CatalogSpec,
    ) -> Result<tonic::Response<pb::CatalogSpec>, tonic::Status> {
        let r = self
            .0
            .apply_catalog(pb::ApplyCatalogRequest {
                catalog: Some(spec),
            })
            .await?;
        Ok(r.map(|r| r.catalog.expect("an applied catalog answers it")))
    }

    pub(crate) async fn get_catalog(
        &mut self,
        request: pb::GetCatalogRequest,
    ) -> Result<tonic::Response<pb::CatalogSpec>, tonic::Status> {
        let r = self.0.get_catalog(request).await?;
        Ok(r.map(|r| r.catalog.expect("the catalog in force")))
    }

    pub(crate) async fn get_wordings(
        &mut self,
        request: pb::GetWordingsRequest,
    ) -> Result<tonic::Response<pb::GetWordingsResponse>, tonic::Status> {
        self.0.get_wordings(request).await
    }
}

/// Requests signed as each provider signs them.
#[path = "../support/sign.rs"]
pub(crate) mod sign;
/// The throwaway PostgreSQL server the tests start (test support, not part
/// of the release library).
#[path = "../support/throwaway.rs"]
pub(crate) mod throwaway;
pub(crate) use throwaway::Throwaway;

pub(crate) struct TestServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A fresh server with the example catalog applied.
    pub(crate) async fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Self::start_in(dir.path(), Some(example_catalog_path())).await;
        s._dir = Some(dir);
        s
    }

    /// A server over `data_dir` (kept: restart tests reopen it).
    pub(crate) async fn start_in(data_dir: &Path, catalog: Option<PathBuf>) -> TestServer {
        let mut config = Config::ephemeral(data_dir);
        config.catalog = catalog;
        Self::start_with(config).await
    }

    /// A server with a configuration of the test's own. In the
    /// PostgreSQL run (`tests/on_postgres.rs`), a redb store becomes a
    /// database of the test PostgreSQL server, one per data dir, so that a
    /// restart over the same dir finds the same data.
    pub(crate) async fn start_with(config: Config) -> TestServer {
        let config = for_this_run(config);
        let bound = Server::bind(&config).await.unwrap();
        Self::serve(config, bound)
    }

    /// A server over a store the test opened (e.g. on a faulty backend).
    pub(crate) async fn start_with_store(
        config: Config,
        store: std::sync::Arc<dyn consentd::store::Store>,
    ) -> TestServer {
        let bound = Server::bind_with_store(&config, store).await.unwrap();
        Self::serve(config, bound)
    }

    fn serve(config: Config, bound: Server) -> TestServer {
        let data_dir = config.data_dir.as_path();
        let (grpc_addr, http_addr, admin_addr) =
            (bound.grpc_addr, bound.http_addr, bound.admin_addr);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async {
            let _ = rx.await;
        }));
        TestServer {
            grpc_addr,
            http_addr,
            admin_addr,
            data_dir: data_dir.to_owned(),
            stop: Some(tx),
            task,
            _dir: None,
        }
    }

    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub(crate) async fn eligibility(&self) -> EligibilityServiceClient<Channel> {
        EligibilityServiceClient::new(self.channel().await)
    }

    pub(crate) async fn consents(&self) -> Consents {
        Consents(ConsentsServiceClient::new(self.channel().await))
    }

    pub(crate) async fn catalog(&self) -> Catalog {
        Catalog(CatalogServiceClient::new(self.channel().await))
    }

    /// Graceful stop; waits until the store is closed.
    pub(crate) async fn stop(mut self) -> Option<tempfile::TempDir> {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
        self._dir.take()
    }

    /// Waits for the server to end on its own (fail-stop) or, failing that,
    /// stops it; what `serve` returned.
    pub(crate) async fn finish(mut self) -> anyhow::Result<()> {
        let mut task = self.task;
        match tokio::time::timeout(std::time::Duration::from_secs(10), &mut task).await {
            Ok(result) => result.unwrap(),
            Err(_) => {
                let _ = self.stop.take().unwrap().send(());
                task.await.unwrap()
            }
        }
    }
}

/// Whether this test crate runs the suites over PostgreSQL.
pub(crate) fn on_postgres() -> bool {
    env!("CARGO_CRATE_NAME") == "on_postgres"
}

/// `config` with its store as this run keeps it: in the PostgreSQL run a
/// redb store becomes the data dir's database.
pub(crate) fn for_this_run(mut config: Config) -> Config {
    if on_postgres() && config.store == "redb" {
        config.store = database_for(&config.data_dir);
    }
    config
}

/// The database that stands for `data_dir` in the PostgreSQL run.
pub(crate) fn database_for(data_dir: &Path) -> String {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static DATABASES: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let mut map = DATABASES.get_or_init(Default::default).lock().unwrap();
    map.entry(data_dir.to_owned())
        .or_insert_with(|| {
            Throwaway::shared()
                .expect("PostgreSQL for the tests")
                .fresh_database()
        })
        .clone()
}

/// Every row of consentd's tables as text: what a DBA could read.
pub(crate) async fn tables_text(url: &str) -> String {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut all = String::new();
    // Every table of the schema, so that a new one is covered too.
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'consentd' AND table_type = 'BASE TABLE'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.iter().any(|t| t == "pending"), "{tables:?}");
    for table in tables {
        let row = client
            .query_one(
                &format!("SELECT coalesce(string_agg(t::text, '|'), '') FROM consentd.{table} t"),
                &[],
            )
            .await
            .unwrap();
        all.push_str(&row.get::<_, String>(0));
    }
    drop(client);
    let _ = conn.await;
    all
}

/// The health status of `service` ("" for the server), `None` when the
/// server cannot be asked.
pub(crate) async fn health_of(
    server: &TestServer,
    service: &str,
) -> Option<tonic_health::pb::health_check_response::ServingStatus> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status())
}

/// The path of the preference-center link a page shows (the unsubscribe
/// page links to one).
pub(crate) fn preference_path_in(page: &str) -> String {
    let at = page.find("/p/").expect("links to the preference center");
    page[at..at + page[at..].find('"').expect("the link ends")].to_owned()
}

/// Polls `health_of(service)` until it is `want`, for at most 30 s.
pub(crate) async fn wait_health(
    server: &TestServer,
    service: &str,
    want: tonic_health::pb::health_check_response::ServingStatus,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while health_of(server, service).await != Some(want) {
        assert!(
            std::time::Instant::now() < deadline,
            "{service} never became {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Applies the catalog in force as `edit` changes it; what the server
/// answered.
pub(crate) async fn edit_catalog(
    server: &TestServer,
    edit: impl FnOnce(&mut pb::CatalogSpec),
) -> Result<pb::CatalogSpec, tonic::Status> {
    let mut cat = server.catalog().await;
    let mut spec = cat
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    edit(&mut spec);
    cat.apply_catalog(spec).await.map(|r| r.into_inner())
}

/// The definition of `id` in a catalog.
pub(crate) fn consent_mut<'a>(
    spec: &'a mut pb::CatalogSpec,
    id: &str,
) -> &'a mut pb::ConsentDefinition {
    spec.consents.iter_mut().find(|c| c.id == id).unwrap()
}

/// Applies the catalog in force with `consent`'s text replaced: a new
/// wording version.
pub(crate) async fn reword(server: &TestServer, consent: &str, text: &str) {
    edit_catalog(server, |s| consent_mut(s, consent).text = text.into())
        .await
        .unwrap();
}

/// The `version` a confirmation page's form sends.
pub(crate) fn shown_version(page: &str) -> String {
    let at = page.find("name=\"version\" value=\"").unwrap() + 22;
    page[at..at + page[at..].find('"').unwrap()].to_owned()
}

/// The admin listener's `/metrics` text.
pub(crate) async fn metrics(server: &TestServer) -> String {
    http(server.admin_addr, "GET", "/metrics", &[], "").await.2
}

pub(crate) fn example_catalog_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/catalog.toml")
}

pub(crate) fn example_catalog() -> pb::CatalogSpec {
    let spec = consentd::server::read_catalog(&example_catalog_path()).unwrap();
    consentd::grpc::catalog_to(&spec)
}

pub(crate) fn ts(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

/// Seconds since the epoch, now.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub(crate) fn change(contact: &str, consent: &str, occurred_at: Option<i64>) -> pb::ConsentChange {
    pb::ConsentChange {
        contact_id: contact.into(),
        consent_id: consent.into(),
        occurred_at: occurred_at.map(ts),
        source: pb::Source::Form as i32,
        evidence: [("form".to_string(), "signup-2026".to_string())].into(),
        idempotency_key: String::new(),
        confirmed: false,
        address: None,
    }
}

pub(crate) fn check(contact: &str, channel: &str, brand: &str) -> pb::CanSendRequest {
    pb::CanSendRequest {
        as_of: None,
        contact_id: contact.into(),
        channel: channel.into(),
        brand: brand.into(),
        purpose: String::new(),
        include_unsubscribe: false,
        min_sequence: 0,
        to: None,
    }
}

/// (allowed, reason, decided_by) of one CanSend.
pub(crate) async fn can_send(
    client: &mut EligibilityServiceClient<Channel>,
    contact: &str,
    channel: &str,
    brand: &str,
) -> (bool, pb::Reason, String) {
    let r = client
        .can_send(check(contact, channel, brand))
        .await
        .unwrap()
        .into_inner();
    (r.allowed, r.reason(), r.decided_by)
}

/// A minimal HTTP/1.1 exchange over a raw socket: (status, head, body).
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// CanSend for (contact, channel, brand) naming the address the message
/// goes to (`to`, its kind left to the channel's).
pub(crate) async fn can_send_to(
    server: &TestServer,
    contact: &str,
    channel: &str,
    brand: &str,
    to: &str,
) -> pb::CanSendResponse {
    let mut c = check(contact, channel, brand);
    c.to = Some(pb::Address {
        kind: pb::AddressKind::Unspecified as i32,
        value: to.into(),
    });
    server
        .eligibility()
        .await
        .can_send(c)
        .await
        .unwrap()
        .into_inner()
}

/// IssueUnsubscribeLink for (contact, channel, brand) in the default purpose.
pub(crate) async fn unsubscribe_link(
    server: &TestServer,
    contact: &str,
    channel: &str,
    brand: &str,
) -> pb::IssueUnsubscribeLinkResponse {
    let mut cons = server.consents().await;
    cons.issue_unsubscribe_link(pb::IssueUnsubscribeLinkRequest {
        to: None,
        contact_id: contact.into(),
        channel: channel.into(),
        brand: brand.into(),
        purpose: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// The path of an absolute link, checking it points at this server.
pub(crate) fn link_path(server: &TestServer, url: &str) -> String {
    let prefix = format!("http://{}", server.http_addr);
    assert!(url.starts_with(&prefix), "{url} is not under {prefix}");
    url[prefix.len()..].to_owned()
}

/// Every event of a contact, oldest first.
pub(crate) async fn history(server: &TestServer, contact: &str) -> Vec<pb::ConsentEvent> {
    let mut cons = server.consents().await;
    cons.get_history(pb::GetHistoryRequest {
        contact_id: contact.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .events
}

/// Runs consentctl with no server (`audit` works on the store itself):
/// (succeeded, standard output, standard error).
pub(crate) fn consentctl_alone(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_consentctl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs consentctl against `server` with `args` and extra environment:
/// (succeeded, standard output, standard error).
pub(crate) fn consentctl(
    server: &TestServer,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_consentctl"))
        .args(args)
        .env("CONSENTD_ADDR", server.grpc_addr.to_string())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A Watch of every record after `from` on `server`.
pub(crate) async fn watch_from(
    server: &TestServer,
    from: u64,
) -> tonic::Streaming<pb::WatchResponse> {
    pb::changes_service_client::ChangesServiceClient::new(server.channel().await)
        .watch(pb::WatchRequest {
            from_sequence: from,
            purposes: vec![],
        })
        .await
        .unwrap()
        .into_inner()
}

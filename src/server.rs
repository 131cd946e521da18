//! Wiring: open the store, rebuild the index, bind both listeners, serve
//! gRPC (with health and reflection) and HTTP, and shut down gracefully.
//!
//! Health `""` turns SERVING only once the index is loaded and both
//! listeners are bound; on shutdown it turns NOT_SERVING first, in-flight
//! calls finish, then the writer drains its queue and the store closes.
//! When the store fails (fail-stop), the same happens at once, without
//! waiting for a signal, and [`Server::serve`] returns the failure, so the
//! process exits non-zero.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::auth::Auth;
use crate::authority::{Authority, Options};
use crate::config::Config;
use crate::domain::CatalogSpec;
use crate::grpc::{
    AdmissionLayer, CatalogApi, ChangesApi, ConsentsApi, Eligibility, MAX_CHANGE_MESSAGE_BYTES,
    Writes, listen,
};
use crate::links::Links;
use crate::pb;
use crate::pb::catalog_service_server::SERVICE_NAME as CATALOG;
use crate::pb::changes_service_server::SERVICE_NAME as CHANGES;
use crate::pb::consents_service_server::SERVICE_NAME as CONSENTS;
use crate::pb::eligibility_service_server::SERVICE_NAME as ELIGIBILITY;
use crate::store::{Backend, RedbStore, SharedStore, Store};

/// Largest catalog on the wire.
const MAX_CATALOG_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How long a shared store's feed may stay behind (unable to keep up with
/// what the other nodes commit) before this node's checks are reported
/// NOT_SERVING, so that a load balancer sends them to the others.
const FEED_BOUND: Duration = Duration::from_secs(10);
/// How long in-flight calls may take to be answered after a fail-stop.
const FAIL_STOP_GRACE: Duration = Duration::from_secs(5);
/// Concurrent HTTP/2 streams per gRPC connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// A silent gRPC connection is probed after this long, every
/// `KEEPALIVE_PROBE`, and closed after `KEEPALIVE_PROBES` unanswered
/// probes: a vanished peer's connection goes within a minute.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_PROBE: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;

/// Opens the store `--store` names: redb in the data dir, or PostgreSQL.
fn open_store(config: &Config) -> anyhow::Result<Backend> {
    let store = config.store.trim();
    if store.starts_with("postgres://") || store.starts_with("postgresql://") {
        let shown = crate::store::postgres::redact(store);
        tracing::info!(store = %shown, "opening the PostgreSQL store");
        let timeout = Duration::from_millis(config.store_timeout_ms);
        let pg = crate::store::PgStore::open_with_timeout(store, timeout)
            .with_context(|| format!("opening the PostgreSQL store {shown}"))?;
        let shared: Arc<dyn SharedStore> = Arc::new(pg);
        return Ok(Backend::Shared(shared));
    }
    anyhow::ensure!(
        store == "redb",
        "--store must be `redb` or a postgres:// URL, not {:?}",
        crate::domain::ids::quote(&crate::store::postgres::redact(store))
    );
    let redb = RedbStore::open_with_cache(
        &config.data_dir,
        (config.store_cache_mb as usize).saturating_mul(1024 * 1024),
    )
    .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let local: Arc<dyn Store> = Arc::new(redb);
    Ok(Backend::Local(local))
}

/// A server whose listeners are bound and whose index is loaded.
pub struct Server {
    auth: Auth,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Where gRPC listens (the bound port when 0 was asked for).
    pub grpc_addr: SocketAddr,
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    /// Where the admin HTTP listener (health, metrics) listens.
    pub admin_addr: SocketAddr,
    authority: Authority,
    grpc: TcpListener,
    http: TcpListener,
    admin: TcpListener,
    http_limits: crate::http::Limits,
    max_calls_in_flight: usize,
    hooks: Arc<crate::hooks::Hooks>,
}

/// Reads a TOML catalog file (the same shape as `CatalogSpec`).
pub fn read_catalog(path: &std::path::Path) -> anyhow::Result<CatalogSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

impl Server {
    /// Binds both listeners, opens the store in `--data-dir`, rebuilds the
    /// index, applies `--catalog`. Nothing is served until [`Server::serve`].
    pub async fn bind(config: &Config) -> anyhow::Result<Server> {
        Self::bind_inner(config, None).await
    }

    /// As [`Server::bind`], over a store the caller opened (another
    /// backend, or one that injects faults); `--data-dir` still holds the
    /// link keys.
    pub async fn bind_with_store(
        config: &Config,
        store: impl Into<Backend>,
    ) -> anyhow::Result<Server> {
        Self::bind_inner(config, Some(store.into())).await
    }

    async fn bind_inner(config: &Config, store: Option<Backend>) -> anyhow::Result<Server> {
        let auth = Auth::from_config(&config.tokens, config.tokens_file.as_deref())?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let read = |p: &std::path::Path| {
                    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
                };
                Some(tls_acceptor(&read(cert)?, &read(key)?)?)
            }
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        if !auth.enabled() {
            let public = [config.grpc_addr, config.http_addr]
                .into_iter()
                .find(|a| !a.ip().is_loopback());
            match public {
                Some(addr) if !config.allow_unauthenticated => anyhow::bail!(
                    "no bearer token is configured (--token / --tokens-file), so auth is off and \
                     consentd binds loopback only; {addr} is not loopback (pass \
                     --allow-unauthenticated to bind it anyway)"
                ),
                _ => tracing::warn!(
                    "auth is off: no bearer token configured; every caller has every role"
                ),
            }
        }
        let grpc = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("binding gRPC on {}", config.grpc_addr))?;
        let http = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding HTTP on {}", config.http_addr))?;
        let admin = TcpListener::bind(config.admin_addr)
            .await
            .with_context(|| format!("binding the admin listener on {}", config.admin_addr))?;
        let http_addr = http.local_addr()?;
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{http_addr}"));
        // Read before anything opens, so a bad file changes nothing.
        let catalog = config.catalog.as_deref().map(read_catalog).transpose()?;
        let store: Backend = match store {
            Some(store) => store,
            None => open_store(config)?,
        };
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let signer = crate::audit::note::Signer::load_or_create(
            &config.signing_key_path(),
            &config.checkpoint_origin,
        )?;
        tracing::info!(
            public_key = %signer.public_key_base64(),
            origin = %signer.origin(),
            "checkpoints and receipts are signed with this Ed25519 key"
        );
        // One log, one key: checkpoints already kept in the store must be
        // this key's, or a node with another key would sign a second,
        // unverifiable series (several nodes are given the same file).
        let first = store
            .store()
            .checkpoints(0, 1)
            .context("reading the store's checkpoints")?
            .pop();
        if let Some((sequence, note)) = first
            && let Err(why) = crate::audit::note::verify(&note, &signer.verifying_key())
        {
            anyhow::bail!(
                "the store's checkpoints (the first at sequence {sequence}) are not signed by the key in {} ({why}): give every node the same --signing-key file (a lost key cannot be replaced without breaking the evidence: see docs/audit.md)",
                config.signing_key_path().display()
            );
        }
        let fresh_key = crate::links::generate_key()?;
        let links = match store
            .shared()
            .map(|shared| shared.link_keys(&fresh_key))
            .transpose()
            .context("reading the link keys")?
        {
            Some(lines) => {
                let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
                Links::with_keys(
                    "the store's link keys",
                    &lines,
                    &config.link_keys,
                    &public_url,
                )?
            }
            None => Links::open(&config.data_dir, &config.link_keys, &public_url)?,
        };
        let phone_region = match config.phone_region.as_deref() {
            None | Some("") => crate::domain::PhoneRegion::NONE,
            Some(code) => crate::domain::PhoneRegion::parse(code)
                .map_err(|e| anyhow::anyhow!("--phone-region: {e}"))?,
        };
        let (authority, report) = Authority::open(
            store,
            links,
            Options {
                default_purpose: config.default_purpose.clone(),
                idempotency_retention: Duration::from_secs(
                    config.idempotency_retention_hours * 3600,
                ),
                erasure_purge_after: Duration::from_secs(config.erasure_purge_seconds),
                confirmation_ttl: config.confirmation_ttl(),
                confirmation_resend: config.confirmation_resend(),
                controller_name: config.controller_name.clone().unwrap_or_default(),
                phone_region,
                signer: Some(signer),
                checkpoint_records: config.checkpoint_records,
                checkpoint_interval: Duration::from_secs(config.checkpoint_seconds),
                ..Default::default()
            },
        )?;
        if config.controller_name.as_deref().is_none_or(str::is_empty) {
            tracing::warn!(
                "no --controller-name: the pages people open name the brand but not the controller of their data (GDPR Art. 13 expects it)"
            );
        }
        tracing::info!(
            states = report.states,
            contacts = report.contacts,
            seconds = report.seconds,
            "index rebuilt from the store"
        );
        if let (Some(spec), Some(path)) = (catalog, &config.catalog)
            && let Err(e) = authority.apply_catalog(spec).await
        {
            authority.close().await?;
            return Err(e).with_context(|| format!("applying the catalog {}", path.display()));
        }
        if let Some(p) = &config.default_purpose
            && authority
                .catalog()
                .spec()
                .consents
                .iter()
                .all(|c| &c.id != p || c.parent.is_some())
        {
            tracing::warn!(default_purpose = %p, "--default-purpose is not a root consent of the catalog in force; it is ignored until it is");
        }
        warn_about_exposure(config, &auth, tls.is_some(), &public_url);
        let hooks = match &config.providers {
            Some(path) => crate::hooks::Hooks::load(path, &public_url)?,
            None => crate::hooks::Hooks::none(),
        };
        if !hooks.is_empty() {
            tracing::info!(endpoints = hooks.len(), "provider webhooks on /hooks/");
        }

        Ok(Server {
            auth,
            tls,
            grpc_addr: grpc.local_addr()?,
            http_addr,
            admin_addr: admin.local_addr()?,
            authority,
            grpc,
            http,
            admin,
            http_limits: crate::http::Limits {
                max_connections: public_connection_cap(config.http_max_connections),
                ..Default::default()
            },
            max_calls_in_flight: usize::try_from(config.max_calls_in_flight).unwrap_or(usize::MAX),
            hooks: Arc::new(hooks),
        })
    }

    /// Serves until `shutdown` resolves, then drains and closes the store.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Server {
            auth,
            tls,
            grpc_addr,
            http_addr,
            admin_addr,
            authority,
            grpc,
            http,
            admin,
            http_limits,
            max_calls_in_flight,
            hooks,
        } = self;
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let (serving_tx, serving_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };

        let routes = tonic::service::Routes::new(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                pb::consents_service_server::ConsentsServiceServer::new(ConsentsApi::new(
                    authority.clone(),
                ))
                .max_decoding_message_size(MAX_CHANGE_MESSAGE_BYTES),
            )
            .add_service(
                pb::catalog_service_server::CatalogServiceServer::new(CatalogApi::new(
                    authority.clone(),
                ))
                .max_decoding_message_size(MAX_CATALOG_MESSAGE_BYTES),
            )
            .add_service(pb::changes_service_server::ChangesServiceServer::new(
                ChangesApi::new(authority.clone(), stop_rx.clone()),
            ))
            .prepare();
        let grpc_service = tower::ServiceBuilder::new()
            // Over the global limit: RESOURCE_EXHAUSTED at once, never an
            // unbounded queue.
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                max_calls_in_flight,
            ))
            .layer(AdmissionLayer::new(
                auth,
                Eligibility::new(authority.clone()),
                Writes::new(authority.clone()),
            ))
            .service(routes);
        let listener = listen::Listener {
            incoming: TcpIncoming::from(grpc)
                .with_nodelay(Some(true))
                // Dead peers are found by TCP keepalive, which costs
                // nothing while a connection talks; HTTP/2 keepalive
                // pings lock a mutex and read the clock on every frame
                // received (hyper's ping recorder).
                .with_keepalive(Some(KEEPALIVE_IDLE))
                .with_keepalive_interval(Some(KEEPALIVE_PROBE))
                .with_keepalive_retries(Some(KEEPALIVE_PROBES)),
            tls,
            // A connection's calls are bounded by its streams (HTTP/2
            // refuses one more); no per-connection semaphore on top.
            max_streams_per_connection: MAX_STREAMS_PER_CONNECTION,
        };
        let grpc_server = listen::serve(listener, grpc_service, stopped(stop_rx.clone()));
        let grpc_task = tokio::spawn(grpc_server);

        let public =
            crate::http::public_router(authority.clone(), serving_rx.clone(), hooks.clone());
        let http_task = tokio::spawn(crate::http::serve(
            http,
            public,
            http_limits,
            stopped(stop_rx.clone()),
        ));
        let admin_app = crate::http::admin_router(authority.clone(), serving_rx, hooks);
        let admin_task = tokio::spawn(crate::http::serve(
            admin,
            admin_app,
            crate::http::Limits {
                max_connections: 64,
                ..Default::default()
            },
            stopped(stop_rx.clone()),
        ));

        health.set_service_status("", ServingStatus::Serving).await;
        for name in [ELIGIBILITY, CONSENTS, CATALOG, CHANGES] {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        let _ = serving_tx.send(true);
        tracing::info!(%grpc_addr, %http_addr, %admin_addr, "consentd serving");

        // Checks answer from this node's index: while its feed has been
        // behind for longer than the bound, or stopped at a record it
        // cannot read, it would answer stale, so "" and Eligibility say
        // NOT_SERVING until it has caught up. (A store that cannot be
        // reached stops every node's feed alike and is not that: checks go
        // on from memory.)
        let feed_reporter = health.clone();
        let feed_authority = authority.clone();
        let feed_health = tokio::spawn(async move {
            let mut serving = true;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let (unread, behind) = feed_authority.feed_lag();
                let broken = feed_authority.feed_broken();
                let ok = broken.is_none() && (unread == 0 || behind < FEED_BOUND);
                if ok != serving {
                    serving = ok;
                    let status = if ok {
                        ServingStatus::Serving
                    } else if let Some((sequence, why)) = broken {
                        tracing::error!(
                            sequence,
                            error = %why,
                            "the change feed stopped at a record it cannot read: checks NOT_SERVING until it can"
                        );
                        ServingStatus::NotServing
                    } else {
                        tracing::warn!(
                            unread,
                            seconds = behind.as_secs(),
                            "the change feed is behind: checks NOT_SERVING until it catches up"
                        );
                        ServingStatus::NotServing
                    };
                    for name in ["", ELIGIBILITY] {
                        feed_reporter.set_service_status(name, status).await;
                    }
                }
            }
        });
        // Writes need the store: Consents and Catalog are NOT_SERVING while
        // it cannot be reached; Eligibility serves on from memory.
        let mut available = authority.store_available();
        let reporter = health.clone();
        let store_health = tokio::spawn(async move {
            while available.changed().await.is_ok() {
                let status = if *available.borrow_and_update() {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for name in [CONSENTS, CATALOG] {
                    reporter.set_service_status(name, status).await;
                }
            }
        });

        // Stop on the signal, or at once when the store fails (fail-stop).
        let failure = tokio::select! {
            () = shutdown => None,
            cause = authority.failed() => Some(cause),
        };
        match &failure {
            None => tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls"),
            Some(cause) => tracing::error!(
                %cause,
                "fail-stop: writes stopped after a storage failure; health NOT_SERVING, exiting"
            ),
        }
        store_health.abort();
        feed_health.abort();
        let _ = serving_tx.send(false);
        for name in ["", ELIGIBILITY, CONSENTS, CATALOG, CHANGES] {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        let _ = stop_tx.send(true);
        if let Some(cause) = failure {
            // Calls in flight get their answers (writes: refused) within a
            // short grace; the process must not linger half-alive.
            let drain = async {
                let _ = grpc_task.await;
                let _ = http_task.await;
                let _ = admin_task.await;
                let _ = authority.close().await;
            };
            let _ = tokio::time::timeout(FAIL_STOP_GRACE, drain).await;
            anyhow::bail!("fail-stop after a storage failure: {cause}");
        }
        grpc_task.await.context("gRPC server")?;
        http_task.await?.context("HTTP server")?;
        admin_task.await?.context("admin HTTP server")?;
        // No call is in flight any more: the writer finishes what is queued
        // (and signs a last checkpoint) and stops, its feed and ticker are
        // joined, the store is closed.
        authority.close().await.context("closing the writer")?;
        Ok(())
    }
}

/// Binds and serves until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    Server::bind(&config).await?.serve(shutdown).await
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The TLS side of the gRPC listener from a PEM certificate chain and key;
/// it offers HTTP/2 only (ALPN `h2`), as gRPC needs.
fn tls_acceptor(cert: &[u8], key: &[u8]) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .context("reading the --tls-cert PEM")?;
    anyhow::ensure!(!chain.is_empty(), "--tls-cert holds no certificate");
    let key = PrivateKeyDer::from_pem_slice(key).context("reading the --tls-key PEM")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("--tls-cert and --tls-key do not make a TLS identity")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Warns where the configuration exposes people or secrets: links that are
/// not https (RFC 8058 senders require it), bearer tokens in plaintext on a
/// non-loopback address, metrics on a public one.
fn warn_about_exposure(config: &Config, auth: &Auth, tls: bool, public_url: &str) {
    if !public_url.starts_with("https://") {
        tracing::warn!(
            public_url,
            "unsubscribe links are not https: RFC 8058 senders require https (set --public-url)"
        );
    }
    if auth.enabled() && !tls && !config.grpc_addr.ip().is_loopback() {
        tracing::warn!(
            grpc_addr = %config.grpc_addr,
            "bearer tokens travel in plaintext: serve gRPC with --tls-cert/--tls-key or behind a TLS proxy"
        );
    }
    if !config.admin_addr.ip().is_loopback() {
        tracing::warn!(admin_addr = %config.admin_addr, "health and metrics are served on a non-loopback address");
    }
}

/// Descriptors kept for everything but the public HTTP listener: gRPC
/// connections, the admin listener, the store, logs.
const RESERVED_FDS: u64 = 1024;

/// The public listener's connection cap: as configured, but within the
/// process's descriptor limit (raised to its hard limit first), so that
/// half-open sockets on the public port never starve gRPC of descriptors.
fn public_connection_cap(configured: u64) -> usize {
    let fds = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let cap = configured.min(fds.saturating_sub(RESERVED_FDS).max(64));
    if cap < configured {
        tracing::warn!(
            configured,
            cap,
            fd_limit = fds,
            "--http-max-connections lowered to fit the open-file limit"
        );
    }
    cap as usize
}

//! Command-line and environment configuration. Every flag is also read from
//! a `CONSENTD_*` variable; the defaults bind loopback only.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// The server's configuration: flags, each also a `CONSENTD_*` variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "consentd",
    version,
    about = "Consent authority for marketing communication"
)]
pub struct Config {
    /// gRPC listen address (EligibilityService, ConsentsService, CatalogService, health, reflection).
    #[arg(long, env = "CONSENTD_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Public HTTP listen address: the pages people open from their mail
    /// (`/u/...`), nothing else.
    #[arg(long, env = "CONSENTD_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Admin HTTP listen address: `/healthz` and `/metrics`.
    #[arg(long, env = "CONSENTD_ADMIN_ADDR", default_value = "127.0.0.1:9464")]
    pub admin_addr: SocketAddr,

    /// Connections the public HTTP listener keeps open at once; more are
    /// closed on accept.
    #[arg(long, env = "CONSENTD_HTTP_MAX_CONNECTIONS", default_value_t = 8192,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub http_max_connections: u64,

    /// gRPC calls in flight over all connections (a streaming call counts
    /// until it is answered); more are refused at once with
    /// RESOURCE_EXHAUSTED, never queued.
    #[arg(long, env = "CONSENTD_MAX_CALLS_IN_FLIGHT", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_calls_in_flight: u64,

    /// The store of record: `redb` (one file in --data-dir) or a
    /// `postgres://user:password@host:port/db?sslmode=...` URL (several
    /// nodes share one database).
    #[arg(
        long,
        env = "CONSENTD_STORE",
        default_value = "redb",
        hide_env_values = true
    )]
    pub store: String,

    /// Longest wait for the database on one operation, in milliseconds
    /// (PostgreSQL store): then the write is answered UNAVAILABLE.
    #[arg(long, env = "CONSENTD_STORE_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub store_timeout_ms: u64,

    /// Directory of the durable store; created if missing.
    #[arg(long, env = "CONSENTD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Catalog (TOML) applied at start, validated like ApplyCatalog.
    #[arg(long, env = "CONSENTD_CATALOG")]
    pub catalog: Option<PathBuf>,

    /// Purpose used when a CanSend names none and the catalog sets no default.
    #[arg(long, env = "CONSENTD_DEFAULT_PURPOSE")]
    pub default_purpose: Option<String>,

    /// The controller of the data (e.g. the company's legal name), named
    /// beside the brand on every page a person opens (GDPR Art. 13).
    #[arg(long, env = "CONSENTD_CONTROLLER_NAME")]
    pub controller_name: Option<String>,

    /// Provider webhooks (DESIGN.md §9): a TOML file, one `[[provider]]`
    /// per `POST /hooks/{name}` endpoint on the public listener.
    #[arg(long, env = "CONSENTD_PROVIDERS")]
    pub providers: Option<PathBuf>,

    /// Where phone numbers written without `+` are dialled (ISO 3166 code,
    /// e.g. `PL`): addresses are read as E.164; without it such a number is
    /// refused, naming the field.
    #[arg(long, env = "CONSENTD_PHONE_REGION")]
    pub phone_region: Option<String>,

    /// Base of the absolute links the server mints (default: http:// + the HTTP address).
    #[arg(long, env = "CONSENTD_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Extra link signing keys, `ID=BASE64URL_SECRET` (32+ bytes), oldest
    /// first; the last one signs, all verify, as does the data-dir key.
    #[arg(long = "link-key", env = "CONSENTD_LINK_KEYS", value_delimiter = ',')]
    pub link_keys: Vec<String>,

    /// Bearer tokens, `ROLES:SECRET` with roles check, write, audit, admin, watch joined
    /// by `+` (e.g. `check:s3cret-for-dispatch`). None: auth is off.
    #[arg(long = "token", env = "CONSENTD_TOKENS", value_delimiter = ',')]
    pub tokens: Vec<String>,

    /// A TOML file of `[[tokens]]` with `name`, `token`, `roles`.
    #[arg(long, env = "CONSENTD_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// PEM certificate chain: serve gRPC over TLS (with --tls-key).
    #[arg(long, env = "CONSENTD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "CONSENTD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// How long idempotency keys are remembered, in hours (at least 24).
    #[arg(long, env = "CONSENTD_IDEMPOTENCY_RETENTION_HOURS", default_value_t = 168,
          value_parser = clap::value_parser!(u64).range(24..))]
    pub idempotency_retention_hours: u64,

    /// How long a double opt-in confirmation link works, in hours (a
    /// fraction is allowed: 0.5 is half an hour). A pending grant waits as
    /// long.
    #[arg(long, env = "CONSENTD_CONFIRMATION_TTL_HOURS", default_value_t = 168.0,
          value_parser = hours)]
    pub confirmation_ttl_hours: f64,

    /// At most one new confirmation link per (contact, consent) within this
    /// many hours: a pending grant inside it is recorded and answers an
    /// empty confirmation_url (no mail flood).
    #[arg(long, env = "CONSENTD_CONFIRMATION_RESEND_HOURS", default_value_t = 24.0,
          value_parser = hours)]
    pub confirmation_resend_hours: f64,

    /// Seconds after an erasure before the data files are rewritten without
    /// it (erasures within that window share one rewrite; writes wait while
    /// it runs, CanSend does not). At most 50, so that an erased contact
    /// leaves the files within 60 seconds.
    #[arg(long, env = "CONSENTD_ERASURE_PURGE_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(0..=50))]
    pub erasure_purge_seconds: u64,

    /// Page cache of the embedded store, in MiB: memory beyond the index
    /// that the store may keep (hot pages of contacts, history, keys).
    #[arg(long, env = "CONSENTD_STORE_CACHE_MB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(16..=1_048_576))]
    pub store_cache_mb: u64,

    /// Log format: `text` (default) or `json` (one object per line).
    #[arg(long, env = "CONSENTD_LOG_FORMAT", default_value = "text",
          value_parser = ["text", "json"])]
    pub log_format: String,

    /// Allow binding a non-loopback address with auth off.
    #[arg(long, env = "CONSENTD_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// The Ed25519 key that signs checkpoints and receipts (PKCS#8 PEM),
    /// created 0600 at first start; default `signing.key` in the data dir.
    /// Every node of a cluster is given the same file. Never kept in the
    /// store.
    #[arg(long, env = "CONSENTD_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,

    /// The origin line of signed checkpoints (and the key's name): names
    /// this log, e.g. `consent.example.com/eu` (no spaces).
    #[arg(long, env = "CONSENTD_CHECKPOINT_ORIGIN", default_value = "consentd",
          value_parser = origin)]
    pub checkpoint_origin: String,

    /// A signed checkpoint at least every this many records...
    #[arg(long, env = "CONSENTD_CHECKPOINT_RECORDS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_records: u64,

    /// ...or every this many seconds when anything was committed.
    #[arg(long, env = "CONSENTD_CHECKPOINT_SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub checkpoint_seconds: u64,
}

impl Config {
    /// `--confirmation-ttl-hours` as a duration.
    pub fn confirmation_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.confirmation_ttl_hours * 3600.0)
    }

    /// `--confirmation-resend-hours` as a duration.
    pub fn confirmation_resend(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.confirmation_resend_hours * 3600.0)
    }

    /// A configuration for tests and benchmarks: ephemeral loopback ports.
    pub fn ephemeral(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_max_connections: 8192,
            max_calls_in_flight: 4096,
            store: "redb".into(),
            store_timeout_ms: 5000,
            data_dir: data_dir.into(),
            catalog: None,
            default_purpose: None,
            public_url: None,
            controller_name: None,
            phone_region: None,
            providers: None,
            link_keys: Vec::new(),
            tokens: Vec::new(),
            tokens_file: None,
            allow_unauthenticated: false,
            idempotency_retention_hours: 168,
            erasure_purge_seconds: 10,
            confirmation_ttl_hours: 168.0,
            confirmation_resend_hours: 24.0,
            store_cache_mb: 64,
            log_format: "text".into(),
            tls_cert: None,
            tls_key: None,
            signing_key: None,
            checkpoint_origin: "consentd".into(),
            checkpoint_records: 10_000,
            checkpoint_seconds: 60,
        }
    }

    /// The signing key's file: `--signing-key`, or `signing.key` in the
    /// data dir.
    pub fn signing_key_path(&self) -> PathBuf {
        self.signing_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("signing.key"))
    }
}

/// A checkpoint origin (a C2SP key name): printable, no spaces or `+`.
fn origin(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '+')
    {
        return Err(format!(
            "{s:?} must be non-empty, without spaces, control characters or '+'"
        ));
    }
    Ok(s.to_owned())
}

/// A number of hours: finite, not negative, at most ten years.
fn hours(s: &str) -> Result<f64, String> {
    let h: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of hours"))?;
    if !h.is_finite() || !(0.0..=87_600.0).contains(&h) {
        return Err(format!("{s:?} must be between 0 and 87600 hours"));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn confirmation_hours_take_fractions_and_refuse_nonsense() {
        let c = Config::try_parse_from([
            "consentd",
            "--confirmation-ttl-hours",
            "0.5",
            "--confirmation-resend-hours",
            "0",
        ])
        .unwrap();
        assert_eq!(c.confirmation_ttl(), std::time::Duration::from_secs(1800));
        assert_eq!(c.confirmation_resend(), std::time::Duration::ZERO);
        let d = Config::try_parse_from(["consentd"]).unwrap();
        assert_eq!(
            d.confirmation_ttl(),
            std::time::Duration::from_secs(168 * 3600)
        );
        assert_eq!(
            d.confirmation_resend(),
            std::time::Duration::from_secs(24 * 3600)
        );
        for bad in ["-1", "NaN", "inf", "soon", "100000"] {
            let e = Config::try_parse_from(["consentd", "--confirmation-ttl-hours", bad]);
            assert!(e.is_err(), "{bad}");
        }
    }
}

//! Arguments: the commands and flags of `consentctl`, and parsers for the
//! values people type (times, sources, actions).

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand};
use consentd::pb;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Parser)]
#[command(name = "consentctl", version, about = "Talk to a consentd server")]
pub(crate) struct Cli {
    /// consentd gRPC address.
    #[arg(
        long,
        env = "CONSENTD_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub(crate) addr: String,
    /// Bearer token (roles: check, write, admin).
    #[arg(long, env = "CONSENTD_TOKEN", global = true, hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// PEM CA certificate to trust for an https:// address.
    #[arg(long, env = "CONSENTD_CA", global = true)]
    pub(crate) ca: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Apply or show the catalog.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Record a consent.
    Grant(ChangeArgs),
    /// Record a withdrawal.
    Withdraw(ChangeArgs),
    /// May this contact be sent this message?
    Check {
        contact: String,
        channel: String,
        brand: String,
        #[arg(long, default_value = "")]
        purpose: String,
    },
    /// Every event of a contact, oldest first.
    History { contact: String },
    /// Everything held about a contact (states, history, the wordings
    /// behind them) as one JSON document, for an access request (Art. 15);
    /// or, with --all, a snapshot of every contact's states at one
    /// sequence (then `consentctl watch --from` that sequence).
    Export {
        /// The contact (not with --all).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        contact: Option<String>,
        /// Every contact's current states (ExportStates), one sequence.
        #[arg(long)]
        all: bool,
        /// With --all: `jsonl` (a contact per line, then
        /// {"complete":true,"sequence":N}) or `csv` (a state per row, each
        /// with the snapshot's sequence).
        #[arg(long, default_value = "jsonl", requires = "all")]
        format: SnapshotFormat,
        /// With --all: only states of this purpose; repeatable.
        #[arg(long = "purpose", requires = "all")]
        purposes: Vec<String>,
        /// Write it to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Forget a contact (GDPR art. 17).
    Erase {
        contact: String,
        #[arg(long)]
        reason: String,
    },
    /// Mint an unsubscribe link.
    Link {
        contact: String,
        channel: String,
        brand: String,
        #[arg(long, default_value = "")]
        purpose: String,
        /// The address the message goes to: the link withdraws on it too
        /// (email:VALUE, phone:VALUE, or VALUE).
        #[arg(long)]
        to: Option<String>,
    },
    /// Follow the change feed (ChangesService.Watch) as JSON lines, one
    /// record each, from a sequence on; resumes by itself from the last
    /// sequence received when the stream ends (a slow read, a server
    /// restarting).
    Watch {
        /// The last sequence you hold (0: from the beginning).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Only decisions of this purpose (root consent id); repeatable.
        #[arg(long = "purpose")]
        purposes: Vec<String>,
        /// Stop at the first checkpoint (everything committed when it
        /// started has been printed), for a batch job.
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Show a contact's addresses, or replace them.
    Addresses {
        contact: String,
        /// An address it sends to (email:VALUE, phone:VALUE, or VALUE);
        /// repeatable; replaces every address it had.
        #[arg(long = "set")]
        set: Vec<String>,
        /// Replace them with none.
        #[arg(long, conflicts_with = "set")]
        none: bool,
    },
    /// What is recorded on one address: its withdrawals, its undeliverable
    /// mark, its events.
    Address {
        /// email:VALUE, phone:VALUE, or VALUE.
        address: String,
        /// Lift the undeliverable mark a hard bounce left on it first.
        #[arg(long)]
        clear_undeliverable: bool,
    },
    /// Compare a provider's suppression export (CSV) with consentd: what
    /// the provider suppresses that consentd would allow (`--apply`
    /// records them as address withdrawals, never a grant), and, of the
    /// addresses named by `--addresses`, what consentd withdrew that the
    /// provider does not list (`--upload` writes them as a CSV to upload).
    Reconcile {
        /// The `[[provider]]` whose export it is.
        #[arg(long)]
        provider: String,
        /// The providers file the server runs with.
        #[arg(long, env = "CONSENTD_PROVIDERS")]
        providers: PathBuf,
        /// The provider's suppression export (CSV with an `email` or
        /// `address` column, e.g. SendGrid's; a `tag`, `group_id` or
        /// `MessageStream` column names the scope).
        #[arg(long)]
        suppressions: PathBuf,
        /// The addresses you send to (CSV with an address column): consentd
        /// keeps no address text, so the other way is looked up among these.
        #[arg(long)]
        addresses: Option<PathBuf>,
        /// Write what consentd withdrew and the provider lacks to this CSV.
        #[arg(long)]
        upload: Option<PathBuf>,
        /// Record the provider's suppressions consentd lacks (source
        /// PROVIDER; the evidence names the file and its SHA-256).
        #[arg(long)]
        apply: bool,
    },
    /// Mint a link to the contact's preference center for a purpose.
    PreferenceLink {
        contact: String,
        #[arg(long, default_value = "")]
        purpose: String,
        /// The brand whose display name the page carries.
        #[arg(long, default_value = "")]
        brand: String,
    },
    /// Re-send the confirmation of a grant that waits (double opt-in): a
    /// new link, or none inside the re-send window of the last one.
    ConfirmLink { contact: String, consent: String },
    /// Import a CSV: contact_id, consent_id, action, occurred_at (RFC 3339),
    /// source, confirmed (true/false), and evidence columns prefixed
    /// `evidence.`.
    Import { file: PathBuf },
    /// Move every record from one store to another, empty one, then check
    /// that both hold the same. Runs on the stores themselves, with no
    /// server using them (a redb file is locked by a running server).
    Migrate {
        /// `redb:DATA_DIR` or a `postgres://` URL.
        #[arg(long)]
        from: String,
        /// `redb:DATA_DIR` or a `postgres://` URL; must be empty.
        #[arg(long, hide_env_values = true)]
        to: String,
    },
    /// Evidence an outsider can check: the checkpoint signing key, the
    /// latest signed checkpoint, and the verification of a store's hash
    /// chain. Runs on the store itself, no server needed.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Print the public key of a signing key file (base64 of the raw 32
    /// bytes; --pem for `openssl pkeyutl -verify -pubin`).
    Key {
        /// The key file consentd signs with.
        #[arg(
            long,
            env = "CONSENTD_SIGNING_KEY",
            default_value = "./data/signing.key"
        )]
        signing_key: PathBuf,
        /// As a PEM public key.
        #[arg(long)]
        pem: bool,
    },
    /// Print the latest signed checkpoint kept in a store (publish it
    /// outside: a WORM bucket, an auditor's mailbox).
    Checkpoint {
        /// `redb:DATA_DIR` or a `postgres://` URL.
        #[arg(long, hide_env_values = true)]
        store: String,
    },
    /// Recompute the hash chain and every checkpoint signature; exit 1
    /// naming the first sequence that does not verify.
    Verify {
        /// `redb:DATA_DIR` or a `postgres://` URL.
        #[arg(long, hide_env_values = true)]
        store: String,
        /// The public key (base64 of 32 bytes, PEM, or a file holding either).
        #[arg(long)]
        key: String,
        /// A checkpoint kept outside the store (a note file); repeatable.
        #[arg(long = "checkpoint")]
        checkpoints: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum CatalogCommand {
    /// Validate and apply a TOML catalog, atomically.
    Apply { file: PathBuf },
    /// Print the catalog in force.
    Show,
    /// Every wording ever in force of a consent (of all consents without
    /// an id), oldest first: the exact words behind each version.
    Wordings { consent: Option<String> },
}

#[derive(clap::Args)]
pub(crate) struct ChangeArgs {
    pub(crate) contact: String,
    pub(crate) consent: String,
    /// When the person decided (RFC 3339); default: now.
    #[arg(long)]
    pub(crate) occurred_at: Option<String>,
    /// form, import, operator, unsubscribe_link, preference_center, api.
    #[arg(long, default_value = "operator")]
    pub(crate) source: String,
    /// Evidence, KEY=VALUE, repeatable.
    #[arg(long = "evidence", value_parser = parse_kv)]
    pub(crate) evidence: Vec<(String, String)>,
    /// Idempotency key.
    #[arg(long)]
    pub(crate) key: Option<String>,
    /// You vouch that the person confirmed this grant (double opt-in done
    /// elsewhere, or overriding a withdrawal the person made).
    #[arg(long)]
    pub(crate) confirmed: bool,
}

/// A CSV `confirmed` cell: true/yes/1 (any case), else false.
pub(crate) fn parse_flag(s: &str) -> bool {
    matches!(
        s.trim().to_ascii_lowercase().as_str(),
        "true" | "yes" | "1" | "y"
    )
}

/// `KEY=VALUE` of an `--evidence` flag.
fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// An RFC 3339 time, as a protobuf timestamp.
pub(crate) fn parse_time(s: &str) -> anyhow::Result<prost_types::Timestamp> {
    let t = OffsetDateTime::parse(s.trim(), &Rfc3339).map_err(|_| {
        anyhow::anyhow!("{s:?} is not an RFC 3339 time (e.g. 2026-10-01T10:00:00Z)")
    })?;
    Ok(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    })
}

/// A source by its name, as DESIGN.md says it or with the proto's prefix,
/// in any case, `-` or `_` (`unsubscribe-link`, `SOURCE_UNSUBSCRIBE_LINK`);
/// empty is unspecified.
pub(crate) fn parse_source(s: &str) -> anyhow::Result<pb::Source> {
    let name = s.trim().to_ascii_uppercase().replace('-', "_");
    if name.is_empty() {
        return Ok(pb::Source::Unspecified);
    }
    let wire = if name.starts_with("SOURCE_") {
        name.clone()
    } else {
        format!("SOURCE_{name}")
    };
    match pb::Source::from_str_name(&wire) {
        Some(source) => Ok(source),
        None => bail!("unknown source {:?}", s.trim().to_ascii_lowercase()),
    }
}

/// `grant` or `withdraw` (or `ACTION_GRANT`...), in any case; anything
/// else is left for the server to refuse, so the row error names the field.
pub(crate) fn parse_action(s: &str) -> pb::Action {
    let name = s.trim().to_ascii_uppercase();
    let wire = if name.starts_with("ACTION_") {
        name
    } else {
        format!("ACTION_{name}")
    };
    pb::Action::from_str_name(&wire).unwrap_or(pb::Action::Unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_actions_by_their_proto_names() {
        assert_eq!(parse_source("form").unwrap(), pb::Source::Form);
        assert_eq!(
            parse_source(" Unsubscribe-Link ").unwrap(),
            pb::Source::UnsubscribeLink
        );
        assert_eq!(
            parse_source("preference_center").unwrap(),
            pb::Source::PreferenceCenter
        );
        assert_eq!(parse_source("").unwrap(), pb::Source::Unspecified);
        assert_eq!(parse_source("SOURCE_API").unwrap(), pb::Source::Api);
        assert_eq!(parse_action("ACTION_WITHDRAW"), pb::Action::Withdraw);
        assert!(
            parse_source("fax")
                .unwrap_err()
                .to_string()
                .contains("\"fax\"")
        );
        assert_eq!(parse_action("WITHDRAW"), pb::Action::Withdraw);
        assert_eq!(parse_action("grant"), pb::Action::Grant);
        assert_eq!(parse_action("maybe"), pb::Action::Unspecified);
        assert_eq!(
            parse_time("2026-10-01T10:00:00Z").unwrap().seconds,
            1_790_848_800
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_flag(" TRUE ") && parse_flag("1") && !parse_flag("") && !parse_flag("no"));
        assert_eq!(
            parse_source("confirmation_link").unwrap(),
            pb::Source::ConfirmationLink
        );
    }
}

/// How `export --all` writes a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SnapshotFormat {
    /// One JSON object per contact, then a last line saying it is whole.
    Jsonl,
    /// One row per state: contact_id, consent_id, action, occurred_at,
    /// recorded_at, source, version, sequence, snapshot_sequence.
    Csv,
}

//! Sealed links: unsubscribe (DESIGN.md rule 4 and §4), double opt-in
//! confirmation and preference center (§7).
//!
//! A token is `base64url(kind || key id || nonce || sealed)`, where
//! `sealed` is the claim (contact, the consent the link withdraws, its
//! purpose, the channel and brand it was minted for, the issue time)
//! encrypted and authenticated with XChaCha20-Poly1305 under the key named
//! in clear; the version and key id are authenticated too. Without the key a
//! token reveals nothing: not the contact, not the consent, so it is safe in
//! proxy logs, click trackers and old mails. The kind byte (2: unsubscribe,
//! the format's first version; 3: confirmation; 4: preferences) is
//! authenticated, so a token of one kind never opens as another (an
//! unsubscribe link cannot confirm a grant). The 24-byte nonce (16 random
//! bytes per process, then a counter) makes every token distinct.
//!
//! Keys rotate by id: every known key opens, the newest seals. The first
//! key is generated on first start and kept in the data dir, so links keep
//! working across restarts; more come from configuration. A configured
//! secret is never used directly: the AEAD key is HMAC-SHA256(secret,
//! `KEY_LABEL`).
//!
//! Opening is strict (canonical base64url, exact lengths, known key,
//! authentication before anything is parsed) and every failure is the same
//! `None`, so a forged, altered or unknown-key token cannot be told apart
//! from another.

use std::path::Path;
use std::sync::atomic::AtomicU64;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::Hmac;
use sha2::Sha256;

use crate::domain::{AddressKind, ConsentId, ContactId, ids::check_id};

mod keyfile;
mod seal;

use self::keyfile::{KEY_FILE, generate_key_file, parse_key};
pub use self::keyfile::{generate_key, read_key_file, write_key_file};
pub use self::seal::ClaimRef;

type HmacSha256 = Hmac<Sha256>;

/// What a link is for: the token's first byte. 1 (signed only) is no
/// longer read; 2 is the first sealed format, unsubscribe links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkKind {
    /// `/u/{token}`: withdraws (rule 4).
    Unsubscribe = 2,
    /// `/c/{token}`: confirms a pending grant (double opt-in).
    Confirm = 3,
    /// `/p/{token}`: the preference center of one purpose.
    Preferences = 4,
    /// `/r/{token}`: the signed receipt of one decision (DESIGN.md §11).
    Receipt = 5,
}

impl LinkKind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            2 => Some(Self::Unsubscribe),
            3 => Some(Self::Confirm),
            4 => Some(Self::Preferences),
            5 => Some(Self::Receipt),
            _ => None,
        }
    }

    /// The path segment of its page.
    pub fn path(self) -> &'static str {
        match self {
            Self::Unsubscribe => "u",
            Self::Confirm => "c",
            Self::Preferences => "p",
            Self::Receipt => "r",
        }
    }
}
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// What a configured secret is bound to before it becomes an AEAD key.
const KEY_LABEL: &[u8] = b"consentd unsubscribe link token v2";
/// Shortest secret accepted from configuration.
pub const MIN_SECRET_LEN: usize = 32;

/// Why the key ring cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A configured or stored key is malformed: (which key, what is wrong).
    #[error("link key {0:?}: {1}")]
    BadKey(String, String),
    /// The data-dir key file cannot be read or written.
    #[error("link keys file: {0}")]
    Io(#[from] std::io::Error),
}

/// What a token asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// What the link is for.
    pub kind: LinkKind,
    /// Whose link it is.
    pub contact: ContactId,
    /// The consent the link withdraws (the most specific of the covering
    /// set), confirms, or (preferences) the purpose again.
    pub consent: ConsentId,
    /// The purpose (root consent) it was minted for.
    pub purpose: ConsentId,
    /// The channel it was minted for (empty: not for one channel).
    pub channel: String,
    /// The brand it was minted for (empty: not for one brand).
    pub brand: String,
    /// Nanoseconds since the epoch.
    pub issued_at: i64,
    /// The address the message went to (its kind and keyed hash), for an
    /// unsubscribe link minted with `to`: a click withdraws on it too
    /// (DESIGN.md §9).
    pub to: Option<(AddressKind, [u8; 32])>,
    /// A receipt link: the sequence of the event it shows (0 otherwise).
    pub sequence: u64,
}

struct Key {
    id: String,
    aead: XChaCha20Poly1305,
    /// The AEAD key itself, for the sealer's subkey.
    raw: chacha20poly1305::Key,
}

/// The key ring and the public base of the links.
pub struct Links {
    /// Oldest first; the last one signs.
    keys: Vec<Key>,
    base: String,
    /// The host of `base`: the List-Id namespace.
    host: String,
    /// Random per process: with `nonces`, makes every nonce unique.
    nonce_prefix: [u8; 16],
    nonces: AtomicU64,
    /// The newest key's XChaCha20 subkey for `nonce_prefix`, set up once
    /// (see `seal.rs`).
    sealer: ring::aead::LessSafeKey,
}

impl Links {
    /// Loads (or creates, on first start) the data-dir key, then adds the
    /// configured `ID=BASE64URL_SECRET` keys, which are newer.
    pub fn open(
        data_dir: &Path,
        configured: &[String],
        public_url: &str,
    ) -> Result<Links, LinkError> {
        let path = data_dir.join(KEY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => generate_key_file(&path)?,
            Err(e) => return Err(e.into()),
        };
        let lines: Vec<&str> = text.lines().collect();
        Self::with_keys(&path.display().to_string(), &lines, configured, public_url)
    }

    /// A key ring from `ID=BASE64URL_SECRET` lines kept elsewhere (a shared
    /// store), oldest first, then the configured keys, which are newer.
    /// `origin` names where the lines come from, for errors.
    pub fn with_keys(
        origin: &str,
        lines: &[&str],
        configured: &[String],
        public_url: &str,
    ) -> Result<Links, LinkError> {
        let mut keys = Vec::new();
        for line in lines.iter().filter(|l| !l.trim().is_empty()) {
            keys.push(parse_key(line.trim())?);
        }
        for spec in configured {
            keys.push(parse_key(spec)?);
        }
        if keys.is_empty() {
            return Err(LinkError::BadKey(origin.to_owned(), "holds no key".into()));
        }
        let mut nonce_prefix = [0u8; 16];
        getrandom::fill(&mut nonce_prefix)
            .map_err(|e| LinkError::Io(std::io::Error::other(e.to_string())))?;
        let sealer = seal::sealer(&keys[keys.len() - 1].raw, &nonce_prefix);
        Ok(Links {
            keys,
            base: public_url.trim_end_matches('/').to_owned(),
            host: host_of(public_url).to_owned(),
            nonce_prefix,
            nonces: AtomicU64::new(0),
            sealer,
        })
    }

    /// The host of the public base (no scheme, port or path): the namespace
    /// of the List-Id values CanSend answers (RFC 2919). Read once.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The absolute URL of the page of a `kind` of link.
    pub fn url_of(&self, kind: LinkKind, token: &str) -> String {
        format!("{}/{}/{token}", self.base, kind.path())
    }

    /// Seals a claim with the newest key: its token.
    pub fn mint(&self, claim: &Claim) -> String {
        let mut token = String::new();
        self.seal_into(&claim.borrowed(), &mut token);
        token
    }

    /// Opens a token; `None` for anything forged, altered or unknown.
    pub fn verify(&self, token: &str) -> Option<Claim> {
        if token.len() > 2048 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        let mut r = Reader(&raw);
        let kind = LinkKind::from_u8(r.byte()?)?;
        let kid = r.short()?;
        let header_len = raw.len() - r.0.len();
        let key = self.keys.iter().find(|k| k.id.as_bytes() == kid)?;
        let nonce = r.take(NONCE_LEN)?;
        if r.0.len() < TAG_LEN {
            return None;
        }
        let plain = key
            .aead
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: r.0,
                    aad: &raw[..header_len],
                },
            )
            .ok()?;
        // Authentic from here on; still parse defensively.
        let mut r = Reader(&plain);
        let contact_len = u16::from_be_bytes(r.take(2)?.try_into().ok()?) as usize;
        let contact = std::str::from_utf8(r.take(contact_len)?).ok()?;
        let consent = std::str::from_utf8(r.short()?).ok()?;
        let purpose = std::str::from_utf8(r.short()?).ok()?;
        let channel = std::str::from_utf8(r.short()?).ok()?;
        let brand = std::str::from_utf8(r.short()?).ok()?;
        let issued_at = i64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let sequence = match kind {
            LinkKind::Receipt => u64::from_be_bytes(r.take(8)?.try_into().ok()?),
            _ => 0,
        };
        let to = match r.0.len() {
            0 => None,
            33 => {
                let kind = match r.byte()? {
                    1 => AddressKind::Email,
                    2 => AddressKind::Phone,
                    _ => return None,
                };
                Some((kind, r.take(32)?.try_into().ok()?))
            }
            _ => return None,
        };
        let id_or_none = |field, v: &str| {
            (kind != LinkKind::Unsubscribe && v.is_empty()) || check_id(field, v).is_ok()
        };
        if !id_or_none("channel", channel) || !id_or_none("brand", brand) {
            return None;
        }
        Some(Claim {
            kind,
            contact: ContactId::parse("contact_id", contact).ok()?,
            consent: ConsentId::parse("consent_id", consent).ok()?,
            purpose: ConsentId::parse("purpose", purpose).ok()?,
            channel: channel.to_owned(),
            brand: brand.to_owned(),
            issued_at,
            to,
            sequence,
        })
    }
}

/// The host of a public base URL: no scheme, credentials, port or path.
fn host_of(base: &str) -> &str {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    match host.strip_prefix('[') {
        // An IPv6 literal: the brackets and the port go.
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.split(':').next().unwrap_or(host),
    }
}

fn push_short(buf: &mut Vec<u8>, b: &[u8]) {
    // Ids are at most 64 bytes (catalog ids) or 16 (key ids).
    buf.push(b.len() as u8);
    buf.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }
    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn short(&mut self) -> Option<&'a [u8]> {
        let n = self.byte()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn claim() -> Claim {
        Claim {
            kind: LinkKind::Unsubscribe,
            contact: ContactId::parse("c", "anna@example.com").unwrap(),
            consent: ConsentId::parse("c", "marketing.acme.email").unwrap(),
            purpose: ConsentId::parse("c", "marketing").unwrap(),
            channel: "email".into(),
            brand: "acme".into(),
            issued_at: 1_790_000_000_123_456_789,
            to: None,
            sequence: 0,
        }
    }

    fn secret(b: u8) -> String {
        URL_SAFE_NO_PAD.encode([b; 32])
    }

    #[test]
    fn the_list_id_namespace_is_the_public_host() {
        let host = |base: &str| {
            Links::with_keys("test", &[&format!("k1={}", secret(1))], &[], base)
                .unwrap()
                .host()
                .to_owned()
        };
        assert_eq!(
            host("https://consent.acme.example/"),
            "consent.acme.example"
        );
        assert_eq!(host("http://127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(
            host("https://u:p@links.example:8443/c?x#y"),
            "links.example"
        );
        assert_eq!(host("http://[::1]:8080/"), "::1");
    }

    #[test]
    fn a_token_keeps_its_kind_and_another_kind_cannot_be_forged_from_it() {
        let links =
            Links::with_keys("test", &[&format!("k1={}", secret(1))], &[], "https://x").unwrap();
        let mut confirm = claim();
        confirm.kind = LinkKind::Confirm;
        confirm.channel.clear();
        confirm.brand.clear();
        let token = links.mint(&confirm);
        assert_eq!(links.verify(&token), Some(confirm));
        assert!(
            links
                .url_of(LinkKind::Confirm, &token)
                .starts_with("https://x/c/")
        );
        // Flipping the kind byte (confirm -> unsubscribe) breaks the seal.
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        raw[0] = LinkKind::Unsubscribe as u8;
        assert_eq!(links.verify(&URL_SAFE_NO_PAD.encode(raw)), None);
        // An unsubscribe claim must name its channel and brand.
        let mut bare = claim();
        bare.channel.clear();
        assert_eq!(links.verify(&links.mint(&bare)), None);
    }

    #[test]
    fn round_trip_rotation_and_forgeries() {
        let dir = tempfile::tempdir().unwrap();
        let old = Links::open(dir.path(), &[], "https://example.com/").unwrap();
        let token = old.mint(&claim());
        assert_eq!(old.verify(&token), Some(claim()));
        assert!(
            old.url_of(LinkKind::Unsubscribe, &token)
                .starts_with("https://example.com/u/")
        );

        // Same data dir: the generated key is reused, so old links verify.
        let rotated = Links::open(dir.path(), &[format!("k2={}", secret(7))], "http://x").unwrap();
        assert_eq!(rotated.verify(&token), Some(claim()));
        let new = rotated.mint(&claim());
        assert!(
            new.starts_with(
                &URL_SAFE_NO_PAD.encode([LinkKind::Unsubscribe as u8, 2, b'k', b'2'])[..4]
            ),
            "the newest key seals"
        );
        assert_eq!(rotated.verify(&new), Some(claim()));
        assert_eq!(old.verify(&new), None, "unknown key id");

        // Every single-character alteration is refused.
        let bytes = token.as_bytes();
        for i in 0..bytes.len() {
            let mut t = bytes.to_vec();
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            assert_eq!(
                old.verify(std::str::from_utf8(&t).unwrap()),
                None,
                "position {i}"
            );
        }
        for bad in [
            "",
            "x",
            "====",
            &format!("{token}A"),
            &token[..token.len() - 1],
            &format!("{token}="),
        ] {
            assert_eq!(old.verify(bad), None, "{bad}");
        }
    }

    #[test]
    fn tokens_reveal_nothing_without_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let links = Links::open(dir.path(), &[], "http://x").unwrap();
        let a = links.mint(&claim());
        let b = links.mint(&claim());
        assert_ne!(a, b, "a fresh nonce per token");
        for token in [&a, &b] {
            let raw = URL_SAFE_NO_PAD.decode(token).unwrap();
            for needle in ["anna@example.com", "anna", "marketing", "acme", "email"] {
                assert!(
                    !raw.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{needle} readable in the token"
                );
                assert!(!token.contains(needle), "{needle} in the token text");
            }
        }
        // A version-1 (signed, readable) token is no longer accepted.
        let mut v1 = URL_SAFE_NO_PAD.decode(&a).unwrap();
        v1[0] = 1;
        assert_eq!(links.verify(&URL_SAFE_NO_PAD.encode(v1)), None);
    }

    #[test]
    fn bad_configured_keys() {
        let dir = tempfile::tempdir().unwrap();
        for spec in [
            "nokey",
            "=abc",
            &format!("k!={}", secret(1)),
            "k=short",
            "k=@@@@",
        ] {
            assert!(
                Links::open(dir.path(), &[spec.to_string()], "http://x").is_err(),
                "{spec}"
            );
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn links() -> &'static Links {
        // One key ring for every case, opened once: opening writes a key
        // file, and the cases of several tests run at once (opening it in
        // each raced on that file).
        use std::sync::OnceLock;
        static RING: OnceLock<(tempfile::TempDir, Links)> = OnceLock::new();
        let (_, links) = RING.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let links = Links::open(dir.path(), &[], "https://example.com").unwrap();
            (dir, links)
        });
        links
    }

    proptest! {
        /// Whatever arrives in a URL, opening it never panics and never
        /// accepts it.
        #[test]
        fn arbitrary_tokens_are_refused(token in ".{0,300}") {
            prop_assert_eq!(links().verify(&token), None);
        }

        /// Base64url-looking garbage of any length is refused too.
        #[test]
        fn arbitrary_base64url_is_refused(token in "[A-Za-z0-9_-]{0,400}") {
            prop_assert_eq!(links().verify(&token), None);
        }

        /// Every claim a server can mint comes back whole, and its token
        /// shows none of it.
        #[test]
        fn minted_claims_round_trip(
            contact in "[^\\p{Cc}]{1,64}",
            consent in "[a-z][a-z0-9_.-]{0,20}",
            purpose in "[a-z][a-z0-9_.-]{0,20}",
            channel in "[a-z][a-z0-9]{0,10}",
            brand in "[a-z][a-z0-9]{0,10}",
            issued_at in any::<i64>(),
            to in proptest::option::of((any::<bool>(), any::<[u8; 32]>())),
        ) {
            let claim = Claim {
                kind: LinkKind::Unsubscribe,
                contact: ContactId::parse("c", &contact).unwrap(),
                consent: ConsentId::parse("c", &consent).unwrap(),
                purpose: ConsentId::parse("c", &purpose).unwrap(),
                channel,
                brand,
                issued_at,
                to: to.map(|(email, hash)| {
                    (if email { AddressKind::Email } else { AddressKind::Phone }, hash)
                }),
                sequence: 0,
            };
            let l = links();
            let token = l.mint(&claim);
            prop_assert_eq!(l.verify(&token), Some(claim));
            if contact.len() >= 4 {
                prop_assert!(!token.contains(&contact));
            }
        }
    }
}

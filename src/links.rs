//! Signed unsubscribe links (DESIGN.md rule 4 and §4).
//!
//! A token is `base64url(payload || HMAC-SHA256(key, payload))` where the
//! payload names the version, the key id, the contact, the consent the link
//! withdraws, the channel and brand it was minted for, and the issue time.
//! Keys rotate by id: every known key verifies, the newest signs. The first
//! key is generated on first start and kept in the data dir, so links keep
//! working across restarts; more come from configuration.
//!
//! Verification is strict (canonical base64url, exact lengths, known key,
//! constant-time MAC check) and every failure is the same `None`, so a
//! forged, altered or unknown-key token cannot be told apart from another.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::{ConsentId, ContactId, ids::check_id};

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
const KEY_FILE: &str = "link-keys";
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
    /// Whose link it is.
    pub contact: ContactId,
    /// The consent the link withdraws (the most specific of the covering set).
    pub consent: ConsentId,
    /// The channel it was minted for.
    pub channel: String,
    /// The brand it was minted for.
    pub brand: String,
    /// Nanoseconds since the epoch.
    pub issued_at: i64,
}

struct Key {
    id: String,
    mac: HmacSha256,
}

/// The key ring and the public base of the links.
pub struct Links {
    /// Oldest first; the last one signs.
    keys: Vec<Key>,
    base: String,
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
        let mut keys = Vec::new();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => generate_key_file(&path)?,
            Err(e) => return Err(e.into()),
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            keys.push(parse_key(line.trim())?);
        }
        for spec in configured {
            keys.push(parse_key(spec)?);
        }
        if keys.is_empty() {
            return Err(LinkError::BadKey(
                path.display().to_string(),
                "holds no key".into(),
            ));
        }
        Ok(Links {
            keys,
            base: public_url.trim_end_matches('/').to_owned(),
        })
    }

    /// The absolute URL of the page behind a token.
    pub fn url(&self, token: &str) -> String {
        format!("{}/u/{token}", self.base)
    }

    /// Signs a claim with the newest key.
    pub fn mint(&self, claim: &Claim) -> String {
        let key = self
            .keys
            .last()
            .expect("Links::open refuses an empty key ring");
        let mut buf = Vec::with_capacity(96 + claim.contact.as_str().len());
        buf.push(VERSION);
        push_short(&mut buf, key.id.as_bytes());
        let contact = claim.contact.as_str().as_bytes();
        buf.extend_from_slice(&(contact.len() as u16).to_be_bytes());
        buf.extend_from_slice(contact);
        push_short(&mut buf, claim.consent.as_str().as_bytes());
        push_short(&mut buf, claim.channel.as_bytes());
        push_short(&mut buf, claim.brand.as_bytes());
        buf.extend_from_slice(&claim.issued_at.to_be_bytes());
        let mut mac = key.mac.clone();
        mac.update(&buf);
        buf.extend_from_slice(&mac.finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Verifies a token; `None` for anything forged, altered or unknown.
    pub fn verify(&self, token: &str) -> Option<Claim> {
        if token.len() > 2048 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        let (payload, tag) = raw.split_at_checked(raw.len().checked_sub(MAC_LEN)?)?;
        let mut r = Reader(payload);
        if r.byte()? != VERSION {
            return None;
        }
        let kid = r.short()?;
        let key = self.keys.iter().find(|k| k.id.as_bytes() == kid)?;
        let mut mac = key.mac.clone();
        mac.update(payload);
        mac.verify_slice(tag).ok()?;
        // Authentic from here on; still parse defensively.
        let contact_len = u16::from_be_bytes(r.take(2)?.try_into().ok()?) as usize;
        let contact = std::str::from_utf8(r.take(contact_len)?).ok()?;
        let consent = std::str::from_utf8(r.short()?).ok()?;
        let channel = std::str::from_utf8(r.short()?).ok()?;
        let brand = std::str::from_utf8(r.short()?).ok()?;
        let issued_at = i64::from_be_bytes(r.take(8)?.try_into().ok()?);
        if !r.0.is_empty() {
            return None;
        }
        check_id("channel", channel).ok()?;
        check_id("brand", brand).ok()?;
        Some(Claim {
            contact: ContactId::parse("contact_id", contact).ok()?,
            consent: ConsentId::parse("consent_id", consent).ok()?,
            channel: channel.to_owned(),
            brand: brand.to_owned(),
            issued_at,
        })
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

/// Parses `ID=BASE64URL_SECRET`.
fn parse_key(spec: &str) -> Result<Key, LinkError> {
    let (id, secret) = spec.split_once('=').ok_or_else(|| {
        LinkError::BadKey(
            spec.chars().take(8).collect(),
            "expected ID=BASE64URL_SECRET".into(),
        )
    })?;
    let bad = |why: &str| LinkError::BadKey(id.to_owned(), why.to_owned());
    if id.is_empty()
        || id.len() > 16
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad("the id must be 1..=16 of [A-Za-z0-9_-]"));
    }
    let secret = URL_SAFE_NO_PAD
        .decode(secret.trim_end_matches('='))
        .map_err(|_| bad("the secret is not base64url"))?;
    if secret.len() < MIN_SECRET_LEN {
        return Err(bad("the secret must be at least 32 bytes"));
    }
    let mac = HmacSha256::new_from_slice(&secret).map_err(|_| bad("unusable secret"))?;
    Ok(Key {
        id: id.to_owned(),
        mac,
    })
}

/// Creates the data-dir key file (mode 0600, fsync'd) and returns its text.
fn generate_key_file(path: &Path) -> Result<String, LinkError> {
    let mut secret = [0u8; 32];
    let mut id = [0u8; 4];
    getrandom::fill(&mut secret)
        .map_err(|e| LinkError::Io(std::io::Error::other(e.to_string())))?;
    getrandom::fill(&mut id).map_err(|e| LinkError::Io(std::io::Error::other(e.to_string())))?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let line = format!("{id}={}\n", URL_SAFE_NO_PAD.encode(secret));
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp)?;
    f.write_all(line.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    tracing::info!(key_id = %id, "generated the unsubscribe link signing key");
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> Claim {
        Claim {
            contact: ContactId::parse("c", "anna@example.com").unwrap(),
            consent: ConsentId::parse("c", "marketing.acme.email").unwrap(),
            channel: "email".into(),
            brand: "acme".into(),
            issued_at: 1_790_000_000_123_456_789,
        }
    }

    fn secret(b: u8) -> String {
        URL_SAFE_NO_PAD.encode([b; 32])
    }

    #[test]
    fn round_trip_rotation_and_forgeries() {
        let dir = tempfile::tempdir().unwrap();
        let old = Links::open(dir.path(), &[], "https://example.com/").unwrap();
        let token = old.mint(&claim());
        assert_eq!(old.verify(&token), Some(claim()));
        assert!(old.url(&token).starts_with("https://example.com/u/"));

        // Same data dir: the generated key is reused, so old links verify.
        let rotated = Links::open(dir.path(), &[format!("k2={}", secret(7))], "http://x").unwrap();
        assert_eq!(rotated.verify(&token), Some(claim()));
        let new = rotated.mint(&claim());
        assert_ne!(new, token, "the newest key signs");
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

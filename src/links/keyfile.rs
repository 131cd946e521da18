//! The key ring's secrets and the file they live in (`link-keys` in the
//! data dir, mode 0600): parsing `ID=BASE64URL_SECRET`, generating one,
//! reading and writing the file.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::KeyInit;

use hmac::Mac;

use super::{HmacSha256, KEY_LABEL, Key, LinkError, MIN_SECRET_LEN};

/// The key file's name in the data dir.
pub(super) const KEY_FILE: &str = "link-keys";

/// Parses `ID=BASE64URL_SECRET`.
pub(super) fn parse_key(spec: &str) -> Result<Key, LinkError> {
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
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(&secret).map_err(|_| bad("unusable secret"))?;
    mac.update(KEY_LABEL);
    let raw = mac.finalize().into_bytes();
    let aead = XChaCha20Poly1305::new_from_slice(&raw).map_err(|_| bad("unusable secret"))?;
    Ok(Key {
        id: id.to_owned(),
        aead,
        raw,
    })
}

/// A new random key as an `ID=BASE64URL_SECRET` line (no newline).
pub fn generate_key() -> Result<String, LinkError> {
    let mut secret = [0u8; 32];
    let mut id = [0u8; 4];
    getrandom::fill(&mut secret)
        .map_err(|e| LinkError::Io(std::io::Error::other(e.to_string())))?;
    getrandom::fill(&mut id).map_err(|e| LinkError::Io(std::io::Error::other(e.to_string())))?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{id}={}", URL_SAFE_NO_PAD.encode(secret)))
}

/// The key lines of a data dir's key file, oldest first; `None` when it
/// has none.
pub fn read_key_file(data_dir: &Path) -> Result<Option<Vec<String>>, LinkError> {
    match std::fs::read_to_string(data_dir.join(KEY_FILE)) {
        Ok(text) => Ok(Some(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes `lines` as a data dir's key file (mode 0600, fsync'd), for a
/// store moved into that dir.
pub fn write_key_file(data_dir: &Path, lines: &[String]) -> Result<(), LinkError> {
    let text: String = lines.iter().map(|l| format!("{}\n", l.trim())).collect();
    write_private(&data_dir.join(KEY_FILE), &text)
}

/// Creates the data-dir key file (mode 0600, fsync'd) and returns its text.
pub(super) fn generate_key_file(path: &Path) -> Result<String, LinkError> {
    let line = format!("{}\n", generate_key()?);
    let id = line.split('=').next().unwrap_or_default().to_owned();
    write_private(path, &line)?;
    tracing::info!(key_id = %id, "generated the unsubscribe link signing key");
    Ok(line)
}

/// Writes a file readable by its owner only, durably (temp file, fsync,
/// rename, fsync of the directory).
fn write_private(path: &Path, text: &str) -> Result<(), LinkError> {
    let line = text;
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
    Ok(())
}

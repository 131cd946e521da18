//! Signed checkpoints in the C2SP signed-note form (the checkpoint format
//! of Certificate Transparency logs, Trillian and sigsum):
//!
//! ```text
//! <origin>
//! <sequence>
//! <base64 chain>
//!
//! — <key name> <base64(key id ‖ Ed25519 signature)>
//! ```
//!
//! The signature covers the three body lines, each ending in a newline;
//! the key id is the first 4 bytes of `SHA-256(key name ‖ 0x0A ‖ 0x01 ‖
//! public key)`. The key name is the origin. The signing key lives in a
//! file (PKCS#8 PEM, 0600), never in the store: whoever can write the
//! database cannot sign.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// The signature line's lead: an em dash and a space.
const SIG_LEAD: &str = "\u{2014} ";
/// The signature type byte of Ed25519 in key ids.
const ED25519: u8 = 0x01;

/// Signs checkpoints with the key of a file.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
    origin: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("origin", &self.origin)
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("signing key {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file holds no Ed25519 private key.
    #[error("signing key {path}: not an Ed25519 private key in PKCS#8 PEM ({what})")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
}

impl Signer {
    /// The key in `path`, created (0600) when there is no file yet.
    pub fn load_or_create(path: &Path, origin: &str) -> Result<Signer, KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let key = match std::fs::read_to_string(path) {
            Ok(pem) => SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Format {
                path: path.display().to_string(),
                what: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path).map_err(io)?,
            Err(e) => return Err(io(e)),
        };
        Ok(Signer {
            key,
            origin: origin.to_owned(),
        })
    }

    /// A signer over a key in memory (tests, tools).
    pub fn from_key(key: SigningKey, origin: &str) -> Signer {
        Signer {
            key,
            origin: origin.to_owned(),
        }
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as `consentctl audit verify --key` takes it.
    pub fn public_key_base64(&self) -> String {
        B64.encode(self.key.verifying_key().as_bytes())
    }

    /// The origin (and key name) of the notes it signs.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The signed note of the chain through `sequence`.
    pub fn checkpoint(&self, sequence: u64, chain: &[u8; 32]) -> String {
        let body = body(&self.origin, sequence, chain);
        let sig = self.key.sign(body.as_bytes());
        let mut blob = key_id(&self.origin, &self.key.verifying_key()).to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!("{body}\n{SIG_LEAD}{} {}\n", self.origin, B64.encode(blob))
    }

    /// A detached signature of `message` (64 bytes) and the key id (4).
    pub fn sign_raw(&self, message: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let sig = self.key.sign(message);
        let id = key_id(&self.origin, &self.key.verifying_key());
        (sig.to_bytes().to_vec(), id.to_vec())
    }
}

fn create(path: &Path) -> std::io::Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    std::io::Write::write_all(&mut file, pem.as_bytes())?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "created a new checkpoint signing key");
    Ok(key)
}

/// The body of a checkpoint note (three lines).
pub fn body(origin: &str, sequence: u64, chain: &[u8; 32]) -> String {
    format!("{origin}\n{sequence}\n{}\n", B64.encode(chain))
}

/// The C2SP key id of an Ed25519 key under `name`.
pub fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0A, ED25519]);
    h.update(key.as_bytes());
    h.finalize()[..4].try_into().expect("4 bytes")
}

/// A public key as given on a command line: base64 of the raw 32 bytes,
/// or a PEM public key (SubjectPublicKeyInfo).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text).map_err(|e| e.to_string());
    }
    let raw = B64
        .decode(text)
        .map_err(|e| format!("not base64 of 32 bytes: {e}"))?;
    let raw: [u8; 32] = raw
        .try_into()
        .map_err(|_| "not 32 bytes (an Ed25519 public key)".to_string())?;
    VerifyingKey::from_bytes(&raw).map_err(|e| e.to_string())
}

/// The public key as PEM (what `openssl pkeyutl -verify -pubin` reads).
pub fn public_key_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF).unwrap_or_default()
}

/// A checkpoint read from its note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin.
    pub origin: String,
    /// The last sequence it covers.
    pub sequence: u64,
    /// The chain through it.
    pub chain: [u8; 32],
}

/// Reads a note and checks its signature by `key`: the checkpoint, or
/// what is wrong with it.
pub fn verify(note: &str, key: &VerifyingKey) -> Result<Checkpoint, String> {
    let (body, sigs) = note
        .split_once("\n\n")
        .ok_or("no blank line between the body and the signatures")?;
    let body = format!("{body}\n");
    let mut lines = body.lines();
    let origin = lines.next().ok_or("no origin line")?.to_owned();
    let sequence = lines
        .next()
        .and_then(|l| l.parse::<u64>().ok())
        .ok_or("the second line is not a sequence")?;
    let chain: [u8; 32] = lines
        .next()
        .and_then(|l| B64.decode(l).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or("the third line is not a base64 chain of 32 bytes")?;
    let mut seen = false;
    for line in sigs.lines().filter(|l| !l.is_empty()) {
        let rest = line
            .strip_prefix(SIG_LEAD)
            .ok_or("a signature line does not start with an em dash")?;
        let (name, blob) = rest
            .split_once(' ')
            .ok_or("a signature line has no key name")?;
        let blob = B64.decode(blob).map_err(|_| "a signature is not base64")?;
        if blob.len() != 68 || blob[..4] != key_id(name, key) {
            continue; // another key's signature (a witness, a cosigner)
        }
        let sig = Signature::from_bytes(blob[4..].try_into().expect("64 bytes"));
        key.verify_strict(body.as_bytes(), &sig)
            .map_err(|_| format!("the signature by {name} does not verify"))?;
        seen = true;
    }
    if !seen {
        return Err("no signature by the given key".into());
    }
    Ok(Checkpoint {
        origin,
        sequence,
        chain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_verifies_with_its_key_only_and_breaks_with_any_change() {
        let signer = Signer::from_key(SigningKey::from_bytes(&[7; 32]), "consentd.example/acme");
        let note = signer.checkpoint(42, &[9; 32]);
        let lines: Vec<&str> = note.lines().collect();
        assert_eq!(lines[0], "consentd.example/acme");
        assert_eq!(lines[1], "42");
        assert_eq!(lines[3], "");
        assert!(lines[4].starts_with("\u{2014} consentd.example/acme "));
        let cp = verify(&note, &signer.verifying_key()).unwrap();
        assert_eq!((cp.sequence, cp.chain), (42, [9; 32]));
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(verify(&note, &other).is_err());
        let changed = note.replacen("42", "43", 1);
        assert!(verify(&changed, &signer.verifying_key()).is_err());
        let key = parse_public_key(&signer.public_key_base64()).unwrap();
        assert_eq!(key, signer.verifying_key());
        let pem = public_key_pem(&key);
        assert_eq!(parse_public_key(&pem).unwrap(), key);
    }

    #[test]
    fn a_key_file_is_created_once_owner_only_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let a = Signer::load_or_create(&path, "o").unwrap();
        let b = Signer::load_or_create(&path, "o").unwrap();
        assert_eq!(a.public_key_base64(), b.public_key_base64());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not a key").unwrap();
        let err = Signer::load_or_create(&path, "o").unwrap_err();
        assert!(err.to_string().contains("PKCS#8"), "{err}");
    }
}

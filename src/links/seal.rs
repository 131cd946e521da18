//! Sealing a claim into its token, written straight into the URL that
//! carries it. This runs on every CanSend that asks for its
//! List-Unsubscribe URL (RFC 8058), so nothing is set up per link:
//!
//! - **the key schedule once**: XChaCha20 derives a subkey from the key and
//!   the nonce's first 16 bytes (HChaCha20), then runs ChaCha20 with the
//!   nonce's last 8. Those 16 bytes are this process's random prefix, the
//!   same for every link, so the subkey is derived when the key ring is
//!   built and each link runs ChaCha20-Poly1305 (RFC 8439) under it: the
//!   same bytes XChaCha20-Poly1305 would give (tested), one HChaCha20 block
//!   fewer. The sealing itself is ring's (assembly): the portable crate's
//!   SIMD backends call each vector instruction as a function of its own
//!   with this compiler, 1.3 µs a link against ring's fraction of it;
//! - **one buffer per thread**: header, nonce, claim and tag are written
//!   into a reused buffer, sealed in place, and base64url-encoded onto the
//!   end of the URL string, which is the one allocation a link makes;
//! - **a borrowed claim**: the ids come from the request and the catalog
//!   as they are, not copied into owned ones first.

use std::cell::RefCell;
use std::sync::atomic::Ordering;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use super::{Claim, LinkKind, Links, NONCE_LEN, TAG_LEN, push_short};
use crate::domain::AddressKind;

/// A claim to seal, borrowing its ids (see [`Claim`] for each field).
#[derive(Debug, Clone, Copy)]
pub struct ClaimRef<'a> {
    /// What the link is for.
    pub kind: LinkKind,
    /// Whose link it is (a valid contact id).
    pub contact: &'a str,
    /// The consent it withdraws, confirms, or the purpose again.
    pub consent: &'a str,
    /// The purpose it was minted for.
    pub purpose: &'a str,
    /// The channel (empty: none).
    pub channel: &'a str,
    /// The brand (empty: none).
    pub brand: &'a str,
    /// Nanoseconds since the epoch.
    pub issued_at: i64,
    /// The address the message went to.
    pub to: Option<(AddressKind, [u8; 32])>,
    /// A receipt link's sequence (0 otherwise).
    pub sequence: u64,
}

impl Claim {
    /// The claim, borrowed for sealing.
    pub fn borrowed(&self) -> ClaimRef<'_> {
        ClaimRef {
            kind: self.kind,
            contact: self.contact.as_str(),
            consent: self.consent.as_str(),
            purpose: self.purpose.as_str(),
            channel: &self.channel,
            brand: &self.brand,
            issued_at: self.issued_at,
            to: self.to,
            sequence: self.sequence,
        }
    }
}

/// ChaCha20-Poly1305 under the XChaCha20 subkey of `key` for nonces that
/// start with `prefix`.
pub(super) fn sealer(key: &chacha20poly1305::Key, prefix: &[u8; 16]) -> LessSafeKey {
    let subkey = chacha20::hchacha::<chacha20::cipher::consts::U10>(key, prefix.into());
    LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, &subkey).expect("a ChaCha20 key is 32 bytes"),
    )
}

thread_local! {
    /// The token being sealed, reused by every link this thread mints.
    static TOKEN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Links {
    /// The absolute URL of the page of `claim`'s kind, its token sealed
    /// with the newest key.
    pub fn url_for(&self, claim: &ClaimRef<'_>) -> String {
        let path = claim.kind.path();
        let mut url = String::with_capacity(
            self.base.len() + 2 + path.len() + (self.token_len(claim) * 4).div_ceil(3),
        );
        url.push_str(&self.base);
        url.push('/');
        url.push_str(path);
        url.push('/');
        self.seal_into(claim, &mut url);
        url
    }

    /// The bytes of `claim`'s token before base64url: what `seal_into`
    /// writes, so that the URL is allocated once, at its size.
    fn token_len(&self, claim: &ClaimRef<'_>) -> usize {
        let key = self.keys.last().map_or(0, |k| k.id.len());
        let ids = [claim.consent, claim.purpose, claim.channel, claim.brand];
        let header = 2 + key;
        let plain = 2
            + claim.contact.len()
            + ids.iter().map(|id| 1 + id.len()).sum::<usize>()
            + 8
            + if claim.kind == LinkKind::Receipt {
                8
            } else {
                0
            }
            + if claim.to.is_some() { 33 } else { 0 };
        header + NONCE_LEN + plain + TAG_LEN
    }

    /// Seals `claim` and appends its token (base64url) to `out`.
    pub(super) fn seal_into(&self, claim: &ClaimRef<'_>, out: &mut String) {
        let key = self
            .keys
            .last()
            .expect("Links::open refuses an empty key ring");
        TOKEN.with_borrow_mut(|buf| {
            buf.clear();
            buf.push(claim.kind as u8);
            push_short(buf, key.id.as_bytes());
            let header = buf.len();
            // A random prefix per process and a counter: every nonce
            // distinct under a key without a system call per link.
            let counter = self.nonces.fetch_add(1, Ordering::Relaxed).to_le_bytes();
            buf.extend_from_slice(&self.nonce_prefix);
            buf.extend_from_slice(&counter);
            let plain = buf.len();
            let contact = claim.contact.as_bytes();
            buf.extend_from_slice(&(contact.len() as u16).to_be_bytes());
            buf.extend_from_slice(contact);
            push_short(buf, claim.consent.as_bytes());
            push_short(buf, claim.purpose.as_bytes());
            push_short(buf, claim.channel.as_bytes());
            push_short(buf, claim.brand.as_bytes());
            buf.extend_from_slice(&claim.issued_at.to_be_bytes());
            if claim.kind == LinkKind::Receipt {
                buf.extend_from_slice(&claim.sequence.to_be_bytes());
            }
            // Only when set: a link without one is as it always was.
            if let Some((kind, hash)) = &claim.to {
                buf.push(match kind {
                    AddressKind::Email => 1,
                    AddressKind::Phone => 2,
                });
                buf.extend_from_slice(hash);
            }
            // XChaCha20's nonce for ChaCha20 under the subkey: four zero
            // bytes, then the last eight of the 24.
            // The counter is used once per process and prefix: a nonce
            // never repeats under this subkey.
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter);
            let (head, message) = buf.split_at_mut(plain);
            let tag = self
                .sealer
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&head[..header]),
                    message,
                )
                .expect("ChaCha20-Poly1305 seals any message below 256 GiB");
            buf.extend_from_slice(tag.as_ref());
            debug_assert_eq!(buf.len(), self.token_len(claim));
            URL_SAFE_NO_PAD.encode_string(buf.as_slice(), out);
        });
    }
}

#[cfg(test)]
mod tests {
    use chacha20poly1305::XNonce;
    use chacha20poly1305::aead::{Aead, Payload};

    use super::*;

    fn links() -> Links {
        let secret = URL_SAFE_NO_PAD.encode([7u8; 32]);
        Links::with_keys(
            "test",
            &[&format!("old={secret}")],
            &[format!("k2={}", URL_SAFE_NO_PAD.encode([9u8; 32]))],
            "https://links.example/",
        )
        .unwrap()
    }

    #[test]
    fn a_sealed_token_is_what_xchacha20_poly1305_gives_for_its_nonce() {
        let links = links();
        let claim = Claim {
            to: Some((AddressKind::Email, [5; 32])),
            ..super::super::tests::claim()
        };
        let url = links.url_for(&claim.borrowed());
        let token = url.strip_prefix("https://links.example/u/").unwrap();
        let raw = URL_SAFE_NO_PAD.decode(token).unwrap();
        // kind, key id "k2" (the newest seals), nonce, sealed claim.
        assert_eq!(&raw[..4], &[2, 2, b'k', b'2']);
        let (nonce, sealed) = raw[4..].split_at(NONCE_LEN);
        let key = links.keys.last().unwrap();
        let plain = key
            .aead
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &raw[..4],
                },
            )
            .unwrap();
        let again = key
            .aead
            .encrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: &plain,
                    aad: &raw[..4],
                },
            )
            .unwrap();
        assert_eq!(again, sealed, "the same bytes as XChaCha20-Poly1305");
        assert_eq!(links.verify(token), Some(claim.clone()));
        // Every link its own nonce; the token a plain `mint` gives opens too.
        let second = links.url_for(&claim.borrowed());
        assert_ne!(second, url);
        assert_eq!(links.verify(&links.mint(&claim)), Some(claim));
    }
}

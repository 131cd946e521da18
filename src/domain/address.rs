//! Addresses (DESIGN.md §9): where a message goes, as dispatchers send and
//! providers report. An address is normalised once, on the way in, so that
//! the same mailbox or phone written two ways is one address:
//!
//! - e-mail: trimmed, lower-cased, the domain in IDNA ASCII (`idna`);
//!   `+tags` and dots are kept (they are the mailbox's to interpret);
//! - phone: E.164 (`phonenumber`, Google's libphonenumber metadata); a
//!   number without `+` needs the configured region (`--phone-region`),
//!   else it is refused naming the field.
//!
//! Stores never hold an address's opt-outs under its plaintext: records of
//! an address are keyed by [`AddressHasher::hash`], an HMAC-SHA256 of the
//! kind and the normalised value under a key derived from the store's
//! erasure key, so erasing a contact leaves its addresses' opt-outs in force
//! and no plaintext behind.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::ids::{FieldError, quote};

type HmacSha256 = Hmac<Sha256>;

/// Longest e-mail address accepted, in bytes (RFC 5321's path limit less
/// the angle brackets).
pub const MAX_EMAIL_LEN: usize = 254;
/// Longest local part of an e-mail address, in bytes (RFC 5321).
pub const MAX_LOCAL_LEN: usize = 64;
/// Longest raw phone number accepted before parsing, in bytes.
pub const MAX_PHONE_INPUT_LEN: usize = 64;

/// What kind of address a channel sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AddressKind {
    /// A mailbox.
    Email,
    /// A phone number, E.164.
    Phone,
}

impl AddressKind {
    /// The kind's name as the catalog file writes it.
    pub fn name(self) -> &'static str {
        match self {
            AddressKind::Email => "EMAIL",
            AddressKind::Phone => "PHONE",
        }
    }
}

/// A normalised address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    kind: AddressKind,
    value: String,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

/// How phone numbers written without `+` are read: the region they are
/// dialled in (ISO 3166 alpha-2, e.g. `PL`), or none (then they are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PhoneRegion(Option<phonenumber::country::Id>);

impl PhoneRegion {
    /// No region: a number must carry its country code.
    pub const NONE: PhoneRegion = PhoneRegion(None);

    /// The region of an ISO 3166 alpha-2 code (`PL`, `de`).
    pub fn parse(code: &str) -> Result<PhoneRegion, String> {
        code.trim()
            .to_ascii_uppercase()
            .parse::<phonenumber::country::Id>()
            .map(|id| PhoneRegion(Some(id)))
            .map_err(|_| format!("{code:?} is not an ISO 3166 region code (e.g. PL, DE, US)"))
    }
}

impl Address {
    /// Normalises `raw` as an address of `kind`; errors name `field`.
    pub fn parse(
        field: &str,
        kind: AddressKind,
        raw: &str,
        region: PhoneRegion,
    ) -> Result<Address, FieldError> {
        let value = match kind {
            AddressKind::Email => email(field, raw)?,
            AddressKind::Phone => phone(field, raw, region)?,
        };
        Ok(Address { kind, value })
    }

    /// An address as the server recorded it (the evidence of a contact's
    /// address): already normalised, not read again.
    pub fn recorded(kind: AddressKind, value: String) -> Address {
        Address { kind, value }
    }

    /// Its kind.
    pub fn kind(&self) -> AddressKind {
        self.kind
    }

    /// The normalised value.
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

fn email(field: &str, raw: &str) -> Result<String, FieldError> {
    let trimmed = raw.trim();
    let bad = |problem: String| FieldError::new(field, problem);
    if trimmed.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    if trimmed.len() > 4 * MAX_EMAIL_LEN {
        return Err(bad(format!(
            "is {} bytes, at most {MAX_EMAIL_LEN} allowed",
            trimmed.len()
        )));
    }
    if trimmed
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'))
    {
        return Err(bad(format!(
            "{} is not one e-mail address (blanks, brackets or separators inside)",
            quote(trimmed)
        )));
    }
    let Some((local, domain)) = trimmed.rsplit_once('@') else {
        return Err(bad(format!("{} has no @", quote(trimmed))));
    };
    if local.is_empty() || domain.is_empty() {
        return Err(bad(format!(
            "{} needs a mailbox and a domain around its @",
            quote(trimmed)
        )));
    }
    if local.contains('@') && !(local.starts_with('"') && local.ends_with('"')) {
        return Err(bad(format!("{} has more than one @", quote(trimmed))));
    }
    let local = local.to_lowercase();
    if local.len() > MAX_LOCAL_LEN {
        return Err(bad(format!(
            "its mailbox is {} bytes, at most {MAX_LOCAL_LEN} allowed",
            local.len()
        )));
    }
    let written = domain.trim_end_matches('.');
    // Most domains are plain ASCII labels already: lower-casing is all IDNA
    // would do to them (the hot path of CanSend's `to`).
    let plain = written
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && written.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && !l.starts_with("xn--")
        });
    let domain = if plain {
        written.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(written)
            .map_err(|_| bad(format!("{} is not a valid domain name", quote(domain))))?
    };
    if domain.is_empty() || !domain.contains('.') && domain != "localhost" {
        return Err(bad(format!(
            "{} is not a valid domain name",
            quote(&domain)
        )));
    }
    let value = format!("{local}@{domain}");
    if value.len() > MAX_EMAIL_LEN {
        return Err(bad(format!(
            "is {} bytes, at most {MAX_EMAIL_LEN} allowed",
            value.len()
        )));
    }
    Ok(value)
}

fn phone(field: &str, raw: &str, region: PhoneRegion) -> Result<String, FieldError> {
    let trimmed = raw.trim();
    let bad = |problem: String| FieldError::new(field, problem);
    if trimmed.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    if trimmed.len() > MAX_PHONE_INPUT_LEN {
        return Err(bad(format!(
            "is {} bytes, at most {MAX_PHONE_INPUT_LEN} allowed",
            trimmed.len()
        )));
    }
    let international = trimmed.starts_with('+') || trimmed.starts_with("00");
    if !international && region.0.is_none() {
        return Err(bad(format!(
            "{} has no country code: write it as +<country><number>, or start the server \
             with --phone-region",
            quote(trimmed)
        )));
    }
    // `00` is the international prefix in most of the world: `+`.
    let plus;
    let trimmed = match trimmed.strip_prefix("00") {
        Some(rest) => {
            plus = format!("+{rest}");
            plus.as_str()
        }
        None => trimmed,
    };
    let number = phonenumber::parse(region.0, trimmed)
        .map_err(|e| bad(format!("{} is not a phone number: {e}", quote(trimmed))))?;
    if !phonenumber::is_valid(&number) {
        return Err(bad(format!(
            "{} is not a valid phone number",
            quote(trimmed)
        )));
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

/// Names an address to the stores by a keyed hash of its kind and
/// normalised value, never by the value itself.
#[derive(Clone)]
pub struct AddressHasher {
    mac: HmacSha256,
}

impl AddressHasher {
    /// The hasher under a key derived from the store's erasure key (domain
    /// separated: an address hash never equals a contact tombstone's).
    pub fn new(erasure_key: &[u8; 32]) -> Self {
        let mut derive =
            HmacSha256::new_from_slice(erasure_key).expect("HMAC takes any key length");
        derive.update(b"consentd address key v1");
        let key: [u8; 32] = derive.finalize().into_bytes().into();
        Self {
            mac: HmacSha256::new_from_slice(&key).expect("HMAC takes any key length"),
        }
    }

    /// The keyed hash of `address`.
    pub fn hash(&self, address: &Address) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(address.kind.name().as_bytes());
        mac.update(&[0]);
        mac.update(address.value.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(raw: &str) -> Result<String, String> {
        Address::parse("to.value", AddressKind::Email, raw, PhoneRegion::NONE)
            .map(|a| a.to_string())
            .map_err(|e| e.to_string())
    }

    fn tel(raw: &str, region: &str) -> Result<String, String> {
        let region = if region.is_empty() {
            PhoneRegion::NONE
        } else {
            PhoneRegion::parse(region).unwrap()
        };
        Address::parse("to.value", AddressKind::Phone, raw, region)
            .map(|a| a.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn email_addresses_are_trimmed_lower_cased_and_idna() {
        assert_eq!(mail("  Anna@Example.COM ").unwrap(), "anna@example.com");
        // Tags and dots are the mailbox's own: kept.
        assert_eq!(
            mail("Anna.Nowak+news@Example.com").unwrap(),
            "anna.nowak+news@example.com"
        );
        assert_eq!(mail("jan@Żółw.PL").unwrap(), "jan@xn--w-uga1v8h.pl");
        assert_eq!(
            mail("jan@xn--w-uga1v8h.pl").unwrap(),
            mail("jan@żółw.pl").unwrap()
        );
        assert_eq!(mail("a@example.com.").unwrap(), "a@example.com");
        for bad in [
            "",
            "   ",
            "anna",
            "anna@",
            "@example.com",
            "an na@example.com",
            "a@b@example.com",
            "<anna@example.com>",
            "anna@example.com, bob@example.com",
            "anna@exa mple.com",
            "anna@nodot",
        ] {
            let e = mail(bad).unwrap_err();
            assert!(e.starts_with("to.value"), "{bad:?}: {e}");
        }
        let long = format!("{}@example.com", "a".repeat(65));
        assert!(mail(&long).unwrap_err().contains("mailbox"));
    }

    #[test]
    fn phone_numbers_are_e164_with_the_region_for_national_ones() {
        assert_eq!(tel("+48 601 234 567", "").unwrap(), "+48601234567");
        assert_eq!(tel("0048601234567", "").unwrap(), "+48601234567");
        assert_eq!(tel("601-234-567", "PL").unwrap(), "+48601234567");
        assert_eq!(tel("(202) 555-0143", "us").unwrap(), "+12025550143");
        // Without a region a national number is refused, naming the field
        // and the way out.
        let e = tel("601 234 567", "").unwrap_err();
        assert!(
            e.starts_with("to.value") && e.contains("--phone-region"),
            "{e}"
        );
        for bad in ["", "+48 12", "call me", "+999 123 456 789"] {
            assert!(tel(bad, "PL").is_err(), "{bad:?}");
        }
        assert!(PhoneRegion::parse("Atlantis").is_err());
    }

    #[test]
    fn the_hash_names_kind_and_normalised_value_under_the_key() {
        let h = AddressHasher::new(&[7; 32]);
        let a = |raw| Address::parse("a", AddressKind::Email, raw, PhoneRegion::NONE).unwrap();
        assert_eq!(
            h.hash(&a("Anna@Example.com")),
            h.hash(&a("anna@example.com "))
        );
        assert_ne!(
            h.hash(&a("anna@example.com")),
            h.hash(&a("bob@example.com"))
        );
        assert_ne!(
            h.hash(&a("anna@example.com")),
            AddressHasher::new(&[8; 32]).hash(&a("anna@example.com"))
        );
        // Not the contact tombstone of the same text under the same key.
        let contact = super::super::ContactHasher::new(&[7; 32]).hash("anna@example.com");
        assert_ne!(h.hash(&a("anna@example.com")), contact);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A normalised address normalises to itself, and one written with
        /// other case and blanks around is the same address.
        #[test]
        fn normalising_is_idempotent(
            local in "[A-Za-z0-9._+-]{1,20}",
            domain in "[A-Za-z0-9]{1,15}\\.[A-Za-z]{2,6}",
            pad in " {0,3}",
        ) {
            let raw = format!("{pad}{local}@{domain}{pad}");
            if let Ok(a) = Address::parse("a", AddressKind::Email, &raw, PhoneRegion::NONE) {
                let again =
                    Address::parse("a", AddressKind::Email, a.as_str(), PhoneRegion::NONE).unwrap();
                prop_assert_eq!(&again, &a);
                let upper = raw.to_uppercase();
                let shouted =
                    Address::parse("a", AddressKind::Email, &upper, PhoneRegion::NONE).unwrap();
                prop_assert_eq!(shouted, a);
            }
        }

        /// The plain-ASCII fast path reads a domain exactly as IDNA does.
        #[test]
        fn the_fast_path_agrees_with_idna(domain in "[A-Za-z0-9-]{1,20}(\\.[A-Za-z0-9-]{1,12}){1,3}") {
            let ours = Address::parse("a", AddressKind::Email, &format!("x@{domain}"), PhoneRegion::NONE);
            match idna::domain_to_ascii(&domain) {
                Ok(d) if d.contains('.') => prop_assert_eq!(ours.unwrap().to_string(), format!("x@{d}")),
                _ => prop_assert!(ours.is_err()),
            }
        }

        /// Any text, as either kind, is an address or an error naming the
        /// field: never a panic.
        #[test]
        fn any_text_is_an_address_or_a_named_error(raw in "\\PC{0,80}|[0-9 +()-]{0,30}") {
            let pl = PhoneRegion::parse("PL").unwrap();
            for kind in [AddressKind::Email, AddressKind::Phone] {
                if let Err(e) = Address::parse("to.value", kind, &raw, pl) {
                    prop_assert_eq!(e.field.as_str(), "to.value");
                }
            }
        }
    }
}

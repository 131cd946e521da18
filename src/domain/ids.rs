//! Validated identifiers. Every id is checked once, at the edge; inside the
//! crate a `ContactId` or `ConsentId` is known to be well formed.

use std::fmt;

use compact_str::CompactString;

/// A request field that failed validation; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The field, as the request names it (`consents[2].parent`).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Most bytes of an offending value an error message quotes (DESIGN.md
/// rule 7): a 100 KiB id must not come back in every error.
pub const MAX_QUOTE_LEN: usize = 128;

/// `value` quoted for an error message, cut to [`MAX_QUOTE_LEN`] bytes (at a
/// character boundary, marked with `…`).
pub fn quote(value: &str) -> String {
    if value.len() <= MAX_QUOTE_LEN {
        return format!("{value:?}");
    }
    let mut end = MAX_QUOTE_LEN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &value[..end], value.len())
}

/// Longest contact id, in bytes (DESIGN.md §1).
pub const MAX_CONTACT_LEN: usize = 256;
/// Longest catalog id (channel, brand, consent), in bytes.
pub const MAX_ID_LEN: usize = 64;

/// An opaque contact id from the customer's CRM: 1..=256 bytes of UTF-8 with
/// no control characters. Stored inline up to 24 bytes, which keeps the
/// index at a few dozen bytes per contact.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContactId(CompactString);

impl ContactId {
    /// Validates `raw`; an error names `field`.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        check_contact(field, raw)?;
        Ok(Self(CompactString::from(raw)))
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key an address's own records are kept under (DESIGN.md §9): its
    /// keyed hash, behind a control character no contact id may hold, so
    /// an address never meets a contact and no plaintext is stored.
    pub fn of_address(hash: &[u8; 32]) -> Self {
        let mut buf = [0u8; ADDRESS_KEY_LEN];
        Self(CompactString::from(address_key(hash, &mut buf)))
    }

    /// A subject read back from a store: a contact id, or an address's key
    /// (the mark and 64 hex digits); anything else is an error naming
    /// `field`.
    pub fn stored(field: &str, raw: &str) -> Result<Self, FieldError> {
        match raw.strip_prefix(ADDRESS_MARK) {
            Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(Self(CompactString::from(raw)))
            }
            Some(_) => Err(FieldError::new(field, "is not an address key")),
            None => Self::parse(field, raw),
        }
    }

    /// Whether this is an address's key rather than a contact.
    pub fn is_address(&self) -> bool {
        is_address_key(&self.0)
    }

    /// The keyed hash behind an address's key (`None` for a contact).
    pub fn address_hash(&self) -> Option<[u8; 32]> {
        let hex = self.0.strip_prefix(ADDRESS_MARK)?.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (digit(hex[2 * i])? << 4) | digit(hex[2 * i + 1])?;
        }
        Some(out)
    }
}

/// How long an address's key is: the mark and 64 hex digits.
pub const ADDRESS_KEY_LEN: usize = 65;

/// Writes an address's key ([`ContactId::of_address`]) into `buf`, without
/// allocating: what CanSend looks up for each address of a contact.
pub fn address_key<'a>(hash: &[u8; 32], buf: &'a mut [u8; ADDRESS_KEY_LEN]) -> &'a str {
    buf[0] = ADDRESS_MARK as u8;
    hex_into(hash, &mut buf[1..]);
    std::str::from_utf8(buf).expect("a mark and hex digits are ASCII")
}

/// Lower-case hex of `bytes` into `out` (twice as long).
pub(crate) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 15)];
    }
}

/// What starts an address's key (see [`ContactId::of_address`]).
pub const ADDRESS_MARK: char = '\u{1}';

/// Whether a stored contact key is an address's.
pub fn is_address_key(key: &str) -> bool {
    key.starts_with(ADDRESS_MARK)
}

impl fmt::Display for ContactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Validates a contact id without allocating (the CanSend hot path).
pub fn check_contact(field: &str, raw: &str) -> Result<(), FieldError> {
    check_opaque(field, raw, MAX_CONTACT_LEN)
}

/// An opaque free-form key (contact id, idempotency key): 1..=max bytes, no
/// control characters.
pub fn check_opaque(field: &str, raw: &str, max: usize) -> Result<(), FieldError> {
    if raw.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if raw.len() > max {
        return Err(FieldError::new(
            field,
            format!("is {} bytes, at most {max} allowed", raw.len()),
        ));
    }
    if has_control(raw) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Whether `raw` holds a control character (`char::is_control`: C0, DEL,
/// C1), read byte by byte where it is ASCII: every contact id a CanSend
/// carries is checked, and the `char` walk was 2.5% of a batch's server
/// time. Only a string with non-ASCII bytes can hold a C1 control.
fn has_control(raw: &str) -> bool {
    raw.bytes().any(|b| b < 0x20 || b == 0x7f)
        || (!raw.is_ascii() && raw.chars().any(char::is_control))
}

/// Checks the syntax of every catalog id: `[a-z0-9][a-z0-9_.-]{0,63}`.
pub fn check_id(field: &str, raw: &str) -> Result<(), FieldError> {
    let bytes = raw.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(FieldError::new(field, "must not be empty"));
    };
    let ok_first = first.is_ascii_lowercase() || first.is_ascii_digit();
    let ok_rest = bytes[1..]
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if !ok_first || !ok_rest || bytes.len() > MAX_ID_LEN {
        return Err(FieldError::new(
            field,
            format!(
                "{} is not a valid id ([a-z0-9][a-z0-9_.-]{{0,63}})",
                quote(raw)
            ),
        ));
    }
    Ok(())
}

/// The id of a consent definition (a purpose is the id of a root consent).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsentId(String);

impl ConsentId {
    /// Validates `raw`; an error names `field`.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        check_id(field, raw)?;
        Ok(Self(raw.to_owned()))
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A mark's id ([`crate::domain::mark`]): made by the server, never
    /// read from a caller.
    pub(crate) fn of_mark(raw: String) -> Self {
        debug_assert!(raw.starts_with(ADDRESS_MARK));
        Self(raw)
    }

    /// An id read back from a store: a consent id, or a mark's
    /// ([`crate::domain::mark::Mark`]); anything else is an error naming
    /// `field`.
    pub fn stored(field: &str, raw: &str) -> Result<Self, FieldError> {
        if raw.starts_with(ADDRESS_MARK) {
            return match crate::domain::mark::Mark::of(raw) {
                Some(_) => Ok(Self(raw.to_owned())),
                None => Err(FieldError::new(field, "is not a mark this build knows")),
            };
        }
        Self::parse(field, raw)
    }

    /// Whether this is a mark's id rather than a consent's.
    pub fn is_mark(&self) -> bool {
        self.0.starts_with(ADDRESS_MARK)
    }
}

impl fmt::Display for ConsentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_found_as_char_is_control_finds_them() {
        for c in (0..0x3000u32)
            .chain([0xfeff, 0x1_0000, 0x10_ffff])
            .filter_map(char::from_u32)
        {
            for s in [format!("{c}"), format!("crm-{c}-1"), format!("é{c}")] {
                assert_eq!(has_control(&s), s.chars().any(char::is_control), "{:?}", s);
            }
        }
    }

    #[test]
    fn quotes_are_cut_to_128_bytes() {
        assert_eq!(quote("acme"), "\"acme\"");
        let long = "ż".repeat(100_000);
        let q = quote(&long);
        assert!(q.len() < MAX_QUOTE_LEN + 40, "{}", q.len());
        assert!(q.ends_with("… (200000 bytes)"), "{q}");
        let err = check_id("brand", &"x".repeat(100 * 1024)).unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");
    }

    #[test]
    fn catalog_ids() {
        for ok in ["a", "email", "brand-x", "a.b_c-d", "0", &"a".repeat(64)] {
            assert!(check_id("f", ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "-a", ".a", "a b", "ä", "a/b", &"a".repeat(65)] {
            let err = check_id("channel", bad).unwrap_err();
            assert_eq!(err.field, "channel", "{bad}");
        }
    }

    #[test]
    fn contact_ids() {
        assert!(ContactId::parse("contact_id", "jan.kowalski@example.pl").is_ok());
        assert!(ContactId::parse("contact_id", "żółć 42").is_ok());
        assert!(ContactId::parse("contact_id", &"x".repeat(256)).is_ok());
        for bad in ["", "a\nb", "\u{7f}", &"x".repeat(257)] {
            let err = ContactId::parse("contact_id", bad).unwrap_err();
            assert_eq!(err.field, "contact_id");
        }
    }
}

//! The EligibilityService messages read and written in place: a check's
//! strings are borrowed from the request's bytes (no `String` per field,
//! none per batch item), an answer is written straight into the reply's
//! buffer (its consent id is a catalog `&'static str`). The bytes are the
//! ones prost reads and writes for the same messages (`consent.proto`);
//! the tests hold the two to each other, field by field and byte by byte.

use bytes::{BufMut, BytesMut};
use prost::encoding::{
    DecodeContext, WireType, decode_key, decode_varint, encoded_len_varint, key_len, skip_field,
};

use crate::authority::{Check, Checked, KindOf, RawAddress};
use crate::domain::AddressKind;
use crate::pb;

/// A message that is not what the method takes; the text says where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) String);

type Read<T> = Result<T, Malformed>;

fn malformed(what: impl std::fmt::Display) -> Malformed {
    Malformed(what.to_string())
}

/// A `google.protobuf.Timestamp` as read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) seconds: i64,
    pub(crate) nanos: i32,
}

/// A CanSendRequest, borrowed from the request's bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CheckIn<'a> {
    pub(crate) contact_id: &'a str,
    pub(crate) channel: &'a str,
    pub(crate) brand: &'a str,
    pub(crate) purpose: &'a str,
    pub(crate) include_unsubscribe: bool,
    pub(crate) min_sequence: u64,
    /// `to`: the address kind (an enum number) and value.
    pub(crate) to: Option<(i32, &'a str)>,
    pub(crate) as_of: Option<Stamp>,
}

impl<'a> CheckIn<'a> {
    /// The check as the authority takes it.
    pub(crate) fn check(&self) -> Check<'a> {
        Check {
            contact: self.contact_id,
            channel: self.channel,
            brand: self.brand,
            purpose: self.purpose,
            include_unsubscribe: self.include_unsubscribe,
            to: self.to.map(|(kind, value)| RawAddress {
                kind: kind_of(kind),
                value,
            }),
        }
    }
}

/// An address kind's number as the authority reads it.
pub(crate) fn kind_of(kind: i32) -> KindOf {
    match pb::AddressKind::try_from(kind) {
        Ok(pb::AddressKind::Email) => KindOf::Kind(AddressKind::Email),
        Ok(pb::AddressKind::Phone) => KindOf::Kind(AddressKind::Phone),
        Ok(pb::AddressKind::Unspecified) => KindOf::Unspecified,
        Err(_) => KindOf::Unknown(kind),
    }
}

/// One field's key, or `None` at the end of the message. A key of one
/// byte (every field of these messages: tags 1–15) is read here; a longer
/// one by prost.
#[inline]
fn next_key(buf: &mut &[u8]) -> Read<Option<(u32, WireType)>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if (8..0x80).contains(&first)
        && let Ok(wire) = WireType::try_from(u64::from(first & 7))
    {
        *buf = &buf[1..];
        return Ok(Some((u32::from(first >> 3), wire)));
    }
    decode_key(buf).map(Some).map_err(malformed)
}

#[inline]
fn expect(tag: u32, got: WireType, want: WireType) -> Read<()> {
    if got == want {
        Ok(())
    } else {
        Err(malformed(format_args!(
            "field {tag}: wire type {got:?}, expected {want:?}"
        )))
    }
}

/// A varint: one byte (a string's length, a flag, a small number) read
/// here, a longer one by prost.
#[inline]
fn varint(buf: &mut &[u8]) -> Read<u64> {
    if let Some(&first) = buf.first()
        && first < 0x80
    {
        *buf = &buf[1..];
        return Ok(u64::from(first));
    }
    decode_varint(buf).map_err(malformed)
}

/// A length-delimited field's bytes, borrowed.
#[inline]
fn delimited<'a>(buf: &mut &'a [u8]) -> Read<&'a [u8]> {
    let len = varint(buf)?;
    if len > buf.len() as u64 {
        return Err(malformed("a field is longer than the message"));
    }
    let (field, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(field)
}

/// A string field, borrowed. `text` is the message it is read from, as
/// text when the whole of it is UTF-8 (a check of ASCII ids with small
/// numbers is): its strings are then cut out of it, where checking each
/// on its own called `from_utf8` four times a check (10% of a batch's
/// server time with the reading around it). A cut that is not on a
/// character boundary falls back to the field's own check, which then
/// fails as it would have anyway: a field is UTF-8 on its own exactly
/// when it starts and ends on boundaries of UTF-8 text around it.
#[inline]
fn string<'a>(
    tag: u32,
    wire: WireType,
    buf: &mut &'a [u8],
    text: Option<&'a str>,
) -> Read<&'a str> {
    expect(tag, wire, WireType::LengthDelimited)?;
    let field = delimited(buf)?;
    if let Some(text) = text
        && let Some(start) = (field.as_ptr() as usize).checked_sub(text.as_ptr() as usize)
        && let Some(cut) = text.get(start..start + field.len())
    {
        // The same bytes: `field` lies inside `text`'s.
        debug_assert_eq!(cut.as_bytes(), field);
        return Ok(cut);
    }
    std::str::from_utf8(field)
        .map_err(|_| malformed(format_args!("field {tag}: a string that is not UTF-8")))
}

fn skip(tag: u32, wire: WireType, buf: &mut &[u8]) -> Read<()> {
    skip_field(wire, tag, buf, DecodeContext::default()).map_err(malformed)
}

/// Reads `google.protobuf.Timestamp` fields into `into` (a repeated
/// message field merges, as in protobuf).
fn stamp(mut buf: &[u8], into: &mut Stamp) -> Read<()> {
    while let Some((tag, wire)) = next_key(&mut buf)? {
        match tag {
            1 => {
                expect(tag, wire, WireType::Varint)?;
                into.seconds = varint(&mut buf)? as i64;
            }
            2 => {
                expect(tag, wire, WireType::Varint)?;
                into.nanos = varint(&mut buf)? as i32;
            }
            _ => skip(tag, wire, &mut buf)?,
        }
    }
    Ok(())
}

/// Reads a `CanSendRequest`.
pub(crate) fn check_in(buf: &[u8]) -> Read<CheckIn<'_>> {
    check_in_text(buf, std::str::from_utf8(buf).ok())
}

/// Reads a `CanSendRequest` out of `buf`, which is `text` or a part of it
/// when `text` is some (see [`string`]).
#[inline]
fn check_in_text<'a>(mut buf: &'a [u8], text: Option<&'a str>) -> Read<CheckIn<'a>> {
    let mut c = CheckIn::default();
    while let Some((tag, wire)) = next_key(&mut buf)? {
        match tag {
            1 => c.contact_id = string(tag, wire, &mut buf, text)?,
            2 => c.channel = string(tag, wire, &mut buf, text)?,
            3 => c.brand = string(tag, wire, &mut buf, text)?,
            4 => c.purpose = string(tag, wire, &mut buf, text)?,
            5 => {
                expect(tag, wire, WireType::Varint)?;
                c.include_unsubscribe = varint(&mut buf)? != 0;
            }
            6 => {
                expect(tag, wire, WireType::Varint)?;
                c.min_sequence = varint(&mut buf)?;
            }
            7 => {
                expect(tag, wire, WireType::LengthDelimited)?;
                let mut inner = delimited(&mut buf)?;
                let (kind, value) = c.to.get_or_insert((0, ""));
                while let Some((tag, wire)) = next_key(&mut inner)? {
                    match tag {
                        1 => {
                            expect(tag, wire, WireType::Varint)?;
                            *kind = varint(&mut inner)? as i32;
                        }
                        2 => *value = string(tag, wire, &mut inner, text)?,
                        _ => skip(tag, wire, &mut inner)?,
                    }
                }
            }
            8 => {
                expect(tag, wire, WireType::LengthDelimited)?;
                let inner = delimited(&mut buf)?;
                stamp(inner, c.as_of.get_or_insert_with(Stamp::default))?;
            }
            _ => skip(tag, wire, &mut buf)?,
        }
    }
    Ok(c)
}

/// A `CanSendBatchRequest` as read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BatchIn<'a> {
    /// Its first checks, in order: at most the `keep` asked for.
    pub(crate) checks: Vec<CheckIn<'a>>,
    /// How many checks it carries in all.
    pub(crate) count: usize,
    pub(crate) min_sequence: u64,
}

/// Reads a `CanSendBatchRequest`, keeping at most `keep` checks: a batch
/// over the limit is refused by its count, and a body of millions of
/// two-byte checks never becomes millions of them in memory.
pub(crate) fn batch_in(mut buf: &[u8], keep: usize) -> Read<BatchIn<'_>> {
    // The whole body checked as UTF-8 once; where it is not (a long id's
    // length, a token), each check is checked on its own.
    let whole = std::str::from_utf8(buf).ok();
    // A check is at least a few bytes: a guess that saves the regrowing.
    let mut checks = Vec::with_capacity((buf.len() / 24).min(keep));
    let mut count = 0;
    let mut min_sequence = 0;
    while let Some((tag, wire)) = next_key(&mut buf)? {
        match tag {
            1 => {
                expect(tag, wire, WireType::LengthDelimited)?;
                let check = delimited(&mut buf)?;
                count += 1;
                if count <= keep {
                    let text = whole.or_else(|| std::str::from_utf8(check).ok());
                    checks.push(check_in_text(check, text)?);
                }
            }
            2 => {
                expect(tag, wire, WireType::Varint)?;
                min_sequence = varint(&mut buf)?;
            }
            _ => skip(tag, wire, &mut buf)?,
        }
    }
    Ok(BatchIn {
        checks,
        count,
        min_sequence,
    })
}

/// A `CanSendResponse` to write, borrowed from the answer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AnswerOut<'a> {
    pub(crate) allowed: bool,
    pub(crate) reason: i32,
    pub(crate) decided_by: &'a str,
    pub(crate) decided_at: Option<Stamp>,
    pub(crate) unsubscribe_url: &'a str,
    pub(crate) error: &'a str,
    pub(crate) list_id: &'a str,
    pub(crate) as_of: Option<Stamp>,
}

impl<'a> AnswerOut<'a> {
    /// The answer to a check, as `convert::checked_to` would put it.
    pub(crate) fn of(c: &'a Checked) -> Self {
        let a = &c.answer;
        Self {
            allowed: a.verdict.allowed(),
            reason: super::convert::reason(a.verdict) as i32,
            decided_by: a.decided_by,
            decided_at: a.verdict.decided().map(|(_, at)| {
                let t = super::convert::timestamp(at);
                Stamp {
                    seconds: t.seconds,
                    nanos: t.nanos,
                }
            }),
            unsubscribe_url: &c.unsubscribe_url,
            error: "",
            list_id: &c.list_id,
            as_of: None,
        }
    }

    /// A batch item that is itself malformed (REASON_INVALID).
    pub(crate) fn invalid(error: &'a str) -> Self {
        Self {
            reason: pb::Reason::Invalid as i32,
            error,
            ..Self::default()
        }
    }
}

fn stamp_len(t: Stamp) -> usize {
    let mut n = 0;
    if t.seconds != 0 {
        n += 1 + encoded_len_varint(t.seconds as u64);
    }
    if t.nanos != 0 {
        n += 1 + encoded_len_varint(t.nanos as i64 as u64);
    }
    n
}

fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn stamp_field_len(tag: u32, t: Option<Stamp>) -> usize {
    t.map_or(0, |t| {
        let n = stamp_len(t);
        key_len(tag) + encoded_len_varint(n as u64) + n
    })
}

/// The bytes `answer_out` writes.
pub(crate) fn answer_len(a: &AnswerOut<'_>) -> usize {
    usize::from(a.allowed) * 2
        + if a.reason != 0 {
            1 + encoded_len_varint(a.reason as i64 as u64)
        } else {
            0
        }
        + string_len(3, a.decided_by)
        + stamp_field_len(4, a.decided_at)
        + string_len(5, a.unsubscribe_url)
        + string_len(6, a.error)
        + string_len(7, a.list_id)
        + stamp_field_len(8, a.as_of)
}

/// A varint, written with one copy (prost's `encode_varint` writes byte
/// by byte through `BufMut`, each with its capacity check, and was 7% of
/// a batch's server time). A byte's worth (a length, a flag, a reason)
/// is written in place, a longer one by a call.
#[inline(always)]
fn put_varint(v: u64, buf: &mut BytesMut) {
    if v < 0x80 {
        buf.put_u8(v as u8);
    } else {
        put_long_varint(v, buf);
    }
}

/// A varint of two bytes or more (see [`put_varint`]). One of at most
/// eight bytes (a number below 2^56: every length, a timestamp's seconds
/// and nanos) is built in a register and, where the buffer has room,
/// written with one eight-byte store, the buffer then cut back to the
/// varint's end. Built byte by byte in an array and copied out, each
/// varint stalled the copy's load on the byte stores before it (`perf
/// annotate`: 8% of a cached batch's server time, most of it there).
#[inline(never)]
fn put_long_varint(v: u64, buf: &mut BytesMut) {
    if v < 1 << 56 && buf.capacity() - buf.len() >= 8 {
        let (mut rest, mut bytes, mut n) = (v, 0u64, 0);
        while rest >= 0x80 {
            bytes |= ((rest & 0x7f) | 0x80) << (8 * n);
            rest >>= 7;
            n += 1;
        }
        bytes |= rest << (8 * n);
        let end = buf.len() + n + 1;
        buf.put_u64_le(bytes);
        buf.truncate(end);
        return;
    }
    let mut bytes = [0u8; 10];
    let mut n = 0;
    let mut rest = v;
    while rest >= 0x80 {
        bytes[n] = (rest as u8) | 0x80;
        rest >>= 7;
        n += 1;
    }
    bytes[n] = rest as u8;
    buf.extend_from_slice(&bytes[..=n]);
}

/// A field's key: every field here has a number below 16, one byte.
#[inline]
fn put_key(tag: u32, wire: WireType, buf: &mut BytesMut) {
    debug_assert!(tag < 16);
    buf.put_u8(((tag << 3) | wire as u32) as u8);
}

fn put_string(tag: u32, s: &str, buf: &mut BytesMut) {
    if !s.is_empty() {
        put_key(tag, WireType::LengthDelimited, buf);
        put_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

fn put_stamp(tag: u32, t: Option<Stamp>, buf: &mut BytesMut) {
    if let Some(t) = t {
        put_key(tag, WireType::LengthDelimited, buf);
        put_varint(stamp_len(t) as u64, buf);
        if t.seconds != 0 {
            put_key(1, WireType::Varint, buf);
            put_varint(t.seconds as u64, buf);
        }
        if t.nanos != 0 {
            put_key(2, WireType::Varint, buf);
            put_varint(t.nanos as i64 as u64, buf);
        }
    }
}

/// Writes a `CanSendResponse`, fields in number order as prost does.
pub(crate) fn answer_out(a: &AnswerOut<'_>, buf: &mut BytesMut) {
    if a.allowed {
        put_key(1, WireType::Varint, buf);
        buf.put_u8(1);
    }
    if a.reason != 0 {
        put_key(2, WireType::Varint, buf);
        put_varint(a.reason as i64 as u64, buf);
    }
    put_string(3, a.decided_by, buf);
    put_stamp(4, a.decided_at, buf);
    put_string(5, a.unsubscribe_url, buf);
    put_string(6, a.error, buf);
    put_string(7, a.list_id, buf);
    put_stamp(8, a.as_of, buf);
}

/// Writes one answer of `len` bytes ([`answer_len`]) as an item of a
/// `CanSendBatchResponse` (field 1).
pub(crate) fn batch_item_out(a: &AnswerOut<'_>, len: usize, buf: &mut BytesMut) {
    put_key(1, WireType::LengthDelimited, buf);
    put_varint(len as u64, buf);
    answer_out(a, buf);
}

/// The bytes `batch_item_out` writes for an answer of `len` bytes.
#[cfg(test)]
pub(crate) fn batch_item_len(len: usize) -> usize {
    key_len(1) + encoded_len_varint(len as u64) + len
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;

//! The in-place reading and writing agree with prost on every message.

use super::*;
use proptest::prelude::*;
use prost::Message;
use prost_types::Timestamp;

fn stamp_of(t: &Timestamp) -> Stamp {
    Stamp {
        seconds: t.seconds,
        nanos: t.nanos,
    }
}

/// What prost reads, in the borrowed shape.
fn as_read(r: &pb::CanSendRequest) -> CheckIn<'_> {
    CheckIn {
        contact_id: &r.contact_id,
        channel: &r.channel,
        brand: &r.brand,
        purpose: &r.purpose,
        include_unsubscribe: r.include_unsubscribe,
        min_sequence: r.min_sequence,
        to: r.to.as_ref().map(|a| (a.kind, a.value.as_str())),
        as_of: r.as_of.as_ref().map(stamp_of),
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9@.+-]{1,12}", "\\PC{0,6}"]
}

fn arbitrary_check() -> impl Strategy<Value = pb::CanSendRequest> {
    (
        (text(), text(), text(), text()),
        any::<bool>(),
        any::<u64>(),
        proptest::option::of((any::<i32>(), text())),
        proptest::option::of((any::<i64>(), any::<i32>())),
    )
        .prop_map(
            |((contact_id, channel, brand, purpose), include_unsubscribe, min_sequence, to, at)| {
                pb::CanSendRequest {
                    contact_id,
                    channel,
                    brand,
                    purpose,
                    include_unsubscribe,
                    min_sequence,
                    to: to.map(|(kind, value)| pb::Address { kind, value }),
                    as_of: at.map(|(seconds, nanos)| Timestamp { seconds, nanos }),
                }
            },
        )
}

fn arbitrary_answer() -> impl Strategy<Value = pb::CanSendResponse> {
    (
        any::<bool>(),
        prop_oneof![Just(0), 0..12i32, any::<i32>()],
        (text(), text(), text(), text()),
        proptest::option::of((any::<i64>(), any::<i32>())),
        proptest::option::of((any::<i64>(), any::<i32>())),
    )
        .prop_map(
            |(allowed, reason, (decided_by, unsubscribe_url, error, list_id), at, as_of)| {
                pb::CanSendResponse {
                    allowed,
                    reason,
                    decided_by,
                    decided_at: at.map(|(seconds, nanos)| Timestamp { seconds, nanos }),
                    unsubscribe_url,
                    error,
                    list_id,
                    as_of: as_of.map(|(seconds, nanos)| Timestamp { seconds, nanos }),
                }
            },
        )
}

fn out_of(r: &pb::CanSendResponse) -> AnswerOut<'_> {
    AnswerOut {
        allowed: r.allowed,
        reason: r.reason,
        decided_by: &r.decided_by,
        decided_at: r.decided_at.as_ref().map(stamp_of),
        unsubscribe_url: &r.unsubscribe_url,
        error: &r.error,
        list_id: &r.list_id,
        as_of: r.as_of.as_ref().map(stamp_of),
    }
}

proptest! {
    /// Every CanSendRequest prost writes reads back field for field.
    #[test]
    fn a_check_reads_as_prost_reads_it(r in arbitrary_check()) {
        let bytes = r.encode_to_vec();
        prop_assert_eq!(check_in(&bytes).unwrap(), as_read(&r));
    }

    /// Any bytes at all: read where prost reads them, to the same fields,
    /// refused where prost refuses them.
    #[test]
    fn any_bytes_read_or_are_refused_as_prost_does(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            // Valid messages with bytes flipped or cut short.
            (arbitrary_check(), any::<prop::sample::Index>(), any::<u8>(), any::<bool>())
                .prop_map(|(r, at, b, cut)| {
                    let mut v = r.encode_to_vec();
                    if !v.is_empty() {
                        let i = at.index(v.len());
                        if cut { v.truncate(i) } else { v[i] = b }
                    }
                    v
                }),
        ]
    ) {
        match (pb::CanSendRequest::decode(&bytes[..]), check_in(&bytes)) {
            (Ok(r), Ok(c)) => prop_assert_eq!(c, as_read(&r)),
            (Err(_), Err(_)) => {}
            (p, c) => prop_assert!(false, "prost {:?}, in place {:?}", p, c),
        }
    }

    /// A batch's bytes, whole or flipped or cut short: read where prost
    /// reads them, to the same checks, refused where prost refuses them
    /// (the body is checked as UTF-8 whole, then check by check).
    #[test]
    fn any_batch_bytes_read_or_are_refused_as_prost_does(
        checks in proptest::collection::vec(arbitrary_check(), 0..6),
        min_sequence in any::<u64>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = pb::CanSendBatchRequest { checks, min_sequence }.encode_to_vec();
        if !bytes.is_empty() {
            for (at, b) in flips {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            if let Some(at) = cut {
                bytes.truncate(at.index(bytes.len()));
            }
        }
        match (pb::CanSendBatchRequest::decode(&bytes[..]), batch_in(&bytes, usize::MAX)) {
            (Ok(r), Ok(b)) => {
                prop_assert_eq!(b.min_sequence, r.min_sequence);
                prop_assert_eq!(b.checks, r.checks.iter().map(as_read).collect::<Vec<_>>());
            }
            (Err(_), Err(_)) => {}
            (p, b) => prop_assert!(false, "prost {:?}, in place {:?}", p, b),
        }
    }

    /// A batch reads as prost reads it, checks in order.
    #[test]
    fn a_batch_reads_as_prost_reads_it(
        checks in proptest::collection::vec(arbitrary_check(), 0..8),
        min_sequence in any::<u64>(),
    ) {
        let r = pb::CanSendBatchRequest { checks, min_sequence };
        let bytes = r.encode_to_vec();
        let read = batch_in(&bytes, usize::MAX).unwrap();
        prop_assert_eq!(read.min_sequence, min_sequence);
        prop_assert_eq!(read.count, r.checks.len());
        prop_assert_eq!(read.checks, r.checks.iter().map(as_read).collect::<Vec<_>>());
    }

    /// An answer is written byte for byte as prost writes it, alone and
    /// as batch items; the lengths are exact (varints of every size: the
    /// numbers range over all of i32 and i64).
    #[test]
    fn an_answer_is_written_as_prost_writes_it(
        answers in proptest::collection::vec(arbitrary_answer(), 1..5),
    ) {
        let one = out_of(&answers[0]);
        // Without room (each varint written by its length) and with it
        // (ten bytes written, the rest cut off).
        for mut buf in [BytesMut::new(), BytesMut::with_capacity(1024)] {
            answer_out(&one, &mut buf);
            prop_assert_eq!(buf.len(), answer_len(&one));
            prop_assert_eq!(&buf[..], &answers[0].encode_to_vec()[..]);
        }

        let mut buf = BytesMut::new();
        let mut len = 0;
        for a in &answers {
            let n = answer_len(&out_of(a));
            batch_item_out(&out_of(a), n, &mut buf);
            len += batch_item_len(n);
        }
        prop_assert_eq!(buf.len(), len);
        let batch = pb::CanSendBatchResponse { results: answers };
        prop_assert_eq!(&buf[..], &batch.encode_to_vec()[..]);
    }
}

/// A string that ends inside a character of the text around it is not
/// UTF-8 on its own: refused, though the message as a whole is UTF-8 (an
/// unknown field's key of two bytes, `0xA9 0x01`, completes the `0xC3`
/// the contact id ends with into "é").
#[test]
fn a_string_cut_inside_a_character_is_not_utf8() {
    // contact_id = "a\xC3", then field 21 (fixed64): 0xA9 0x01 + 8 bytes.
    let mut check = vec![0x0a, 2, b'a', 0xC3, 0xA9, 0x01];
    check.extend_from_slice(b"12345678");
    assert!(std::str::from_utf8(&check).is_ok());
    assert!(pb::CanSendRequest::decode(&check[..]).is_err());
    let err = check_in(&check).unwrap_err();
    assert!(
        err.0.contains("field 1: a string that is not UTF-8"),
        "{err:?}"
    );
    let mut batch = vec![0x0a, check.len() as u8];
    batch.extend_from_slice(&check);
    assert!(std::str::from_utf8(&batch).is_ok());
    assert!(batch_in(&batch, usize::MAX).is_err());
    // The same id whole reads, and the unknown field is skipped.
    let mut whole = vec![0x0a, 3, b'a', 0xC3, 0xA9, 0xA9, 0x01];
    whole.extend_from_slice(b"12345678");
    assert_eq!(check_in(&whole).unwrap().contact_id, "a\u{e9}");
}

/// A repeated `to` or `as_of` merges, as protobuf's embedded messages do.
#[test]
fn repeated_messages_merge() {
    let mut bytes = pb::CanSendRequest {
        to: Some(pb::Address {
            kind: 1,
            value: String::new(),
        }),
        as_of: Some(Timestamp {
            seconds: 5,
            nanos: 0,
        }),
        ..Default::default()
    }
    .encode_to_vec();
    bytes.extend(
        pb::CanSendRequest {
            to: Some(pb::Address {
                kind: 0,
                value: "a@example.com".into(),
            }),
            as_of: Some(Timestamp {
                seconds: 0,
                nanos: 7,
            }),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let prost = pb::CanSendRequest::decode(&bytes[..]).unwrap();
    let read = check_in(&bytes).unwrap();
    assert_eq!(read, as_read(&prost));
    assert_eq!(read.to, Some((1, "a@example.com")));
    assert_eq!(
        read.as_of,
        Some(Stamp {
            seconds: 5,
            nanos: 7
        })
    );
}

/// A batch keeps at most the checks asked for, and counts them all: a
/// body of a million empty checks is read without holding them.
#[test]
fn a_batch_keeps_at_most_what_it_may_answer() {
    let bytes: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 1_000_000)
        .flatten()
        .collect();
    let read = batch_in(&bytes, 3).unwrap();
    assert_eq!(read.count, 1_000_000);
    assert_eq!(read.checks.len(), 3);
    assert!(read.checks.capacity() <= 3);
}

//! Helpers the frame kinds share: metadata errors and JSON payloads, name
//! checks, fixed payload lengths.

use bytes::BufMut;

use crate::wire::{crc, DecodeError, FrameHeader, FrameKind, Limits};

pub(super) fn bad_meta(kind: FrameKind, reason: impl std::fmt::Display) -> DecodeError {
    DecodeError::BadMetadata { kind, reason: reason.to_string() }
}

pub(super) fn json_frame<B: BufMut>(dst: &mut B, kind: FrameKind, item: u32, json: &[u8]) {
    // Metadata payloads are bounded by Limits::max_meta when decoded; a sender
    // that builds one over 4 GiB has violated its own contract.
    let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
    FrameHeader::new(kind, item, 0, len, crc::checksum(json)).encode(dst);
    dst.put_slice(json);
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing structs of strings, integers and finite floats to a Vec
    // cannot fail: there is no IO and every map key is a string.
    serde_json::to_vec(value).unwrap_or_default()
}

pub(super) fn check_name(kind: FrameKind, name: &str, limits: &Limits) -> Result<(), DecodeError> {
    // SPEC.md §5: names are non-empty and at most max_name_len bytes.
    if name.is_empty() {
        return Err(bad_meta(kind, "empty name"));
    }
    if name.len() as u64 > u64::from(limits.max_name_len) {
        return Err(DecodeError::LimitExceeded {
            what: "name length",
            value: name.len() as u64,
            max: limits.max_name_len.into(),
        });
    }
    Ok(())
}

pub(super) fn check_exact(head: FrameHeader, p: &[u8], expected: usize) -> Result<(), DecodeError> {
    // SPEC.md §4.4, §4.5: fixed payloads have exactly their length.
    if p.len() != expected {
        return Err(DecodeError::BadPayloadLength { kind: head.kind, len: p.len() as u64, expected: expected as u64 });
    }
    Ok(())
}

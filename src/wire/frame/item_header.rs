//! The item header (SPEC.md §4.2) and its JSON payload (§5.2).

use bytes::BufMut;

use super::common::{bad_meta, check_name, json_frame, to_json};
use crate::wire::meta::EncodingJson;
use crate::wire::{DecodeError, Dtype, Encoding, FrameHeader, FrameKind, Limits, HEADER_LEN};

/// Opens an item (SPEC.md §4.2).
///
/// ```
/// use tensorwire::wire::{Dtype, ItemHeader};
/// let h = ItemHeader::tensor(0, "embed.weight", Dtype::F32, vec![128256, 2048]);
/// assert_eq!(h.len, 128256 * 2048 * 4);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct ItemHeader {
    /// Item index: 0 for the first item, then one more for each.
    pub item: u32,
    /// Unique name within the object.
    pub name: String,
    /// Dtype to restore; `None` for opaque bytes.
    pub dtype: Option<Dtype>,
    /// Shape; present exactly when `dtype` is.
    pub shape: Option<Vec<u64>>,
    /// Bytes the item carries on the wire.
    pub len: u64,
    /// How the bytes encode the tensor.
    pub encoding: Encoding,
}

impl ItemHeader {
    /// A raw tensor item; `len` is computed from dtype and shape (saturating
    /// on overflow, which [`ItemHeader::decode`] would reject).
    pub fn tensor(item: u32, name: impl Into<String>, dtype: Dtype, shape: Vec<u64>) -> Self {
        let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).unwrap_or(u64::MAX);
        let len = Encoding::Raw.encoded_len(numel, dtype).unwrap_or(u64::MAX);
        ItemHeader { item, name: name.into(), dtype: Some(dtype), shape: Some(shape), len, encoding: Encoding::Raw }
    }

    /// An opaque item of `len` bytes.
    pub fn bytes(item: u32, name: impl Into<String>, len: u64) -> Self {
        ItemHeader { item, name: name.into(), dtype: None, shape: None, len, encoding: Encoding::Raw }
    }

    /// Number of elements, for tensor items (`None` on overflow or for opaque items).
    pub fn numel(&self) -> Option<u64> {
        self.shape.as_ref()?.iter().try_fold(1u64, |a, &d| a.checked_mul(d))
    }

    /// Decodes the JSON payload and checks that dtype, shape, encoding and
    /// length agree (SPEC.md §5.2).
    pub fn decode(head: FrameHeader, payload: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
        const KIND: FrameKind = FrameKind::ItemHeader;
        let j: ItemJson = serde_json::from_slice(payload).map_err(|e| bad_meta(KIND, e))?;
        check_name(KIND, &j.name, limits)?;
        let h = ItemHeader {
            item: head.item,
            name: j.name,
            dtype: j.dtype.as_deref().map(Dtype::parse).transpose()?,
            shape: j.shape,
            len: j.len,
            encoding: j.encoding.map(EncodingJson::into_encoding).transpose()?.unwrap_or(Encoding::Raw),
        };
        h.validate(limits)?;
        Ok(h)
    }

    /// Checks the rules of SPEC.md §5.2 and the limits of §6.
    ///
    /// # Errors
    ///
    /// [`DecodeError::InconsistentItem`] or [`DecodeError::LimitExceeded`].
    pub fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        let bad = |reason: String| DecodeError::InconsistentItem { item: self.item, reason };
        // SPEC.md §6: an item's length MUST NOT exceed max_item_len.
        if self.len > limits.max_item_len {
            return Err(DecodeError::LimitExceeded { what: "item length", value: self.len, max: limits.max_item_len });
        }
        let (dtype, shape) = match (self.dtype, &self.shape) {
            (None, None) => {
                // SPEC.md §5.2: opaque items carry raw bytes.
                if self.encoding != Encoding::Raw {
                    return Err(bad("an opaque item cannot be encoded".into()));
                }
                return Ok(());
            }
            (Some(d), Some(s)) => (d, s),
            _ => return Err(bad("dtype and shape must come together".into())),
        };
        // SPEC.md §6: rank MUST NOT exceed max_rank.
        if shape.len() as u64 > u64::from(limits.max_rank) {
            return Err(DecodeError::LimitExceeded {
                what: "rank",
                value: shape.len() as u64,
                max: limits.max_rank.into(),
            });
        }
        self.encoding.check(dtype).map_err(|e| bad(e.to_string()))?;
        let numel = self.numel().ok_or_else(|| bad("element count overflows".into()))?;
        // SPEC.md §5.2: len MUST equal the encoded length of the shape.
        match self.encoding.encoded_len(numel, dtype) {
            Some(expected) if expected == self.len => Ok(()),
            Some(expected) => Err(bad(format!(
                "{dtype} {shape:?} encoded as {} takes {expected} bytes, header says {}",
                self.encoding.scheme(),
                self.len
            ))),
            None => Err(bad(format!("{numel} elements of {dtype} do not fill whole bytes"))),
        }
    }

    fn json(&self) -> Vec<u8> {
        to_json(&ItemJson {
            name: self.name.clone(),
            dtype: self.dtype.map(|d| d.as_str().to_string()),
            shape: self.shape.clone(),
            len: self.len,
            encoding: EncodingJson::from_encoding(&self.encoding),
        })
    }

    /// Writes header and JSON payload.
    pub fn encode<B: BufMut>(&self, dst: &mut B) {
        json_frame(dst, FrameKind::ItemHeader, self.item, &self.json());
    }

    /// Bytes [`ItemHeader::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.json().len()
    }
}

// ---- JSON representation (SPEC.md §5.2) ----

#[derive(serde::Serialize, serde::Deserialize)]
struct ItemJson {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shape: Option<Vec<u64>>,
    len: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encoding: Option<EncodingJson>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{decode, raw_frame, round_trip, TestResult};
    use crate::wire::Frame;

    #[test]
    fn item_header_byte_literal() -> TestResult {
        let json = br#"{"name":"w","dtype":"BF16","shape":[2,3],"len":12}"#;
        let Frame::ItemHeader(h) = decode(&raw_frame(0x02, 5, 0, json))? else { panic!("wrong kind") };
        assert_eq!(h, ItemHeader { item: 5, ..ItemHeader::tensor(0, "w", Dtype::BF16, vec![2, 3]) });
        Ok(())
    }

    #[test]
    fn item_header_with_encoding_byte_literal() -> TestResult {
        let json = br#"{"name":"q","dtype":"F32","shape":[65],"len":41,"encoding":{"scheme":"nf4","block_size":64}}"#;
        let Frame::ItemHeader(h) = decode(&raw_frame(0x02, 0, 0, json))? else { panic!("wrong kind") };
        assert_eq!(h.encoding, Encoding::Nf4 { block_size: 64, nested: false });
        Ok(())
    }

    #[test]
    fn decode_rejects_empty_name() {
        let json = br#"{"name":"","len":0}"#;
        assert!(matches!(decode(&raw_frame(0x02, 0, 0, json)), Err(DecodeError::BadMetadata { .. })));
    }

    #[test]
    fn decode_rejects_name_over_limit() {
        let json = format!(r#"{{"name":"{}","len":0}}"#, "n".repeat(4097));
        assert!(matches!(
            decode(&raw_frame(0x02, 0, 0, json.as_bytes())),
            Err(DecodeError::LimitExceeded { what: "name length", .. })
        ));
    }

    #[test]
    fn decode_rejects_unknown_dtype() {
        let json = br#"{"name":"w","dtype":"F128","shape":[1],"len":16}"#;
        assert_eq!(decode(&raw_frame(0x02, 0, 0, json)), Err(DecodeError::UnknownDtype("F128".into())));
    }

    #[test]
    fn decode_rejects_unknown_encoding() {
        let json = br#"{"name":"w","dtype":"F32","shape":[1],"len":1,"encoding":{"scheme":"int3"}}"#;
        assert_eq!(decode(&raw_frame(0x02, 0, 0, json)), Err(DecodeError::UnknownEncoding("int3".into())));
    }

    #[test]
    fn decode_rejects_length_disagreeing_with_shape() {
        let json = br#"{"name":"w","dtype":"F32","shape":[2,3],"len":25}"#;
        assert!(matches!(decode(&raw_frame(0x02, 0, 0, json)), Err(DecodeError::InconsistentItem { item: 0, .. })));
    }

    #[test]
    fn decode_rejects_shape_overflow() {
        let json = br#"{"name":"w","dtype":"F32","shape":[4294967296,4294967296],"len":0}"#;
        assert!(matches!(decode(&raw_frame(0x02, 0, 0, json)), Err(DecodeError::InconsistentItem { .. })));
    }

    #[test]
    fn decode_rejects_dtype_without_shape() {
        let json = br#"{"name":"w","dtype":"F32","len":4}"#;
        assert!(matches!(decode(&raw_frame(0x02, 0, 0, json)), Err(DecodeError::InconsistentItem { .. })));
    }

    #[test]
    fn decode_rejects_encoded_opaque_item() {
        let json = br#"{"name":"w","len":4,"encoding":{"scheme":"fp16"}}"#;
        assert!(matches!(decode(&raw_frame(0x02, 0, 0, json)), Err(DecodeError::InconsistentItem { .. })));
    }

    #[test]
    fn decode_rejects_rank_over_limit() {
        let json = format!(r#"{{"name":"w","dtype":"U8","shape":[{}],"len":1}}"#, ["1"; 33].join(","));
        assert!(matches!(
            decode(&raw_frame(0x02, 0, 0, json.as_bytes())),
            Err(DecodeError::LimitExceeded { what: "rank", .. })
        ));
    }

    #[test]
    fn decode_rejects_item_length_over_limit() {
        let json = br#"{"name":"w","len":274877906945}"#;
        assert!(matches!(
            decode(&raw_frame(0x02, 0, 0, json)),
            Err(DecodeError::LimitExceeded { what: "item length", .. })
        ));
    }

    #[test]
    fn decode_rejects_bad_code_table() {
        let json = br#"{"name":"w","dtype":"F32","shape":[1],"len":5,"encoding":{"scheme":"blockwise8","block_size":4096,"code":"00"}}"#;
        assert!(matches!(decode(&raw_frame(0x02, 0, 0, json)), Err(DecodeError::BadMetadata { .. })));
    }

    #[test]
    fn validate_agrees_with_decode_on_invalid_frames() {
        let bad = Frame::ItemHeader(ItemHeader { len: 3, ..ItemHeader::tensor(0, "w", Dtype::F32, vec![1]) });
        assert!(bad.validate(&Limits::default()).is_err());
        let mut buf = Vec::new();
        bad.encode(&mut buf);
        assert!(decode(&buf).is_err());
    }

    #[test]
    fn round_trips() -> TestResult {
        let code: Vec<f32> = (0..256).map(|i| i as f32 / 255.0 - 0.5).collect();
        let mut q = ItemHeader::tensor(7, "q", Dtype::F16, vec![4097]);
        q.encoding = Encoding::Blockwise8 { block_size: 4096, code: Some(code) };
        q.len = q.encoding.encoded_len(4097, Dtype::F16).unwrap_or(0);
        for frame in [
            Frame::ItemHeader(ItemHeader::tensor(0, "embed", Dtype::F8_E4M3, vec![3, 0, 5])),
            Frame::ItemHeader(ItemHeader::bytes(1, "file", 1 << 37)),
            Frame::ItemHeader(q),
        ] {
            round_trip(frame)?;
        }
        Ok(())
    }
}

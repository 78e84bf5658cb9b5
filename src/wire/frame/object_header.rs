//! The object header (SPEC.md §4.1) and its JSON payload (§5.1).

use std::collections::BTreeMap;

use bytes::BufMut;

use super::common::{bad_meta, check_name, json_frame, to_json};
use crate::wire::meta;
use crate::wire::{DecodeError, Dtype, FrameHeader, FrameKind, Limits, Mode, HEADER_LEN, NO_ITEM};

/// Opens an object (SPEC.md §4.1).
///
/// ```
/// use tensorwire::wire::{Mode, ObjectHeader};
/// let h = ObjectHeader::new("model", Mode::Container).with_items(147);
/// assert_eq!(h.items, Some(147));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct ObjectHeader {
    /// The object's name, as requested.
    pub name: String,
    /// What the items are.
    pub mode: Mode,
    /// Number of items, when known before the first is sent.
    pub items: Option<u64>,
    /// Sum of the items' byte lengths, when known.
    pub total_len: Option<u64>,
    /// The sender's largest chunk payload.
    pub chunk_size: u32,
    /// Free-form string pairs (SPEC.md §5.1).
    pub metadata: BTreeMap<String, String>,
    /// The tensors the items will restore to, in item order, when the sender
    /// knows them up front (SPEC.md §5.1): lets a receiver lay out a file
    /// before the data arrives.
    pub index: Option<Vec<IndexEntry>>,
}

/// One tensor of an object header's index (SPEC.md §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct IndexEntry {
    /// The item's name.
    pub name: String,
    /// The dtype the item restores to.
    pub dtype: Dtype,
    /// The item's shape.
    pub shape: Vec<u64>,
}

impl ObjectHeader {
    /// A header with unknown counts, the default chunk size and no metadata.
    pub fn new(name: impl Into<String>, mode: Mode) -> Self {
        ObjectHeader {
            name: name.into(),
            mode,
            items: None,
            total_len: None,
            chunk_size: crate::wire::DEFAULT_CHUNK_BYTES,
            metadata: BTreeMap::new(),
            index: None,
        }
    }

    /// Sets the item count.
    pub fn with_items(mut self, items: u64) -> Self {
        self.items = Some(items);
        self
    }

    /// Sets the total length.
    pub fn with_total_len(mut self, total_len: u64) -> Self {
        self.total_len = Some(total_len);
        self
    }

    /// Decodes the JSON payload (SPEC.md §5.1).
    pub fn decode(_head: FrameHeader, payload: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
        let j: ObjectJson = serde_json::from_slice(payload).map_err(|e| bad_meta(FrameKind::ObjectHeader, e))?;
        let h = ObjectHeader {
            mode: meta::parse_mode(&j.mode)?,
            name: j.name,
            items: j.items,
            total_len: j.total_len,
            chunk_size: j.chunk_size,
            metadata: j.metadata,
            index: j.index.map(|entries| entries.into_iter().map(IndexJson::into_entry).collect()).transpose()?,
        };
        h.check(limits)?;
        Ok(h)
    }

    pub(super) fn check(&self, limits: &Limits) -> Result<(), DecodeError> {
        check_name(FrameKind::ObjectHeader, &self.name, limits)?;
        // SPEC.md §6: declared counts MUST NOT exceed the receiver's limits.
        if let Some(items) = self.items.filter(|&n| n > limits.max_items) {
            return Err(DecodeError::LimitExceeded { what: "item count", value: items, max: limits.max_items });
        }
        if let Some(len) = self.total_len.filter(|&n| n > limits.max_object_len) {
            return Err(DecodeError::LimitExceeded { what: "object length", value: len, max: limits.max_object_len });
        }
        if let Some(index) = &self.index {
            // SPEC.md §5.1: an index lists exactly the declared items.
            if self.items != Some(index.len() as u64) {
                return Err(bad_meta(FrameKind::ObjectHeader, "index without a matching item count"));
            }
            for e in index {
                check_name(FrameKind::ObjectHeader, &e.name, limits)?;
                if e.shape.len() as u64 > u64::from(limits.max_rank) {
                    return Err(DecodeError::LimitExceeded {
                        what: "rank",
                        value: e.shape.len() as u64,
                        max: limits.max_rank.into(),
                    });
                }
            }
        }
        Ok(())
    }

    fn json(&self) -> Vec<u8> {
        to_json(&ObjectJson {
            name: self.name.clone(),
            mode: self.mode.as_str().into(),
            items: self.items,
            total_len: self.total_len,
            chunk_size: self.chunk_size,
            metadata: self.metadata.clone(),
            index: self.index.as_ref().map(|entries| entries.iter().map(IndexJson::from_entry).collect()),
        })
    }

    /// Writes header and JSON payload.
    pub fn encode<B: BufMut>(&self, dst: &mut B) {
        json_frame(dst, FrameKind::ObjectHeader, NO_ITEM, &self.json());
    }

    /// Bytes [`ObjectHeader::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.json().len()
    }
}

// ---- JSON representation (SPEC.md §5.1) ----

#[derive(serde::Serialize, serde::Deserialize)]
struct ObjectJson {
    name: String,
    mode: String,
    #[serde(default)]
    items: Option<u64>,
    #[serde(default)]
    total_len: Option<u64>,
    chunk_size: u32,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    metadata: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    index: Option<Vec<IndexJson>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct IndexJson {
    name: String,
    dtype: String,
    shape: Vec<u64>,
}

impl IndexJson {
    fn from_entry(e: &IndexEntry) -> Self {
        IndexJson { name: e.name.clone(), dtype: e.dtype.as_str().into(), shape: e.shape.clone() }
    }

    fn into_entry(self) -> Result<IndexEntry, DecodeError> {
        Ok(IndexEntry { dtype: Dtype::parse(&self.dtype)?, name: self.name, shape: self.shape })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{decode, raw_frame, round_trip, TestResult};
    use crate::wire::Frame;

    #[test]
    fn object_header_byte_literal() -> TestResult {
        let json = br#"{"name":"m","mode":"container","items":2,"total_len":null,"chunk_size":1024,"future_key":[1]}"#;
        let bytes = raw_frame(0x01, NO_ITEM, 0, json);
        let Frame::ObjectHeader(h) = decode(&bytes)? else { panic!("wrong kind") };
        assert_eq!(h.name, "m");
        assert_eq!(h.mode, Mode::Container);
        assert_eq!(h.items, Some(2));
        assert_eq!(h.total_len, None);
        assert_eq!(h.chunk_size, 1024);
        Ok(())
    }

    #[test]
    fn decode_rejects_malformed_json() {
        assert!(matches!(decode(&raw_frame(0x01, NO_ITEM, 0, b"{\"name\":")), Err(DecodeError::BadMetadata { .. })));
    }

    #[test]
    fn decode_rejects_unknown_mode() {
        let json = br#"{"name":"m","mode":"zip","chunk_size":1}"#;
        assert!(matches!(decode(&raw_frame(0x01, NO_ITEM, 0, json)), Err(DecodeError::BadMetadata { .. })));
    }

    #[test]
    fn decode_rejects_item_count_over_limit() {
        let json = br#"{"name":"m","mode":"file","items":1048577,"chunk_size":1}"#;
        assert!(matches!(
            decode(&raw_frame(0x01, NO_ITEM, 0, json)),
            Err(DecodeError::LimitExceeded { what: "item count", .. })
        ));
    }

    #[test]
    fn round_trips() -> TestResult {
        for frame in [
            Frame::ObjectHeader(ObjectHeader::new("model", Mode::File).with_items(1).with_total_len(10)),
            Frame::ObjectHeader({
                let mut h = ObjectHeader::new("m", Mode::Container);
                h.metadata.insert("format".into(), "safetensors".into());
                h
            }),
        ] {
            round_trip(frame)?;
        }
        Ok(())
    }
}

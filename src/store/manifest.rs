//! [`Manifest`]: the sidecar object `KEY.tw.json` that records how to verify
//! an object in a store (SPEC.md §11). Sans-IO: building one from the bytes
//! as they are uploaded, and checking ranges against it.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::wire::crc::{checksum, Combined};

/// The manifest format this crate writes and reads (SPEC.md §11.2).
pub const MANIFEST_VERSION: u32 = 1;

/// What a manifest's object holds (SPEC.md §11.2 `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    /// A tensorwire object body (SPEC.md §2–§7), e.g. a quantized container.
    Framed,
    /// Any other bytes.
    Raw,
    /// A safetensors file.
    Safetensors,
}

/// One tensor of a safetensors object, with its data's absolute byte range
/// in the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorRange {
    /// The tensor's name.
    pub name: String,
    /// Its dtype, spelled as safetensors spells it.
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<u64>,
    /// `[start, end)` of its data, counted from the start of the object.
    pub range: [u64; 2],
}

/// The sidecar manifest of an object in a store (SPEC.md §11.2).
///
/// ```
/// use tensorwire::store::{Manifest, ManifestBuilder, ObjectKind};
/// let mut b = ManifestBuilder::new(4, ObjectKind::Raw);
/// b.update(b"0123456789");
/// let m: Manifest = b.finish(Some("\"etag\"".into()), None);
/// assert_eq!((m.size, m.ranges.len()), (10, 3));
/// assert!(m.check_range(4, b"4567").is_ok());
/// assert!(m.check_range(4, b"4X67").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// What the object holds.
    pub kind: ObjectKind,
    /// The object's length in bytes.
    pub size: u64,
    /// CRC-32 of the whole object (SPEC.md §1).
    pub crc32: u32,
    /// The granularity of `ranges`: range `i` is bytes
    /// `[i * range_size, min((i + 1) * range_size, size))`.
    pub range_size: u64,
    /// CRC-32 of each range, in order.
    pub ranges: Vec<u32>,
    /// The store's ETag of the data object after the upload, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The store's version id of the data object, when versioning is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_version: Option<String>,
    /// For a safetensors object: the length of its header (8 + JSON) and
    /// each tensor's range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_len: Option<u64>,
    /// For a safetensors object: the CRC-32 of its header (the first
    /// `header_len` bytes), so the header read alone is verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_crc32: Option<u32>,
    /// See `header_len`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensors: Option<Vec<TensorRange>>,
}

/// The largest manifest this crate reads, in bytes: 16 MiB holds the range
/// CRCs of a 1 TiB object at the default granularity, and a million tensors.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

impl Manifest {
    /// Parses and checks a manifest's JSON.
    ///
    /// # Errors
    ///
    /// [`StoreError::Manifest`] when it does not parse, has another
    /// version, or is inconsistent (range count or tensor ranges against
    /// the size).
    pub fn from_json(key: &str, json: &[u8]) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::Manifest { key: key.to_string(), reason };
        let m: Manifest = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
        // SPEC.md §11.2: a reader MUST reject a version it does not implement.
        if m.version != MANIFEST_VERSION {
            return Err(bad(format!("version {} (this reader knows {MANIFEST_VERSION})", m.version)));
        }
        // SPEC.md §11.2: `ranges` has exactly ceil(size / range_size) entries.
        if m.range_size == 0 || m.ranges.len() as u64 != m.size.div_ceil(m.range_size) {
            return Err(bad(format!("{} range CRCs for {} bytes at {}", m.ranges.len(), m.size, m.range_size)));
        }
        for t in m.tensors.iter().flatten() {
            if t.range[0] > t.range[1] || t.range[1] > m.size {
                return Err(bad(format!("tensor {:?} lies outside the object", t.name)));
            }
        }
        Ok(m)
    }

    /// The manifest as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The range `[start, end)` of manifest ranges that cover bytes
    /// `[start, end)` of the object, widened to range boundaries.
    pub fn aligned(&self, start: u64, end: u64) -> (u64, u64) {
        let g = self.range_size;
        ((start / g) * g, end.div_ceil(g).saturating_mul(g).min(self.size))
    }

    /// Checks `data`, read at `offset`, against the range CRCs: `offset`
    /// must be a range boundary and `data` whole ranges (or run to the end
    /// of the object).
    ///
    /// Returns the CRC-32 of `data`, combined from its ranges' (no second
    /// pass), for a reader that checks the whole object's CRC.
    ///
    /// # Errors
    ///
    /// [`StoreError::RangeChecksum`] naming the first range that differs;
    /// [`StoreError::Misaligned`] when the read does not fall on ranges.
    pub fn check_range(&self, offset: u64, data: &[u8]) -> Result<u32, StoreError> {
        let g = self.range_size;
        let end = offset + data.len() as u64;
        if offset % g != 0 || (end % g != 0 && end != self.size) || end > self.size {
            return Err(StoreError::Misaligned { offset, len: data.len() as u64, range_size: g });
        }
        let mut crc = Combined::new();
        for (i, piece) in data.chunks(g as usize).enumerate() {
            let at = offset + i as u64 * g;
            let index = (at / g) as usize;
            let actual = checksum(piece);
            // `index` < ranges.len(): `end` ≤ size was checked above.
            let expected = self.ranges.get(index).copied().unwrap_or_default();
            if actual != expected {
                return Err(StoreError::RangeChecksum { offset: at, len: piece.len() as u64, expected, actual });
            }
            crc.push(actual, piece.len() as u64);
        }
        Ok(crc.crc())
    }

    /// The CRC of bytes `[offset, offset + len)` from the range CRCs, for
    /// whole ranges.
    pub fn combined(&self, offset: u64, len: u64) -> Option<u32> {
        let g = self.range_size;
        let mut c = Combined::new();
        let (first, last) = (offset / g, (offset + len).div_ceil(g));
        for i in first..last {
            let n = g.min(self.size - i * g);
            c.push(*self.ranges.get(i as usize)?, n);
        }
        Some(c.crc())
    }
}

/// Builds a [`Manifest`] from an object's bytes as they are uploaded, in
/// order, in pieces of any size.
#[derive(Debug)]
pub struct ManifestBuilder {
    range_size: u64,
    kind: ObjectKind,
    ranges: Vec<u32>,
    /// The range being filled.
    open: Combined,
    whole: Combined,
    header_len: Option<u64>,
    header_crc32: Option<u32>,
    tensors: Option<Vec<TensorRange>>,
}

impl ManifestBuilder {
    /// A builder recording CRCs every `range_size` bytes (at least 1).
    pub fn new(range_size: u64, kind: ObjectKind) -> Self {
        ManifestBuilder {
            range_size: range_size.max(1),
            kind,
            ranges: Vec::new(),
            open: Combined::new(),
            whole: Combined::new(),
            header_len: None,
            header_crc32: None,
            tensors: None,
        }
    }

    /// Records a safetensors object's header (its bytes, for their length
    /// and CRC) and tensor ranges.
    pub fn with_tensors(mut self, header: &[u8], tensors: Vec<TensorRange>) -> Self {
        self.header_len = Some(header.len() as u64);
        self.header_crc32 = Some(checksum(header));
        self.tensors = Some(tensors);
        self
    }

    /// This builder's kind and granularity over what `other` recorded (for
    /// a writer that learns what the object is only at its end).
    pub fn resume_from(self, other: ManifestBuilder) -> Self {
        ManifestBuilder {
            kind: self.kind,
            header_len: self.header_len,
            header_crc32: self.header_crc32,
            tensors: self.tensors,
            ..other
        }
    }

    /// Appends the next bytes of the object.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = (self.range_size - self.open.len()) as usize;
            let (now, rest) = data.split_at(room.min(data.len()));
            self.open.update(now);
            self.whole.update(now);
            if self.open.len() == self.range_size {
                self.ranges.push(self.open.crc());
                self.open = Combined::new();
            }
            data = rest;
        }
    }

    /// Bytes appended so far.
    pub fn len(&self) -> u64 {
        self.whole.len()
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.whole.is_empty()
    }

    /// The manifest, with the store's ETag and version of the uploaded object.
    pub fn finish(mut self, etag: Option<String>, object_version: Option<String>) -> Manifest {
        if !self.open.is_empty() {
            self.ranges.push(self.open.crc());
        }
        Manifest {
            version: MANIFEST_VERSION,
            kind: self.kind,
            size: self.whole.len(),
            crc32: self.whole.crc(),
            range_size: self.range_size,
            ranges: self.ranges,
            etag,
            object_version,
            header_len: self.header_len,
            header_crc32: self.header_crc32,
            tensors: self.tensors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(data: &[u8], g: u64) -> Manifest {
        let mut b = ManifestBuilder::new(g, ObjectKind::Raw);
        for piece in data.chunks(3) {
            b.update(piece);
        }
        b.finish(None, None)
    }

    #[test]
    fn ranges_do_not_depend_on_how_the_bytes_arrived() {
        let data: Vec<u8> = (0..=255).collect();
        let m = manifest(&data, 10);
        let mut one = ManifestBuilder::new(10, ObjectKind::Raw);
        one.update(&data);
        assert_eq!(one.finish(None, None), m);
        assert_eq!(m.crc32, checksum(&data));
        assert_eq!(m.ranges.len(), 26);
        assert_eq!(m.combined(0, 256), Some(m.crc32));
    }

    #[test]
    fn check_range_names_the_damaged_range() {
        let data = vec![7u8; 100];
        let m = manifest(&data, 10);
        let mut bad = data.clone();
        bad[35] ^= 1;
        let e = m.check_range(20, &bad[20..50]).unwrap_err();
        assert!(matches!(e, StoreError::RangeChecksum { offset: 30, len: 10, .. }), "{e:?}");
        assert!(m.check_range(90, &data[90..]).is_ok());
    }

    #[test]
    fn check_range_rejects_a_read_off_the_ranges() {
        let m = manifest(&[0u8; 100], 10);
        assert!(matches!(m.check_range(5, &[0u8; 10]), Err(StoreError::Misaligned { .. })));
        assert!(matches!(m.check_range(90, &[0u8; 20]), Err(StoreError::Misaligned { .. })));
    }

    #[test]
    fn from_json_rejects_another_version_and_a_short_range_list() {
        let mut m = manifest(&[0u8; 100], 10);
        m.version = 2;
        assert!(matches!(Manifest::from_json("k", &m.to_json()), Err(StoreError::Manifest { .. })));
        m.version = MANIFEST_VERSION;
        m.ranges.pop();
        assert!(matches!(Manifest::from_json("k", &m.to_json()), Err(StoreError::Manifest { .. })));
        assert!(matches!(Manifest::from_json("k", b"{"), Err(StoreError::Manifest { .. })));
    }

    #[test]
    fn aligned_widens_to_range_boundaries() {
        let m = manifest(&[0u8; 95], 10);
        assert_eq!(m.aligned(12, 18), (10, 20));
        assert_eq!(m.aligned(85, 95), (80, 95));
    }
}

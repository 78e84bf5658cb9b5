//! CRC-32 helpers (SPEC.md §3.2): the ISO-HDLC CRC that zlib, PNG and
//! `crc32fast` compute, and its combination over concatenated byte ranges.

/// CRC-32 of `data`.
///
/// ```
/// assert_eq!(tensorwire::wire::crc::checksum(b"123456789"), 0xCBF4_3926);
/// ```
pub fn checksum(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// A running CRC-32 over a sequence of byte ranges that is built from the
/// CRCs of the ranges alone, without their bytes (SPEC.md §3.2).
///
/// This is how item and object CRCs are computed from the chunk CRCs that a
/// decoder has already checked: the payload is read once.
///
/// ```
/// use tensorwire::wire::crc::{checksum, Combined};
/// let mut c = Combined::new();
/// c.push(checksum(b"1234"), 4);
/// c.push(checksum(b"56789"), 5);
/// assert_eq!(c.crc(), checksum(b"123456789"));
/// assert_eq!(c.len(), 9);
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Combined {
    crc: u32,
    len: u64,
}

impl Combined {
    /// The CRC of nothing.
    pub fn new() -> Self {
        Combined::default()
    }

    /// Appends a range of `len` bytes whose CRC is `crc`.
    pub fn push(&mut self, crc: u32, len: u64) {
        let mut h = crc32fast::Hasher::new_with_initial_len(self.crc, self.len);
        h.combine(&crc32fast::Hasher::new_with_initial_len(crc, len));
        self.crc = h.finalize();
        self.len += len;
    }

    /// Appends bytes directly.
    pub fn update(&mut self, data: &[u8]) {
        let mut h = crc32fast::Hasher::new_with_initial_len(self.crc, self.len);
        h.update(data);
        self.crc = h.finalize();
        self.len += data.len() as u64;
    }

    /// The CRC of everything appended so far.
    pub fn crc(&self) -> u32 {
        self.crc
    }

    /// Number of bytes appended so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been appended.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for Combined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Combined").field("crc", &format_args!("{:#010x}", self.crc)).field("len", &self.len).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_matches_one_shot_for_any_split() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for split in [0, 1, 499, 999, 1000] {
            let (a, b) = data.split_at(split);
            let mut c = Combined::new();
            c.push(checksum(a), a.len() as u64);
            c.push(checksum(b), b.len() as u64);
            assert_eq!(c.crc(), checksum(&data), "split at {split}");
        }
    }

    #[test]
    fn empty_is_zero() {
        assert_eq!(Combined::new().crc(), 0);
        assert_eq!(checksum(b""), 0);
    }
}

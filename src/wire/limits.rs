//! Resource limits a decoder enforces before it allocates (SPEC.md §6).

/// The chunk size senders use unless told otherwise: 4 MiB.
pub const DEFAULT_CHUNK_BYTES: u32 = 4 << 20;

/// The smallest chunk size a server agrees to send (SPEC.md §8.2): smaller
/// chunks only multiply frames, CRCs and per-frame work.
pub const MIN_CHUNK_BYTES: u32 = 64 << 10;

/// The largest chunk size a server agrees to send (SPEC.md §8.2): the
/// default `max_payload` of a receiver (SPEC.md §6).
pub const MAX_CHUNK_BYTES: u32 = 16 << 20;

/// Limits on what a peer may make a decoder hold or expect.
///
/// Every length a peer declares is checked against these *before* any buffer
/// is reserved for it. The defaults are SPEC.md §6's table.
///
/// ```
/// use tensorwire::wire::Limits;
/// let limits = Limits { max_payload: 4 << 20, ..Limits::default() };
/// assert_eq!(limits.max_meta, Limits::DEFAULT_MAX_META);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest chunk payload in bytes.
    pub max_payload: u32,
    /// Largest object-header, item-header or abort payload in bytes.
    pub max_meta: u32,
    /// Most items in one object.
    pub max_items: u64,
    /// Largest byte length of one item.
    pub max_item_len: u64,
    /// Largest total byte length of one object.
    pub max_object_len: u64,
    /// Longest object or item name in bytes.
    pub max_name_len: u32,
    /// Most dimensions of a shape.
    pub max_rank: u32,
    /// Total bytes of item names a decoder remembers to reject repeats.
    pub max_names_total: u64,
}

impl Limits {
    /// Default [`Limits::max_payload`]: 16 MiB.
    pub const DEFAULT_MAX_PAYLOAD: u32 = 16 << 20;
    /// Default [`Limits::max_meta`]: 1 MiB.
    pub const DEFAULT_MAX_META: u32 = 1 << 20;
    /// Default [`Limits::max_items`]: 1,048,576.
    pub const DEFAULT_MAX_ITEMS: u64 = 1 << 20;
    /// Default [`Limits::max_item_len`]: 256 GiB.
    pub const DEFAULT_MAX_ITEM_LEN: u64 = 256 << 30;
    /// Default [`Limits::max_object_len`]: 16 TiB.
    pub const DEFAULT_MAX_OBJECT_LEN: u64 = 16 << 40;
    /// Default [`Limits::max_name_len`]: 4 KiB.
    pub const DEFAULT_MAX_NAME_LEN: u32 = 4096;
    /// Default [`Limits::max_rank`]: 32.
    pub const DEFAULT_MAX_RANK: u32 = 32;
    /// Default [`Limits::max_names_total`]: 64 MiB.
    pub const DEFAULT_MAX_NAMES_TOTAL: u64 = 64 << 20;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: Self::DEFAULT_MAX_PAYLOAD,
            max_meta: Self::DEFAULT_MAX_META,
            max_items: Self::DEFAULT_MAX_ITEMS,
            max_item_len: Self::DEFAULT_MAX_ITEM_LEN,
            max_object_len: Self::DEFAULT_MAX_OBJECT_LEN,
            max_name_len: Self::DEFAULT_MAX_NAME_LEN,
            max_rank: Self::DEFAULT_MAX_RANK,
            max_names_total: Self::DEFAULT_MAX_NAMES_TOTAL,
        }
    }
}

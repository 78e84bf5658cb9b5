//! [`ObjectRequest`]: what a pull asks for (SPEC.md §8.2, §8.4), written
//! by the client and read by the server with the same code.

use std::collections::BTreeMap;
use std::ops::Range;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

pub use crate::error::RequestError;
use crate::wire::{Mode, Scheme};

/// The request header that carries the ranges a resuming receiver needs
/// (SPEC.md §8.4).
pub const RESUME_HEADER: &str = "tensorwire-resume";

/// Most items a resume header may list, and most ranges in all
/// (SPEC.md §8.4); a longer header is refused before anything is stored.
pub const MAX_RESUME_RANGES: usize = 4096;

/// Characters escaped in a query value: everything but unreserved ones.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A pull request: the object's name and the options of SPEC.md §8.2, plus
/// the ranges to resume (§8.4).
///
/// [`ObjectRequest::to_query`] and [`ObjectRequest::resume_header`] write
/// it; [`ObjectRequest::from_query`] and [`ObjectRequest::with_resume_header`]
/// read it back, so client and server cannot disagree on the spelling.
///
/// ```
/// use tensorwire::transport::{ObjectRequest, Resume};
/// use tensorwire::wire::Mode;
/// # fn main() -> Result<(), tensorwire::transport::RequestError> {
/// let mut req = ObjectRequest::new("model.safetensors");
/// req.mode = Some(Mode::Container);
/// req.items = Some(vec!["a b".into(), "c".into()]);
/// req.chunk_size = Some(1 << 20);
/// assert_eq!(req.to_query(), "mode=container&items=a%20b,c&chunk_size=1048576");
/// let mut resume = Resume::default();
/// resume.need(0, vec![1024..4096]);
/// resume.need(1, vec![]);
/// req.resume = Some(resume);
/// let header = req.resume_header().expect("resuming");
/// assert_eq!(header, "0=1024-4096,1=");
/// let back = ObjectRequest::from_query("model.safetensors", Some(&req.to_query()))?
///     .with_resume_header(Some(&header))?;
/// assert_eq!(back, req);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectRequest {
    /// The object's name (decoded).
    pub name: String,
    /// How to send it; `None` leaves the choice to the server.
    pub mode: Option<Mode>,
    /// Container mode: only these items, in this order.
    pub items: Option<Vec<String>>,
    /// Container mode: quantize float tensors with this scheme.
    pub quantize: Option<Scheme>,
    /// Largest chunk payload the receiver wants.
    pub chunk_size: Option<u32>,
    /// The ranges still needed, when resuming.
    pub resume: Option<Resume>,
}

/// What a resuming receiver still needs (SPEC.md §8.4): per item index, the
/// byte ranges (half-open) it has not verified. An item listed with no
/// ranges is not needed at all; an item not listed is needed whole.
///
/// ```
/// use tensorwire::transport::Resume;
/// let mut r = Resume::default();
/// r.need(2, vec![0..10, 20..30]);
/// assert!(r.wants(2, 5..6) && !r.wants(2, 10..20) && r.wants(3, 0..1));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    items: BTreeMap<u32, Vec<Range<u64>>>,
}

impl Resume {
    /// Records that of item `item` only `ranges` are needed (none: the item
    /// is complete). Empty ranges are dropped.
    pub fn need(&mut self, item: u32, ranges: Vec<Range<u64>>) {
        self.items.insert(item, ranges.into_iter().filter(|r| !r.is_empty()).collect());
    }

    /// Whether any byte of `range` of `item` is needed.
    pub fn wants(&self, item: u32, range: Range<u64>) -> bool {
        match self.items.get(&item) {
            None => true,
            Some(ranges) => ranges.iter().any(|r| r.start < range.end && range.start < r.end),
        }
    }

    /// The listed items and their needed ranges, in item order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[Range<u64>])> + '_ {
        self.items.iter().map(|(&i, r)| (i, r.as_slice()))
    }

    /// The header value: `<item>=<start>-<end>[;<start>-<end>...][,<item>=...]`.
    pub fn to_header(&self) -> String {
        let items: Vec<String> = self
            .items
            .iter()
            .map(|(i, ranges)| {
                let r: Vec<String> = ranges.iter().map(|r| format!("{}-{}", r.start, r.end)).collect();
                format!("{i}={}", r.join(";"))
            })
            .collect();
        items.join(",")
    }

    /// Parses a header value (SPEC.md §8.4).
    ///
    /// # Errors
    ///
    /// [`RequestError::BadResume`] for a malformed value, ranges out of
    /// order, overlapping or empty, or more than [`MAX_RESUME_RANGES`].
    pub fn parse(value: &str) -> Result<Self, RequestError> {
        let bad = |reason: &'static str| RequestError::BadResume { reason };
        let mut out = Resume::default();
        let mut count = 0usize;
        if value.trim().is_empty() {
            return Err(bad("empty header"));
        }
        for entry in value.split(',') {
            let (item, ranges) = entry.trim().split_once('=').ok_or(bad("an entry lacks '='"))?;
            let item: u32 = item.parse().map_err(|_| bad("item index is not a number"))?;
            let mut list: Vec<Range<u64>> = Vec::new();
            for r in ranges.split(';').filter(|r| !r.is_empty()) {
                count += 1;
                // SPEC.md §8.4: a sender refuses more than MAX_RESUME_RANGES.
                if count > MAX_RESUME_RANGES {
                    return Err(bad("too many ranges"));
                }
                let (s, e) = r.split_once('-').ok_or(bad("a range lacks '-'"))?;
                let s: u64 = s.parse().map_err(|_| bad("range start is not a number"))?;
                let e: u64 = e.parse().map_err(|_| bad("range end is not a number"))?;
                // SPEC.md §8.4: ranges are non-empty, ascending and disjoint.
                if s >= e {
                    return Err(bad("empty or reversed range"));
                }
                if list.last().is_some_and(|l| l.end > s) {
                    return Err(bad("ranges overlap or are out of order"));
                }
                list.push(s..e);
            }
            if out.items.insert(item, list).is_some() {
                return Err(bad("an item is listed twice"));
            }
            if out.items.len() > MAX_RESUME_RANGES {
                return Err(bad("too many items"));
            }
        }
        Ok(out)
    }
}

impl ObjectRequest {
    /// A request for `name` with every option left to the server.
    pub fn new(name: impl Into<String>) -> Self {
        ObjectRequest { name: name.into(), ..Self::default() }
    }

    /// The query string (without `?`; empty when there are no options).
    pub fn to_query(&self) -> String {
        let mut q = Vec::new();
        if let Some(m) = self.mode {
            q.push(format!("mode={}", m.as_str()));
        }
        if let Some(items) = &self.items {
            let encoded: Vec<String> = items.iter().map(|n| utf8_percent_encode(n, QUERY_VALUE).to_string()).collect();
            q.push(format!("items={}", encoded.join(",")));
        }
        if let Some(s) = self.quantize {
            q.push(format!("quantize={s}"));
        }
        if let Some(c) = self.chunk_size {
            q.push(format!("chunk_size={c}"));
        }
        q.join("&")
    }

    /// The `tensorwire-resume` header value, when resuming.
    pub fn resume_header(&self) -> Option<String> {
        self.resume.as_ref().map(Resume::to_header)
    }

    /// Reads the options of a request for `name` from its query string.
    /// Unknown parameters are ignored (SPEC.md §10).
    ///
    /// # Errors
    ///
    /// [`RequestError::BadParameter`] for a value that does not parse.
    pub fn from_query(name: impl Into<String>, query: Option<&str>) -> Result<Self, RequestError> {
        let mut req = ObjectRequest::new(name);
        for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let bad = |param| RequestError::BadParameter { param, value: v.to_string() };
            match k {
                "mode" => {
                    req.mode = Some(match v {
                        "file" => Mode::File,
                        "container" => Mode::Container,
                        _ => return Err(bad("mode")),
                    })
                }
                "items" => {
                    let names = v
                        .split(',')
                        .map(|n| percent_decode_str(n).decode_utf8().map(|s| s.into_owned()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| bad("items"))?;
                    req.items = Some(names);
                }
                "quantize" => req.quantize = Some(Scheme::parse(v).ok_or_else(|| bad("quantize"))?),
                "chunk_size" => {
                    req.chunk_size = Some(v.parse().ok().filter(|&c| c > 0).ok_or_else(|| bad("chunk_size"))?)
                }
                _ => {}
            }
        }
        Ok(req)
    }

    /// Adds the ranges of a `tensorwire-resume` header, if there is one.
    ///
    /// # Errors
    ///
    /// [`RequestError::BadResume`] for a malformed header.
    pub fn with_resume_header(mut self, value: Option<&str>) -> Result<Self, RequestError> {
        self.resume = value.map(Resume::parse).transpose()?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad_resume(v: &str) -> bool {
        matches!(Resume::parse(v), Err(RequestError::BadResume { .. }))
    }

    proptest::proptest! {
        /// Any valid resume (sorted, disjoint, non-empty ranges) survives
        /// the header and back.
        #[test]
        fn resume_header_round_trips(
            items in proptest::collection::btree_map(0u32..1000, proptest::collection::vec((0u64..1000, 1u64..1000), 0..8), 0..8)
        ) {
            let mut r = Resume::default();
            for (item, spans) in items {
                let mut at = 0u64;
                let ranges = spans.into_iter().map(|(gap, len)| {
                    let start = at + gap;
                    at = start + len + 1;
                    start..start + len
                }).collect();
                r.need(item, ranges);
            }
            if r.iter().count() > 0 {
                proptest::prop_assert_eq!(Resume::parse(&r.to_header()), Ok(r));
            }
        }
    }

    #[test]
    fn resume_round_trips() -> Result<(), RequestError> {
        let r = Resume::parse("0=1048576-4194304;8388608-9437184,3=")?;
        assert_eq!(r.to_header(), "0=1048576-4194304;8388608-9437184,3=");
        assert!(!r.wants(3, 0..u64::MAX));
        assert!(r.wants(0, 4194303..4194304) && !r.wants(0, 4194304..8388608));
        Ok(())
    }

    #[test]
    fn resume_rejects_empty_header() {
        assert!(bad_resume(""));
    }

    #[test]
    fn resume_rejects_entry_without_equals() {
        assert!(bad_resume("0"));
    }

    #[test]
    fn resume_rejects_non_numeric_item() {
        assert!(bad_resume("x=0-1"));
    }

    #[test]
    fn resume_rejects_reversed_range() {
        assert!(bad_resume("0=5-5") && bad_resume("0=6-5"));
    }

    #[test]
    fn resume_rejects_overlapping_ranges() {
        assert!(bad_resume("0=0-10;5-20") && bad_resume("0=10-20;0-5"));
    }

    #[test]
    fn resume_rejects_item_listed_twice() {
        assert!(bad_resume("0=0-1,0=2-3"));
    }

    #[test]
    fn resume_rejects_too_many_ranges() {
        let ranges: Vec<String> = (0..=MAX_RESUME_RANGES as u64).map(|i| format!("{}-{}", 2 * i, 2 * i + 1)).collect();
        assert!(bad_resume(&format!("0={}", ranges.join(";"))));
    }

    #[test]
    fn query_rejects_unknown_mode() {
        let r = ObjectRequest::from_query("x", Some("mode=zip"));
        assert!(matches!(r, Err(RequestError::BadParameter { param: "mode", .. })));
    }

    #[test]
    fn query_rejects_zero_chunk_size() {
        let r = ObjectRequest::from_query("x", Some("chunk_size=0"));
        assert!(matches!(r, Err(RequestError::BadParameter { param: "chunk_size", .. })));
    }

    #[test]
    fn query_rejects_unknown_scheme() {
        let r = ObjectRequest::from_query("x", Some("quantize=int3"));
        assert!(matches!(r, Err(RequestError::BadParameter { param: "quantize", .. })));
    }

    #[test]
    fn query_ignores_unknown_parameters() -> Result<(), RequestError> {
        assert_eq!(ObjectRequest::from_query("x", Some("future=1&mode=file"))?.mode, Some(Mode::File));
        Ok(())
    }
}

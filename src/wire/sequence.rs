//! [`Sequencer`]: the ordering rules of SPEC.md §7, as a sans-IO state
//! machine over decoded frames.

use std::collections::HashSet;

use super::crc::Combined;
use super::{DecodeError, Frame, FrameKind, ItemHeader, Limits, Mode};

/// Checks that a sequence of frames forms a valid object (SPEC.md §7).
///
/// Feed every decoded frame, in order, to [`Sequencer::handle_frame`]; call
/// [`Sequencer::finish`] when the stream ends. Memory is O(1) apart from the
/// set of item names (bounded by [`Limits::max_names_total`]).
///
/// By default the object must be *complete*: every byte of every item
/// arrives, so item and object CRCs are verified here. A receiver that asked
/// the sender to resume (SPEC.md §8.4) builds the sequencer with
/// [`Sequencer::allowing_gaps`]: chunks may then skip ranges, and checking
/// CRCs of the assembled items is left to whoever holds the other ranges.
///
/// ```
/// use bytes::Bytes;
/// use tensorwire::wire::{ItemHeader, Limits, Mode, ObjectEncoder, ObjectHeader, Sequencer};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut enc = ObjectEncoder::new();
/// let mut seq = Sequencer::new(Limits::default());
/// seq.handle_frame(&enc.object_header(ObjectHeader::new("x", Mode::File))?)?;
/// seq.handle_frame(&enc.item_header(ItemHeader::bytes(0, "x", 3))?)?;
/// seq.handle_frame(&enc.chunk(Bytes::from_static(b"abc"))?)?;
/// seq.handle_frame(&enc.item_end()?)?;
/// seq.handle_frame(&enc.object_end()?)?;
/// assert!(seq.is_done());
/// seq.finish()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Sequencer {
    limits: Limits,
    allow_gaps: bool,
    state: State,
    mode: Mode,
    declared_items: Option<u64>,
    declared_len: Option<u64>,
    index: Option<Vec<super::IndexEntry>>,
    next_item: u64,
    open: Option<OpenItem>,
    object: Combined,
    total_len: u64,
    names: HashSet<Box<str>>,
    names_total: u64,
    budget: Option<super::Budget>,
    charged: u64,
}

/// What one remembered name costs a [`Budget`](super::Budget) beyond its
/// bytes: the set's entry and the string's allocation.
const NAME_OVERHEAD: u64 = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitObjectHeader,
    InObject,
    Done,
}

#[derive(Debug)]
struct OpenItem {
    item: u32,
    len: u64,
    record: u64,
    next: u64,
    received: u64,
    crc: Combined,
}

/// What [`Sequencer::handle_frame`] observed, for callers that track progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SequencerEvent {
    /// Nothing to report.
    None,
    /// An item was closed and (when complete) verified.
    ItemDone {
        /// Item index.
        item: u32,
        /// Its length.
        len: u64,
        /// Its CRC-32.
        crc: u32,
    },
    /// The object end was verified.
    ObjectDone,
    /// The sender aborted.
    Aborted,
}

impl Sequencer {
    /// A sequencer for complete objects.
    pub fn new(limits: Limits) -> Self {
        Sequencer {
            limits,
            allow_gaps: false,
            state: State::AwaitObjectHeader,
            mode: Mode::File,
            declared_items: None,
            declared_len: None,
            index: None,
            next_item: 0,
            open: None,
            object: Combined::new(),
            total_len: 0,
            names: HashSet::new(),
            names_total: 0,
            budget: None,
            charged: 0,
        }
    }

    /// Charges the names this sequencer remembers to `budget` too (shared
    /// with the other streams of a connection and server), given back when
    /// the sequencer is dropped; a name that does not fit is refused with
    /// [`DecodeError::LimitExceeded`].
    pub fn with_budget(mut self, budget: super::Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Accepts chunks that skip ranges (a resumed transfer, SPEC.md §8.4).
    pub fn allowing_gaps(mut self) -> Self {
        self.allow_gaps = true;
        self
    }

    /// Whether the object end or an abort has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The item currently open, if any.
    pub fn open_item(&self) -> Option<u32> {
        self.open.as_ref().map(|o| o.item)
    }

    /// Checks one frame against the rules of SPEC.md §7.
    ///
    /// # Errors
    ///
    /// The [`DecodeError`] naming the rule the frame breaks; the object is
    /// then invalid and the sequencer should be dropped.
    pub fn handle_frame(&mut self, frame: &Frame) -> Result<SequencerEvent, DecodeError> {
        let kind = frame.kind();
        let unexpected = |reason| Err(DecodeError::UnexpectedFrame { kind, reason });
        match (self.state, frame) {
            // SPEC.md §7.1: an abort may come at any point and ends the object.
            (State::AwaitObjectHeader | State::InObject, Frame::Abort(_)) => {
                self.state = State::Done;
                Ok(SequencerEvent::Aborted)
            }
            (State::Done, _) => unexpected("the object has ended"),
            (State::AwaitObjectHeader, Frame::ObjectHeader(h)) => {
                self.mode = h.mode;
                self.declared_items = h.items;
                self.declared_len = h.total_len;
                self.index.clone_from(&h.index);
                self.state = State::InObject;
                Ok(SequencerEvent::None)
            }
            // SPEC.md §7.1: the object header comes first and only once.
            (State::AwaitObjectHeader, _) => unexpected("the object header must come first"),
            (State::InObject, Frame::ObjectHeader(_)) => unexpected("a second object header"),
            (State::InObject, Frame::ItemHeader(h)) => self.item_header(h),
            (State::InObject, Frame::Chunk(c)) => self.chunk(c.item, c.offset, c.data.len() as u64, c.crc),
            (State::InObject, Frame::ItemEnd(e)) => self.item_end(e.item, e.len, e.crc),
            (State::InObject, Frame::ObjectEnd(e)) => self.object_end(e.items, e.len, e.crc),
        }
    }

    /// Checks that the stream may end here.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] unless the object end or an abort was seen.
    pub fn finish(&self) -> Result<(), DecodeError> {
        // SPEC.md §7.5: a stream that ends before the object end is truncated.
        if self.state == State::Done {
            Ok(())
        } else {
            Err(DecodeError::Truncated)
        }
    }

    fn item_header(&mut self, h: &ItemHeader) -> Result<SequencerEvent, DecodeError> {
        const KIND: FrameKind = FrameKind::ItemHeader;
        // SPEC.md §7.1: items do not nest or interleave.
        if self.open.is_some() {
            return Err(DecodeError::UnexpectedFrame { kind: KIND, reason: "the previous item is still open" });
        }
        // SPEC.md §7.1: items are numbered 0, 1, 2, ... in order.
        if u64::from(h.item) != self.next_item {
            return Err(DecodeError::UnexpectedFrame { kind: KIND, reason: "item index out of order" });
        }
        // SPEC.md §7.1: no more items than the object header declared, nor than max_items.
        let max = self.declared_items.unwrap_or(u64::MAX).min(self.limits.max_items);
        if self.next_item >= max {
            return Err(DecodeError::LimitExceeded { what: "item count", value: self.next_item + 1, max });
        }
        // SPEC.md §7.1: items of a container object are tensors.
        if self.mode == Mode::Container && h.dtype.is_none() {
            return Err(DecodeError::InconsistentItem { item: h.item, reason: "container items need a dtype".into() });
        }
        // SPEC.md §6: the object's total length is bounded.
        let total = self.total_len.saturating_add(h.len);
        let max_len = self.declared_len.unwrap_or(u64::MAX).min(self.limits.max_object_len);
        if total > max_len {
            return Err(DecodeError::LimitExceeded { what: "object length", value: total, max: max_len });
        }
        // SPEC.md §7.1: items match the object header's index, when there is one.
        if let Some(entry) = self.index.as_ref().and_then(|i| i.get(h.item as usize)) {
            if entry.name != h.name || Some(entry.dtype) != h.dtype || Some(&entry.shape) != h.shape.as_ref() {
                return Err(DecodeError::InconsistentItem {
                    item: h.item,
                    reason: "differs from the object header's index".into(),
                });
            }
        }
        self.remember_name(h)?;
        self.total_len = total;
        self.open = Some(OpenItem {
            item: h.item,
            len: h.len,
            record: h.encoding.record_len(),
            next: 0,
            received: 0,
            crc: Combined::new(),
        });
        Ok(SequencerEvent::None)
    }

    fn remember_name(&mut self, h: &ItemHeader) -> Result<(), DecodeError> {
        // SPEC.md §7.1: item names are unique within an object.
        if self.names.contains(h.name.as_str()) {
            return Err(DecodeError::DuplicateName { item: h.item, name: super::meta::truncate(&h.name) });
        }
        self.names_total += h.name.len() as u64;
        // SPEC.md §6: the names a receiver must remember are bounded.
        if self.names_total > self.limits.max_names_total {
            return Err(DecodeError::LimitExceeded {
                what: "total name bytes",
                value: self.names_total,
                max: self.limits.max_names_total,
            });
        }
        // SPEC.md §8.7: and so is what all streams of a connection or server hold.
        if let Some(budget) = &self.budget {
            let cost = h.name.len() as u64 + NAME_OVERHEAD;
            if !budget.try_take(cost) {
                return Err(DecodeError::LimitExceeded {
                    what: "bytes held for this connection's and server's streams",
                    value: budget.used().saturating_add(cost),
                    max: budget.limit(),
                });
            }
            self.charged += cost;
        }
        self.names.insert(h.name.as_str().into());
        Ok(())
    }

    fn chunk(&mut self, item: u32, offset: u64, len: u64, crc: u32) -> Result<SequencerEvent, DecodeError> {
        let allow_gaps = self.allow_gaps;
        // SPEC.md §7.2: a chunk belongs to the open item.
        let open = match &mut self.open {
            Some(o) if o.item == item => o,
            other => return Err(DecodeError::ChunkWithoutItem { item, open: other.as_ref().map(|o| o.item) }),
        };
        // SPEC.md §7.2: chunks are not empty.
        if len == 0 {
            return Err(DecodeError::UnexpectedFrame { kind: FrameKind::Chunk, reason: "empty chunk" });
        }
        // SPEC.md §7.2: chunks of an item come in increasing offset order and never overlap.
        if offset < open.next {
            return Err(DecodeError::ChunkOverlap { item, offset, next: open.next });
        }
        // SPEC.md §7.2: without a resume request, chunks leave no gaps.
        if offset > open.next && !allow_gaps {
            return Err(DecodeError::ChunkGap { item, offset, next: open.next });
        }
        // SPEC.md §7.2: a chunk lies within its item.
        let end = offset.checked_add(len).filter(|&e| e <= open.len);
        let Some(end) = end else {
            return Err(DecodeError::ChunkOutOfBounds { item, offset, len, item_len: open.len });
        };
        // SPEC.md §7.2: chunk boundaries fall on record boundaries.
        if offset % open.record != 0 || (len % open.record != 0 && end != open.len) {
            return Err(DecodeError::ChunkMisaligned { item, offset, len, unit: open.record });
        }
        open.next = end;
        open.received += len;
        open.crc.push(crc, len);
        Ok(SequencerEvent::None)
    }

    fn item_end(&mut self, item: u32, len: u64, crc: u32) -> Result<SequencerEvent, DecodeError> {
        let open = match self.open.take() {
            Some(o) if o.item == item => o,
            other => {
                self.open = other;
                return Err(DecodeError::UnexpectedFrame { kind: FrameKind::ItemEnd, reason: "no such item is open" });
            }
        };
        // SPEC.md §7.3: the item end repeats the item's length.
        if len != open.len {
            return Err(DecodeError::ItemEndMismatch { item, field: "length", claimed: len, actual: open.len });
        }
        if !self.allow_gaps {
            // SPEC.md §7.3: every byte of the item arrived ...
            if open.received != len {
                return Err(DecodeError::ItemEndMismatch {
                    item,
                    field: "length",
                    claimed: len,
                    actual: open.received,
                });
            }
            // SPEC.md §7.3: ... and the item's CRC matches.
            if open.crc.crc() != crc {
                return Err(DecodeError::ItemEndMismatch {
                    item,
                    field: "crc",
                    claimed: crc.into(),
                    actual: open.crc.crc().into(),
                });
            }
        }
        self.object.push(crc, len);
        self.next_item += 1;
        Ok(SequencerEvent::ItemDone { item, len, crc })
    }

    fn object_end(&mut self, items: u64, len: u64, crc: u32) -> Result<SequencerEvent, DecodeError> {
        if self.open.is_some() {
            return Err(DecodeError::UnexpectedFrame { kind: FrameKind::ObjectEnd, reason: "an item is still open" });
        }
        let mismatch =
            |field, claimed: u64, actual: u64| Err(DecodeError::ObjectEndMismatch { field, claimed, actual });
        // SPEC.md §7.4: counts agree with what was received and declared.
        if items != self.next_item {
            return mismatch("items", items, self.next_item);
        }
        if let Some(declared) = self.declared_items {
            if declared != self.next_item {
                return mismatch("items", declared, self.next_item);
            }
        }
        if len != self.total_len {
            return mismatch("length", len, self.total_len);
        }
        if let Some(declared) = self.declared_len {
            if declared != self.total_len {
                return mismatch("length", declared, self.total_len);
            }
        }
        // SPEC.md §7.4: the object CRC is the combination of the item CRCs.
        if crc != self.object.crc() {
            return mismatch("crc", crc.into(), self.object.crc().into());
        }
        self.state = State::Done;
        Ok(SequencerEvent::ObjectDone)
    }
}

impl Drop for Sequencer {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give(self.charged);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::wire::test_util::{sequence, two_tensors};
    use crate::wire::{Abort, AbortCode, Chunk, Dtype, Encoding, ItemEnd, ObjectEnd, ObjectHeader};

    fn replace(mut frames: Vec<Frame>, at: usize, f: Frame) -> Vec<Frame> {
        frames[at] = f;
        frames
    }

    fn chunk(item: u32, offset: u64, data: &'static [u8]) -> Frame {
        Frame::Chunk(Chunk::new(item, offset, Bytes::from_static(data)))
    }

    #[test]
    fn accepts_valid_object() {
        assert_eq!(sequence(&two_tensors()), Ok(()));
    }

    #[test]
    fn rejects_frame_before_object_header() {
        let frames = two_tensors();
        assert!(matches!(
            sequence(&frames[1..]),
            Err(DecodeError::UnexpectedFrame { kind: FrameKind::ItemHeader, .. })
        ));
    }

    #[test]
    fn rejects_second_object_header() {
        let mut frames = two_tensors();
        frames.insert(1, frames[0].clone());
        assert!(matches!(sequence(&frames), Err(DecodeError::UnexpectedFrame { kind: FrameKind::ObjectHeader, .. })));
    }

    #[test]
    fn rejects_chunk_before_item_header() {
        let mut frames = two_tensors();
        frames.remove(1);
        assert_eq!(sequence(&frames), Err(DecodeError::ChunkWithoutItem { item: 0, open: None }));
    }

    #[test]
    fn rejects_chunk_for_other_item() {
        let frames = replace(two_tensors(), 2, chunk(1, 0, &[0; 8]));
        assert_eq!(sequence(&frames), Err(DecodeError::ChunkWithoutItem { item: 1, open: Some(0) }));
    }

    #[test]
    fn rejects_item_index_out_of_order() {
        let mut frames = two_tensors();
        if let Frame::ItemHeader(h) = &mut frames[4] {
            h.item = 2;
        }
        assert!(matches!(
            sequence(&frames),
            Err(DecodeError::UnexpectedFrame { reason: "item index out of order", .. })
        ));
    }

    #[test]
    fn rejects_item_header_inside_item() {
        let mut frames = two_tensors();
        frames.remove(3); // item end of item 0
        assert!(matches!(sequence(&frames), Err(DecodeError::UnexpectedFrame { kind: FrameKind::ItemHeader, .. })));
    }

    #[test]
    fn rejects_overlapping_chunk() {
        let frames = replace(two_tensors(), 6, chunk(1, 8, &[0; 16]));
        assert_eq!(sequence(&frames), Err(DecodeError::ChunkOverlap { item: 1, offset: 8, next: 12 }));
    }

    #[test]
    fn rejects_gap_in_complete_object() {
        let frames = replace(two_tensors(), 6, chunk(1, 16, &[0; 8]));
        assert_eq!(sequence(&frames), Err(DecodeError::ChunkGap { item: 1, offset: 16, next: 12 }));
    }

    #[test]
    fn allows_gap_when_resuming_and_trusts_item_crc() -> Result<(), DecodeError> {
        let mut frames = two_tensors();
        frames.remove(5); // first chunk of item 1: the receiver already has it
        let mut seq = Sequencer::new(Limits::default()).allowing_gaps();
        for f in &frames {
            seq.handle_frame(f)?;
        }
        seq.finish()
    }

    #[test]
    fn rejects_chunk_past_item_end() {
        let frames = replace(two_tensors(), 6, chunk(1, 12, &[0; 13]));
        assert_eq!(
            sequence(&frames),
            Err(DecodeError::ChunkOutOfBounds { item: 1, offset: 12, len: 13, item_len: 24 })
        );
    }

    #[test]
    fn rejects_empty_chunk() {
        let mut frames = two_tensors();
        frames.insert(6, chunk(1, 12, &[]));
        assert!(matches!(sequence(&frames), Err(DecodeError::UnexpectedFrame { reason: "empty chunk", .. })));
    }

    #[test]
    fn rejects_chunk_not_on_record_boundary() {
        let mut enc = crate::wire::ObjectEncoder::new();
        let nf4 = Encoding::Nf4 { block_size: 64, nested: false };
        let mut item = ItemHeader::tensor(0, "q", Dtype::F32, vec![128]);
        item.len = nf4.encoded_len(128, Dtype::F32).unwrap_or(0);
        item.encoding = nf4;
        let frames = [
            enc.object_header(ObjectHeader::new("m", Mode::Container)),
            enc.item_header(item),
            enc.chunk(Bytes::from_static(&[0; 30])),
        ];
        let frames: Vec<Frame> = frames.into_iter().filter_map(Result::ok).collect();
        assert_eq!(sequence(&frames), Err(DecodeError::ChunkMisaligned { item: 0, offset: 0, len: 30, unit: 36 }));
    }

    #[test]
    fn rejects_duplicate_item_name() {
        let mut frames = two_tensors();
        if let Frame::ItemHeader(h) = &mut frames[4] {
            h.name = "a".into();
        }
        assert_eq!(sequence(&frames), Err(DecodeError::DuplicateName { item: 1, name: "a".into() }));
    }

    #[test]
    fn rejects_item_end_crc_mismatch() {
        let frames = replace(two_tensors(), 3, Frame::ItemEnd(ItemEnd { item: 0, len: 8, crc: 1 }));
        assert!(matches!(sequence(&frames), Err(DecodeError::ItemEndMismatch { item: 0, field: "crc", .. })));
    }

    #[test]
    fn rejects_item_end_before_all_bytes() {
        let mut frames = two_tensors();
        frames.remove(6);
        assert_eq!(
            sequence(&frames),
            Err(DecodeError::ItemEndMismatch { item: 1, field: "length", claimed: 24, actual: 12 })
        );
    }

    #[test]
    fn rejects_item_end_with_other_length() {
        let frames = replace(two_tensors(), 3, Frame::ItemEnd(ItemEnd { item: 0, len: 9, crc: 0 }));
        assert!(matches!(sequence(&frames), Err(DecodeError::ItemEndMismatch { field: "length", .. })));
    }

    #[test]
    fn rejects_object_end_with_wrong_count() {
        let frames = replace(two_tensors(), 8, Frame::ObjectEnd(ObjectEnd { items: 3, len: 32, crc: 0 }));
        assert_eq!(sequence(&frames), Err(DecodeError::ObjectEndMismatch { field: "items", claimed: 3, actual: 2 }));
    }

    #[test]
    fn rejects_object_end_with_wrong_crc() {
        let Some(Frame::ObjectEnd(end)) = two_tensors().pop() else { panic!("last frame is the object end") };
        let bad = ObjectEnd { crc: end.crc ^ 1, ..end };
        let frames = replace(two_tensors(), 8, Frame::ObjectEnd(bad));
        assert!(matches!(sequence(&frames), Err(DecodeError::ObjectEndMismatch { field: "crc", .. })));
    }

    #[test]
    fn rejects_object_end_inside_item() {
        let mut frames = two_tensors();
        frames.remove(7);
        assert!(matches!(sequence(&frames), Err(DecodeError::UnexpectedFrame { kind: FrameKind::ObjectEnd, .. })));
    }

    #[test]
    fn rejects_more_items_than_declared() {
        let frames =
            replace(two_tensors(), 0, Frame::ObjectHeader(ObjectHeader::new("model", Mode::Container).with_items(1)));
        assert!(matches!(sequence(&frames), Err(DecodeError::LimitExceeded { what: "item count", .. })));
    }

    #[test]
    fn rejects_fewer_items_than_declared() {
        let frames =
            replace(two_tensors(), 0, Frame::ObjectHeader(ObjectHeader::new("model", Mode::Container).with_items(3)));
        assert_eq!(sequence(&frames), Err(DecodeError::ObjectEndMismatch { field: "items", claimed: 3, actual: 2 }));
    }

    #[test]
    fn rejects_total_length_over_declared() {
        let header = ObjectHeader::new("model", Mode::Container).with_total_len(31);
        let frames = replace(two_tensors(), 0, Frame::ObjectHeader(header));
        assert!(matches!(sequence(&frames), Err(DecodeError::LimitExceeded { what: "object length", .. })));
    }

    #[test]
    fn rejects_frame_after_object_end() {
        let mut frames = two_tensors();
        frames.push(frames[1].clone());
        assert!(matches!(sequence(&frames), Err(DecodeError::UnexpectedFrame { reason: "the object has ended", .. })));
    }

    #[test]
    fn items_must_match_the_index() {
        let index = vec![
            crate::wire::IndexEntry { name: "a".into(), dtype: Dtype::F32, shape: vec![2] },
            crate::wire::IndexEntry { name: "b".into(), dtype: Dtype::F32, shape: vec![2, 3] },
        ];
        let mut header = ObjectHeader::new("model", Mode::Container).with_items(2);
        header.index = Some(index.clone());
        let frames = replace(two_tensors(), 0, Frame::ObjectHeader(header.clone()));
        assert_eq!(sequence(&frames), Ok(()));
        let mut wrong = index;
        wrong[1].shape = vec![6];
        header.index = Some(wrong);
        let frames = replace(two_tensors(), 0, Frame::ObjectHeader(header));
        assert!(matches!(sequence(&frames), Err(DecodeError::InconsistentItem { item: 1, .. })));
    }

    #[test]
    fn rejects_truncated_object() {
        let mut frames = two_tensors();
        frames.pop();
        assert_eq!(sequence(&frames), Err(DecodeError::Truncated));
    }

    #[test]
    fn abort_ends_the_object() {
        let mut frames = two_tensors();
        frames.truncate(5);
        frames.push(Frame::Abort(Abort::new(AbortCode::CANCELLED, "stop")));
        assert_eq!(sequence(&frames), Ok(()));
    }

    #[test]
    fn container_items_need_a_dtype() {
        let frames = replace(two_tensors(), 1, Frame::ItemHeader(ItemHeader::bytes(0, "a", 8)));
        assert!(matches!(sequence(&frames), Err(DecodeError::InconsistentItem { item: 0, .. })));
    }

    #[test]
    fn rejects_names_beyond_a_shared_budget_and_gives_back_on_drop() {
        let server = super::super::Budget::new(1000);
        let frames = |name: &str| {
            let mut enc = crate::wire::ObjectEncoder::new();
            vec![
                enc.object_header(crate::wire::ObjectHeader::new("m", Mode::File)).expect("h"),
                enc.item_header(ItemHeader::bytes(0, name, 0)).expect("i"),
            ]
        };
        let mut a = Sequencer::new(Limits::default()).with_budget(server.child(1000));
        let mut b = Sequencer::new(Limits::default()).with_budget(server.child(1000));
        for f in frames(&"a".repeat(600)) {
            a.handle_frame(&f).expect("first stream fits");
        }
        let mut refused = None;
        for f in frames(&"b".repeat(600)) {
            refused = b.handle_frame(&f).err();
        }
        assert!(matches!(refused, Some(DecodeError::LimitExceeded { .. })), "{refused:?}");
        drop(a);
        drop(b);
        assert_eq!(server.used(), 0);
    }

    #[test]
    fn rejects_names_beyond_budget() {
        let mut seq = Sequencer::new(Limits { max_names_total: 1, ..Limits::default() });
        let r = [
            two_tensors()[0].clone(),
            two_tensors()[1].clone(),
            two_tensors()[2].clone(),
            two_tensors()[3].clone(),
            two_tensors()[4].clone(),
        ]
        .iter()
        .try_for_each(|f| seq.handle_frame(f).map(drop));
        assert!(matches!(r, Err(DecodeError::LimitExceeded { what: "total name bytes", .. })));
    }
}

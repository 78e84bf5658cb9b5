//! [`Assembler`]: sans-IO reassembly of an object's items from chunk frames.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use bytes::Bytes;

use super::RangeSet;
use crate::wire::crc::Combined;
use crate::wire::{Abort, DecodeError, Frame, FrameKind, ItemHeader, ObjectEnd, ObjectHeader};

/// What the assembler tells its sink, in order.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The object header arrived.
    Object(ObjectHeader),
    /// An item was announced; `position` is where its data starts in the
    /// concatenation of all items (the output file of a file-mode object).
    Item {
        /// The item header.
        header: ItemHeader,
        /// Offset of the item's first byte in the concatenated output.
        position: u64,
    },
    /// Bytes to place.
    Data {
        /// Item index.
        item: u32,
        /// Offset within the item.
        offset: u64,
        /// Offset within the concatenated output.
        position: u64,
        /// The bytes (not copied since the decoder split them off).
        data: Bytes,
    },
    /// An item's end arrived; every byte of it has been placed.
    ItemDone {
        /// Item index.
        item: u32,
        /// Its length.
        len: u64,
        /// Its CRC-32 as the sender computed it.
        crc: u32,
    },
    /// The object end arrived and every item is complete.
    Done(ObjectEnd),
    /// The sender aborted.
    Aborted(Abort),
}

/// Places the chunks of an object: records, per item, which byte ranges have
/// arrived, and turns frames into [`Event`]s for a sink.
///
/// Sans-IO, in quinn's style: feed frames with [`Assembler::handle_frame`],
/// then drain [`Assembler::poll_event`] until it returns `None`. The frames
/// normally come from a [`FrameDecoder`](crate::wire::FrameDecoder), which
/// has checked CRCs and ordering within one stream; the assembler adds what
/// spans streams: a chunk placed twice is harmless (placement is idempotent),
/// an item announced again must match, and [`Assembler::missing`] says which
/// ranges to ask for when resuming (SPEC.md §8.4).
///
/// ```
/// use bytes::Bytes;
/// use tensorwire::recv::{Assembler, Event};
/// use tensorwire::wire::{ItemHeader, Mode, ObjectEncoder, ObjectHeader};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut enc = ObjectEncoder::new();
/// let mut asm = Assembler::new();
/// asm.handle_frame(enc.object_header(ObjectHeader::new("f", Mode::File))?)?;
/// asm.handle_frame(enc.item_header(ItemHeader::bytes(0, "f", 4))?)?;
/// asm.handle_frame(enc.chunk(Bytes::from_static(b"abcd"))?)?;
/// let mut writes = 0;
/// while let Some(ev) = asm.poll_event() {
///     writes += matches!(ev, Event::Data { .. }) as usize;
/// }
/// assert_eq!(writes, 1);
/// assert!(asm.missing(0).is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
pub struct Assembler {
    items: Vec<Ledger>,
    next_position: u64,
    events: VecDeque<Event>,
    received: u64,
    done: bool,
    /// Chunks that arrived damaged in this stream, by (item, offset), with
    /// their error: their ranges are fetched again (SPEC.md §3.2, §8.4).
    damaged: BTreeMap<(u32, u64), DecodeError>,
}

#[derive(Debug)]
struct Ledger {
    header: ItemHeader,
    position: u64,
    have: RangeSet,
    /// Placed chunks: offset → (length, CRC-32), to verify the item's CRC
    /// without its bytes, whichever streams they came from.
    chunks: BTreeMap<u64, (u64, u32)>,
    /// The item's CRC once verified.
    verified: Option<u32>,
    /// Restored from a record that knew only the name and length: the
    /// sender's header, when it comes, replaces it.
    restored: bool,
}

impl Ledger {
    /// The CRC of the whole item from its chunks' CRCs, when they tile it
    /// exactly.
    fn tiled_crc(&self) -> Option<u32> {
        let mut crc = Combined::new();
        for (&offset, &(len, c)) in &self.chunks {
            if offset != crc.len() {
                return None;
            }
            crc.push(c, len);
        }
        (crc.len() == self.header.len).then(|| crc.crc())
    }

    /// Forgets every byte: the item is needed whole again.
    fn reset(&mut self) -> u64 {
        let had = self.have.len();
        self.have = RangeSet::new();
        self.chunks.clear();
        self.verified = None;
        had
    }
}

impl Assembler {
    /// An empty assembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one frame.
    ///
    /// # Errors
    ///
    /// [`DecodeError::ChunkWithoutItem`] for a chunk of an unknown item,
    /// [`DecodeError::ChunkOutOfBounds`] for bytes past an item's end,
    /// [`DecodeError::InconsistentItem`] for an item announced twice with
    /// different headers, [`DecodeError::ItemEndMismatch`] for an item end
    /// before all of the item was placed.
    pub fn handle_frame(&mut self, frame: Frame) -> Result<(), DecodeError> {
        match frame {
            Frame::ObjectHeader(h) => {
                // A new stream: only its own damaged chunks count.
                self.damaged.clear();
                self.events.push_back(Event::Object(h));
            }
            Frame::ItemHeader(h) => self.item_header(h)?,
            Frame::Chunk(c) => self.chunk(c.item, c.offset, c.data, c.crc)?,
            Frame::ItemEnd(e) => self.item_end(e.item, e.len, e.crc)?,
            Frame::ObjectEnd(e) => {
                // SPEC.md §3.2 rule 3, §8.4: the ranges of damaged chunks are
                // all that is missing: they are to be fetched again.
                if let Some(damage) = self.only_damage_missing() {
                    return Err(damage);
                }
                // SPEC.md §7.4: the object is complete only when every item is.
                if (0..self.items.len()).any(|i| !self.missing(i as u32).is_empty()) {
                    return Err(DecodeError::UnexpectedFrame {
                        kind: FrameKind::ObjectEnd,
                        reason: "an item is incomplete",
                    });
                }
                self.done = true;
                self.events.push_back(Event::Done(e));
            }
            Frame::Abort(a) => self.events.push_back(Event::Aborted(a)),
        }
        Ok(())
    }

    /// A chunk arrived damaged (`damage` is its
    /// [`DecodeError::PayloadChecksum`]; anything else is ignored) and was
    /// skipped by a decoder that goes on
    /// ([`FrameDecoder::skipping_damaged_chunks`](crate::wire::FrameDecoder::skipping_damaged_chunks)):
    /// its item's end is then taken without the item complete, if the
    /// damaged chunks account for every gap, and the object end fails with
    /// the first damage, so that only those ranges are asked for again.
    pub fn handle_damaged(&mut self, damage: DecodeError) {
        if let DecodeError::PayloadChecksum { item, offset, .. } = damage {
            self.damaged.insert((item, offset), damage);
        }
    }

    /// The first damage, when the gaps of damaged chunks are all that is
    /// missing.
    fn only_damage_missing(&self) -> Option<DecodeError> {
        let first = self.damaged.values().next()?.clone();
        let all = (0..self.items.len() as u32).all(|i| self.gaps_are_damage(i));
        all.then_some(first)
    }

    /// Whether every gap of `item` starts at a chunk that arrived damaged.
    fn gaps_are_damage(&self, item: u32) -> bool {
        self.missing(item).iter().all(|r| self.damaged.contains_key(&(item, r.start)))
    }

    /// The next event for the sink.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The byte ranges of `item` not yet placed (all of it if unknown).
    pub fn missing(&self, item: u32) -> Vec<Range<u64>> {
        match self.items.get(item as usize) {
            Some(l) => l.have.gaps(0..l.header.len),
            None => Vec::new(),
        }
    }

    /// Every chunk placed so far, item by item in offset order: (item,
    /// offset, length, CRC-32). With [`Assembler::restore`] this carries the
    /// ledger across processes.
    pub fn chunks(&self) -> Vec<(u32, u64, u64, u32)> {
        let mut out = Vec::new();
        for (i, l) in self.items.iter().enumerate() {
            out.extend(l.chunks.iter().map(|(&o, &(len, crc))| (i as u32, o, len, crc)));
        }
        out
    }

    /// Starts from an earlier run's record: `items` announced (indices 0..,
    /// in order) and `chunks` placed, no events. Call on a new assembler.
    ///
    /// # Errors
    ///
    /// As [`Assembler::handle_frame`] for item headers and chunks that do
    /// not fit (a damaged record).
    pub fn restore(&mut self, items: Vec<ItemHeader>, chunks: &[(u32, u64, u64, u32)]) -> Result<(), DecodeError> {
        for h in items {
            self.item_header(h)?;
        }
        self.events.clear();
        for l in &mut self.items {
            l.restored = true;
        }
        for &(item, offset, len, crc) in chunks {
            let ledger = self.items.get_mut(item as usize).ok_or(DecodeError::ChunkWithoutItem { item, open: None })?;
            let item_len = ledger.header.len;
            let Some(end) = offset.checked_add(len).filter(|&e| e <= item_len && len > 0) else {
                return Err(DecodeError::ChunkOutOfBounds { item, offset, len, item_len });
            };
            let before = ledger.have.len();
            ledger.have.insert(offset..end);
            ledger.chunks.insert(offset, (len, crc));
            self.received += ledger.have.len() - before;
        }
        Ok(())
    }

    /// Items announced so far.
    pub fn items(&self) -> u32 {
        self.items.len() as u32
    }

    /// Whether item `item`'s CRC has been verified over everything placed.
    pub fn is_verified(&self, item: u32) -> bool {
        self.items.get(item as usize).is_some_and(|l| l.verified.is_some())
    }

    /// Bytes placed so far (each byte counted once).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Whether the object end arrived with every item complete.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn ledger(&self, item: u32, kind: FrameKind) -> Result<&Ledger, DecodeError> {
        self.items.get(item as usize).ok_or(DecodeError::UnexpectedFrame { kind, reason: "unknown item" })
    }

    fn item_header(&mut self, h: ItemHeader) -> Result<(), DecodeError> {
        let index = h.item as usize;
        if let Some(known) = self.items.get_mut(index) {
            // SPEC.md §8.4: an item restored from a record (name and length)
            // gets its full header from the first stream that announces it.
            if known.restored && known.header.name == h.name && known.header.len == h.len {
                known.restored = false;
                known.header = h.clone();
                self.events.push_back(Event::Item { header: h, position: known.position });
                return Ok(());
            }
            // Another stream (a resume) announces the same item: it must agree.
            if known.header != h {
                return Err(DecodeError::InconsistentItem {
                    item: h.item,
                    reason: "announced again with a different header".into(),
                });
            }
            return Ok(());
        }
        if index != self.items.len() {
            return Err(DecodeError::UnexpectedFrame {
                kind: FrameKind::ItemHeader,
                reason: "item index out of order",
            });
        }
        let position = self.next_position;
        self.next_position = self.next_position.saturating_add(h.len);
        self.events.push_back(Event::Item { header: h.clone(), position });
        self.items.push(Ledger {
            header: h,
            position,
            have: RangeSet::new(),
            chunks: BTreeMap::new(),
            verified: None,
            restored: false,
        });
        Ok(())
    }

    fn item_end(&mut self, item: u32, len: u64, crc: u32) -> Result<(), DecodeError> {
        self.ledger(item, FrameKind::ItemEnd)?;
        let ledger = &mut self.items[item as usize];
        let item_len = ledger.header.len;
        let complete = ledger.have.contains(0..item_len);
        // SPEC.md §8.4: an item whose only gaps are damaged chunks ends
        // later, when they were fetched again (its end is sent again then).
        if !complete && self.gaps_are_damage(item) && !self.damaged.is_empty() {
            return Ok(());
        }
        let ledger = &mut self.items[item as usize];
        // SPEC.md §7.3: the item is complete only when every byte is placed.
        if !complete {
            let actual = ledger.have.len();
            return Err(DecodeError::ItemEndMismatch { item, field: "length", claimed: item_len, actual });
        }
        // SPEC.md §7.3, §8.4: the CRC is checked over the assembled item,
        // whichever streams its chunks came from. A mismatch means some
        // placed chunk is wrong: the item is forgotten and needed whole.
        let actual = ledger.tiled_crc();
        if actual != Some(crc) {
            self.received -= self.items[item as usize].reset();
            return Err(DecodeError::ItemEndMismatch {
                item,
                field: "crc",
                claimed: crc.into(),
                actual: actual.map_or(u64::MAX, u64::from),
            });
        }
        // SPEC.md §8.4: an item verified by an earlier stream must not change.
        if ledger.verified.is_some_and(|v| v != crc) {
            return Err(DecodeError::InconsistentItem {
                item,
                reason: "its CRC changed since an earlier stream".into(),
            });
        }
        ledger.verified = Some(crc);
        self.events.push_back(Event::ItemDone { item, len, crc });
        Ok(())
    }

    fn chunk(&mut self, item: u32, offset: u64, data: Bytes, crc: u32) -> Result<(), DecodeError> {
        let Some(ledger) = self.items.get_mut(item as usize) else {
            return Err(DecodeError::ChunkWithoutItem { item, open: None });
        };
        let len = data.len() as u64;
        let item_len = ledger.header.len;
        let Some(end) = offset.checked_add(len).filter(|&e| e <= item_len) else {
            return Err(DecodeError::ChunkOutOfBounds { item, offset, len, item_len });
        };
        // A chunk placed again at the same offset replaces the record; one
        // that overlaps others differently leaves them out, and the item's
        // CRC can then not be verified (it is needed again, whole).
        let overlapped: Vec<u64> = ledger
            .chunks
            .range(..end)
            .filter(|(&o, &(l, _))| o + l > offset && !(o == offset && l == len))
            .map(|(&o, _)| o)
            .collect();
        for o in overlapped {
            ledger.chunks.remove(&o);
        }
        ledger.chunks.insert(offset, (len, crc));
        let before = ledger.have.len();
        ledger.have.insert(offset..end);
        self.received += ledger.have.len() - before;
        let position = ledger.position + offset;
        self.damaged.remove(&(item, offset));
        self.events.push_back(Event::Data { item, offset, position, data });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::wire::{Chunk, ItemEnd, Mode, ObjectEnd};

    fn frames_for(lens: &[u64]) -> Vec<Frame> {
        let mut out = vec![Frame::ObjectHeader(ObjectHeader::new("o", Mode::File))];
        for (i, &len) in lens.iter().enumerate() {
            out.push(Frame::ItemHeader(ItemHeader::bytes(i as u32, format!("i{i}"), len)));
        }
        out
    }

    proptest! {
        /// Chunks of several items placed in any order, with repeats, against
        /// a naive model of one bool per byte.
        #[test]
        fn placement_matches_reference_model(
            lens in prop::collection::vec(1u64..300, 1..4),
            ops in prop::collection::vec((0usize..4, 0u64..300, 1u64..64), 0..80),
        ) {
            let mut asm = Assembler::new();
            for f in frames_for(&lens) {
                asm.handle_frame(f).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            let mut model: Vec<Vec<bool>> = lens.iter().map(|&l| vec![false; l as usize]).collect();
            let mut output: Vec<Option<u8>> = vec![None; lens.iter().sum::<u64>() as usize];
            for (item, offset, len) in ops {
                let item = item % lens.len();
                let fits = offset + len <= lens[item];
                let data: Vec<u8> = (offset..offset + len).map(|b| (b as u8) ^ item as u8).collect();
                let r = asm.handle_frame(Frame::Chunk(Chunk::new(item as u32, offset, data.into())));
                prop_assert_eq!(r.is_ok(), fits);
                if fits {
                    model[item][offset as usize..(offset + len) as usize].iter_mut().for_each(|b| *b = true);
                }
                while let Some(ev) = asm.poll_event() {
                    if let Event::Data { position, data, .. } = ev {
                        for (i, b) in data.iter().enumerate() {
                            output[position as usize + i] = Some(*b);
                        }
                    }
                }
            }
            let mut position = 0;
            for (item, bytes) in model.iter().enumerate() {
                let gaps: Vec<Range<u64>> = bytes
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| !**b)
                    .fold(Vec::new(), |mut acc: Vec<Range<u64>>, (i, _)| {
                        let i = i as u64;
                        match acc.last_mut() {
                            Some(r) if r.end == i => r.end += 1,
                            _ => acc.push(i..i + 1),
                        }
                        acc
                    });
                prop_assert_eq!(asm.missing(item as u32), gaps);
                for (i, have) in bytes.iter().enumerate() {
                    let expect = have.then_some((i as u8) ^ item as u8);
                    prop_assert_eq!(output[position + i], expect);
                }
                position += bytes.len();
            }
            let placed: usize = model.iter().map(|m| m.iter().filter(|b| **b).count()).sum();
            prop_assert_eq!(asm.received(), placed as u64);
        }
    }

    #[test]
    fn item_end_before_all_bytes_is_rejected() -> Result<(), DecodeError> {
        let mut asm = Assembler::new();
        for f in frames_for(&[10]) {
            asm.handle_frame(f)?;
        }
        asm.handle_frame(Frame::Chunk(Chunk::new(0, 0, Bytes::from_static(&[0; 4]))))?;
        let r = asm.handle_frame(Frame::ItemEnd(ItemEnd { item: 0, len: 10, crc: 0 }));
        assert!(matches!(r, Err(DecodeError::ItemEndMismatch { item: 0, .. })));
        Ok(())
    }

    #[test]
    fn object_end_with_incomplete_item_is_rejected() -> Result<(), DecodeError> {
        let mut asm = Assembler::new();
        for f in frames_for(&[10]) {
            asm.handle_frame(f)?;
        }
        let r = asm.handle_frame(Frame::ObjectEnd(ObjectEnd { items: 1, len: 10, crc: 0 }));
        assert!(r.is_err());
        assert!(!asm.is_done());
        Ok(())
    }

    fn chunk(item: u32, offset: u64, data: &'static [u8]) -> Frame {
        Frame::Chunk(Chunk::new(item, offset, Bytes::from_static(data)))
    }

    fn end(len: u64, data: &[u8]) -> Frame {
        Frame::ItemEnd(ItemEnd { item: 0, len, crc: crc32fast::hash(data) })
    }

    #[test]
    fn item_crc_is_verified_over_chunks_from_two_streams() -> Result<(), DecodeError> {
        let mut asm = Assembler::new();
        for f in frames_for(&[8]) {
            asm.handle_frame(f)?;
        }
        asm.handle_frame(chunk(0, 0, b"abcd"))?;
        // A second stream (a resume) brings the rest, and the header again.
        asm.handle_frame(Frame::ItemHeader(ItemHeader::bytes(0, "i0", 8)))?;
        asm.handle_frame(chunk(0, 4, b"efgh"))?;
        asm.handle_frame(end(8, b"abcdefgh"))?;
        assert!(asm.is_verified(0));
        Ok(())
    }

    #[test]
    fn item_end_with_wrong_crc_forgets_the_item() -> Result<(), DecodeError> {
        let mut asm = Assembler::new();
        for f in frames_for(&[8]) {
            asm.handle_frame(f)?;
        }
        asm.handle_frame(chunk(0, 0, b"abcd"))?;
        asm.handle_frame(chunk(0, 4, b"efgh"))?;
        let r = asm.handle_frame(end(8, b"abcdefgX"));
        assert!(matches!(r, Err(DecodeError::ItemEndMismatch { field: "crc", .. })), "{r:?}");
        // Needed whole again: nothing of it is trusted.
        assert_eq!(asm.missing(0), vec![0..8]);
        assert_eq!(asm.received(), 0);
        assert!(!asm.is_verified(0));
        Ok(())
    }

    #[test]
    fn chunk_boundaries_that_change_leave_the_item_unverifiable() -> Result<(), DecodeError> {
        let mut asm = Assembler::new();
        for f in frames_for(&[8]) {
            asm.handle_frame(f)?;
        }
        asm.handle_frame(chunk(0, 0, b"abcd"))?;
        asm.handle_frame(chunk(0, 4, b"efgh"))?;
        asm.handle_frame(chunk(0, 2, b"cdef"))?;
        let r = asm.handle_frame(end(8, b"abcdefgh"));
        assert!(matches!(r, Err(DecodeError::ItemEndMismatch { field: "crc", .. })), "{r:?}");
        assert_eq!(asm.missing(0), vec![0..8]);
        Ok(())
    }

    #[test]
    fn item_whose_crc_changed_since_an_earlier_stream_is_inconsistent() -> Result<(), DecodeError> {
        let mut asm = Assembler::new();
        for f in frames_for(&[4]) {
            asm.handle_frame(f)?;
        }
        asm.handle_frame(chunk(0, 0, b"abcd"))?;
        asm.handle_frame(end(4, b"abcd"))?;
        asm.handle_frame(chunk(0, 0, b"abcX"))?;
        let r = asm.handle_frame(end(4, b"abcX"));
        assert!(matches!(r, Err(DecodeError::InconsistentItem { .. })), "{r:?}");
        Ok(())
    }

    #[test]
    fn restore_rejects_a_chunk_past_the_item() {
        let mut asm = Assembler::new();
        let r = asm.restore(vec![ItemHeader::bytes(0, "i0", 8)], &[(0, 4, 8, 0)]);
        assert!(matches!(r, Err(DecodeError::ChunkOutOfBounds { .. })), "{r:?}");
    }

    #[test]
    fn restore_rejects_a_chunk_of_an_unknown_item() {
        let mut asm = Assembler::new();
        let r = asm.restore(vec![ItemHeader::bytes(0, "i0", 8)], &[(1, 0, 4, 0)]);
        assert!(matches!(r, Err(DecodeError::ChunkWithoutItem { .. })), "{r:?}");
    }

    #[test]
    fn restored_chunks_are_not_asked_for_and_count_towards_the_crc() -> Result<(), DecodeError> {
        let mut asm = Assembler::new();
        asm.restore(vec![ItemHeader::bytes(0, "i0", 8)], &[(0, 0, 4, crc32fast::hash(b"abcd"))])?;
        assert_eq!(asm.missing(0), vec![4..8]);
        assert!(asm.poll_event().is_none());
        asm.handle_frame(Frame::ItemHeader(ItemHeader::bytes(0, "i0", 8)))?;
        asm.handle_frame(chunk(0, 4, b"efgh"))?;
        asm.handle_frame(end(8, b"abcdefgh"))?;
        assert!(asm.is_verified(0));
        assert_eq!(asm.chunks().len(), 2);
        Ok(())
    }

    #[test]
    fn restored_item_takes_the_senders_header_and_is_announced() -> Result<(), DecodeError> {
        use crate::wire::Dtype;
        let mut asm = Assembler::new();
        asm.restore(vec![ItemHeader::bytes(0, "w", 8)], &[(0, 0, 4, crc32fast::hash(b"abcd"))])?;
        let real = ItemHeader::tensor(0, "w", Dtype::U8, vec![8]);
        asm.handle_frame(Frame::ItemHeader(real.clone()))?;
        assert_eq!(asm.poll_event(), Some(Event::Item { header: real.clone(), position: 0 }));
        // From then on it is known by its full header.
        asm.handle_frame(Frame::ItemHeader(real))?;
        assert!(asm.poll_event().is_none());
        let other = ItemHeader::tensor(0, "w", Dtype::I8, vec![8]);
        assert!(matches!(asm.handle_frame(Frame::ItemHeader(other)), Err(DecodeError::InconsistentItem { .. })));
        Ok(())
    }

    #[test]
    fn restored_item_of_another_length_is_inconsistent() -> Result<(), DecodeError> {
        let mut asm = Assembler::new();
        asm.restore(vec![ItemHeader::bytes(0, "w", 8)], &[(0, 0, 4, 0)])?;
        let r = asm.handle_frame(Frame::ItemHeader(ItemHeader::bytes(0, "w", 9)));
        assert!(matches!(r, Err(DecodeError::InconsistentItem { .. })), "{r:?}");
        Ok(())
    }

    fn damage(item: u32, offset: u64) -> DecodeError {
        DecodeError::PayloadChecksum { item, offset, expected: 1, actual: 2 }
    }

    #[test]
    fn damaged_chunk_defers_the_item_end_and_fails_the_object_end_for_it() -> Result<(), DecodeError> {
        let mut asm = Assembler::new();
        for f in frames_for(&[8]) {
            asm.handle_frame(f)?;
        }
        asm.handle_frame(chunk(0, 0, b"abcd"))?;
        asm.handle_damaged(damage(0, 4));
        asm.handle_frame(end(8, b"abcdefgh"))?;
        assert!(!asm.is_verified(0));
        let r = asm.handle_frame(Frame::ObjectEnd(ObjectEnd { items: 1, len: 8, crc: 0 }));
        assert_eq!(r, Err(damage(0, 4)));
        assert_eq!(asm.missing(0), vec![4..8], "only the damaged chunk is asked for");
        // The next stream brings it, and the item end again.
        asm.handle_frame(chunk(0, 4, b"efgh"))?;
        asm.handle_frame(end(8, b"abcdefgh"))?;
        assert!(asm.is_verified(0));
        Ok(())
    }

    #[test]
    fn gap_that_is_not_a_damaged_chunk_still_fails_the_item_end() -> Result<(), DecodeError> {
        let mut asm = Assembler::new();
        for f in frames_for(&[12]) {
            asm.handle_frame(f)?;
        }
        asm.handle_frame(chunk(0, 0, b"abcd"))?;
        asm.handle_damaged(damage(0, 8));
        // Bytes 4..8 never came, and no damage accounts for them.
        let r = asm.handle_frame(end(12, b"abcdefghijkl"));
        assert!(matches!(r, Err(DecodeError::ItemEndMismatch { field: "length", .. })), "{r:?}");
        Ok(())
    }

    #[test]
    fn item_announced_again_must_match() -> Result<(), DecodeError> {
        let mut asm = Assembler::new();
        for f in frames_for(&[10]) {
            asm.handle_frame(f)?;
        }
        assert!(asm.handle_frame(Frame::ItemHeader(ItemHeader::bytes(0, "i0", 10))).is_ok());
        let r = asm.handle_frame(Frame::ItemHeader(ItemHeader::bytes(0, "i0", 11)));
        assert!(matches!(r, Err(DecodeError::InconsistentItem { .. })));
        Ok(())
    }
}

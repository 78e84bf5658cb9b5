//! [`FrameDecoder`]: bytes in, checked frames out (SPEC.md §2–§7).

use bytes::{Buf, Bytes, BytesMut};

use super::{check_preamble, frame, CodecError, DecodeError, Frame, FrameHeader, Limits, Sequencer, SequencerEvent};
use super::{HEADER_LEN, PREAMBLE_LEN};

/// A push decoder for one object: preamble, then frames.
///
/// It checks every header and payload CRC, every length against [`Limits`]
/// *before* reserving room for it, and the ordering rules through a
/// [`Sequencer`]. The contract is tokio-util's: `Ok(None)` means "need more
/// bytes"; an error ends the object (later calls return it again).
///
/// Payloads are not copied when a frame is already contiguous in the buffer:
/// a chunk's data is split off the buffer and frozen. When a frame arrives
/// in pieces the buffer grows to hold it once (the one copy).
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use tensorwire::wire::{Frame, FrameDecoder, ObjectEncoder, ObjectHeader, ItemHeader, Mode};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut enc = ObjectEncoder::new();
/// let mut buf = BytesMut::new();
/// buf.extend_from_slice(&tensorwire::wire::preamble());
/// for f in [
///     enc.object_header(ObjectHeader::new("greeting", Mode::File))?,
///     enc.item_header(ItemHeader::bytes(0, "greeting", 5))?,
///     enc.chunk(Bytes::from_static(b"hello"))?,
///     enc.item_end()?,
///     enc.object_end()?,
/// ] {
///     f.encode(&mut buf);
/// }
/// let mut dec = FrameDecoder::new();
/// let mut frames = Vec::new();
/// while let Some(f) = dec.decode_frame(&mut buf)? {
///     frames.push(f);
/// }
/// dec.finish(&buf)?;
/// assert!(matches!(&frames[2], Frame::Chunk(c) if &c.data[..] == b"hello"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    limits: Limits,
    state: State,
    seq: Sequencer,
    failed: Option<DecodeError>,
    /// Damaged chunks that may still be skipped ([`FrameDecoder::skipping_damaged_chunks`]).
    skips_left: u32,
    /// The last error was a skipped chunk: the object goes on.
    skipped: bool,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Preamble,
    Head,
    Payload(FrameHeader),
    Done,
}

impl FrameDecoder {
    /// A decoder with default [`Limits`] for a complete object.
    pub fn new() -> Self {
        Self::with_sequencer(Limits::default(), Sequencer::new(Limits::default()))
    }

    /// A decoder with the given limits for a complete object.
    pub fn with_limits(limits: Limits) -> Self {
        Self::with_sequencer(limits, Sequencer::new(limits))
    }

    /// A decoder whose ordering rules are checked by `seq` (for example one
    /// built with [`Sequencer::allowing_gaps`]).
    pub fn with_sequencer(limits: Limits, seq: Sequencer) -> Self {
        FrameDecoder { limits, state: State::Preamble, seq, failed: None, skips_left: 0, skipped: false }
    }

    /// Charges the names the decoder remembers to `budget` as well (see
    /// [`Sequencer::with_budget`]).
    pub fn with_budget(mut self, budget: super::Budget) -> Self {
        self.seq = std::mem::replace(&mut self.seq, Sequencer::new(self.limits)).with_budget(budget);
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the object end (or an abort) has been decoded.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Decodes the next frame from `src`, consuming its bytes.
    ///
    /// # Errors
    ///
    /// Any [`DecodeError`]; after one, every later call returns it again.
    pub fn decode_frame(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        self.sticky(src)
    }

    /// Lets up to `max` chunks whose payload CRC fails be skipped instead of
    /// ending the object (SPEC.md §3.2 rule 3: the header was intact, so the
    /// chunk's item and offset are trustworthy and that range may be fetched
    /// again, §8.4). Each one is returned as its
    /// [`DecodeError::PayloadChecksum`], after which decoding goes on with
    /// the next frame. The chunk's bytes are never handed out, and the
    /// sequencer does not see it: give it one that allows gaps
    /// ([`Sequencer::allowing_gaps`]); the receiver must hold the item's end
    /// until the range is fetched again.
    pub fn skipping_damaged_chunks(mut self, max: u32) -> Self {
        self.skips_left = max;
        self
    }

    /// Runs one step, remembering an error so that it ends the object
    /// (unless it was a skipped chunk).
    fn sticky<S: Source>(&mut self, src: &mut S) -> Result<Option<Frame>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.step(src).inspect_err(|e| {
            if !std::mem::take(&mut self.skipped) {
                self.failed = Some(e.clone());
            }
        })
    }

    /// Decodes the next frame, or the fact that the stream ended (SPEC.md §7.5).
    ///
    /// # Errors
    ///
    /// As [`FrameDecoder::decode_frame`]; and at end of stream,
    /// [`DecodeError::UnexpectedEof`] inside a frame or
    /// [`DecodeError::Truncated`] before the object end.
    pub fn decode_frame_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        match self.decode_frame(src)? {
            Some(f) => Ok(Some(f)),
            None => {
                self.finish(src)?;
                Ok(None)
            }
        }
    }

    /// Checks that the stream may end with `rest` left undecoded.
    ///
    /// # Errors
    ///
    /// [`DecodeError::UnexpectedEof`] with the bytes missing from a partial
    /// preamble or frame, [`DecodeError::Truncated`] before the object end.
    pub fn finish(&self, rest: &[u8]) -> Result<(), DecodeError> {
        self.finish_with(rest.len())
    }

    /// [`FrameDecoder::finish`] for a receiver that holds the `rest` bytes
    /// in pieces and only knows how many there are.
    ///
    /// # Errors
    ///
    /// As [`FrameDecoder::finish`].
    pub fn finish_with(&self, rest: usize) -> Result<(), DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let needed = match self.state {
            State::Preamble => PREAMBLE_LEN,
            State::Head if rest == 0 => return self.seq.finish(),
            State::Head => HEADER_LEN,
            State::Payload(h) => h.len as usize,
            State::Done if rest == 0 => return Ok(()),
            State::Done => return Err(DecodeError::TrailingData),
        };
        Err(DecodeError::UnexpectedEof { needed: needed.saturating_sub(rest) as u64 })
    }

    /// How many bytes the decoder needs in its source before it can take
    /// its next step: a preamble, a header, or the current frame's payload
    /// (already checked against the limits). A receiver that gathers a
    /// straddling frame in pieces uses it to know when all have arrived.
    pub fn awaiting(&self) -> usize {
        match self.state {
            State::Preamble => PREAMBLE_LEN,
            State::Head => HEADER_LEN,
            State::Payload(h) => h.len as usize,
            State::Done => 0,
        }
    }

    /// Decodes the next frame from `src` without copying: for a receiver
    /// that gets the stream as a sequence of [`Bytes`] (HTTP/2 DATA frames).
    /// Consumes what it decodes, including a header whose payload is not
    /// complete yet; the caller moves whatever is left into the buffer it
    /// passes to [`FrameDecoder::decode_frame`] next.
    ///
    /// # Errors
    ///
    /// As [`FrameDecoder::decode_frame`].
    pub fn decode_frame_bytes(&mut self, src: &mut Bytes) -> Result<Option<Frame>, DecodeError> {
        self.sticky(src)
    }

    fn step<S: Source>(&mut self, src: &mut S) -> Result<Option<Frame>, DecodeError> {
        loop {
            match self.state {
                State::Preamble => {
                    let Some(p) = src.bytes().get(..PREAMBLE_LEN) else {
                        src.reserve_total(PREAMBLE_LEN);
                        return Ok(None);
                    };
                    let mut pre = [0u8; PREAMBLE_LEN];
                    pre.copy_from_slice(p);
                    check_preamble(&pre)?;
                    src.skip(PREAMBLE_LEN);
                    self.state = State::Head;
                }
                State::Head => {
                    let Some(h) = src.bytes().get(..HEADER_LEN) else {
                        src.reserve_total(HEADER_LEN);
                        return Ok(None);
                    };
                    let mut head = [0u8; HEADER_LEN];
                    head.copy_from_slice(h);
                    let head = FrameHeader::decode(&head)?;
                    // SPEC.md §6: the payload length is checked before any room is reserved.
                    frame::check_len(head, &self.limits)?;
                    src.skip(HEADER_LEN);
                    self.state = State::Payload(head);
                }
                State::Payload(head) => {
                    let len = head.len as usize;
                    if src.bytes().len() < len {
                        // Room for the payload grows with the bytes that
                        // arrive (the buffer's own doubling), never from the
                        // declared length: a header that claims 16 MiB and
                        // sends one byte pins one byte.
                        return Ok(None);
                    }
                    let payload = src.split_payload(len);
                    self.state = State::Head;
                    let frame = match Frame::decode(head, payload, &self.limits) {
                        // SPEC.md §3.2 rule 3: a chunk with an intact header
                        // and a damaged payload may be fetched again.
                        Err(e @ DecodeError::PayloadChecksum { .. })
                            if head.kind == super::FrameKind::Chunk && self.skips_left > 0 =>
                        {
                            self.skips_left -= 1;
                            self.skipped = true;
                            return Err(e);
                        }
                        other => other?,
                    };
                    if let SequencerEvent::ObjectDone | SequencerEvent::Aborted = self.seq.handle_frame(&frame)? {
                        self.state = State::Done;
                    }
                    return Ok(Some(frame));
                }
                State::Done => {
                    // SPEC.md §7.5: nothing may follow the object end or an abort.
                    if !src.bytes().is_empty() {
                        return Err(DecodeError::TrailingData);
                    }
                    return Ok(None);
                }
            }
        }
    }
}

/// Where the decoder reads from: a growable buffer, or an immutable piece.
trait Source {
    fn bytes(&self) -> &[u8];
    fn skip(&mut self, n: usize);
    /// Takes the next `n` bytes as a payload, without copying.
    fn split_payload(&mut self, n: usize) -> Bytes;
    /// Makes room for `total` bytes in all, where the source can grow.
    fn reserve_total(&mut self, total: usize);
}

impl Source for BytesMut {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn skip(&mut self, n: usize) {
        self.advance(n);
    }
    fn split_payload(&mut self, n: usize) -> Bytes {
        self.split_to(n).freeze()
    }
    fn reserve_total(&mut self, total: usize) {
        self.reserve(total.saturating_sub(self.len()));
    }
}

impl Source for Bytes {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn skip(&mut self, n: usize) {
        self.advance(n);
    }
    fn split_payload(&mut self, n: usize) -> Bytes {
        self.split_to(n)
    }
    fn reserve_total(&mut self, _total: usize) {}
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl tokio_util::codec::Decoder for FrameDecoder {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(self.decode_frame(src)?)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(self.decode_frame_eof(src)?)
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::wire::test_util::{decode_all, object_bytes, two_tensors};
    use crate::wire::{preamble, FrameKind, VERSION};

    #[test]
    fn decodes_valid_object() {
        let frames = two_tensors();
        let (decoded, end) = decode_all(object_bytes(&frames), Sequencer::new(Limits::default()));
        assert_eq!(end, Ok(()));
        assert_eq!(decoded, frames);
    }

    #[test]
    fn rejects_bad_magic() {
        let mut bytes = object_bytes(&two_tensors());
        bytes[0] = b'X';
        assert_eq!(decode_all(bytes, Sequencer::new(Limits::default())).1, Err(DecodeError::BadMagic));
    }

    #[test]
    fn rejects_unknown_version() {
        let mut bytes = object_bytes(&two_tensors());
        bytes[4..6].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert_eq!(decode_all(bytes, Sequencer::new(Limits::default())).1, Err(DecodeError::UnsupportedVersion(2)));
    }

    /// Bytes of `two_tensors()` with the first chunk's payload damaged, and
    /// that chunk's (item, offset).
    fn damaged_first_chunk() -> (BytesMut, Vec<Frame>) {
        let frames = two_tensors();
        let at = object_bytes(&frames[..2]).len() + HEADER_LEN;
        let mut bytes = object_bytes(&frames);
        bytes[at] ^= 1;
        (bytes, frames)
    }

    fn decode_skipping(mut buf: BytesMut, max: u32) -> Vec<Result<Frame, DecodeError>> {
        let seq = Sequencer::new(Limits::default()).allowing_gaps();
        let mut dec = FrameDecoder::with_sequencer(Limits::default(), seq).skipping_damaged_chunks(max);
        let mut out = Vec::new();
        for _ in 0..64 {
            match dec.decode_frame_eof(&mut buf) {
                Ok(Some(f)) => out.push(Ok(f)),
                Ok(None) => break,
                Err(e) => out.push(Err(e)),
            }
            if matches!(out.last(), Some(Err(e)) if !e.is_retryable()) {
                break;
            }
        }
        out
    }

    #[test]
    fn damaged_chunk_is_skipped_and_decoding_goes_on() {
        let (bytes, frames) = damaged_first_chunk();
        let got = decode_skipping(bytes, 1);
        assert!(matches!(got[2], Err(DecodeError::PayloadChecksum { item: 0, offset: 0, .. })), "{:?}", got[2]);
        let rest: Vec<Frame> = got.into_iter().filter_map(Result::ok).collect();
        let mut want = frames.clone();
        want.remove(2);
        assert_eq!(rest, want, "every other frame, to the object end");
    }

    #[test]
    fn damaged_chunk_ends_the_object_without_skips() {
        let (bytes, _) = damaged_first_chunk();
        let got = decode_skipping(bytes.clone(), 0);
        assert!(matches!(got.last(), Some(Err(DecodeError::PayloadChecksum { .. }))));
        // Sticky: the next call fails the same way.
        let (frames, end) = decode_all(bytes, Sequencer::new(Limits::default()).allowing_gaps());
        assert_eq!(frames.len(), 2);
        assert!(matches!(end, Err(DecodeError::PayloadChecksum { .. })));
    }

    #[test]
    fn damaged_header_is_never_skipped() {
        let frames = two_tensors();
        let at = object_bytes(&frames[..2]).len() + 1;
        let mut bytes = object_bytes(&frames);
        bytes[at] ^= 1;
        let got = decode_skipping(bytes, 8);
        assert!(matches!(got.last(), Some(Err(DecodeError::HeaderChecksum { .. }))), "{:?}", got.last());
    }

    #[test]
    fn rejects_eof_inside_frame() {
        let mut bytes = object_bytes(&two_tensors());
        bytes.truncate(bytes.len() - 3);
        let (_, end) = decode_all(bytes, Sequencer::new(Limits::default()));
        assert_eq!(end, Err(DecodeError::UnexpectedEof { needed: 3 }));
    }

    #[test]
    fn rejects_eof_between_frames_before_object_end() {
        let mut frames = two_tensors();
        frames.pop();
        assert_eq!(decode_all(object_bytes(&frames), Sequencer::new(Limits::default())).1, Err(DecodeError::Truncated));
    }

    #[test]
    fn rejects_eof_inside_preamble() {
        let bytes = BytesMut::from(&preamble()[..5]);
        assert_eq!(
            decode_all(bytes, Sequencer::new(Limits::default())).1,
            Err(DecodeError::UnexpectedEof { needed: 3 })
        );
    }

    #[test]
    fn rejects_empty_stream() {
        assert_eq!(
            decode_all(BytesMut::new(), Sequencer::new(Limits::default())).1,
            Err(DecodeError::UnexpectedEof { needed: 8 })
        );
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut bytes = object_bytes(&two_tensors());
        bytes.extend_from_slice(b"junk");
        assert_eq!(decode_all(bytes, Sequencer::new(Limits::default())).1, Err(DecodeError::TrailingData));
    }

    #[test]
    fn checks_length_before_reserving() {
        // A header claiming a 16 MiB + 1 chunk, with nothing behind it.
        let mut head = Vec::new();
        FrameHeader::new(FrameKind::Chunk, 0, 0, Limits::DEFAULT_MAX_PAYLOAD + 1, 0).encode(&mut head);
        let mut buf = BytesMut::from(&preamble()[..]);
        buf.extend_from_slice(&head);
        let mut dec = FrameDecoder::new();
        assert!(matches!(dec.decode_frame(&mut buf), Err(DecodeError::FrameTooLarge { .. })));
        assert!(buf.capacity() < 4096, "reserved {} bytes for a rejected frame", buf.capacity());
    }

    #[test]
    fn payload_room_grows_with_the_data() {
        // A CHUNK header declaring 16 MiB, then a single payload byte.
        let mut head = Vec::new();
        FrameHeader::new(FrameKind::Chunk, 0, 0, Limits::DEFAULT_MAX_PAYLOAD, 0).encode(&mut head);
        let mut buf = BytesMut::from(&preamble()[..]);
        buf.extend_from_slice(&head);
        let mut dec = FrameDecoder::new();
        assert_eq!(dec.decode_frame(&mut buf), Ok(None));
        buf.extend_from_slice(&[0]);
        assert_eq!(dec.decode_frame(&mut buf), Ok(None));
        assert!(buf.capacity() < 64 << 10, "reserved {} bytes for 1 byte of payload", buf.capacity());
    }

    #[test]
    fn chunk_payload_is_not_copied() -> Result<(), DecodeError> {
        let mut buf = object_bytes(&two_tensors());
        let range = buf.as_ptr_range();
        let mut dec = FrameDecoder::new();
        while let Some(f) = dec.decode_frame(&mut buf)? {
            if let Frame::Chunk(c) = f {
                assert!(range.contains(&c.data.as_ptr()), "chunk data was copied");
            }
        }
        Ok(())
    }

    #[test]
    fn errors_are_sticky() {
        let mut bytes = object_bytes(&two_tensors());
        bytes[0] = 0;
        let mut dec = FrameDecoder::new();
        let first = dec.decode_frame(&mut bytes);
        assert_eq!(first, Err(DecodeError::BadMagic));
        assert_eq!(dec.decode_frame(&mut bytes), first);
        assert_eq!(dec.finish(&bytes), Err(DecodeError::BadMagic));
    }

    #[test]
    fn byte_at_a_time_gives_the_same_frames() {
        let frames = two_tensors();
        let bytes = object_bytes(&frames);
        let mut dec = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in bytes.iter() {
            buf.extend_from_slice(&[*b]);
            while let Ok(Some(f)) = dec.decode_frame(&mut buf) {
                out.push(f);
            }
        }
        assert_eq!(dec.finish(&buf), Ok(()));
        assert_eq!(out, frames);
    }
}

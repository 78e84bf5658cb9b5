//! Helpers shared by the wire unit tests.

use bytes::{Buf, Bytes, BytesMut};

use super::*;

#[allow(dead_code)]
pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Preamble followed by the frames, encoded.
pub(crate) fn object_bytes(frames: &[Frame]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&preamble());
    for f in frames {
        f.encode(&mut buf);
    }
    buf
}

/// Decodes everything, returning the frames and how the stream ended.
pub(crate) fn decode_all(mut buf: BytesMut, seq: Sequencer) -> (Vec<Frame>, Result<(), DecodeError>) {
    let mut dec = FrameDecoder::with_sequencer(Limits::default(), seq);
    let mut frames = Vec::new();
    loop {
        match dec.decode_frame_eof(&mut buf) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, Ok(())),
            Err(e) => return (frames, Err(e)),
        }
    }
}

/// Runs frames through a fresh sequencer, returning the first error.
pub(crate) fn sequence(frames: &[Frame]) -> Result<(), DecodeError> {
    let mut seq = Sequencer::new(Limits::default());
    for f in frames {
        seq.handle_frame(f)?;
    }
    seq.finish()
}

/// A valid object: two raw f32 tensors, the second in two chunks.
pub(crate) fn two_tensors() -> Vec<Frame> {
    let mut enc = ObjectEncoder::new();
    let data: Bytes = (0u8..24).collect::<Vec<_>>().into();
    let frames = [
        enc.object_header(ObjectHeader::new("model", Mode::Container).with_items(2).with_total_len(32)),
        enc.item_header(ItemHeader::tensor(0, "a", Dtype::F32, vec![2])),
        enc.chunk(data.slice(..8)),
        enc.item_end(),
        enc.item_header(ItemHeader::tensor(0, "b", Dtype::F32, vec![2, 3])),
        enc.chunk(data.slice(..12)),
        enc.chunk(data.slice(12..)),
        enc.item_end(),
        enc.object_end(),
    ];
    frames.into_iter().map(|f| f.unwrap_or_else(|e| panic!("test object: {e}"))).collect()
}

/// A header with the given fields, CRCs computed; then the payload.
pub(crate) fn raw_frame(kind: u8, item: u32, offset: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![kind, 0, 0, 0];
    b.extend_from_slice(&item.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(&crc::checksum(payload).to_le_bytes());
    let hc = crc::checksum(&b);
    b.extend_from_slice(&hc.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

/// Decodes one frame (header and payload) with the default limits.
pub(crate) fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
    decode_with(bytes, &Limits::default())
}

/// Decodes one frame (header and payload) with `limits`.
pub(crate) fn decode_with(bytes: &[u8], limits: &Limits) -> Result<Frame, DecodeError> {
    let mut head = [0u8; HEADER_LEN];
    head.copy_from_slice(&bytes[..HEADER_LEN]);
    let head = FrameHeader::decode(&head)?;
    Frame::decode(head, Bytes::copy_from_slice(&bytes[HEADER_LEN..]), limits)
}

/// Encodes `frame` both ways (`encode`, `into_buf`) and decodes it back.
pub(crate) fn round_trip(frame: Frame) -> TestResult {
    let mut buf = Vec::new();
    frame.encode(&mut buf);
    assert_eq!(buf.len(), frame.encoded_len());
    assert_eq!(decode(&buf)?, frame);
    let mut parts = frame.clone().into_buf();
    assert_eq!(parts.copy_to_bytes(parts.remaining()), buf);
    Ok(())
}

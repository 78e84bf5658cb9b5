//! Helpers shared by the wire unit tests.

use bytes::{Bytes, BytesMut};

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

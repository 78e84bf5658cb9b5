//! Shims for the fuzz targets in `fuzz/` (compiled under `cfg(fuzzing)` and
//! in tests, where the seed corpus is replayed on stable).

use bytes::BytesMut;

use crate::wire::{DecodeError, Frame, FrameDecoder, FrameHeader, Limits, HEADER_LEN};

/// Limits small enough that a fuzzer's claimed lengths stay cheap.
fn fuzz_limits() -> Limits {
    Limits { max_payload: 1 << 16, max_meta: 1 << 16, ..Limits::default() }
}

/// Decodes `body` fed in pieces whose sizes come from `schedule`.
fn decode_split(body: &[u8], schedule: &[u8]) -> (Vec<Frame>, Result<(), DecodeError>) {
    let mut dec = FrameDecoder::with_limits(fuzz_limits());
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let step = schedule.get(i % schedule.len().max(1)).map_or(rest.len(), |&b| usize::from(b) * 17 + 1);
        let (piece, tail) = rest.split_at(step.min(rest.len()));
        rest = tail;
        i += 1;
        buf.extend_from_slice(piece);
        loop {
            match dec.decode_frame(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Err(e)),
            }
        }
    }
    let end = dec.finish(&buf);
    (frames, end)
}

/// `decode_frames`: arbitrary bytes, split at points taken from the input,
/// must decode without panicking to the same frames and the same outcome as
/// the unsplit bytes.
pub fn decode_frames(data: &[u8]) {
    let Some((&n, data)) = data.split_first() else { return };
    let (schedule, body) = data.split_at(usize::from(n % 8).min(data.len()));
    let whole = decode_split(body, &[]);
    let split = decode_split(body, schedule);
    assert_eq!(whole, split, "decoding depends on how the input is split");
}

/// `roundtrip`: an arbitrary frame that validates must encode and decode
/// back unchanged; one that does not must be rejected by the decoder.
pub fn roundtrip(frame: Frame) {
    let limits = fuzz_limits();
    let mut buf = Vec::with_capacity(frame.encoded_len());
    frame.encode(&mut buf);
    assert_eq!(buf.len(), frame.encoded_len());
    let mut head = [0u8; HEADER_LEN];
    head.copy_from_slice(&buf[..HEADER_LEN]);
    let decoded = FrameHeader::decode(&head)
        .and_then(|h| Frame::decode(h, bytes::Bytes::copy_from_slice(&buf[HEADER_LEN..]), &limits));
    match frame.validate(&limits) {
        Ok(()) => assert_eq!(decoded.as_ref(), Ok(&frame)),
        Err(_) => assert!(decoded.is_err(), "decoder accepted an invalid frame: {frame:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use arbitrary::{Arbitrary, Unstructured};

    fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("seed corpus {} is missing: {e}", dir.display()))
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        files.sort();
        files.iter().map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).collect()
    }

    #[test]
    fn replay_decode_frames_corpus() {
        let seeds = corpus("decode_frames");
        assert!(seeds.len() >= 5, "seed corpus too small");
        for seed in seeds {
            super::decode_frames(&seed);
        }
    }

    #[test]
    fn replay_roundtrip_corpus() {
        let seeds = corpus("roundtrip");
        assert!(seeds.len() >= 3, "seed corpus too small");
        for seed in seeds {
            if let Ok(frame) = super::Frame::arbitrary_take_rest(Unstructured::new(&seed)) {
                super::roundtrip(frame);
            }
        }
    }
}

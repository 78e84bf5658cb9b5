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
/// back unchanged; whatever the decoder accepts must validate and encode
/// back to the same bytes (an invalid frame may only decode to the one
/// valid frame with its encoding, as `Abort { item: Some(NO_ITEM) }` does to
/// `Abort { item: None }`).
pub fn roundtrip(frame: Frame) {
    let limits = fuzz_limits();
    let mut buf = Vec::with_capacity(frame.encoded_len());
    frame.encode(&mut buf);
    assert_eq!(buf.len(), frame.encoded_len());
    let mut head = [0u8; HEADER_LEN];
    head.copy_from_slice(&buf[..HEADER_LEN]);
    let decoded = FrameHeader::decode(&head)
        .and_then(|h| Frame::decode(h, bytes::Bytes::copy_from_slice(&buf[HEADER_LEN..]), &limits));
    if frame.validate(&limits).is_ok() {
        assert_eq!(decoded.as_ref(), Ok(&frame));
    }
    if let Ok(back) = &decoded {
        assert_eq!(back.validate(&limits), Ok(()), "decoder accepted an invalid frame: {back:?}");
        let mut again = Vec::with_capacity(back.encoded_len());
        back.encode(&mut again);
        assert_eq!(again, buf, "a decoded frame encodes to other bytes: {frame:?}");
    }
}

/// `dequantize`: arbitrary encodings, dtypes, element counts and bytes into
/// every dequantizer must give a value or an error, never a panic.
pub fn dequantize(data: &[u8]) {
    use arbitrary::{Arbitrary, Unstructured};

    use crate::wire::{Dtype, Encoding};

    let mut u = Unstructured::new(data);
    let (Ok(encoding), Ok(dtype), Ok(numel)) =
        (Encoding::arbitrary(&mut u), Dtype::arbitrary(&mut u), u.int_in_range(0usize..=20_000))
    else {
        return;
    };
    let wire = u.take_rest();
    let mut out = Vec::new();
    if crate::quant::decode_span(&encoding, dtype, wire, numel, &mut out).is_ok() {
        assert_eq!(out.len() as u64 * 8, numel as u64 * u64::from(dtype.bits()), "wrong output length");
    }
    // The same bytes as a chunk of a tensor, at an arbitrary record.
    let meta = crate::tensor::TensorMeta::new("t", dtype, vec![numel as u64]);
    let offset = encoding.record_len() * (numel as u64 % 7);
    let _ = crate::quant::decode_chunk(&encoding, &meta, offset, wire);
}

/// Encoded objects that seed the `decode_frames` corpus: valid ones of each
/// mode, and damaged copies of them.
pub fn seed_objects() -> Vec<Vec<u8>> {
    use bytes::Bytes;

    use crate::wire::{preamble, Abort, AbortCode, Dtype, Encoding, ItemHeader, Mode, ObjectEncoder, ObjectHeader};

    let mut out = Vec::new();
    let mut push = |frames: Vec<Result<Frame, crate::wire::EncodeError>>| {
        let mut buf = preamble().to_vec();
        for f in frames.into_iter().flatten() {
            f.encode(&mut buf);
        }
        out.push(buf);
    };
    let data = Bytes::from((0..=255u8).cycle().take(300).collect::<Vec<_>>());
    let mut e = ObjectEncoder::new();
    push(vec![
        e.object_header(ObjectHeader::new("file.bin", Mode::File).with_items(1).with_total_len(300)),
        e.item_header(ItemHeader::bytes(0, "file.bin", 300)),
        e.chunk(data.slice(..100)),
        e.chunk(data.slice(100..)),
        e.item_end(),
        e.object_end(),
    ]);
    let mut e = ObjectEncoder::new();
    let mut q = ItemHeader::tensor(0, "q", Dtype::F32, vec![64]);
    q.encoding = Encoding::Nf4 { block_size: 64, nested: false };
    q.len = 36;
    push(vec![
        e.object_header(ObjectHeader::new("model", Mode::Container)),
        e.item_header(ItemHeader::tensor(0, "w", Dtype::F16, vec![2, 3])),
        e.chunk(data.slice(..12)),
        e.item_end(),
        e.item_header(ItemHeader::tensor(0, "empty", Dtype::I64, vec![0])),
        e.item_end(),
        e.item_header(q),
        e.chunk(data.slice(..36)),
        e.item_end(),
        e.object_end(),
    ]);
    let mut e = ObjectEncoder::new();
    let abort = Abort::new(AbortCode::SOURCE_CHANGED, "file changed");
    push(vec![
        e.object_header(ObjectHeader::new("x", Mode::File)),
        e.item_header(ItemHeader::bytes(0, "x", 10)),
        Ok(e.abort(abort)),
    ]);
    let valid = out.len();
    for i in 0..valid {
        let mut flipped = out[i].clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x10;
        out.push(flipped);
        let mut cut = out[i].clone();
        cut.truncate(cut.len() - 5);
        out.push(cut);
    }
    // Every seed gets a control byte in front: the split schedule length.
    out.into_iter()
        .enumerate()
        .map(|(i, o)| {
            let mut v = vec![(i % 8) as u8, 3, 250, 1, 77, 9, 128, 0];
            v.truncate(1 + i % 8);
            v.extend_from_slice(&o);
            v
        })
        .collect()
}

/// `request`: a request target and headers through the server's request
/// parsing (object name, query options, push headers). The input is the
/// target, a newline, then `name: value` header lines.
pub fn request(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let target = lines.next().unwrap_or_default();
    let headers: Vec<(&[u8], &[u8])> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().as_bytes(), v.trim().as_bytes())).collect();
    crate::transport::fuzz_request(target, &headers);
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

    /// Writes the generated seeds into `fuzz/corpus/decode_frames`:
    /// `TENSORWIRE_WRITE_CORPUS=1 cargo test --lib write_seed_corpus`.
    #[test]
    fn write_seed_corpus() {
        if std::env::var_os("TENSORWIRE_WRITE_CORPUS").is_none() {
            return;
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_frames");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        for (i, seed) in super::seed_objects().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), seed).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn valid_seeds_decode_completely() {
        let seeds = super::seed_objects();
        for seed in &seeds[..3] {
            let (frames, end) = super::decode_split(&seed[1 + usize::from(seed[0] % 8)..], &[]);
            assert_eq!(end, Ok(()));
            assert!(frames.len() >= 3);
        }
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
    fn replay_dequantize_corpus() {
        let seeds = corpus("dequantize");
        assert!(seeds.len() >= 3, "seed corpus too small");
        for seed in seeds {
            super::dequantize(&seed);
        }
    }

    #[test]
    fn replay_request_corpus() {
        let seeds = corpus("request");
        assert!(seeds.len() >= 5, "seed corpus too small");
        for seed in seeds {
            super::request(&seed);
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

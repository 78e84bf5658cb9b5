//! Property tests for the wire format (STYLE.md §5.2): arbitrary valid
//! objects round-trip, and any split of the byte stream decodes the same.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tensorwire::wire::{
    preamble, Abort, AbortCode, Chunk, DecodeError, Dtype, Encoding, Frame, FrameDecoder, ItemEnd, ItemHeader, Limits,
    Mode, ObjectEncoder, ObjectEnd, ObjectHeader,
};

fn dtype() -> impl Strategy<Value = Dtype> {
    prop::sample::select(Dtype::ALL.to_vec())
}

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_.]{0,12}|\\PC{1,8}"
}

fn encoding() -> impl Strategy<Value = Encoding> {
    let block = prop::sample::select(vec![64u32, 128, 256, 1024, 4096]);
    prop_oneof![
        Just(Encoding::Raw),
        Just(Encoding::Fp16),
        Just(Encoding::Bf16),
        (block.clone(), prop::option::of(prop::collection::vec(-2.0f32..2.0, 256)))
            .prop_map(|(block_size, code)| Encoding::Blockwise8 { block_size, code }),
        (block.clone(), any::<bool>()).prop_map(|(block_size, nested)| Encoding::Fp4 { block_size, nested }),
        (block, any::<bool>()).prop_map(|(block_size, nested)| Encoding::Nf4 { block_size, nested }),
    ]
}

/// A valid item header (len consistent with dtype, shape and encoding).
fn item_header() -> impl Strategy<Value = ItemHeader> {
    let tensor = (name(), dtype(), prop::collection::vec(0u64..6, 0..4), encoding()).prop_filter_map(
        "encoding must fit dtype",
        |(name, dtype, shape, encoding)| {
            let mut h = ItemHeader::tensor(0, name, dtype, shape);
            let numel = h.numel()?;
            h.len = encoding.encoded_len(numel, dtype)?;
            h.encoding = encoding;
            h.validate(&Limits::default()).ok()?;
            Some(h)
        },
    );
    let opaque = (name(), 0u64..1 << 36).prop_map(|(n, len)| ItemHeader::bytes(0, n, len));
    prop_oneof![tensor, opaque]
}

fn object_header() -> impl Strategy<Value = ObjectHeader> {
    (
        name(),
        prop::bool::ANY,
        prop::option::of(0u64..1000),
        prop::option::of(0u64..1 << 40),
        1u32..=16 << 20,
        prop::collection::btree_map(name(), name(), 0..3),
    )
        .prop_map(|(name, file, items, total_len, chunk_size, metadata)| ObjectHeader {
            name,
            mode: if file { Mode::File } else { Mode::Container },
            items,
            total_len,
            chunk_size,
            metadata: metadata.into_iter().collect::<BTreeMap<_, _>>(),
            index: None,
        })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        object_header().prop_map(Frame::ObjectHeader),
        (item_header(), 0u32..u32::MAX).prop_map(|(mut h, i)| {
            h.item = i;
            Frame::ItemHeader(h)
        }),
        (0u32..u32::MAX, any::<u64>(), prop::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(i, o, d)| Frame::Chunk(Chunk::new(i, o, d.into()))),
        (0u32..u32::MAX, any::<u64>(), any::<u32>()).prop_map(|(item, len, crc)| Frame::ItemEnd(ItemEnd {
            item,
            len,
            crc
        })),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(items, len, crc)| Frame::ObjectEnd(ObjectEnd {
            items,
            len,
            crc
        })),
        (prop::option::of(0u32..u32::MAX), any::<u32>(), "\\PC{0,40}")
            .prop_map(|(item, code, m)| Frame::Abort(Abort { item, code: AbortCode::from(code), message: m })),
    ]
}

/// A valid complete object: raw tensors (and opaque items) with real data,
/// split into chunks of the given size.
fn object() -> impl Strategy<Value = (Vec<Frame>, Vec<u8>)> {
    (
        prop::collection::vec((prop::collection::vec(any::<u8>(), 0..200), prop::bool::ANY), 0..6),
        1usize..64,
        prop::bool::ANY,
    )
        .prop_map(|(items, chunk, declare)| {
            let mut enc = ObjectEncoder::new();
            let total: usize = items.iter().map(|(d, _)| d.len()).sum();
            let mut header = ObjectHeader::new("obj", Mode::File);
            if declare {
                header = header.with_items(items.len() as u64).with_total_len(total as u64);
            }
            let mut frames = vec![enc.object_header(header).expect("header")];
            let mut all = Vec::new();
            for (i, (data, as_tensor)) in items.into_iter().enumerate() {
                let name = format!("item{i}");
                let h = if as_tensor {
                    ItemHeader::tensor(0, name, Dtype::U8, vec![data.len() as u64])
                } else {
                    ItemHeader::bytes(0, name, data.len() as u64)
                };
                frames.push(enc.item_header(h).expect("item header"));
                let data = Bytes::from(data);
                for start in (0..data.len()).step_by(chunk) {
                    frames.push(enc.chunk(data.slice(start..(start + chunk).min(data.len()))).expect("chunk"));
                }
                frames.push(enc.item_end().expect("item end"));
                all.extend_from_slice(&data);
            }
            frames.push(enc.object_end().expect("object end"));
            (frames, all)
        })
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut buf = preamble().to_vec();
    for f in frames {
        f.encode(&mut buf);
    }
    buf
}

/// Feeds `bytes` in pieces ending at `cuts`, collecting frames and the outcome.
fn decode_in_pieces(bytes: &[u8], cuts: &[usize]) -> (Vec<Frame>, Result<(), DecodeError>) {
    let mut dec = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut start = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(bytes.len());
    points.sort_unstable();
    for end in points {
        buf.extend_from_slice(&bytes[start..end.max(start)]);
        start = end.max(start);
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

/// Feeds `bytes` as immutable pieces the way the HTTP/2 receiver does:
/// frames decoded straight out of a piece when whole, the rest copied.
fn decode_as_pieces(bytes: &[u8], cuts: &[usize]) -> (Vec<Frame>, Result<(), DecodeError>, usize) {
    let mut dec = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut zero_copy = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(bytes.len());
    points.sort_unstable();
    let mut start = 0;
    for end in points {
        let mut pending = Bytes::copy_from_slice(&bytes[start..end.max(start)]);
        start = end.max(start);
        if !buf.is_empty() {
            // A frame is already straddling: the piece joins it (as in FrameReceiver).
            buf.extend_from_slice(&pending);
            pending = Bytes::new();
        }
        let range = pending.as_ptr_range();
        loop {
            if buf.is_empty() && !pending.is_empty() {
                match dec.decode_frame_bytes(&mut pending) {
                    Ok(Some(f)) => {
                        if let Frame::Chunk(c) = &f {
                            zero_copy += usize::from(range.contains(&c.data.as_ptr()));
                        }
                        frames.push(f);
                        continue;
                    }
                    Ok(None) => {
                        buf.extend_from_slice(&pending);
                        pending = Bytes::new();
                    }
                    Err(e) => return (frames, Err(e), zero_copy),
                }
            }
            match dec.decode_frame(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Err(e), zero_copy),
            }
        }
    }
    let end = dec.finish(&buf);
    (frames, end, zero_copy)
}

proptest! {
    #[test]
    fn pieces_decode_like_a_buffer((frames, _) in object(), cuts in prop::collection::vec(any::<usize>(), 0..20)) {
        let bytes = encode(&frames);
        let (got, end, _) = decode_as_pieces(&bytes, &cuts);
        prop_assert_eq!((got, end), decode_in_pieces(&bytes, &[]));
    }

    #[test]
    fn whole_pieces_are_not_copied((frames, _) in object()) {
        let bytes = encode(&frames);
        let (got, end, zero_copy) = decode_as_pieces(&bytes, &[]);
        prop_assert_eq!(end, Ok(()));
        prop_assert_eq!(zero_copy, got.iter().filter(|f| matches!(f, Frame::Chunk(_))).count());
    }

    #[test]
    fn any_valid_frame_round_trips(f in frame()) {
        prop_assert_eq!(f.validate(&Limits::default()), Ok(()));
        let mut buf = Vec::new();
        f.encode(&mut buf);
        prop_assert_eq!(buf.len(), f.encoded_len());
        let mut head = [0u8; tensorwire::wire::HEADER_LEN];
        head.copy_from_slice(&buf[..tensorwire::wire::HEADER_LEN]);
        let h = tensorwire::wire::FrameHeader::decode(&head).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = Frame::decode(h, Bytes::copy_from_slice(&buf[tensorwire::wire::HEADER_LEN..]), &Limits::default());
        prop_assert_eq!(back, Ok(f));
    }

    #[test]
    fn valid_objects_decode_to_their_frames((frames, data) in object()) {
        let (decoded, end) = decode_in_pieces(&encode(&frames), &[]);
        prop_assert_eq!(end, Ok(()));
        let received: Vec<u8> = decoded
            .iter()
            .filter_map(|f| if let Frame::Chunk(c) = f { Some(c.data.to_vec()) } else { None })
            .flatten()
            .collect();
        prop_assert_eq!(decoded, frames);
        prop_assert_eq!(received, data);
    }

    #[test]
    fn any_split_decodes_the_same((frames, _) in object(), cuts in prop::collection::vec(any::<usize>(), 0..20)) {
        let bytes = encode(&frames);
        prop_assert_eq!(decode_in_pieces(&bytes, &cuts), decode_in_pieces(&bytes, &[]));
    }

    #[test]
    fn any_single_bit_flip_is_detected((frames, _) in object(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut bytes = encode(&frames);
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let (_, end) = decode_in_pieces(&bytes, &[]);
        prop_assert!(end.is_err(), "flip of bit {} at byte {} went unnoticed", bit, i);
    }

    #[test]
    fn truncation_anywhere_is_detected((frames, _) in object(), at in any::<prop::sample::Index>()) {
        let bytes = encode(&frames);
        let cut = at.index(bytes.len());
        let (_, end) = decode_in_pieces(&bytes[..cut], &[]);
        prop_assert!(matches!(end, Err(DecodeError::UnexpectedEof { .. } | DecodeError::Truncated)), "{:?}", end);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let mut with_magic = preamble().to_vec();
        with_magic.extend_from_slice(&bytes);
        prop_assert_eq!(decode_in_pieces(&with_magic, &cuts), decode_in_pieces(&with_magic, &[]));
    }
}

//! Encode and decode throughput of the frame codec (SPEC.md §3–§4).
//!
//! `TENSORWIRE_BENCH_MIB` sets the object size per iteration (default 64).
//! Decoding a large chunk frame is one CRC pass over the payload plus a
//! split of the buffer, so it should run near `crc32fast` speed; the
//! `crc32fast` group is that reference, measured in the same run.

use std::hint::black_box;

use bytes::{Buf, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tensorwire::wire::{preamble, Frame, FrameDecoder, ItemHeader, Mode, ObjectEncoder, ObjectHeader};

fn object_mib() -> usize {
    std::env::var("TENSORWIRE_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

fn data(len: usize) -> Bytes {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<_>>()
        .into()
}

/// The frames of a one-item object whose data is `data`, in `chunk`-byte chunks.
fn frames(data: &Bytes, chunk: usize) -> Vec<Frame> {
    let mut enc = ObjectEncoder::new();
    let mut out = vec![enc.object_header(ObjectHeader::new("bench", Mode::File)).expect("header")];
    out.push(enc.item_header(ItemHeader::bytes(0, "bench", data.len() as u64)).expect("item"));
    for off in (0..data.len()).step_by(chunk) {
        out.push(enc.chunk(data.slice(off..(off + chunk).min(data.len()))).expect("chunk"));
    }
    out.push(enc.item_end().expect("item end"));
    out.push(enc.object_end().expect("object end"));
    out
}

fn encoded(frames: &[Frame]) -> Bytes {
    let total = preamble().len() + frames.iter().map(Frame::encoded_len).sum::<usize>();
    let mut buf = BytesMut::with_capacity(total);
    buf.extend_from_slice(&preamble());
    for f in frames {
        f.encode(&mut buf);
    }
    buf.freeze()
}

fn bench_wire(c: &mut Criterion) {
    let len = object_mib() << 20;
    let data = data(len);
    let chunks = [1usize << 20, 4 << 20];

    let mut g = c.benchmark_group("crc32fast");
    g.throughput(Throughput::Bytes(len as u64));
    g.bench_function(BenchmarkId::new("hash", len), |b| b.iter(|| crc32fast::hash(black_box(&data))));
    g.finish();

    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Bytes(len as u64));
    for chunk in chunks {
        // Zero copy: chunk frames built over the shared buffer (payload CRC
        // computed once), handed out as header + payload buffers.
        g.bench_with_input(BenchmarkId::new("into_buf", chunk), &chunk, |b, &chunk| {
            b.iter(|| {
                let mut n = 0;
                for f in frames(&data, chunk) {
                    n += f.into_buf().remaining();
                }
                black_box(n)
            })
        });
        // Copying: frames written into one contiguous buffer.
        g.bench_with_input(BenchmarkId::new("to_buffer", chunk), &chunk, |b, &chunk| {
            b.iter(|| black_box(encoded(&frames(&data, chunk)).len()))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(len as u64));
    for chunk in chunks {
        let bytes = encoded(&frames(&data, chunk));
        // The whole object already in memory: the zero-copy path.
        g.bench_with_input(BenchmarkId::new("contiguous", chunk), &bytes, |b, bytes| {
            b.iter_batched(
                || BytesMut::from(&bytes[..]),
                |mut buf| {
                    let mut dec = FrameDecoder::new();
                    let mut n = 0;
                    while let Some(f) = dec.decode_frame_eof(&mut buf).expect("valid object") {
                        n += f.encoded_len();
                    }
                    // Returned so that freeing the buffer is not timed.
                    (n, buf)
                },
                criterion::BatchSize::LargeInput,
            )
        });
        // Fed in 64 KiB reads, as from a socket: one copy into the buffer.
        g.bench_with_input(BenchmarkId::new("reads_64k", chunk), &bytes, |b, bytes| {
            b.iter(|| {
                let mut dec = FrameDecoder::new();
                let mut buf = BytesMut::with_capacity(64 << 10);
                let mut n = 0;
                for piece in bytes.chunks(64 << 10) {
                    buf.extend_from_slice(piece);
                    while let Some(f) = dec.decode_frame(&mut buf).expect("valid object") {
                        n += f.encoded_len();
                    }
                }
                dec.finish(&buf).expect("complete");
                n
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(3));
    targets = bench_wire
}
criterion_main!(benches);

//! Quantize and dequantize throughput per scheme, on one core, in GB/s of
//! fp32 input (`TENSORWIRE_BENCH_MIB` sets the tensor size, default 64).
//! The tensor is processed in 4 MiB spans, as a sender encodes chunk by
//! chunk and a receiver decodes them.
//! For comparison, bitsandbytes 0.50 on this machine's CPU reached
//! 0.21–0.51 GB/s (8-bit quantize) and about 0.10 GB/s (nf4 quantize).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tensorwire::quant::{decode_span, encode_span, Scheme};
use tensorwire::tensor::Dtype;

/// 4 MiB of fp32: a multiple of every scheme's record.
const SPAN: usize = 4 << 20;

fn bench_quant(c: &mut Criterion) {
    let mib: usize = std::env::var("TENSORWIRE_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let numel = mib << 18; // fp32 values in `mib` MiB
    let src = tensorwire::models::weights_for_tests(numel, Dtype::F32, 3);
    let schemes = [Scheme::Fp16, Scheme::Bf16, Scheme::Blockwise8, Scheme::Fp4, Scheme::Nf4, Scheme::Nf4Nested];

    let mut g = c.benchmark_group("quantize");
    g.throughput(Throughput::Bytes(src.len() as u64));
    for scheme in schemes {
        let enc = scheme.encoding_for(Dtype::F32);
        g.bench_with_input(BenchmarkId::new(scheme.as_str(), mib), &enc, |b, enc| {
            b.iter(|| {
                let mut n = 0;
                for span in src.chunks(SPAN) {
                    n += encode_span(enc, Dtype::F32, span).expect("encode").len();
                }
                black_box(n)
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("dequantize");
    g.throughput(Throughput::Bytes(src.len() as u64));
    for scheme in schemes {
        let enc = scheme.encoding_for(Dtype::F32);
        let spans: Vec<Vec<u8>> = src.chunks(SPAN).map(|s| encode_span(&enc, Dtype::F32, s).expect("encode")).collect();
        g.bench_with_input(BenchmarkId::new(scheme.as_str(), mib), &enc, |b, enc| {
            let mut out = Vec::with_capacity(SPAN);
            b.iter(|| {
                for wire in &spans {
                    out.clear();
                    decode_span(enc, Dtype::F32, wire, SPAN / 4, &mut out).expect("decode");
                }
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(2));
    targets = bench_quant
}
criterion_main!(benches);

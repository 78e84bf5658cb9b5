//! Quantized container transfers: the server encodes chunk by chunk, the
//! retriever restores the original dtypes, and the result equals a
//! whole-tensor encode/decode round trip bit for bit, whatever the chunking.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{duplex, small_config, TempDir};
use futures::StreamExt;
use tensorwire::quant::{decode_span, encode_span, QuantizeExt, Scheme};
use tensorwire::recv::ObjectRetriever;
use tensorwire::send::ContainerStreamer;
use tensorwire::tensor::{Dtype, Tensor, TensorMap, TensorMeta};
use tensorwire::transport::{Registry, TransferOptions};

/// Values of normal-like spread in `dtype`, with a few outliers.
fn tensor(name: &str, dtype: Dtype, shape: Vec<u64>, seed: u64) -> Tensor {
    let numel: u64 = shape.iter().product();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::new();
    for i in 0..numel {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut v = ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0;
        if i % 997 == 3 {
            v *= 40.0;
        }
        match dtype {
            Dtype::F32 => data.extend_from_slice(&v.to_le_bytes()),
            Dtype::F64 => data.extend_from_slice(&f64::from(v).to_le_bytes()),
            Dtype::F16 => data.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            Dtype::BF16 => data.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            _ => data.extend_from_slice(&(i as u32).to_le_bytes()[..(dtype.bits() / 8) as usize]),
        }
    }
    Tensor::new(name, dtype, shape, Bytes::from(data)).expect("tensor")
}

fn model() -> TensorMap {
    let mut m = TensorMap::new();
    for (name, dtype, shape) in [
        ("a.f32", Dtype::F32, vec![3, 4097]), // odd, several 8-bit blocks
        ("b.bf16", Dtype::BF16, vec![65, 3]), // odd, partial 4-bit block
        ("c.f16", Dtype::F16, vec![1000]),
        ("d.f64", Dtype::F64, vec![257]),
        ("e.i32", Dtype::I32, vec![10]), // never quantized
        ("f.scalar", Dtype::F32, vec![]),
        ("g.empty", Dtype::F32, vec![0]),
        ("h.big", Dtype::F32, vec![64 * 300]), // > 256 blocks: two nested groups
    ] {
        m.insert(name.into(), tensor(name, dtype, shape, name.len() as u64));
    }
    m
}

/// What a whole-tensor encode and decode gives.
fn expected(t: &Tensor, scheme: Scheme) -> Tensor {
    let enc = scheme.encoding_for(t.dtype());
    let wire = encode_span(&enc, t.dtype(), t.data()).expect("encode");
    let mut out = Vec::new();
    let numel = t.meta().numel().expect("numel") as usize;
    decode_span(&enc, t.dtype(), &wire, numel, &mut out).expect("decode");
    Tensor::from_meta(t.meta().clone(), Bytes::from(out)).expect("tensor")
}

#[tokio::test]
async fn every_scheme_round_trips_to_the_original_dtypes() {
    let model = Arc::new(model());
    let client = duplex(Registry::new().with_container("m", Arc::clone(&model)), small_config()).await;
    for scheme in Scheme::ALL {
        let opts = TransferOptions { quantize: Some(scheme), chunk_size: Some(5000), ..TransferOptions::default() };
        let got = client.retrieve("m", None, &opts).await.expect("retrieve").collect_map().await.expect("collect");
        assert_eq!(got.len(), model.len());
        for (name, t) in model.iter() {
            let g = &got[name];
            assert_eq!(g.meta(), t.meta(), "{scheme}: {name} keeps its dtype and shape");
            assert_eq!(g, &expected(t, scheme), "{scheme}: {name} differs from a whole-tensor round trip");
        }
        // Raw where the scheme does not apply.
        assert_eq!(got["e.i32"], model["e.i32"]);
    }
}

#[tokio::test]
async fn quantized_pull_is_written_as_a_safetensors_file_in_the_original_dtypes() {
    let model = Arc::new(model());
    let dst = TempDir::new("q-file");
    let client = duplex(Registry::new().with_container("m", Arc::clone(&model)), small_config()).await;
    let opts = TransferOptions { quantize: Some(Scheme::Nf4), ..TransferOptions::default() };
    let retriever = client.retrieve("m", None, &opts).await.expect("retrieve");
    retriever.write_safetensors(dst.join("m.safetensors")).await.expect("write");
    let bytes = std::fs::read(dst.join("m.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid");
    for (name, t) in model.iter() {
        let back = Tensor::from_view(name.as_str(), &st.tensor(name).expect("present")).expect("tensor");
        assert_eq!(back, expected(t, Scheme::Nf4), "{name}");
    }
}

#[tokio::test]
async fn quantize_ext_on_a_lazy_stream() {
    let model = model();
    let tensors = futures::stream::iter(model.values().cloned().map(Ok).collect::<Vec<_>>());
    let frames =
        ContainerStreamer::from_encoded("lazy", tensors.quantize(Scheme::Blockwise8)).with_chunk_size(10_000).frames();
    let got: Vec<Tensor> = ObjectRetriever::new(Box::pin(frames)).map(|t| t.expect("tensor")).collect().await;
    for t in got {
        assert_eq!(t, expected(&model[t.name()], Scheme::Blockwise8));
    }
}

#[test]
fn quantized_sizes_shrink_as_promised() {
    let t = tensor("w", Dtype::F32, vec![4096 * 4], 1);
    let meta = TensorMeta::new("w", Dtype::F32, vec![4096 * 4]);
    let raw = meta.byte_len().expect("len");
    for (scheme, ratio) in [(Scheme::Fp16, 0.5), (Scheme::Blockwise8, 0.2503), (Scheme::Nf4, 0.1407)] {
        let enc = scheme.encoding_for(Dtype::F32);
        let wire = encode_span(&enc, Dtype::F32, t.data()).expect("encode");
        let r = wire.len() as f64 / raw as f64;
        assert!((r - ratio).abs() < 0.001, "{scheme}: {r}");
    }
}

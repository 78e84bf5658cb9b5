//! Builds a small safetensors model in memory, frames it as a tensorwire
//! container object, decodes the bytes back, rebuilds the safetensors file,
//! and checks it is identical.
//!
//! ```text
//! cargo run --release --example roundtrip
//! ```

use std::collections::HashMap;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use safetensors::{tensor::TensorView, SafeTensors};
use tensorwire::wire::{Dtype, Frame, FrameDecoder, ItemHeader, Mode, ObjectEncoder, ObjectHeader};

const CHUNK: usize = 1 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A Llama-like layer in miniature: deterministic pseudo-random weights.
    let shapes: [(&str, Dtype, Vec<usize>); 5] = [
        ("model.embed_tokens.weight", Dtype::F32, vec![4096, 256]),
        ("model.layers.0.self_attn.q_proj.weight", Dtype::BF16, vec![256, 256]),
        ("model.layers.0.mlp.down_proj.weight", Dtype::F16, vec![256, 1024]),
        ("model.layers.0.input_layernorm.weight", Dtype::F32, vec![256]),
        ("model.step", Dtype::I64, vec![]),
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let buffers: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(_, d, s)| {
            let n = s.iter().product::<usize>() * (d.bits() as usize / 8);
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect()
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = shapes
        .iter()
        .zip(&buffers)
        .map(|((name, d, s), b)| Ok((name.to_string(), TensorView::new(st_dtype(*d)?, s.clone(), b)?)))
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    let original = safetensors::serialize(views, None)?;
    let model = SafeTensors::deserialize(&original)?;

    // Send: one item per tensor, chunks of at most 1 MiB, payloads sliced
    // from one shared buffer without copying.
    let source = Bytes::from(original.clone());
    let started = Instant::now();
    let mut enc = ObjectEncoder::new();
    let names = model.names();
    let mut frames =
        vec![enc.object_header(ObjectHeader::new("mini-llama", Mode::Container).with_items(names.len() as u64))?];
    let mut names: Vec<&str> = names.into_iter().collect();
    names.sort();
    for name in &names {
        let view = model.tensor(name)?;
        let dtype = Dtype::parse(&view.dtype().to_string())?;
        let shape = view.shape().iter().map(|&d| d as u64).collect();
        frames.push(enc.item_header(ItemHeader::tensor(0, *name, dtype, shape))?);
        let start = view.data().as_ptr() as usize - original.as_ptr() as usize;
        let data = source.slice(start..start + view.data().len());
        for off in (0..data.len()).step_by(CHUNK) {
            frames.push(enc.chunk(data.slice(off..(off + CHUNK).min(data.len())))?);
        }
        frames.push(enc.item_end()?);
    }
    frames.push(enc.object_end()?);
    let mut wire = BytesMut::from(&tensorwire::wire::preamble()[..]);
    for f in &frames {
        f.encode(&mut wire);
    }
    let wire_len = wire.len();

    // Receive: decode, verify every CRC and ordering rule, collect tensors.
    let mut dec = FrameDecoder::new();
    let mut items: Vec<(ItemHeader, Vec<u8>)> = Vec::new();
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    while let Some(frame) = dec.decode_frame_eof(&mut wire)? {
        *counts.entry(kind_name(&frame)).or_default() += 1;
        match frame {
            Frame::ItemHeader(h) => items.push((h, Vec::new())),
            Frame::Chunk(c) => items.last_mut().ok_or("chunk before item")?.1.extend_from_slice(&c.data),
            _ => {}
        }
    }
    let elapsed = started.elapsed();

    // Rebuild the safetensors file and compare.
    let views: Vec<(String, TensorView<'_>)> = items
        .iter()
        .map(|(h, data)| {
            let dtype = st_dtype(h.dtype.ok_or("tensor item without dtype")?)?;
            let shape = h.shape.clone().unwrap_or_default().iter().map(|&d| d as usize).collect();
            Ok((h.name.clone(), TensorView::new(dtype, shape, data)?))
        })
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    let rebuilt = safetensors::serialize(views, None)?;
    if rebuilt != original {
        return Err("the rebuilt safetensors file differs from the original".into());
    }

    println!("{:<44} {:>6} {:>14} {:>10}", "tensor", "dtype", "shape", "bytes");
    for (h, data) in &items {
        let dtype = h.dtype.map_or("-", Dtype::as_str);
        println!(
            "{:<44} {:>6} {:>14} {:>10}",
            h.name,
            dtype,
            format!("{:?}", h.shape.clone().unwrap_or_default()),
            data.len()
        );
    }
    let mut kinds: Vec<_> = counts.into_iter().collect();
    kinds.sort();
    println!();
    println!(
        "safetensors file: {} bytes; framed object: {} bytes ({} frames: {:?})",
        original.len(),
        wire_len,
        frames.len(),
        kinds
    );
    println!("framed, decoded and verified in {elapsed:.2?}; rebuilt file is byte-identical: OK");
    Ok(())
}

fn st_dtype(d: Dtype) -> Result<safetensors::Dtype, String> {
    Ok(match d {
        Dtype::F32 => safetensors::Dtype::F32,
        Dtype::F16 => safetensors::Dtype::F16,
        Dtype::BF16 => safetensors::Dtype::BF16,
        Dtype::I64 => safetensors::Dtype::I64,
        other => return Err(format!("example does not use {other}")),
    })
}

fn kind_name(f: &Frame) -> &'static str {
    match f {
        Frame::ObjectHeader(_) => "object_header",
        Frame::ItemHeader(_) => "item_header",
        Frame::Chunk(_) => "chunk",
        Frame::ItemEnd(_) => "item_end",
        Frame::ObjectEnd(_) => "object_end",
        Frame::Abort(_) => "abort",
    }
}

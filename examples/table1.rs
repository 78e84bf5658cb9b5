//! NVFlare 2.6's message-size table for Llama-3.2-1B, reproduced from the
//! bytes tensorwire's quantizers actually produce.
//!
//! ```text
//! cargo run --release --example table1 [-- --small]
//! ```
//!
//! Every tensor of the state dict (147 tensors, 1,498,482,688 fp32
//! parameters) is generated, quantized with each scheme, and its encoded
//! records are split into payload (codes) and quantization meta (absmax).
//! NVFlare also sends each tensor's code table (1 KiB for 8-bit, 64 bytes for
//! 4-bit); tensorwire's decoders carry those tables built in, so they travel
//! only when a sender asks (the `code` member of SPEC.md §5.5.1). The table
//! shows the meta both ways.

use std::time::Instant;

use tensorwire::models::LlamaShape;
use tensorwire::quant::{encode_span, Scheme};
use tensorwire::tensor::Dtype;
use tensorwire::wire::Encoding;

#[derive(Default, Clone, Copy)]
struct Sizes {
    payload: u64,
    meta: u64,
    tables: u64,
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn main() -> Result<(), String> {
    let small = std::env::args().any(|a| a == "--small");
    let shape = if small { LlamaShape::SMALL } else { LlamaShape::LLAMA_3_2_1B };
    let schemes = [Scheme::Fp16, Scheme::Blockwise8, Scheme::Fp4, Scheme::Nf4, Scheme::Fp4Nested, Scheme::Nf4Nested];
    let mut sizes = [Sizes::default(); 6];
    let mut fp32 = 0u64;
    let started = Instant::now();
    for (i, (name, dims)) in shape.tensors().into_iter().enumerate() {
        // One tensor at a time: memory is the largest tensor, not the model.
        let tensor = {
            let numel: u64 = dims.iter().product();
            let data = tensorwire::models::weights_for_tests(numel as usize, Dtype::F32, i as u64);
            tensorwire::tensor::Tensor::new(name.clone(), Dtype::F32, dims, data).map_err(|e| e.to_string())?
        };
        let numel = tensor.data().len() as u64 / 4;
        fp32 += tensor.data().len() as u64;
        for (s, scheme) in sizes.iter_mut().zip(schemes) {
            let enc = scheme.encoding_for(Dtype::F32);
            let wire = encode_span(&enc, Dtype::F32, tensor.data()).map_err(|e| e.to_string())?;
            // Codes are numel * bits / 8 bytes; the rest of the records is meta.
            let payload = (numel * u64::from(scheme.bits())).div_ceil(8);
            s.payload += payload;
            s.meta += wire.len() as u64 - payload;
            s.tables += match enc {
                Encoding::Blockwise8 { .. } => 256 * 4,
                Encoding::Fp4 { nested: false, .. } | Encoding::Nf4 { nested: false, .. } => 16 * 4,
                _ => 0,
            };
        }
    }
    println!(
        "{} ({} tensors, {} parameters), quantized on the CPU in {:.1} s\n",
        if small { "small Llama-shaped model" } else { "Llama-3.2-1B" },
        shape.tensors().len(),
        shape.parameters(),
        started.elapsed().as_secs_f64()
    );
    println!("| message precision | model (MiB) | quantization meta (MiB), as NVFlare counts it | tensorwire wire meta (MiB) | of fp32 |");
    println!("|---|---:|---:|---:|---:|");
    println!("| fp32 | {:.2} | 0.00 | 0.00 | 100.00% |", mib(fp32));
    let names = [
        "fp16 / bf16",
        "8-bit blockwise",
        "4-bit fp4",
        "4-bit nf4",
        "4-bit fp4, nested absmax",
        "4-bit nf4, nested absmax",
    ];
    for (name, s) in names.iter().zip(sizes) {
        let nvflare_meta = s.meta + s.tables;
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2}% |",
            mib(s.payload),
            mib(nvflare_meta),
            mib(s.meta),
            (s.payload + nvflare_meta) as f64 / fp32 as f64 * 100.0
        );
    }
    Ok(())
}

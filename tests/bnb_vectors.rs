//! Reference vectors made with the real bitsandbytes (`cpu.*`) and a model of
//! its CUDA kernels (`cuda_model.*`), in ../shared/testdata/bnb (see its
//! README). Encoders must equal `cuda_model.*` bit for bit; decoders must
//! reproduce `*.deq` from both `cpu.*` and `cuda_model.*` codes (±0 and NaN
//! payloads counted equal).

use std::path::PathBuf;

use safetensors::SafeTensors;
use tensorwire::quant::{decode_span, encode_span};
use tensorwire::tensor::{from_safetensors, Dtype};
use tensorwire::wire::Encoding;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/bnb")
}

struct Case {
    bytes: Vec<u8>,
}

impl Case {
    fn load(name: &str) -> Case {
        let path = dir().join(name);
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (the vectors live in ../shared)", path.display()));
        Case { bytes }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("vector file parses")
    }

    fn get(&self, name: &str) -> Option<(Dtype, Vec<u8>)> {
        let st = self.st();
        let t = st.tensor(name).ok()?;
        Some((from_safetensors(t.dtype()).expect("known dtype"), t.data().to_vec()))
    }

    fn need(&self, name: &str) -> (Dtype, Vec<u8>) {
        self.get(name).unwrap_or_else(|| panic!("tensor {name} missing"))
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.need(name).1.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

/// Equal bits, or both zeros, or both NaN, for values of `width` bytes.
fn same_values(a: &[u8], b: &[u8], width: usize, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let mut bad = 0;
    for (i, (x, y)) in a.chunks_exact(width).zip(b.chunks_exact(width)).enumerate() {
        let (fx, fy) = match width {
            4 => (
                f32::from_le_bytes([x[0], x[1], x[2], x[3]]) as f64,
                f32::from_le_bytes([y[0], y[1], y[2], y[3]]) as f64,
            ),
            _ => {
                let conv = |v: &[u8]| half::bf16::from_le_bytes([v[0], v[1]]).to_f64();
                (conv(x), conv(y))
            }
        };
        let ok = x == y || (fx == 0.0 && fy == 0.0) || (fx.is_nan() && fy.is_nan());
        if !ok {
            if bad < 5 {
                eprintln!("{what}[{i}]: {x:02x?} vs {y:02x?} ({fx:e} vs {fy:e})");
            }
            bad += 1;
        }
    }
    assert_eq!(bad, 0, "{what}: {bad} values differ");
}

/// Wire records (absmax + codes per block) from bnb's separate arrays.
fn records8(codes: &[u8], absmax: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for (block, am) in codes.chunks(4096).zip(absmax) {
        out.extend_from_slice(&am.to_le_bytes());
        out.extend_from_slice(block);
    }
    out
}

fn records4(packed: &[u8], absmax: &[f32], n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for (b, am) in absmax.iter().enumerate() {
        let elems = (n - b * 64).min(64);
        out.extend_from_slice(&am.to_le_bytes());
        out.extend_from_slice(&packed[b * 32..b * 32 + elems.div_ceil(2)]);
    }
    out
}

fn split8(wire: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut codes, mut absmax) = (Vec::new(), Vec::new());
    for rec in wire.chunks(4 + 4096) {
        absmax.extend_from_slice(&rec[..4]);
        codes.extend_from_slice(&rec[4..]);
    }
    (codes, absmax)
}

fn split4(wire: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut packed, mut absmax) = (Vec::new(), Vec::new());
    for rec in wire.chunks(4 + 32) {
        absmax.extend_from_slice(&rec[..4]);
        packed.extend_from_slice(&rec[4..]);
    }
    (packed, absmax)
}

fn check(file: &str) {
    let case = Case::load(file);
    let (dtype, input) = case.need("input");
    let width = dtype.bits() as usize / 8;
    let n = input.len() / width;

    if let Some((_, fp16)) = case.get("fp16") {
        assert_eq!(encode_span(&Encoding::Fp16, dtype, &input).expect("fp16"), fp16, "{file}: fp16 cast");
    }

    // 8-bit: encoder against the CUDA model, decoders from both producers.
    let b8 = Encoding::Blockwise8 { block_size: 4096, code: None };
    let wire = encode_span(&b8, dtype, &input).expect("encode b8");
    let (codes, absmax) = split8(&wire);
    assert_eq!(codes, case.need("cuda_model.b8.codes").1, "{file}: b8 codes");
    assert_eq!(absmax, case.need("cuda_model.b8.absmax").1, "{file}: b8 absmax");
    for producer in ["cpu", "cuda_model"] {
        let wire =
            records8(&case.need(&format!("{producer}.b8.codes")).1, &case.f32s(&format!("{producer}.b8.absmax")));
        let mut out = Vec::new();
        decode_span(&b8, Dtype::F32, &wire, n, &mut out).expect("decode b8");
        same_values(&out, &case.need(&format!("{producer}.b8.deq")).1, 4, &format!("{file}: {producer} b8 deq"));
        if let Some((_, restored)) = case.get(&format!("{producer}.b8.restored")) {
            let mut out = Vec::new();
            decode_span(&b8, dtype, &wire, n, &mut out).expect("decode b8");
            same_values(&out, &restored, width, &format!("{file}: {producer} b8 restored"));
        }
    }

    // 4-bit.
    for kind in ["fp4", "nf4"] {
        let enc = if kind == "fp4" {
            Encoding::Fp4 { block_size: 64, nested: false }
        } else {
            Encoding::Nf4 { block_size: 64, nested: false }
        };
        let wire = encode_span(&enc, dtype, &input).expect("encode 4-bit");
        let (packed, absmax) = split4(&wire);
        assert_eq!(packed, case.need(&format!("cuda_model.{kind}.packed")).1, "{file}: {kind} packed");
        assert_eq!(absmax, case.need(&format!("cuda_model.{kind}.absmax")).1, "{file}: {kind} absmax");
        for producer in ["cpu", "cuda_model"] {
            let packed = case.need(&format!("{producer}.{kind}.packed")).1;
            let wire = records4(&packed, &case.f32s(&format!("{producer}.{kind}.absmax")), n);
            let mut out = Vec::new();
            decode_span(&enc, dtype, &wire, n, &mut out).expect("decode 4-bit");
            same_values(
                &out,
                &case.need(&format!("{producer}.{kind}.deq")).1,
                width,
                &format!("{file}: {producer} {kind} deq"),
            );
        }
    }
}

macro_rules! vectors {
    ($($test:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check($file);
            }
        )*
    };
}

vectors! {
    randn_n1 => "randn_n1.safetensors",
    randn_n63 => "randn_n63.safetensors",
    randn_n64 => "randn_n64.safetensors",
    randn_n65 => "randn_n65.safetensors",
    randn_n4095 => "randn_n4095.safetensors",
    randn_n4096 => "randn_n4096.safetensors",
    randn_n4097 => "randn_n4097.safetensors",
    zeros_n4161 => "zeros_n4161.safetensors",
    bf16vals_n4097 => "bf16vals_n4097.safetensors",
    bf16_n4097 => "bf16_n4097.safetensors",
    fp16_n4097 => "fp16_n4097.safetensors",
    boundaries8_n1023 => "boundaries8_n1023.safetensors",
    boundaries4_n192 => "boundaries4_n192.safetensors",
    nonfinite_n131 => "nonfinite_n131.safetensors",
}

#[test]
fn tables_match_the_vectors() {
    let case = Case::load("tables.safetensors");
    let bits = |name: &str| case.f32s(name).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let ours = |t: &[f32]| t.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits("dynamic_map"), ours(&tensorwire::quant::tables::dynamic_map()));
    assert_eq!(bits("nf4"), ours(&tensorwire::quant::tables::nf4()));
    assert_eq!(bits("fp4_cuda_dequant"), ours(&tensorwire::quant::tables::fp4()));
}

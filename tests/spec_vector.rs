//! SPEC.md Appendix A is a real encoding: this test rebuilds the example
//! object and compares it byte for byte with the hex in SPEC.md, then
//! decodes those bytes.

use bytes::{Bytes, BytesMut};
use tensorwire::wire::{preamble, Dtype, Frame, FrameDecoder, ItemHeader, Mode, ObjectEncoder, ObjectHeader};

fn example() -> Vec<(String, Vec<u8>)> {
    let mut enc = ObjectEncoder::new();
    let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut header = ObjectHeader::new("m", Mode::Container).with_items(1).with_total_len(8);
    header.chunk_size = 4 << 20;
    let frames = [
        enc.object_header(header),
        enc.item_header(ItemHeader::tensor(0, "w", Dtype::F32, vec![2])),
        enc.chunk(Bytes::from(data)),
        enc.item_end(),
        enc.object_end(),
    ];
    let mut out = vec![("preamble".to_string(), preamble().to_vec())];
    for f in frames {
        let f = f.expect("example frames are valid");
        let mut b = Vec::new();
        f.encode(&mut b);
        out.push((format!("{:?}", f.kind()), b));
    }
    out
}

/// Renders the example as SPEC.md shows it: one frame per block, 16 bytes a
/// line, header and payload on separate lines.
fn render(parts: &[(String, Vec<u8>)]) -> String {
    let mut s = String::new();
    for (name, bytes) in parts {
        s.push_str(&format!("; {name}\n"));
        let (head, payload) = if name == "preamble" { (&bytes[..], &[][..]) } else { bytes.split_at(28) };
        for part in [head, payload] {
            for line in part.chunks(16) {
                let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
                s.push_str(&hex.join(" "));
                s.push('\n');
            }
        }
    }
    s
}

fn spec_block() -> String {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/SPEC.md")).expect("SPEC.md");
    let appendix = spec.split("## Appendix A").nth(1).expect("SPEC.md has Appendix A");
    let block = appendix.split("```text\n").nth(1).expect("Appendix A has a text block");
    block.split("```").next().unwrap_or_default().to_string()
}

#[test]
fn spec_appendix_a_matches_the_encoder() {
    let expected = render(&example());
    assert_eq!(spec_block(), expected, "SPEC.md Appendix A is stale; it should read:\n{expected}");
}

#[test]
fn spec_appendix_a_decodes() {
    let hex: Vec<u8> = spec_block()
        .lines()
        .filter(|l| !l.starts_with(';'))
        .flat_map(|l| l.split_whitespace().map(|h| u8::from_str_radix(h, 16).expect("hex byte")).collect::<Vec<_>>())
        .collect();
    let mut buf = BytesMut::from(&hex[..]);
    let mut dec = FrameDecoder::new();
    let mut frames = Vec::new();
    while let Some(f) = dec.decode_frame_eof(&mut buf).expect("Appendix A decodes") {
        frames.push(f);
    }
    assert_eq!(frames.len(), 5);
    let Frame::Chunk(c) = &frames[2] else { panic!("third frame is the chunk") };
    assert_eq!(&c.data[..], &[0, 0, 0x80, 0x3f, 0, 0, 0, 0x40]);
}

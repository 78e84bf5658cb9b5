//! The `tensorwire` binary: `frames` verifies a framed object and fails with
//! a one-line error and a non-zero exit code on a damaged one.

use std::process::Command;

use bytes::Bytes;
use tensorwire::wire::{preamble, Dtype, ItemHeader, Mode, ObjectEncoder, ObjectHeader};

fn object() -> Vec<u8> {
    let mut enc = ObjectEncoder::new();
    let mut buf = preamble().to_vec();
    let data = Bytes::from(vec![7u8; 3 << 20]);
    let mut frames = vec![
        enc.object_header(ObjectHeader::new("m", Mode::Container)).expect("header"),
        enc.item_header(ItemHeader::tensor(0, "w", Dtype::U8, vec![3 << 20])).expect("item"),
    ];
    for off in (0..data.len()).step_by(1 << 20) {
        frames.push(enc.chunk(data.slice(off..off + (1 << 20))).expect("chunk"));
    }
    frames.push(enc.item_end().expect("item end"));
    frames.push(enc.object_end().expect("object end"));
    for f in frames {
        f.encode(&mut buf);
    }
    buf
}

fn run(bytes: &[u8], name: &str) -> std::process::Output {
    let path = std::env::temp_dir().join(format!("tensorwire-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).expect("write object");
    let out = Command::new(env!("CARGO_BIN_EXE_tensorwire")).arg("frames").arg(&path).output().expect("run");
    let _ = std::fs::remove_file(&path);
    out
}

#[test]
fn frames_verifies_a_valid_object() {
    let out = run(&object(), "ok");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("verified: 3 chunks, 3145728 data bytes"), "{stdout}");
}

#[test]
fn frames_rejects_a_damaged_object() {
    let mut bytes = object();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    let out = run(&bytes, "bad");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.starts_with("tensorwire: payload checksum mismatch in item 0 at offset 1048576"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1);
}

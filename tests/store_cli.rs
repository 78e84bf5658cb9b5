//! `tensorwire get`/`put` with `file://` store URLs: the CLI surface of
//! README "Object storage" (the same commands run against Garage in
//! `tests/store_garage.rs`), exit codes, and no file left on failure.

mod common;

use std::collections::HashMap;
use std::process::{Command, Output};

use bytes::Bytes;
use common::{bytes, TempDir};
use tensorwire::tensor::{Dtype, Tensor};

fn tw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tensorwire")).args(args).output().expect("run tensorwire")
}

fn model_file(dir: &TempDir) -> (std::path::PathBuf, Vec<u8>) {
    let big = Tensor::new("w", Dtype::U8, vec![6 << 20], Bytes::from(bytes(6 << 20, 1))).unwrap();
    let small = Tensor::new("b", Dtype::U8, vec![100], Bytes::from(bytes(100, 2))).unwrap();
    let views = vec![("w".to_string(), big.as_view().unwrap()), ("b".to_string(), small.as_view().unwrap())];
    let file = safetensors::serialize(views, None::<HashMap<String, String>>).unwrap();
    (dir.file("m.safetensors", &file), file)
}

fn url(dir: &TempDir, key: &str) -> String {
    format!("file://{}/{key}", dir.path().display())
}

#[test]
fn put_then_get_round_trips_and_items_pull_one_tensor() {
    let (src, store) = (TempDir::new("scli-src"), TempDir::new("scli-store"));
    let (path, file) = model_file(&src);
    let u = url(&store, "models/m.safetensors");
    let out = tw(&["put", path.to_str().unwrap(), &u, "--part-size", "5242880", "--concurrency", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(store.join("models/m.safetensors.tw.json").is_file(), "manifest written");

    let dest = src.join("out.safetensors");
    let out = tw(&["get", &u, "-o", dest.to_str().unwrap(), "--range-size", "1048576", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&dest).unwrap(), file);

    let one = src.join("b.safetensors");
    let out = tw(&["get", &u, "-o", one.to_str().unwrap(), "--mode", "container", "--items", "b", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = std::fs::read(&one).unwrap();
    let st = safetensors::SafeTensors::deserialize(&got).unwrap();
    assert_eq!(st.names(), vec!["b"]);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json summary");
    assert!(summary["wire_bytes"].as_u64().unwrap() < 3 << 20, "only the needed ranges: {summary}");
}

#[test]
fn a_corrupted_object_exits_4_and_leaves_no_file() {
    let (src, store) = (TempDir::new("scli-c-src"), TempDir::new("scli-c-store"));
    let (path, _) = model_file(&src);
    let u = url(&store, "m.safetensors");
    assert!(tw(&["put", path.to_str().unwrap(), &u]).status.success());
    let stored = store.join("m.safetensors");
    let mtime = std::fs::metadata(&stored).unwrap().modified().unwrap();
    let mut b = std::fs::read(&stored).unwrap();
    b[3 << 20] ^= 1;
    std::fs::write(&stored, &b).unwrap();
    std::fs::File::options().write(true).open(&stored).unwrap().set_modified(mtime).unwrap();
    let dest = src.join("out.safetensors");
    let out = tw(&["get", &u, "-o", dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum"));
    assert!(!dest.exists());
    assert!(!src.join("out.safetensors.part").exists());
}

#[test]
fn a_quantized_container_is_stored_framed_and_restored() {
    let (src, store) = (TempDir::new("scli-q-src"), TempDir::new("scli-q-store"));
    let w: Vec<u8> = (0..(2 << 20)).flat_map(|i: u32| ((i % 251) as f32 / 100.0).to_le_bytes()).collect();
    let t = Tensor::new("w", Dtype::F32, vec![2 << 20], Bytes::from(w)).unwrap();
    let file = safetensors::serialize(vec![("w".to_string(), t.as_view().unwrap())], None::<HashMap<String, String>>);
    let path = src.file("m.safetensors", &file.unwrap());
    let u = url(&store, "round-7.tw");
    let out = tw(&["put", "--mode", "container", "--quantize", "nf4", path.to_str().unwrap(), &u]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(&std::fs::read(store.join("round-7.tw")).unwrap()[..4], b"TWIR", "a framed body");
    let dest = src.join("model.safetensors");
    let out = tw(&["get", &u, "-o", dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = std::fs::read(&dest).unwrap();
    let st = safetensors::SafeTensors::deserialize(&got).unwrap();
    assert_eq!(st.tensor("w").unwrap().dtype(), safetensors::Dtype::F32, "dtype restored");
}

#[test]
fn store_errors_have_their_exit_codes() {
    let (src, store) = (TempDir::new("scli-e-src"), TempDir::new("scli-e-store"));
    let (path, _) = model_file(&src);
    let dest = src.join("x");
    let missing = tw(&["get", &url(&store, "nope"), "-o", dest.to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(5), "a missing object is refused");
    let small = tw(&["put", path.to_str().unwrap(), &url(&store, "m"), "--part-size", "1000"]);
    assert_eq!(small.status.code(), Some(2), "a part under 5 MiB is a usage error");
    let relative = tw(&["get", "file://relative/key", "-o", dest.to_str().unwrap()]);
    assert_eq!(relative.status.code(), Some(2));
    let http = tw(&["put", "--quantize", "nf4", path.to_str().unwrap(), "127.0.0.1:1/objects/m"]);
    assert_eq!(http.status.code(), Some(2), "--quantize on put needs a store URL");
}

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
    // The message names the file, and exit code 4 says the object failed a check.
    assert!(stderr.starts_with("tensorwire: /"), "{stderr}");
    assert!(
        stderr.contains("-bad: malformed object: payload checksum mismatch in item 0 at offset 1048576"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(stderr.lines().count(), 1);
}

/// `serve`, `get`, `put` and `inspect` as a user runs them.
#[test]
fn serve_get_put_inspect() {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("tensorwire-cli-net-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("srv")).expect("mkdir");
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![3, 4], &[1u8; 24]).expect("view");
    let model = safetensors::serialize([("layer.weight", view)], None).expect("serialize");
    std::fs::write(dir.join("srv/model.safetensors"), &model).expect("write");

    let bin = env!("CARGO_BIN_EXE_tensorwire");
    let mut server = Command::new(bin)
        .args(["serve", "--addr", "127.0.0.1:0", "--allow-push", "--root"])
        .arg(dir.join("srv"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut line = String::new();
    BufReader::new(server.stderr.take().expect("stderr")).read_line(&mut line).expect("serve banner");
    let url_base = line.split("on ").nth(1).expect("banner names the URL").trim().to_string();

    let out = dir.join("got.safetensors");
    let get = Command::new(bin).arg("get").arg(format!("{url_base}model.safetensors")).arg("-o").arg(&out).output();
    let get = get.expect("run get");
    assert!(get.status.success(), "{}", String::from_utf8_lossy(&get.stderr));
    assert_eq!(std::fs::read(&out).expect("read"), model);

    let put = Command::new(bin).arg("put").arg(&out).arg(format!("{url_base}copy.safetensors")).output();
    let put = put.expect("run put");
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    assert_eq!(std::fs::read(dir.join("srv/copy.safetensors")).expect("read"), model);

    // Retry flags (SPEC.md §8.4): accepted by get and put; a bad value is refused.
    let again = dir.join("again.safetensors");
    let get = Command::new(bin)
        .args(["get", "--retries", "2", "--retry-max-wait", "0.5"])
        .arg(format!("{url_base}model.safetensors"))
        .arg("-o")
        .arg(&again)
        .output()
        .expect("run get");
    assert!(get.status.success(), "{}", String::from_utf8_lossy(&get.stderr));
    assert_eq!(std::fs::read(&again).expect("read"), model);
    let put = Command::new(bin)
        .args(["put", "--retries", "0"])
        .arg(&out)
        .arg(format!("{url_base}copy2.safetensors"))
        .output()
        .expect("run put");
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let bad = Command::new(bin)
        .args(["get", "--retry-max-wait", "-1"])
        .arg(format!("{url_base}model.safetensors"))
        .arg("-o")
        .arg(dir.join("x"))
        .output()
        .expect("run get");
    assert!(!bad.status.success());

    let missing = Command::new(bin).arg("get").arg(format!("{url_base}nope")).arg("-o").arg(dir.join("x")).output();
    let missing = missing.expect("run get");
    assert!(!missing.status.success());
    assert_eq!(String::from_utf8_lossy(&missing.stderr).lines().count(), 1);

    // Container mode: tensor by tensor into a safetensors file.
    let ctr = dir.join("ctr.safetensors");
    let get = Command::new(bin)
        .args(["get", "--mode", "container", "--items", "layer.weight"])
        .arg(format!("{url_base}model.safetensors"))
        .arg("-o")
        .arg(&ctr)
        .output()
        .expect("run get");
    assert!(get.status.success(), "{}", String::from_utf8_lossy(&get.stderr));
    let written = std::fs::read(&ctr).expect("read");
    let st = safetensors::SafeTensors::deserialize(&written).expect("valid safetensors");
    assert_eq!(st.names(), ["layer.weight"]);
    assert_eq!(st.tensor("layer.weight").expect("tensor").data(), &[1u8; 24]);

    // Quantized on the server, restored to the original dtype here.
    let q = dir.join("q.safetensors");
    let get = Command::new(bin)
        .args(["get", "--mode", "container", "--quantize", "nf4"])
        .arg(format!("{url_base}model.safetensors"))
        .arg("-o")
        .arg(&q)
        .output()
        .expect("run get");
    assert!(get.status.success(), "{}", String::from_utf8_lossy(&get.stderr));
    let written = std::fs::read(&q).expect("read");
    let st = safetensors::SafeTensors::deserialize(&written).expect("valid safetensors");
    assert_eq!(st.tensor("layer.weight").expect("tensor").dtype(), safetensors::Dtype::BF16);
    let bad = Command::new(bin)
        .args(["get", "--mode", "container", "--quantize", "int3"])
        .arg(format!("{url_base}model.safetensors"))
        .arg("-o")
        .arg(dir.join("x"))
        .output()
        .expect("run get");
    assert!(!bad.status.success());

    let inspect = Command::new(bin).arg("inspect").arg(&out).output().expect("run inspect");
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success());
    assert!(text.contains("layer.weight") && text.contains("BF16") && text.contains("[3, 4]"), "{text}");
    assert!(text.contains("1 tensors, 12 parameters, 24 bytes"), "{text}");

    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

//! The CLI behaves as curl and wget users expect (issue: "a CLI that behaves
//! like curl"): exit codes, `-o -`, `-O`, `-o DIR`, URLs without a scheme,
//! query parameters, implied container mode, messages that name the party,
//! `frames` on aborted bodies and `--extract`, SIGTERM draining.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tensorwire");

/// A `tensorwire serve` child on a free loopback port, killed on drop.
struct Serve {
    child: Child,
    /// `127.0.0.1:PORT`
    addr: String,
    dir: PathBuf,
}

impl Serve {
    fn start(name: &str, extra: &[&str]) -> Serve {
        let dir = std::env::temp_dir().join(format!("tw-cliconv-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("srv")).expect("mkdir");
        let mut child = Command::new(BIN)
            .args(["serve", "--addr", "127.0.0.1:0", "--root"])
            .arg(dir.join("srv"))
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let mut line = String::new();
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        err.read_line(&mut line).expect("banner");
        let addr = line.split("http://").nth(1).and_then(|r| r.split('/').next()).expect("banner has URL").to_string();
        // Keep draining the server's stderr so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in err.lines() {});
        Serve { child, addr, dir }
    }

    fn file(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.dir.join("srv").join(name), bytes).expect("write");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tw(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run tensorwire")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn model() -> Vec<u8> {
    let a = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![64, 64], &[0x3cu8; 64 * 64 * 4])
        .expect("view");
    let b = safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![3, 4], &[1u8; 24]).expect("view");
    safetensors::serialize([("a.weight", a), ("b.bias", b)], None).expect("serialize")
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn output_to_stdout_to_a_directory_and_by_remote_name() {
    let s = Serve::start("out", &[]);
    let blob = data(3 << 20);
    s.file("blob.bin", &blob);
    // No scheme: http:// is meant, as in curl.
    let url = format!("{}/objects/blob.bin", s.addr);
    let o = tw(&["get", &url, "-o", "-", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, blob, "-o - writes the object's bytes to stdout");
    assert!(!Path::new("-").exists(), "no file named '-'");

    let out = s.dir.join("into");
    std::fs::create_dir_all(&out).expect("mkdir");
    let o = tw(&["get", &url, "-o", out.to_str().expect("utf-8"), "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(out.join("blob.bin")).expect("written inside the directory"), blob);

    let o = Command::new(BIN).args(["get", &url, "-O", "-q"]).current_dir(&out).output().expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(out.join("blob.bin")).expect("-O"), blob);
}

#[test]
fn output_path_is_checked_before_the_transfer() {
    // Nothing listens on port 1: a path error must come first, exit 2.
    let o = tw(&["get", "127.0.0.1:1/objects/m", "-o", "/nonexistent-tw-dir/m"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("/nonexistent-tw-dir"), "{}", stderr(&o));
    let o = tw(&["get", "127.0.0.1:1/objects/m"]);
    assert_eq!(o.status.code(), Some(2), "no output named: {}", stderr(&o));
}

#[test]
fn exit_codes_and_messages_name_the_party() {
    let s = Serve::start("codes", &[]);
    s.file("model.safetensors", &model());
    let local = s.dir.join("local.safetensors");
    let l = local.to_str().expect("utf-8");
    // 404: refused by the server (5), blamed on the server, not the file.
    let o = tw(&["get", &format!("http://{}/objects/nope.safetensors", s.addr), "-o", l]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("server {}", s.addr)), "{}", stderr(&o));
    assert!(!stderr(&o).contains(l), "the local file is not to blame: {}", stderr(&o));
    // Connection refused: 3.
    let o = tw(&["get", "http://127.0.0.1:1/objects/m", "-o", l]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    // A tensor that does not exist is named as a tensor, and refused (5).
    let o = tw(&["get", &format!("http://{}/objects/model.safetensors", s.addr), "--items", "nope", "-o", l]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("nope") && stderr(&o).contains("tensor"), "{}", stderr(&o));
    // Usage: an unknown scheme lists the valid ones (clap exits 2).
    let o = tw(&["get", &format!("{}/objects/model.safetensors", s.addr), "--quantize", "int3", "-o", l]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("valid: fp16, bf16, blockwise8, fp4, nf4, fp4-nested, nf4-nested"), "{}", stderr(&o));
    // A query parameter the tool does not know is refused, not ignored.
    let o = tw(&["get", &format!("{}/objects/model.safetensors?resume=0-9", s.addr), "-o", l]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!local.exists());
}

#[test]
fn items_and_quantize_imply_container_mode_and_query_is_honoured() {
    let s = Serve::start("imply", &[]);
    s.file("model.safetensors", &model());
    let out = s.dir.join("one.safetensors");
    let o = tw(&[
        "get",
        &format!("{}/objects/model.safetensors", s.addr),
        "--items",
        "b.bias",
        "-o",
        out.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let st_bytes = std::fs::read(&out).expect("read");
    let st = safetensors::SafeTensors::deserialize(&st_bytes).expect("valid");
    assert_eq!(st.names(), ["b.bias"]);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json prints JSON");
    assert_eq!(summary["mode"], "container");
    assert_eq!(summary["restored_bytes"], st_bytes.len() as u64);

    // The same selection through the URL's query, quantized: the summary
    // shows the wire saving.
    let q = s.dir.join("q.safetensors");
    let url = format!("{}/objects/model.safetensors?quantize=nf4&items=a.weight", s.addr);
    let o = tw(&["get", &url, "-o", q.to_str().expect("utf-8"), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(summary["quantize"], "nf4");
    let wire = summary["wire_bytes"].as_u64().expect("wire bytes");
    assert!(wire > 0 && wire < 64 * 64 * 4 / 4, "nf4 sends about 1/7 of fp32: {summary}");
    let st_bytes = std::fs::read(&q).expect("read");
    let st = safetensors::SafeTensors::deserialize(&st_bytes).expect("valid");
    assert_eq!(st.names(), ["a.weight"]);
}

#[test]
fn serve_refuses_insane_chunk_sizes_and_clamps_requests() {
    let o = tw(&["serve", "--root", "/tmp", "--addr", "127.0.0.1:0", "--chunk-size", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let s = Serve::start("chunks", &[]);
    let blob = data(1 << 20);
    s.file("blob.bin", &blob);
    // A client asking for 1-byte chunks gets 64 KiB ones: 16 chunks.
    let body = s.dir.join("body.tw");
    let o = Command::new(BIN)
        .args(["get", &format!("{}/objects/blob.bin?chunk_size=1", s.addr), "-o"])
        .arg(&body)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&body).expect("read"), blob);
}

fn framed(abort: bool) -> Vec<u8> {
    use tensorwire::wire::{preamble, Abort, AbortCode, ItemHeader, Mode, ObjectEncoder, ObjectHeader};
    let mut enc = ObjectEncoder::new();
    let mut buf = preamble().to_vec();
    let payload = bytes::Bytes::from(data(100_000));
    let mut frames = vec![
        enc.object_header(ObjectHeader::new("blob.bin", Mode::File).with_items(1)).expect("header"),
        enc.item_header(ItemHeader::bytes(0, "blob.bin", 100_000)).expect("item"),
        enc.chunk(payload.slice(..60_000)).expect("chunk"),
    ];
    if abort {
        frames.push(enc.abort(Abort::new(AbortCode::SOURCE_CHANGED, "the file changed")));
    } else {
        frames.push(enc.chunk(payload.slice(60_000..)).expect("chunk"));
        frames.push(enc.item_end().expect("item end"));
        frames.push(enc.object_end().expect("object end"));
    }
    for f in frames {
        f.encode(&mut buf);
    }
    buf
}

#[test]
fn frames_fails_on_an_aborted_body_and_extracts_a_good_one() {
    let dir = std::env::temp_dir().join(format!("tw-cliconv-{}-frames", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let aborted = dir.join("aborted.tw");
    std::fs::write(&aborted, framed(true)).expect("write");
    let out = dir.join("out.bin");
    let o = tw(&["frames", aborted.to_str().expect("utf-8"), "--extract", out.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("abort (source-changed)") || stderr(&o).contains("source"), "{}", stderr(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("verified"));
    assert!(!out.exists(), "nothing extracted from a failed body");

    let good = dir.join("good.tw");
    std::fs::write(&good, framed(false)).expect("write");
    let o = tw(&["frames", good.to_str().expect("utf-8"), "--extract", out.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).expect("extracted"), data(100_000));
    let _ = std::fs::remove_dir_all(&dir);
}

fn wait_for_part(path: &Path) {
    let started = Instant::now();
    let part = PathBuf::from(format!("{}.part", path.display()));
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "the transfer never started");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().expect("kill").success();
    assert!(ok);
}

/// SIGTERM during a 256 MiB transfer: it finishes byte-identical and the
/// server exits 0.
#[test]
fn sigterm_drains_transfers_in_flight() {
    let mut s = Serve::start("drain", &[]);
    let blob = data(256 << 20);
    s.file("big.bin", &blob);
    let out = s.dir.join("big.out");
    // A small window keeps the transfer going long enough to be cut.
    let get = Command::new(BIN)
        .args(["get", &format!("{}/objects/big.bin", s.addr), "-q", "--window", "65536", "-o"])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn get");
    wait_for_part(&out);
    signal(&s.child, "-TERM");
    let got = get.wait_with_output().expect("get");
    assert!(got.status.success(), "{}", stderr(&got));
    assert!(std::fs::read(&out).expect("read") == blob, "byte-identical");
    let status = s.child.wait().expect("server exits");
    assert_eq!(status.code(), Some(0));
}

/// Ctrl-C during `get` exits 130 and leaves no file.
#[test]
fn interrupted_get_exits_130_and_leaves_nothing() {
    let s = Serve::start("int", &[]);
    s.file("big.bin", &data(256 << 20));
    let out = s.dir.join("big.out");
    let get = Command::new(BIN)
        .args(["get", &format!("{}/objects/big.bin", s.addr), "-q", "--window", "65536", "-o"])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn get");
    wait_for_part(&out);
    signal(&get, "-INT");
    let got = get.wait_with_output().expect("get");
    assert_eq!(got.status.code(), Some(130), "{}", stderr(&got));
    assert!(!out.exists());
}

/// A quantized pull of a tensor holding ±inf warns with the count; nested
/// 4-bit refuses it instead of returning an all-NaN tensor with exit 0.
#[test]
fn non_finite_values_are_reported_and_nested_refuses_them() {
    let s = Serve::start("nonfinite", &[]);
    let mut vals: Vec<f32> = (0..4096).map(|i| (i as f32 - 2048.0) / 1000.0).collect();
    vals[100] = f32::INFINITY;
    let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4096], &bytes).expect("view");
    s.file("inf.safetensors", &safetensors::serialize([("w", view)], None).expect("serialize"));
    let out = s.dir.join("q.safetensors");
    let url = format!("{}/objects/inf.safetensors", s.addr);
    let o = tw(&["get", &url, "--quantize", "nf4", "-o", out.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", stderr(&o));
    // bitsandbytes' behaviour: the inf's block of 64 comes back non-finite.
    assert!(
        stderr(&o).contains("warning: 64 non-finite values (NaN or ±inf) in 1 tensor(s) restored from nf4: w (64)"),
        "{}",
        stderr(&o)
    );
    let o = tw(&["get", &url, "--quantize", "nf4-nested", "-o", out.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(6), "the server refuses the tensor: {}", stderr(&o));
    assert!(stderr(&o).contains("non-finite"), "{}", stderr(&o));
}

/// An HTTP/1.1 server is named as such, not as "frame with invalid size".
#[test]
fn an_http1_server_is_called_what_it_is() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            // A server lingers a moment before closing, as real ones do.
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    });
    let dir = std::env::temp_dir();
    let o = tw(&["get", &format!("{addr}/objects/m"), "-o", dir.join("tw-h1-never").to_str().expect("utf-8")]);
    let _ = server.join();
    assert!(stderr(&o).contains("does not speak HTTP/2") && stderr(&o).contains("HTTP/1.1"), "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
}

/// Issue 10, finding 12: `get -o FILE` used to truncate, then delete, a
/// `FILE.part` it had not created. It now leaves it alone.
#[test]
fn a_foreign_part_file_is_neither_truncated_nor_removed() {
    let s = Serve::start("foreign-part", &[]);
    let blob = data(1 << 20);
    s.file("blob.bin", &blob);
    let out = s.dir.join("blob.out");
    let foreign = s.dir.join("blob.out.part");
    std::fs::write(&foreign, b"somebody else's work in progress").expect("write");
    let o = tw(&["get", &format!("{}/objects/blob.bin", s.addr), "-q", "-o", out.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).expect("got"), blob);
    assert_eq!(std::fs::read(&foreign).expect("still there"), b"somebody else's work in progress");
    // A failed get leaves it alone too.
    let o = tw(&["get", &format!("{}/objects/nope.bin", s.addr), "-q", "-o", out.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(5));
    assert_eq!(std::fs::read(&foreign).expect("still there"), b"somebody else's work in progress");
}

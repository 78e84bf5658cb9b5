//! Transfers that a cut, stalled or corrupted connection interrupts, through
//! the WAN emulator (`tests/common/wan.rs`): each is retried to a
//! byte-identical result (SPEC.md §8.4), or fails with a clear error, and
//! never leaves a wrong byte under the final name.

mod common;

use std::time::Duration;

use common::wan::{Dir, Fault, Link, WanProxy};
use common::{bytes, TempDir, TestServer};
use tensorwire::transport::{Client, Config, Registry, TransferOptions};

const LEN: usize = 2 << 20;
const CHUNK: u32 = 64 << 10;
const WINDOW: u32 = 256 << 10;

/// Small fixed windows (no growth) and chunks, quick retries.
fn config() -> Config {
    Config {
        stream_window: WINDOW,
        connection_window: WINDOW * 2,
        max_window: WINDOW,
        max_frame_size: 64 << 10,
        max_send_buffer: WINDOW as usize,
        chunk_size: CHUNK,
        idle_timeout: Duration::from_secs(1),
        retries: 4,
        retry_max_wait: Duration::from_millis(100),
        ..Config::default()
    }
}

/// A deterministic generator of offsets.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Setup {
    dir: TempDir,
    data: Vec<u8>,
    proxy: WanProxy,
    _server: TestServer,
    /// Bytes a clean transfer moves server → client, and how many of them
    /// come before the first request (the handshake).
    clean: u64,
    handshake: u64,
}

async fn setup(tag: &str) -> Setup {
    let dir = TempDir::new(tag);
    let data = bytes(LEN, 11);
    dir.file("src/model.bin", &data);
    let server = TestServer::start(Registry::root(dir.join("src")).expect("root").accept_pushes(true), config()).await;
    let proxy = WanProxy::start(server.addr, Link::loopback()).await;
    let before = proxy.down_bytes();
    let client = Client::connect(proxy.addr, config()).await.expect("connect");
    let handshake = proxy.down_bytes() - before;
    client.get_file("model.bin", dir.join("clean.bin")).await.expect("clean get");
    let clean = proxy.down_bytes() - before;
    Setup { dir, data, proxy, _server: server, clean, handshake }
}

#[tokio::test]
async fn hundred_cuts_in_file_mode_each_resume_to_identical_bytes() {
    let s = setup("cuts").await;
    let mut rng = Rng(0x5EED);
    let dest = s.dir.join("out.bin");
    let mut worst = 0;
    for _ in 0..100 {
        let at = s.handshake + 1 + rng.below(s.clean - s.handshake - 1);
        s.proxy.plan(vec![Fault::Cut { dir: Dir::Down, at }]);
        let before = (s.proxy.down_bytes(), s.proxy.connections());
        let client = Client::connect(s.proxy.addr, config()).await.expect("connect");
        let got = client.get_file("model.bin", &dest).await.unwrap_or_else(|e| panic!("cut at {at}: {e}"));
        assert_eq!(got.len, LEN as u64);
        assert!(std::fs::read(&dest).expect("read") == s.data, "cut at {at}: bytes differ");
        assert!(s.proxy.connections() - before.1 >= 2, "cut at {at} did not reconnect");
        // What went down twice: at most what the window let through unread
        // and one partial chunk, plus a new connection's frames and the
        // object's headers again.
        let resent = (s.proxy.down_bytes() - before.0).saturating_sub(s.clean);
        worst = worst.max(resent);
        assert!(resent <= u64::from(WINDOW + CHUNK) + (16 << 10), "cut at {at}: {resent} bytes sent again");
    }
    eprintln!("most bytes sent again after a cut: {worst}");
}

#[tokio::test]
async fn hundred_bit_flips_end_identical_or_as_a_clear_error() {
    let s = setup("flips").await;
    let mut rng = Rng(0xF11B);
    let dest = s.dir.join("out.bin");
    let (mut identical, mut failed) = (0, 0);
    for _ in 0..100 {
        let _ = std::fs::remove_file(&dest);
        let at = s.handshake + rng.below(s.clean - s.handshake);
        let bit = rng.below(8) as u8;
        s.proxy.plan(vec![Fault::Flip { dir: Dir::Down, at, bit }]);
        let client = Client::connect(s.proxy.addr, config()).await.expect("connect");
        match client.get_file("model.bin", &dest).await {
            Ok(_) => {
                assert!(std::fs::read(&dest).expect("read") == s.data, "flip at {at} bit {bit}: wrong bytes");
                identical += 1;
            }
            Err(e) => {
                assert!(!dest.exists(), "flip at {at} bit {bit}: failed ({e}) but left a file");
                assert!(!e.to_string().is_empty());
                failed += 1;
            }
        }
    }
    eprintln!("bit flips: {identical} identical after retry, {failed} clear errors");
    assert!(identical > failed, "{identical} identical, {failed} failed");
}

#[tokio::test]
async fn stall_triggers_the_idle_timeout_then_a_resume() {
    let s = setup("stall").await;
    let dest = s.dir.join("out.bin");
    let at = s.clean / 2;
    s.proxy.plan(vec![Fault::Stall { dir: Dir::Down, at, pause: Duration::from_secs(5) }]);
    let before = s.proxy.connections();
    let client = Client::connect(s.proxy.addr, config()).await.expect("connect");
    let started = std::time::Instant::now();
    client.get_file("model.bin", &dest).await.expect("get after stall");
    assert!(std::fs::read(&dest).expect("read") == s.data);
    assert_eq!(s.proxy.connections() - before, 2, "one stalled connection, one resumed");
    // The resume did not wait for the stall to end.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn without_retries_a_cut_fails_and_leaves_nothing() {
    let s = setup("noretry").await;
    let dest = s.dir.join("out.bin");
    s.proxy.plan(vec![Fault::Cut { dir: Dir::Down, at: s.clean / 2 }]);
    let client = Client::connect(s.proxy.addr, Config { retries: 0, ..config() }).await.expect("connect");
    let r = client.get_file("model.bin", &dest).await;
    assert!(r.as_ref().is_err_and(tensorwire::Error::is_retryable), "{r:?}");
    assert!(!dest.exists());
    assert!(!s.dir.join("out.bin.part").exists());
}

#[tokio::test]
async fn push_cut_midway_is_sent_again_and_stored_whole() {
    let s = setup("push").await;
    let src = s.dir.join("src/model.bin");
    s.proxy.plan(vec![Fault::Cut { dir: Dir::Up, at: LEN as u64 / 2 }]);
    let before = s.proxy.connections();
    let client = Client::connect(s.proxy.addr, config()).await.expect("connect");
    let got = client.put_file(&src, "pushed.bin").await.expect("put after a cut");
    assert_eq!(got.len, LEN as u64);
    assert!(std::fs::read(s.dir.join("src/pushed.bin")).expect("stored") == s.data);
    assert_eq!(s.proxy.connections() - before, 2);
}

/// A safetensors model of four fp32 tensors, 2 MiB in all.
fn model() -> Vec<u8> {
    let blobs: Vec<Vec<u8>> = (0..4).map(|i| bytes(512 << 10, 100 + i)).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![128, 1024], b).expect("view");
            (format!("layer{i}.weight"), v)
        })
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

async fn container_cuts(tag: &str, quantize: Option<&str>, cuts: usize) {
    let dir = TempDir::new(tag);
    dir.file("src/model.safetensors", &model());
    let server = TestServer::start(Registry::root(dir.join("src")).expect("root"), config()).await;
    let proxy = WanProxy::start(server.addr, Link::loopback()).await;
    let opts = TransferOptions {
        quantize: quantize.map(|q| tensorwire::quant::Scheme::parse(q).expect("scheme")),
        ..TransferOptions::default()
    };
    let before = proxy.down_bytes();
    let client = Client::connect(proxy.addr, config()).await.expect("connect");
    let handshake = proxy.down_bytes() - before;
    let clean_path = dir.join("clean.safetensors");
    client.get_container_file("model.safetensors", None, &clean_path, &opts).await.expect("clean pull");
    let clean = proxy.down_bytes() - before;
    let expected = std::fs::read(&clean_path).expect("read clean");
    safetensors::SafeTensors::deserialize(&expected).expect("a valid safetensors file");
    let mut rng = Rng(0xC0A7 + cuts as u64);
    let dest = dir.join("out.safetensors");
    for _ in 0..cuts {
        let at = handshake + 1 + rng.below(clean - handshake - 1);
        proxy.plan(vec![Fault::Cut { dir: Dir::Down, at }]);
        let before = (proxy.down_bytes(), proxy.connections());
        let client = Client::connect(proxy.addr, config()).await.expect("connect");
        let len = client
            .get_container_file("model.safetensors", None, &dest, &opts)
            .await
            .unwrap_or_else(|e| panic!("cut at {at}: {e}"));
        assert_eq!(len, expected.len() as u64);
        assert!(std::fs::read(&dest).expect("read") == expected, "cut at {at}: bytes differ");
        assert!(proxy.connections() - before.1 >= 2, "cut at {at} did not reconnect");
        let resent = (proxy.down_bytes() - before.0).saturating_sub(clean);
        assert!(resent <= u64::from(WINDOW + CHUNK) + (16 << 10), "cut at {at}: {resent} bytes sent again");
    }
}

#[tokio::test]
async fn hundred_cuts_in_container_mode_each_resume_to_identical_bytes() {
    container_cuts("ctr-cuts", None, 100).await;
}

#[tokio::test]
async fn cuts_of_a_quantized_container_pull_resume_to_identical_bytes() {
    container_cuts("nf4-cuts", Some("nf4"), 20).await;
}

#[tokio::test]
async fn a_damaged_chunk_is_asked_for_again_on_the_same_connection() {
    let s = setup("retransmit").await;
    let dest = s.dir.join("out.bin");
    // Well inside the data: a chunk's payload (headers are 37 bytes in 64 KiB).
    let at = s.clean / 2 + 1000;
    s.proxy.plan(vec![Fault::Flip { dir: Dir::Down, at, bit: 3 }]);
    let before = (s.proxy.down_bytes(), s.proxy.connections());
    let client = Client::connect(s.proxy.addr, config()).await.expect("connect");
    client.get_file("model.bin", &dest).await.expect("get after a damaged chunk");
    assert!(std::fs::read(&dest).expect("read") == s.data);
    // No new connection, and not from zero: about one window and a chunk again.
    assert_eq!(s.proxy.connections() - before.1, 1);
    let resent = (s.proxy.down_bytes() - before.0).saturating_sub(s.clean);
    assert!(resent <= u64::from(WINDOW + CHUNK) + (16 << 10), "{resent} bytes sent again");
}

/// Issue 15 item 5: a chunk that fails its CRC is skipped, the stream goes
/// on to the object end, and then only that chunk is asked for again, on
/// the same connection: what goes down twice is one chunk and the object's
/// frames around it, far less than the window that was in flight.
#[tokio::test]
async fn a_damaged_chunk_alone_is_sent_again_in_file_mode() {
    let s = setup("retransmit-one").await;
    let dest = s.dir.join("out.bin");
    let mut worst = 0;
    for k in 1..8u64 {
        let at = s.handshake + (s.clean - s.handshake) * k / 8 + 1000;
        s.proxy.plan(vec![Fault::Flip { dir: Dir::Down, at, bit: 5 }]);
        let before = (s.proxy.down_bytes(), s.proxy.connections());
        let client = Client::connect(s.proxy.addr, config()).await.expect("connect");
        client.get_file("model.bin", &dest).await.unwrap_or_else(|e| panic!("flip at {at}: {e}"));
        assert!(std::fs::read(&dest).expect("read") == s.data, "flip at {at}: bytes differ");
        assert_eq!(s.proxy.connections() - before.1, 1, "flip at {at}: reconnected");
        let resent = (s.proxy.down_bytes() - before.0).saturating_sub(s.clean);
        worst = worst.max(resent);
        assert!(resent <= u64::from(CHUNK) + (4 << 10), "flip at {at}: {resent} bytes sent again");
    }
    eprintln!("file mode: most bytes sent again after a damaged chunk: {worst} (chunk {CHUNK}, window {WINDOW})");
}

#[tokio::test]
async fn a_damaged_chunk_alone_is_sent_again_in_container_mode() {
    let dir = TempDir::new("retransmit-ctr");
    dir.file("src/model.safetensors", &model());
    let server = TestServer::start(Registry::root(dir.join("src")).expect("root"), config()).await;
    let proxy = WanProxy::start(server.addr, Link::loopback()).await;
    let opts = TransferOptions::default();
    let before = proxy.down_bytes();
    let client = Client::connect(proxy.addr, config()).await.expect("connect");
    let handshake = proxy.down_bytes() - before;
    let clean_path = dir.join("clean.safetensors");
    client.get_container_file("model.safetensors", None, &clean_path, &opts).await.expect("clean pull");
    let clean = proxy.down_bytes() - before;
    let expected = std::fs::read(&clean_path).expect("read clean");
    let dest = dir.join("out.safetensors");
    let mut worst = 0;
    for k in 1..8u64 {
        let at = handshake + (clean - handshake) * k / 8 + 1000;
        proxy.plan(vec![Fault::Flip { dir: Dir::Down, at, bit: 2 }]);
        let before = (proxy.down_bytes(), proxy.connections());
        let client = Client::connect(proxy.addr, config()).await.expect("connect");
        client
            .get_container_file("model.safetensors", None, &dest, &opts)
            .await
            .unwrap_or_else(|e| panic!("{at}: {e}"));
        assert!(std::fs::read(&dest).expect("read") == expected, "flip at {at}: bytes differ");
        assert_eq!(proxy.connections() - before.1, 1, "flip at {at}: reconnected");
        let resent = (proxy.down_bytes() - before.0).saturating_sub(clean);
        worst = worst.max(resent);
        // One chunk, and the headers of every item again.
        assert!(resent <= u64::from(CHUNK) + (8 << 10), "flip at {at}: {resent} bytes sent again");
    }
    eprintln!("container mode: most bytes sent again after a damaged chunk: {worst}");
}

/// Issue 15 item 3, `put`: a push cut midway is continued under its upload
/// id: the server kept what it verified, the client asks what is missing
/// and sends only that; the stored file is byte-identical.
#[tokio::test]
async fn a_push_cut_midway_resumes_and_sends_only_the_rest() {
    let s = setup("push-resume").await;
    let src = s.dir.join("src/model.bin");
    let client = Client::connect(s.proxy.addr, config()).await.expect("connect");
    let before = s.proxy.up_bytes();
    client.put_file(&src, "clean-push.bin").await.expect("clean push");
    let clean = s.proxy.up_bytes() - before;
    let mut rng = Rng(0x9A5E);
    let mut worst = 0;
    for round in 0..5 {
        let at = clean / 4 + rng.below(clean / 2);
        s.proxy.plan(vec![Fault::Cut { dir: Dir::Up, at }]);
        let before = (s.proxy.up_bytes(), s.proxy.connections());
        let client = Client::connect(s.proxy.addr, config()).await.expect("connect");
        let name = format!("pushed-{round}.bin");
        let got = client.put_file(&src, &name).await.unwrap_or_else(|e| panic!("cut at {at}: {e}"));
        assert_eq!(got.len, LEN as u64);
        assert!(std::fs::read(s.dir.join(&format!("src/{name}"))).expect("read") == s.data, "cut at {at}");
        assert!(s.proxy.connections() - before.1 >= 2, "cut at {at} did not reconnect");
        let resent = (s.proxy.up_bytes() - before.0).saturating_sub(clean);
        worst = worst.max(resent);
        assert!(resent <= u64::from(WINDOW + CHUNK) + (16 << 10), "cut at {at}: {resent} bytes sent again");
    }
    eprintln!("push: most bytes sent again after a cut: {worst} (a push from the start: {clean})");
}

/// `upload_keep` zero (`serve --upload-keep 0`): the server keeps no cut
/// push, so the retry sends the object again from the start.
#[tokio::test]
async fn a_server_that_keeps_no_uploads_gets_the_push_again_whole() {
    let dir = TempDir::new("push-keep-none");
    let data = bytes(LEN, 12);
    let src = dir.file("model.bin", &data);
    std::fs::create_dir_all(dir.join("root")).expect("root");
    let server_config = Config { upload_keep: Duration::ZERO, ..config() };
    let registry = Registry::root(dir.join("root")).expect("root").accept_pushes(true);
    let server = TestServer::start(registry, server_config).await;
    let proxy = WanProxy::start(server.addr, Link::loopback()).await;
    let client = Client::connect(proxy.addr, config()).await.expect("connect");
    let before = proxy.up_bytes();
    client.put_file(&src, "clean.bin").await.expect("clean push");
    let clean = proxy.up_bytes() - before;
    let at = clean / 2;
    proxy.plan(vec![Fault::Cut { dir: Dir::Up, at }]);
    let before = proxy.up_bytes();
    let client = Client::connect(proxy.addr, config()).await.expect("connect");
    client.put_file(&src, "cut.bin").await.expect("push after a cut");
    assert!(std::fs::read(dir.join("root/cut.bin")).expect("read") == data);
    let resent = (proxy.up_bytes() - before).saturating_sub(clean);
    assert!(resent >= at / 2, "only {resent} bytes sent again, though nothing was kept");
}

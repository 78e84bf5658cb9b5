//! File transfers over HTTP/2, in memory (duplex) and over loopback TCP.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{bytes, duplex, small_config, TempDir, TestServer};
use tensorwire::transport::{Config, Progress, Registry, TransferOptions};
use tensorwire::Error;
use tokio_util::sync::CancellationToken;

const SIZES: [(&str, usize); 5] =
    [("empty", 0), ("tiny", 1), ("unaligned", 3 * 4097 + 1), ("exact", 200_000), ("multi", 2_345_679)];

fn safetensors_file() -> Vec<u8> {
    let data = bytes(4 * 1000, 9);
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![10, 100], &data).expect("view");
    safetensors::serialize([("w", view)], None).expect("serialize")
}

#[tokio::test]
async fn round_trips_over_duplex() {
    let src = TempDir::new("dx-src");
    let dst = TempDir::new("dx-dst");
    for (i, (name, len)) in SIZES.iter().enumerate() {
        src.file(name, &bytes(*len, i as u64));
    }
    let client = duplex(Registry::root(src.path()).expect("root"), small_config()).await;
    for (i, (name, len)) in SIZES.iter().enumerate() {
        let got = client.get_file(name, dst.join(name)).await.expect("get");
        assert_eq!(got.len, *len as u64);
        assert_eq!(std::fs::read(dst.join(name)).expect("read"), bytes(*len, i as u64), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_over_loopback_with_progress() {
    let src = TempDir::new("lo-src");
    let dst = TempDir::new("lo-dst");
    let data = bytes(9_000_001, 3);
    src.file("nested/big.bin", &data);
    src.file("model.safetensors", &safetensors_file());
    let server = TestServer::start(Registry::root(src.path()).expect("root"), Config::default()).await;
    let client = server.client(Config::default()).await;

    let seen = Arc::new(std::sync::Mutex::new(Vec::<Progress>::new()));
    let log = Arc::clone(&seen);
    let opts = TransferOptions {
        progress: Some(Arc::new(move |p| log.lock().expect("lock").push(p))),
        chunk_size: Some(1 << 20),
        ..TransferOptions::default()
    };
    let got = client.get_file_with("nested/big.bin", dst.join("big.bin"), &opts).await.expect("get");
    assert_eq!(got.len, data.len() as u64);
    assert_eq!(got.crc, crc32fast::hash(&data));
    assert_eq!(std::fs::read(dst.join("big.bin")).expect("read"), data);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 9, "one progress report per 1 MiB chunk");
    assert_eq!(seen.last(), Some(&Progress { done: data.len() as u64, total: Some(data.len() as u64) }));
    assert!(seen.windows(2).all(|w| w[0].done < w[1].done));

    client.get_file("model.safetensors", dst.join("model.safetensors")).await.expect("safetensors");
    assert_eq!(std::fs::read(dst.join("model.safetensors")).expect("read"), safetensors_file());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_share_one_connection() {
    let src = TempDir::new("cc-src");
    let dst = TempDir::new("cc-dst");
    for i in 0..8 {
        src.file(&format!("f{i}"), &bytes(500_000 + i * 77_777, i as u64));
    }
    let server = TestServer::start(Registry::root(src.path()).expect("root"), small_config()).await;
    let client = server.client(small_config()).await;
    let transfers = (0..8).map(|i| {
        let client = client.clone();
        let dest = dst.join(&format!("f{i}"));
        async move { client.get_file(&format!("f{i}"), dest).await }
    });
    for (i, r) in futures::future::join_all(transfers).await.into_iter().enumerate() {
        r.expect("transfer");
        assert_eq!(std::fs::read(dst.join(&format!("f{i}"))).expect("read"), bytes(500_000 + i * 77_777, i as u64));
    }
    server.stop().await;
}

#[tokio::test]
async fn push_round_trips_and_validates() {
    let local = TempDir::new("put-local");
    let remote = TempDir::new("put-remote");
    std::fs::create_dir_all(remote.join("in")).expect("mkdir");
    let data = bytes(1_234_567, 5);
    let path = local.file("up.bin", &data);
    let client = duplex(Registry::root(remote.path()).expect("root").accept_pushes(true), small_config()).await;
    let got = client.put_file(&path, "in/up.bin").await.expect("put");
    assert_eq!(got.len, data.len() as u64);
    assert_eq!(got.crc, crc32fast::hash(&data));
    assert_eq!(std::fs::read(remote.join("in/up.bin")).expect("read"), data);

    // Not safetensors, pushed under a .safetensors name: the server refuses
    // it after receiving, and nothing appears.
    let junk = local.file("junk.bin", b"this is not a safetensors file at all");
    let err = client.put_file(&junk, "in/fake.safetensors").await.expect_err("invalid");
    assert!(matches!(err, Error::Status { status: 422, .. }), "{err}");
    assert!(!remote.join("in/fake.safetensors").exists());
    assert!(!remote.join("in/fake.safetensors.part").exists());

    // Outside the root: refused before anything is written.
    let err = client.put_file(&path, "../escape.bin").await.expect_err("traversal");
    assert!(matches!(err, Error::Status { status: 400, .. }), "{err}");
}

#[tokio::test]
async fn serving_an_invalid_safetensors_file_fails_cleanly() {
    let src = TempDir::new("fake-src");
    let dst = TempDir::new("fake-dst");
    src.file("fake.safetensors", b"\xff\xff\xff\xff\xff\xff\xff\x7fnot json");
    std::fs::write(dst.join("fake.safetensors"), b"previous").expect("write");
    let client = duplex(Registry::root(src.path()).expect("root"), small_config()).await;
    let err = client.get_file("fake.safetensors", dst.join("fake.safetensors")).await.expect_err("invalid");
    assert!(matches!(err, Error::Status { status: 422, .. }), "{err}");
    assert_eq!(std::fs::read(dst.join("fake.safetensors")).expect("read"), b"previous");
}

#[tokio::test]
async fn traversal_attempts_get_4xx() {
    let root = TempDir::new("trav-root");
    root.file("ok.bin", b"ok");
    let secret = TempDir::new("trav-secret");
    secret.file("secret", b"secret");
    let _ = std::os::unix::fs::symlink(secret.join("secret"), root.join("link"));
    let dst = TempDir::new("trav-dst");
    let client = duplex(Registry::root(root.path()).expect("root"), small_config()).await;
    for name in ["../trav-secret/secret", "/etc/passwd", "a/../../x", "link", "a\\b", "", "nope"] {
        let err = client.get_file(name, dst.join("out")).await.expect_err(name);
        // The empty name is refused by the client itself: `/objects/` is the listing.
        let refused = matches!(err, Error::Status { status: 400, .. } | Error::NotFound { .. })
            || (name.is_empty() && matches!(err, Error::InvalidName { .. }));
        assert!(refused, "{name:?} gave {err}");
        assert!(!dst.join("out").exists());
    }
}

#[tokio::test]
async fn abort_mid_stream_leaves_destination_untouched() {
    let src = TempDir::new("abort-src");
    let dst = TempDir::new("abort-dst");
    let path = src.file("growing.bin", &bytes(4_000_000, 1));
    std::fs::write(dst.join("growing.bin"), b"previous").expect("write");
    let client = duplex(Registry::root(src.path()).expect("root"), small_config()).await;
    // After the first chunk arrives, the source file changes: the server
    // notices at the end of the item and aborts instead of ending the object.
    let appended = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&appended);
    let opts = TransferOptions {
        progress: Some(Arc::new(move |_| {
            if !flag.swap(true, Ordering::SeqCst) {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
                f.write_all(b"more").expect("append");
            }
        })),
        ..TransferOptions::default()
    };
    let err = client.get_file_with("growing.bin", dst.join("growing.bin"), &opts).await.expect_err("aborted");
    assert!(
        matches!(&err, Error::Aborted { code, .. } if *code == tensorwire::wire::AbortCode::SOURCE_CHANGED),
        "{err}"
    );
    assert_eq!(std::fs::read(dst.join("growing.bin")).expect("read"), b"previous");
    assert!(!dst.join("growing.bin.part").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_reaches_the_server() {
    let src = TempDir::new("cancel-src");
    let dst = TempDir::new("cancel-dst");
    src.file("big.bin", &bytes(64 << 20, 2));
    let server = TestServer::start(Registry::root(src.path()).expect("root"), small_config()).await;
    let client = server.client(small_config()).await;
    let token = CancellationToken::new();
    let trigger = token.clone();
    let opts = TransferOptions {
        progress: Some(Arc::new(move |_| trigger.cancel())),
        cancel: Some(token),
        ..TransferOptions::default()
    };
    let err = client.get_file_with("big.bin", dst.join("big.bin"), &opts).await.expect_err("cancelled");
    assert!(matches!(err, Error::Cancelled), "{err}");
    // The server sees the reset and stops sending well before 64 MiB.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.handle.active_requests() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the server kept sending after the cancel");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!dst.join("big.bin").exists() && !dst.join("big.bin.part").exists());
    // The connection survives: another transfer on it works.
    src.file("small.bin", b"still works");
    client.get_file("small.bin", dst.join("small.bin")).await.expect("after cancel");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_transfers_in_flight_finish() {
    let src = TempDir::new("shut-src");
    let dst = TempDir::new("shut-dst");
    let data = bytes(24 << 20, 4);
    src.file("big.bin", &data);
    let server = TestServer::start(Registry::root(src.path()).expect("root"), small_config()).await;
    let client = server.client(small_config()).await;
    let handle = server.handle.clone();
    let stopped = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stopped);
    // Shut the server down as soon as the first chunk has arrived.
    let opts = TransferOptions {
        progress: Some(Arc::new(move |_| {
            if !flag.swap(true, Ordering::SeqCst) {
                handle.shutdown();
            }
        })),
        ..TransferOptions::default()
    };
    let got = client.get_file_with("big.bin", dst.join("big.bin"), &opts).await.expect("finishes despite shutdown");
    assert!(stopped.load(Ordering::SeqCst));
    assert_eq!(got.len, data.len() as u64);
    assert_eq!(std::fs::read(dst.join("big.bin")).expect("read"), data);
    server.stop().await;
}

/// SPEC.md §8.9: a root registry is read-only until pushes are allowed; the
/// refusal is a 403 sent before any byte is written.
#[tokio::test]
async fn push_to_a_read_only_root_is_forbidden_before_anything_is_written() {
    let local = TempDir::new("ro-local");
    let remote = TempDir::new("ro-remote");
    let path = local.file("up.bin", &bytes(300_000, 9));
    let client = duplex(Registry::root(remote.path()).expect("root"), small_config()).await;
    let err = client.put_file(&path, "up.bin").await.expect_err("read-only");
    match &err {
        Error::Status { status: 403, message } => assert!(message.contains("may not push"), "{message}"),
        other => panic!("expected a 403, got {other}"),
    }
    assert!(!remote.join("up.bin").exists());
    assert!(!remote.join("up.bin.part").exists());
}

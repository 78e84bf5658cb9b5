//! A real peer: `curl --http2-prior-knowledge` downloads an object's framed
//! body from our server, and the body decodes to the file's bytes.

mod common;

use bytes::BytesMut;
use common::{bytes, TempDir, TestServer};
use tensorwire::transport::{Config, Registry};
use tensorwire::wire::{Frame, FrameDecoder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_downloads_a_framed_object_that_decodes() {
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        // .ci/run installs curl; a developer machine may lack it.
        eprintln!("SKIPPED: curl is not installed, so the real-peer test cannot run (apt-get install curl)");
        return;
    }
    let src = TempDir::new("curl-src");
    let data = bytes(3_000_003, 11);
    src.file("model.bin", &data);
    let server = TestServer::start(Registry::root(src.path()).expect("root"), Config::default()).await;
    let out = src.join("downloaded.tw");
    let url = format!("http://{}/objects/model.bin?chunk_size=1000000", server.addr);
    let status = tokio::process::Command::new("curl")
        .args(["--http2-prior-knowledge", "--silent", "--show-error", "--fail", "-o"])
        .arg(&out)
        .arg(&url)
        .status()
        .await
        .expect("run curl");
    assert!(status.success(), "curl failed: {status}");

    let mut buf = BytesMut::from(&std::fs::read(&out).expect("read body")[..]);
    let mut dec = FrameDecoder::new();
    let mut got = Vec::new();
    let mut chunks = 0;
    while let Some(f) = dec.decode_frame_eof(&mut buf).expect("curl's body decodes") {
        if let Frame::Chunk(c) = f {
            got.extend_from_slice(&c.data);
            chunks += 1;
        }
    }
    assert_eq!(chunks, 4);
    assert_eq!(got, data);

    // And a traversal attempt is a 4xx for curl too.
    let status = tokio::process::Command::new("curl")
        .args(["--http2-prior-knowledge", "--silent", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{}/objects/..%2F..%2Fetc%2Fpasswd", server.addr))
        .output()
        .await
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&status.stdout), "400");
    server.stop().await;
}

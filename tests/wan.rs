//! Transfers through the WAN emulator (`tests/common/wan.rs`): adaptive
//! windows, timeouts that follow progress.

mod common;

use std::time::{Duration, Instant};

use common::wan::{Link, WanProxy};
use common::{bytes, TempDir, TestServer};
use tensorwire::transport::{Client, Config, Registry};
use tensorwire::Error;

fn config() -> Config {
    Config { stream_window: 256 << 10, connection_window: 512 << 10, ..Config::default() }
}

#[tokio::test]
async fn handshake_with_a_silent_peer_fails_within_connect_timeout() {
    // Accepts TCP, never says a word of HTTP/2.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let config = Config { connect_timeout: Duration::from_millis(300), ..Config::default() };
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), Client::connect(addr, config)).await.expect("bounded");
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    assert!(r.as_ref().err().is_some_and(Error::is_retryable));
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn receive_window_is_primed_by_the_round_trip_grows_and_shrinks_when_idle() {
    let dir = TempDir::new("wan-grow");
    let data = bytes(24 << 20, 7);
    dir.file("src/model.bin", &data);
    let server = TestServer::start(Registry::root(dir.join("src")).expect("root"), Config::default()).await;
    let proxy = WanProxy::start(server.addr, Link { rate: None, ..Link::new(1000, Duration::from_millis(40)) }).await;
    // A small cap: 4 MiB over 40 ms is 100 MB/s, which the consumer beats,
    // so the window is what limits and it grows.
    let cap = 4 << 20;
    let client = Client::connect(proxy.addr, Config { max_window: cap, ..config() }).await.expect("connect");
    // Primed for a round trip of at least 40 ms: at least 40/100 of the cap.
    let primed = client.receive_window();
    assert!(primed >= cap / 10 * 4, "primed {primed}");
    let got = client.get_file("model.bin", dir.join("out.bin")).await.expect("get");
    assert_eq!(got.len, data.len() as u64);
    assert_eq!(std::fs::read(dir.join("out.bin")).expect("read"), data);
    assert_eq!(client.receive_window(), cap);
    // Idle: back to the primed window (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.receive_window() != primed && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(client.receive_window(), primed);
}

#[tokio::test]
async fn keepalive_notices_a_silent_peer_mid_transfer_and_the_pull_resumes() {
    use common::wan::{Dir, Fault};
    let dir = TempDir::new("wan-keepalive");
    let data = bytes(4 << 20, 9);
    dir.file("src/model.bin", &data);
    let server = TestServer::start(Registry::root(dir.join("src")).expect("root"), Config::default()).await;
    let proxy = WanProxy::start(server.addr, Link::loopback()).await;
    // The stream's idle timeout is far away: only the keep-alive PING can
    // notice that the peer went silent.
    let config = Config {
        idle_timeout: Duration::from_secs(60),
        keepalive_interval: Duration::from_millis(500),
        keepalive_timeout: Duration::from_millis(500),
        retries: 2,
        ..config()
    };
    proxy.plan(vec![Fault::Stall { dir: Dir::Down, at: 2 << 20, pause: Duration::from_secs(40) }]);
    let client = Client::connect(proxy.addr, config).await.expect("connect");
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(30), client.get_file("model.bin", dir.join("out.bin")))
        .await
        .expect("noticed before the idle timeout")
        .expect("resumed");
    assert_eq!(got.len, data.len() as u64);
    assert_eq!(std::fs::read(dir.join("out.bin")).expect("read"), data);
    assert_eq!(proxy.connections(), 2);
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn a_transfer_outlives_the_client_that_started_it() {
    let dir = TempDir::new("wan-outlive");
    let data = bytes(3 << 20, 5);
    dir.file("src/model.bin", &data);
    let server = TestServer::start(Registry::root(dir.join("src")).expect("root"), Config::default()).await;
    let mut rx = {
        let client = Client::connect(server.addr, config()).await.expect("connect");
        client.get("model.bin", &tensorwire::transport::TransferOptions::default()).await.expect("get")
    };
    let mut got = 0;
    while let Some(frame) = rx.next_frame().await.expect("frames keep coming") {
        if let tensorwire::wire::Frame::Chunk(c) = frame {
            got += c.data.len();
        }
    }
    assert_eq!(got, data.len());
}

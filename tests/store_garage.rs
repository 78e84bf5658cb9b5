//! tensorwire against a real S3 server: Garage, started by the tests on
//! loopback (`tests/common/garage.rs`), one node with replication factor 1
//! or three nodes with replication factor 3, with a request-counting proxy
//! (`tests/common/counting_proxy.rs`) in front where a test counts ranges.
//!
//! Every test prints `SKIPPED: garage not installed (see .ci/run)` and passes
//! when there is no Garage binary.

mod common;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::counting_proxy::CountingProxy;
use common::garage::Garage;

/// Reads one HTTP/1.1 response (head + `Content-Length` body) off `s`;
/// returns the status code.
fn read_response(s: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(n) = resp.parse(&buf).expect("response head") {
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            let code = resp.code.expect("status code");
            while buf.len() < n + len {
                let got = s.read(&mut tmp).expect("read body");
                assert!(got > 0, "connection closed inside a response body");
                buf.extend_from_slice(&tmp[..got]);
            }
            return code;
        }
        let got = s.read(&mut tmp).expect("read head");
        assert!(got > 0, "connection closed before a response head");
        buf.extend_from_slice(&tmp[..got]);
    }
}

#[test]
fn one_node_and_three_node_clusters_start_and_answer_s3() {
    let Some(one) = Garage::start() else { return };
    assert_eq!(one.nodes.len(), 1);
    assert!(one.key_id.starts_with("GK"), "key id {:?}", one.key_id);
    assert!(!one.secret.is_empty());
    assert!(one.bucket_info().contains(&one.bucket), "{}", one.bucket_info());
    assert_eq!(one.unfinished_uploads(), 0);
    drop(one);

    let Some(mut three) = Garage::cluster(3) else { return };
    let status = three.cli_ok(0, &["status"]);
    for n in &three.nodes {
        assert!(status.contains(&n.id[..16]), "node {} not in `garage status`:\n{status}", n.id);
    }
    // Every node answers S3 (an anonymous request is refused, but answered).
    for addr in three.s3_addrs() {
        let mut s = TcpStream::connect(addr).expect("connect S3");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        write!(s, "GET /{} HTTP/1.1\r\nHost: {addr}\r\n\r\n", three.bucket).expect("send");
        let code = read_response(&mut s);
        assert!((400..500).contains(&code), "anonymous GET answered {code}");
    }
    three.stop_node(2);
    assert!(!three.nodes[2].running());
    assert!(three.nodes[0].running() && three.nodes[1].running());
}

#[tokio::test]
async fn proxy_records_keep_alive_requests_with_chunked_bodies_and_skips_a_dead_upstream() {
    let Some(mut g) = Garage::cluster(3) else { return };
    let bucket = g.bucket.clone();
    // The first upstream is stopped: every connection goes to another one.
    g.stop_node(0);
    let proxy = CountingProxy::start(g.s3_addrs()).await;
    let addr = proxy.addr;
    let codes = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect proxy");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        // A chunked PUT, then a ranged GET, on one connection.
        write!(
            s,
            "PUT /{bucket}/k?partNumber=1&uploadId=x HTTP/1.1\r\nHost: {addr}\r\n\
             Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        .expect("send put");
        let a = read_response(&mut s);
        write!(s, "GET /{bucket}/k HTTP/1.1\r\nHost: {addr}\r\nRange: bytes=8-15\r\n\r\n").expect("send get");
        let b = read_response(&mut s);
        (a, b)
    })
    .await
    .expect("client");
    assert!((400..500).contains(&codes.0) && (400..500).contains(&codes.1), "{codes:?}");
    let reqs = proxy.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!((reqs[0].method.as_str(), reqs[0].path()), ("PUT", format!("/{}/k", g.bucket).as_str()));
    assert!(reqs[0].has_query("partNumber") && reqs[0].has_query("uploadId"));
    assert_eq!(reqs[1].method, "GET");
    assert_eq!(reqs[1].byte_range(), Some((8, 15)));
    assert_eq!(reqs[0].connection, reqs[1].connection, "one keep-alive connection");
    assert_ne!(reqs[0].upstream, 0, "the stopped node was skipped");

    // A rejected request gets a 403 from the proxy itself, and is recorded.
    proxy.reject_when(|r| r.method == "DELETE");
    let bucket = g.bucket.clone();
    let code = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect proxy");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        write!(s, "DELETE /{bucket}/k HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send");
        let code = read_response(&mut s);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        (code, rest.len())
    })
    .await
    .expect("client");
    assert_eq!(code, (403, 0), "refused, then closed");
    assert_eq!(proxy.requests().len(), 3);
}

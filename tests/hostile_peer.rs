//! A scripted raw HTTP/2 server that sends hostile bodies: the client must
//! fail with a typed error and leave the destination as it was.

mod common;

use bytes::Bytes;
use common::TempDir;
use tensorwire::transport::{Client, Config};
use tensorwire::wire::{preamble, Frame, ItemHeader, Mode, ObjectEncoder, ObjectHeader, CONTENT_TYPE};
use tensorwire::Error;

/// Serves one connection: every request is answered with `body`.
async fn scripted(body: Vec<u8>, content_type: &'static str) -> Client {
    let (a, b) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let mut conn = h2::server::handshake(b).await.expect("server handshake");
        while let Some(Ok((_req, mut respond))) = conn.accept().await {
            let resp =
                http::Response::builder().status(200).header("content-type", content_type).body(()).expect("resp");
            let mut stream = respond.send_response(resp, false).expect("send response");
            let body = Bytes::from(body.clone());
            tokio::spawn(async move {
                // Hand h2 everything at once: the test bodies are small.
                stream.reserve_capacity(body.len());
                let _ = stream.send_data(body, true);
            });
        }
    });
    Client::handshake(a, "scripted", Config::default()).await.expect("client handshake")
}

fn valid_object(data: &[u8]) -> Vec<u8> {
    let mut enc = ObjectEncoder::new();
    let mut out = preamble().to_vec();
    let frames: Vec<Frame> = vec![
        enc.object_header(ObjectHeader::new("x", Mode::File).with_items(1)).expect("h"),
        enc.item_header(ItemHeader::bytes(0, "x", data.len() as u64)).expect("i"),
        enc.chunk(Bytes::copy_from_slice(&data[..data.len() / 2])).expect("c"),
        enc.chunk(Bytes::copy_from_slice(&data[data.len() / 2..])).expect("c"),
        enc.item_end().expect("e"),
        enc.object_end().expect("o"),
    ];
    for f in frames {
        f.encode(&mut out);
    }
    out
}

async fn expect_failure(body: Vec<u8>) -> Error {
    let dir = TempDir::new("hostile");
    std::fs::write(dir.join("out"), b"previous").expect("write");
    let client = scripted(body, CONTENT_TYPE).await;
    let err = client.get_file("x", dir.join("out")).await.expect_err("hostile body accepted");
    assert_eq!(std::fs::read(dir.join("out")).expect("read"), b"previous", "destination changed");
    assert!(!dir.join("out.part").exists(), ".part left behind");
    err
}

#[tokio::test]
async fn scripted_valid_object_is_accepted() {
    let dir = TempDir::new("hostile-ok");
    let client = scripted(valid_object(b"hello, world"), CONTENT_TYPE).await;
    client.get_file("x", dir.join("out")).await.expect("valid");
    assert_eq!(std::fs::read(dir.join("out")).expect("read"), b"hello, world");
}

#[tokio::test]
async fn corrupted_chunk_is_rejected_and_retryable() {
    let mut body = valid_object(b"hello, world, this is a test");
    let at = body.len() - 60; // inside the second chunk's payload
    body[at] ^= 0x01;
    let err = expect_failure(body).await;
    assert!(err.is_retryable(), "{err}");
    assert!(matches!(err, Error::Decode(tensorwire::wire::DecodeError::PayloadChecksum { item: 0, .. })), "{err}");
}

#[tokio::test]
async fn truncated_body_is_rejected() {
    let mut body = valid_object(b"hello, world");
    body.truncate(body.len() - 10);
    let err = expect_failure(body).await;
    assert!(matches!(err, Error::Decode(tensorwire::wire::DecodeError::UnexpectedEof { .. })), "{err}");
}

#[tokio::test]
async fn missing_object_end_is_rejected() {
    let mut body = valid_object(b"hello, world");
    body.truncate(body.len() - 48);
    let err = expect_failure(body).await;
    assert!(matches!(err, Error::Decode(tensorwire::wire::DecodeError::Truncated)), "{err}");
}

#[tokio::test]
async fn oversized_frame_is_rejected_before_allocation() {
    let mut body = preamble().to_vec();
    let head = tensorwire::wire::FrameHeader::new(tensorwire::wire::FrameKind::Chunk, 0, 0, u32::MAX, 0);
    head.encode(&mut body);
    let err = expect_failure(body).await;
    assert!(matches!(err, Error::Decode(tensorwire::wire::DecodeError::FrameTooLarge { .. })), "{err}");
}

#[tokio::test]
async fn wrong_content_type_is_rejected() {
    let dir = TempDir::new("hostile-ct");
    let client = scripted(valid_object(b"x"), "text/html").await;
    let err = client.get_file("x", dir.join("out")).await.expect_err("wrong type");
    assert!(matches!(err, Error::Protocol(_)), "{err}");
    assert!(!dir.join("out").exists());
}

/// A container object built frame by frame, for malformed variants.
fn container_body(edit: impl FnOnce(&mut Vec<Frame>)) -> Vec<u8> {
    use tensorwire::wire::Dtype;
    let mut enc = ObjectEncoder::new();
    let mut frames = vec![
        enc.object_header(ObjectHeader::new("m", Mode::Container).with_items(2)).expect("h"),
        enc.item_header(ItemHeader::tensor(0, "a", Dtype::F32, vec![2])).expect("i"),
        enc.chunk(Bytes::from_static(&[0; 8])).expect("c"),
        enc.item_end().expect("e"),
        enc.item_header(ItemHeader::tensor(0, "b", Dtype::F32, vec![1])).expect("i"),
        enc.chunk(Bytes::from_static(&[0; 4])).expect("c"),
        enc.item_end().expect("e"),
        enc.object_end().expect("o"),
    ];
    edit(&mut frames);
    let mut out = preamble().to_vec();
    for f in frames {
        f.encode(&mut out);
    }
    out
}

async fn retrieve_err(body: Vec<u8>) -> Error {
    use futures::StreamExt;
    let client = scripted(body, CONTENT_TYPE).await;
    let retriever = client.retrieve("m", None, &Default::default()).await.expect("response");
    let results: Vec<Result<_, Error>> = retriever.collect().await;
    results.into_iter().find_map(Result::err).expect("a malformed container was accepted")
}

#[tokio::test]
async fn container_with_inconsistent_item_header_is_rejected() {
    let body = container_body(|f| {
        if let Frame::ItemHeader(h) = &mut f[1] {
            h.len = 9; // F32 [2] is 8 bytes
        }
    });
    let err = retrieve_err(body).await;
    assert!(matches!(err, Error::Decode(tensorwire::wire::DecodeError::InconsistentItem { item: 0, .. })), "{err}");
}

#[tokio::test]
async fn container_with_repeated_names_is_rejected() {
    let body = container_body(|f| {
        if let Frame::ItemHeader(h) = &mut f[4] {
            h.name = "a".into();
        }
    });
    let err = retrieve_err(body).await;
    assert!(matches!(err, Error::Decode(tensorwire::wire::DecodeError::DuplicateName { .. })), "{err}");
}

#[tokio::test]
async fn container_with_wrong_count_is_rejected() {
    let body = container_body(|f| {
        f[0] = Frame::ObjectHeader(ObjectHeader::new("m", Mode::Container).with_items(3));
    });
    let err = retrieve_err(body).await;
    assert!(
        matches!(err, Error::Decode(tensorwire::wire::DecodeError::ObjectEndMismatch { field: "items", .. })),
        "{err}"
    );
}

#[tokio::test]
async fn bytes_after_the_object_end_are_rejected() {
    // SPEC.md §7.5: the file is committed only once the stream has ended
    // right after the object end.
    let mut body = valid_object(b"hello, world");
    body.extend_from_slice(b"junk");
    let err = expect_failure(body).await;
    assert!(matches!(err, Error::Decode(tensorwire::wire::DecodeError::TrailingData)), "{err}");
}

//! Every receiving mode goes through one path (frames → `recv::Assembler` →
//! a `recv::Sink`): the same damaged bodies give the same typed errors in
//! each, and none leaves a file in place or a `.part` behind.
//!
//! Sans-IO: bodies are bytes, decoded with `FrameDecoder` (as the transport
//! does) and fed to each mode; a second table feeds frames directly, past
//! the decoder's checks, to the assembler and the driver. The server's push
//! path is also run over loopback with a raw HTTP/2 PUT.

mod common;

use std::path::Path;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tensorwire::recv::{ContainerFile, FileSink, FileWriter, ObjectRetriever, Receive};
use tensorwire::tensor::Dtype;
use tensorwire::transport::{Config, Registry};
use tensorwire::wire::{
    preamble, Chunk, DecodeError, Frame, FrameDecoder, ItemEnd, ItemHeader, Mode, ObjectEncoder, ObjectEnd,
    ObjectHeader, CONTENT_TYPE,
};
use tensorwire::Error;

/// The frames of a container object of two u8 tensors ("a": 10 bytes, "b":
/// 6 bytes), in chunks of 4 bytes.
fn good_frames() -> Vec<Frame> {
    let mut enc = ObjectEncoder::new();
    let mut out = vec![enc.object_header(ObjectHeader::new("m", Mode::Container)).expect("header")];
    for (name, data) in [("a", &b"0123456789"[..]), ("b", &b"abcdef"[..])] {
        out.push(enc.item_header(ItemHeader::tensor(0, name, Dtype::U8, vec![data.len() as u64])).expect("item"));
        for piece in data.chunks(4) {
            out.push(enc.chunk(Bytes::copy_from_slice(piece)).expect("chunk"));
        }
        out.push(enc.item_end().expect("item end"));
    }
    out.push(enc.object_end().expect("object end"));
    out
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&preamble());
    for f in frames {
        f.clone().encode(&mut buf);
    }
    buf.to_vec()
}

/// Offset in `encode(frames)` where frame `index` starts.
fn offset_of(frames: &[Frame], index: usize) -> usize {
    encode(&frames[..index]).len()
}

/// The frames a receiver gets from `body`, as the transport's decoder
/// hands them over: up to and including the first error.
fn decode(body: &[u8]) -> Vec<Result<Frame, Error>> {
    let mut dec = FrameDecoder::new();
    let mut buf = BytesMut::from(body);
    let mut out = Vec::new();
    loop {
        match dec.decode_frame_eof(&mut buf) {
            Ok(Some(f)) => out.push(Ok(f)),
            Ok(None) => return out,
            Err(e) => {
                out.push(Err(e.into()));
                return out;
            }
        }
    }
}

type Frames = futures::stream::Iter<std::vec::IntoIter<Result<Frame, Error>>>;

fn stream(frames: Vec<Result<Frame, Error>>) -> Frames {
    futures::stream::iter(frames)
}

/// The receiving modes, each run on `frames` with its output under `dir`.
const MODES: [&str; 6] = ["file", "container->file", "lazy stream", "collect_map", "write_safetensors", "push"];

async fn run_mode(mode: &str, frames: Vec<Result<Frame, Error>>, dir: &Path) -> Result<(), Error> {
    let dest = dir.join("out");
    match mode {
        "file" => {
            let mut recv = Receive::new(FileWriter::new(FileSink::create(&dest)?));
            recv.take(&mut stream(frames)).await.map(drop)
        }
        "container->file" => ContainerFile::new(&dest).take(&mut stream(frames)).await.map(drop),
        "lazy stream" => {
            let mut tensors = ObjectRetriever::new(stream(frames));
            while let Some(t) = tensors.next().await {
                t?;
            }
            Ok(())
        }
        "collect_map" => ObjectRetriever::new(stream(frames)).collect_map().await.map(drop),
        "write_safetensors" => ObjectRetriever::new(stream(frames)).write_safetensors(&dest).await.map(drop),
        // What the server's push handler runs: the upload's file opened on
        // the first verified bytes.
        "push" => {
            let d = dest.clone();
            let mut recv = Receive::new(FileWriter::opening(move || FileSink::create(d)));
            recv.take(&mut stream(frames)).await.map(drop)
        }
        other => panic!("unknown mode {other}"),
    }
}

/// Runs every mode on `frames`; returns each one's error (`None`: it
/// succeeded), checking that a failed mode left nothing in `dir`.
async fn every_mode(case: &str, frames: impl Fn() -> Vec<Result<Frame, Error>>) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for mode in MODES {
        let dir = common::TempDir::new(&format!("modes-{}-{}", case.replace(' ', "_"), mode.replace(['>', ' '], "_")));
        let r = run_mode(mode, frames(), dir.path()).await;
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read dir").flatten().map(|e| e.file_name()).collect();
        if r.is_err() {
            assert!(left.is_empty(), "{case}: mode {mode} failed ({r:?}) but left {left:?}");
        }
        out.push(r.err().map(|e| format!("{e:?}")));
    }
    out
}

/// Asserts that every mode failed with the same error, and that it is the
/// expected one.
fn assert_same(case: &str, got: &[Option<String>], expect: impl Fn(&DecodeError) -> bool, sample: &Error) {
    let first = got[0].as_ref().unwrap_or_else(|| panic!("{case}: mode {} succeeded", MODES[0]));
    for (mode, e) in MODES.iter().zip(got) {
        assert_eq!(e.as_ref(), Some(first), "{case}: mode {mode} differs from mode {}", MODES[0]);
    }
    match sample {
        Error::Decode(d) => assert!(expect(d), "{case}: unexpected error {first}"),
        other => panic!("{case}: not a decode error: {other:?}"),
    }
    assert_eq!(first, &format!("{sample:?}"), "{case}");
}

fn first_error(frames: Vec<Result<Frame, Error>>) -> Error {
    frames.into_iter().find_map(Result::err).unwrap_or(Error::Decode(DecodeError::Truncated))
}

#[tokio::test]
async fn good_body_is_received_by_every_mode() {
    let body = encode(&good_frames());
    let got = every_mode("good", || decode(&body)).await;
    assert!(got.iter().all(Option::is_none), "{got:?}");
}

#[tokio::test]
async fn damaged_bodies_give_the_same_typed_error_in_every_mode() {
    let good = good_frames();
    let body = encode(&good);
    // Frame indices: 0 object header, 1 item a, 2..=4 chunks, 5 item end,
    // 6 item b, 7..=8 chunks, 9 item end, 10 object end.
    let chunk_at = offset_of(&good, 2);
    type Case = (&'static str, Vec<u8>, fn(&DecodeError) -> bool);
    let mut cases: Vec<Case> = Vec::new();

    // A flipped byte in a chunk's payload: its frame CRC fails (SPEC.md §3.2).
    let mut flipped = body.clone();
    flipped[chunk_at + 28 + 1] ^= 0x10;
    cases.push(("bad chunk crc", flipped, |e| matches!(e, DecodeError::PayloadChecksum { .. })));

    // An item end whose CRC is not the item's (SPEC.md §7.3).
    let mut frames = good.clone();
    frames[5] = Frame::ItemEnd(ItemEnd { item: 0, len: 10, crc: crc32fast::hash(b"0123456788") });
    cases.push(("bad item crc", encode(&frames), |e| matches!(e, DecodeError::ItemEndMismatch { field: "crc", .. })));

    // An object end whose CRC is not the combination of the items' (SPEC.md §7.4).
    let mut frames = good.clone();
    let Some(Frame::ObjectEnd(end)) = frames.pop() else { panic!("last frame is the object end") };
    frames.push(Frame::ObjectEnd(ObjectEnd { crc: end.crc ^ 1, ..end }));
    cases.push(("bad object crc", encode(&frames), |e| {
        matches!(e, DecodeError::ObjectEndMismatch { field: "crc", .. })
    }));

    // Cut inside a chunk's payload (SPEC.md §7.5 rule 2).
    cases.push(("truncated mid-chunk", body[..chunk_at + 28 + 2].to_vec(), |e| {
        matches!(e, DecodeError::UnexpectedEof { needed: 2 })
    }));

    // Cut between frames, before the object end (SPEC.md §7.5 rule 3).
    cases.push(("truncated before object end", body[..offset_of(&good, 10)].to_vec(), |e| {
        matches!(e, DecodeError::Truncated)
    }));

    // Bytes after the object end (SPEC.md §7.5 rule 1).
    let mut trailing = body.clone();
    trailing.extend_from_slice(&encode(&good[..1])[8..]);
    cases.push(("bytes after object end", trailing, |e| matches!(e, DecodeError::TrailingData)));

    // The same chunk twice within one stream (SPEC.md §7.2).
    let mut frames = good.clone();
    frames.insert(3, good[2].clone());
    cases.push(("duplicate chunk", encode(&frames), |e| matches!(e, DecodeError::ChunkOverlap { .. })));

    // A chunk overlapping the one before it.
    let mut frames = good.clone();
    frames.insert(3, Frame::Chunk(Chunk::new(0, 2, Bytes::from_static(b"2345"))));
    cases.push(("overlapping chunk", encode(&frames), |e| matches!(e, DecodeError::ChunkOverlap { .. })));

    // A chunk of an item never announced.
    let mut frames = good.clone();
    frames.insert(3, Frame::Chunk(Chunk::new(7, 0, Bytes::from_static(b"zz"))));
    cases.push(("unknown item", encode(&frames), |e| {
        matches!(e, DecodeError::ChunkWithoutItem { item: 7, .. } | DecodeError::UnexpectedFrame { .. })
    }));

    for (case, body, expect) in cases {
        let got = every_mode(case, || decode(&body)).await;
        assert_same(case, &got, expect, &first_error(decode(&body)));
    }
}

/// Frames that reach the receiver without the decoder's per-stream checks
/// (a resumed stream is decoded with gaps allowed, SPEC.md §8.4): the
/// assembler and the driver catch the rest, the same way in every mode.
#[tokio::test]
async fn frames_past_the_decoder_give_the_same_typed_error_in_every_mode() {
    let good = good_frames();
    type Case = (&'static str, Vec<Frame>, Error);
    let mut cases: Vec<Case> = Vec::new();

    let mut frames = good.clone();
    frames.insert(3, Frame::Chunk(Chunk::new(7, 0, Bytes::from_static(b"zz"))));
    cases.push(("unknown item", frames, Error::Decode(DecodeError::ChunkWithoutItem { item: 7, open: None })));

    // SPEC.md §8.4 rule 4: the CRC is checked over the assembled item.
    let mut frames = good.clone();
    frames[3] = Frame::Chunk(Chunk::new(0, 4, Bytes::from_static(b"4X67")));
    let actual = u64::from(crc32fast::hash(b"01234X6789"));
    cases.push((
        "bad item crc over the assembled item",
        frames,
        Error::Decode(DecodeError::ItemEndMismatch {
            item: 0,
            field: "crc",
            claimed: crc32fast::hash(b"0123456789").into(),
            actual,
        }),
    ));

    let mut frames = good.clone();
    frames.insert(3, Frame::Chunk(Chunk::new(0, 8, Bytes::from_static(b"89ab"))));
    cases.push((
        "chunk past the item",
        frames,
        Error::Decode(DecodeError::ChunkOutOfBounds { item: 0, offset: 8, len: 4, item_len: 10 }),
    ));

    let mut frames = good.clone();
    frames.push(good[0].clone());
    cases.push(("frame after object end", frames, Error::Decode(DecodeError::TrailingData)));

    let mut frames = good.clone();
    frames.pop();
    cases.push(("frames end before object end", frames, Error::Decode(DecodeError::Truncated)));

    let mut frames = good.clone();
    frames.insert(1, Frame::ObjectHeader(ObjectHeader::new("other", Mode::Container)));
    cases.push((
        "object header changes",
        frames,
        Error::Decode(DecodeError::InconsistentItem { item: 0, reason: "the object header changed".into() }),
    ));

    let frames: Vec<Frame> = good[1..].to_vec();
    cases.push((
        "no object header",
        frames,
        Error::Decode(DecodeError::UnexpectedFrame {
            kind: tensorwire::wire::FrameKind::ItemHeader,
            reason: "before the object header",
        }),
    ));

    for (case, frames, expect) in cases {
        let got = every_mode(case, || frames.iter().cloned().map(Ok).collect()).await;
        let d = match &expect {
            Error::Decode(d) => d.clone(),
            _ => unreachable!("every case expects a decode error"),
        };
        assert_same(case, &got, |e| *e == d, &expect);
    }
}

/// The server's push path (over loopback, a raw HTTP/2 PUT) answers a
/// damaged body with the same error, and stores nothing.
#[tokio::test]
async fn server_push_rejects_damaged_bodies_with_the_same_error() {
    let good = good_frames();
    let body = encode(&good);
    let mut flipped = body.clone();
    flipped[offset_of(&good, 2) + 28 + 1] ^= 0x10;
    let mut frames = good.clone();
    frames[5] = Frame::ItemEnd(ItemEnd { item: 0, len: 10, crc: 1 });
    let cases = [
        ("bad chunk crc", flipped),
        ("bad item crc", encode(&frames)),
        ("truncated before object end", body[..offset_of(&good, 10)].to_vec()),
    ];
    let dir = common::TempDir::new("modes-server-push");
    let registry = Registry::root(dir.path()).expect("root").accept_pushes(true);
    let server = common::TestServer::start(registry, Config::default()).await;
    for (case, body) in cases {
        let expect = first_error(decode(&body)).to_string();
        let (status, text) = raw_put(server.addr, "m.bin", body).await;
        assert_eq!(status, 422, "{case}: {text}");
        assert!(text.contains(&expect), "{case}: {text:?} does not say {expect:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read").flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{case}: left {left:?}");
    }
    // The same server stores the good body.
    let (status, text) = raw_put(server.addr, "m.bin", body).await;
    assert_eq!(status, 201, "{text}");
    assert_eq!(std::fs::read(dir.join("m.bin")).expect("stored"), b"0123456789abcdef");
    server.stop().await;
}

/// A PUT of `body` as it is; the status and the response's text.
async fn raw_put(addr: std::net::SocketAddr, name: &str, body: Vec<u8>) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.expect("ready");
    let req = http::Request::put(format!("http://{addr}/objects/{name}"))
        .header("content-type", CONTENT_TYPE)
        .header("tensorwire-version", "1")
        .body(())
        .expect("request");
    let (resp, mut tx) = send.send_request(req, false).expect("send");
    tx.reserve_capacity(body.len());
    let _ = tx.send_data(Bytes::from(body), true);
    let resp =
        tokio::time::timeout(std::time::Duration::from_secs(20), resp).await.expect("in time").expect("response");
    let status = resp.status().as_u16();
    let mut rx = resp.into_body();
    let mut text = Vec::new();
    while let Some(Ok(c)) = rx.data().await {
        let _ = rx.flow_control().release_capacity(c.len());
        text.extend_from_slice(&c);
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

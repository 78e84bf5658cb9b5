//! Container streaming over HTTP/2: ContainerStreamer on the server,
//! ObjectRetriever on the client, pushes into a controller's handler.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{bytes, duplex, small_config, TempDir, TestServer};
use futures::{FutureExt, StreamExt};
use tensorwire::send::ContainerStreamer;
use tensorwire::tensor::{Dtype, Tensor, TensorMap, TensorMeta};
use tensorwire::transport::{Config, PushHandler, Registry, TransferOptions};
use tensorwire::Error;

fn tensor(name: &str, dtype: Dtype, shape: Vec<u64>, seed: u64) -> Tensor {
    let len = TensorMeta::new(name, dtype, shape.clone()).byte_len().expect("size") as usize;
    Tensor::new(name, dtype, shape, Bytes::from(bytes(len, seed))).expect("tensor")
}

/// One tensor of every dtype, plus a scalar and an empty one.
fn every_dtype() -> TensorMap {
    let mut m = TensorMap::new();
    for (i, d) in Dtype::ALL.into_iter().enumerate() {
        let name = format!("t{i:02}.{}", d.as_str());
        m.insert(name.clone(), tensor(&name, d, vec![3, 8], i as u64));
    }
    m.insert("scalar".into(), tensor("scalar", Dtype::F64, vec![], 99));
    m.insert("empty".into(), tensor("empty", Dtype::F32, vec![4, 0], 98));
    m
}

#[tokio::test]
async fn every_dtype_round_trips_in_order() {
    let model = Arc::new(every_dtype());
    let client = duplex(Registry::new().with_container("m", Arc::clone(&model)), small_config()).await;
    let mut retriever = client.retrieve("m", None, &TransferOptions::default()).await.expect("retrieve");
    let mut names = Vec::new();
    while let Some(t) = retriever.next().await {
        let t = t.expect("tensor");
        assert_eq!(Some(&t), model.get(t.name()));
        names.push(t.name().to_string());
    }
    assert_eq!(names, model.keys().cloned().collect::<Vec<_>>(), "items arrive in order");
}

#[tokio::test]
async fn large_tensor_and_thousands_of_small_ones() {
    let mut model = TensorMap::new();
    model.insert("big".into(), tensor("big", Dtype::F32, vec![1024, 1024], 1)); // 4 MiB > 256 KiB window
    for i in 0..3000 {
        let name = format!("small.{i:04}");
        model.insert(name.clone(), tensor(&name, Dtype::BF16, vec![3], i));
    }
    let model = Arc::new(model);
    let client = duplex(Registry::new().with_container("m", Arc::clone(&model)), small_config()).await;
    let got = client.retrieve("m", None, &TransferOptions::default()).await.expect("retrieve").collect_map().await;
    assert_eq!(got.expect("collect"), *model);
}

#[tokio::test]
async fn selection_picks_tensors_in_the_order_asked() {
    let model = Arc::new(every_dtype());
    let client = duplex(Registry::new().with_container("m", model), small_config()).await;
    let want = vec!["scalar".to_string(), "t15.F32".to_string()];
    let retriever = client.retrieve("m", Some(&want), &TransferOptions::default()).await.expect("retrieve");
    let got: Vec<String> = retriever.map(|t| t.expect("tensor").name().to_string()).collect().await;
    assert_eq!(got, want);
    let missing = client.retrieve("m", Some(&["nope".to_string()]), &TransferOptions::default()).await;
    // The object exists: the missing tensor is named as such (SPEC.md §8.5).
    assert!(
        matches!(&missing, Err(Error::ItemNotFound { object, item }) if object == "m" && item == "nope"),
        "{missing:?}"
    );
}

/// `retrieve` reports progress (it used to report none: a `0 B/0 B` bar),
/// in wire bytes out of the object header's total.
#[tokio::test]
async fn retrieve_reports_progress() {
    let model = Arc::new(every_dtype());
    let client = duplex(Registry::new().with_container("m", Arc::clone(&model)), small_config()).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let opts = TransferOptions {
        progress: Some(Arc::new(move |p| log.lock().expect("lock").push(p))),
        ..TransferOptions::default()
    };
    client.retrieve("m", None, &opts).await.expect("retrieve").collect_map().await.expect("collect");
    let seen = seen.lock().expect("lock");
    let total: u64 = model.values().map(|t| t.data().len() as u64).sum();
    let last = seen.last().expect("progress was reported");
    assert_eq!((last.done, last.total), (total, Some(total)));
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));
}

/// A client asking for 1-byte chunks gets the server's minimum, and the
/// object header declares the chunk size actually used (SPEC.md §5.1, §8.2).
#[tokio::test]
async fn tiny_chunk_requests_are_clamped_and_declared_truthfully() {
    use tensorwire::wire::{Frame, MIN_CHUNK_BYTES};
    let src = TempDir::new("clamp-src");
    src.file("blob.bin", &bytes(1 << 20, 5));
    let config = Config { min_chunk_size: MIN_CHUNK_BYTES, ..small_config() };
    let client = duplex(Registry::root(src.path()).expect("root"), config).await;
    let opts = TransferOptions { chunk_size: Some(1), ..TransferOptions::default() };
    let mut rx = client.get("blob.bin", &opts).await.expect("get");
    let (mut declared, mut largest, mut chunks) = (0, 0, 0);
    while let Some(f) = rx.next_frame().await.expect("frame") {
        match f {
            Frame::ObjectHeader(h) => declared = h.chunk_size as usize,
            Frame::Chunk(c) => {
                largest = largest.max(c.data.len());
                chunks += 1;
            }
            _ => {}
        }
    }
    assert_eq!(declared, MIN_CHUNK_BYTES as usize);
    assert!(largest <= declared);
    assert_eq!(chunks, (1 << 20) / MIN_CHUNK_BYTES as usize);
}

#[tokio::test]
async fn put_container_reports_what_was_pushed() {
    use tensorwire::send::ContainerStreamer;
    let model = Arc::new(every_dtype());
    let registry = Registry::new().accept_pushes(true).with_push_handler(Arc::new(|_name, _peer, retriever| {
        Box::pin(async move { retriever.collect_map().await.map(drop) })
    }));
    let client = duplex(registry, small_config()).await;
    let streamer = ContainerStreamer::from_map("up", Arc::clone(&model));
    let expected_len: u64 = model.values().map(|t| t.data().len() as u64).sum();
    let got = client.put_container(streamer, &TransferOptions::default()).await.expect("push");
    // It used to report zeros for every push into a handler.
    assert_eq!(got.items, model.len() as u64);
    assert_eq!(got.len, expected_len);
    assert_ne!(got.crc, 0);
}

#[tokio::test]
async fn safetensors_file_is_served_as_a_container_and_written_back() {
    let model = every_dtype();
    let views: Vec<_> = model.values().map(|t| (t.name().to_string(), t.as_view().expect("view"))).collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let file = safetensors::serialize(views, Some(meta)).expect("serialize");
    let src = TempDir::new("ctr-src");
    let dst = TempDir::new("ctr-dst");
    src.file("model.safetensors", &file);
    let client = duplex(Registry::root(src.path()).expect("root"), small_config()).await;
    let retriever = client.retrieve("model.safetensors", None, &TransferOptions::default()).await.expect("retrieve");
    retriever.write_safetensors(dst.join("out.safetensors")).await.expect("write");
    let written = std::fs::read(dst.join("out.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&written).expect("valid safetensors");
    for (name, t) in &model {
        assert_eq!(&Tensor::from_view(name.as_str(), &st.tensor(name).expect("present")).expect("tensor"), t);
    }
    let (_, header) = safetensors::SafeTensors::read_metadata(&written).expect("header");
    assert_eq!(header.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));
    assert!(!dst.join("out.safetensors.part").exists());
}

/// The same object retrieved twice gives byte-identical files (the
/// `__metadata__` order used to vary from run to run).
#[tokio::test]
async fn retrieving_twice_writes_identical_files() {
    let model = every_dtype();
    let views: Vec<_> = model.values().map(|t| (t.name().to_string(), t.as_view().expect("view"))).collect();
    let meta: std::collections::HashMap<String, String> =
        (0..16).map(|i| (format!("key{i}"), format!("value {i}"))).collect();
    let src = TempDir::new("det-src");
    let dst = TempDir::new("det-dst");
    src.file("model.safetensors", &safetensors::serialize(views, Some(meta)).expect("serialize"));
    let client = duplex(Registry::root(src.path()).expect("root"), small_config()).await;
    let mut files = Vec::new();
    for i in 0..4 {
        let retriever =
            client.retrieve("model.safetensors", None, &TransferOptions::default()).await.expect("retrieve");
        retriever.write_safetensors(dst.join(&format!("out{i}.safetensors"))).await.expect("write");
        files.push(std::fs::read(dst.join(&format!("out{i}.safetensors"))).expect("read"));
    }
    assert!(files.windows(2).all(|w| w[0] == w[1]), "the same object gave different files");
}

#[tokio::test]
async fn lazy_stream_without_index_is_written_as_safetensors() {
    let model = every_dtype();
    let dst = TempDir::new("lazy-dst");
    let stream = futures::stream::iter(model.values().cloned().map(Ok).collect::<Vec<_>>());
    let frames = ContainerStreamer::from_tensors("lazy", stream).with_chunk_size(7).frames();
    let retriever = tensorwire::recv::ObjectRetriever::new(Box::pin(frames));
    retriever.write_safetensors(dst.join("lazy.safetensors")).await.expect("write");
    let written = std::fs::read(dst.join("lazy.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&written).expect("valid");
    assert_eq!(st.len(), model.len());
    assert!(!dst.join("lazy.safetensors.data").exists() && !dst.join("lazy.safetensors.data.part").exists());
}

#[tokio::test]
async fn push_reaches_the_controller_as_a_stream() {
    let received: Arc<Mutex<Vec<(String, Tensor)>>> = Arc::default();
    let sink = Arc::clone(&received);
    let handler: PushHandler = Arc::new(move |name, _peer, mut tensors| {
        let sink = Arc::clone(&sink);
        async move {
            while let Some(t) = tensors.next().await {
                sink.lock().expect("lock").push((name.clone(), t?));
            }
            Ok(())
        }
        .boxed()
    });
    let client = duplex(Registry::new().with_push_handler(handler).accept_pushes(true), small_config()).await;
    let model = every_dtype();
    let stream = futures::stream::iter(model.values().cloned().map(Ok).collect::<Vec<_>>());
    client
        .put_container(ContainerStreamer::from_tensors("update/1", stream), &TransferOptions::default())
        .await
        .expect("push");
    let got = received.lock().expect("lock").clone();
    assert_eq!(got.len(), model.len());
    assert!(got.iter().all(|(n, t)| n == "update/1" && model.get(t.name()) == Some(t)));
}

#[tokio::test]
async fn handler_failure_fails_the_push() {
    let handler: PushHandler = Arc::new(|_, _, _| async { Err(Error::Protocol("controller refuses")) }.boxed());
    let client = duplex(Registry::new().with_push_handler(handler).accept_pushes(true), small_config()).await;
    let stream = futures::stream::iter(vec![Ok(tensor("x", Dtype::F32, vec![2], 1))]);
    let err = client.put_container(ContainerStreamer::from_tensors("u", stream), &TransferOptions::default()).await;
    assert!(matches!(err, Err(Error::Status { status: 500, .. })), "{err:?}");
}

/// A consumer that stops taking tensors stops the sender: what the server
/// has handed to HTTP/2 stays within the windows, however large the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_bounds_what_is_buffered() {
    let mut model = TensorMap::new();
    for i in 0..16 {
        let name = format!("w{i:02}");
        model.insert(name.clone(), tensor(&name, Dtype::F32, vec![1 << 20], i));
        // 4 MiB each, 64 MiB in all
    }
    let config = small_config();
    let server = TestServer::start(Registry::new().with_container("m", Arc::new(model)), config.clone()).await;
    let client = server.client(config.clone()).await;
    let mut retriever = client.retrieve("m", None, &TransferOptions::default()).await.expect("retrieve");
    let first = retriever.next().await.expect("one").expect("tensor");
    assert_eq!(first.data().len(), 4 << 20);
    // Stop consuming; let the sender run as far as it can.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = server.handle.bytes_sent();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = server.handle.bytes_sent();
    assert_eq!(a, b, "the sender kept sending while the consumer was paused");
    // Taken: one tensor, plus what the windows and h2's buffers allow.
    let bound = (4 << 20) + config.stream_window as u64 + config.connection_window as u64 + (1 << 20);
    assert!(b <= bound, "{b} bytes sent for a consumer that took 4 MiB (bound {bound})");
    // Dropping the retriever cancels the transfer on the server too.
    drop(retriever);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.handle.active_requests() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the server did not notice the cancel");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(server.handle.bytes_sent() < 32 << 20);
    server.stop().await;
}

#[tokio::test]
async fn a_file_object_is_not_a_container() {
    let src = TempDir::new("notctr");
    src.file("plain.bin", b"just bytes");
    let client = duplex(Registry::root(src.path()).expect("root"), Config::default()).await;
    let err = client.retrieve("plain.bin", None, &TransferOptions::default()).await;
    assert!(matches!(err, Err(Error::Status { status: 422, .. }) | Err(Error::Status { status: 400, .. })), "{err:?}");
}

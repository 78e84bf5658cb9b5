//! `serve --store`: a tensorwire server in front of an object store
//! (`StoreSource`, here over a local directory): GET in every mode read
//! lazily from the store, PUT uploaded into it only once verified, and two
//! servers sharing one store.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use common::{bytes, duplex, small_config, TempDir};
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::ObjectStore;
use tensorwire::send::ContainerStreamer;
use tensorwire::store::{put_file, put_frames, ObjectKind, PullOptions, PushOptions, StoreObject, StoreSource};
use tensorwire::tensor::{Dtype, Tensor, TensorMap};
use tensorwire::transport::{Access, Client, Registry, TransferOptions};
use tensorwire::wire::Scheme;
use tensorwire::Error;

fn model() -> TensorMap {
    let mut m = TensorMap::new();
    for (i, (name, n)) in [("a.w", 700_000u64), ("b.b", 300), ("c.w", 500_000)].into_iter().enumerate() {
        let data: Vec<u8> =
            bytes(n as usize, i as u64).chunks(1).flat_map(|c| (c[0] as f32 / 50.0 - 2.5).to_le_bytes()).collect();
        m.insert(name.into(), Tensor::new(name, Dtype::F32, vec![n], Bytes::from(data)).unwrap());
    }
    m
}

fn file(m: &TensorMap) -> Vec<u8> {
    let views: Vec<_> = m.values().map(|t| (t.name().to_string(), t.as_view().unwrap())).collect();
    safetensors::serialize(views, None::<HashMap<String, String>>).unwrap()
}

fn push_options() -> PushOptions {
    PushOptions { concurrency: 2, part_size: 5 << 20, cancel: None }
}

struct Fixture {
    dir: TempDir,
    src: TempDir,
    store: Arc<dyn ObjectStore>,
}

impl Fixture {
    async fn new(tag: &str) -> Self {
        let (dir, src) = (TempDir::new(&format!("{tag}-store")), TempDir::new(&format!("{tag}-src")));
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let path = src.file("model.safetensors", &file(&model()));
        put_file(Arc::clone(&store), &Key::from("rounds/model.safetensors"), &path, &push_options()).await.unwrap();
        Fixture { dir, src, store }
    }

    /// A client of a fresh server over `rounds/` of the store.
    async fn client(&self) -> Client {
        let pull = PullOptions { range_size: 1 << 20, ..PullOptions::default() };
        let source = StoreSource::new(Arc::clone(&self.store), Key::from("rounds"))
            .with_pull_options(pull)
            .with_push_options(push_options());
        let registry = Registry::new().with_source(Arc::new(source)).allow_push(Access::Anyone);
        duplex(registry, small_config()).await
    }
}

#[tokio::test]
async fn a_file_pull_is_served_from_the_store() {
    let f = Fixture::new("ss-file").await;
    let client = f.client().await;
    let dest = f.src.join("out.safetensors");
    let got = client.get_file("model.safetensors", &dest).await.expect("pull");
    assert_eq!(std::fs::read(&dest).unwrap(), file(&model()));
    assert_eq!(got.len, file(&model()).len() as u64);
    let missing = client.get_file("nope.safetensors", f.src.join("x")).await.expect_err("404");
    assert!(matches!(missing, Error::NotFound { .. }), "{missing:?}");
}

#[tokio::test]
async fn container_pulls_with_items_and_quantize_match_a_directory_server() {
    let f = Fixture::new("ss-ctr").await;
    let from_store = f.client().await;
    let from_dir = duplex(Registry::root(f.src.path()).unwrap(), small_config()).await;
    let items = vec!["c.w".to_string(), "b.b".to_string()];
    for quantize in [None, Some(Scheme::Nf4), Some(Scheme::Blockwise8)] {
        let opts = TransferOptions { quantize, ..TransferOptions::default() };
        let a = from_store.retrieve("model.safetensors", Some(&items), &opts).await.unwrap().collect_map().await;
        let b = from_dir.retrieve("model.safetensors", Some(&items), &opts).await.unwrap().collect_map().await;
        assert_eq!(a.expect("from the store"), b.expect("from a directory"), "{quantize:?}");
    }
    let dest = f.src.join("all.safetensors");
    let retriever = from_store.retrieve("model.safetensors", None, &TransferOptions::default()).await.unwrap();
    retriever.write_safetensors(&dest).await.expect("written");
    let st_bytes = std::fs::read(&dest).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    assert_eq!(Tensor::from_view("a.w", &st.tensor("a.w").unwrap()).unwrap(), model()["a.w"]);
}

#[tokio::test]
async fn pushes_are_stored_verified_and_another_server_serves_them() {
    let f = Fixture::new("ss-push").await;
    let (one, two) = (f.client().await, f.client().await);
    let path = f.src.join("model.safetensors");
    one.put_file(&path, "site-1/update.safetensors").await.expect("file push");
    assert!(f.dir.join("rounds/site-1/update.safetensors.tw.json").is_file(), "manifest written");
    let dest = f.src.join("back.safetensors");
    two.get_file("site-1/update.safetensors", &dest).await.expect("pull via the other server");
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&path).unwrap());

    // A container push is stored as its framed body, and served back.
    let streamer = ContainerStreamer::from_map("m", Arc::new(model()));
    one.put_container(streamer.with_name("site-2/update.tw"), &TransferOptions::default()).await.expect("push");
    let object = StoreObject::open(Arc::clone(&f.store), Key::from("rounds/site-2/update.tw"), PullOptions::default());
    assert_eq!(object.await.unwrap().kind(), ObjectKind::Framed);
    let got = two.retrieve("site-2/update.tw", None, &TransferOptions::default()).await.unwrap().collect_map().await;
    assert_eq!(got.expect("framed object served"), model());

    // A container push to a .safetensors name is stored as that file.
    let streamer = ContainerStreamer::from_map("site-3/update.safetensors", Arc::new(model()));
    one.put_container(streamer, &TransferOptions::default()).await.expect("container push");
    let stored = std::fs::read(f.dir.join("rounds/site-3/update.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&stored).expect("a safetensors file");
    for (name, t) in &model() {
        assert_eq!(&Tensor::from_view(name.as_str(), &st.tensor(name).unwrap()).unwrap(), t);
    }
    let object =
        StoreObject::open(Arc::clone(&f.store), Key::from("rounds/site-3/update.safetensors"), PullOptions::default());
    assert_eq!(object.await.unwrap().kind(), ObjectKind::Safetensors, "with its manifest");
    // ...but a quantized one cannot be, and nothing is stored.
    let streamer = ContainerStreamer::from_map("site-4/update.safetensors", Arc::new(model())).quantize(Scheme::Nf4);
    let err = one.put_container(streamer, &TransferOptions::default()).await.expect_err("refused");
    assert!(matches!(err, Error::Status { .. } | Error::Aborted { .. }), "{err:?}");
    // (A local directory keeps the empty directory the upload was staged in.)
    let left = std::fs::read_dir(f.dir.join("rounds/site-4")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "no object, no staged parts");

    let err = one.put_file(&path, "x.tw.json").await.expect_err("manifest names are reserved");
    assert!(matches!(err, Error::Status { status: 400, .. }), "{err:?}");
}

#[tokio::test]
async fn a_push_that_fails_before_its_object_end_stores_nothing() {
    let f = Fixture::new("ss-cut").await;
    let before = std::fs::read_dir(f.dir.join("rounds")).unwrap().count();
    // Every frame of a valid container object but the last, then an error.
    let mut frames: Vec<Result<_, Error>> = ContainerStreamer::from_map("m", Arc::new(model()))
        .frames()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(Ok)
        .collect();
    frames.pop();
    for tail in [None, Some(Error::Protocol("connection cut"))] {
        let mut frames: Vec<_> = frames.iter().map(|f| Ok(f.as_ref().unwrap().clone())).collect();
        if let Some(e) = tail {
            frames.push(Err(e));
        }
        let key = Key::from("rounds/cut.tw");
        let err = put_frames(Arc::clone(&f.store), &key, futures::stream::iter(frames), &push_options()).await;
        assert!(err.is_err(), "stored without an object end");
    }
    // A file push under a .safetensors name that is not one is refused.
    let garbage = f.src.file("g.bin", &bytes(100_000, 9));
    let frames: Vec<_> = tensorwire::send::FileStreamer::open(&garbage).unwrap().frames().collect();
    let key = Key::from("rounds/g.safetensors");
    let err = put_frames(Arc::clone(&f.store), &key, futures::stream::iter(frames), &push_options()).await;
    assert!(matches!(err, Err(Error::Safetensors(_))), "{err:?}");
    assert_eq!(std::fs::read_dir(f.dir.join("rounds")).unwrap().count(), before, "no object, no parts, no manifest");
}

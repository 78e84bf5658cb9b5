//! Object storage against a local directory (`object_store`'s
//! `LocalFileSystem`) and `InMemory`, so these run without an S3 server:
//! round trips in file and container mode, only the needed ranges read, a
//! corrupted byte and a changed object detected, a failed multipart push
//! leaving nothing behind, and a framed nf4 object decoded as over HTTP/2.

mod common;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use common::{bytes, duplex, small_config, TempDir};
use futures::stream::BoxStream;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as Key;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use tensorwire::store::{
    manifest_key, put_container, put_file, ObjectKind, PullOptions, PushOptions, StoreError, StoreObject,
    MANIFEST_RANGE_BYTES, MIN_PART_BYTES,
};
use tensorwire::tensor::{Dtype, Tensor, TensorMap};
use tensorwire::transport::{Registry, TransferOptions};
use tensorwire::wire::Scheme;
use tensorwire::Error;

/// A model of 12 MiB: two big f32 tensors that span several manifest
/// ranges and parts, and small ones between them.
fn model() -> TensorMap {
    let mut m = TensorMap::new();
    let mut add = |name: &str, dtype: Dtype, shape: Vec<u64>, seed: u64| {
        let len = shape.iter().product::<u64>() as usize * (dtype.bits() as usize / 8);
        m.insert(name.into(), Tensor::new(name, dtype, shape, Bytes::from(floats(len, seed))).expect("tensor"));
    };
    add("a.big", Dtype::F32, vec![1024, 1536], 1);
    add("b.bias", Dtype::F32, vec![1000], 2);
    add("c.big", Dtype::F32, vec![1024, 1280], 3);
    add("d.norm", Dtype::F16, vec![333], 4);
    add("e.ids", Dtype::I32, vec![77], 5);
    m
}

/// Finite float-ish bytes (small values, so quantization has real work).
fn floats(len: usize, seed: u64) -> Vec<u8> {
    let raw = bytes(len, seed);
    raw.chunks(4)
        .flat_map(|c| if c.len() == 4 { (c[0] as f32 / 64.0 - 2.0).to_le_bytes().to_vec() } else { c.to_vec() })
        .collect()
}

fn safetensors_file(m: &TensorMap) -> Vec<u8> {
    let views: Vec<_> = m.values().map(|t| (t.name().to_string(), t.as_view().expect("view"))).collect();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize(views, Some(meta)).expect("serialize")
}

fn push_options() -> PushOptions {
    PushOptions { concurrency: 3, part_size: MIN_PART_BYTES, cancel: None }
}

fn pull_options() -> PullOptions {
    PullOptions { concurrency: 4, range_size: 2 << 20, ..PullOptions::default() }
}

/// A store rooted in a fresh directory.
fn local(tag: &str) -> (TempDir, Arc<dyn ObjectStore>) {
    let dir = TempDir::new(tag);
    let store = LocalFileSystem::new_with_prefix(dir.path()).expect("local store");
    (dir, Arc::new(store))
}

/// Every file under `dir`, relative.
fn files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(files(&p).into_iter().map(|f| format!("{}/{f}", p.file_name().unwrap().to_string_lossy())));
        } else {
            out.push(p.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_file_round_trips_through_a_local_store_with_its_manifest() {
    let (dir, store) = local("st-file");
    let src = TempDir::new("st-file-src");
    let file = safetensors_file(&model());
    let path = src.file("model.safetensors", &file);
    let key = Key::from("models/model.safetensors");
    let pushed = put_file(Arc::clone(&store), &key, &path, &push_options()).await.expect("push");
    assert_eq!(pushed.parts, file.len().div_ceil(MIN_PART_BYTES as usize));
    assert_eq!(pushed.manifest.size, file.len() as u64);
    assert_eq!(pushed.manifest.crc32, crc32fast::hash(&file));
    assert_eq!(pushed.manifest.kind, ObjectKind::Safetensors);
    assert_eq!(files(dir.path()), ["models/model.safetensors", "models/model.safetensors.tw.json"]);

    let object = StoreObject::open(Arc::clone(&store), key, pull_options()).await.expect("open");
    assert!(object.manifest().is_some());
    let out = src.join("out.safetensors");
    assert_eq!(object.write_file(&out).await.expect("pull"), file.len() as u64);
    assert_eq!(std::fs::read(&out).expect("read"), file);
}

#[tokio::test]
async fn the_same_works_on_an_in_memory_store() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let src = TempDir::new("st-mem");
    let file = safetensors_file(&model());
    let path = src.file("m.safetensors", &file);
    let key = Key::from("m.safetensors");
    put_file(Arc::clone(&store), &key, &path, &push_options()).await.expect("push");
    let object = StoreObject::open(store, key, pull_options()).await.expect("open");
    let got: TensorMap =
        object.tensors(None).expect("tensors").map_ok(|t| (t.name().to_string(), t)).try_collect().await.expect("pull");
    assert_eq!(got, model());
}

#[tokio::test]
async fn selected_tensors_read_only_the_ranges_they_lie_in() {
    let counting = Arc::new(Counting::new(Arc::new(InMemory::new())));
    let store: Arc<dyn ObjectStore> = counting.clone();
    let src = TempDir::new("st-sel");
    let m = model();
    let file = safetensors_file(&m);
    let key = Key::from("m.safetensors");
    put_file(Arc::clone(&store), &key, src.file("m.safetensors", &file), &push_options()).await.expect("push");
    counting.reads.lock().unwrap().clear();

    let object = StoreObject::open(Arc::clone(&store), key.clone(), pull_options()).await.expect("open");
    let names = vec!["e.ids".to_string(), "b.bias".to_string()];
    let got: Vec<Tensor> = object.tensors(Some(&names)).expect("tensors").try_collect().await.expect("pull");
    assert_eq!(got, vec![m["e.ids"].clone(), m["b.bias"].clone()]);

    let reads = counting.reads.lock().unwrap().clone();
    // The manifest, the probe, then one aligned range per small tensor.
    let data_reads: Vec<_> = reads.iter().filter(|(k, _)| k == key.as_ref()).collect();
    assert_eq!(reads.iter().filter(|(k, _)| k.ends_with(".tw.json")).count(), 1, "{reads:?}");
    assert_eq!(data_reads.len(), 1 + names.len(), "{reads:?}");
    let read_bytes: u64 =
        data_reads.iter().skip(1).map(|(_, r)| r.as_ref().map_or(u64::MAX, |r| r.end - r.start)).sum();
    assert!(read_bytes <= names.len() as u64 * 2 * MANIFEST_RANGE_BYTES, "{read_bytes} bytes for two small tensors");
    // Neither big tensor was read whole.
    assert!(read_bytes < 4 << 20);
    assert!(object.bytes_read() < 4 << 20, "{} bytes read", object.bytes_read());
}

#[tokio::test]
async fn a_whole_container_pull_reads_each_range_once() {
    let counting = Arc::new(Counting::new(Arc::new(InMemory::new())));
    let store: Arc<dyn ObjectStore> = counting.clone();
    let src = TempDir::new("st-all");
    let file = safetensors_file(&model());
    let key = Key::from("m.safetensors");
    put_file(Arc::clone(&store), &key, src.file("m.safetensors", &file), &push_options()).await.expect("push");
    counting.reads.lock().unwrap().clear();
    let object = StoreObject::open(Arc::clone(&store), key.clone(), pull_options()).await.expect("open");
    let out = src.join("out.safetensors");
    object.write_safetensors(None, &out).await.expect("pull");
    let st_bytes = std::fs::read(&out).expect("read");
    let st = safetensors::SafeTensors::deserialize(&st_bytes).expect("valid");
    for (name, t) in &model() {
        assert_eq!(&Tensor::from_view(name.as_str(), &st.tensor(name).expect("present")).expect("tensor"), t);
    }
    let reads = counting.reads.lock().unwrap().clone();
    let total: u64 = reads
        .iter()
        .filter(|(k, _)| k == key.as_ref())
        .skip(1)
        .map(|(_, r)| r.as_ref().map_or(u64::MAX, |r| r.end - r.start))
        .sum();
    assert!(total <= file.len() as u64, "{total} bytes read for a {} byte object", file.len());
}

#[tokio::test]
async fn a_corrupted_byte_is_detected_and_no_file_is_left() {
    let (dir, store) = local("st-corrupt");
    let src = TempDir::new("st-corrupt-src");
    let file = safetensors_file(&model());
    let key = Key::from("m.safetensors");
    put_file(Arc::clone(&store), &key, src.file("m.safetensors", &file), &push_options()).await.expect("push");
    // Flip one byte inside a big tensor, keeping size and mtime (so the
    // ETag is unchanged, as with bit rot under a store).
    let stored = dir.join("m.safetensors");
    let mtime = std::fs::metadata(&stored).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[7 << 20] ^= 0x10;
    std::fs::write(&stored, &bytes).unwrap();
    std::fs::File::options().write(true).open(&stored).unwrap().set_modified(mtime).unwrap();

    let object = StoreObject::open(Arc::clone(&store), key.clone(), pull_options()).await.expect("open");
    let out = src.join("out.safetensors");
    let err = object.write_file(&out).await.expect_err("corruption detected");
    assert!(matches!(err, Error::Store(StoreError::RangeChecksum { offset, .. }) if offset == 7 << 20), "{err:?}");
    assert!(!out.exists());
    assert_eq!(files(src.path()), ["m.safetensors"], "no .part left");
    // The container path checks the same ranges before handing a tensor over.
    let object = StoreObject::open(store, key, pull_options()).await.expect("open");
    let err = object.tensors(None).expect("tensors").try_collect::<Vec<_>>().await.expect_err("detected");
    assert!(matches!(err, Error::Store(StoreError::RangeChecksum { .. })), "{err:?}");
}

#[tokio::test]
async fn a_corrupted_header_byte_is_detected_before_the_header_is_used() {
    let (dir, store) = local("st-corrupt-head");
    let src = TempDir::new("st-corrupt-head-src");
    let file = safetensors_file(&model());
    let key = Key::from("m.safetensors");
    put_file(Arc::clone(&store), &key, src.file("m.safetensors", &file), &push_options()).await.expect("push");
    // "pt" -> "pu" in `__metadata__`: still a valid header, with the same
    // tensors, so only the header's CRC can tell.
    let stored = dir.join("m.safetensors");
    let mtime = std::fs::metadata(&stored).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&stored).unwrap();
    let at = bytes.windows(4).position(|w| w == b"\"pt\"").expect("metadata value") + 2;
    bytes[at] = b'u';
    std::fs::write(&stored, &bytes).unwrap();
    std::fs::File::options().write(true).open(&stored).unwrap().set_modified(mtime).unwrap();
    let err = StoreObject::open(store, key, pull_options()).await.expect_err("header corruption detected");
    assert!(matches!(err, Error::Store(StoreError::RangeChecksum { offset: 0, .. })), "{err:?}");
}

#[tokio::test]
async fn a_whole_object_crc_that_disagrees_with_the_ranges_fails_before_commit() {
    let (_dir, store) = local("st-whole");
    let src = TempDir::new("st-whole-src");
    let key = Key::from("m.safetensors");
    let path = src.file("m.safetensors", &safetensors_file(&model()));
    let mut manifest = put_file(Arc::clone(&store), &key, path, &push_options()).await.expect("push").manifest;
    manifest.crc32 ^= 1;
    store.put(&manifest_key(&key), PutPayload::from(manifest.to_json())).await.unwrap();
    let object = StoreObject::open(store, key, pull_options()).await.expect("open");
    let out = src.join("out.safetensors");
    let err = object.write_file(&out).await.expect_err("whole CRC checked");
    assert!(matches!(err, Error::Store(StoreError::ObjectChecksum { .. })), "{err:?}");
    assert!(!out.exists());
}

#[tokio::test]
async fn an_object_changed_between_ranges_fails_instead_of_mixing_versions() {
    let (_dir, store) = local("st-changed");
    let src = TempDir::new("st-changed-src");
    let file = safetensors_file(&model());
    let key = Key::from("m.safetensors");
    put_file(Arc::clone(&store), &key, src.file("m.safetensors", &file), &push_options()).await.expect("push");
    let object = StoreObject::open(Arc::clone(&store), key.clone(), pull_options()).await.expect("open");
    // Another writer replaces the object after the first read.
    let mut other = model();
    other.insert("b.bias".into(), Tensor::new("b.bias", Dtype::F32, vec![1000], Bytes::from(vec![0u8; 4000])).unwrap());
    store.put(&key, PutPayload::from(safetensors_file(&other))).await.expect("replace");
    let out = src.join("out.safetensors");
    let err = object.write_file(&out).await.expect_err("change detected");
    assert!(matches!(err, Error::Store(StoreError::Changed { .. })), "{err:?}");
    assert!(!out.exists());
    // A fresh open now finds a manifest that describes the old version.
    let err = StoreObject::open(store, key, pull_options()).await.expect_err("stale manifest");
    assert!(matches!(err, Error::Store(StoreError::Changed { .. })), "{err:?}");
}

#[tokio::test]
async fn a_failed_multipart_push_leaves_no_object_and_no_parts() {
    let (dir, inner) = local("st-fail");
    let store = Arc::new(Counting::new(inner).failing_part(2));
    let src = TempDir::new("st-fail-src");
    let path = src.file("m.safetensors", &safetensors_file(&model()));
    let key = Key::from("m.safetensors");
    let err = put_file(store.clone(), &key, &path, &push_options()).await.expect_err("part 2 fails");
    assert!(matches!(err, Error::Store(StoreError::Backend(_))), "{err:?}");
    assert!(store.aborted.lock().unwrap().eq(&1), "the upload was aborted");
    assert_eq!(files(dir.path()), Vec::<String>::new(), "no object, no staged parts, no manifest");
}

#[tokio::test]
async fn a_cancelled_push_is_aborted() {
    let (dir, inner) = local("st-cancel");
    let store = Arc::new(Counting::new(inner));
    let src = TempDir::new("st-cancel-src");
    let path = src.file("m.safetensors", &safetensors_file(&model()));
    let cancel = tokio_util::sync::CancellationToken::new();
    cancel.cancel();
    let options = PushOptions { cancel: Some(cancel), ..push_options() };
    let err = put_file(store.clone(), &Key::from("m.safetensors"), &path, &options).await.expect_err("cancelled");
    assert!(matches!(err, Error::Cancelled), "{err:?}");
    assert_eq!(*store.aborted.lock().unwrap(), 1);
    assert_eq!(files(dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn a_part_size_under_the_s3_minimum_is_refused() {
    let (_dir, store) = local("st-part");
    let src = TempDir::new("st-part-src");
    let path = src.file("m.bin", b"abc");
    let options = PushOptions { part_size: MIN_PART_BYTES - 1, ..push_options() };
    let err = put_file(store, &Key::from("m.bin"), &path, &options).await.expect_err("refused");
    assert!(matches!(err, Error::Store(StoreError::Option(_))), "{err:?}");
}

#[tokio::test]
async fn an_object_without_a_manifest_is_pulled_with_only_its_structure_checked() {
    let (_dir, store) = local("st-nomanifest");
    let src = TempDir::new("st-nomanifest-src");
    let file = safetensors_file(&model());
    let key = Key::from("plain.safetensors");
    store.put(&key, PutPayload::from(file.clone())).await.expect("plain put");
    let object = StoreObject::open(Arc::clone(&store), key.clone(), pull_options()).await.expect("open");
    assert!(object.manifest().is_none());
    assert_eq!(object.kind(), ObjectKind::Safetensors);
    let out = src.join("out.safetensors");
    object.write_file(&out).await.expect("pull");
    assert_eq!(std::fs::read(&out).unwrap(), file);
    // A truncated safetensors object fails its structure check.
    store.put(&key, PutPayload::from(file[..file.len() - 1].to_vec())).await.expect("truncated put");
    let err = StoreObject::open(store, key, pull_options()).await.expect_err("invalid");
    assert!(matches!(err, Error::Safetensors(_)), "{err:?}");
}

#[tokio::test]
async fn a_framed_nf4_object_decodes_to_what_http2_delivers() {
    let (_dir, store) = local("st-nf4");
    let src = TempDir::new("st-nf4-src");
    let m = model();
    let path = src.file("model.safetensors", &safetensors_file(&m));
    let key = Key::from("round-7.tw");
    let pushed =
        put_container(Arc::clone(&store), &key, &path, Some(Scheme::Nf4), &push_options()).await.expect("push");
    assert_eq!(pushed.manifest.kind, ObjectKind::Framed);
    assert!(pushed.manifest.size < (safetensors_file(&m).len() as u64) / 4, "nf4 shrinks the model");

    let object = StoreObject::open(Arc::clone(&store), key.clone(), pull_options()).await.expect("open");
    assert_eq!(object.kind(), ObjectKind::Framed);
    let from_store: TensorMap =
        object.tensors(None).expect("tensors").map_ok(|t| (t.name().to_string(), t)).try_collect().await.expect("pull");

    let client = duplex(Registry::root(src.path()).expect("root"), small_config()).await;
    let opts = TransferOptions { quantize: Some(Scheme::Nf4), ..TransferOptions::default() };
    let over_h2 =
        client.retrieve("model.safetensors", None, &opts).await.expect("retrieve").collect_map().await.expect("h2");
    assert_eq!(from_store, over_h2);
    assert_eq!(from_store["a.big"].dtype(), Dtype::F32, "dtypes restored");

    // Into a safetensors file, and selected tensors.
    let out = src.join("out.safetensors");
    object.write_safetensors(None, &out).await.expect("write");
    let written = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&written).expect("valid");
    assert_eq!(Tensor::from_view("c.big", &st.tensor("c.big").unwrap()).unwrap(), over_h2["c.big"]);
    let names = vec!["d.norm".to_string(), "zzz".to_string()];
    let err = object.tensors(Some(&names)).unwrap().try_collect::<Vec<_>>().await.expect_err("missing item");
    assert!(matches!(err, Error::ItemNotFound { ref item, .. } if item == "zzz"), "{err:?}");
    assert!(store.head(&manifest_key(&key)).await.is_ok());
}

/// A store wrapper that records every read (key, range) and can fail the
/// n-th multipart part (1-based).
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn ObjectStore>,
    reads: Mutex<Vec<(String, Option<Range<u64>>)>>,
    fail_part: Option<usize>,
    aborted: Arc<Mutex<usize>>,
}

impl Counting {
    fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Counting { inner, reads: Mutex::new(Vec::new()), fail_part: None, aborted: Arc::new(Mutex::new(0)) }
    }

    fn failing_part(mut self, n: usize) -> Self {
        self.fail_part = Some(n);
        self
    }
}

impl std::fmt::Display for Counting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Counting {
    async fn put_opts(&self, location: &Key, payload: PutPayload, opts: PutOptions) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Key,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(Failing { inner, n: 0, fail: self.fail_part, aborted: Arc::clone(&self.aborted) }))
    }

    async fn get_opts(&self, location: &Key, options: GetOptions) -> object_store::Result<GetResult> {
        let range = match &options.range {
            Some(GetRange::Bounded(r)) => Some(r.clone()),
            _ => None,
        };
        self.reads.lock().unwrap().push((location.to_string(), range));
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Key>>,
    ) -> BoxStream<'static, object_store::Result<Key>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Key>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Key>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Key, to: &Key, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[derive(Debug)]
struct Failing {
    inner: Box<dyn MultipartUpload>,
    n: usize,
    fail: Option<usize>,
    aborted: Arc<Mutex<usize>>,
}

#[async_trait]
impl MultipartUpload for Failing {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.n += 1;
        if Some(self.n) == self.fail {
            return Box::pin(async {
                Err(object_store::Error::Generic { store: "test", source: "injected part failure".into() })
            });
        }
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        *self.aborted.lock().unwrap() += 1;
        self.inner.abort().await
    }
}

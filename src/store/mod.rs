//! Object storage as a source and a sink (feature `store`): S3 and
//! S3-compatible stores, or a local directory, through Apache Arrow's
//! [`object_store`] crate. SPEC.md §11 describes what is stored.
//!
//! * [`open_url`] — an `s3://bucket/key` or `file:///abs/dir/key` URL to a
//!   store and a key. Credentials and endpoint come from the standard `AWS_*`
//!   environment variables (`AmazonS3Builder::from_env`: `AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, ...); an
//!   explicit endpoint overrides `AWS_ENDPOINT_URL`, and an `http://`
//!   endpoint allows cleartext.
//! * [`StoreObject`] — pull: one ranged read for the header, then the
//!   tensors' byte ranges with several reads in flight, each checked
//!   against the sidecar [`Manifest`] before it is written or handed over;
//!   the object's ETag (or version) from the first read is sent as
//!   `if-match` on every later read, so a changed object fails
//!   ([`StoreError::Changed`]) instead of mixing versions.
//! * [`put_file`] / [`put_container`] — push: a multipart upload whose
//!   parts are slices of the file's mapping (no copy), several in flight,
//!   aborted on any failure or cancellation; the manifest `KEY.tw.json` is
//!   written only after the data object completed.
//! * [`StoreSource`] — a server in front of a store
//!   (`Registry::with_source`): every mode of GET read lazily from the
//!   store, PUT uploaded as it arrives and completed once verified.
//!
//! # Memory
//!
//! A pull holds the ranges in flight (`concurrency × range_size`) plus, in
//! container mode, the tensor being assembled; a push holds the parts in
//! flight (`concurrency × part_size`, mapped pages in file mode).
//!
//! ```no_run
//! use futures::StreamExt;
//! use tensorwire::store::{open_url, PullOptions, StoreObject};
//! # async fn f() -> Result<(), tensorwire::Error> {
//! let (store, key) = open_url("s3://models/round-7/model.safetensors", None)?;
//! let object = StoreObject::open(store, key, PullOptions::default()).await?;
//! let mut tensors = object.tensors(Some(&["lm_head.weight".to_string()]))?;
//! while let Some(t) = tensors.next().await {
//!     let t = t?; // verified against the manifest before it is handed over
//!     println!("{}: {:?} {:?}", t.name(), t.dtype(), t.shape());
//! }
//! # Ok(())
//! # }
//! # fn main() { let _ = f(); }
//! ```

#![forbid(unsafe_code)]

mod layout;
mod manifest;
mod pull;
mod push;
mod serve;

use std::sync::Arc;

pub use crate::error::StoreError;
pub use manifest::{Manifest, ManifestBuilder, ObjectKind, TensorRange, MANIFEST_VERSION, MAX_MANIFEST_BYTES};
pub use object_store::{self, path::Path as Key, ObjectStore};
pub use pull::{PullOptions, StoreObject, DEFAULT_CONCURRENCY, DEFAULT_RANGE_BYTES, PROBE_BYTES};
pub use push::{put_container, put_file, put_frames, PushOptions, Pushed, DEFAULT_PART_BYTES, MIN_PART_BYTES};
pub use serve::StoreSource;

/// The granularity of a manifest's range CRCs that [`put_file`] and
/// [`put_container`] record (1 MiB).
pub const MANIFEST_RANGE_BYTES: u64 = 1 << 20;

/// The suffix of the sidecar manifest's key (SPEC.md §11.2).
pub const MANIFEST_SUFFIX: &str = ".tw.json";

impl StoreError {
    /// Sorts an `object_store` error for `key`: a missing object, a failed
    /// `if-match` (the object changed), or a store failure.
    pub(crate) fn from_backend(key: &Key, e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound { key: key.to_string() },
            object_store::Error::Precondition { .. } | object_store::Error::NotModified { .. } => {
                StoreError::Changed { key: key.to_string(), detail: "the store refused the pinned ETag".into() }
            }
            e => StoreError::Backend(e),
        }
    }
}

/// Opens the store a URL names, and the key in it.
///
/// * `s3://BUCKET/KEY`: S3 or an S3-compatible store, configured from the
///   `AWS_*` environment variables; `endpoint` (e.g. `http://127.0.0.1:3900`)
///   overrides `AWS_ENDPOINT_URL`.
/// * `file:///ABS/DIR/KEY`: a local directory (`object_store`'s
///   `LocalFileSystem`), the key being the whole path.
///
/// ```
/// let (_, key) = tensorwire::store::open_url("file:///tmp/models/m.safetensors", None)?;
/// assert_eq!(key.as_ref(), "tmp/models/m.safetensors");
/// assert!(tensorwire::store::open_url("ftp://x/y", None).is_err());
/// # Ok::<(), tensorwire::Error>(())
/// ```
///
/// # Errors
///
/// [`StoreError::Url`] for another scheme, no bucket or no key;
/// [`StoreError::Backend`] when the S3 configuration is incomplete.
pub fn open_url(url: &str, endpoint: Option<&str>) -> Result<(Arc<dyn ObjectStore>, Key), crate::Error> {
    open(url, endpoint, false)
}

/// Opens the store a URL names, and the prefix in it, which may be empty:
/// `s3://BUCKET`, `s3://BUCKET/PREFIX`, `file:///DIR` (what a
/// [`StoreSource`] serves).
///
/// # Errors
///
/// As [`open_url`].
pub fn open_prefix(url: &str, endpoint: Option<&str>) -> Result<(Arc<dyn ObjectStore>, Key), crate::Error> {
    open(url.trim_end_matches('/'), endpoint, true)
}

fn open(url: &str, endpoint: Option<&str>, prefix: bool) -> Result<(Arc<dyn ObjectStore>, Key), crate::Error> {
    let bad = |reason| StoreError::Url { url: url.to_string(), reason };
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, key) = match rest.split_once('/') {
            Some(split) => split,
            None if prefix => (rest, ""),
            None => return Err(bad("no key after the bucket").into()),
        };
        if bucket.is_empty() {
            return Err(bad("no bucket").into());
        }
        let key = Key::parse(key).map_err(|_| bad("not a valid key"))?;
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        let from_env = std::env::var("AWS_ENDPOINT_URL").ok();
        if let Some(e) = endpoint.map(str::to_string).or(from_env) {
            b = b.with_allow_http(e.starts_with("http://")).with_endpoint(e);
        }
        let store = b.build().map_err(StoreError::Backend)?;
        return Ok((Arc::new(store), key));
    }
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(bad("a file:// URL needs an absolute path (file:///dir/key)").into());
        }
        let key = Key::parse(path.trim_start_matches('/')).map_err(|_| bad("not a valid path"))?;
        if key.as_ref().is_empty() && !prefix {
            return Err(bad("no key").into());
        }
        return Ok((Arc::new(object_store::local::LocalFileSystem::new()), key));
    }
    Err(bad("not an s3:// or file:// URL").into())
}

/// Whether `url` names an object store rather than a tensorwire server.
pub fn is_store_url(url: &str) -> bool {
    url.starts_with("s3://") || url.starts_with("file://")
}

/// The key of `key`'s sidecar manifest (`KEY.tw.json`).
pub fn manifest_key(key: &Key) -> Key {
    Key::from(format!("{key}{MANIFEST_SUFFIX}"))
}

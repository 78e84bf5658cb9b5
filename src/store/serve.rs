//! [`StoreSource`]: a server's objects held in a store, so that several
//! servers can front one bucket with no state of their own.

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use futures::stream::BoxStream;
use object_store::ObjectStore;

use super::{put_frames, Key, ObjectKind, PullOptions, PushOptions, StoreError, StoreObject, MANIFEST_SUFFIX};
use crate::transport::{Source, SourceFrames, SourcePull, Transfer};
use crate::wire::{Frame, Mode};
use crate::Error;

/// Serves the objects under a prefix of a store over tensorwire, and
/// stores pushes there ([`Registry::with_source`](crate::transport::Registry::with_source)).
///
/// A pull reads the object by ranges as the transport sends it, each
/// verified against the object's manifest (SPEC.md §11.3) before it is
/// framed: in file mode the object's bytes, in container mode (with
/// `items` and `quantize`) its tensors one at a time; a framed object
/// asked for in container mode is sent as its own frames. A push is uploaded as it arrives and completed
/// only once its object end was verified (SPEC.md §8.3); any failure
/// aborts the upload. The server holds the reads or parts in flight, never
/// a model.
///
/// ```no_run
/// use std::sync::Arc;
/// use tensorwire::store::{open_url, StoreSource};
/// use tensorwire::transport::{Access, Config, Registry, Server};
/// # async fn f() -> Result<(), tensorwire::Error> {
/// let (store, prefix) = open_url("s3://models/rounds", None)?;
/// let registry = Registry::new().with_source(Arc::new(StoreSource::new(store, prefix))).allow_push(Access::Anyone);
/// Server::bind("127.0.0.1:7470", registry, Config::default()).await?.run().await
/// # }
/// # fn main() { let _ = f(); }
/// ```
#[derive(Debug, Clone)]
pub struct StoreSource {
    store: Arc<dyn ObjectStore>,
    prefix: Key,
    pull: PullOptions,
    push: PushOptions,
}

impl StoreSource {
    /// Objects named `NAME` are the keys `PREFIX/NAME` of `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Key) -> Self {
        StoreSource { store, prefix, pull: PullOptions::default(), push: PushOptions::default() }
    }

    /// How pulls read from the store.
    pub fn with_pull_options(mut self, options: PullOptions) -> Self {
        self.pull = options;
        self
    }

    /// How pushes upload into the store.
    pub fn with_push_options(mut self, options: PushOptions) -> Self {
        self.push = options;
        self
    }

    /// The key of object `name` (already checked by the server, SPEC.md
    /// §8.5: relative, no `.` or `..` segments).
    fn key(&self, name: &str) -> Result<Key, Error> {
        let bad = |reason| Error::InvalidName { name: name.to_string(), reason };
        let rel = Key::parse(name).map_err(|_| bad("not a valid object key"))?;
        Ok(self.prefix.parts().chain(rel.parts()).collect())
    }
}

impl Source for StoreSource {
    fn pull(&self, request: SourcePull) -> BoxFuture<'static, Result<SourceFrames, Error>> {
        let this = self.clone();
        async move {
            let key = this.key(&request.name)?;
            let object =
                StoreObject::open(Arc::clone(&this.store), key, this.pull.clone()).await.map_err(|e| match e {
                    Error::Store(StoreError::NotFound { .. }) => Error::NotFound { name: request.name.clone() },
                    e => e,
                })?;
            let whole = request.items.is_none() && request.quantize.is_none();
            let framed = object.kind() == ObjectKind::Framed;
            // As a directory server: file mode unless tensors were asked
            // for; a framed object in file mode is its stored bytes.
            let mode = request.mode.unwrap_or(if whole { Mode::File } else { Mode::Container });
            match mode {
                Mode::File if whole => Ok(SourceFrames {
                    frames: object.file_frames(&request.name, request.chunk),
                    mode,
                    len: Some(object.size()),
                    items: Some(1),
                }),
                Mode::Container if framed || object.kind() == ObjectKind::Safetensors => {
                    let items = request.items.as_deref();
                    let frames = object.container_frames(&request.name, items, request.quantize, request.chunk)?;
                    let count = match (items, object.tensor_ranges()) {
                        (Some(i), _) => Some(i.len() as u64),
                        (None, Some(t)) => Some(t.len() as u64),
                        (None, None) => None,
                    };
                    Ok(SourceFrames { frames, mode, len: None, items: count })
                }
                _ => Err(Error::Request(crate::transport::RequestError::BadParameter {
                    param: "mode",
                    value: format!("{} (with these options, for this object)", mode.as_str()),
                })),
            }
        }
        .boxed()
    }

    fn push(
        &self,
        name: String,
        frames: BoxStream<'static, Result<Frame, Error>>,
    ) -> BoxFuture<'static, Result<Transfer, Error>> {
        let this = self.clone();
        async move {
            // The sidecar manifests are this source's own (SPEC.md §11.2).
            if name.ends_with(MANIFEST_SUFFIX) {
                return Err(Error::InvalidName { name, reason: "reserved for manifests" });
            }
            let key = this.key(&name)?;
            let (_, end) = put_frames(Arc::clone(&this.store), &key, frames, &this.push).await?;
            Ok(Transfer { len: end.len, items: end.items, crc: end.crc })
        }
        .boxed()
    }
}

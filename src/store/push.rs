//! [`put_file`] and [`put_container`]: an object pushed into a store as a
//! multipart upload, with its manifest written after it.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, Stream, StreamExt};
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload, PutResult};
use tokio_util::sync::CancellationToken;

use super::layout::{probe, Probe};
use super::{manifest_key, Key, Manifest, ManifestBuilder, ObjectKind, StoreError, MANIFEST_RANGE_BYTES};
use crate::send::{ContainerStreamer, FileStreamer};
use crate::wire::{Frame, Scheme};
use crate::Error;

/// The smallest part S3 accepts (5 MiB; only the last part may be smaller).
pub const MIN_PART_BYTES: u64 = 5 << 20;
/// Bytes per part, by default (16 MiB).
pub const DEFAULT_PART_BYTES: u64 = 16 << 20;

/// How a push uploads its object.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Parts in flight at once (at least 1).
    pub concurrency: usize,
    /// Bytes per part: at least [`MIN_PART_BYTES`].
    pub part_size: u64,
    /// Cancels the push: the multipart upload is aborted.
    pub cancel: Option<CancellationToken>,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions { concurrency: super::DEFAULT_CONCURRENCY, part_size: DEFAULT_PART_BYTES, cancel: None }
    }
}

/// What a push stored.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The manifest written beside the object (`KEY.tw.json`).
    pub manifest: Manifest,
    /// The number of parts uploaded.
    pub parts: usize,
}

/// Pushes a file as the object `key`: a multipart upload whose parts are
/// slices of the file's mapping (no copy), `concurrency` in flight; then the
/// manifest (SPEC.md §11.2), with the CRCs computed as the parts went out.
/// A `.safetensors` file is validated first and its layout recorded.
///
/// # Errors
///
/// [`StoreError::Option`] for a part size under [`MIN_PART_BYTES`];
/// [`Error::Safetensors`] for an invalid `.safetensors` file; a failed part,
/// a file that changed while it was read ([`Error::Aborted`]) or
/// [`Error::Cancelled`]: the upload is then aborted, so no parts remain and
/// no object is created.
pub async fn put_file(
    store: Arc<dyn ObjectStore>,
    key: &Key,
    file: impl AsRef<Path>,
    options: &PushOptions,
) -> Result<Pushed, Error> {
    let part = part_size(options)?;
    let streamer = FileStreamer::open(file.as_ref())?.with_chunk_size(part);
    let mut builder = ManifestBuilder::new(MANIFEST_RANGE_BYTES, ObjectKind::Raw);
    if streamer.safetensors_tensors().is_some() {
        let layout = read_layout(file.as_ref(), streamer.len())?;
        builder = ManifestBuilder::new(MANIFEST_RANGE_BYTES, ObjectKind::Safetensors)
            .with_tensors(layout.header_len, layout.tensors);
    }
    // Chunk frames of `part` bytes are the parts: slices of the mapping.
    let parts = futures::stream::iter(streamer.frames()).filter_map(|f| {
        futures::future::ready(match f {
            Ok(Frame::Chunk(c)) => Some(Ok(vec![c.data])),
            Ok(Frame::Abort(a)) => Some(Err(Error::Aborted { code: a.code, message: a.message })),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
    });
    upload(store, key, parts, builder, options).await
}

/// Pushes a safetensors file as a framed container object (SPEC.md §5.1):
/// the same bytes a server sends for `GET ?mode=container` (with
/// `quantize`, `&quantize=SCHEME`), so [`StoreObject`](super::StoreObject)
/// decodes it lazily and restores the dtypes. Parts are built from the
/// frames without copying raw chunk payloads.
///
/// # Errors
///
/// As [`put_file`].
pub async fn put_container(
    store: Arc<dyn ObjectStore>,
    key: &Key,
    file: impl AsRef<Path>,
    quantize: Option<Scheme>,
    options: &PushOptions,
) -> Result<Pushed, Error> {
    let part = part_size(options)?;
    let mut streamer =
        ContainerStreamer::open_safetensors(file.as_ref())?.with_name(key.filename().unwrap_or_default());
    if let Some(s) = quantize {
        streamer = streamer.quantize(s);
    }
    let builder = ManifestBuilder::new(MANIFEST_RANGE_BYTES, ObjectKind::Framed);
    let mut cutter = Cutter::new(part);
    cutter.push(Bytes::copy_from_slice(&crate::wire::preamble()));
    let frames = streamer.frames().map(Some).chain(futures::stream::once(async { None }));
    let parts = frames
        .map(move |f| -> Vec<Result<Vec<Bytes>, Error>> {
            match f {
                Some(Ok(Frame::Abort(a))) => vec![Err(Error::Aborted { code: a.code, message: a.message })],
                Some(Ok(f)) => {
                    // A chunk's payload stays the streamer's buffer.
                    let (head, body) = f.into_buf().into_parts();
                    cutter.push(head);
                    cutter.push(body);
                    cutter.take().into_iter().map(Ok).collect()
                }
                Some(Err(e)) => vec![Err(e)],
                None => cutter.finish().into_iter().map(Ok).collect(),
            }
        })
        .flat_map(futures::stream::iter);
    upload(store, key, parts, builder, options).await
}

fn part_size(options: &PushOptions) -> Result<usize, Error> {
    // S3: every part but the last is at least 5 MiB.
    if options.part_size < MIN_PART_BYTES {
        let m = format!("part size {} is under the store's minimum of {MIN_PART_BYTES} bytes", options.part_size);
        return Err(StoreError::Option(m).into());
    }
    usize::try_from(options.part_size).map_err(|_| StoreError::Option("part size too large".into()).into())
}

/// A safetensors file's layout, from its header.
fn read_layout(file: &Path, size: u64) -> Result<super::layout::Layout, Error> {
    use std::io::Read;
    let mut f = std::fs::File::open(file)?;
    let mut prefix = vec![0u8; 8];
    f.read_exact(&mut prefix)?;
    if let Probe::NeedMore(n) = probe(&prefix, size)? {
        prefix.resize(n as usize, 0);
        f.read_exact(&mut prefix[8..])?;
    }
    match probe(&prefix, size)? {
        Probe::Layout(l) => Ok(l),
        Probe::NeedMore(_) => Err(Error::Protocol("safetensors header longer than announced")),
    }
}

/// Cuts a sequence of buffers into parts of exactly `size` bytes (the last
/// may be shorter), without copying.
struct Cutter {
    size: usize,
    open: Vec<Bytes>,
    open_len: usize,
    done: Vec<Vec<Bytes>>,
}

impl Cutter {
    fn new(size: usize) -> Self {
        Cutter { size, open: Vec::new(), open_len: 0, done: Vec::new() }
    }

    fn push(&mut self, mut b: Bytes) {
        while !b.is_empty() {
            let take = (self.size - self.open_len).min(b.len());
            self.open.push(b.split_to(take));
            self.open_len += take;
            if self.open_len == self.size {
                self.done.push(std::mem::take(&mut self.open));
                self.open_len = 0;
            }
        }
    }

    fn take(&mut self) -> Vec<Vec<Bytes>> {
        std::mem::take(&mut self.done)
    }

    fn finish(&mut self) -> Vec<Vec<Bytes>> {
        if self.open_len > 0 {
            self.done.push(std::mem::take(&mut self.open));
            self.open_len = 0;
        }
        self.take()
    }
}

/// Uploads `parts` (each a list of buffers) as `key`, recording CRCs in
/// `builder`; aborts the upload on any error, then writes the manifest.
async fn upload(
    store: Arc<dyn ObjectStore>,
    key: &Key,
    parts: impl Stream<Item = Result<Vec<Bytes>, Error>>,
    mut builder: ManifestBuilder,
    options: &PushOptions,
) -> Result<Pushed, Error> {
    let mut upload = store.put_multipart(key).await.map_err(|e| StoreError::from_backend(key, e))?;
    let mut count = 0;
    let sent = send_parts(upload.as_mut(), parts, &mut builder, &mut count, options).await;
    let result = match sent {
        Ok(()) => upload.complete().await.map_err(|e| StoreError::from_backend(key, e).into()),
        Err(e) => Err(e),
    };
    let put: PutResult = match result {
        Ok(r) => r,
        Err(e) => {
            // No parts may remain: an aborted upload frees them.
            if let Err(abort) = upload.abort().await {
                tracing::warn!(key = %key, error = %abort, "could not abort the multipart upload");
            }
            return Err(e);
        }
    };
    let manifest = builder.finish(put.e_tag, put.version);
    let mkey = manifest_key(key);
    // SPEC.md §11.2: the manifest is written only after the object completed.
    if let Err(e) = store.put(&mkey, PutPayload::from(manifest.to_json())).await {
        // A manifest of an earlier version would fail every pull: remove it.
        let _ = store.delete(&mkey).await;
        return Err(StoreError::Backend(e).into());
    }
    Ok(Pushed { manifest, parts: count })
}

async fn send_parts(
    upload: &mut dyn MultipartUpload,
    parts: impl Stream<Item = Result<Vec<Bytes>, Error>>,
    builder: &mut ManifestBuilder,
    count: &mut usize,
    options: &PushOptions,
) -> Result<(), Error> {
    let cancel = options.cancel.clone().unwrap_or_default();
    let mut parts = std::pin::pin!(parts);
    let mut in_flight = FuturesUnordered::new();
    loop {
        // Back-pressure: the next part is read from the file only when one
        // of the `concurrency` slots is free.
        while in_flight.len() >= options.concurrency.max(1) {
            wait(&cancel, &mut in_flight).await?;
        }
        let next = tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            next = parts.next() => next,
        };
        let Some(part) = next.transpose()? else { break };
        for b in &part {
            builder.update(b);
        }
        *count += 1;
        in_flight.push(upload.put_part(PutPayload::from_iter(part)));
    }
    // An empty object is one empty part (S3 needs at least one).
    if *count == 0 {
        *count = 1;
        in_flight.push(upload.put_part(PutPayload::default()));
    }
    while !in_flight.is_empty() {
        wait(&cancel, &mut in_flight).await?;
    }
    Ok(())
}

async fn wait(
    cancel: &CancellationToken,
    in_flight: &mut FuturesUnordered<object_store::UploadPart>,
) -> Result<(), Error> {
    tokio::select! {
        _ = cancel.cancelled() => Err(Error::Cancelled),
        done = in_flight.next() => match done {
            Some(r) => r.map_err(|e| StoreError::Backend(e).into()),
            None => Ok(()),
        },
    }
}

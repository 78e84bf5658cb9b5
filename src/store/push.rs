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
        let (header, layout) = read_layout(file.as_ref(), streamer.len())?;
        builder = ManifestBuilder::new(MANIFEST_RANGE_BYTES, ObjectKind::Safetensors)
            .with_tensors(&header[..layout.header_len as usize], layout.tensors);
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
    upload(store, key, parts, builder, options, Ok).await
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
    upload(store, key, parts, builder, options, Ok).await
}

fn part_size(options: &PushOptions) -> Result<usize, Error> {
    // S3: every part but the last is at least 5 MiB.
    if options.part_size < MIN_PART_BYTES {
        let m = format!("part size {} is under the store's minimum of {MIN_PART_BYTES} bytes", options.part_size);
        return Err(StoreError::Option(m).into());
    }
    usize::try_from(options.part_size).map_err(|_| StoreError::Option("part size too large".into()).into())
}

/// A safetensors file's header bytes and layout.
fn read_layout(file: &Path, size: u64) -> Result<(Vec<u8>, super::layout::Layout), Error> {
    use std::io::Read;
    let mut f = std::fs::File::open(file)?;
    let mut prefix = vec![0u8; 8];
    f.read_exact(&mut prefix)?;
    if let Probe::NeedMore(n) = probe(&prefix, size)? {
        prefix.resize(n as usize, 0);
        f.read_exact(&mut prefix[8..])?;
    }
    match probe(&prefix, size)? {
        Probe::Layout(l) => Ok((prefix, l)),
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
        self.finish_into();
        self.take()
    }

    /// Closes the open part, leaving it for [`Cutter::take`].
    fn finish_into(&mut self) {
        if self.open_len > 0 {
            self.done.push(std::mem::take(&mut self.open));
            self.open_len = 0;
        }
    }
}

/// Uploads `parts` (each a list of buffers) as `key`, recording CRCs in
/// `builder`; aborts the upload on any error, then writes the manifest.
async fn upload(
    store: Arc<dyn ObjectStore>,
    key: &Key,
    parts: impl Stream<Item = Result<Vec<Bytes>, Error>>,
    builder: ManifestBuilder,
    options: &PushOptions,
    finish: impl FnOnce(ManifestBuilder) -> Result<ManifestBuilder, Error>,
) -> Result<Pushed, Error> {
    let mut upload = store.put_multipart(key).await.map_err(|e| StoreError::from_backend(key, e))?;
    let mut count = 0;
    let mut builder = builder;
    let sent = send_parts(upload.as_mut(), parts, &mut builder, &mut count, options).await;
    // The last checks run before the upload completes: a failure aborts it.
    let checked = sent.and_then(|()| finish(builder));
    let result = match checked {
        Ok(b) => upload.complete().await.map(|r| (r, b)).map_err(|e| StoreError::from_backend(key, e).into()),
        Err(e) => Err(e),
    };
    let (put, builder): (PutResult, ManifestBuilder) = match result {
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

/// Stores a pushed object from its frames as a server decodes and verifies
/// them (SPEC.md §8.3 into §11): a file-mode push becomes the file's bytes
/// (a `.safetensors` name must hold a valid safetensors file), a
/// container-mode push the framed body itself. The multipart upload
/// completes only after the object end arrived (the decoder verified it and
/// the stream ended cleanly); any error aborts it. Returns the object end's
/// counts.
///
/// # Errors
///
/// The first error of `frames`, [`Error::Protocol`] when they end before an
/// object end, [`Error::Safetensors`] for an invalid `.safetensors` push,
/// and the store's failures.
pub async fn put_frames(
    store: Arc<dyn ObjectStore>,
    key: &Key,
    frames: impl Stream<Item = Result<Frame, Error>> + Send,
    options: &PushOptions,
) -> Result<(Pushed, crate::wire::ObjectEnd), Error> {
    let part = part_size(options)?;
    let safetensors = key.as_ref().ends_with(".safetensors");
    let state = Arc::new(std::sync::Mutex::new(Incoming::default()));
    let (s1, s2) = (Arc::clone(&state), Arc::clone(&state));
    let mut cutter = Cutter::new(part);
    let frames = frames.map(Some).chain(futures::stream::once(async { None }));
    let parts = frames
        .map(move |f| -> Vec<Result<Vec<Bytes>, Error>> {
            let mut st = s1.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match st.handle(f, &mut cutter, safetensors) {
                Ok(()) => cutter.take().into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            }
        })
        .flat_map(futures::stream::iter);
    let kind_of = |st: &Incoming| match st.mode {
        Some(crate::wire::Mode::Container) if st.into_safetensors => ObjectKind::Safetensors,
        Some(crate::wire::Mode::Container) => ObjectKind::Framed,
        _ if safetensors || st.safetensors => ObjectKind::Safetensors,
        _ => ObjectKind::Raw,
    };
    let builder = ManifestBuilder::new(MANIFEST_RANGE_BYTES, ObjectKind::Raw);
    let finish = move |b: ManifestBuilder| -> Result<ManifestBuilder, Error> {
        let st = s2.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let kind = kind_of(&st);
        let mut out = ManifestBuilder::new(MANIFEST_RANGE_BYTES, kind).resume_from(b);
        if kind == ObjectKind::Safetensors {
            // SPEC.md §8.3: a `.safetensors` push is stored only if valid.
            match probe(&st.prefix, out.len())? {
                Probe::Layout(l) => out = out.with_tensors(&st.prefix[..l.header_len as usize], l.tensors),
                Probe::NeedMore(_) => return Err(Error::Protocol("safetensors header longer than the push")),
            }
        }
        Ok(out)
    };
    let pushed = upload(store, key, parts, builder, options, finish).await?;
    let end = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).end;
    let end = end.ok_or(Error::Protocol("push ended before its object end"))?;
    Ok((pushed, end))
}

/// What a push's frames said so far.
#[derive(Default)]
struct Incoming {
    mode: Option<crate::wire::Mode>,
    /// File mode: the next byte expected.
    at: u64,
    /// The object header says the file is a safetensors file.
    safetensors: bool,
    /// A container push to a `.safetensors` name: stored as that file.
    into_safetensors: bool,
    /// File mode, `.safetensors`: the first bytes, up to the header's end.
    prefix: Vec<u8>,
    end: Option<crate::wire::ObjectEnd>,
}

impl Incoming {
    fn handle(&mut self, frame: Option<Result<Frame, Error>>, cutter: &mut Cutter, name_st: bool) -> Result<(), Error> {
        let frame = match frame {
            Some(f) => f?,
            None if self.end.is_some() => {
                cutter.finish_into();
                return Ok(());
            }
            None => return Err(Error::Protocol("push ended before its object end")),
        };
        if let Frame::ObjectHeader(h) = &frame {
            self.mode = Some(h.mode);
            // SPEC.md §8.3, as a directory server: the name or the header's
            // format makes a push a safetensors file, validated before commit.
            self.safetensors = h.metadata.get(crate::send::FORMAT_KEY).is_some_and(|f| f == "safetensors");
            if h.mode == crate::wire::Mode::Container && name_st {
                // As a directory server stores it: the safetensors file, its
                // header from the index, the tensors back to back.
                let index = h.index.as_ref().ok_or(Error::Protocol(
                    "a container push to a .safetensors name needs an index in its object header",
                ))?;
                let metadata: Vec<(String, String)> = h
                    .metadata
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix("safetensors.")?.to_string(), v.clone())))
                    .collect();
                let (head, _) = crate::recv::safetensors_header(index, &metadata)?;
                self.prefix.clone_from(&head);
                self.into_safetensors = true;
                cutter.push(Bytes::from(head));
                return Ok(());
            }
            if h.mode == crate::wire::Mode::Container {
                cutter.push(Bytes::copy_from_slice(&crate::wire::preamble()));
            }
        }
        if let Frame::ObjectEnd(e) = &frame {
            self.end = Some(*e);
        }
        match (self.mode, frame) {
            (Some(crate::wire::Mode::Container), f) if self.into_safetensors => match f {
                Frame::ItemHeader(h) if h.encoding != crate::wire::Encoding::Raw => {
                    return Err(Error::Protocol("a quantized push cannot be stored as a .safetensors file"))
                }
                // In item order, each item's chunks in order without gaps
                // (SPEC.md §7.1-7.2): the tensors' bytes back to back.
                Frame::Chunk(c) => cutter.push(c.data),
                Frame::Abort(a) => return Err(Error::Aborted { code: a.code, message: a.message }),
                _ => {}
            },
            (Some(crate::wire::Mode::Container), f) => {
                let (head, body) = f.into_buf().into_parts();
                cutter.push(head);
                cutter.push(body);
            }
            (_, Frame::Chunk(c)) => {
                // File mode: the decoder saw the chunks in order, without
                // gaps (SPEC.md §7.2); the object's bytes go out as they came.
                if c.offset != self.at {
                    return Err(Error::Protocol("a file push's chunks out of order"));
                }
                self.at += c.data.len() as u64;
                let st = name_st || self.safetensors;
                let mut used = 0;
                // The length prefix first, then the header it announces.
                while st && (self.prefix.len() as u64) < self.wanted_prefix() && used < c.data.len() {
                    let take = (self.wanted_prefix() as usize - self.prefix.len()).min(c.data.len() - used);
                    self.prefix.extend_from_slice(&c.data[used..used + take]);
                    used += take;
                }
                cutter.push(c.data);
            }
            (_, Frame::Abort(a)) => return Err(Error::Aborted { code: a.code, message: a.message }),
            _ => {}
        }
        Ok(())
    }

    /// How many first bytes a safetensors check needs: 8, then the header.
    fn wanted_prefix(&self) -> u64 {
        match self.prefix.get(..8) {
            Some(n) => 8 + u64::from_le_bytes(n.try_into().unwrap_or_default()).min(super::layout::MAX_HEADER_BYTES),
            None => 8,
        }
    }
}

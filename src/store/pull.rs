//! [`StoreObject`]: an object in a store, read lazily by byte range and
//! verified against its manifest before anything is handed over.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, Stream, StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use super::layout::{probe, Layout, Probe};
use super::{manifest_key, Key, Manifest, ObjectKind, StoreError, TensorRange, MAX_MANIFEST_BYTES};
use crate::recv::{FileSink, ObjectRetriever};
use crate::send::ContainerStreamer;
use crate::send::FORMAT_KEY;
use crate::tensor::{Dtype, Tensor};
use crate::wire::crc::Combined;
use crate::wire::{
    Frame, FrameDecoder, IndexEntry, ItemHeader, Mode, ObjectEncoder, ObjectHeader, Scheme, Subnormals, MAGIC,
};
use crate::Error;

/// The first read of an object asks for this many bytes (64 KiB), enough
/// for the header of most safetensors files; a longer header is read next.
pub const PROBE_BYTES: u64 = 64 << 10;
/// Ranged reads in flight at once, by default.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Bytes per ranged read, by default (4 MiB: with 8 in flight, 32 MiB, so a lazy pull of a 1 GiB model stays within its largest tensor + 64 MiB, `cli/tests/store_garage.rs`).
pub const DEFAULT_RANGE_BYTES: u64 = 4 << 20;

/// How a pull reads its object.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Ranged reads in flight at once (at least 1).
    pub concurrency: usize,
    /// Bytes per ranged read; rounded up to whole manifest ranges.
    pub range_size: u64,
    /// How quantized tensors of a framed object restore f32-subnormal
    /// products (SPEC.md §5.5.2a).
    pub subnormals: Subnormals,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            concurrency: DEFAULT_CONCURRENCY,
            range_size: DEFAULT_RANGE_BYTES,
            subnormals: Subnormals::default(),
        }
    }
}

/// The version of the object every read asks for (`if-match`, `version`).
#[derive(Debug, Clone, Default)]
struct Pin {
    e_tag: Option<String>,
    version: Option<String>,
}

/// What reads need, shared with the tasks that run them.
#[derive(Debug)]
struct Reader {
    store: Arc<dyn ObjectStore>,
    key: Key,
    pin: Pin,
    manifest: Option<Manifest>,
    /// Bytes of the object read so far (the probe included).
    read: std::sync::atomic::AtomicU64,
}

impl Reader {
    /// Reads `r`, pinned to the first read's version, and checks it against
    /// the manifest (SPEC.md §11.3).
    async fn read(self: Arc<Self>, r: Range<u64>) -> Result<(Bytes, Option<u32>), Error> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(r.clone())),
            if_match: self.pin.e_tag.clone(),
            version: self.pin.version.clone(),
            ..GetOptions::default()
        };
        let got = self.store.get_opts(&self.key, options).await.map_err(|e| StoreError::from_backend(&self.key, e))?;
        self.check_pin(&got.meta)?;
        let data = got.bytes().await.map_err(|e| StoreError::from_backend(&self.key, e))?;
        if data.len() as u64 != r.end - r.start {
            let key = self.key.to_string();
            return Err(StoreError::SizeMismatch { key, expected: r.end - r.start, actual: data.len() as u64 }.into());
        }
        self.read.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let crc = self.manifest.as_ref().map(|m| m.check_range(r.start, &data)).transpose()?;
        Ok((data, crc))
    }

    /// A store that ignores `if-match` still reports the version it read.
    fn check_pin(&self, meta: &object_store::ObjectMeta) -> Result<(), StoreError> {
        let changed = |what: &str, was: &Option<String>, now: &Option<String>| StoreError::Changed {
            key: self.key.to_string(),
            detail: format!("{what} {was:?} became {now:?}"),
        };
        if self.pin.e_tag.is_some() && meta.e_tag.is_some() && meta.e_tag != self.pin.e_tag {
            return Err(changed("ETag", &self.pin.e_tag, &meta.e_tag));
        }
        if self.pin.version.is_some() && meta.version != self.pin.version {
            return Err(changed("version", &self.pin.version, &meta.version));
        }
        Ok(())
    }
}

/// An object in a store, opened for a lazy, verified pull.
///
/// [`StoreObject::open`] reads the sidecar manifest (if there is one) and
/// the object's first [`PROBE_BYTES`] (its safetensors header, or the
/// preamble of a framed object), pinning the object's ETag. Then:
///
/// * [`StoreObject::write_file`] writes the object's bytes into a file;
/// * [`StoreObject::tensors`] yields its tensors as a lazy `Stream`, like
///   [`ObjectRetriever`] over HTTP/2 (a framed object is decoded by the
///   `ObjectRetriever` itself, restoring quantized dtypes);
/// * [`StoreObject::write_safetensors`] writes (selected) tensors into a
///   safetensors file.
///
/// Every ranged read carries the pinned ETag as `if-match`, and each is
/// checked against the manifest's range CRCs before its bytes are written
/// or handed over; a file is renamed into place only after the whole
/// object's CRC matched. Without a manifest only the safetensors structure
/// (or a framed object's own CRCs) is checked: see
/// [`StoreObject::manifest`].
#[derive(Debug)]
pub struct StoreObject {
    reader: Arc<Reader>,
    options: PullOptions,
    size: u64,
    kind: ObjectKind,
    layout: Option<Layout>,
}

impl StoreObject {
    /// Opens `key` in `store`: one read of the manifest, one ranged read
    /// of the object's start (two when a safetensors header is longer than
    /// [`PROBE_BYTES`]).
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::Backend`],
    /// [`StoreError::Changed`] when the object is not the one its manifest
    /// describes, [`StoreError::Manifest`], and [`Error::Safetensors`] for a
    /// `.safetensors` object whose header is not valid.
    pub async fn open(store: Arc<dyn ObjectStore>, key: Key, options: PullOptions) -> Result<Self, Error> {
        let manifest = read_manifest(&store, &key).await?;
        // The manifest names the version it describes: the first read asks
        // for that one (SPEC.md §11.3).
        let first = GetOptions {
            range: Some(GetRange::Bounded(0..PROBE_BYTES)),
            if_match: manifest.as_ref().and_then(|m| m.etag.clone()),
            version: manifest.as_ref().and_then(|m| m.object_version.clone()),
            ..GetOptions::default()
        };
        let (meta, prefix) = match store.get_opts(&key, first).await {
            Ok(got) => {
                let meta = got.meta.clone();
                (meta, got.bytes().await.map_err(|e| StoreError::from_backend(&key, e))?)
            }
            // An empty object has no byte 0 to range over.
            Err(e @ (object_store::Error::NotFound { .. } | object_store::Error::Precondition { .. })) => {
                return Err(StoreError::from_backend(&key, e).into())
            }
            Err(e) => match store.head(&key).await {
                Ok(meta) if meta.size == 0 => (meta, Bytes::new()),
                _ => return Err(StoreError::from_backend(&key, e).into()),
            },
        };
        let size = meta.size;
        if let Some(m) = &manifest {
            if m.size != size {
                return Err(StoreError::SizeMismatch { key: key.to_string(), expected: m.size, actual: size }.into());
            }
        }
        let pin = Pin { e_tag: meta.e_tag, version: meta.version };
        let read = std::sync::atomic::AtomicU64::new(prefix.len() as u64);
        let reader = Arc::new(Reader { store, key, pin, manifest, read });
        let kind = match &reader.manifest {
            Some(m) => m.kind,
            None if prefix.starts_with(&MAGIC) => ObjectKind::Framed,
            None if reader.key.as_ref().ends_with(".safetensors") => ObjectKind::Safetensors,
            None => ObjectKind::Raw,
        };
        let layout = match kind {
            ObjectKind::Safetensors => Some(Self::layout(&reader, prefix, size).await?),
            _ => None,
        };
        Ok(StoreObject { reader, options, size, kind, layout })
    }

    /// Parses the safetensors header, reading the rest of a long one; with
    /// a manifest, the header must match its recorded layout.
    async fn layout(reader: &Arc<Reader>, prefix: Bytes, size: u64) -> Result<Layout, Error> {
        let (head, layout) = match probe(&prefix, size)? {
            Probe::Layout(l) => (prefix, l),
            Probe::NeedMore(n) => {
                let (start, end) = reader.manifest.as_ref().map_or((0, n), |m| m.aligned(0, n));
                let (head, _) = Arc::clone(reader).read(start..end).await?;
                match probe(&head, size)? {
                    Probe::Layout(l) => (head, l),
                    Probe::NeedMore(_) => return Err(Error::Protocol("safetensors header longer than announced")),
                }
            }
        };
        // SPEC.md §11.3: the header's bytes match the manifest's CRC before
        // anything in them (names, offsets, metadata) is used.
        if let Some(expected) = reader.manifest.as_ref().and_then(|m| m.header_crc32) {
            let bytes = head.get(..layout.header_len as usize).unwrap_or_default();
            let actual = crate::wire::crc::checksum(bytes);
            if actual != expected {
                return Err(StoreError::RangeChecksum { offset: 0, len: layout.header_len, expected, actual }.into());
            }
        }
        // SPEC.md §11.3: the header read is checked against the manifest's
        // layout (the range CRCs check the same bytes when they are read).
        if let Some(m) = &reader.manifest {
            if m.header_len != Some(layout.header_len) || m.tensors.as_deref() != Some(&layout.tensors[..]) {
                let key = manifest_key(&reader.key).to_string();
                return Err(
                    StoreError::Manifest { key, reason: "its tensors differ from the object's header".into() }.into()
                );
            }
        }
        Ok(layout)
    }

    /// The object's length.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of the object read from the store so far, the first read
    /// included: for a selected-tensor pull, far less than [`Self::size`].
    pub fn bytes_read(&self) -> u64 {
        self.reader.read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What the object holds.
    pub fn kind(&self) -> ObjectKind {
        self.kind
    }

    /// The manifest the object is verified against; `None` when it has
    /// none, and then only the safetensors structure (or a framed object's
    /// own CRCs) is checked.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.reader.manifest.as_ref()
    }

    /// A safetensors object's tensors, in file order, with their ranges.
    pub fn tensor_ranges(&self) -> Option<&[TensorRange]> {
        self.layout.as_ref().map(|l| &l.tensors[..])
    }

    /// The reads that cover bytes `[start, end)`: widened to the manifest's
    /// ranges, each at most the range size (rounded up to whole ranges).
    fn plan(&self, start: u64, end: u64) -> Vec<Range<u64>> {
        let (start, end, step) = match &self.reader.manifest {
            Some(m) => {
                let (a, b) = m.aligned(start, end);
                (a, b, self.options.range_size.max(1).div_ceil(m.range_size) * m.range_size)
            }
            None => (start, end, self.options.range_size.max(1)),
        };
        let mut out = Vec::new();
        let mut at = start;
        while at < end {
            let next = (at + step).min(end);
            out.push(at..next);
            at = next;
        }
        out
    }

    /// The bytes of `reads`, in order, with `concurrency` reads in flight
    /// (each a task of its own, so reads progress while the consumer works).
    fn fetch(&self, reads: Vec<Range<u64>>) -> impl Stream<Item = Result<(Range<u64>, Bytes), Error>> + Send + 'static {
        self.fetch_checked(reads).map_ok(|(r, data, _)| (r, data))
    }

    /// [`Self::fetch`], with each read's CRC when a manifest checked it.
    fn fetch_checked(
        &self,
        reads: Vec<Range<u64>>,
    ) -> impl Stream<Item = Result<(Range<u64>, Bytes, Option<u32>), Error>> + Send + 'static {
        let reader = Arc::clone(&self.reader);
        stream::iter(reads)
            .map(move |r| {
                // Aborted when dropped: a consumer that stops reading stops
                // the reads in flight too.
                let task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(Arc::clone(&reader).read(r.clone())));
                async move {
                    let (data, crc) = task.await.map_err(|e| Error::Io(std::io::Error::other(e)))??;
                    Ok((r, data, crc))
                }
            })
            .buffered(self.options.concurrency.max(1))
    }

    /// Writes the object's bytes into `dest` (through `dest.part`, renamed
    /// only after every range and the whole object's CRC matched the
    /// manifest and, for a safetensors object, its header validated).
    /// Returns the length written.
    ///
    /// # Errors
    ///
    /// [`StoreError`]s of the reads and checks, [`Error::Io`] from the file;
    /// `dest` is then left as it was.
    pub async fn write_file(&self, dest: impl AsRef<Path>) -> Result<u64, Error> {
        let dest = dest.as_ref().to_path_buf();
        let sink = Arc::new(blocking(move || FileSink::create(dest)).await?);
        // The whole object's CRC, combined from the reads' (SPEC.md §3.2),
        // and its length.
        let mut whole = Combined::new();
        let mut unchecked = 0u64;
        let mut reads = std::pin::pin!(self.fetch_checked(self.plan(0, self.size)));
        while let Some((r, data, crc)) = reads.try_next().await? {
            match crc {
                Some(crc) => whole.push(crc, data.len() as u64),
                None => unchecked += data.len() as u64,
            }
            let s = Arc::clone(&sink);
            blocking(move || s.write_at(r.start, &data)).await?;
        }
        self.check_whole(&whole, unchecked)?;
        let sink = Arc::try_unwrap(sink).map_err(|_| Error::Protocol("sink still in use"))?;
        let (size, safetensors) = (self.size, self.kind == ObjectKind::Safetensors);
        blocking(move || sink.commit(size, safetensors)).await?;
        Ok(self.size)
    }

    /// SPEC.md §11.3: the object's CRC equals the manifest's before commit.
    fn check_whole(&self, whole: &Combined, unchecked: u64) -> Result<(), StoreError> {
        let key = self.reader.key.to_string();
        if whole.len() + unchecked != self.size {
            return Err(StoreError::SizeMismatch { key, expected: self.size, actual: whole.len() + unchecked });
        }
        match &self.reader.manifest {
            Some(m) if m.crc32 != whole.crc() => {
                Err(StoreError::ObjectChecksum { key, expected: m.crc32, actual: whole.crc() })
            }
            _ => Ok(()),
        }
    }

    /// The object's tensors (only `items`, in that order, when given) as a
    /// lazy `Stream`: a safetensors object's tensors are read range by
    /// range (only the ranges they lie in), a framed object is decoded as
    /// it is read. Memory: the reads in flight and the tensor being
    /// assembled.
    ///
    /// # Errors
    ///
    /// [`Error::ItemNotFound`] for a name the object does not hold (for a
    /// framed object, at the end of the stream); [`Error::Protocol`] for an
    /// object that holds no tensors.
    pub fn tensors(&self, items: Option<&[String]>) -> Result<BoxStream<'static, Result<Tensor, Error>>, Error> {
        match (self.kind, &self.layout) {
            (ObjectKind::Safetensors, Some(layout)) => self.safetensors_tensors(layout, items),
            (ObjectKind::Framed, _) => Ok(self.framed_tensors(items)),
            _ => Err(Error::Protocol("the object holds no tensors (not safetensors, not framed)")),
        }
    }

    fn safetensors_tensors(
        &self,
        layout: &Layout,
        items: Option<&[String]>,
    ) -> Result<BoxStream<'static, Result<Tensor, Error>>, Error> {
        let (wanted, reads) = self.tensor_reads(layout, items)?;
        let state = Assembling { reads: self.fetch(reads).boxed(), last: None, wanted: wanted.into_iter() };
        Ok(stream::try_unfold(state, Assembling::next).boxed())
    }

    /// The tensors asked for, and one read plan for them all: a range
    /// shared by neighbours is read once (the next tensor starts where the
    /// last read ended).
    fn tensor_reads(
        &self,
        layout: &Layout,
        items: Option<&[String]>,
    ) -> Result<(Vec<TensorRange>, Vec<Range<u64>>), Error> {
        let wanted: Vec<TensorRange> = match items {
            None => layout.tensors.clone(),
            Some(names) => names
                .iter()
                .map(|n| {
                    let t = layout.tensors.iter().find(|t| &t.name == n);
                    t.cloned()
                        .ok_or_else(|| Error::ItemNotFound { object: self.reader.key.to_string(), item: n.clone() })
                })
                .collect::<Result<_, _>>()?,
        };
        let mut reads: Vec<Range<u64>> = Vec::new();
        for t in &wanted {
            let mut start = t.range[0];
            if let Some(last) = reads.last() {
                if last.start <= start && start < last.end {
                    start = last.end;
                }
            }
            if start < t.range[1] {
                reads.extend(self.plan(start, t.range[1]));
            }
        }
        Ok((wanted, reads))
    }

    fn framed_tensors(&self, items: Option<&[String]>) -> BoxStream<'static, Result<Tensor, Error>> {
        let tensors = ObjectRetriever::new(self.framed_frames()).with_subnormals(self.options.subnormals);
        let Some(items) = items.map(<[String]>::to_vec) else { return tensors.boxed() };
        let object = self.reader.key.to_string();
        // A framed object is read whole (its bytes are not indexed); only the
        // wanted tensors are kept, in object order, and a missing one fails.
        let mut missing: Vec<String> = items.clone();
        let kept = tensors.try_filter(move |t| futures::future::ready(items.iter().any(|n| n == t.name())));
        let checked = kept.map(Some).chain(stream::once(async { None })).filter_map(move |t| {
            let out = match t {
                Some(Ok(t)) => {
                    missing.retain(|n| n != t.name());
                    Some(Ok(t))
                }
                Some(Err(e)) => Some(Err(e)),
                None => missing.first().map(|n| Err(Error::ItemNotFound { object: object.clone(), item: n.clone() })),
            };
            futures::future::ready(out)
        });
        checked.boxed()
    }

    /// Writes the tensors (only `items` when given) into a safetensors file
    /// at `dest`, as they arrive, through `dest.part`. Returns its length.
    ///
    /// # Errors
    ///
    /// As [`StoreObject::tensors`], and [`Error::Io`] from the file; `dest` is
    /// then left as it was.
    pub async fn write_safetensors(&self, items: Option<&[String]>, dest: impl AsRef<Path>) -> Result<u64, Error> {
        if self.kind == ObjectKind::Framed && items.is_none() {
            // The framed object's own frames, as over HTTP/2.
            let retriever = ObjectRetriever::new(self.framed_frames()).with_subnormals(self.options.subnormals);
            return retriever.write_safetensors(dest).await;
        }
        let name = self.reader.key.filename().unwrap_or_default().to_string();
        let frames = self.container_frames(&name, items, None, crate::wire::DEFAULT_CHUNK_BYTES as usize)?;
        ObjectRetriever::new(frames).write_safetensors(dest).await
    }

    /// The object as a container-mode tensorwire object (SPEC.md §5.1), as
    /// a server sends one: only `items` when given, quantized with
    /// `quantize` when given, in chunks of at most `chunk` bytes, produced
    /// as the transport asks for them. A safetensors object's header is
    /// known, so the object header carries the index (SPEC.md §5.1) and a
    /// receiver writes each tensor at its final offset; a framed object
    /// asked for whole and as stored is sent as its own frames.
    ///
    /// # Errors
    ///
    /// As [`StoreObject::tensors`].
    pub fn container_frames(
        &self,
        name: &str,
        items: Option<&[String]>,
        quantize: Option<Scheme>,
        chunk: usize,
    ) -> Result<BoxStream<'static, Result<Frame, Error>>, Error> {
        if self.kind == ObjectKind::Framed && items.is_none() && quantize.is_none() {
            return Ok(self.framed_frames());
        }
        if let (Some(layout), None) = (&self.layout, quantize) {
            return self.raw_container_frames(layout, name, items, chunk);
        }
        let tensors = self.tensors(items)?;
        let mut streamer = ContainerStreamer::from_tensors(name, tensors).with_chunk_size(chunk);
        if let Some(scheme) = quantize {
            streamer = streamer.quantize(scheme);
        }
        let Some(layout) = &self.layout else { return Ok(streamer.frames().boxed()) };
        let names: Vec<String> = match items {
            Some(n) => n.to_vec(),
            None => layout.tensors.iter().map(|t| t.name.clone()).collect(),
        };
        let index = names
            .iter()
            .filter_map(|n| layout.tensors.iter().find(|t| &t.name == n))
            .map(|t| -> Result<IndexEntry, Error> {
                Ok(IndexEntry { name: t.name.clone(), dtype: Dtype::parse(&t.dtype)?, shape: t.shape.clone() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metadata = layout.metadata.clone();
        // The streamer's source is lazy, so its header has no index; the
        // layout read from the object's header supplies it, in the order
        // the tensors are sent (SPEC.md §7.1 rule 8 holds: the same names,
        // dtypes and shapes).
        let frames = streamer.frames().map_ok(move |f| match f {
            Frame::ObjectHeader(mut h) => {
                h.items = Some(index.len() as u64);
                h.index = Some(index.clone());
                for (k, v) in &metadata {
                    h.metadata.insert(format!("safetensors.{k}"), v.clone());
                }
                Frame::ObjectHeader(h)
            }
            f => f,
        });
        Ok(frames.boxed())
    }

    /// A safetensors object's tensors as container frames whose chunks are
    /// slices of the verified reads: no tensor is assembled, so memory is
    /// the reads in flight whatever the tensors' sizes.
    fn raw_container_frames(
        &self,
        layout: &Layout,
        name: &str,
        items: Option<&[String]>,
        chunk: usize,
    ) -> Result<BoxStream<'static, Result<Frame, Error>>, Error> {
        let (wanted, reads) = self.tensor_reads(layout, items)?;
        let index = wanted
            .iter()
            .map(|t| Ok(IndexEntry { name: t.name.clone(), dtype: Dtype::parse(&t.dtype)?, shape: t.shape.clone() }))
            .collect::<Result<Vec<_>, Error>>()?;
        let mut header = ObjectHeader::new(name, Mode::Container).with_items(index.len() as u64);
        header.total_len = Some(wanted.iter().map(|t| t.range[1] - t.range[0]).sum());
        header.chunk_size = u32::try_from(chunk).unwrap_or(u32::MAX);
        header.index = Some(index);
        for (k, v) in &layout.metadata {
            header.metadata.insert(format!("safetensors.{k}"), v.clone());
        }
        let state = Framing {
            enc: ObjectEncoder::new(),
            header: Some(header),
            reads: self.fetch(reads).boxed(),
            last: None,
            wanted: wanted.into_iter(),
            open: None,
            chunk: chunk.max(1),
            done: false,
        };
        let batches = stream::try_unfold(state, Framing::next);
        Ok(batches.map_ok(|b| stream::iter(b.into_iter().map(Ok))).try_flatten().boxed())
    }

    /// The object as a file-mode tensorwire object (SPEC.md §5.1), as a
    /// server sends a file: chunks of at most `chunk` bytes cut from the
    /// verified reads (no copy), produced as the transport asks for them.
    /// A safetensors object is marked as one (`"format": "safetensors"`).
    pub fn file_frames(&self, name: &str, chunk: usize) -> BoxStream<'static, Result<Frame, Error>> {
        let mut header = ObjectHeader::new(name, Mode::File).with_items(1).with_total_len(self.size);
        header.chunk_size = u32::try_from(chunk).unwrap_or(u32::MAX);
        if self.kind == ObjectKind::Safetensors {
            header.metadata.insert(FORMAT_KEY.into(), "safetensors".into());
        }
        let mut enc = ObjectEncoder::new();
        let head = [enc.object_header(header), enc.item_header(ItemHeader::bytes(0, name, self.size))];
        let head: Vec<Result<Frame, Error>> = head.into_iter().map(|f| f.map_err(Error::from)).collect();
        let enc = Arc::new(std::sync::Mutex::new(enc));
        let (e1, e2) = (Arc::clone(&enc), enc);
        let chunk = chunk.max(1);
        let chunks = self.fetch(self.plan(0, self.size)).flat_map(move |read| {
            let frames: Vec<Result<Frame, Error>> = match read {
                Err(e) => vec![Err(e)],
                Ok((_, data)) => {
                    let mut enc = e1.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    (0..data.len())
                        .step_by(chunk)
                        .map(|at| enc.chunk(data.slice(at..(at + chunk).min(data.len()))).map_err(Error::from))
                        .collect()
                }
            };
            stream::iter(frames)
        });
        let tail = stream::once(async move {
            let mut enc = e2.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let end = [enc.item_end(), enc.object_end()];
            stream::iter(end.into_iter().map(|f| f.map_err(Error::from)).collect::<Vec<_>>())
        })
        .flatten();
        // The first error ends the object (the server turns it into an abort).
        stream::iter(head)
            .chain(chunks)
            .chain(tail)
            .scan(false, |failed, f| {
                let out = if *failed { None } else { Some(f) };
                *failed |= matches!(out, Some(Err(_)));
                futures::future::ready(out)
            })
            .boxed()
    }

    /// The framed object's frames, decoded (and so verified) as it is read.
    pub fn framed_frames(&self) -> BoxStream<'static, Result<Frame, Error>> {
        let bytes = self.fetch(self.plan(0, self.size)).map_ok(|(_, b)| b).map_err(std::io::Error::from);
        tokio_util::codec::FramedRead::new(tokio_util::io::StreamReader::new(bytes), FrameDecoder::new())
            .map_err(Error::from)
            .boxed()
    }
}

/// Tensors assembled from the reads, in order.
struct Assembling {
    reads: BoxStream<'static, Result<(Range<u64>, Bytes), Error>>,
    /// The last read: its tail may start the next tensor.
    last: Option<(u64, Bytes)>,
    wanted: std::vec::IntoIter<TensorRange>,
}

impl Assembling {
    async fn next(mut self) -> Result<Option<(Tensor, Self)>, Error> {
        let Some(t) = self.wanted.next() else { return Ok(None) };
        let [start, end] = t.range;
        // A tensor inside one read is a slice of it (no copy); a longer one
        // is copied read by read, each read dropped once copied.
        let mut one: Option<Bytes> = None;
        let mut many: Vec<u8> = Vec::new();
        let mut at = start;
        let mut add = |piece: Bytes, at: u64| {
            if at == start && at + piece.len() as u64 == end {
                one = Some(piece);
            } else {
                many.extend_from_slice(&piece);
            }
        };
        if let Some((from, data)) = &self.last {
            if *from <= at && at < from + data.len() as u64 {
                let stop = (from + data.len() as u64).min(end);
                add(data.slice((at - from) as usize..(stop - from) as usize), at);
                at = stop;
            }
        }
        while at < end {
            let (r, data) = next_read(&mut self.reads, at).await?;
            let stop = r.end.min(end);
            add(data.slice((at - r.start) as usize..(stop - r.start) as usize), at);
            at = stop;
            self.last = Some((r.start, data));
        }
        let data = one.unwrap_or_else(|| Bytes::from(many));
        let tensor = Tensor::new(t.name, Dtype::parse(&t.dtype)?, t.shape, data)?;
        Ok(Some((tensor, self)))
    }
}

/// The next read, which must hold byte `at` (the plan reads each tensor's
/// bytes in order).
async fn next_read(
    reads: &mut BoxStream<'static, Result<(Range<u64>, Bytes), Error>>,
    at: u64,
) -> Result<(Range<u64>, Bytes), Error> {
    let (r, data) = reads.try_next().await?.ok_or(Error::Protocol("reads ended inside a tensor"))?;
    if !(r.start <= at && at < r.end) {
        return Err(Error::Protocol("a read out of order"));
    }
    Ok((r, data))
}

/// Container frames cut from the reads, a batch at a time.
struct Framing {
    enc: ObjectEncoder,
    header: Option<ObjectHeader>,
    reads: BoxStream<'static, Result<(Range<u64>, Bytes), Error>>,
    last: Option<(u64, Bytes)>,
    wanted: std::vec::IntoIter<TensorRange>,
    /// The open tensor: the next byte to send, and its end.
    open: Option<(u64, u64)>,
    chunk: usize,
    done: bool,
}

impl Framing {
    async fn next(mut self) -> Result<Option<(Vec<Frame>, Self)>, Error> {
        if let Some(h) = self.header.take() {
            return Ok(Some((vec![self.enc.object_header(h)?], self)));
        }
        if self.done {
            return Ok(None);
        }
        let mut out = Vec::new();
        match self.open {
            None => match self.wanted.next() {
                Some(t) => {
                    let [start, end] = t.range;
                    out.push(self.enc.item_header(ItemHeader::tensor(0, t.name, Dtype::parse(&t.dtype)?, t.shape))?);
                    let mut at = start;
                    // The tail of the last read may start this tensor.
                    if let Some((from, data)) = &self.last {
                        if *from <= at && at < from + data.len() as u64 {
                            let stop = (from + data.len() as u64).min(end);
                            let piece = data.slice((at - from) as usize..(stop - from) as usize);
                            self.chunks(piece, &mut out)?;
                            at = stop;
                        }
                    }
                    self.open = Some((at, end));
                }
                None => {
                    self.done = true;
                    out.push(self.enc.object_end()?);
                }
            },
            Some((at, end)) if at >= end => {
                self.open = None;
                out.push(self.enc.item_end()?);
            }
            Some((at, end)) => {
                let (r, data) = next_read(&mut self.reads, at).await?;
                let stop = r.end.min(end);
                self.chunks(data.slice((at - r.start) as usize..(stop - r.start) as usize), &mut out)?;
                self.open = Some((stop, end));
                self.last = Some((r.start, data));
            }
        }
        Ok(Some((out, self)))
    }

    fn chunks(&mut self, piece: Bytes, out: &mut Vec<Frame>) -> Result<(), Error> {
        for at in (0..piece.len()).step_by(self.chunk) {
            out.push(self.enc.chunk(piece.slice(at..(at + self.chunk).min(piece.len())))?);
        }
        Ok(())
    }
}

/// The manifest of `key`, if it has one.
async fn read_manifest(store: &Arc<dyn ObjectStore>, key: &Key) -> Result<Option<Manifest>, Error> {
    let mkey = manifest_key(key);
    let got = match store.get(&mkey).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(StoreError::Backend(e).into()),
    };
    // SPEC.md §11.2: a manifest larger than this is refused before it is read.
    if got.meta.size > MAX_MANIFEST_BYTES {
        let reason = format!("{} bytes (at most {MAX_MANIFEST_BYTES})", got.meta.size);
        return Err(StoreError::Manifest { key: mkey.to_string(), reason }.into());
    }
    let json = got.bytes().await.map_err(StoreError::Backend)?;
    Ok(Some(Manifest::from_json(mkey.as_ref(), &json)?))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Io(std::io::Error::other(e)))?
}

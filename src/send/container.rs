//! [`ContainerStreamer`]: a container of tensors sent one tensor at a time.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use memmap2::Mmap;

use super::file::{map_file, window};
use crate::quant::{encode_range, Encoded, Scheme};
use crate::tensor::{from_safetensors, Tensor, TensorMap, TensorMeta};
use crate::wire::{Abort, AbortCode, Encoding, Frame, IndexEntry, ItemHeader, Mode, ObjectEncoder, ObjectHeader};
use crate::Error;

/// The largest index an object header carries (SPEC.md §5.1): beyond this
/// many tensors the receiver learns them one by one.
const MAX_INDEX_ITEMS: usize = 100_000;

/// Streams a container of tensors as a container-mode object (SPEC.md §5.1):
/// for each tensor in turn an item header, its chunks, and an item end.
///
/// # Sources
///
/// * [`ContainerStreamer::from_map`] — tensors in memory (a state dict);
///   chunks are slices of each tensor's [`Bytes`].
/// * [`ContainerStreamer::open_safetensors`] — a safetensors file,
///   memory-mapped; only the tensors selected are read, and each chunk's
///   pages are released once sent.
/// * [`ContainerStreamer::from_tensors`] — any `Stream` of tensors, produced
///   lazily (an FL controller's aggregate, a quantizer's output).
///
/// # Memory and back-pressure
///
/// No tensor data is copied: chunk payloads are slices of the source's
/// buffers. Frames are produced only when the transport asks for the next
/// one, which it does when the receiver has granted flow-control capacity, so
/// the streamer holds at most the chunk in flight beyond the source itself,
/// whatever the size of a tensor; a lazy source is polled for its next tensor
/// only when the previous one has been sent.
///
/// ```
/// use std::sync::Arc;
/// use bytes::Bytes;
/// use futures::StreamExt;
/// use tensorwire::send::ContainerStreamer;
/// use tensorwire::tensor::{Dtype, Tensor, TensorMap};
/// # fn main() -> Result<(), tensorwire::Error> {
/// let mut model = TensorMap::new();
/// model.insert("w".into(), Tensor::new("w", Dtype::F32, vec![4], Bytes::from(vec![0u8; 16]))?);
/// let frames = ContainerStreamer::from_map("model", Arc::new(model)).with_chunk_size(8).frames();
/// let frames: Vec<_> = futures::executor::block_on(frames.collect());
/// assert_eq!(frames.len(), 6); // object header, item header, 2 chunks, item end, object end
/// # Ok(())
/// # }
/// ```
#[must_use = "a streamer does nothing until its frames are sent"]
pub struct ContainerStreamer {
    name: String,
    source: Source,
    chunk: usize,
    metadata: std::collections::BTreeMap<String, String>,
    scheme: Option<Scheme>,
}

enum Source {
    /// Tensors known up front, in the order they are sent.
    Known(VecDeque<Item>),
    /// Tensors produced lazily; `wanted` filters and checks them.
    Lazy { stream: BoxStream<'static, Result<Encoded, Error>>, wanted: Option<Vec<String>> },
}

/// One tensor to send: its metadata, its encoding, and where its raw bytes
/// come from.
struct Item {
    meta: TensorMeta,
    encoding: Encoding,
    data: Data,
}

enum Data {
    Memory(Bytes),
    Mapped { map: Arc<Mmap>, range: Range<usize> },
}

impl Item {
    fn memory(e: Encoded) -> Self {
        let encoding = e.encoding().clone();
        let (meta, data) = e.tensor().clone().into_parts();
        Item { meta, encoding, data: Data::Memory(data) }
    }

    fn meta(&self) -> &TensorMeta {
        &self.meta
    }

    fn raw_len(&self) -> usize {
        match &self.data {
            Data::Memory(b) => b.len(),
            Data::Mapped { range, .. } => range.len(),
        }
    }

    /// Bytes on the wire.
    fn len(&self) -> usize {
        let numel = self.meta.numel().unwrap_or(0);
        self.encoding.encoded_len(numel, self.meta.dtype).map_or(self.raw_len(), |l| l as usize)
    }

    /// Raw bytes `r` of the tensor, without copying.
    fn raw(&self, r: Range<usize>) -> Bytes {
        match &self.data {
            Data::Memory(b) => b.slice(r),
            Data::Mapped { map, range } => window(map, range.start + r.start, range.start + r.end),
        }
    }

    /// Wire bytes `r`: raw bytes as they are, or the records covering `r`
    /// encoded from the source elements they hold (SPEC.md §5.6).
    fn slice(&self, r: Range<usize>) -> Result<Bytes, Error> {
        if self.encoding == Encoding::Raw {
            return Ok(self.raw(r));
        }
        encode_range(&self.encoding, &self.meta, |raw| self.raw(raw), self.raw_len(), r)
    }

    /// The item's record size: chunks are multiples of it.
    fn record(&self) -> usize {
        self.encoding.record_len() as usize
    }

    fn header(&self) -> ItemHeader {
        let mut h = self.meta.item_header(0);
        h.len = self.len() as u64;
        h.encoding = self.encoding.clone();
        h
    }
}

impl std::fmt::Debug for ContainerStreamer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            Source::Known(items) => format!("{} tensors", items.len()),
            Source::Lazy { .. } => "lazy stream".to_string(),
        };
        f.debug_struct("ContainerStreamer")
            .field("name", &self.name)
            .field("source", &source)
            .field("chunk", &self.chunk)
            .finish()
    }
}

impl ContainerStreamer {
    /// Streams the tensors of an in-memory map, in name order.
    pub fn from_map(name: impl Into<String>, map: Arc<TensorMap>) -> Self {
        let items = map.values().cloned().map(|t| Item::memory(Encoded::raw(t))).collect();
        Self::new(name.into(), Source::Known(items))
    }

    /// Streams tensors as a `Stream` produces them. The object header then
    /// cannot announce a count.
    pub fn from_tensors(
        name: impl Into<String>,
        tensors: impl Stream<Item = Result<Tensor, Error>> + Send + 'static,
    ) -> Self {
        Self::from_encoded(name, tensors.map(|t| t.map(Encoded::raw)))
    }

    /// Streams tensors with their encodings, as
    /// [`QuantizeExt::quantize`](crate::quant::QuantizeExt::quantize)
    /// produces them: `ContainerStreamer::from_encoded("m", tensors.quantize(Scheme::Nf4))`.
    pub fn from_encoded(
        name: impl Into<String>,
        tensors: impl Stream<Item = Result<Encoded, Error>> + Send + 'static,
    ) -> Self {
        Self::new(name.into(), Source::Lazy { stream: tensors.boxed(), wanted: None })
    }

    /// Quantizes every tensor under `scheme` (those it would not shrink,
    /// and non-float ones, go raw). Encoding happens chunk by chunk as the
    /// object is sent: the sender holds one encoded chunk, not one tensor.
    pub fn quantize(mut self, scheme: Scheme) -> Self {
        self.scheme = Some(scheme);
        if let Source::Known(items) = &mut self.source {
            for item in items.iter_mut().filter(|i| i.encoding == Encoding::Raw) {
                item.encoding = scheme.encoding_for(item.meta.dtype);
            }
        }
        self
    }

    /// Maps a safetensors file and streams its tensors in file order; the
    /// file's `__metadata__` travels as `safetensors.KEY` metadata.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] or [`Error::Safetensors`] when the file cannot be mapped
    /// or is not valid; [`Error::Tensor`] for a dtype this crate does not know.
    pub fn open_safetensors(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let map = Arc::new(map_file(&std::fs::File::open(path)?)?);
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map)?;
        let base = 8 + header_len;
        let mut items = VecDeque::new();
        let tensors = meta.tensors();
        for name in meta.offset_keys() {
            let Some(info) = tensors.get(&name) else { continue };
            let dtype = from_safetensors(info.dtype).ok_or_else(|| Error::Tensor {
                name: name.clone(),
                reason: format!("unsupported dtype {}", info.dtype),
            })?;
            let shape = info.shape.iter().map(|&d| d as u64).collect();
            let range = base + info.data_offsets.0..base + info.data_offsets.1;
            let meta = TensorMeta::new(name, dtype, shape);
            items.push_back(Item {
                meta,
                encoding: Encoding::Raw,
                data: Data::Mapped { map: Arc::clone(&map), range },
            });
        }
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut streamer = Self::new(file_name, Source::Known(items));
        for (k, v) in meta.metadata().iter().flatten() {
            streamer.metadata.insert(format!("safetensors.{k}"), v.clone());
        }
        Ok(streamer)
    }

    fn new(name: String, source: Source) -> Self {
        ContainerStreamer {
            name,
            source,
            chunk: crate::wire::DEFAULT_CHUNK_BYTES as usize,
            metadata: Default::default(),
            scheme: None,
        }
    }

    /// Names the object.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the chunk size (bytes per chunk frame; at least 1).
    pub fn with_chunk_size(mut self, chunk: usize) -> Self {
        self.chunk = chunk.max(1);
        self
    }

    /// Sends only the named tensors, in the order given (SPEC.md §8.2).
    ///
    /// # Errors
    ///
    /// [`Error::ItemNotFound`] for a name the container does not hold (a lazy
    /// source is checked as it goes: the object then ends with a NOT_FOUND
    /// abort).
    pub fn select(mut self, names: &[String]) -> Result<Self, Error> {
        self.source = match self.source {
            Source::Known(mut items) => {
                let mut picked = VecDeque::with_capacity(names.len());
                for n in names {
                    let at = items
                        .iter()
                        .position(|i| &i.meta().name == n)
                        .ok_or_else(|| Error::ItemNotFound { object: self.name.clone(), item: n.clone() })?;
                    picked.extend(items.remove(at));
                }
                Source::Known(picked)
            }
            Source::Lazy { stream, .. } => Source::Lazy { stream, wanted: Some(names.to_vec()) },
        };
        Ok(self)
    }

    /// The number of tensors, when known up front.
    pub fn len(&self) -> Option<usize> {
        match &self.source {
            Source::Known(items) => Some(items.len()),
            Source::Lazy { .. } => None,
        }
    }

    /// Whether the container is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// The object header: counts and index when the tensors are known.
    pub fn object_header(&self) -> ObjectHeader {
        let mut h = ObjectHeader::new(self.name.clone(), Mode::Container);
        h.chunk_size = u32::try_from(self.chunk_bound()).unwrap_or(u32::MAX);
        h.metadata.clone_from(&self.metadata);
        if let Source::Known(items) = &self.source {
            h.items = Some(items.len() as u64);
            h.total_len = Some(items.iter().map(|i| i.len() as u64).sum());
            if items.len() <= MAX_INDEX_ITEMS {
                let index = items.iter().map(|i| i.meta()).map(|m| IndexEntry {
                    name: m.name.clone(),
                    dtype: m.dtype,
                    shape: m.shape.clone(),
                });
                h.index = Some(index.collect());
            }
        }
        h
    }

    /// The largest chunk payload this streamer sends, which the object
    /// header declares (SPEC.md §5.1): the chunk size, or one record of an
    /// encoding where that is larger (chunks of encoded items are whole
    /// records, SPEC.md §7.2).
    fn chunk_bound(&self) -> usize {
        let record = match &self.source {
            Source::Known(items) => items.iter().map(Item::record).max().unwrap_or(1),
            Source::Lazy { .. } => {
                self.scheme.map_or(1, |s| s.encoding_for(crate::tensor::Dtype::F32).record_len() as usize)
            }
        };
        self.chunk.max(record)
    }

    /// The object's frames, produced as they are polled.
    pub fn frames(self) -> impl Stream<Item = Result<Frame, Error>> + Send + 'static {
        let header = self.object_header();
        let state = Frames {
            bound: header.chunk_size as usize,
            header: Some(header),
            streamer: self,
            enc: ObjectEncoder::new(),
            open: None,
            done: false,
        };
        futures::stream::unfold(state, |mut s| async move { s.next().await.map(|f| (f, s)) })
    }
}

struct Frames {
    streamer: ContainerStreamer,
    /// The chunk size the object header declared: no chunk may exceed it.
    bound: usize,
    header: Option<ObjectHeader>,
    enc: ObjectEncoder,
    open: Option<(Item, usize)>,
    done: bool,
}

impl Frames {
    async fn next(&mut self) -> Option<Result<Frame, Error>> {
        if self.done {
            return None;
        }
        let r = self.step().await;
        if matches!(r, Err(_) | Ok(Frame::ObjectEnd(_) | Frame::Abort(_))) {
            self.done = true;
        }
        Some(r)
    }

    async fn step(&mut self) -> Result<Frame, Error> {
        if let Some(h) = self.header.take() {
            return Ok(self.enc.object_header(h)?);
        }
        if let Some((item, sent)) = &mut self.open {
            if *sent < item.len() {
                // SPEC.md §7.2: chunks of encoded items are whole records.
                let record = item.record();
                // SPEC.md §5.1: no chunk may exceed the declared chunk size.
                if record > self.bound {
                    return Err(Error::Tensor {
                        name: item.meta.name.clone(),
                        reason: format!("its {record}-byte records exceed the declared {}-byte chunks", self.bound),
                    });
                }
                let chunk = (self.streamer.chunk / record).max(1) * record;
                let end = (*sent + chunk).min(item.len());
                let data = item.slice(*sent..end)?;
                *sent = end;
                return Ok(self.enc.chunk(data)?);
            }
            self.open = None;
            return Ok(self.enc.item_end()?);
        }
        match self.next_item().await? {
            Some(item) => {
                let header = item.header();
                self.open = Some((item, 0));
                Ok(self.enc.item_header(header)?)
            }
            None => {
                if let Source::Lazy { wanted: Some(wanted), .. } = &self.streamer.source {
                    if let Some(missing) = wanted.first() {
                        let abort = Abort::new(AbortCode::NOT_FOUND, format!("no tensor named {missing:?}"));
                        return Ok(self.enc.abort(abort));
                    }
                }
                Ok(self.enc.object_end()?)
            }
        }
    }

    async fn next_item(&mut self) -> Result<Option<Item>, Error> {
        let scheme = self.streamer.scheme;
        match &mut self.streamer.source {
            Source::Known(items) => Ok(items.pop_front()),
            Source::Lazy { stream, wanted } => loop {
                let Some(e) = stream.next().await.transpose()? else { return Ok(None) };
                let mut item = Item::memory(e);
                if let (Some(s), Encoding::Raw) = (scheme, &item.encoding) {
                    item.encoding = s.encoding_for(item.meta.dtype);
                }
                match wanted {
                    None => return Ok(Some(item)),
                    Some(w) => {
                        if let Some(at) = w.iter().position(|n| *n == item.meta.name) {
                            w.remove(at);
                            return Ok(Some(item));
                        }
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use futures::executor::block_on;

    use super::*;
    use crate::tensor::Dtype;
    use crate::wire::FrameDecoder;

    fn model() -> TensorMap {
        let mut m = TensorMap::new();
        for (i, (name, dtype, shape)) in [
            ("a", Dtype::F32, vec![3, 5]),
            ("b", Dtype::BF16, vec![7]),
            ("c", Dtype::I64, vec![]),
            ("d", Dtype::U8, vec![0]),
        ]
        .into_iter()
        .enumerate()
        {
            let len = TensorMeta::new(name, dtype, shape.clone()).byte_len().unwrap_or(0) as usize;
            let data: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
            m.insert(name.into(), Tensor::new(name, dtype, shape, data.into()).expect("tensor"));
        }
        m
    }

    /// Encodes the frames, decodes them with every check, rebuilds tensors.
    fn round_trip(s: ContainerStreamer) -> Result<(ObjectHeader, Vec<Tensor>), Error> {
        let frames: Vec<Result<Frame, Error>> = block_on(s.frames().collect());
        let mut buf = BytesMut::from(&crate::wire::preamble()[..]);
        for f in frames {
            f?.encode(&mut buf);
        }
        let mut dec = FrameDecoder::new();
        let (mut header, mut out, mut cur) = (None, Vec::new(), None::<(TensorMeta, Vec<u8>)>);
        while let Some(f) = dec.decode_frame_eof(&mut buf)? {
            match f {
                Frame::ObjectHeader(h) => header = Some(h),
                Frame::ItemHeader(h) => {
                    cur = Some((
                        TensorMeta::new(h.name, h.dtype.unwrap_or(Dtype::U8), h.shape.unwrap_or_default()),
                        vec![],
                    ))
                }
                Frame::Chunk(c) => cur.as_mut().expect("open item").1.extend_from_slice(&c.data),
                Frame::ItemEnd(_) => {
                    let (meta, data) = cur.take().expect("open item");
                    out.push(Tensor::from_meta(meta, data.into())?);
                }
                Frame::Abort(a) => return Err(Error::Aborted { code: a.code, message: a.message }),
                _ => {}
            }
        }
        Ok((header.expect("header"), out))
    }

    #[test]
    fn map_round_trips_in_name_order_with_index() -> Result<(), Error> {
        let m = model();
        let (header, got) = round_trip(ContainerStreamer::from_map("m", Arc::new(m.clone())).with_chunk_size(8))?;
        assert_eq!(got, m.values().cloned().collect::<Vec<_>>());
        assert_eq!(header.items, Some(4));
        assert_eq!(header.index.map(|i| i.len()), Some(4));
        Ok(())
    }

    #[test]
    fn selection_sends_only_named_tensors_in_order() -> Result<(), Error> {
        let s = ContainerStreamer::from_map("m", Arc::new(model())).select(&["c".into(), "a".into()])?;
        let (_, got) = round_trip(s)?;
        assert_eq!(got.iter().map(Tensor::name).collect::<Vec<_>>(), ["c", "a"]);
        let missing = ContainerStreamer::from_map("m", Arc::new(model())).select(&["zz".into()]);
        assert!(matches!(missing, Err(Error::ItemNotFound { .. })));
        Ok(())
    }

    #[test]
    fn lazy_stream_round_trips_and_reports_missing_names() -> Result<(), Error> {
        let m = model();
        let stream = futures::stream::iter(m.values().cloned().map(Ok).collect::<Vec<_>>());
        let (header, got) = round_trip(ContainerStreamer::from_tensors("m", stream))?;
        assert_eq!(header.items, None);
        assert_eq!(got.len(), 4);
        let stream = futures::stream::iter(m.values().cloned().map(Ok).collect::<Vec<_>>());
        let s = ContainerStreamer::from_tensors("m", stream).select(&["b".into(), "nope".into()])?;
        assert!(matches!(round_trip(s), Err(Error::Aborted { code: AbortCode::NOT_FOUND, .. })));
        Ok(())
    }

    #[test]
    fn safetensors_file_streams_mapped_slices() -> Result<(), Error> {
        let m = model();
        let views: Vec<_> =
            m.values().map(|t| Ok::<_, Error>((t.name().to_string(), t.as_view()?))).collect::<Result<_, _>>()?;
        let bytes = safetensors::serialize(views, None)?;
        let path = std::env::temp_dir().join(format!("tw-container-{}.safetensors", std::process::id()));
        std::fs::write(&path, &bytes)?;
        let (_, mut got) = round_trip(ContainerStreamer::open_safetensors(&path)?.with_chunk_size(5))?;
        got.sort_by(|a, b| a.name().cmp(b.name()));
        assert_eq!(got, m.values().cloned().collect::<Vec<_>>());
        let _ = std::fs::remove_file(&path);
        Ok(())
    }
}

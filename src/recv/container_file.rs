//! [`ContainerFile`]: a container object written into a safetensors file
//! over one or more streams, resumable from the ranges already verified.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::stream::{Stream, StreamExt};

use super::retriever::{blocking, finish_safetensors, safetensors_header, side_path};
use super::{Assembler, Event, FileSink};
use crate::quant::{decode_chunk_into, Subnormals};
use crate::tensor::TensorMeta;
use crate::wire::{DecodeError, Encoding, Frame, IndexEntry, Mode, ObjectHeader};
use crate::Error;

/// Receives a container object into a safetensors file, tensor data written
/// at its final offset chunk by chunk (quantized chunks restored first), and
/// keeps what it verified across streams: feed each stream to
/// [`ContainerFile::take`]; after a failure, [`ContainerFile::missing`] says
/// which ranges to ask for (SPEC.md §8.4). The file is renamed into place
/// only after the object end and every item's CRC were verified.
///
/// Memory: one chunk (plus its restored form), not one tensor.
///
/// ```
/// use std::sync::Arc;
/// use bytes::Bytes;
/// use tensorwire::recv::ContainerFile;
/// use tensorwire::send::ContainerStreamer;
/// use tensorwire::tensor::{Dtype, Tensor, TensorMap};
/// # fn main() -> Result<(), tensorwire::Error> {
/// # let dest = std::env::temp_dir().join(format!("tw-doc-ctr-{}.safetensors", std::process::id()));
/// let mut model = TensorMap::new();
/// model.insert("w".into(), Tensor::new("w", Dtype::F32, vec![4], Bytes::from(vec![1u8; 16]))?);
/// let mut frames = Box::pin(ContainerStreamer::from_map("m", Arc::new(model)).with_chunk_size(8).frames());
/// let mut file = ContainerFile::new(&dest);
/// let rt = tokio::runtime::Builder::new_current_thread().build()?;
/// let len = rt.block_on(file.take(&mut frames))?;
/// assert_eq!(len, std::fs::metadata(&dest)?.len());
/// # std::fs::remove_file(&dest)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ContainerFile {
    dest: PathBuf,
    asm: Assembler,
    layout: Option<Layout>,
    items: Vec<Place>,
    subnormals: Subnormals,
}

#[derive(Debug)]
struct Layout {
    header: ObjectHeader,
    sink: Option<Arc<FileSink>>,
    /// The safetensors header, when the object header's index fixed it.
    head: Option<Vec<u8>>,
    offsets: Option<Vec<u64>>,
    metadata: Vec<(String, String)>,
    entries: Vec<IndexEntry>,
    /// Where the data region starts in the sink (the header's length, or 0
    /// for a side file).
    base: u64,
    /// The end of the data laid out so far.
    end: u64,
}

#[derive(Debug)]
struct Place {
    at: u64,
    meta: TensorMeta,
    encoding: Encoding,
}

impl ContainerFile {
    /// Nothing received yet; the file will be `dest` (via `<dest>.part`).
    pub fn new(dest: impl AsRef<Path>) -> Self {
        ContainerFile {
            dest: dest.as_ref().to_path_buf(),
            asm: Assembler::new(),
            layout: None,
            items: Vec::new(),
            subnormals: Subnormals::default(),
        }
    }

    /// How quantized tensors restore f32-subnormal products (SPEC.md
    /// §5.5.2a); flushed to zero, as a CUDA peer does, by default.
    pub fn with_subnormals(mut self, subnormals: Subnormals) -> Self {
        self.subnormals = subnormals;
        self
    }

    /// Per item seen so far, the ranges (in the item's bytes as sent) not
    /// yet placed; `None` before the first item: ask for everything.
    pub fn missing(&self) -> Option<Vec<(u32, Vec<Range<u64>>)>> {
        (self.asm.items() > 0).then(|| (0..self.asm.items()).map(|i| (i, self.asm.missing(i))).collect())
    }

    /// Forgets everything (the source changed): the next stream starts from
    /// zero, into fresh files.
    pub fn restart(&mut self) {
        *self = ContainerFile::new(&self.dest);
    }

    /// Takes the frames of one stream; returns the file's length once the
    /// object is complete and the file is in place.
    ///
    /// # Errors
    ///
    /// The stream's error, a decode error from the checks of the assembled
    /// items (after which [`ContainerFile::missing`] asks for the damaged
    /// item again), [`Error::Aborted`], or [`Error::Io`] from the files.
    pub async fn take<S>(&mut self, frames: &mut S) -> Result<u64, Error>
    where
        S: Stream<Item = Result<Frame, Error>> + Unpin,
    {
        while let Some(frame) = frames.next().await {
            match frame? {
                Frame::ObjectHeader(h) => self.object(h).await?,
                f => {
                    if self.layout.is_none() && !matches!(f, Frame::Abort(_)) {
                        return Err(Error::Protocol("not a container object"));
                    }
                    self.asm.handle_frame(f)?;
                }
            }
            while let Some(event) = self.asm.poll_event() {
                if let Some(len) = self.event(event).await? {
                    return Ok(len);
                }
            }
        }
        Err(Error::Protocol("frames ended before the object end"))
    }

    async fn object(&mut self, h: ObjectHeader) -> Result<(), Error> {
        if h.mode != Mode::Container {
            return Err(Error::Protocol("not a container object"));
        }
        if let Some(l) = &self.layout {
            // SPEC.md §8.4: a resumed stream describes the same object.
            return match l.header == h {
                true => Ok(()),
                false => {
                    Err(DecodeError::InconsistentItem { item: 0, reason: "the object header changed".into() }.into())
                }
            };
        }
        let metadata: Vec<(String, String)> = h
            .metadata
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("safetensors.")?.to_string(), v.clone())))
            .collect();
        // With an index, the final layout is known now; without, the data is
        // laid out back to back in a side file.
        let fixed = h.index.as_ref().map(|index| safetensors_header(index, &metadata)).transpose()?;
        let target = if fixed.is_some() { self.dest.clone() } else { side_path(&self.dest) };
        let sink = Arc::new(blocking(move || FileSink::create(target)).await?);
        let (head, offsets) = fixed.map_or((None, None), |(h, o)| (Some(h), Some(o)));
        let base = head.as_ref().map_or(0, |h| h.len() as u64);
        if let Some(head) = head.clone() {
            let s = Arc::clone(&sink);
            blocking(move || s.write_at(0, &head)).await?;
        }
        self.asm.handle_frame(Frame::ObjectHeader(h.clone()))?;
        self.layout =
            Some(Layout { header: h, sink: Some(sink), head, offsets, metadata, entries: Vec::new(), base, end: 0 });
        Ok(())
    }

    async fn event(&mut self, event: Event) -> Result<Option<u64>, Error> {
        let layout = self.layout.as_mut().ok_or(Error::Protocol("frames before the object header"))?;
        match event {
            Event::Item { header, .. } => {
                let place = place(header)?;
                let len = place.meta.byte_len().ok_or(Error::Protocol("tensor size overflows"))?;
                let at = match &layout.offsets {
                    Some(o) => o.get(self.items.len()).copied().unwrap_or(layout.end),
                    None => layout.end,
                };
                layout.end = at + len;
                layout.entries.push(IndexEntry {
                    name: place.meta.name.clone(),
                    dtype: place.meta.dtype,
                    shape: place.meta.shape.clone(),
                });
                self.items.push(Place { at, ..place });
            }
            Event::Data { item, offset, data, .. } => {
                let p = self.items.get(item as usize).ok_or(Error::Protocol("chunk of an unknown item"))?;
                let (at, data) = if p.encoding == Encoding::Raw {
                    (offset, data)
                } else {
                    let mut values = Vec::new();
                    let at = decode_chunk_into(&p.encoding, &p.meta, offset, &data, &mut values, self.subnormals)?;
                    (at, bytes::Bytes::from(values))
                };
                let sink = Arc::clone(layout.sink.as_ref().ok_or(Error::Protocol("file already committed"))?);
                let at = layout.base + p.at + at;
                blocking(move || sink.write_at(at, &data)).await?;
            }
            Event::Aborted(a) => return Err(Error::Aborted { code: a.code, message: a.message }),
            Event::Done(_) => return commit(layout, &self.dest).await.map(Some),
            _ => {}
        }
        Ok(None)
    }
}

fn place(h: crate::wire::ItemHeader) -> Result<Place, Error> {
    let (Some(dtype), Some(shape)) = (h.dtype, h.shape) else {
        return Err(Error::Tensor { name: h.name, reason: "an opaque item is not a tensor".into() });
    };
    Ok(Place { at: 0, meta: TensorMeta::new(h.name, dtype, shape), encoding: h.encoding })
}

async fn commit(layout: &mut Layout, dest: &Path) -> Result<u64, Error> {
    let sink = layout.sink.take().ok_or(Error::Protocol("file already committed"))?;
    let sink = Arc::try_unwrap(sink).map_err(|_| Error::Protocol("sink still in use"))?;
    let head = layout.head.take();
    finish_safetensors(sink, dest, head, &layout.entries, &layout.metadata, layout.end).await
}

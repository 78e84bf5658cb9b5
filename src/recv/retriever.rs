//! [`ObjectRetriever`]: a container object's frames in, tensors out, each as
//! soon as its last chunk is verified.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{Stream, StreamExt};

use super::FileSink;
use crate::quant::{decode_chunk_into, Subnormals};
use crate::tensor::{to_safetensors, Tensor, TensorMap, TensorMeta};
use crate::wire::{Encoding, Frame, IndexEntry, ItemHeader, Mode, ObjectHeader};
use crate::Error;

/// Turns the frames of a container object into a `Stream` of [`Tensor`]s.
///
/// Each tensor is yielded as soon as its item end has arrived, that is once
/// all its chunks and its CRC are verified (the frames come from a
/// [`FrameDecoder`](crate::wire::FrameDecoder), which checks them). The
/// retriever reads the next frame only when it is polled, so the consumer's
/// pace is the sender's pace: it holds the tensor being assembled and
/// nothing else, and a tensor that arrives as one chunk is not copied at all.
/// Dropping the retriever drops its frame source; over HTTP/2 that resets
/// the stream and the sender stops.
///
/// The frame source is any `Stream` of frames: the transport's
/// ([`Client::retrieve`](crate::transport::Client::retrieve)), or a test's.
///
/// ```
/// use std::sync::Arc;
/// use bytes::Bytes;
/// use tensorwire::recv::ObjectRetriever;
/// use tensorwire::send::ContainerStreamer;
/// use tensorwire::tensor::{Dtype, Tensor, TensorMap};
/// # fn main() -> Result<(), tensorwire::Error> {
/// let mut model = TensorMap::new();
/// model.insert("w".into(), Tensor::new("w", Dtype::F32, vec![4], Bytes::from(vec![1u8; 16]))?);
/// let frames = ContainerStreamer::from_map("m", Arc::new(model.clone())).with_chunk_size(6).frames();
/// let got = futures::executor::block_on(ObjectRetriever::new(Box::pin(frames)).collect_map())?;
/// assert_eq!(got, model);
/// # Ok(())
/// # }
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct ObjectRetriever<S> {
    frames: S,
    header: Option<ObjectHeader>,
    building: Option<Building>,
    /// The object end was seen: the frames must end next (SPEC.md §7.5).
    ending: bool,
    done: bool,
    subnormals: Subnormals,
}

struct Building {
    meta: TensorMeta,
    /// Bytes of the restored tensor.
    len: usize,
    encoding: Encoding,
    data: Assembly,
}

/// A tensor's bytes as they arrive: kept as the chunk itself when one chunk
/// holds the whole tensor, copied into one buffer otherwise.
enum Assembly {
    Empty,
    One(Bytes),
    Many(Vec<u8>),
}

impl<S> std::fmt::Debug for ObjectRetriever<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectRetriever")
            .field("object", &self.header.as_ref().map(|h| &h.name))
            .field("building", &self.building.as_ref().map(|b| &b.meta.name))
            .field("done", &self.done)
            .finish()
    }
}

impl<S> ObjectRetriever<S>
where
    S: Stream<Item = Result<Frame, Error>> + Unpin,
{
    /// A retriever over a stream of frames.
    pub fn new(frames: S) -> Self {
        ObjectRetriever {
            frames,
            header: None,
            building: None,
            ending: false,
            done: false,
            subnormals: Subnormals::default(),
        }
    }

    /// How quantized tensors restore products that are subnormal in f32
    /// (SPEC.md §5.5.2a): flushed to zero as bitsandbytes' CUDA kernels do
    /// (the default, what an NVFlare peer restores), or kept as its CPU path
    /// does.
    pub fn with_subnormals(mut self, subnormals: Subnormals) -> Self {
        self.subnormals = subnormals;
        self
    }

    /// The object header, once the first tensor (or the end) was polled.
    pub fn object_header(&self) -> Option<&ObjectHeader> {
        self.header.as_ref()
    }

    /// Collects every tensor into a map: the whole object in memory, which
    /// the caller asked for.
    ///
    /// # Errors
    ///
    /// The first error of the stream.
    pub async fn collect_map(mut self) -> Result<TensorMap, Error> {
        let mut map = TensorMap::new();
        while let Some(t) = self.next().await {
            let t = t?;
            map.insert(t.name().to_string(), t);
        }
        Ok(map)
    }

    /// Writes the tensors into a safetensors file as they arrive, chunk by
    /// chunk: into `<dest>.part`, which is validated, synced and renamed over
    /// `dest` only when the object is complete. With an index in the object
    /// header the file header is written first and every chunk at its final
    /// offset; without one, the data goes to a side file and is copied after
    /// the header at the end (kernel-side, no user-space buffer). Memory: one
    /// chunk, not one tensor. Returns the file's length.
    ///
    /// # Errors
    ///
    /// The first error of the stream, or [`Error::Io`] from the files; `dest`
    /// is then left as it was.
    pub async fn write_safetensors(mut self, dest: impl AsRef<Path>) -> Result<u64, Error> {
        let subnormals = self.subnormals;
        let dest = dest.as_ref().to_path_buf();
        let header = match self.frames.next().await.transpose()? {
            Some(Frame::ObjectHeader(h)) if h.mode == Mode::Container => h,
            Some(Frame::Abort(a)) => return Err(Error::Aborted { code: a.code, message: a.message }),
            _ => return Err(Error::Protocol("not a container object")),
        };
        let metadata: Vec<(String, String)> = header
            .metadata
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("safetensors.")?.to_string(), v.clone())))
            .collect();
        // With an index, the final layout is known now; without, the data is
        // laid out back to back in a side file.
        let layout = header.index.as_ref().map(|index| safetensors_header(index, &metadata)).transpose()?;
        let target = match &layout {
            Some(_) => dest.clone(),
            None => side_path(&dest),
        };
        let sink = Arc::new(blocking(move || FileSink::create(target)).await?);
        let base = match &layout {
            Some((head, _)) => {
                let (s, head) = (Arc::clone(&sink), head.clone());
                let len = head.len() as u64;
                blocking(move || s.write_at(0, &head)).await?;
                len
            }
            None => 0,
        };
        let (mut entries, mut item_at, mut end) = (Vec::new(), 0u64, 0u64);
        let mut current: Option<Building> = None;
        while let Some(frame) = self.frames.next().await {
            match frame? {
                Frame::ItemHeader(h) => {
                    let b = start(h)?;
                    item_at = match &layout {
                        Some((_, offsets)) => offsets.get(entries.len()).copied().unwrap_or(end),
                        None => end,
                    };
                    end = item_at + b.len as u64;
                    entries.push(IndexEntry {
                        name: b.meta.name.clone(),
                        dtype: b.meta.dtype,
                        shape: b.meta.shape.clone(),
                    });
                    current = Some(b);
                }
                Frame::Chunk(c) => {
                    let b = current.as_ref().ok_or(Error::Protocol("chunk outside an item"))?;
                    let (at, data) = if b.encoding == Encoding::Raw {
                        (c.offset, c.data)
                    } else {
                        let mut values = Vec::new();
                        let at = decode_chunk_into(&b.encoding, &b.meta, c.offset, &c.data, &mut values, subnormals)?;
                        (at, Bytes::from(values))
                    };
                    let s = Arc::clone(&sink);
                    let at = base + item_at + at;
                    blocking(move || s.write_at(at, &data)).await?;
                }
                Frame::ObjectEnd(_) => {
                    // SPEC.md §7.5: the frames must end right after the object end.
                    if self.frames.next().await.transpose()?.is_some() {
                        return Err(Error::Protocol("a frame after the object end"));
                    }
                    let sink = Arc::try_unwrap(sink).map_err(|_| Error::Protocol("sink still in use"))?;
                    let head = layout.map(|(head, _)| head);
                    return finish_safetensors(sink, &dest, head, &entries, &metadata, end).await;
                }
                Frame::Abort(a) => return Err(Error::Aborted { code: a.code, message: a.message }),
                Frame::ItemEnd(_) | Frame::ObjectHeader(_) => {}
            }
        }
        Err(Error::Protocol("frames ended before the object end"))
    }

    fn handle(&mut self, frame: Frame) -> Result<Option<Tensor>, Error> {
        match frame {
            Frame::ObjectHeader(h) => {
                if h.mode != Mode::Container {
                    return Err(Error::Protocol("not a container object"));
                }
                self.header = Some(h);
            }
            Frame::ItemHeader(h) => self.building = Some(start(h)?),
            Frame::Chunk(c) => {
                let b = self.building.as_mut().ok_or(Error::Protocol("chunk outside an item"))?;
                if b.encoding != Encoding::Raw {
                    // Restored chunk by chunk, straight into the tensor being
                    // assembled: the encoded item is never held whole.
                    // Grows with the restored data, never from the declared
                    // length (a peer could declare 256 GiB and send 8 bytes).
                    let mut v = match std::mem::replace(&mut b.data, Assembly::Empty) {
                        Assembly::Many(v) => v,
                        _ => Vec::new(),
                    };
                    decode_chunk_into(&b.encoding, &b.meta, c.offset, &c.data, &mut v, self.subnormals)?;
                    b.data = Assembly::Many(v);
                    return Ok(None);
                }
                b.data = match std::mem::replace(&mut b.data, Assembly::Empty) {
                    Assembly::Empty if c.data.len() == b.len => Assembly::One(c.data),
                    // Room grows with the bytes that arrived (amortized
                    // doubling), never from the declared length: one 8 KB
                    // push declaring a 256 GiB tensor must not allocate it.
                    Assembly::Empty => Assembly::Many(c.data.to_vec()),
                    Assembly::One(first) => {
                        let mut v = Vec::with_capacity(first.len() + c.data.len());
                        v.extend_from_slice(&first);
                        v.extend_from_slice(&c.data);
                        Assembly::Many(v)
                    }
                    Assembly::Many(mut v) => {
                        v.extend_from_slice(&c.data);
                        Assembly::Many(v)
                    }
                };
            }
            Frame::ItemEnd(_) => {
                let b = self.building.take().ok_or(Error::Protocol("item end outside an item"))?;
                let data = match b.data {
                    Assembly::Empty => Bytes::new(),
                    Assembly::One(d) => d,
                    Assembly::Many(v) => Bytes::from(v),
                };
                return Ok(Some(Tensor::from_meta(b.meta, data)?));
            }
            Frame::ObjectEnd(_) => self.ending = true,
            Frame::Abort(a) => return Err(Error::Aborted { code: a.code, message: a.message }),
        }
        Ok(None)
    }
}

impl<S> ObjectRetriever<S> {
    /// Bytes of room held for the tensor being assembled.
    #[cfg(test)]
    fn assembling_capacity(&self) -> usize {
        match self.building.as_ref().map(|b| &b.data) {
            Some(Assembly::Many(v)) => v.capacity(),
            Some(Assembly::One(d)) => d.len(),
            _ => 0,
        }
    }
}

fn start(h: ItemHeader) -> Result<Building, Error> {
    let (Some(dtype), Some(shape)) = (h.dtype, h.shape) else {
        return Err(Error::Tensor { name: h.name, reason: "an opaque item is not a tensor".into() });
    };
    let meta = TensorMeta::new(h.name, dtype, shape);
    // The restored size; the decoder has checked it against the item's length.
    let len =
        meta.byte_len().and_then(|l| usize::try_from(l).ok()).ok_or(Error::Protocol("item larger than memory"))?;
    Ok(Building { meta, len, encoding: h.encoding, data: Assembly::Empty })
}

impl<S> Stream for ObjectRetriever<S>
where
    S: Stream<Item = Result<Frame, Error>> + Unpin,
{
    type Item = Result<Tensor, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let frame = match self.frames.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) if self.ending => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(_))) if self.ending => {
                    self.done = true;
                    return Poll::Ready(Some(Err(Error::Protocol("a frame after the object end"))));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    // The decoder ends cleanly only after an object end.
                    return Poll::Ready(Some(Err(Error::Protocol("frames ended before the object end"))));
                }
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(f))) => f,
            };
            match self.handle(frame) {
                Ok(Some(t)) => return Poll::Ready(Some(Ok(t))),
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

/// Commits a safetensors file whose data region (`end` bytes) is in
/// `sink`: in place when the header was written first (`head`), or, when
/// the layout was not known up front, by writing the header built from
/// `entries` into the final file and copying the side file after it
/// (kernel-side). Blocking work runs on the blocking pool.
pub(super) async fn finish_safetensors(
    sink: FileSink,
    dest: &Path,
    head: Option<Vec<u8>>,
    entries: &[IndexEntry],
    metadata: &[(String, String)],
    end: u64,
) -> Result<u64, Error> {
    match head {
        Some(head) => {
            let total = head.len() as u64 + end;
            blocking(move || sink.commit(total, true)).await?;
            Ok(total)
        }
        None => {
            let (head, _) = safetensors_header(entries, metadata)?;
            let dest = dest.to_path_buf();
            blocking(move || {
                let out = FileSink::create(&dest)?;
                out.write_at(0, &head)?;
                out.copy_from(sink.part_path(), head.len() as u64)?;
                drop(sink);
                out.commit(head.len() as u64 + end, true)?;
                Ok(head.len() as u64 + end)
            })
            .await
        }
    }
}

/// The safetensors header (length prefix, JSON, space padding to 8 bytes)
/// for tensors laid out back to back in `entries` order, and each tensor's
/// data offset.
pub(crate) fn safetensors_header(
    entries: &[IndexEntry],
    metadata: &[(String, String)],
) -> Result<(Vec<u8>, Vec<u64>), Error> {
    let mut offsets = Vec::with_capacity(entries.len());
    let mut infos = Vec::with_capacity(entries.len());
    let mut at = 0usize;
    for e in entries {
        let meta = TensorMeta::new(e.name.clone(), e.dtype, e.shape.clone());
        let len = meta.byte_len().and_then(|l| usize::try_from(l).ok());
        let len = len.ok_or_else(|| Error::Tensor { name: e.name.clone(), reason: "size overflows".into() })?;
        offsets.push(at as u64);
        let shape = e.shape.iter().map(|&d| d as usize).collect();
        infos.push((
            e.name.clone(),
            safetensors::tensor::TensorInfo { dtype: to_safetensors(e.dtype), shape, data_offsets: (at, at + len) },
        ));
        at += len;
    }
    let meta_map = (!metadata.is_empty()).then(|| metadata.iter().cloned().collect());
    let meta = safetensors::tensor::Metadata::new(meta_map, infos)?;
    // Through a `Value` (a sorted map): `Metadata` keeps `__metadata__` in a
    // HashMap, whose order would differ from run to run, and the same object
    // retrieved twice must give byte-identical files.
    let json = serde_json::to_value(&meta).and_then(|v| serde_json::to_vec(&v));
    let mut json = json.map_err(|e| Error::Io(std::io::Error::other(e)))?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    Ok((out, offsets))
}

/// Where tensors go when the layout is not known up front.
pub(super) fn side_path(dest: &Path) -> std::path::PathBuf {
    let mut p = dest.as_os_str().to_owned();
    p.push(".data");
    p.into()
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Io(std::io::Error::other(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Dtype;
    use crate::wire::{ItemHeader, ObjectEncoder};

    /// SPEC.md §7.5: bytes after the object end fail the stream, however
    /// the frame source reports them.
    #[test]
    fn frames_after_the_object_end_are_an_error() -> Result<(), Error> {
        use crate::tensor::Tensor;
        let mut model = TensorMap::new();
        model.insert("w".into(), Tensor::new("w", Dtype::U8, vec![4], Bytes::from_static(&[1, 2, 3, 4]))?);
        let mut frames: Vec<Result<Frame, Error>> = futures::executor::block_on(
            crate::send::ContainerStreamer::from_map("m", Arc::new(model)).frames().collect(),
        );
        frames.push(Err(Error::Decode(crate::wire::DecodeError::TrailingData)));
        let got = futures::executor::block_on(ObjectRetriever::new(futures::stream::iter(frames)).collect_map());
        assert!(matches!(got, Err(Error::Decode(crate::wire::DecodeError::TrailingData))), "{got:?}");
        Ok(())
    }

    /// Finding 3 of issue 10: a 64 GiB tensor declared, 8 KiB sent.
    #[test]
    fn room_grows_with_the_data_not_the_declared_length() -> Result<(), Error> {
        let mut enc = ObjectEncoder::new();
        let frames = vec![
            enc.object_header(ObjectHeader::new("m", Mode::Container))?,
            enc.item_header(ItemHeader::tensor(0, "w", Dtype::U8, vec![64 << 30]))?,
            enc.chunk(Bytes::from(vec![1u8; 4096]))?,
            enc.chunk(Bytes::from(vec![2u8; 4096]))?,
        ];
        let mut r = ObjectRetriever::new(futures::stream::empty::<Result<Frame, Error>>());
        for f in frames {
            assert!(r.handle(f)?.is_none());
        }
        assert!(r.assembling_capacity() <= 64 << 10, "holds {} bytes for 8 KiB", r.assembling_capacity());
        Ok(())
    }
}

//! [`ObjectRetriever`]: a container object's frames in, tensors out, each as
//! soon as its last chunk is verified.

use std::collections::VecDeque;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{Stream, StreamExt};

use super::{ContainerFile, ProgressFn, Receive, Sink};
use crate::quant::{decode_chunk_into, Subnormals};
use crate::tensor::{Tensor, TensorMap, TensorMeta};
use crate::wire::{Encoding, Frame, ItemHeader, Mode, ObjectEnd, ObjectHeader};
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
    recv: Receive<TensorQueue>,
    progress: Option<ProgressFn>,
    done: bool,
}

impl<S> std::fmt::Debug for ObjectRetriever<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectRetriever")
            .field("object", &self.recv.object_header().map(|h| &h.name))
            .field("building", &self.recv.sink().and_then(|q| q.building.as_ref()).map(|b| &b.meta.name))
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
        ObjectRetriever { frames, recv: Receive::new(TensorQueue::default()), progress: None, done: false }
    }

    /// How quantized tensors restore products that are subnormal in f32
    /// (SPEC.md §5.5.2a): flushed to zero as bitsandbytes' CUDA kernels do
    /// (the default, what an NVFlare peer restores), or kept as its CPU path
    /// does.
    pub fn with_subnormals(mut self, subnormals: Subnormals) -> Self {
        if let Some(q) = self.recv.sink_mut() {
            q.subnormals = subnormals;
        }
        self
    }

    /// Calls `progress` as item data arrive (bytes on the wire, each counted
    /// once, out of the object header's total), whichever way the object is
    /// consumed.
    pub fn with_progress(mut self, progress: Option<ProgressFn>) -> Self {
        self.recv = self.recv.with_progress(progress.clone());
        self.progress = progress;
        self
    }

    /// The object header, once the first tensor (or the end) was polled.
    pub fn object_header(&self) -> Option<&ObjectHeader> {
        self.recv.object_header()
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
    /// chunk, through a [`ContainerFile`]: into `<dest>.part`, which is
    /// validated, synced and renamed over `dest` only when the object is
    /// complete. Memory: one chunk, not one tensor. Returns the file's
    /// length.
    ///
    /// # Errors
    ///
    /// The first error of the stream, or [`Error::Io`] from the files; `dest`
    /// is then left as it was.
    pub async fn write_safetensors(mut self, dest: impl AsRef<Path>) -> Result<u64, Error> {
        let subnormals = self.recv.sink().map(|q| q.subnormals).unwrap_or_default();
        let mut file = ContainerFile::new(dest).with_subnormals(subnormals).with_progress(self.progress.take());
        file.take(&mut self.frames).await
    }
}

impl<S> ObjectRetriever<S> {
    /// Bytes of room held for the tensor being assembled.
    #[cfg(test)]
    fn assembling_capacity(&self) -> usize {
        match self.recv.sink().and_then(|q| q.building.as_ref()).map(|b| &b.data) {
            Some(Assembly::Many(v)) => v.capacity(),
            Some(Assembly::One(d)) => d.len(),
            _ => 0,
        }
    }
}

impl<S> Stream for ObjectRetriever<S>
where
    S: Stream<Item = Result<Frame, Error>> + Unpin,
{
    type Item = Result<Tensor, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let me = &mut *self;
        loop {
            if let Some(t) = me.recv.sink_mut().and_then(|q| q.ready.pop_front()) {
                return Poll::Ready(Some(Ok(t)));
            }
            if me.done {
                return Poll::Ready(None);
            }
            let step = match me.frames.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(f))) => me.recv.handle_frame(f),
                Poll::Ready(Some(Err(e))) => Err(e),
                Poll::Ready(None) => {
                    me.done = true;
                    me.recv.finish()
                }
            };
            if let Err(e) = step {
                me.done = true;
                return Poll::Ready(Some(Err(e)));
            }
        }
    }
}

/// The [`Sink`] behind [`ObjectRetriever`]: assembles each tensor in memory
/// and queues it once its item's CRC is verified.
#[derive(Debug, Default)]
struct TensorQueue {
    building: Option<Building>,
    ready: VecDeque<Tensor>,
    subnormals: Subnormals,
}

#[derive(Debug)]
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

impl std::fmt::Debug for Assembly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Assembly::Empty => f.write_str("Empty"),
            Assembly::One(d) => write!(f, "One({} bytes)", d.len()),
            Assembly::Many(v) => write!(f, "Many({} bytes)", v.len()),
        }
    }
}

impl Sink for TensorQueue {
    type Output = ();

    fn object(&mut self, header: &ObjectHeader) -> Result<(), Error> {
        match header.mode {
            Mode::Container => Ok(()),
            _ => Err(Error::Protocol("not a container object")),
        }
    }

    fn item(&mut self, header: &ItemHeader, _: u64) -> Result<(), Error> {
        self.building = Some(start(header.clone())?);
        Ok(())
    }

    fn chunk(&mut self, _: u32, offset: u64, _: u64, data: Bytes) -> Result<(), Error> {
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
            decode_chunk_into(&b.encoding, &b.meta, offset, &data, &mut v, self.subnormals)?;
            b.data = Assembly::Many(v);
            return Ok(());
        }
        // One stream's chunks come in offset order (SPEC.md §7.2, checked by
        // the decoder): each one extends the tensor.
        b.data = match std::mem::replace(&mut b.data, Assembly::Empty) {
            Assembly::Empty if data.len() == b.len => Assembly::One(data),
            // Room grows with the bytes that arrived (amortized
            // doubling), never from the declared length: one 8 KB
            // push declaring a 256 GiB tensor must not allocate it.
            Assembly::Empty => Assembly::Many(data.to_vec()),
            Assembly::One(first) => {
                let mut v = Vec::with_capacity(first.len() + data.len());
                v.extend_from_slice(&first);
                v.extend_from_slice(&data);
                Assembly::Many(v)
            }
            Assembly::Many(mut v) => {
                v.extend_from_slice(&data);
                Assembly::Many(v)
            }
        };
        Ok(())
    }

    fn item_end(&mut self, _: u32, _: u64, _: u32) -> Result<(), Error> {
        let b = self.building.take().ok_or(Error::Protocol("item end outside an item"))?;
        let data = match b.data {
            Assembly::Empty => Bytes::new(),
            Assembly::One(d) => d,
            Assembly::Many(v) => Bytes::from(v),
        };
        self.ready.push_back(Tensor::from_meta(b.meta, data)?);
        Ok(())
    }

    fn commit(&mut self, _: &ObjectEnd) -> Result<(), Error> {
        Ok(())
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
            crate::send::ContainerStreamer::from_map("m", std::sync::Arc::new(model)).frames().collect(),
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
            r.recv.handle_frame(f)?;
        }
        assert!(r.assembling_capacity() <= 64 << 10, "holds {} bytes for 8 KiB", r.assembling_capacity());
        Ok(())
    }
}

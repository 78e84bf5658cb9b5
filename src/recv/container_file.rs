//! [`ContainerFile`]: a container object written into a safetensors file
//! over one or more streams, resumable from the ranges already verified.

use std::ops::Range;
use std::path::{Path, PathBuf};

use futures::stream::Stream;

use super::{part_path, FileSink, PartLedger, ProgressFn, Receive, Sink};
use crate::quant::{decode_chunk_into, Subnormals};
use crate::tensor::{to_safetensors, TensorMeta};
use crate::wire::{Encoding, Frame, IndexEntry, ItemHeader, Mode, ObjectEnd, ObjectHeader};
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
    recv: Receive<SafetensorsWriter>,
}

impl ContainerFile {
    /// Nothing received yet; the file will be `dest` (via `<dest>.part`).
    pub fn new(dest: impl AsRef<Path>) -> Self {
        ContainerFile { recv: Receive::new(SafetensorsWriter::new(dest)) }
    }

    /// Like [`ContainerFile::new`], with a crash-safe ledger beside
    /// `<dest>.part` (the same one as a file-mode pull, [`PartLedger`]): a
    /// process killed mid-transfer and run again with the same `request`
    /// continues the `.part` file from the chunks the ledger lists; a ledger
    /// written for another request, or an object header that changed since
    /// (another source version), starts over. Blocking (reads the ledger).
    pub fn create_resumable(dest: impl AsRef<Path>, request: String) -> Self {
        let dest = dest.as_ref().to_path_buf();
        let parts = [part_path(&dest), part_path(&side_path(&dest))];
        let (ledger, found) = PartLedger::continue_or_start(&dest, request, &parts);
        // A ledger describes this tool's `.part` only: when another
        // program's file holds the name, the writer goes elsewhere and no
        // ledger is kept.
        if !found && parts.iter().any(|p| p.symlink_metadata().is_ok()) {
            return ContainerFile::new(dest);
        }
        let mut recv = Receive::new(SafetensorsWriter::new(&dest)).with_ledger(dest, ledger);
        let resuming = recv.is_resuming();
        if let Some(w) = recv.sink_mut() {
            w.resume = resuming;
            w.ledgered = true;
        }
        ContainerFile { recv }
    }

    /// How quantized tensors restore f32-subnormal products (SPEC.md
    /// §5.5.2a); flushed to zero, as a CUDA peer does, by default.
    pub fn with_subnormals(mut self, subnormals: Subnormals) -> Self {
        if let Some(s) = self.recv.sink_mut() {
            s.subnormals = subnormals;
        }
        self
    }

    /// Calls `progress` as item data arrive (bytes on the wire, each counted
    /// once, out of the object header's total).
    pub fn with_progress(mut self, progress: Option<ProgressFn>) -> Self {
        self.set_progress(progress);
        self
    }

    /// As [`Receive::tolerating_damaged_chunks`].
    pub fn tolerating_damaged_chunks(&mut self, max: u32) {
        self.recv.tolerating_damaged_chunks(max);
    }

    /// As [`ContainerFile::with_progress`], from now on.
    pub fn set_progress(&mut self, progress: Option<ProgressFn>) {
        self.recv.set_progress(progress);
    }

    /// Per item seen so far, the ranges (in the item's bytes as sent) not
    /// yet placed; `None` before the first item: ask for everything.
    pub fn missing(&self) -> Option<Vec<(u32, Vec<Range<u64>>)>> {
        self.recv.missing()
    }

    /// Forgets everything (the source changed): the next stream starts from
    /// zero, into fresh files.
    pub fn restart(&mut self) {
        self.recv.restart();
        if let Some(s) = self.recv.sink_mut() {
            s.layout = None;
            s.items.clear();
            s.resume = false;
        }
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
        self.recv.take(frames).await
    }
}

/// The [`Sink`] that writes a container object into a safetensors file:
/// each tensor's data at its final offset, chunk by chunk (quantized chunks
/// restored first), the header first when the object header's index fixes
/// the layout, else the data into a side file copied after the header at
/// the end. Committed (validated, synced, renamed) only at the verified
/// object end. [`ContainerFile`] drives one over several streams.
#[derive(Debug)]
pub struct SafetensorsWriter {
    dest: PathBuf,
    layout: Option<Layout>,
    items: Vec<Place>,
    subnormals: Subnormals,
    /// Continue the `.part` file a ledger vouches for, instead of a new one.
    resume: bool,
    /// A ledger describes `<dest>.part`: a fresh start (a changed source)
    /// must write there again, not beside the stale file.
    ledgered: bool,
}

#[derive(Debug)]
struct Layout {
    sink: Option<FileSink>,
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

impl SafetensorsWriter {
    /// Writes into `dest` (via `<dest>.part`).
    pub fn new(dest: impl AsRef<Path>) -> Self {
        SafetensorsWriter {
            dest: dest.as_ref().to_path_buf(),
            layout: None,
            items: Vec::new(),
            subnormals: Subnormals::default(),
            resume: false,
            ledgered: false,
        }
    }

    /// How quantized tensors restore f32-subnormal products (SPEC.md
    /// §5.5.2a).
    pub fn with_subnormals(mut self, subnormals: Subnormals) -> Self {
        self.subnormals = subnormals;
        self
    }

    fn layout(&mut self) -> Result<&mut Layout, Error> {
        self.layout.as_mut().ok_or(Error::Protocol("frames before the object header"))
    }
}

impl Sink for SafetensorsWriter {
    type Output = u64;
    const BLOCKING: bool = true;

    fn object(&mut self, h: &ObjectHeader) -> Result<(), Error> {
        if h.mode != Mode::Container {
            return Err(Error::Protocol("not a container object"));
        }
        // Told again after a restart: start afresh (the old `.part` goes).
        self.layout = None;
        self.items.clear();
        let metadata: Vec<(String, String)> = h
            .metadata
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("safetensors.")?.to_string(), v.clone())))
            .collect();
        // With an index, the final layout is known now; without, the data is
        // laid out back to back in a side file.
        let fixed = h.index.as_ref().map(|index| safetensors_header(index, &metadata)).transpose()?;
        let target = if fixed.is_some() { self.dest.clone() } else { side_path(&self.dest) };
        let sink = match std::mem::take(&mut self.resume) {
            true => FileSink::open_existing(target)?,
            false => {
                if self.ledgered {
                    // Ours (the ledger vouched for it), and no longer trusted.
                    let _ = std::fs::remove_file(part_path(&target));
                }
                FileSink::create(target)?
            }
        };
        let (head, offsets) = fixed.map_or((None, None), |(h, o)| (Some(h), Some(o)));
        let base = head.as_ref().map_or(0, |h| h.len() as u64);
        if let Some(head) = &head {
            sink.write_at(0, head)?;
        }
        self.layout = Some(Layout { sink: Some(sink), head, offsets, metadata, entries: Vec::new(), base, end: 0 });
        Ok(())
    }

    fn item(&mut self, header: &ItemHeader, _: u64) -> Result<(), Error> {
        let index = self.items.len();
        let place = place(header.clone())?;
        let layout = self.layout()?;
        let len = place.meta.byte_len().ok_or(Error::Protocol("tensor size overflows"))?;
        let at = match &layout.offsets {
            Some(o) => o.get(index).copied().unwrap_or(layout.end),
            None => layout.end,
        };
        layout.end = at + len;
        layout.entries.push(IndexEntry {
            name: place.meta.name.clone(),
            dtype: place.meta.dtype,
            shape: place.meta.shape.clone(),
        });
        self.items.push(Place { at, ..place });
        Ok(())
    }

    fn chunk(&mut self, item: u32, offset: u64, _: u64, data: bytes::Bytes) -> Result<(), Error> {
        let subnormals = self.subnormals;
        let p = self.items.get(item as usize).ok_or(Error::Protocol("chunk of an unknown item"))?;
        let (at, data) = if p.encoding == Encoding::Raw {
            (offset, data)
        } else {
            let mut values = Vec::new();
            let at = decode_chunk_into(&p.encoding, &p.meta, offset, &data, &mut values, subnormals)?;
            (at, bytes::Bytes::from(values))
        };
        let at = p.at + at;
        let layout = self.layout()?;
        let sink = layout.sink.as_ref().ok_or(Error::Protocol("file already committed"))?;
        sink.write_at(layout.base + at, &data)
    }

    fn sync(&mut self) -> Result<(), Error> {
        match self.layout.as_ref().and_then(|l| l.sink.as_ref()) {
            Some(s) => s.sync_data(),
            None => Ok(()),
        }
    }

    fn commit(&mut self, _: &ObjectEnd) -> Result<u64, Error> {
        let dest = self.dest.clone();
        let layout = self.layout()?;
        let sink = layout.sink.take().ok_or(Error::Protocol("file already committed"))?;
        let head = layout.head.take();
        finish_safetensors(sink, &dest, head, &layout.entries, &layout.metadata, layout.end)
    }

    fn abort(&mut self) {
        // Dropping the sink removes its `.part` file.
        self.layout = None;
    }
}

fn place(h: ItemHeader) -> Result<Place, Error> {
    let (Some(dtype), Some(shape)) = (h.dtype, h.shape) else {
        return Err(Error::Tensor { name: h.name, reason: "an opaque item is not a tensor".into() });
    };
    Ok(Place { at: 0, meta: TensorMeta::new(h.name, dtype, shape), encoding: h.encoding })
}

/// Commits a safetensors file whose data region (`end` bytes) is in
/// `sink`: in place when the header was written first (`head`), or, when
/// the layout was not known up front, by writing the header built from
/// `entries` into the final file and copying the side file after it
/// (kernel-side). Blocking.
fn finish_safetensors(
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
            sink.commit(total, true)?;
            Ok(total)
        }
        None => {
            let (head, _) = safetensors_header(entries, metadata)?;
            let out = FileSink::create(dest)?;
            out.write_at(0, &head)?;
            out.copy_from(sink.part_path(), head.len() as u64)?;
            drop(sink);
            out.commit(head.len() as u64 + end, true)?;
            Ok(head.len() as u64 + end)
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
fn side_path(dest: &Path) -> std::path::PathBuf {
    let mut p = dest.as_os_str().to_owned();
    p.push(".data");
    p.into()
}

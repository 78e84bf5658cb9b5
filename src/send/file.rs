//! [`FileStreamer`]: a file, memory-mapped, sent as chunk frames whose
//! payloads are slices of the mapping.
//!
//! This module holds the crate's `unsafe` code: mapping the file, and
//! releasing the pages of a chunk once the transport has written it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use memmap2::{Mmap, UncheckedAdvice};

use crate::wire::{Abort, AbortCode, EncodeError, Frame, ItemHeader, Mode, ObjectEncoder, ObjectHeader};
use crate::Error;

pub use crate::wire::FORMAT_KEY;

/// Pages are released in units of this many bytes (the x86-64 and common
/// aarch64 page size; on larger pages the kernel rounds, which only costs a
/// refault).
const PAGE: usize = 4096;

/// Streams one file as a file-mode object (SPEC.md §5.1): one opaque item
/// holding the whole file.
///
/// # Memory and back-pressure
///
/// The file is memory-mapped, not read: every chunk frame's payload is a
/// [`Bytes`] slice of the mapping, so no file data is copied in user space.
/// When the last reference to a chunk is dropped — once the transport has
/// written it — the chunk's pages are released (`MADV_DONTNEED`), so the
/// sender's resident memory stays at the chunks in flight, whatever the
/// file's size. Frames are produced lazily by [`FileStreamer::frames`]; a
/// transport that sends only against granted flow-control capacity pulls
/// the next frame only when the receiver has room for it.
///
/// # Source changes
///
/// The file must not be truncated while it is being sent: reading a page
/// past the new end of a mapped file raises `SIGBUS`. A change of size or
/// modification time is detected at the end of the item and turns into an
/// [`AbortCode::SOURCE_CHANGED`] abort instead of an object end.
///
/// # Safetensors
///
/// A file whose name ends in `.safetensors` must be a valid safetensors file
/// (its header is parsed and validated with the `safetensors` crate), and
/// the object header says so (`"format": "safetensors"`), so that the
/// receiver validates it too.
///
/// ```no_run
/// use tensorwire::send::FileStreamer;
/// # fn main() -> Result<(), tensorwire::Error> {
/// let streamer = FileStreamer::open("model.safetensors")?.with_chunk_size(4 << 20);
/// for frame in streamer.frames() {
///     let buf = frame?.into_buf(); // what a transport sends; chunk data is not copied
///     drop(buf);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FileStreamer {
    map: Arc<Mmap>,
    file: Arc<File>,
    path: PathBuf,
    name: String,
    chunk: usize,
    safetensors: Option<usize>,
    modified: Option<SystemTime>,
}

impl FileStreamer {
    /// Maps `path`; the object is named after the file.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be opened or mapped;
    /// [`Error::Safetensors`] when a `.safetensors` file is not valid.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
        }
        let map = map_file(&file)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let safetensors = if name.ends_with(".safetensors") {
            let (_, meta) = safetensors::SafeTensors::read_metadata(&map)?;
            Some(meta.tensors().len())
        } else {
            None
        };
        Ok(FileStreamer {
            map: Arc::new(map),
            file: Arc::new(file),
            path: path.to_path_buf(),
            name,
            chunk: crate::wire::DEFAULT_CHUNK_BYTES as usize,
            safetensors,
            modified: meta.modified().ok(),
        })
    }

    /// Names the object (and its item) `name` instead of the file name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the chunk size (bytes per chunk frame; at least 1).
    pub fn with_chunk_size(mut self, chunk: usize) -> Self {
        self.chunk = chunk.max(1);
        self
    }

    /// The file's length.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The number of tensors, when the file is a valid safetensors file.
    pub fn safetensors_tensors(&self) -> Option<usize> {
        self.safetensors
    }

    /// The object header this streamer sends first.
    pub fn object_header(&self) -> ObjectHeader {
        let mut h = ObjectHeader::new(self.name.clone(), Mode::File).with_items(1).with_total_len(self.len());
        h.chunk_size = u32::try_from(self.chunk).unwrap_or(u32::MAX);
        if self.safetensors.is_some() {
            h.metadata.insert(FORMAT_KEY.into(), "safetensors".into());
        }
        h
    }

    /// The frames of the object, produced lazily: object header, item
    /// header, chunks, item end, object end (or an abort if the file
    /// changed).
    pub fn frames(&self) -> FileFrames {
        FileFrames { streamer: self.clone(), enc: ObjectEncoder::new(), step: Step::ObjectHeader, offset: 0 }
    }

    /// A chunk's bytes: a slice of the mapping whose pages are released when
    /// the last reference is dropped.
    fn window(&self, start: usize, end: usize) -> Bytes {
        window(&self.map, start, end)
    }

    fn changed(&self) -> bool {
        // Compare by path too: a replaced file keeps our mapping valid but is
        // no longer what was asked for.
        let now = std::fs::metadata(&self.path).ok();
        let same_len = self.file.metadata().map(|m| m.len() == self.len()).unwrap_or(false);
        let same_time = now.and_then(|m| m.modified().ok()) == self.modified;
        !(same_len && same_time)
    }
}

/// Iterator over a [`FileStreamer`]'s frames (see [`FileStreamer::frames`]).
#[derive(Debug)]
#[must_use = "iterators do nothing unless consumed"]
pub struct FileFrames {
    streamer: FileStreamer,
    enc: ObjectEncoder,
    step: Step,
    offset: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    ObjectHeader,
    ItemHeader,
    Chunks,
    ObjectEnd,
    Done,
}

impl FileFrames {
    fn step(&mut self) -> Result<Option<Frame>, EncodeError> {
        let s = &self.streamer;
        Ok(Some(match self.step {
            Step::ObjectHeader => {
                self.step = Step::ItemHeader;
                self.enc.object_header(s.object_header())?
            }
            Step::ItemHeader => {
                self.step = Step::Chunks;
                self.enc.item_header(ItemHeader::bytes(0, s.name.clone(), s.len()))?
            }
            Step::Chunks if self.offset < s.map.len() => {
                let end = (self.offset + s.chunk).min(s.map.len());
                let data = s.window(self.offset, end);
                self.offset = end;
                self.enc.chunk(data)?
            }
            Step::Chunks => {
                if s.changed() {
                    self.step = Step::Done;
                    let msg = format!("{} changed while it was being sent", s.path.display());
                    return Ok(Some(self.enc.abort(Abort::new(AbortCode::SOURCE_CHANGED, msg))));
                }
                self.step = Step::ObjectEnd;
                self.enc.item_end()?
            }
            Step::ObjectEnd => {
                self.step = Step::Done;
                self.enc.object_end()?
            }
            Step::Done => return Ok(None),
        }))
    }
}

impl Iterator for FileFrames {
    type Item = Result<Frame, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step().map_err(Error::from).transpose()
    }
}

/// Maps `file` read-only for sequential reading.
pub(crate) fn map_file(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the mapping is shared and read-only. Its contents may change
    // if another process writes the file, which can only make us send
    // wrong bytes: the CRCs are computed over what we actually send, and
    // a change of size or mtime is detected and aborts the object (see
    // FileStreamer's docs). Truncation while mapped raises SIGBUS; callers
    // must not truncate files being served, as documented.
    let map = unsafe { Mmap::map(file)? };
    // Sequential access: read-ahead helps, and is only advice.
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(map)
}

/// Bytes `start..end` of the mapping, without copying; the pages are
/// released when the last reference to them is dropped.
pub(crate) fn window(map: &Arc<Mmap>, start: usize, end: usize) -> Bytes {
    Bytes::from_owner(MapWindow { map: Arc::clone(map), start, end })
}

/// The owner behind a chunk's [`Bytes`]: a window of the shared mapping.
struct MapWindow {
    map: Arc<Mmap>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MapWindow {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }
}

impl Drop for MapWindow {
    fn drop(&mut self) {
        // Release only whole pages inside this window, so that pages shared
        // with the neighbouring windows stay mapped.
        let start = self.start.next_multiple_of(PAGE);
        let end = if self.end == self.map.len() { self.end } else { self.end / PAGE * PAGE };
        if end > start {
            // SAFETY: the mapping is a shared, read-only mapping of a file.
            // MADV_DONTNEED on such a mapping only drops page-table entries:
            // a later access refaults the same bytes from the page cache, so
            // no live borrow can observe changed memory. This window's own
            // borrow ends here, and the range lies within the mapping.
            let _ = unsafe { self.map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start) };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use bytes::BytesMut;

    use super::*;
    use crate::wire::FrameDecoder;

    fn temp(name: &str, data: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tw-send-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::File::create(&path).and_then(|mut f| f.write_all(data)).expect("write temp file");
        path
    }

    fn decode(s: &FileStreamer) -> (Vec<Frame>, Vec<u8>) {
        let mut buf = BytesMut::from(&crate::wire::preamble()[..]);
        for f in s.frames() {
            f.expect("frame").encode(&mut buf);
        }
        let mut dec = FrameDecoder::new();
        let (mut frames, mut data) = (Vec::new(), Vec::new());
        while let Some(f) = dec.decode_frame_eof(&mut buf).expect("valid object") {
            if let Frame::Chunk(c) = &f {
                data.extend_from_slice(&c.data);
            }
            frames.push(f);
        }
        (frames, data)
    }

    #[test]
    fn streams_any_file_in_chunks() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let s = FileStreamer::open(temp("blob.bin", &data)).expect("open").with_chunk_size(4096);
        let (frames, got) = decode(&s);
        assert_eq!(got, data);
        assert_eq!(frames.iter().filter(|f| matches!(f, Frame::Chunk(_))).count(), 3);
        assert_eq!(s.safetensors_tensors(), None);
    }

    #[test]
    fn streams_empty_file() {
        let s = FileStreamer::open(temp("empty", b"")).expect("open");
        let (frames, got) = decode(&s);
        assert!(got.is_empty());
        assert_eq!(frames.len(), 4);
    }

    #[test]
    fn chunks_are_slices_of_the_mapping() {
        let s = FileStreamer::open(temp("map.bin", &[9u8; 20_000])).expect("open").with_chunk_size(8192);
        let range = s.map.as_ptr_range();
        for f in s.frames() {
            if let Frame::Chunk(c) = f.expect("frame") {
                assert!(range.contains(&c.data.as_ptr()), "chunk was copied");
            }
        }
    }

    #[test]
    fn marks_valid_safetensors() {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &[0u8; 8]).expect("view");
        let bytes = safetensors::serialize([("w", view)], None).expect("serialize");
        let s = FileStreamer::open(temp("m.safetensors", &bytes)).expect("open");
        assert_eq!(s.safetensors_tensors(), Some(1));
        assert_eq!(s.object_header().metadata.get(FORMAT_KEY).map(String::as_str), Some("safetensors"));
    }

    #[test]
    fn rejects_invalid_file_claiming_to_be_safetensors() {
        let err = FileStreamer::open(temp("fake.safetensors", b"definitely not a header")).expect_err("invalid");
        assert!(matches!(err, Error::Safetensors(_)), "{err}");
    }

    #[test]
    fn aborts_when_the_file_changes() {
        let path = temp("changing.bin", &[1u8; 10_000]);
        let s = FileStreamer::open(&path).expect("open").with_chunk_size(4096);
        let mut frames = s.frames();
        let _ = frames.next();
        std::fs::OpenOptions::new().append(true).open(&path).and_then(|mut f| f.write_all(b"more")).expect("append");
        let last = frames.last().expect("frames").expect("frame");
        assert!(matches!(last, Frame::Abort(a) if a.code == AbortCode::SOURCE_CHANGED));
    }
}

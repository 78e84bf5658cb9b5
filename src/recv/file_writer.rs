//! [`FileWriter`]: the [`Sink`] of file mode, each chunk written at its
//! position in a [`FileSink`].

use super::{FileSink, Sink};
use crate::wire::{ItemHeader, ObjectEnd, ObjectHeader, FORMAT_KEY};
use crate::Error;

/// A file-mode object (or the concatenated items of any object) into a
/// [`FileSink`]: each chunk written at its position, the `.part` file
/// committed (length set, validated as safetensors when the object or the
/// caller says it is one, synced, renamed) at the verified object end. The
/// client's `get -o FILE` and the server's push handler both use it.
///
/// ```
/// use bytes::Bytes;
/// use tensorwire::recv::{FileSink, FileWriter, Receive};
/// use tensorwire::wire::{ItemHeader, Mode, ObjectEncoder, ObjectHeader};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dest = std::env::temp_dir().join(format!("tw-doc-writer-{}.bin", std::process::id()));
/// let mut enc = ObjectEncoder::new();
/// let frames = vec![
///     enc.object_header(ObjectHeader::new("f", Mode::File))?,
///     enc.item_header(ItemHeader::bytes(0, "f", 4))?,
///     enc.chunk(Bytes::from_static(b"abcd"))?,
///     enc.item_end()?,
///     enc.object_end()?,
/// ];
/// let mut recv = Receive::new(FileWriter::new(FileSink::create(&dest)?));
/// for f in frames {
///     recv.handle_frame(f)?;
/// }
/// assert_eq!(recv.finish()?.len, 4);
/// assert_eq!(std::fs::read(&dest)?, b"abcd");
/// # std::fs::remove_file(&dest)?;
/// # Ok(())
/// # }
/// ```
pub struct FileWriter {
    sink: Option<FileSink>,
    open: Option<Opener>,
    safetensors: bool,
}

type Opener = Box<dyn FnOnce() -> Result<FileSink, Error> + Send>;

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("part", &self.sink.as_ref().map(FileSink::part_path))
            .field("safetensors", &self.safetensors)
            .finish()
    }
}

impl FileWriter {
    /// Writes into `sink`; a destination named `*.safetensors` is
    /// validated as one at the commit.
    pub fn new(sink: FileSink) -> Self {
        let safetensors = sink.dest().extension().is_some_and(|e| e == "safetensors");
        FileWriter { sink: Some(sink), open: None, safetensors }
    }

    /// Opens its file with `open` (on the blocking pool) only when the first
    /// verified bytes arrive, or at the object end for an empty object: a
    /// server takes a file (and its place in its bounds) only for a push
    /// that has sent a verified chunk.
    pub fn opening(open: impl FnOnce() -> Result<FileSink, Error> + Send + 'static) -> Self {
        FileWriter { sink: None, open: Some(Box::new(open)), safetensors: false }
    }

    /// Validates the file as safetensors at the commit, whatever the object
    /// says.
    pub fn safetensors(mut self, yes: bool) -> Self {
        self.safetensors |= yes;
        self
    }

    fn file(&mut self) -> Result<&FileSink, Error> {
        if self.sink.is_none() {
            let open = self.open.take().ok_or(Error::Protocol("file already committed"))?;
            self.sink = Some(open()?);
        }
        self.sink.as_ref().ok_or(Error::Protocol("file already committed"))
    }
}

impl Sink for FileWriter {
    type Output = ObjectEnd;
    const BLOCKING: bool = true;

    fn object(&mut self, header: &ObjectHeader) -> Result<(), Error> {
        self.safetensors |= header.metadata.get(FORMAT_KEY).is_some_and(|f| f == "safetensors");
        Ok(())
    }

    fn item(&mut self, _: &ItemHeader, _: u64) -> Result<(), Error> {
        Ok(())
    }

    fn chunk(&mut self, _: u32, _: u64, position: u64, data: bytes::Bytes) -> Result<(), Error> {
        self.file()?.write_at(position, &data)
    }

    fn sync(&mut self) -> Result<(), Error> {
        match &self.sink {
            Some(s) => s.sync_data(),
            None => Ok(()),
        }
    }

    fn commit(&mut self, end: &ObjectEnd) -> Result<ObjectEnd, Error> {
        self.file()?;
        let sink = self.sink.take().ok_or(Error::Protocol("file already committed"))?;
        sink.commit(end.len, self.safetensors)?;
        Ok(*end)
    }

    fn abort(&mut self) {
        // Dropping the sink removes its `.part` file.
        self.sink = None;
    }
}

//! [`FileSink`]: writes an object's bytes into `<dest>.part` at their
//! offsets and moves the file into place only when it is complete.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// The receiving end of a file transfer.
///
/// Bytes are written at their offsets (positioned writes, so chunks may come
/// in any order) into `<dest>.part`. [`FileSink::commit`] checks the length,
/// validates a safetensors file when asked to, syncs the data, and renames
/// the file over `dest` atomically, then syncs the directory. A sink that is
/// dropped without a commit removes its `.part` file: a failed or aborted
/// transfer leaves `dest` exactly as it was.
///
/// ```
/// use tensorwire::recv::FileSink;
/// # fn main() -> Result<(), tensorwire::Error> {
/// # let dir = std::env::temp_dir().join(format!("tw-doc-sink-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// let dest = dir.join("out.bin");
/// let sink = FileSink::create(&dest)?;
/// sink.write_at(3, b"def")?;
/// sink.write_at(0, b"abc")?;
/// sink.commit(6, false)?;
/// assert_eq!(std::fs::read(&dest)?, b"abcdef");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FileSink {
    dest: PathBuf,
    part: PathBuf,
    file: Option<File>,
}

impl FileSink {
    /// Creates (or truncates) `<dest>.part`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be created.
    pub fn create(dest: impl AsRef<Path>) -> Result<Self, Error> {
        let dest = dest.as_ref().to_path_buf();
        let mut part = dest.clone().into_os_string();
        part.push(".part");
        let part = PathBuf::from(part);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&part)?;
        Ok(FileSink { dest, part, file: Some(file) })
    }

    /// Opens an existing `<dest>.part` to continue writing it (a resumed
    /// transfer whose ledger vouches for it), creating it if missing.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be opened.
    pub fn open_existing(dest: impl AsRef<Path>) -> Result<Self, Error> {
        let dest = dest.as_ref().to_path_buf();
        let mut part = dest.clone().into_os_string();
        part.push(".part");
        let part = PathBuf::from(part);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&part)?;
        Ok(FileSink { dest, part, file: Some(file) })
    }

    /// Makes what was written so far durable (`fdatasync`). Blocking.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from the sync.
    pub fn sync_data(&self) -> Result<(), Error> {
        Ok(self.file()?.sync_data()?)
    }

    /// The final path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// The temporary path written to.
    pub fn part_path(&self) -> &Path {
        &self.part
    }

    /// Writes `data` at `offset`. Blocking: call it from a blocking context
    /// (`tokio::task::spawn_blocking`) in async code.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from the write.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        Ok(self.file()?.write_all_at(data, offset)?)
    }

    /// Appends the whole of the file at `src` at `offset` (a kernel-side
    /// copy where the platform has one). Blocking.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from reading or writing.
    pub fn copy_from(&self, src: &Path, offset: u64) -> Result<(), Error> {
        use std::io::{Seek, SeekFrom};
        let mut from = File::open(src)?;
        let mut to = self.file()?;
        to.seek(SeekFrom::Start(offset))?;
        std::io::copy(&mut from, &mut to)?;
        Ok(())
    }

    fn file(&self) -> io::Result<&File> {
        self.file.as_ref().ok_or_else(|| io::Error::other("sink already committed"))
    }

    /// Finishes the file: checks it is `len` bytes, validates it as
    /// safetensors if `safetensors`, syncs it, renames it over `dest`, and
    /// syncs the directory.
    ///
    /// # Errors
    ///
    /// [`Error::Io`], or [`Error::Safetensors`] when the file is not a valid
    /// safetensors file; the `.part` file is removed and `dest` untouched.
    pub fn commit(mut self, len: u64, safetensors: bool) -> Result<(), Error> {
        let file = self.file()?;
        // A file-mode object with no chunk past some point leaves a short file.
        file.set_len(len)?;
        if safetensors {
            validate_safetensors(file)?;
        }
        file.sync_all()?;
        std::fs::rename(&self.part, &self.dest)?;
        self.file = None;
        if let Some(dir) = self.dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Persist the rename itself; not every filesystem allows this.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

/// Checks that `file` holds a valid safetensors file: its header parses, its
/// tensors' offsets are contiguous and match their dtypes and shapes, and the
/// data ends exactly at the end of the file. Only the header is read; it is
/// returned.
///
/// # Errors
///
/// [`Error::Safetensors`] for an invalid file, [`Error::Io`] for a read error.
pub fn validate_safetensors(file: &File) -> Result<safetensors::tensor::Metadata, Error> {
    use safetensors::SafeTensorError;
    const MAX_HEADER: u64 = 100_000_000; // the safetensors crate's limit
    let len = file.metadata()?.len();
    let mut n = [0u8; 8];
    if len < 8 {
        return Err(SafeTensorError::HeaderTooSmall.into());
    }
    file.read_exact_at(&mut n, 0)?;
    let n = u64::from_le_bytes(n);
    // Checked before allocating room for the header.
    if n > MAX_HEADER || n > len - 8 {
        return Err(SafeTensorError::InvalidHeaderLength.into());
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact_at(&mut header, 8)?;
    let header = std::str::from_utf8(&header).map_err(SafeTensorError::InvalidHeader)?;
    // Deserializing Metadata runs the crate's own validation of the offsets.
    let meta: safetensors::tensor::Metadata =
        serde_json::from_str(header).map_err(SafeTensorError::InvalidHeaderDeserialization)?;
    if 8 + n + meta.data_len() as u64 != len {
        return Err(SafeTensorError::MetadataIncompleteBuffer.into());
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tw-sink-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).ok();
        d
    }

    #[test]
    fn dropped_sink_leaves_destination_untouched() -> Result<(), Error> {
        let dest = dir("drop").join("model.bin");
        std::fs::write(&dest, b"old")?;
        let sink = FileSink::create(&dest)?;
        sink.write_at(0, b"new data")?;
        let part = sink.part_path().to_path_buf();
        drop(sink);
        assert_eq!(std::fs::read(&dest)?, b"old");
        assert!(!part.exists());
        Ok(())
    }

    #[test]
    fn invalid_safetensors_is_not_committed() -> Result<(), Error> {
        let dest = dir("bad").join("model.safetensors");
        let sink = FileSink::create(&dest)?;
        let part = sink.part_path().to_path_buf();
        let junk = b"\x10\0\0\0\0\0\0\0{\"a\":1}        ";
        sink.write_at(0, junk)?;
        let r = sink.commit(junk.len() as u64, true);
        assert!(matches!(r, Err(Error::Safetensors(_))), "{r:?}");
        assert!(!dest.exists() && !part.exists());
        Ok(())
    }

    #[test]
    fn valid_safetensors_is_committed() -> Result<(), Error> {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &[0u8; 8])?;
        let bytes = safetensors::serialize([("w", view)], None)?;
        let dest = dir("good").join("model.safetensors");
        let sink = FileSink::create(&dest)?;
        sink.write_at(0, &bytes)?;
        sink.commit(bytes.len() as u64, true)?;
        assert_eq!(std::fs::read(&dest)?, bytes);
        Ok(())
    }

    #[test]
    fn safetensors_with_trailing_bytes_is_rejected() -> Result<(), Error> {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &[0u8; 8])?;
        let mut bytes = safetensors::serialize([("w", view)], None)?;
        bytes.push(0);
        let dest = dir("trail").join("model.safetensors");
        let sink = FileSink::create(&dest)?;
        sink.write_at(0, &bytes)?;
        assert!(sink.commit(bytes.len() as u64, true).is_err());
        assert!(!dest.exists());
        Ok(())
    }
}

//! [`FileSink`]: writes an object's bytes into `<dest>.part` at their
//! offsets and moves the file into place only when it is complete.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags};

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
    target: Target,
    guard: Option<Guard>,
}

/// Something dropped with the sink (see [`FileSink::holding`]).
struct Guard(#[allow(dead_code)] Box<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Guard")
    }
}

/// How the finished file is moved into place.
#[derive(Debug)]
enum Target {
    /// `rename(part, dest)` by path (the client's own files).
    Path,
    /// `renameat(dir, temp, dir, name)` inside a directory opened once: no
    /// path a peer controls is resolved again at commit (server uploads).
    Dir { dir: File, temp: OsString, name: OsString },
}

/// The name prefix of [`FileSink::create_in`]'s temporary files: a server
/// never serves, accepts pushes to, or keeps (across restarts) a name with it.
pub const UPLOAD_PREFIX: &str = ".tensorwire-upload-";

impl FileSink {
    /// Creates `<dest>.part`, new (`O_EXCL | O_NOFOLLOW`): a `.part` file
    /// that is already there (another program's, or a link planted there)
    /// is neither truncated nor removed; this sink then writes
    /// `<dest>.part.<pid>-<n>` instead.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be created.
    pub fn create(dest: impl AsRef<Path>) -> Result<Self, Error> {
        use std::os::unix::fs::OpenOptionsExt;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dest = dest.as_ref().to_path_buf();
        let mut base = dest.clone().into_os_string();
        base.push(".part");
        for attempt in 0..64 {
            let mut part = base.clone();
            if attempt > 0 {
                part.push(format!(".{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
            }
            let part = PathBuf::from(part);
            let opened = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .custom_flags(OFlags::NOFOLLOW.bits() as i32)
                .open(&part);
            match opened {
                Ok(file) => return Ok(FileSink { dest, part, file: Some(file), target: Target::Path, guard: None }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free name for the .part file").into())
    }

    /// Creates a temporary file of its own in the open directory `dir`, to
    /// become `dir/name` on [`FileSink::commit`]: for a server receiving an
    /// upload. The temporary name is unique ([`UPLOAD_PREFIX`], the process
    /// id and a counter) and the file is created with `O_EXCL | O_NOFOLLOW`,
    /// so it is never a file that exists already, never reached through a
    /// symbolic link, and never shared with another upload. The commit
    /// renames that file, relative to `dir`, over `name` (`renameat`): two
    /// uploads to one name each store a whole file and the later one wins.
    /// `shown_as` is the destination's path for messages.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be created.
    pub fn create_in(dir: File, name: &OsStr, shown_as: PathBuf) -> Result<Self, Error> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        for _ in 0..64 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let temp = OsString::from(format!("{UPLOAD_PREFIX}{}-{n}", std::process::id()));
            match rustix::fs::openat(&dir, temp.as_os_str(), flags, Mode::from_raw_mode(0o644)) {
                Ok(fd) => {
                    let part = shown_as.with_file_name(&temp);
                    let target = Target::Dir { dir, temp, name: name.to_os_string() };
                    return Ok(FileSink { dest: shown_as, part, file: Some(File::from(fd)), target, guard: None });
                }
                // Left over by another process with our pid (a restart): try the next.
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
        Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary upload name").into())
    }

    /// Keeps `guard` alive as long as the sink (a server's place in its
    /// limit of open files, say).
    pub fn holding(mut self, guard: impl std::any::Any + Send + Sync) -> Self {
        self.guard = Some(Guard(Box::new(guard)));
        self
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
        Ok(FileSink { dest, part, file: Some(file), target: Target::Path, guard: None })
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
        match &self.target {
            Target::Path => {
                std::fs::rename(&self.part, &self.dest)?;
                self.file = None;
                if let Some(dir) = self.dest.parent().filter(|d| !d.as_os_str().is_empty()) {
                    // Persist the rename itself; not every filesystem allows this.
                    let _ = File::open(dir).and_then(|d| d.sync_all());
                }
            }
            Target::Dir { dir, temp, name } => {
                // The file validated above is the one named `temp` in `dir`:
                // this process created it (O_EXCL) and no request can reach it.
                rustix::fs::renameat(dir, temp.as_os_str(), dir, name.as_os_str()).map_err(io::Error::from)?;
                self.file = None;
                let _ = rustix::fs::fsync(dir);
            }
        }
        Ok(())
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            match &self.target {
                Target::Path => {
                    let _ = std::fs::remove_file(&self.part);
                }
                Target::Dir { dir, temp, .. } => {
                    let _ = rustix::fs::unlinkat(dir, temp.as_os_str(), AtFlags::empty());
                }
            }
        }
    }
}

/// `<dest>.part`: where [`FileSink::create`] writes first.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut part = dest.as_os_str().to_os_string();
    part.push(".part");
    part.into()
}

/// Removes the temporary files of uploads ([`UPLOAD_PREFIX`]) left under
/// `root` by a server that crashed or was killed, without following symbolic
/// links; returns how many were removed. Only for a root no running server
/// is receiving into.
///
/// # Errors
///
/// [`Error::Io`] when `root` cannot be read (unreadable subdirectories are
/// skipped).
pub fn remove_stale_uploads(root: &Path) -> Result<u64, Error> {
    const MAX_DEPTH: usize = 64;
    let mut removed = 0;
    let mut dirs = vec![(root.to_path_buf(), 0usize)];
    let mut first = true;
    while let Some((dir, depth)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if first => return Err(e.into()),
            Err(_) => continue,
        };
        first = false;
        for entry in entries.flatten() {
            // The entry's own type: a symbolic link is never followed.
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() && depth < MAX_DEPTH {
                dirs.push((entry.path(), depth + 1));
            } else if !kind.is_dir() && entry.file_name().as_bytes().starts_with(UPLOAD_PREFIX.as_bytes()) {
                removed += u64::from(std::fs::remove_file(entry.path()).is_ok());
            }
        }
    }
    Ok(removed)
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
    parse_safetensors_header(&header, len)
}

/// Parses the JSON header (`json`, the bytes after the 8-byte length) of a
/// safetensors object of `size` bytes and checks that its data region fills
/// the rest of the object exactly. Deserializing `Metadata` runs the
/// `safetensors` crate's own validation of the offsets (contiguous from 0,
/// sizes matching dtype and shape). Shared by [`validate_safetensors`] and
/// the object store's header probe, which has only the object's first bytes.
pub(crate) fn parse_safetensors_header(json: &[u8], size: u64) -> Result<safetensors::tensor::Metadata, Error> {
    use safetensors::SafeTensorError;
    let header = std::str::from_utf8(json).map_err(SafeTensorError::InvalidHeader)?;
    let meta: safetensors::tensor::Metadata =
        serde_json::from_str(header).map_err(SafeTensorError::InvalidHeaderDeserialization)?;
    if 8 + json.len() as u64 + meta.data_len() as u64 != size {
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

    fn open_dir(d: &Path) -> File {
        File::open(d).expect("open dir")
    }

    #[test]
    fn uploads_in_one_dir_never_share_a_file() -> Result<(), Error> {
        let d = dir("uploads");
        let a = FileSink::create_in(open_dir(&d), OsStr::new("m.bin"), d.join("m.bin"))?;
        let b = FileSink::create_in(open_dir(&d), OsStr::new("m.bin"), d.join("m.bin"))?;
        assert_ne!(a.part_path(), b.part_path());
        a.write_at(0, b"aaaa")?;
        b.write_at(0, b"bb")?;
        a.commit(4, false)?;
        assert_eq!(std::fs::read(d.join("m.bin"))?, b"aaaa");
        b.commit(2, false)?;
        assert_eq!(std::fs::read(d.join("m.bin"))?, b"bb");
        let left: Vec<_> = std::fs::read_dir(&d)?.flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![OsString::from("m.bin")], "temporary files left behind");
        Ok(())
    }

    #[test]
    fn upload_commit_renames_the_validated_file_not_the_path() -> Result<(), Error> {
        let d = dir("byfile");
        let sink = FileSink::create_in(open_dir(&d), OsStr::new("m.bin"), d.join("m.bin"))?;
        sink.write_at(0, b"good")?;
        // Someone plants other bytes at the old-style `.part` path meanwhile.
        std::fs::write(d.join("m.bin.part"), b"evil")?;
        sink.commit(4, false)?;
        assert_eq!(std::fs::read(d.join("m.bin"))?, b"good");
        Ok(())
    }

    #[test]
    fn upload_temp_files_are_created_exclusively() -> Result<(), Error> {
        let d = dir("excl");
        let sink = FileSink::create_in(open_dir(&d), OsStr::new("x"), d.join("x"))?;
        let part = sink.part_path().to_path_buf();
        drop(sink);
        assert!(!part.exists(), "a dropped upload leaves its temporary file");
        // A symbolic link planted at the next temporary name is not followed:
        // creation moves on to another name.
        let outside = dir("excl-outside").join("victim");
        std::fs::write(&outside, b"keep")?;
        let n: u64 = part.to_string_lossy().rsplit('-').next().and_then(|n| n.parse().ok()).expect("counter");
        for k in 1..4 {
            let _ = std::os::unix::fs::symlink(
                &outside,
                d.join(format!("{UPLOAD_PREFIX}{}-{}", std::process::id(), n + k)),
            );
        }
        let sink = FileSink::create_in(open_dir(&d), OsStr::new("x"), d.join("x"))?;
        sink.write_at(0, b"new")?;
        sink.commit(3, false)?;
        assert_eq!(std::fs::read(&outside)?, b"keep");
        Ok(())
    }

    #[test]
    fn stale_uploads_are_removed_and_nothing_else() -> Result<(), Error> {
        let d = dir("stale");
        std::fs::create_dir_all(d.join("sub"))?;
        std::fs::write(d.join(format!("{UPLOAD_PREFIX}1-1")), b"x")?;
        std::fs::write(d.join(format!("sub/{UPLOAD_PREFIX}2-9")), b"x")?;
        std::fs::write(d.join("keep.bin"), b"x")?;
        std::fs::write(d.join("keep.bin.part"), b"x")?;
        assert_eq!(remove_stale_uploads(&d)?, 2);
        let mut left: Vec<_> = std::fs::read_dir(&d)?.flatten().map(|e| e.file_name()).collect();
        left.sort();
        assert_eq!(left, ["keep.bin", "keep.bin.part", "sub"].map(OsString::from));
        Ok(())
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

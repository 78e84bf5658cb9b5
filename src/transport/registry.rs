//! [`Registry`]: which files a server may serve, and where pushes go.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::{Access, FrameStream, Peer, Source};
use crate::recv::{FileSink, ObjectRetriever, UPLOAD_PREFIX};
use crate::tensor::TensorMap;
use crate::Error;

/// Produces the current version of an in-memory container each time it is
/// requested (an FL controller swaps its global model between rounds).
pub type ContainerSource = Arc<dyn Fn() -> Arc<TensorMap> + Send + Sync>;

/// Receives a pushed container object (SPEC.md §8.3): called with the
/// object's name, the [`Peer`] that pushes it (its verified identity, over
/// mutual TLS) and its tensors as a stream, as they arrive. It runs only
/// after the registry's push rules allowed the push (SPEC.md §8.9). The
/// push is answered `201` when the handler returns `Ok`, and fails
/// otherwise.
pub type PushHandler =
    Arc<dyn Fn(String, Peer, ObjectRetriever<FrameStream>) -> BoxFuture<'static, Result<(), Error>> + Send + Sync>;

/// The objects a [`Server`](super::Server) may serve: files registered by
/// name, and/or every regular file under one root directory. Nothing else:
/// a name with `..` or empty segments, an absolute path, a backslash, a NUL,
/// an encoded separator (`%2F`, `%5C`), or a path that resolves — through
/// symbolic links too — outside the root is refused before anything is
/// opened (SPEC.md §8.5).
///
/// Who may pull and push is set with [`Registry::allow_get`] (default:
/// anyone) and [`Registry::allow_push`] (default: nobody — a registry is
/// read-only until pushes are allowed), checked against each request's
/// [`Peer`] before anything is read or written (SPEC.md §8.9).
///
/// ```
/// use tensorwire::transport::Registry;
/// let registry = Registry::new().with_file("model", "/srv/models/llama.safetensors");
/// assert!(registry.decode_name("/objects/..%2Fetc%2Fpasswd").is_err());
/// assert_eq!(registry.decode_name("/objects/model").ok().as_deref(), Some("model"));
/// ```
#[derive(Clone)]
pub struct Registry {
    root: Option<PathBuf>,
    /// The root directory, opened once: uploads are created and committed
    /// relative to it, never through a path resolved again.
    root_dir: Option<Arc<File>>,
    files: HashMap<String, PathBuf>,
    containers: HashMap<String, ContainerSource>,
    push_handler: Option<PushHandler>,
    source: Option<Arc<dyn Source>>,
    push: Access,
    get: Access,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            root: None,
            root_dir: None,
            files: HashMap::new(),
            containers: HashMap::new(),
            push_handler: None,
            source: None,
            push: Access::Nobody,
            get: Access::Anyone,
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("root", &self.root)
            .field("files", &self.files)
            .field("containers", &self.containers.keys().collect::<Vec<_>>())
            .field("push_handler", &self.push_handler.is_some())
            .field("source", &self.source)
            .field("push", &self.push)
            .field("get", &self.get)
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves every regular file under `dir`; pushes into it are refused
    /// until [`Registry::allow_push`] allows them.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when `dir` does not exist or is not a directory.
    pub fn root(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let root = dir.as_ref().canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::new(std::io::ErrorKind::NotADirectory, "root is not a directory").into());
        }
        let root_dir = File::open(&root)?;
        Ok(Registry { root: Some(root), root_dir: Some(Arc::new(root_dir)), ..Registry::default() })
    }

    /// Removes the temporary files that uploads interrupted by a crash or a
    /// kill left under the root (a [`Server`](super::Server) does this when
    /// it binds); returns how many. Call it only when no other process is
    /// receiving uploads into the same root.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the root cannot be read.
    pub fn remove_stale_uploads(&self) -> Result<u64, Error> {
        match &self.root {
            Some(root) if !matches!(self.push, Access::Nobody) => crate::recv::remove_stale_uploads(root),
            _ => Ok(0),
        }
    }

    /// Registers one file under `name`.
    pub fn with_file(mut self, name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        self.files.insert(name.into(), path.into());
        self
    }

    /// Serves an in-memory container under `name` (in container mode).
    pub fn with_container(self, name: impl Into<String>, model: Arc<TensorMap>) -> Self {
        self.with_container_source(name, Arc::new(move || Arc::clone(&model)))
    }

    /// Serves whatever `source` returns when `name` is requested.
    pub fn with_container_source(mut self, name: impl Into<String>, source: ContainerSource) -> Self {
        self.containers.insert(name.into(), source);
        self
    }

    /// Hands pushed objects to `handler` instead of writing them under the
    /// root: a controller receives the tensors of each update as a stream.
    /// Pushes still need [`Registry::allow_push`].
    pub fn with_push_handler(mut self, handler: PushHandler) -> Self {
        self.push_handler = Some(handler);
        self
    }

    /// Serves every object from `source` (an object store, say) and stores
    /// pushes there, instead of under a root directory; the access rules
    /// still decide who may pull and push.
    pub fn with_source(mut self, source: Arc<dyn Source>) -> Self {
        self.source = Some(source);
        self
    }

    /// The source set with [`Registry::with_source`].
    pub fn source(&self) -> Option<&Arc<dyn Source>> {
        self.source.as_ref()
    }

    /// The in-memory container called `name`, if any.
    pub fn container(&self, name: &str) -> Option<Arc<TensorMap>> {
        self.containers.get(name).map(|source| source())
    }

    /// The push handler, if any.
    pub(crate) fn push_handler(&self) -> Option<&PushHandler> {
        self.push_handler.as_ref()
    }

    /// `true`: anyone may push ([`Access::Anyone`]); `false`: nobody.
    pub fn accept_pushes(self, yes: bool) -> Self {
        self.allow_push(if yes { Access::Anyone } else { Access::Nobody })
    }

    /// Who may push (default [`Access::Nobody`]).
    pub fn allow_push(mut self, access: Access) -> Self {
        self.push = access;
        self
    }

    /// Who may pull (default [`Access::Anyone`]).
    pub fn allow_get(mut self, access: Access) -> Self {
        self.get = access;
        self
    }

    /// Who may push.
    pub fn push_access(&self) -> &Access {
        &self.push
    }

    /// Who may pull.
    pub fn get_access(&self) -> &Access {
        &self.get
    }

    /// Checks that `peer` may push object `name` (SPEC.md §8.9).
    ///
    /// # Errors
    ///
    /// [`Error::Forbidden`] when no push rule allows it.
    pub fn authorize_push(&self, peer: &Peer, name: &str) -> Result<(), Error> {
        authorize(&self.push, "push", peer, name)
    }

    /// Checks that `peer` may pull object `name` (SPEC.md §8.9).
    ///
    /// # Errors
    ///
    /// [`Error::Forbidden`] when no pull rule allows it.
    pub fn authorize_get(&self, peer: &Peer, name: &str) -> Result<(), Error> {
        authorize(&self.get, "pull", peer, name)
    }

    /// Takes an object name out of a request path (`/objects/{name}`,
    /// without the query), percent-decoded and checked.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] for anything that is not a plain relative name.
    pub fn decode_name(&self, path: &str) -> Result<String, Error> {
        let bad = |reason| Err(Error::InvalidName { name: crate::wire::meta_truncate(path), reason });
        let Some(raw) = path.strip_prefix(super::OBJECTS_PATH) else {
            return bad("not under /objects/");
        };
        let lower = raw.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%00") {
            return bad("encoded separator or NUL");
        }
        let Ok(name) = percent_encoding::percent_decode_str(raw).decode_utf8() else {
            return bad("not UTF-8");
        };
        if name.is_empty() || name.starts_with('/') || name.contains('\\') || name.contains('\0') {
            return bad("empty, absolute, or with a backslash");
        }
        if name.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
            return bad("empty, '.' or '..' segment");
        }
        Ok(name.into_owned())
    }

    /// The file to serve for `name`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when it is not registered, does not exist, is not
    /// a regular file, or resolves outside the root.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, Error> {
        let not_found = || Error::NotFound { name: name.to_string() };
        if let Some(path) = self.files.get(name) {
            return Ok(path.clone());
        }
        let root = self.root.as_ref().ok_or_else(not_found)?;
        // In-progress files are never served: uploads' temporary files, and
        // `.part` files a client may be downloading into.
        if is_reserved(name) {
            return Err(not_found());
        }
        let path = checked_join(root, name).ok_or_else(not_found)?;
        // Resolves symbolic links; the result must still be under the root.
        let real = path.canonicalize().map_err(|_| not_found())?;
        if !real.starts_with(root) || !real.is_file() {
            return Err(not_found());
        }
        Ok(real)
    }

    /// Starts an upload of `name`: opens its directory below the root one
    /// component at a time without following symbolic links, and creates a
    /// temporary file of its own there ([`FileSink::create_in`]), which the
    /// commit renames over `name` relative to that directory. Blocking.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] when pushes are not accepted, the name is
    /// reserved (an upload's temporary file or a `.part` file), a directory
    /// on the way is a symbolic link, or the target is a symbolic link or a
    /// directory; [`Error::NotFound`] when a directory does not exist;
    /// [`Error::Io`] when the file cannot be created.
    pub fn create_upload(&self, name: &str) -> Result<FileSink, Error> {
        let refuse = |reason| Error::InvalidName { name: crate::wire::meta_truncate(name), reason };
        let (Some(root), Some(root_dir), false) = (&self.root, &self.root_dir, matches!(self.push, Access::Nobody))
        else {
            return Err(refuse("pushes are not accepted"));
        };
        // SPEC.md §8.3: pushes never write into an in-progress file.
        if is_reserved(name) {
            return Err(refuse("reserved for files in progress"));
        }
        let shown_as = checked_join(root, name).ok_or_else(|| refuse("not a plain relative name"))?;
        let rel = Path::new(name);
        let file_name = rel.file_name().ok_or_else(|| refuse("no file name"))?;
        let mut dir = root_dir.try_clone()?;
        for seg in rel.parent().into_iter().flat_map(Path::components) {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            dir = match rustix::fs::openat(&dir, seg.as_os_str(), flags, Mode::empty()) {
                Ok(fd) => File::from(fd),
                Err(rustix::io::Errno::NOENT) => return Err(Error::NotFound { name: name.to_string() }),
                // SPEC.md §8.5: nothing outside the root, not even through a link.
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                    return Err(refuse("a directory on the way is a symbolic link or not a directory"))
                }
                Err(e) => return Err(std::io::Error::from(e).into()),
            };
        }
        match rustix::fs::statat(&dir, file_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if matches!(FileType::from_raw_mode(st.st_mode), FileType::Symlink | FileType::Directory) => {
                return Err(refuse("target is a symbolic link or a directory"))
            }
            _ => {}
        }
        FileSink::create_in(dir, file_name, shown_as)
    }
}

/// One object of a listing (`GET /objects`, SPEC.md §8.8).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    /// The object's name.
    pub name: String,
    /// Its length in bytes (a container's: its tensors' bytes).
    pub bytes: u64,
    /// Last modification, seconds since the Unix epoch (files only).
    pub modified: Option<u64>,
    /// Tensors, for safetensors files and containers.
    pub tensors: Option<u64>,
}

/// The most objects a listing holds: a bound on the work one request causes.
pub const MAX_LISTED: usize = 10_000;

impl Registry {
    /// The objects served: registered files, every regular file under the
    /// root (symbolic links and hidden names are not followed or listed),
    /// and containers — at most [`MAX_LISTED`], sorted by name. Reads each
    /// safetensors file's header only. Blocking.
    pub fn list(&self) -> Vec<Listed> {
        let mut out: Vec<Listed> = Vec::new();
        for (name, path) in &self.files {
            if let Some(l) = listed_file(name.clone(), path) {
                out.push(l);
            }
        }
        if let Some(root) = &self.root {
            let mut dirs = vec![(root.clone(), String::new())];
            while let Some((dir, prefix)) = dirs.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else { continue };
                for entry in entries.flatten() {
                    if out.len() >= MAX_LISTED {
                        break;
                    }
                    let Some(file) = entry.file_name().to_str().map(str::to_string) else { continue };
                    if file.starts_with('.') || file.ends_with(".part") {
                        continue;
                    }
                    let Ok(kind) = entry.file_type() else { continue };
                    let name = format!("{prefix}{file}");
                    if is_reserved(&name) {
                        continue;
                    }
                    if kind.is_dir() {
                        dirs.push((entry.path(), format!("{name}/")));
                    } else if kind.is_file() {
                        out.extend(listed_file(name, &entry.path()));
                    }
                }
            }
        }
        for (name, source) in &self.containers {
            let model = source();
            let bytes = model.values().map(|t| t.data().len() as u64).sum();
            out.push(Listed { name: name.clone(), bytes, modified: None, tensors: Some(model.len() as u64) });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.truncate(MAX_LISTED);
        out
    }
}

fn listed_file(name: String, path: &Path) -> Option<Listed> {
    let file = std::fs::File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs());
    let tensors = if name.ends_with(".safetensors") {
        crate::recv::validate_safetensors(&file).ok().map(|m| m.tensors().len() as u64)
    } else {
        None
    };
    Some(Listed { name, bytes: meta.len(), modified, tensors })
}

/// Names a server neither serves nor accepts pushes to: an upload's
/// temporary file (any segment), or a `.part` file.
fn is_reserved(name: &str) -> bool {
    name.ends_with(".part") || name.split('/').any(|seg| seg.starts_with(UPLOAD_PREFIX))
}

fn authorize(access: &Access, action: &'static str, peer: &Peer, name: &str) -> Result<(), Error> {
    if access.allows(peer, name) {
        return Ok(());
    }
    Err(Error::Forbidden { action, name: name.to_string(), peer: peer.to_string() })
}

/// `root/name` when every component of `name` is a normal one.
fn checked_join(root: &Path, name: &str) -> Option<PathBuf> {
    let rel = Path::new(name);
    rel.components().all(|c| matches!(c, Component::Normal(_))).then(|| root.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (PathBuf, Registry) {
        let dir = std::env::temp_dir().join(format!("tw-registry-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).expect("dir");
        std::fs::write(dir.join("sub/a.bin"), b"a").expect("file");
        let outside = std::env::temp_dir().join(format!("tw-registry-outside-{}", std::process::id()));
        std::fs::write(&outside, b"secret").expect("file");
        let _ = std::os::unix::fs::symlink(&outside, dir.join("escape"));
        let _ = std::os::unix::fs::symlink("/", dir.join("rootlink"));
        (dir.clone(), Registry::root(&dir).expect("root").accept_pushes(true))
    }

    #[test]
    fn serves_files_under_root() {
        let (_, r) = root();
        let name = r.decode_name("/objects/sub/a.bin").expect("name");
        assert!(r.resolve(&name).expect("resolve").ends_with("sub/a.bin"));
    }

    #[test]
    fn refuses_traversal_and_encoded_separators() {
        let (_, r) = root();
        for path in [
            "/objects/../etc/passwd",
            "/objects/sub/../../x",
            "/objects/%2E%2E/etc/passwd",
            "/objects/..%2Fetc",
            "/objects/sub%2fa.bin",
            "/objects/sub%5Ca.bin",
            "/objects//etc/passwd",
            "/objects/%2Fetc%2Fpasswd",
            "/objects/a\\b",
            "/objects/a%00b",
            "/objects/",
            "/objects/./a",
            "/other/a",
        ] {
            assert!(matches!(r.decode_name(path), Err(Error::InvalidName { .. })), "{path} was accepted");
        }
    }

    #[test]
    fn refuses_symlinks_out_of_root() {
        let (_, r) = root();
        assert!(matches!(r.resolve("escape"), Err(Error::NotFound { .. })));
        assert!(matches!(r.resolve("rootlink/etc/passwd"), Err(Error::NotFound { .. })));
        assert!(matches!(r.create_upload("rootlink/tmp/x"), Err(Error::InvalidName { .. })));
        assert!(matches!(r.create_upload("escape"), Err(Error::InvalidName { .. })));
    }

    #[test]
    fn refuses_directories_and_missing_files() {
        let (_, r) = root();
        assert!(matches!(r.resolve("sub"), Err(Error::NotFound { .. })));
        assert!(matches!(r.resolve("nope"), Err(Error::NotFound { .. })));
    }

    #[test]
    fn pushes_go_under_root_only_when_accepted() {
        let (dir, r) = root();
        let sink = r.create_upload("sub/new.bin").expect("writable");
        assert!(sink.dest().starts_with(dir.canonicalize().expect("canon")));
        assert!(sink.part_path().starts_with(dir.canonicalize().expect("canon").join("sub")));
        drop(sink);
        assert!(r.clone().accept_pushes(false).create_upload("sub/new.bin").is_err());
        assert!(Registry::new().create_upload("x").is_err());
    }

    #[test]
    fn in_progress_files_are_neither_served_nor_written() {
        let (dir, r) = root();
        std::fs::write(dir.join("sub/b.bin.part"), b"partial").expect("file");
        let temp = format!("{UPLOAD_PREFIX}1-1");
        std::fs::write(dir.join(&temp), b"partial").expect("file");
        assert!(matches!(r.resolve("sub/b.bin.part"), Err(Error::NotFound { .. })));
        assert!(matches!(r.resolve(&temp), Err(Error::NotFound { .. })));
        assert!(matches!(r.create_upload("sub/b.bin.part"), Err(Error::InvalidName { .. })));
        assert!(matches!(r.create_upload(&temp), Err(Error::InvalidName { .. })));
    }

    #[test]
    fn root_is_read_only_by_default() {
        let (dir, _) = root();
        let r = Registry::root(&dir).expect("root");
        assert!(r.create_upload("sub/new.bin").is_err());
        let err = r.authorize_push(&Peer::anonymous(None), "sub/new.bin").expect_err("refused");
        assert!(matches!(err, Error::Forbidden { action: "push", .. }), "{err}");
        assert!(r.authorize_get(&Peer::anonymous(None), "sub/a.bin").is_ok());
    }

    #[test]
    fn push_and_get_rules_use_the_verified_identity() {
        use crate::transport::Identity;
        let (dir, _) = root();
        let r = Registry::root(&dir)
            .expect("root")
            .allow_push(Access::only(["site-*=updates/"]).expect("rule"))
            .allow_get(Access::only(["site-*", "controller"]).expect("rule"));
        let site = Peer::verified(None, Identity::new(Some("site-2".into()), vec![]));
        let stranger = Peer::verified(None, Identity::new(Some("mallory".into()), vec![]));
        assert!(r.authorize_push(&site, "updates/site-2.safetensors").is_ok());
        assert!(r.authorize_push(&site, "global.safetensors").is_err());
        assert!(r.authorize_push(&stranger, "updates/x").is_err());
        assert!(r.authorize_get(&site, "global.safetensors").is_ok());
        let err = r.authorize_get(&Peer::anonymous(None), "global.safetensors").expect_err("refused");
        assert!(err.to_string().contains("may not pull"), "{err}");
    }
}

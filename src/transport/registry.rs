//! [`Registry`]: which files a server may serve, and where pushes go.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;

use super::{Access, FrameStream, Peer};
use crate::recv::ObjectRetriever;
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
    files: HashMap<String, PathBuf>,
    containers: HashMap<String, ContainerSource>,
    push_handler: Option<PushHandler>,
    push: Access,
    get: Access,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            root: None,
            files: HashMap::new(),
            containers: HashMap::new(),
            push_handler: None,
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
        Ok(Registry { root: Some(root), ..Registry::default() })
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
        let path = checked_join(root, name).ok_or_else(not_found)?;
        // Resolves symbolic links; the result must still be under the root.
        let real = path.canonicalize().map_err(|_| not_found())?;
        if !real.starts_with(root) || !real.is_file() {
            return Err(not_found());
        }
        Ok(real)
    }

    /// Where a push of `name` is written.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] when pushes are not accepted or the target
    /// would lie outside the root or is a symbolic link; [`Error::NotFound`]
    /// when its directory does not exist.
    pub fn resolve_for_write(&self, name: &str) -> Result<PathBuf, Error> {
        let refuse = |reason| Error::InvalidName { name: name.to_string(), reason };
        let root = self
            .root
            .as_ref()
            .filter(|_| !matches!(self.push, Access::Nobody))
            .ok_or_else(|| refuse("pushes are not accepted"))?;
        let path = checked_join(root, name).ok_or_else(|| refuse("not a plain relative name"))?;
        let parent = path.parent().ok_or_else(|| refuse("no parent directory"))?;
        let real_parent = parent.canonicalize().map_err(|_| Error::NotFound { name: name.to_string() })?;
        if !real_parent.starts_with(root) {
            return Err(refuse("outside the root"));
        }
        let file_name = path.file_name().ok_or_else(|| refuse("no file name"))?;
        let target = real_parent.join(file_name);
        if target.symlink_metadata().map(|m| m.file_type().is_symlink() || m.is_dir()).unwrap_or(false) {
            return Err(refuse("target is a symbolic link or a directory"));
        }
        Ok(target)
    }
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
        assert!(r.resolve_for_write("rootlink/tmp/x").is_err());
        assert!(r.resolve_for_write("escape").is_err());
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
        let target = r.resolve_for_write("sub/new.bin").expect("writable");
        assert!(target.starts_with(dir.canonicalize().expect("canon")));
        assert!(r.clone().accept_pushes(false).resolve_for_write("sub/new.bin").is_err());
        assert!(Registry::new().resolve_for_write("x").is_err());
    }

    #[test]
    fn root_is_read_only_by_default() {
        let (dir, _) = root();
        let r = Registry::root(&dir).expect("root");
        assert!(r.resolve_for_write("sub/new.bin").is_err());
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

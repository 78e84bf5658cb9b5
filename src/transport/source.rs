//! [`Source`]: objects a server holds somewhere other than its root
//! directory (an object store, say), served and stored through the same
//! request handling, access rules and bounds.

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use super::Transfer;
use crate::wire::{Frame, Mode, Scheme};
use crate::Error;

/// What a pull asks a source for, after the server parsed and authorized
/// it (SPEC.md §8.2, §8.9).
#[derive(Debug, Clone)]
pub struct SourcePull {
    /// The object's name (decoded and checked, SPEC.md §8.5).
    pub name: String,
    /// The mode asked for; `None` leaves the choice to the source.
    pub mode: Option<Mode>,
    /// Container mode: only these tensors, in this order.
    pub items: Option<Vec<String>>,
    /// Container mode: quantize float tensors with this scheme.
    pub quantize: Option<Scheme>,
    /// The chunk size to send.
    pub chunk: usize,
}

/// A pull's frames, produced lazily, and what the response headers say.
pub struct SourceFrames {
    /// The object's frames.
    pub frames: BoxStream<'static, Result<Frame, Error>>,
    /// The mode they are in.
    pub mode: Mode,
    /// Item data bytes, when known (`tensorwire-length`).
    pub len: Option<u64>,
    /// Items, when known (`tensorwire-items`).
    pub items: Option<u64>,
}

impl std::fmt::Debug for SourceFrames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceFrames").field("mode", &self.mode).field("len", &self.len).finish()
    }
}

/// Where a [`Registry`](super::Registry) finds and stores objects instead
/// of its root directory ([`Registry::with_source`](super::Registry::with_source)).
///
/// The server checks the request and the peer's rights first; the source
/// then produces frames that the server sends against flow control as it
/// sends a file's (so a source needs to hold only what it has read ahead),
/// or receives a push's frames as the server decodes and verifies them: a
/// source stores a push only once its object end arrived (the stream then
/// ends without error) and must leave nothing behind when the stream fails.
pub trait Source: Send + Sync + std::fmt::Debug + 'static {
    /// Opens `request.name` for a pull.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] (404), [`Error::ItemNotFound`], a mode the object
    /// cannot be sent in ([`Error::Protocol`], 400), or the source's own
    /// failures.
    fn pull(&self, request: SourcePull) -> BoxFuture<'static, Result<SourceFrames, Error>>;

    /// Stores a push of `name` from its verified frames.
    ///
    /// # Errors
    ///
    /// The first error of `frames`, or the source's own; nothing is then
    /// stored.
    fn push(
        &self,
        name: String,
        frames: BoxStream<'static, Result<Frame, Error>>,
    ) -> BoxFuture<'static, Result<Transfer, Error>>;
}

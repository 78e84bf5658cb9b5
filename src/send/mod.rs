//! What produces frames: the streamers.
//!
//! * [`FileStreamer`] — any file, memory-mapped and sent without copying.
//! * [`ContainerStreamer`] — a container of tensors, one tensor at a time.

mod container;
mod file;

pub use container::ContainerStreamer;
pub use file::{FileFrames, FileStreamer, FORMAT_KEY};

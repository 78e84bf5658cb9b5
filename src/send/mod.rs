//! What produces frames: the streamers.
//!
//! * [`FileStreamer`] — any file, memory-mapped and sent without copying.

mod file;

pub use file::{FileFrames, FileStreamer, FORMAT_KEY};

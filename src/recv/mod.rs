//! What consumes frames: reassembly and sinks.
//!
//! * [`Assembler`] — sans-IO: which byte ranges of which items have arrived,
//!   and where each chunk goes.
//! * [`FileSink`] — a `.part` file written at offsets, checked, synced and
//!   renamed into place only when the object is complete.
#![forbid(unsafe_code)]

mod assembler;
mod container_file;
mod file;
mod ledger;
mod ranges;
mod retriever;

pub use assembler::{Assembler, Event};
pub use container_file::ContainerFile;
pub use file::{remove_stale_uploads, validate_safetensors, FileSink, UPLOAD_PREFIX};
pub use ledger::{PartLedger, SourceId};
pub use ranges::RangeSet;
pub(crate) use retriever::safetensors_header;
pub use retriever::ObjectRetriever;

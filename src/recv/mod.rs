//! What consumes frames: reassembly and sinks.
//!
//! * [`Assembler`] — sans-IO: which byte ranges of which items have arrived,
//!   and where each chunk goes.
//! * [`Sink`] and [`Receive`] — the one path from frames to a result:
//!   every receiver (file, safetensors file, tensor stream, push handler)
//!   is a sink driven through the assembler.
//! * [`FileSink`] — a `.part` file written at offsets, checked, synced and
//!   renamed into place only when the object is complete.
#![forbid(unsafe_code)]

mod assembler;
mod container_file;
mod file;
mod file_writer;
mod ledger;
mod ranges;
mod retriever;
mod sink;

pub use assembler::{Assembler, Event};
#[cfg(feature = "store")]
pub(crate) use container_file::safetensors_header;
pub use container_file::{ContainerFile, SafetensorsWriter};
#[cfg(feature = "store")]
pub(crate) use file::parse_safetensors_header;
pub use file::{part_path, remove_stale_uploads, validate_safetensors, FileSink, UPLOAD_PREFIX};
pub use file_writer::FileWriter;
pub use ledger::{PartLedger, SourceId};
pub use ranges::RangeSet;
pub use retriever::ObjectRetriever;
pub use sink::{Progress, ProgressFn, Receive, Sink, MAX_DAMAGED_CHUNKS};

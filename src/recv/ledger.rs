//! [`PartLedger`]: the record beside `FILE.part` of which ranges a file
//! receiver verified, so that a receiver killed mid-transfer (SIGKILL, power
//! loss) resumes when run again.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::Error;

/// Written as the ledger's first field; a file without it was not written
/// by this tool and is never trusted.
const TOOL: &str = "tensorwire-part-ledger";
const VERSION: u32 = 1;
/// Most chunks a ledger may list; a longer one is not trusted (it is read
/// whole into memory).
const MAX_CHUNKS: usize = 1 << 20;

/// What a `.part` file holds, verified: the source's identity and every
/// chunk placed, with its CRC-32.
///
/// Crash-safe: [`PartLedger::save`] writes a temporary file, syncs it and
/// renames it over `FILE.part.ledger`, and callers sync the `.part` data
/// before saving a ledger that lists it, so a ledger never claims bytes the
/// disk does not hold. Only chunks are trusted, never the `.part` file on
/// its own; at the end each item's CRC is checked from the chunk CRCs
/// against the sender's, so a changed source is caught and refetched.
///
/// ```
/// use tensorwire::recv::{PartLedger, SourceId};
/// # fn main() -> Result<(), tensorwire::Error> {
/// # let dest = std::env::temp_dir().join(format!("tw-doc-ledger-{}.bin", std::process::id()));
/// let mut ledger = PartLedger::new(SourceId { request: "GET /objects/m".into(), header: None, items: vec![("m".into(), 8)] });
/// ledger.chunks.push((0, 0, 4, 0x1234_5678));
/// ledger.save(&dest)?;
/// assert_eq!(PartLedger::load(&dest).as_ref(), Some(&ledger));
/// PartLedger::remove(&dest);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartLedger {
    tool: String,
    version: u32,
    /// What the `.part` file is a part of.
    pub source: SourceId,
    /// Verified chunks: (item, offset, length, CRC-32).
    pub chunks: Vec<(u32, u64, u64, u32)>,
}

/// The identity of the object a `.part` file belongs to: the request that
/// fetched it, the CRC-32 of its object header (name, mode, sizes, index,
/// metadata such as a version), and each item's name and length as the
/// sender announced them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceId {
    /// The request (path and query) that fetched the object.
    pub request: String,
    /// CRC-32 of the encoded object header, once it arrived; a resumed
    /// transfer whose header differs has a changed source and starts over.
    #[serde(default)]
    pub header: Option<u32>,
    /// Per item: name and length.
    pub items: Vec<(String, u64)>,
}

impl PartLedger {
    /// An empty ledger for `source`.
    pub fn new(source: SourceId) -> Self {
        PartLedger { tool: TOOL.into(), version: VERSION, source, chunks: Vec::new() }
    }

    /// The ledger's path for destination `dest`: `<dest>.part.ledger`.
    pub fn path_for(dest: &Path) -> PathBuf {
        let mut p = dest.as_os_str().to_owned();
        p.push(".part.ledger");
        p.into()
    }

    /// Reads the ledger beside `dest`; `None` when there is none, or it is
    /// not one this tool wrote (wrong tool, version, or too long).
    pub fn load(dest: &Path) -> Option<Self> {
        let path = Self::path_for(dest);
        // Checked before reading: a ledger is small.
        let len = std::fs::metadata(&path).ok()?.len();
        if len > (MAX_CHUNKS as u64) * 64 {
            return None;
        }
        let ledger: PartLedger = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        (ledger.tool == TOOL && ledger.version == VERSION && ledger.chunks.len() <= MAX_CHUNKS).then_some(ledger)
    }

    /// Writes the ledger beside `dest`, atomically (temporary file, sync,
    /// rename, directory sync). Blocking.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from the files.
    pub fn save(&self, dest: &Path) -> Result<(), Error> {
        let path = Self::path_for(dest);
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let json = serde_json::to_vec(self).map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let mut f = File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }

    /// The ledger to go on with for `dest`: the one beside it when it was
    /// written for `request` (the caller continues the `.part` files it
    /// vouches for), else a fresh one, after removing a ledger written for
    /// another request and, since such a ledger proves them this tool's,
    /// the `parts` files beside it. Returns whether one was found. Blocking.
    pub fn continue_or_start(dest: &Path, request: String, parts: &[PathBuf]) -> (Self, bool) {
        let loaded = Self::load(dest);
        let ours = loaded.is_some();
        match loaded.filter(|l| l.source.request == request) {
            Some(l) => (l, true),
            None => {
                Self::remove(dest);
                if ours {
                    for part in parts {
                        let _ = std::fs::remove_file(part);
                    }
                }
                (PartLedger::new(SourceId { request, header: None, items: Vec::new() }), false)
            }
        }
    }

    /// Removes the ledger beside `dest`, if any.
    pub fn remove(dest: &Path) {
        let _ = std::fs::remove_file(Self::path_for(dest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tw-ledger-{}-{tag}.bin", std::process::id()))
    }

    #[test]
    fn ledger_of_another_tool_is_not_trusted() {
        let d = dest("other");
        std::fs::write(
            PartLedger::path_for(&d),
            br#"{"tool":"x","version":1,"source":{"request":"","items":[]},"chunks":[]}"#,
        )
        .expect("write");
        assert!(PartLedger::load(&d).is_none());
        PartLedger::remove(&d);
    }

    #[test]
    fn truncated_ledger_is_not_trusted() {
        let d = dest("trunc");
        std::fs::write(PartLedger::path_for(&d), br#"{"tool":"tensorwire-part-ledger","version":1,"sou"#)
            .expect("write");
        assert!(PartLedger::load(&d).is_none());
        PartLedger::remove(&d);
    }

    #[test]
    fn missing_ledger_is_none() {
        assert!(PartLedger::load(&dest("none")).is_none());
    }
}

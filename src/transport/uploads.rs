//! Interrupted pushes a server keeps for a while, so that the pusher can
//! resume them (SPEC.md §8.4, "Push resume"): the upload's temporary file
//! and the assembler's record of what it verified, under the pusher's
//! identity and the upload id it chose.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Peer;
use crate::recv::{FileWriter, Receive};

/// The request header naming a push's upload (SPEC.md §8.4).
pub(crate) const UPLOAD_HEADER: &str = "tensorwire-upload";

/// Most interrupted pushes kept at once; each also holds its place among
/// the server's open files (`Config::max_open_files`) and its temporary
/// file on disk, so that kept uploads count against the same bounds as
/// running ones. Past this, the one kept longest goes.
const MAX_KEPT: usize = 64;

/// Who may continue an upload: the TLS identity's names when the peer has
/// one, else its IP address.
pub(crate) fn owner(peer: &Peer) -> String {
    match (peer.identity(), peer.addr()) {
        (Some(id), _) => format!("id:{}", id.names().collect::<Vec<_>>().join(",")),
        (None, Some(addr)) => format!("ip:{}", addr.ip()),
        (None, None) => "anonymous".into(),
    }
}

/// Checks an upload id (SPEC.md §8.4): 16 to 64 characters of
/// `[0-9A-Za-z_-]`.
pub(crate) fn valid_id(id: &str) -> bool {
    (16..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The kept uploads of one server.
#[derive(Debug, Default)]
pub(crate) struct Uploads {
    kept: Mutex<HashMap<Key, Kept>>,
}

type Key = (String, String, String);

#[derive(Debug)]
struct Kept {
    recv: Receive<FileWriter>,
    until: Instant,
    since: Instant,
}

impl Uploads {
    /// Takes the upload `id` of object `name` that `owner` left, if it is
    /// still kept.
    pub(crate) fn take(&self, owner: &str, id: &str, name: &str) -> Option<Receive<FileWriter>> {
        let mut kept = self.lock();
        sweep(&mut kept);
        kept.remove(&(owner.to_string(), id.to_string(), name.to_string())).map(|k| k.recv)
    }

    /// What the upload still needs, in `tensorwire-resume` syntax, if kept.
    pub(crate) fn needs(&self, owner: &str, id: &str, name: &str) -> Option<String> {
        let mut kept = self.lock();
        sweep(&mut kept);
        let k = kept.get(&(owner.to_string(), id.to_string(), name.to_string()))?;
        let mut r = super::Resume::default();
        for (item, ranges) in k.recv.missing()? {
            r.need(item, ranges);
        }
        Some(r.to_header())
    }

    /// Keeps `recv` for `keep` (nothing when `keep` is zero or nothing was
    /// verified yet: the push then starts over).
    pub(crate) fn keep(&self, owner: String, id: String, name: String, recv: Receive<FileWriter>, keep: Duration) {
        if keep.is_zero() || recv.assembler().received() == 0 {
            return;
        }
        let mut kept = self.lock();
        sweep(&mut kept);
        if kept.len() >= MAX_KEPT {
            let oldest = kept.iter().min_by_key(|(_, k)| k.since).map(|(key, _)| key.clone());
            if let Some(key) = oldest {
                kept.remove(&key);
            }
        }
        let now = Instant::now();
        kept.insert((owner, id, name), Kept { recv, until: now + keep, since: now });
    }

    /// How many uploads are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Kept>> {
        // A panic while holding the lock leaves the map usable.
        self.kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Drops the uploads kept past their time (their temporary files go).
fn sweep(kept: &mut HashMap<Key, Kept>) {
    let now = Instant::now();
    kept.retain(|_, k| k.until > now);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("0123456789abcdef"));
        assert!(!valid_id("short"));
        assert!(!valid_id("0123456789abcdef/"));
        assert!(!valid_id(&"a".repeat(65)));
    }

    #[test]
    fn nothing_verified_is_not_kept() {
        let u = Uploads::default();
        let recv = Receive::new(FileWriter::opening(|| Err(crate::Error::Protocol("never opened"))));
        u.keep("ip:127.0.0.1".into(), "0123456789abcdef".into(), "m".into(), recv, Duration::from_secs(60));
        assert_eq!(u.len(), 0);
    }

    /// A push of 8 bytes of which the first 4 arrived.
    fn half_received(tag: &str) -> Receive<FileWriter> {
        use crate::wire::{ItemHeader, Mode, ObjectEncoder, ObjectHeader};
        let dest = std::env::temp_dir().join(format!("tw-uploads-{}-{tag}.bin", std::process::id()));
        let mut recv = Receive::new(FileWriter::new(crate::recv::FileSink::create(dest).expect("sink")));
        let mut enc = ObjectEncoder::new();
        recv.handle_frame(enc.object_header(ObjectHeader::new("m", Mode::File)).expect("header")).expect("header");
        recv.handle_frame(enc.item_header(ItemHeader::bytes(0, "m", 8)).expect("item")).expect("item");
        recv.handle_frame(enc.chunk(bytes::Bytes::from_static(b"abcd")).expect("chunk")).expect("chunk");
        recv
    }

    #[test]
    fn only_its_owner_continues_an_upload() {
        let u = Uploads::default();
        let id = "0123456789abcdef";
        u.keep("id:alice".into(), id.into(), "m".into(), half_received("owner"), Duration::from_secs(60));
        assert!(u.needs("id:mallory", id, "m").is_none());
        assert!(u.take("id:mallory", id, "m").is_none());
        assert!(u.take("id:alice", id, "other").is_none());
        assert_eq!(u.needs("id:alice", id, "m").as_deref(), Some("0=4-8"));
        assert!(u.take("id:alice", id, "m").is_some());
        assert_eq!(u.len(), 0);
    }

    #[test]
    fn kept_uploads_expire() {
        let u = Uploads::default();
        let id = "0123456789abcdef";
        u.keep("ip:127.0.0.1".into(), id.into(), "m".into(), half_received("expire"), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(u.take("ip:127.0.0.1", id, "m").is_none());
    }
}

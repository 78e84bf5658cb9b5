//! Moving frames through h2 streams: sending against granted capacity, and
//! receiving with capacity released only after the bytes were taken.

use std::future::poll_fn;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::{RecvStream, SendStream};

use super::flow::Meter;
use super::request::Resume;
use super::Config;
use crate::recv::{part_path, FileSink, FileWriter, PartLedger, Receive, MAX_DAMAGED_CHUNKS};
use crate::wire::{preamble, Budget, EncodedFrame, Frame, FrameDecoder, ObjectEnd, HEADER_LEN};
use crate::Error;

/// Frames smaller than this are staged and sent together with the next
/// frame, so that no tiny DATA frames reach the wire (h2 counts those
/// against a budget and may close the connection).
const COALESCE_BYTES: usize = 64 << 10;

/// Sends frames on an h2 stream, never handing h2 more than the capacity it
/// granted (SPEC.md §8.1): memory stays at one frame plus h2's send buffer.
#[derive(Debug)]
pub(crate) struct FrameSender {
    stream: SendStream<EncodedFrame>,
    staged: BytesMut,
    idle: Duration,
    counter: Option<Arc<std::sync::atomic::AtomicU64>>,
    sent: u64,
    gate: Option<Arc<super::written::SendGate>>,
}

impl FrameSender {
    pub(crate) fn new(stream: SendStream<EncodedFrame>, config: &Config) -> Self {
        let mut staged = BytesMut::with_capacity(COALESCE_BYTES);
        staged.put_slice(&preamble());
        FrameSender { stream, staged, idle: config.idle_timeout, counter: None, gate: None, sent: 0 }
    }

    /// Hands h2 data only while the connection's `gate` has room: what h2
    /// holds unwritten stays bounded per connection.
    pub(crate) fn gated(mut self, gate: Arc<super::written::SendGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Bytes handed to h2 so far on this stream.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// Counts every byte handed to h2 in `counter`.
    pub(crate) fn counting(mut self, counter: Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.counter = Some(counter);
        self
    }

    pub(crate) async fn send_frame(&mut self, frame: Frame) -> Result<(), Error> {
        match frame {
            Frame::Chunk(c) if c.data.len() >= COALESCE_BYTES => {
                // The chunk's 28-byte header joins the staged frames; its
                // payload follows as its own buffer, never copied.
                let data = c.data.clone();
                let mut parts = Frame::Chunk(c).into_buf();
                self.staged.put(parts.split_to(HEADER_LEN));
                let head = std::mem::take(&mut self.staged).freeze();
                self.send(EncodedFrame::from_parts(head, data), false).await
            }
            other => {
                other.encode(&mut self.staged);
                if self.staged.len() >= COALESCE_BYTES {
                    let head = std::mem::take(&mut self.staged).freeze();
                    self.send(EncodedFrame::from_bytes(head), false).await?;
                }
                Ok(())
            }
        }
    }

    /// Sends whatever is staged and ends the stream.
    pub(crate) async fn finish(&mut self) -> Result<(), Error> {
        let head = std::mem::take(&mut self.staged).freeze();
        self.send(EncodedFrame::from_bytes(head), true).await
    }

    async fn send(&mut self, mut buf: EncodedFrame, eos: bool) -> Result<(), Error> {
        if !buf.has_remaining() {
            if eos {
                self.stream.send_data(buf, true)?;
            }
            return Ok(());
        }
        while buf.has_remaining() {
            self.stream.reserve_capacity(buf.remaining());
            let granted = tokio::time::timeout(self.idle, capacity(&mut self.stream))
                .await
                .map_err(|_| Error::Timeout("send capacity"))??;
            let part = buf.split_to(granted.min(buf.remaining()));
            if let Some(gate) = &self.gate {
                gate.wait_for_room(part.remaining() as u64, self.idle).await?;
            }
            self.sent += part.remaining() as u64;
            if let Some(c) = &self.counter {
                c.fetch_add(part.remaining() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            self.stream.send_data(part, eos && !buf.has_remaining())?;
        }
        Ok(())
    }

    /// Resets the stream (the peer sees the transfer fail).
    pub(crate) fn reset(&mut self, reason: h2::Reason) {
        self.stream.send_reset(reason);
    }
}

/// Waits until h2 has assigned send capacity to the stream.
async fn capacity(stream: &mut SendStream<EncodedFrame>) -> Result<usize, Error> {
    loop {
        let now = stream.capacity();
        if now > 0 {
            return Ok(now);
        }
        match poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(Error::Protocol("stream closed while waiting for capacity")),
        }
    }
}

/// Decodes the frames of an object arriving as an h2 body.
///
/// Flow-control capacity is released as soon as a DATA frame has been
/// taken, and the next DATA frame is only read when the consumer asks for
/// the next frame: the consumer's pace is the sender's pace, and memory
/// stays at one frame plus the window. A frame that straddles DATA frames is
/// copied once, into a buffer allocated when all of it has arrived.
///
/// With a [`Budget`] (a server's, per connection), bytes are released to
/// the sender only while they fit in it: what a peer makes the receiver hold
/// in partial frames is bounded by the budget plus the stream's window, and
/// a peer that declares a long frame and stalls holds its budget share only
/// until the idle timeout.
#[derive(Debug)]
pub struct FrameReceiver {
    body: RecvStream,
    dec: FrameDecoder,
    /// The pieces of a frame that straddles DATA frames, as they came.
    parts: Vec<Bytes>,
    parts_len: usize,
    pending: Bytes,
    idle: Duration,
    eof: bool,
    received: u64,
    counter: Arc<std::sync::atomic::AtomicU64>,
    budget: Option<Budget>,
    /// Bytes taken from the budget for what `parts` and `pending` hold.
    charged: u64,
    /// Bytes received whose flow-control capacity is not released yet.
    unreleased: usize,
    meter: Option<Arc<Meter>>,
    /// Time spent waiting for data since the last progress.
    stalled: Duration,
    /// Bytes received since the last progress.
    trickled: usize,
}

/// How often a receiver waiting for budget tries again.
const BUDGET_RETRY: Duration = Duration::from_millis(20);

/// Bytes that count as progress without completing a frame: a peer that
/// trickles less within the idle timeout times out (SPEC.md §8.7).
const MIN_PROGRESS_BYTES: usize = 64 << 10;

impl FrameReceiver {
    pub(crate) fn new(body: RecvStream, config: &Config) -> Self {
        FrameReceiver {
            body,
            dec: FrameDecoder::with_limits(config.limits),
            parts: Vec::new(),
            parts_len: 0,
            pending: Bytes::new(),
            idle: config.idle_timeout,
            eof: false,
            received: 0,
            meter: None,
            counter: Arc::default(),
            budget: None,
            charged: 0,
            unreleased: 0,
            stalled: Duration::ZERO,
            trickled: 0,
        }
    }

    /// Bounds what this stream may hold by `budget` (SPEC.md §8.7): the
    /// names its decoder remembers, and the bytes of partial frames.
    pub(crate) fn with_budget(mut self, budget: Budget) -> Self {
        self.dec = FrameDecoder::with_limits(*self.dec.limits()).with_budget(budget.clone());
        self.budget = Some(budget);
        self
    }

    /// Gives back the budget of bytes that left the buffers, and releases
    /// capacity for received bytes as far as the budget allows.
    fn settle(&mut self) -> Result<(), Error> {
        let Some(budget) = &self.budget else {
            if self.unreleased > 0 {
                self.body.flow_control().release_capacity(std::mem::take(&mut self.unreleased))?;
            }
            return Ok(());
        };
        let held = (self.parts_len + self.pending.len()) as u64;
        if self.charged > held {
            budget.give(self.charged - held);
            self.charged = held;
        }
        if self.unreleased > 0 && budget.try_take(self.unreleased as u64) {
            self.charged += self.unreleased as u64;
            self.body.flow_control().release_capacity(std::mem::take(&mut self.unreleased))?;
        }
        Ok(())
    }

    /// Accepts chunks that skip ranges: the answer to a resume request
    /// (SPEC.md §7.2 rule 5, §8.4). Call before the first frame.
    /// Allows gaps, and skips up to [`MAX_DAMAGED_CHUNKS`] damaged chunks
    /// (each reported as its error, the frames going on after it) so that
    /// a receiver can ask for just those again (SPEC.md §3.2, §8.4).
    pub(crate) fn skipping_damaged_chunks(mut self, limits: crate::wire::Limits) -> Self {
        let seq = crate::wire::Sequencer::new(limits).allowing_gaps();
        self.dec = FrameDecoder::with_sequencer(limits, seq).skipping_damaged_chunks(MAX_DAMAGED_CHUNKS);
        self
    }

    pub(crate) fn allowing_gaps(mut self, limits: crate::wire::Limits) -> Self {
        self.dec = FrameDecoder::with_sequencer(limits, crate::wire::Sequencer::new(limits).allowing_gaps());
        self
    }

    /// Reports the bytes taken to the connection's flow control, which
    /// sizes the receive windows from them.
    pub(crate) fn metered(mut self, meter: Arc<Meter>) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Body bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// A counter of the body bytes received, that outlives the receiver
    /// (for a handler that consumes it as a stream).
    pub(crate) fn counter(&self) -> Arc<std::sync::atomic::AtomicU64> {
        Arc::clone(&self.counter)
    }

    /// The next frame, or `None` after a complete object.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] for an invalid object (the stream is then useless),
    /// [`Error::Http`] when the stream fails, [`Error::Timeout`] when no data
    /// arrives within the idle timeout.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, Error> {
        loop {
            // Zero copy while frames lie whole within a DATA frame.
            if self.parts.is_empty() && !self.pending.is_empty() {
                if let Some(f) = self.dec.decode_frame_bytes(&mut self.pending)? {
                    self.progressed();
                    return Ok(Some(f));
                }
                // A frame straddles DATA frames: its pieces are kept as they
                // came until all of it has arrived.
                if !self.pending.is_empty() {
                    self.parts_len += self.pending.len();
                    self.parts.push(std::mem::take(&mut self.pending));
                }
            }
            if !self.parts.is_empty() && self.parts_len >= self.dec.awaiting() {
                if let Some(f) = self.coalesce()? {
                    self.progressed();
                    return Ok(Some(f));
                }
                continue;
            }
            if self.eof {
                self.dec.finish_with(self.parts_len + self.pending.len())?;
                return Ok(None);
            }
            self.settle()?;
            let data = self.wait_for_data().await?;
            match data {
                None => self.eof = true,
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(data)) => {
                    let n = data.len();
                    self.received += n as u64;
                    self.counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    if self.parts.is_empty() {
                        self.pending = data;
                    } else if n > 0 {
                        self.parts_len += n;
                        self.parts.push(data);
                    }
                    // The bytes are ours now (at most one DATA frame held, or
                    // the pieces of one partial frame): the sender may send
                    // more, within the budget.
                    self.unreleased += n;
                    self.settle()?;
                    if let Some(m) = &self.meter {
                        m.record(n);
                    }
                    self.trickled += n;
                    if self.trickled >= MIN_PROGRESS_BYTES {
                        self.progressed();
                    }
                }
            }
        }
    }

    /// Every byte the decoder awaits has arrived in `parts`: copies exactly
    /// those into one buffer of their size (the one copy of a straddling
    /// frame; nothing is reserved before the bytes are here) and decodes.
    /// What follows them in the last piece becomes `pending` again.
    fn coalesce(&mut self) -> Result<Option<Frame>, Error> {
        let need = self.dec.awaiting();
        let mut buf = BytesMut::with_capacity(need);
        for mut part in std::mem::take(&mut self.parts) {
            let n = (need - buf.len()).min(part.len());
            buf.extend_from_slice(&part[..n]);
            part.advance(n);
            if !part.is_empty() {
                // Only the last piece can reach past the frame: the ones
                // before it were all needed.
                self.pending = part;
            }
        }
        self.parts_len = 0;
        let frame = self.dec.decode_frame(&mut buf)?;
        // A header completed here leaves its payload still to come: nothing
        // of `buf` is left, since it held exactly what was awaited.
        debug_assert!(buf.is_empty());
        Ok(frame)
    }

    /// A frame was completed, or enough bytes arrived: the stall clock
    /// starts again.
    fn progressed(&mut self) {
        self.stalled = Duration::ZERO;
        self.trickled = 0;
    }

    /// The next DATA frame (or the end), waiting at most what is left of the
    /// idle timeout since the last progress. Time the consumer spends
    /// between calls does not count. While capacity is held back for want of
    /// budget, it is released as soon as the budget has room.
    async fn wait_for_data(&mut self) -> Result<Option<Result<Bytes, h2::Error>>, Error> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.idle.saturating_sub(self.stalled);
        let data = loop {
            let tick = if self.unreleased == 0 {
                deadline
            } else {
                (tokio::time::Instant::now() + BUDGET_RETRY).min(deadline)
            };
            if let Ok(data) = tokio::time::timeout_at(tick, self.body.data()).await {
                break Some(data);
            }
            if tokio::time::Instant::now() >= deadline {
                break None;
            }
            self.settle()?;
        };
        self.stalled += started.elapsed();
        match data {
            Some(data) => Ok(data),
            None if self.unreleased > 0 => {
                Err(Error::Timeout("data (the server's memory budget for partial frames is in use)"))
            }
            // SPEC.md §8.7: a trickle of bytes is not progress.
            None => Err(Error::Timeout("data (no frame completed and under 64 KiB arrived within the idle timeout)")),
        }
    }
}

impl Drop for FrameReceiver {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give(self.charged);
        }
    }
}

/// The frames of an object arriving over HTTP/2, as a `Stream`.
pub type FrameStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Frame, Error>> + Send>>;

impl FrameReceiver {
    /// The frames as a `Stream` (ending after the object end).
    pub fn into_stream(self) -> FrameStream {
        Box::pin(futures::stream::unfold(self, |mut rx| async move {
            match rx.next_frame().await {
                Ok(Some(f)) => Some((Ok(f), rx)),
                Ok(None) => None,
                Err(e) => Some((Err(e), rx)),
            }
        }))
    }
}

pub use crate::recv::{Progress, ProgressFn};

/// What arrived, for a completed receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) len: u64,
    pub(crate) items: u64,
    pub(crate) crc: u32,
}

impl From<ObjectEnd> for Received {
    fn from(end: ObjectEnd) -> Self {
        Received { len: end.len, items: end.items, crc: end.crc }
    }
}

/// One object arriving into a file, over one or more streams: the `.part`
/// file and the assembler's ledger of verified ranges outlive a failed
/// stream, so the next one asks only for what is missing (SPEC.md §8.4).
/// Nothing is renamed into place before the object end was verified and
/// every item's CRC checked over the assembled bytes.
#[derive(Debug)]
pub(crate) struct FileReceive {
    recv: Receive<FileWriter>,
}

impl FileReceive {
    /// Creates `<dest>.part`.
    pub(crate) async fn create(dest: &Path) -> Result<Self, Error> {
        let dest_owned = dest.to_path_buf();
        let sink = tokio::task::spawn_blocking(move || FileSink::create(dest_owned)).await.map_err(join)??;
        Ok(FileReceive { recv: Receive::new(FileWriter::new(sink)) })
    }

    /// Like [`FileReceive::create`], with a ledger beside the `.part` file
    /// that survives a killed process: when one written for the same
    /// `request` is there, its verified chunks are kept and the `.part`
    /// file is continued; otherwise both start afresh.
    pub(crate) async fn create_resumable(dest: &Path, request: String) -> Result<Self, Error> {
        let d = dest.to_path_buf();
        let found = tokio::task::spawn_blocking(move || {
            let part = part_path(&d);
            let (ledger, found) = PartLedger::continue_or_start(&d, request, std::slice::from_ref(&part));
            let sink = if found { FileSink::open_existing(&d)? } else { FileSink::create(&d)? };
            Ok::<_, Error>((sink, ledger))
        })
        .await
        .map_err(join)??;
        let (sink, ledger) = found;
        // A ledger describes `<dest>.part` only: when another program's file
        // holds that name, the sink writes elsewhere and keeps no ledger.
        let keep_ledger = sink.part_path() == part_path(dest);
        let mut recv = Receive::new(FileWriter::new(sink));
        if keep_ledger {
            recv = recv.with_ledger(dest.to_path_buf(), ledger);
        }
        Ok(FileReceive { recv })
    }

    /// What to ask for on the next stream: `None` before any item is known
    /// (ask for everything), else the ranges not placed yet.
    pub(crate) fn resume(&self) -> Option<Resume> {
        let mut r = Resume::default();
        for (item, ranges) in self.recv.missing()? {
            r.need(item, ranges);
        }
        Some(r)
    }

    /// Forgets everything received (the source changed): the next stream
    /// starts from zero.
    pub(crate) fn restart(&mut self) {
        self.recv.restart();
    }

    /// Takes one stream's frames; commits the file and returns once the
    /// object is complete.
    pub(crate) async fn take(&mut self, rx: FrameReceiver, progress: Option<&ProgressFn>) -> Result<Received, Error> {
        self.recv.set_progress(progress.cloned());
        self.recv.tolerating_damaged_chunks(MAX_DAMAGED_CHUNKS);
        self.recv.take(&mut rx.into_stream()).await.map(Received::from)
    }
}

pub(crate) fn join(e: tokio::task::JoinError) -> Error {
    Error::Io(std::io::Error::other(e))
}

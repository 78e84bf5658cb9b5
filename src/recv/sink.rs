//! [`Sink`] and [`Receive`]: the one path from frames to a result. The
//! [`Assembler`] places chunks and checks CRCs; a sink only stores what it
//! is told is placed, and commits when told the object is verified.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{Stream, StreamExt};

use super::{Assembler, Event, PartLedger};
use crate::wire::{DecodeError, Frame, ItemHeader, ObjectEnd, ObjectHeader};
use crate::Error;

/// Where an object's verified pieces go: a file, a safetensors file, a queue
/// of tensors, or a sink of your own (an aggregate updated in place, pinned
/// or device buffers).
///
/// A [`Receive`] drives it. The calls come in wire order: [`Sink::object`]
/// once, [`Sink::item`] once per item, then [`Sink::chunk`] for bytes whose
/// frame CRC matched and that lie inside their item, [`Sink::item_end`] once
/// the item's CRC was checked over the assembled bytes, and
/// [`Sink::commit`] once the object end was verified and nothing followed
/// it (SPEC.md §7.4, §7.5). Over several streams (a resume, SPEC.md §8.4)
/// only the first object and item headers are passed on (later ones must
/// match them), and a chunk may be placed again: placement at `position` is
/// idempotent. [`Sink::abort`] is called when the object will not be
/// committed: a sink then releases what it holds (a `.part` file, buffers).
///
/// The calls are synchronous. A sink whose calls block (file IO) sets
/// [`Sink::BLOCKING`], and [`Receive::take`] then runs them on tokio's
/// blocking pool.
///
/// ```
/// use bytes::Bytes;
/// use tensorwire::recv::{Receive, Sink};
/// use tensorwire::send::ContainerStreamer;
/// use tensorwire::tensor::{Dtype, Tensor, TensorMap};
/// use tensorwire::wire::{ItemHeader, ObjectEnd};
///
/// /// Sums every byte of every item, in place: nothing is buffered.
/// #[derive(Default)]
/// struct ByteSum(u64);
///
/// impl Sink for ByteSum {
///     type Output = u64;
///     fn item(&mut self, _: &ItemHeader, _: u64) -> Result<(), tensorwire::Error> {
///         Ok(())
///     }
///     fn chunk(&mut self, _item: u32, _offset: u64, _position: u64, data: Bytes) -> Result<(), tensorwire::Error> {
///         self.0 += data.iter().map(|&b| u64::from(b)).sum::<u64>();
///         Ok(())
///     }
///     fn commit(&mut self, _: &ObjectEnd) -> Result<u64, tensorwire::Error> {
///         Ok(self.0)
///     }
/// }
///
/// # fn main() -> Result<(), tensorwire::Error> {
/// let mut model = TensorMap::new();
/// model.insert("w".into(), Tensor::new("w", Dtype::U8, vec![4], Bytes::from_static(&[1, 2, 3, 4]))?);
/// let mut frames = Box::pin(ContainerStreamer::from_map("m", std::sync::Arc::new(model)).frames());
/// let mut recv = Receive::new(ByteSum::default());
/// let sum = futures::executor::block_on(recv.take(&mut frames))?;
/// assert_eq!(sum, 10);
/// # Ok(())
/// # }
/// ```
pub trait Sink {
    /// What a committed object gives.
    type Output;

    /// Whether the calls block (file IO): [`Receive::take`] then makes them
    /// on the blocking pool.
    const BLOCKING: bool = false;

    /// The object header arrived (the first one, on the first stream). A
    /// sink that takes only some modes rejects the others here.
    ///
    /// # Errors
    ///
    /// Any: the object fails.
    fn object(&mut self, header: &ObjectHeader) -> Result<(), Error> {
        let _ = header;
        Ok(())
    }

    /// Item `header.item` was announced; its data starts at `position` in
    /// the concatenation of all items.
    ///
    /// # Errors
    ///
    /// Any: the object fails.
    fn item(&mut self, header: &ItemHeader, position: u64) -> Result<(), Error>;

    /// Verified bytes of `item` at `offset` within it (`position` in the
    /// concatenation of all items). The item's own CRC is checked later,
    /// over everything placed: until [`Sink::item_end`], these bytes may
    /// still turn out wrong and be placed again.
    ///
    /// # Errors
    ///
    /// Any: the stream fails (what was placed before stays placed).
    fn chunk(&mut self, item: u32, offset: u64, position: u64, data: Bytes) -> Result<(), Error>;

    /// Every byte of `item` is placed and its CRC-32 (`crc`, over `len`
    /// bytes) matched the assembled item.
    ///
    /// # Errors
    ///
    /// Any: the object fails.
    fn item_end(&mut self, item: u32, len: u64, crc: u32) -> Result<(), Error> {
        let _ = (item, len, crc);
        Ok(())
    }

    /// Makes what was placed so far durable, before a ledger that lists it
    /// is saved ([`Receive::with_ledger`]). Nothing to do by default.
    ///
    /// # Errors
    ///
    /// Any: the stream fails.
    fn sync(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// The object end was verified and nothing followed it: present the
    /// result. Called at most once.
    ///
    /// # Errors
    ///
    /// Any: the object fails and nothing is presented.
    fn commit(&mut self, end: &ObjectEnd) -> Result<Self::Output, Error>;

    /// The object will not be committed: release what is held. Called at
    /// most once, and never after [`Sink::commit`].
    fn abort(&mut self) {}
}

/// Progress of a transfer: data bytes done, out of the total when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Item data bytes sent or received so far.
    pub done: u64,
    /// The object's total item data length, when known.
    pub total: Option<u64>,
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Damaged chunks one stream of a pull may skip, to be fetched again on
/// their own ([`Receive::tolerating_damaged_chunks`]); past that, the
/// stream fails at the next one.
pub const MAX_DAMAGED_CHUNKS: u32 = 16;

/// How often a ledger is saved while data arrives.
const LEDGER_EVERY: Duration = Duration::from_millis(200);

/// One object arriving into a [`Sink`], over one or more streams: frames go
/// through an [`Assembler`] (placement, item CRCs over the assembled bytes,
/// SPEC.md §7.3, §8.4), and what it verifies goes to the sink. What was
/// placed outlives a failed stream: [`Receive::missing`] says what to ask
/// for next. Progress (bytes placed, each counted once) and the crash-safe
/// ledger of a resumable file ([`Receive::with_ledger`]) come from here, for
/// every mode.
///
/// Call order: [`Receive::take`] per stream (async), or, sans-IO,
/// [`Receive::handle_frame`] per frame and [`Receive::finish`] when the
/// frames end.
pub struct Receive<S: Sink> {
    asm: Assembler,
    sink: Option<S>,
    header: Option<ObjectHeader>,
    end: Option<ObjectEnd>,
    progress: Option<Progress>,
    on_progress: Option<ProgressFn>,
    ledger: Option<Ledger>,
    committed: bool,
    /// Damaged chunks a stream may skip ([`Receive::tolerating_damaged_chunks`]).
    damage_allowed: u32,
}

impl<S: Sink> std::fmt::Debug for Receive<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receive")
            .field("object", &self.header.as_ref().map(|h| &h.name))
            .field("received", &self.asm.received())
            .field("ended", &self.end.is_some())
            .field("committed", &self.committed)
            .finish()
    }
}

/// A ledger beside `<dest>.part`, and when it was last saved.
#[derive(Debug)]
struct Ledger {
    dest: PathBuf,
    record: PartLedger,
    saved: Option<Instant>,
}

impl<S: Sink> Receive<S> {
    /// Nothing received yet.
    pub fn new(sink: S) -> Self {
        Receive {
            asm: Assembler::new(),
            sink: Some(sink),
            header: None,
            end: None,
            progress: None,
            on_progress: None,
            ledger: None,
            committed: false,
            damage_allowed: 0,
        }
    }

    /// Lets each stream skip up to `max` damaged chunks: the frame source's
    /// [`DecodeError::PayloadChecksum`] items, each followed by the rest of
    /// the object (a decoder built with
    /// [`FrameDecoder::skipping_damaged_chunks`](crate::wire::FrameDecoder::skipping_damaged_chunks)).
    /// The stream then ends with that error at the object end, and
    /// [`Receive::missing`] lists just those chunks' ranges (SPEC.md §3.2
    /// rule 3, §8.4): a retry fetches only them.
    pub fn tolerating_damaged_chunks(&mut self, max: u32) {
        self.damage_allowed = max;
    }

    /// Calls `progress` after each frame that placed bytes.
    pub fn with_progress(mut self, progress: Option<ProgressFn>) -> Self {
        self.set_progress(progress);
        self
    }

    /// Calls `progress` after each frame that placed bytes, from now on.
    pub fn set_progress(&mut self, progress: Option<ProgressFn>) {
        self.on_progress = progress;
    }

    /// Keeps `record` beside `<dest>.part` (SPEC.md §8.4): every
    /// [`LEDGER_EVERY`] while data arrives the sink is synced
    /// ([`Sink::sync`]) and then the chunks placed so far are saved, so that
    /// a process killed mid-transfer resumes from them. Its chunks (already
    /// in the `.part` file) are trusted as placed; a record that does not fit
    /// its items is dropped.
    pub fn with_ledger(mut self, dest: PathBuf, mut record: PartLedger) -> Self {
        let items = record.source.items.iter().enumerate();
        let headers = items.map(|(i, (name, len))| ItemHeader::bytes(i as u32, name.clone(), *len));
        let mut asm = Assembler::new();
        if asm.restore(headers.collect(), &record.chunks).is_err() || asm.received() == 0 {
            // Damaged or empty: trust nothing of it.
            asm = Assembler::new();
            record.source.header = None;
            record.source.items.clear();
            record.chunks.clear();
        }
        self.asm = asm;
        self.ledger = Some(Ledger { dest, record, saved: None });
        self
    }

    /// The sink.
    pub fn sink(&self) -> Option<&S> {
        self.sink.as_ref()
    }

    /// The sink, to change it between streams.
    pub fn sink_mut(&mut self) -> Option<&mut S> {
        self.sink.as_mut()
    }

    /// The assembler: what was placed and verified.
    pub fn assembler(&self) -> &Assembler {
        &self.asm
    }

    /// The object header of the first stream.
    pub fn object_header(&self) -> Option<&ObjectHeader> {
        self.header.as_ref()
    }

    /// Per item seen so far, the ranges (of the item's bytes as sent) not
    /// yet placed; `None` before the first item: ask for everything.
    pub fn missing(&self) -> Option<Vec<(u32, Vec<std::ops::Range<u64>>)>> {
        (self.asm.items() > 0).then(|| (0..self.asm.items()).map(|i| (i, self.asm.missing(i))).collect())
    }

    /// Forgets everything placed (the source changed): the next stream
    /// starts from zero. The sink is kept; it is told again of the object
    /// and its items.
    pub fn restart(&mut self) {
        self.asm = Assembler::new();
        self.header = None;
        self.end = None;
        self.progress = None;
        if let Some(l) = &mut self.ledger {
            l.record.source.header = None;
            l.record.source.items.clear();
            l.record.chunks.clear();
        }
    }

    /// Whether the ledger given to [`Receive::with_ledger`] vouched for
    /// data that is still trusted (the sink continues its files).
    pub fn is_resuming(&self) -> bool {
        self.ledger.is_some() && self.asm.received() > 0
    }

    /// Whether the object was committed.
    pub fn is_committed(&self) -> bool {
        self.committed
    }

    /// Takes one frame, sans-IO: the sink's calls are made here, whatever
    /// [`Sink::BLOCKING`] says.
    ///
    /// # Errors
    ///
    /// What the assembler rejects ([`Error::Decode`]), [`Error::Aborted`]
    /// when the sender aborted, a frame after the object end
    /// ([`DecodeError::TrailingData`]), or the sink's error.
    pub fn handle_frame(&mut self, frame: Frame) -> Result<(), Error> {
        let (events, placed) = self.assemble(frame)?;
        let sink = self.sink.as_mut().ok_or(Error::Protocol("the sink was lost"))?;
        dispatch(sink, events)?;
        self.report(placed);
        Ok(())
    }

    /// The frames ended: commits the object if its end was verified.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] when the object end never came, or the
    /// sink's error from [`Sink::commit`].
    pub fn finish(&mut self) -> Result<S::Output, Error> {
        let end = self.ending()?;
        let sink = self.sink.as_mut().ok_or(Error::Protocol("the sink was lost"))?;
        let out = sink.commit(&end)?;
        self.committed();
        Ok(out)
    }

    /// Takes one stream's frames to its end and commits the object; after
    /// an error, what was placed is kept for the next stream.
    ///
    /// # Errors
    ///
    /// The stream's error, or as [`Receive::handle_frame`] and
    /// [`Receive::finish`].
    pub async fn take<F>(&mut self, frames: &mut F) -> Result<S::Output, Error>
    where
        F: Stream<Item = Result<Frame, Error>> + Unpin,
        S: Send + 'static,
        S::Output: Send + 'static,
    {
        let mut damage_left = self.damage_allowed;
        while let Some(frame) = frames.next().await {
            let frame = match frame {
                Ok(f) => f,
                // SPEC.md §3.2 rule 3: the chunk's (item, offset) can be
                // trusted; it is asked for again, the stream goes on.
                Err(Error::Decode(d @ DecodeError::PayloadChecksum { .. })) if damage_left > 0 => {
                    damage_left -= 1;
                    self.asm.handle_damaged(d);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (events, placed) = self.assemble(frame)?;
            let save = self.due_ledger();
            if S::BLOCKING {
                self.on_pool(move |sink| {
                    dispatch(sink, events)?;
                    save_ledger(sink, save)
                })
                .await?;
            } else {
                let sink = self.sink.as_mut().ok_or(Error::Protocol("the sink was lost"))?;
                dispatch(sink, events)?;
                save_ledger(sink, save)?;
            }
            self.report(placed);
        }
        let end = self.ending()?;
        let out = if S::BLOCKING {
            self.on_pool(move |sink| sink.commit(&end)).await?
        } else {
            self.sink.as_mut().ok_or(Error::Protocol("the sink was lost"))?.commit(&end)?
        };
        self.committed();
        Ok(out)
    }

    /// Runs `f` on the sink on the blocking pool.
    async fn on_pool<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut S) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error>
    where
        S: Send + 'static,
    {
        let mut sink = self.sink.take().ok_or(Error::Protocol("the sink was lost"))?;
        let (sink, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut sink);
            (sink, out)
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        self.sink = Some(sink);
        out
    }

    /// Feeds the assembler; returns the events for the sink, and whether
    /// bytes were placed. Object headers after the first must match it, and
    /// are not passed on.
    fn assemble(&mut self, frame: Frame) -> Result<(Vec<Event>, bool), Error> {
        // SPEC.md §7.5: no frame may follow the object end.
        if self.end.is_some() {
            return Err(DecodeError::TrailingData.into());
        }
        match (&frame, &self.header) {
            (Frame::ObjectHeader(h), Some(first)) if h != first => {
                // SPEC.md §8.4: a resumed stream describes the same object.
                return Err(
                    DecodeError::InconsistentItem { item: 0, reason: "the object header changed".into() }.into()
                );
            }
            (Frame::ObjectHeader(_), _) | (Frame::Abort(_), _) | (_, Some(_)) => {}
            // SPEC.md §7.1: the object header comes first.
            (f, None) => {
                return Err(DecodeError::UnexpectedFrame { kind: f.kind(), reason: "before the object header" }.into())
            }
        }
        let first = matches!(frame, Frame::ObjectHeader(_)) && self.header.is_none();
        if let (Frame::ObjectHeader(h), true) = (&frame, first) {
            self.check_source(h)?;
            self.header = Some(h.clone());
        }
        self.asm.handle_frame(frame)?;
        let mut events = Vec::new();
        let mut placed = false;
        while let Some(event) = self.asm.poll_event() {
            match event {
                Event::Object(h) => {
                    self.progress = Some(Progress { done: self.asm.received(), total: h.total_len });
                    if first {
                        events.push(Event::Object(h));
                    }
                }
                Event::Aborted(a) => return Err(Error::Aborted { code: a.code, message: a.message }),
                Event::Done(end) => self.end = Some(end),
                Event::Item { header, position } => {
                    if let Some(l) = &mut self.ledger {
                        // Restored items are announced again, not recorded twice.
                        if header.item as usize >= l.record.source.items.len() {
                            l.record.source.items.push((header.name.clone(), header.len));
                        }
                    }
                    events.push(Event::Item { header, position });
                }
                e => {
                    placed |= matches!(e, Event::Data { .. });
                    events.push(e);
                }
            }
        }
        if placed {
            if let Some(p) = &mut self.progress {
                p.done = self.asm.received();
            }
        }
        Ok((events, placed))
    }

    /// SPEC.md §8.4: a transfer resumed from a ledger continues only the
    /// object the ledger was written for; the header's CRC is recorded for
    /// the next run.
    fn check_source(&mut self, h: &ObjectHeader) -> Result<(), Error> {
        let Some(l) = &mut self.ledger else { return Ok(()) };
        let mut buf = bytes::BytesMut::new();
        Frame::ObjectHeader(h.clone()).encode(&mut buf);
        let crc = crc32fast::hash(&buf);
        if l.record.source.header.is_some_and(|c| c != crc) {
            return Err(DecodeError::InconsistentItem {
                item: 0,
                reason: "the object header changed since the ledger was written".into(),
            }
            .into());
        }
        l.record.source.header = Some(crc);
        Ok(())
    }

    /// Reports progress after a frame that `placed` bytes.
    fn report(&self, placed: bool) {
        if let (true, Some(f), Some(p)) = (placed, &self.on_progress, &self.progress) {
            f(*p);
        }
    }

    /// The ledger to save now, if one is kept and due.
    fn due_ledger(&mut self) -> Option<(PathBuf, PartLedger)> {
        let l = self.ledger.as_mut()?;
        if l.saved.is_some_and(|t| t.elapsed() < LEDGER_EVERY) {
            return None;
        }
        l.saved = Some(Instant::now());
        l.record.chunks = self.asm.chunks();
        Some((l.dest.clone(), l.record.clone()))
    }

    fn ending(&self) -> Result<ObjectEnd, Error> {
        // SPEC.md §7.5 rule 3: frames that end before OBJECT_END are truncated.
        self.end.ok_or(Error::Decode(DecodeError::Truncated))
    }

    fn committed(&mut self) {
        self.committed = true;
        if let Some(l) = self.ledger.take() {
            PartLedger::remove(&l.dest);
        }
    }
}

impl<S: Sink> Drop for Receive<S> {
    fn drop(&mut self) {
        if !self.committed {
            if let Some(sink) = &mut self.sink {
                sink.abort();
            }
            // Not killed but given up: the `.part` goes, and its ledger too.
            if let Some(l) = &self.ledger {
                PartLedger::remove(&l.dest);
            }
        }
    }
}

fn dispatch<S: Sink>(sink: &mut S, events: Vec<Event>) -> Result<(), Error> {
    for event in events {
        match event {
            Event::Object(h) => sink.object(&h)?,
            Event::Item { header, position } => sink.item(&header, position)?,
            Event::Data { item, offset, position, data } => sink.chunk(item, offset, position, data)?,
            Event::ItemDone { item, len, crc } => sink.item_end(item, len, crc)?,
            // Handled by `assemble`.
            Event::Done(_) | Event::Aborted(_) => {}
        }
    }
    Ok(())
}

/// Syncs the sink, then saves the ledger listing what it holds.
fn save_ledger<S: Sink>(sink: &mut S, save: Option<(PathBuf, PartLedger)>) -> Result<(), Error> {
    let Some((dest, record)) = save else { return Ok(()) };
    sink.sync()?;
    record.save(&dest)
}

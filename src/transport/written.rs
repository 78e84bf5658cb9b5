//! [`Written`]: counts the bytes a connection has written to its IO, so a
//! server knows how much of what it handed to h2 h2 still holds.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// What a connection's streams handed to h2 and what reached the IO.
///
/// h2 queues whatever a stream sends within its window until the socket
/// takes it; a peer that grants windows but never reads would make it hold
/// up to its send buffer on every stream. Streams wait instead
/// ([`SendGate::wait_for_room`]) while more than `limit` bytes handed to h2
/// have not been written: the bytes h2 holds per connection stay under the
/// limit whatever the number of streams.
#[derive(Debug)]
pub(crate) struct SendGate {
    handed: AtomicU64,
    written: AtomicU64,
    progress: Notify,
    limit: u64,
    /// Set when the connection's IO is gone: nothing will be written again.
    closed: std::sync::atomic::AtomicBool,
}

impl SendGate {
    pub(crate) fn new(limit: u64) -> Arc<Self> {
        Arc::new(SendGate {
            handed: AtomicU64::new(0),
            written: AtomicU64::new(0),
            progress: Notify::new(),
            limit,
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Bytes handed to h2 and not yet written (frame overheads make this a
    /// slight underestimate).
    fn queued(&self) -> u64 {
        self.handed.load(Ordering::Acquire).saturating_sub(self.written.load(Ordering::Acquire))
    }

    /// Waits until `n` more bytes fit, then counts them as handed. Fails
    /// after `idle` without the socket taking anything.
    /// Nothing will be written on this connection again: streams waiting
    /// for room fail now.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.progress.notify_waiters();
    }

    pub(crate) async fn wait_for_room(&self, n: u64, idle: Duration) -> Result<(), crate::Error> {
        loop {
            let notified = self.progress.notified();
            // A stream of a closed connection must not wait for its idle
            // timeout: the socket will never take its bytes.
            if self.closed.load(Ordering::Acquire) {
                let gone = io::Error::new(io::ErrorKind::ConnectionAborted, "the connection closed");
                return Err(crate::Error::Io(gone));
            }
            // Always lets a stream through when nothing is queued, so one
            // large frame is never stuck behind the limit.
            let queued = self.queued();
            if queued == 0 || queued + n <= self.limit {
                self.handed.fetch_add(n, Ordering::AcqRel);
                return Ok(());
            }
            tokio::time::timeout(idle, notified).await.map_err(|_| crate::Error::Timeout("the peer to read"))?;
        }
    }
}

/// An IO that reports every byte written to a [`SendGate`].
#[derive(Debug)]
pub(crate) struct Written<IO> {
    io: IO,
    gate: Arc<SendGate>,
}

impl<IO> Written<IO> {
    pub(crate) fn new(io: IO, gate: Arc<SendGate>) -> Self {
        Written { io, gate }
    }

    fn wrote(&self, n: usize) {
        if n > 0 {
            self.gate.written.fetch_add(n as u64, Ordering::AcqRel);
            self.gate.progress.notify_waiters();
        }
    }
}

impl<IO> Drop for Written<IO> {
    fn drop(&mut self) {
        self.gate.close();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Written<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Written<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.wrote(n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.wrote(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn waits_until_the_socket_takes_the_queued_bytes() {
        let gate = SendGate::new(100);
        gate.wait_for_room(80, Duration::from_secs(1)).await.expect("room");
        let blocked = gate.wait_for_room(40, Duration::from_millis(50)).await;
        assert!(matches!(blocked, Err(crate::Error::Timeout(_))), "{blocked:?}");
        let (a, _b) = tokio::io::duplex(1 << 16);
        let mut io = Written::new(a, Arc::clone(&gate));
        io.write_all(&[0; 30]).await.expect("write");
        gate.wait_for_room(40, Duration::from_millis(50)).await.expect("room after a write");
    }

    /// A stream waiting for room wakes with an error once the connection's
    /// IO is dropped, instead of waiting for its idle timeout.
    #[tokio::test]
    async fn waiters_fail_when_the_connection_is_gone() {
        let gate = SendGate::new(10);
        gate.wait_for_room(10, Duration::from_secs(1)).await.expect("room");
        let (a, _b) = tokio::io::duplex(1 << 16);
        let io = Written::new(a, Arc::clone(&gate));
        let waiter = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.wait_for_room(5, Duration::from_secs(30)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(io);
        let r = tokio::time::timeout(Duration::from_secs(2), waiter).await.expect("woke").expect("joined");
        assert!(matches!(r, Err(crate::Error::Io(_))), "{r:?}");
    }

    #[tokio::test]
    async fn one_large_piece_passes_an_empty_queue() {
        let gate = SendGate::new(10);
        gate.wait_for_room(1000, Duration::from_millis(50)).await.expect("nothing queued");
    }
}

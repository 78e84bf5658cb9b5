//! [`EncodedFrame`]: an encoded frame as two buffers, so a chunk's payload is
//! handed to the transport without a copy.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// An encoded frame as two buffers (see [`Frame::into_buf`](super::Frame::into_buf)).
#[derive(Debug, Clone, Default)]
pub struct EncodedFrame {
    head: Bytes,
    body: Bytes,
}

impl EncodedFrame {
    /// Wraps bytes that are already encoded (the preamble, say).
    pub fn from_bytes(bytes: Bytes) -> Self {
        EncodedFrame { head: bytes, body: Bytes::new() }
    }

    /// Encoded bytes in two parts: `head` first, then `body`.
    pub fn from_parts(head: Bytes, body: Bytes) -> Self {
        EncodedFrame { head, body }
    }

    /// The two parts, `head` then `body` (a chunk's payload, uncopied).
    pub fn into_parts(self) -> (Bytes, Bytes) {
        (self.head, self.body)
    }

    /// Splits off the first `n` bytes (at most [`Buf::remaining`]), without
    /// copying either part.
    pub fn split_to(&mut self, n: usize) -> EncodedFrame {
        let h = n.min(self.head.len());
        let head = self.head.split_to(h);
        let b = (n - h).min(self.body.len());
        let body = self.body.split_to(b);
        EncodedFrame { head, body }
    }
}

impl Buf for EncodedFrame {
    fn remaining(&self) -> usize {
        self.head.len() + self.body.len()
    }

    fn chunk(&self) -> &[u8] {
        if self.head.is_empty() {
            &self.body
        } else {
            &self.head
        }
    }

    fn advance(&mut self, mut cnt: usize) {
        let h = cnt.min(self.head.len());
        self.head.advance(h);
        cnt -= h;
        self.body.advance(cnt);
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        for part in [&self.head, &self.body] {
            if n < dst.len() && !part.is_empty() {
                dst[n] = std::io::IoSlice::new(part);
                n += 1;
            }
        }
        n
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        if self.head.is_empty() && len <= self.body.len() {
            return self.body.split_to(len);
        }
        let mut out = BytesMut::with_capacity(len);
        out.put((&mut *self).take(len));
        out.freeze()
    }
}

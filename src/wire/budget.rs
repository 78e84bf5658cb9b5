//! [`Budget`]: how many bytes peers may make a receiver hold, shared by the
//! streams of a connection and the connections of a server (SPEC.md §8.7).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A byte budget with an optional parent: taking `n` bytes takes them from
/// this budget and from every budget above it, or from none.
///
/// A server gives each connection a child of its own budget, so one
/// connection can hold at most its share and all connections together at
/// most the server's. It is sans-IO: [`Budget::try_take`] never waits; the
/// transport decides whether to wait (back-pressure) or to refuse.
///
/// ```
/// use tensorwire::wire::Budget;
/// let server = Budget::new(100);
/// let conn = server.child(60);
/// assert!(conn.try_take(50));
/// assert!(!conn.try_take(20)); // over the connection's 60
/// assert!(!server.try_take(60)); // over the server's 100 (50 are held)
/// conn.give(50);
/// assert_eq!(server.used(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: u64,
    used: AtomicU64,
    parent: Option<Budget>,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Budget { inner: Arc::new(Inner { limit, used: AtomicU64::new(0), parent: None }) }
    }

    /// A budget that never refuses (what a client holds for the one server
    /// it asked).
    pub fn unlimited() -> Self {
        Self::new(u64::MAX)
    }

    /// A budget of at most `limit` bytes that also draws on this one.
    pub fn child(&self, limit: u64) -> Self {
        Budget { inner: Arc::new(Inner { limit, used: AtomicU64::new(0), parent: Some(self.clone()) }) }
    }

    /// Takes `n` bytes from this budget and its parents if all have room;
    /// otherwise takes nothing and returns `false`.
    pub fn try_take(&self, n: u64) -> bool {
        if n == 0 {
            return true;
        }
        let inner = &self.inner;
        let took = inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= inner.limit)
            })
            .is_ok();
        if !took {
            return false;
        }
        if let Some(parent) = &inner.parent {
            if !parent.try_take(n) {
                inner.used.fetch_sub(n, Ordering::AcqRel);
                return false;
            }
        }
        true
    }

    /// Gives back `n` bytes taken with [`Budget::try_take`].
    ///
    /// # Panics
    ///
    /// When more is given back than was taken (a caller's bookkeeping bug).
    pub fn give(&self, n: u64) {
        if n == 0 {
            return;
        }
        let before = self.inner.used.fetch_sub(n, Ordering::AcqRel);
        assert!(before >= n, "budget: gave back {n} bytes but only {before} were taken");
        if let Some(parent) = &self.inner.parent {
            parent.give(n);
        }
    }

    /// Bytes taken now.
    pub fn used(&self) -> u64 {
        self.inner.used.load(Ordering::Acquire)
    }

    /// The most this budget (not counting its parents) lets be taken.
    pub fn limit(&self) -> u64 {
        self.inner.limit
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::unlimited()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_beyond_its_own_limit() {
        let b = Budget::new(10);
        assert!(b.try_take(10));
        assert!(!b.try_take(1));
        b.give(4);
        assert!(b.try_take(4));
        assert_eq!(b.used(), 10);
    }

    #[test]
    fn refuses_beyond_a_parent_and_takes_nothing() {
        let server = Budget::new(10);
        let a = server.child(8);
        let b = server.child(8);
        assert!(a.try_take(6));
        assert!(!b.try_take(6), "the server's 10 bytes would be exceeded");
        assert_eq!(b.used(), 0, "a refused take must leave nothing behind");
        assert!(b.try_take(4));
        assert_eq!(server.used(), 10);
    }

    #[test]
    fn unlimited_never_overflows() {
        let b = Budget::unlimited();
        assert!(b.try_take(u64::MAX));
        assert!(!b.try_take(1));
    }
}

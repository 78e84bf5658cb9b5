//! Adaptive flow control and keep-alive for one HTTP/2 connection.
//!
//! A fixed receive window caps a transfer at `window / RTT`: 4 MiB over a
//! 100 ms round trip is 42 MB/s, a third of a 1 Gbit/s link. The receiver
//! cannot know the link, so it measures it, as gRPC's BDP estimator and
//! hyper's `adaptive_window` do:
//!
//! 1. When DATA arrives and no measurement runs, send a PING and count the
//!    bytes the consumer takes until its ACK returns.
//! 2. Those bytes are what the link delivered in one round trip. If they
//!    fill most of the current window, the window is what limits the
//!    transfer: grow it to a multiple of the sample, up to
//!    [`Config::max_window`]. Growth also needs the measured bandwidth to
//!    have risen, and the path's bandwidth-delay product (that bandwidth
//!    times the *smallest* round trip seen, as BBR estimates it) to be at
//!    least half the window: a window that only fills a queue on the path
//!    (the round trip grows, the bandwidth does not), or a loopback
//!    connection whose PINGs wait behind its own data, is large enough
//!    already.
//! 3. When nothing arrives for a while, go back to the configured windows,
//!    so an idle connection holds no large grant.
//!
//! Growth from samples costs a round trip per step, and a transfer over a
//! 200 ms path would spend its first second ramping up. So the first PING
//! (the handshake check) also primes the window: `max_window` is sized for
//! a link rate over a 100 ms round trip (10 Gbit/s by default), and a path
//! with round trip `rtt` starts at `max_window × rtt / 100 ms` (never below
//! the configured window, never above the cap). On loopback and LAN the
//! round trip is well under a millisecond and nothing changes.
//!
//! The estimator ([`BdpEstimator`]) is sans-IO; [`spawn`] runs it with
//! h2's `PingPong` and hands new windows to whoever owns the h2
//! connection (only the owner may call `set_initial_window_size`). The same
//! task sends keep-alive PINGs on an idle connection and declares the peer
//! dead when one goes unanswered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use h2::{Ping, PingPong};
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Config;

/// A sample must cover this fraction of the window (in thirds) to count as
/// window-limited.
const SATURATED_THIRDS: u64 = 2;
/// A window-limited sample of `b` bytes grows the window to `b * GROWTH`.
const GROWTH: u64 = 4;
/// The bandwidth must rise by at least 1/BW_STEP over the best seen for the
/// window to grow again.
const BW_STEP: f64 = 8.0;
/// Least time between two measurements once the window has stopped growing.
const MIN_PING_GAP: Duration = Duration::from_millis(10);
/// Most time between two measurements while data flows.
const MAX_PING_GAP: Duration = Duration::from_secs(1);
/// The round trip [`Config::max_window`] is sized for: a path with this
/// round trip starts at the full cap.
const CAP_RTT: Duration = Duration::from_millis(100);
/// No data for this long shrinks the windows back to their initial sizes.
const SHRINK_AFTER: Duration = Duration::from_secs(2);

/// Estimates the bandwidth-delay product from PING round trips and the
/// bytes received meanwhile, and proposes receive windows.
///
/// Call order: [`BdpEstimator::handle_handshake`] with the first round
/// trip, then [`BdpEstimator::handle_sample`] after each PING round trip
/// with the bytes taken by consumers while it was out; apply the window it
/// returns. [`BdpEstimator::handle_idle`] when no data arrived for a while.
///
/// ```
/// # use std::time::Duration;
/// # use tensorwire::transport::BdpEstimator;
/// let mut bdp = BdpEstimator::new(4 << 20, 128 << 20);
/// // A full window arrived in one 100 ms round trip: the window limits.
/// assert_eq!(bdp.handle_sample(4 << 20, Duration::from_millis(100)), Some(16 << 20));
/// // Back to the start after an idle spell.
/// assert_eq!(bdp.handle_idle(), Some(4 << 20));
/// ```
#[derive(Debug, Clone)]
pub struct BdpEstimator {
    /// Where idle connections return: the configured window, or the
    /// primed one.
    base: u32,
    cap: u32,
    window: u32,
    best_bandwidth: f64,
    rtt: Option<Duration>,
    min_rtt: Option<Duration>,
}

impl BdpEstimator {
    /// Starts at window `initial`, never proposes more than `cap`.
    pub fn new(initial: u32, cap: u32) -> Self {
        BdpEstimator {
            base: initial,
            cap: cap.max(initial),
            window: initial,
            best_bandwidth: 0.0,
            rtt: None,
            min_rtt: None,
        }
    }

    /// The current window.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// The smoothed round trip, once one was measured.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Takes the connection's first round trip, before any data: returns a
    /// primed window (`cap × rtt / 100 ms`) when that exceeds the current
    /// one.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tensorwire::transport::BdpEstimator;
    /// let mut bdp = BdpEstimator::new(4 << 20, 128 << 20);
    /// assert_eq!(bdp.handle_handshake(Duration::from_millis(50)), Some(64 << 20));
    /// let mut lan = BdpEstimator::new(4 << 20, 128 << 20);
    /// assert_eq!(lan.handle_handshake(Duration::from_micros(200)), None);
    /// ```
    pub fn handle_handshake(&mut self, rtt: Duration) -> Option<u32> {
        self.rtt = Some(rtt);
        self.min_rtt = Some(rtt);
        let primed = (u128::from(self.cap) * rtt.as_nanos() / CAP_RTT.as_nanos()).min(u128::from(self.cap)) as u32;
        (primed > self.window).then(|| {
            self.window = primed;
            self.base = primed;
            primed
        })
    }

    /// Takes one measurement: `bytes` received during one PING round trip
    /// `rtt`. Returns the new window when it should grow.
    pub fn handle_sample(&mut self, bytes: u64, rtt: Duration) -> Option<u32> {
        let rtt = rtt.max(Duration::from_micros(1));
        // A moving average (1/8 weight, as TCP's SRTT) for reporting.
        self.rtt = Some(match self.rtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
        let min_rtt = self.min_rtt.map_or(rtt, |m| m.min(rtt));
        self.min_rtt = Some(min_rtt);
        if self.window >= self.cap {
            return None;
        }
        let bandwidth = bytes as f64 / rtt.as_secs_f64();
        let saturated = bytes * 3 >= u64::from(self.window) * SATURATED_THIRDS;
        let faster = bandwidth > self.best_bandwidth * (1.0 + 1.0 / BW_STEP);
        self.best_bandwidth = self.best_bandwidth.max(bandwidth);
        let path_bdp = bandwidth * min_rtt.as_secs_f64();
        let short = path_bdp * 2.0 < f64::from(self.window);
        if !(saturated && faster) || short {
            return None;
        }
        let grown = bytes.saturating_mul(GROWTH).min(u64::from(self.cap)) as u32;
        (grown > self.window).then(|| {
            self.window = grown;
            grown
        })
    }

    /// No data arrived for a while: returns the window to go back to (the
    /// configured one, or the primed one for this path's round trip) when
    /// the current one is larger.
    pub fn handle_idle(&mut self) -> Option<u32> {
        self.best_bandwidth = 0.0;
        let base = self.base;
        (self.window > base).then(|| {
            self.window = base;
            base
        })
    }
}

/// Counts bytes taken by the consumers of one connection's streams, and
/// wakes the flow task when data flows.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    bytes: AtomicU64,
    data: Notify,
}

impl Meter {
    /// Records `n` bytes taken by a consumer.
    pub(crate) fn record(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.data.notify_one();
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Receive windows the connection's owner should apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Windows {
    pub(crate) stream: u32,
    pub(crate) connection: u32,
}

/// What the connection's owner gets from [`spawn`].
#[derive(Debug)]
pub(crate) struct Flow {
    /// Counts received bytes; give it to every `FrameReceiver`.
    pub(crate) meter: Arc<Meter>,
    /// New windows, as the estimate changes.
    pub(crate) windows: watch::Receiver<Windows>,
    /// Cancelled when the peer stopped answering PINGs (or on request):
    /// the owner drops the connection.
    pub(crate) dead: CancellationToken,
    /// Resolves with the first PING round trip: the peer speaks HTTP/2.
    pub(crate) ready: oneshot::Receiver<Duration>,
}

/// The next windows from `rx`; pending forever without a receiver or once
/// the flow task is gone (for use in `select!`).
pub(crate) async fn next_windows(rx: Option<&mut watch::Receiver<Windows>>) -> Option<Windows> {
    if let Some(rx) = rx {
        if rx.changed().await.is_ok() {
            return Some(*rx.borrow_and_update());
        }
    }
    std::future::pending().await
}

/// Starts the flow task for a connection whose `PingPong` is `ping`.
pub(crate) fn spawn(ping: PingPong, config: &Config) -> Flow {
    let meter = Arc::new(Meter::default());
    let initial = Windows { stream: config.stream_window, connection: config.connection_window };
    let (tx, windows) = watch::channel(initial);
    let dead = CancellationToken::new();
    let (ready_tx, ready) = oneshot::channel();
    let task = Task {
        ping,
        meter: Arc::clone(&meter),
        bdp: BdpEstimator::new(config.stream_window, config.max_window),
        initial,
        windows: tx,
        dead: dead.clone(),
        keepalive: config.keepalive_interval,
        keepalive_timeout: config.keepalive_timeout,
    };
    tokio::spawn(task.run(ready_tx));
    Flow { meter, windows, dead, ready }
}

struct Task {
    ping: PingPong,
    meter: Arc<Meter>,
    bdp: BdpEstimator,
    initial: Windows,
    windows: watch::Sender<Windows>,
    dead: CancellationToken,
    keepalive: Duration,
    keepalive_timeout: Duration,
}

impl Task {
    async fn run(mut self, ready: oneshot::Sender<Duration>) {
        // The first PING proves the peer speaks HTTP/2 (the handshake
        // timeout waits on it) and gives a first round trip.
        let Some(rtt) = self.round_trip().await else { return };
        if let Some(w) = self.bdp.handle_handshake(rtt) {
            self.publish(self.windows_for(w));
        }
        let _ = ready.send(rtt);
        let mut gap = MIN_PING_GAP;
        let mut idle = Duration::ZERO;
        loop {
            let data = tokio::select! {
                _ = self.dead.cancelled() => return,
                got = tokio::time::timeout(SHRINK_AFTER, self.meter.data.notified()) => got.is_ok(),
            };
            if !data {
                idle += SHRINK_AFTER;
                if let Some(w) = self.bdp.handle_idle() {
                    self.publish(self.windows_for(w));
                }
                if idle >= self.keepalive {
                    // SPEC.md §8.1: an idle connection is probed so a dead
                    // peer is noticed.
                    if self.round_trip().await.is_none() {
                        return;
                    }
                    idle = Duration::ZERO;
                }
                continue;
            }
            idle = Duration::ZERO;
            let before = self.meter.bytes();
            let Some(rtt) = self.round_trip().await else { return };
            let bytes = self.meter.bytes() - before;
            match self.bdp.handle_sample(bytes, rtt) {
                Some(w) => {
                    gap = MIN_PING_GAP;
                    self.publish(self.windows_for(w));
                }
                None => {
                    // Measure less often while the estimate holds.
                    tokio::time::sleep(gap).await;
                    gap = (gap * 2).min(MAX_PING_GAP);
                }
            }
        }
    }

    /// One PING round trip; `None` (and the connection declared dead) when
    /// the peer does not answer within the keep-alive timeout while no data
    /// arrives either, or the connection is gone. (A PING answer can queue
    /// behind a full window on a slow link; data still arriving proves the
    /// peer alive.)
    async fn round_trip(&mut self) -> Option<Duration> {
        let start = Instant::now();
        let pong = self.ping.ping(Ping::opaque());
        let mut pong = std::pin::pin!(pong);
        loop {
            let before = self.meter.bytes();
            let r = tokio::select! {
                _ = self.dead.cancelled() => return None,
                r = tokio::time::timeout(self.keepalive_timeout, &mut pong) => r,
            };
            match r {
                Ok(Ok(_)) => return Some(start.elapsed()),
                Err(_) if self.meter.bytes() > before => continue,
                Ok(Err(_)) | Err(_) => {
                    self.dead.cancel();
                    return None;
                }
            }
        }
    }

    fn windows_for(&self, stream: u32) -> Windows {
        Windows { stream, connection: stream.max(self.initial.connection) }
    }

    fn publish(&self, w: Windows) {
        let _ = self.windows.send(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn window_limited_samples_grow_the_window_up_to_the_cap() {
        let mut bdp = BdpEstimator::new(4 << 20, 100 << 20);
        assert_eq!(bdp.handle_sample(4 << 20, 100 * MS), Some(16 << 20));
        assert_eq!(bdp.handle_sample(16 << 20, 100 * MS), Some(64 << 20));
        assert_eq!(bdp.handle_sample(64 << 20, 100 * MS), Some(100 << 20));
        assert_eq!(bdp.handle_sample(100 << 20, 100 * MS), None);
        assert_eq!(bdp.window(), 100 << 20);
    }

    #[test]
    fn pings_delayed_behind_data_on_a_short_path_do_not_grow_it() {
        // A 100 µs path whose PINGs take 10 ms behind queued data: the window
        // fills, but the path's BDP is tiny.
        let mut bdp = BdpEstimator::new(4 << 20, 128 << 20);
        assert_eq!(bdp.handle_handshake(Duration::from_micros(100)), None);
        assert_eq!(bdp.handle_sample(4 << 20, 10 * MS), None);
        assert_eq!(bdp.window(), 4 << 20);
    }

    #[test]
    fn sample_well_below_the_window_does_not_grow_it() {
        let mut bdp = BdpEstimator::new(4 << 20, 100 << 20);
        assert_eq!(bdp.handle_sample(1 << 20, 100 * MS), None);
        assert_eq!(bdp.window(), 4 << 20);
    }

    #[test]
    fn full_window_without_more_bandwidth_does_not_grow_it() {
        // The window grew, then the round trip grew with the bytes (a queue
        // filling): the link is full, the window stays.
        let mut bdp = BdpEstimator::new(4 << 20, 1 << 30);
        assert_eq!(bdp.handle_sample(4 << 20, 50 * MS), Some(16 << 20));
        assert_eq!(bdp.handle_sample(16 << 20, 200 * MS), None);
        assert_eq!(bdp.window(), 16 << 20);
    }

    #[test]
    fn idle_after_priming_returns_to_the_primed_window() {
        let mut bdp = BdpEstimator::new(4 << 20, 100 << 20);
        assert_eq!(bdp.handle_handshake(20 * MS), Some(20 << 20));
        assert_eq!(bdp.handle_sample(20 << 20, 20 * MS), Some(80 << 20));
        assert_eq!(bdp.handle_idle(), Some(20 << 20));
        assert_eq!(bdp.handle_idle(), None);
    }

    #[test]
    fn priming_is_capped() {
        let mut bdp = BdpEstimator::new(4 << 20, 100 << 20);
        assert_eq!(bdp.handle_handshake(1000 * MS), Some(100 << 20));
    }

    #[test]
    fn idle_returns_to_the_initial_window_once() {
        let mut bdp = BdpEstimator::new(4 << 20, 100 << 20);
        assert_eq!(bdp.handle_idle(), None);
        bdp.handle_sample(4 << 20, 10 * MS);
        assert_eq!(bdp.handle_idle(), Some(4 << 20));
        assert_eq!(bdp.handle_idle(), None);
        // And may grow again afterwards.
        assert_eq!(bdp.handle_sample(4 << 20, 10 * MS), Some(16 << 20));
    }

    #[test]
    fn cap_below_initial_keeps_the_initial_window() {
        let mut bdp = BdpEstimator::new(4 << 20, 1 << 20);
        assert_eq!(bdp.handle_sample(4 << 20, 10 * MS), None);
        assert_eq!(bdp.window(), 4 << 20);
    }
}

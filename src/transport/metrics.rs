//! Server metrics in the Prometheus text format, served at `GET /metrics`.
//!
//! Registered once per [`Server`](super::Server) (no global recorder, so
//! several servers in one process keep their own counts) and recorded at the
//! one place each event happens: connections in the connection task,
//! transfers in the request handler, bytes in the frame sender and receiver.
//! `prometheus-client` (the Prometheus project's own Rust client) is used
//! rather than the `metrics` facade because a library should not install a
//! process-global recorder behind its user's back.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a transfer: its mode and direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Transfer {
    /// `file`, `container` or `push`; `other` for listings and probes.
    pub(crate) mode: String,
    /// `pull` (the server sends) or `push` (the server receives).
    pub(crate) direction: String,
}

impl Transfer {
    pub(crate) fn new(mode: &str, direction: &str) -> Self {
        Transfer { mode: mode.into(), direction: direction.into() }
    }
}

/// Every metric the server records.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) started: Family<Transfer, Counter>,
    pub(crate) completed: Family<Transfer, Counter>,
    pub(crate) failed: Family<Transfer, Counter>,
    pub(crate) duration: Family<Transfer, Histogram>,
    pub(crate) bytes_sent: Counter,
    pub(crate) bytes_received: Counter,
    pub(crate) push_bytes: Counter,
    pub(crate) crc_failures: Counter,
    pub(crate) resumes: Counter,
    pub(crate) active_streams: Gauge,
    pub(crate) active_connections: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("tensorwire");
        let m = Metrics {
            started: Family::default(),
            completed: Family::default(),
            failed: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 4.0, 12))),
            bytes_sent: Counter::default(),
            bytes_received: Counter::default(),
            push_bytes: Counter::default(),
            crc_failures: Counter::default(),
            resumes: Counter::default(),
            active_streams: Gauge::default(),
            active_connections: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("transfers_started", "Transfers started", m.started.clone());
        registry.register("transfers_completed", "Transfers completed", m.completed.clone());
        registry.register("transfers_failed", "Transfers that failed or were refused", m.failed.clone());
        registry.register("request_duration_seconds", "Request duration", m.duration.clone());
        registry.register("wire_bytes_sent", "Response body bytes handed to HTTP/2", m.bytes_sent.clone());
        registry.register("wire_bytes_received", "Request body bytes received", m.bytes_received.clone());
        registry.register("push_bytes", "Item data bytes of pushes stored", m.push_bytes.clone());
        registry.register("crc_failures", "Objects received with a failed checksum", m.crc_failures.clone());
        registry.register("resumes", "Requests that resumed a transfer", m.resumes.clone());
        registry.register("active_streams", "Requests being handled", m.active_streams.clone());
        registry.register("active_connections", "Open connections", m.active_connections.clone());
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::new();
        m.started.get_or_create(&Transfer::new("file", "pull")).inc();
        m.bytes_sent.inc_by(42);
        let text = m.render();
        assert!(text.contains("tensorwire_transfers_started_total{mode=\"file\",direction=\"pull\"} 1"), "{text}");
        assert!(text.contains("tensorwire_wire_bytes_sent_total 42"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

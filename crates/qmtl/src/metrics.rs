//! Prometheus metrics and the server that exposes them on `/metrics`.
//!
//! The backfill metric names are the ones the backfill guide documents:
//! `backfill_jobs_in_progress`, `backfill_last_timestamp{node_id,interval}`,
//! `backfill_retry_total{node_id,interval}` and `backfill_failure_total{node_id,interval}`;
//! alongside them `backfill_rows_total{node_id,interval}`,
//! `backfill_duration_seconds{node_id,interval}` (per job), and the cache access metrics
//! `cache_read_total{upstream_id,interval}` and
//! `cache_last_read_timestamp{upstream_id,interval}`, and `recorder_rows_waiting`, the
//! node outputs a live run has buffered and not yet recorded.
//!
//! [`global()`] holds the process-wide set that [`start_metrics_server`] serves; tests and
//! embedders may build their own [`Metrics`] and serve it with [`serve_metrics`].

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::interval::Interval;
use crate::node::NodeId;

/// Labels of per-(node, interval) backfill metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// Hex node id.
    pub node_id: String,
    /// Interval in seconds.
    pub interval: String,
}

impl NodeLabels {
    /// Labels for `node` at `interval`.
    pub fn new(node: &NodeId, interval: Interval) -> Self {
        NodeLabels {
            node_id: node.to_string(),
            interval: interval.to_string(),
        }
    }
}

/// Labels of cache access metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// Hex id of the upstream node read.
    pub upstream_id: String,
    /// Interval in seconds.
    pub interval: String,
}

type HistogramFamily = Family<NodeLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// The metric set of one process (or one test).
pub struct Metrics {
    registry: Registry,
    /// Backfill jobs running now.
    pub jobs_in_progress: Gauge,
    /// The latest timestamp actually loaded per (node, interval).
    pub last_timestamp: Family<NodeLabels, Gauge>,
    /// Retried attempts per (node, interval).
    pub retry_total: Family<NodeLabels, Counter>,
    /// Failed jobs per (node, interval).
    pub failure_total: Family<NodeLabels, Counter>,
    /// Rows loaded per (node, interval).
    pub rows_total: Family<NodeLabels, Counter>,
    /// Job durations in seconds per (node, interval).
    pub duration_seconds: HistogramFamily,
    /// Tracked cache reads per (upstream, interval).
    pub cache_read_total: Family<UpstreamLabels, Counter<u64, AtomicU64>>,
    /// The newest bucket a tracked cache read saw per (upstream, interval).
    pub cache_last_read_timestamp: Family<UpstreamLabels, Gauge>,
    /// Node outputs buffered and not yet written by the recorder of a live run.
    pub recorder_rows_waiting: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh, registered set with every value at rest.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            jobs_in_progress: Gauge::default(),
            last_timestamp: Family::default(),
            retry_total: Family::default(),
            failure_total: Family::default(),
            rows_total: Family::default(),
            duration_seconds: HistogramFamily::new_with_constructor(duration_histogram),
            cache_read_total: Family::default(),
            cache_last_read_timestamp: Family::default(),
            recorder_rows_waiting: Gauge::default(),
        };
        // prometheus-client appends `_total` to counter names when encoding.
        registry.register(
            "backfill_jobs_in_progress",
            "Number of active backfill jobs",
            m.jobs_in_progress.clone(),
        );
        registry.register(
            "backfill_last_timestamp",
            "Latest timestamp successfully backfilled (epoch seconds)",
            m.last_timestamp.clone(),
        );
        registry.register(
            "backfill_retry",
            "Backfill retry attempts",
            m.retry_total.clone(),
        );
        registry.register(
            "backfill_failure",
            "Failed backfill jobs",
            m.failure_total.clone(),
        );
        registry.register(
            "backfill_rows",
            "Rows loaded by backfill",
            m.rows_total.clone(),
        );
        registry.register(
            "backfill_duration_seconds",
            "Duration of backfill jobs",
            m.duration_seconds.clone(),
        );
        registry.register(
            "cache_read",
            "Tracked reads of a node cache input",
            m.cache_read_total.clone(),
        );
        registry.register(
            "cache_last_read_timestamp",
            "Newest bucket seen by a tracked cache read (epoch seconds)",
            m.cache_last_read_timestamp.clone(),
        );
        registry.register(
            "recorder_rows_waiting",
            "Node outputs waiting to be recorded (grows while the database is unreachable)",
            m.recorder_rows_waiting.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The process-wide metric set served by [`start_metrics_server`].
pub fn global() -> &'static Arc<Metrics> {
    static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();
    GLOBAL.get_or_init(|| Arc::new(Metrics::new()))
}

/// Why the metrics server did not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The port is taken.
    #[error(
        "metrics port {port} on {host} is already in use; choose another with \
         --metrics-port (the gateway may already be on it)"
    )]
    PortInUse {
        /// The port.
        port: u16,
        /// The host.
        host: String,
    },
    /// Any other bind failure.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A running metrics server; stops when dropped or on [`MetricsServer::shutdown`].
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl MetricsServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves [`global()`] on `127.0.0.1:port` at `/metrics` (port 0 picks a free port).
/// Must be called inside a Tokio runtime.
///
/// # Errors
/// [`MetricsError::PortInUse`] naming the port when it is taken.
pub async fn start_metrics_server(port: u16) -> Result<MetricsServer, MetricsError> {
    serve_metrics(global().clone(), SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// Serves `metrics` on `addr` at `/metrics`.
///
/// # Errors
/// As for [`start_metrics_server`].
pub async fn serve_metrics(
    metrics: Arc<Metrics>,
    addr: SocketAddr,
) -> Result<MetricsServer, MetricsError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            MetricsError::PortInUse {
                port: addr.port(),
                host: addr.ip().to_string(),
            }
        } else {
            MetricsError::Bind { addr, source }
        }
    })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                ([(header::CONTENT_TYPE, content_type)], metrics.encode()).into_response()
            }
        }),
    );
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { signal.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, "metrics.server_stopped");
        }
    });
    tracing::info!(addr = %bound, "metrics.listening");
    Ok(MetricsServer { addr: bound, stop })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_guide_names() {
        let m = Metrics::new();
        let labels = NodeLabels {
            node_id: "abc".into(),
            interval: "60".into(),
        };
        m.last_timestamp.get_or_create(&labels).set(1_700_000_000);
        m.retry_total.get_or_create(&labels).inc();
        m.failure_total.get_or_create(&labels).inc();
        let text = m.encode();
        for want in [
            "backfill_jobs_in_progress 0",
            "backfill_last_timestamp{node_id=\"abc\",interval=\"60\"} 1700000000",
            "backfill_retry_total{node_id=\"abc\",interval=\"60\"} 1",
            "backfill_failure_total{node_id=\"abc\",interval=\"60\"} 1",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }
}

//! The gateway's own Prometheus metrics, served on `GET /metrics`.
//!
//! - `gateway_http_requests_total{route,method,status}`: requests answered, by route
//!   template (`/strategies/{id}/status`, never the raw path, so ids do not become
//!   labels; `unmatched` for unknown paths), method and status code.
//! - `gateway_http_request_duration_seconds{route}`: time to answer.
//! - `gateway_strategies_registered_total{run_type}`: successful registrations.
//! - `gateway_strategies_active`: active strategies in the store, read at each scrape
//!   (the store may be shared with other gateways).
//! - `gateway_store_up`: 1 when the store answered the last health or scrape query.
//! - `gateway_leases_expired_total`: strategies this gateway ended because their lease
//!   passed without a heartbeat.
//!
//! No label ever carries a token, a DSN or a strategy's content.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a request count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template.
    pub route: String,
    /// The HTTP method.
    pub method: String,
    /// The status code.
    pub status: String,
}

/// Labels of a request duration.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route template.
    pub route: String,
}

/// Labels of a registration count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunTypeLabels {
    /// `backtest`, `dry-run` or `live`.
    pub run_type: String,
}

type DurationFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
}

/// The gateway's metric set.
pub struct GatewayMetrics {
    registry: Registry,
    /// Requests answered.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to answer.
    pub duration: DurationFamily,
    /// Successful registrations.
    pub registered: Family<RunTypeLabels, Counter>,
    /// Active strategies.
    pub active: Gauge,
    /// Whether the store answered.
    pub store_up: Gauge,
    /// Strategies ended because their lease passed.
    pub leases_expired: Counter,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        GatewayMetrics::new()
    }
}

impl GatewayMetrics {
    /// A fresh, registered set.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = DurationFamily::new_with_constructor(duration_histogram);
        let registered = Family::<RunTypeLabels, Counter>::default();
        let active = Gauge::default();
        let store_up = Gauge::default();
        let leases_expired = Counter::default();
        // prometheus-client appends `_total` to counter names when encoding.
        registry.register(
            "gateway_http_requests",
            "HTTP requests answered by the gateway",
            requests.clone(),
        );
        registry.register(
            "gateway_http_request_duration_seconds",
            "Time the gateway took to answer",
            duration.clone(),
        );
        registry.register(
            "gateway_strategies_registered",
            "Strategies registered",
            registered.clone(),
        );
        registry.register(
            "gateway_strategies_active",
            "Active strategies in the store",
            active.clone(),
        );
        registry.register(
            "gateway_store_up",
            "1 when the store answered the last query",
            store_up.clone(),
        );
        registry.register(
            "gateway_leases_expired",
            "Strategies ended because their lease passed without a heartbeat",
            leases_expired.clone(),
        );
        GatewayMetrics {
            registry,
            requests,
            duration,
            registered,
            active,
            store_up,
            leases_expired,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

//! Backfill engine and runner behaviour through the public API: retries, failures,
//! timeouts, cancellation, chunking, the warm-up plan, and the guide's metrics scraped
//! over a real HTTP socket while a job is in flight.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use qmtl::metrics::{serve_metrics, Metrics, MetricsError};
use qmtl::strategies::{MomentumStrategy, SampleStrategy};
use qmtl::{
    BackfillConfig, CacheLoader, Interval, JobStatus, LoaderError, NodeId, RunError, Runner,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One row per interval with `value` = ts; fails its first `failures` calls; optionally
/// waits for a go signal before answering; records every requested range.
struct TestLoader {
    failures: usize,
    calls: AtomicUsize,
    retryable: bool,
    hang: bool,
    gate: Option<Arc<Notify>>,
    ranges: Mutex<Vec<(i64, i64)>>,
}

impl TestLoader {
    fn new() -> Self {
        TestLoader {
            failures: 0,
            calls: AtomicUsize::new(0),
            retryable: true,
            hang: false,
            gate: None,
            ranges: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait::async_trait]
impl CacheLoader for TestLoader {
    async fn fetch(
        &self,
        start: i64,
        end: i64,
        _node: &NodeId,
        interval: Interval,
    ) -> Result<RecordBatch, LoaderError> {
        self.ranges.lock().unwrap().push((start, end));
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
        if self.hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call < self.failures {
            let err = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset");
            return Err(if self.retryable {
                LoaderError::transient(err)
            } else {
                LoaderError::permanent(err)
            });
        }
        let ts: Vec<i64> = (interval.bucket_ceil(start)..end)
            .step_by(interval.secs() as usize)
            .collect();
        let value: Vec<f64> = ts.iter().map(|t| *t as f64).collect();
        Ok(RecordBatch::try_from_iter([
            ("ts", Arc::new(Int64Array::from(ts)) as ArrayRef),
            ("value", Arc::new(Float64Array::from(value)) as ArrayRef),
        ])
        .unwrap())
    }

    fn describe(&self) -> String {
        "test".into()
    }
}

fn fast_retries() -> BackfillConfig {
    BackfillConfig::default().backoff(Duration::from_millis(1), Duration::from_millis(5))
}

fn sample(loader: Arc<TestLoader>, metrics: Arc<Metrics>) -> Runner {
    Runner::backtest(SampleStrategy)
        .backfill_loader(None, loader)
        .backfill_start(1_700_000_000)
        .backfill_end(1_700_000_100)
        .backfill_config(fast_retries())
        .metrics(metrics)
}

fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_fails_once_is_retried_and_counted() {
    let metrics = Arc::new(Metrics::new());
    let loader = Arc::new(TestLoader {
        failures: 1,
        ..TestLoader::new()
    });
    let report = sample(loader.clone(), metrics.clone()).run().await.unwrap();

    assert!(report.succeeded());
    assert_eq!(report.jobs[0].retries, 1);
    assert_eq!(report.jobs[0].rows, 100);
    assert_eq!(loader.calls.load(Ordering::SeqCst), 2);
    let text = metrics.encode();
    assert_eq!(
        metric_value(&text, "backfill_retry_total{"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric_value(&text, "backfill_jobs_in_progress"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_always_fails_fails_its_job_and_leaves_gauges_at_rest() {
    let metrics = Arc::new(Metrics::new());
    let loader = Arc::new(TestLoader {
        failures: usize::MAX,
        ..TestLoader::new()
    });
    let report = sample(loader.clone(), metrics.clone()).run().await.unwrap();

    assert!(!report.succeeded());
    let job = &report.jobs[0];
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.retries, 3, "default max_retries");
    assert!(
        job.error.as_deref().unwrap().contains("connection reset"),
        "{job:?}"
    );
    assert_eq!(loader.calls.load(Ordering::SeqCst), 4);
    assert_eq!(report.events, 0, "no replay over incomplete history");
    let text = metrics.encode();
    assert_eq!(
        metric_value(&text, "backfill_failure_total{"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric_value(&text, "backfill_jobs_in_progress"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_is_not_retried() {
    let metrics = Arc::new(Metrics::new());
    let loader = Arc::new(TestLoader {
        failures: usize::MAX,
        retryable: false,
        ..TestLoader::new()
    });
    let report = sample(loader.clone(), metrics).run().await.unwrap();
    assert_eq!(report.jobs[0].status, JobStatus::Failed);
    assert_eq!(report.jobs[0].retries, 0);
    assert_eq!(loader.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_source_times_out_and_each_timeout_is_a_retry() {
    let metrics = Arc::new(Metrics::new());
    let loader = Arc::new(TestLoader {
        hang: true,
        ..TestLoader::new()
    });
    let config = fast_retries()
        .max_retries(2)
        .request_timeout(Some(Duration::from_millis(50)));
    let report = sample(loader, metrics.clone())
        .backfill_config(config)
        .run()
        .await
        .unwrap();
    let job = &report.jobs[0];
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.retries, 2);
    assert!(
        job.error
            .as_deref()
            .unwrap()
            .contains("did not answer within"),
        "{job:?}"
    );
    assert_eq!(
        metric_value(&metrics.encode(), "backfill_retry_total{"),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_ends_jobs_and_returns_the_gauge_to_zero() {
    let metrics = Arc::new(Metrics::new());
    let gate = Arc::new(Notify::new());
    let loader = Arc::new(TestLoader {
        gate: Some(gate),
        ..TestLoader::new()
    });
    let cancel = CancellationToken::new();
    let run = sample(loader, metrics.clone())
        .cancel_token(cancel.clone())
        .run();
    let handle = tokio::spawn(run);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        metric_value(&metrics.encode(), "backfill_jobs_in_progress"),
        Some(1.0)
    );
    cancel.cancel();
    let report = handle.await.unwrap().unwrap();
    assert_eq!(report.jobs[0].status, JobStatus::Cancelled);
    assert!(!report.succeeded());
    assert_eq!(
        metric_value(&metrics.encode(), "backfill_jobs_in_progress"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_ranges_are_fetched_in_contiguous_chunks() {
    let metrics = Arc::new(Metrics::new());
    let loader = Arc::new(TestLoader::new());
    let config = fast_retries().chunk_buckets(30);
    let report = sample(loader.clone(), metrics)
        .backfill_config(config)
        .run()
        .await
        .unwrap();
    let ranges = loader.ranges.lock().unwrap().clone();
    assert_eq!(
        ranges,
        [
            (1_700_000_000, 1_700_000_030),
            (1_700_000_030, 1_700_000_060),
            (1_700_000_060, 1_700_000_090),
            (1_700_000_090, 1_700_000_100)
        ]
    );
    assert_eq!(report.jobs[0].rows, 100);
    assert_eq!(report.events, 100);
    let out = report.node("out").unwrap();
    assert_eq!((out.outputs, out.last_ts), (100, Some(1_700_000_099)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_start_the_plan_loads_the_warm_up_window_the_dag_needs() {
    let metrics = Arc::new(Metrics::new());
    let loader = Arc::new(TestLoader::new());
    let end = 1_700_000_000 - 1_700_000_000 % 3600;
    // momentum reads "close"; the test loader emits "value", so use a renaming loader.
    let renamed = Arc::new(Renamed(loader.clone()));
    let report = Runner::backtest(MomentumStrategy::default())
        .backfill_loader(None, renamed)
        .backfill_end(end)
        .metrics(metrics)
        .run()
        .await
        .unwrap();
    // The slow average needs 30 bars; the signal is ready with the first slow output.
    assert_eq!(loader.ranges.lock().unwrap()[0], (end - 30 * 3600, end));
    for node in &report.nodes {
        assert!(
            node.ready,
            "{} not ready after its warm-up window",
            node.name
        );
    }
}

/// Serves the test loader's `value` column under every OHLCV name.
struct Renamed(Arc<TestLoader>);

#[async_trait::async_trait]
impl CacheLoader for Renamed {
    async fn fetch(
        &self,
        start: i64,
        end: i64,
        node: &NodeId,
        interval: Interval,
    ) -> Result<RecordBatch, LoaderError> {
        let batch = self.0.fetch(start, end, node, interval).await?;
        let v = batch.column(1).clone();
        let cols = ["open", "high", "low", "close", "volume"].map(|n| (n, v.clone()));
        let all = std::iter::once(("ts", batch.column(0).clone())).chain(cols);
        RecordBatch::try_from_iter(all).map_err(LoaderError::permanent)
    }
    fn describe(&self) -> String {
        "renamed".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_metrics_are_scraped_over_http_while_a_job_runs() {
    let metrics = Arc::new(Metrics::new());
    let server = serve_metrics(metrics.clone(), SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let url = format!("http://{}/metrics", server.local_addr());
    let gate = Arc::new(Notify::new());
    let loader = Arc::new(TestLoader {
        gate: Some(gate.clone()),
        ..TestLoader::new()
    });
    let config = fast_retries().chunk_buckets(60);
    let run = tokio::spawn(
        sample(loader, metrics.clone())
            .backfill_config(config)
            .run(),
    );

    // First chunk is held at the gate: one job in progress.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert_eq!(
        metric_value(&during, "backfill_jobs_in_progress"),
        Some(1.0),
        "{during}"
    );

    // Let the first chunk through, hold the second: last_timestamp is what was loaded.
    gate.notify_one();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mid = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert_eq!(
        metric_value(&mid, "backfill_last_timestamp{"),
        Some(1_700_000_059.0),
        "{mid}"
    );
    gate.notify_one();
    let report = run.await.unwrap().unwrap();
    assert!(report.succeeded());

    let after = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let id = &report.jobs[0].node_id;
    for want in [
        "backfill_jobs_in_progress 0".to_owned(),
        format!("backfill_last_timestamp{{node_id=\"{id}\",interval=\"1\"}} 1700000099"),
        format!("backfill_rows_total{{node_id=\"{id}\",interval=\"1\"}} 100"),
        format!("backfill_retry_total{{node_id=\"{id}\",interval=\"1\"}}"),
        "# TYPE backfill_failure counter".to_owned(),
        format!("backfill_duration_seconds_count{{node_id=\"{id}\",interval=\"1\"}} 1"),
    ] {
        assert!(after.contains(&want), "missing {want} in\n{after}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_metrics_port_is_an_error_naming_the_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = serve_metrics(
        Arc::new(Metrics::new()),
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, MetricsError::PortInUse { .. }));
    assert!(err.to_string().contains(&port.to_string()), "{err}");

    let loader = Arc::new(TestLoader::new());
    let err = sample(loader, Arc::new(Metrics::new()))
        .metrics_port(port)
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(err, RunError::Metrics(_)) && err.is_usage(),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ranges_and_modes_are_usage_errors() {
    let metrics = Arc::new(Metrics::new());
    let cases: Vec<(Runner, &str)> = vec![
        (
            sample(Arc::new(TestLoader::new()), metrics.clone()).backfill_start(1_700_000_100),
            "is not before end",
        ),
        (
            sample(Arc::new(TestLoader::new()), metrics.clone()).backfill_start("soon"),
            "--backfill-start: timestamp 'soon'",
        ),
        (
            Runner::dryrun(SampleStrategy).backfill_source("csv:x.csv"),
            "needs --gateway-url",
        ),
        (
            Runner::backtest(SampleStrategy)
                .backfill_start(0)
                .backfill_end(10),
            "stream 'price' has no backfill source",
        ),
        (
            Runner::backtest(SampleStrategy).backfill_source("nope=csv:x.csv"),
            "names stream 'nope'",
        ),
        (
            Runner::backtest(SampleStrategy).backfill_source("ftp:x"),
            "known schemes",
        ),
    ];
    for (runner, want) in cases {
        let err = runner.run().await.unwrap_err();
        assert!(err.is_usage(), "{err}");
        assert!(
            err.to_string().contains(want),
            "{err} should contain {want}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracked_cache_reads_feed_the_cache_metrics() {
    let metrics = Arc::new(Metrics::new());
    let report = sample(Arc::new(TestLoader::new()), metrics.clone())
        .track_cache_reads(true)
        .run()
        .await
        .unwrap();
    let stream = &report.nodes[0].node_id;
    let text = metrics.encode();
    // The pass-through node reads `latest()` of the stream once per event.
    let reads = format!("cache_read_total{{upstream_id=\"{stream}\",interval=\"1\"}} 100");
    let last =
        format!("cache_last_read_timestamp{{upstream_id=\"{stream}\",interval=\"1\"}} 1700000099");
    assert!(text.contains(&reads), "missing {reads} in\n{text}");
    assert!(text.contains(&last), "missing {last} in\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_window_counts_downstream_intervals() {
    // Regression: an hourly stream feeding a daily node used to get a window of hours.
    struct Daily;
    impl qmtl::Strategy for Daily {
        fn setup(&self, dag: &mut qmtl::DagBuilder) -> Result<qmtl::NodeRef, qmtl::DagError> {
            let bars = dag.stream_input(
                qmtl::StreamInput::new("bars")
                    .interval("1h")
                    .period(1)
                    .fields(["close"]),
            )?;
            let day = dag.node(
                qmtl::Node::new("day")
                    .input(&bars)
                    .interval("1d")
                    .fields(["close"])
                    .compute("day@1", |v| {
                        Some(qmtl::Row::one(v.input(0).latest()?.value(0)))
                    }),
            )?;
            dag.node(
                qmtl::Node::new("avg5d")
                    .input(&day)
                    .period(5)
                    .fields(["avg"])
                    .compute("avg@1", |v| {
                        let c = v.input(0).field_at(0);
                        Some(qmtl::Row::one(c.iter().sum::<f64>() / c.len() as f64))
                    }),
            )
        }
    }
    let loader = Arc::new(TestLoader::new());
    let renamed = Arc::new(Renamed(loader.clone()));
    let end = 1_700_006_400; // a midnight
    let report = Runner::backtest(Daily)
        .backfill_loader(None, renamed)
        .backfill_end(end)
        .metrics(Arc::new(Metrics::new()))
        .run()
        .await
        .unwrap();
    let (start, _) = loader.ranges.lock().unwrap()[0];
    assert!(end - start >= 5 * 86_400, "window of {}s", end - start);
    assert!(report.node("avg5d").unwrap().ready, "{:?}", report.nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_end_on_bucket_boundaries_so_no_bucket_is_split() {
    // Regression: an unaligned start split an hour between two chunks, and the earlier
    // chunk's row then won over the later one's in the same bucket.
    let loader = Arc::new(TestLoader::new());
    let renamed = Arc::new(Renamed(loader.clone()));
    Runner::backtest(MomentumStrategy::default())
        .backfill_loader(None, renamed)
        .backfill_start(1_700_000_000 + 1000)
        .backfill_end(1_700_000_000 + 50 * 3600)
        .backfill_config(fast_retries().chunk_buckets(7))
        .metrics(Arc::new(Metrics::new()))
        .run()
        .await
        .unwrap();
    let ranges = loader.ranges.lock().unwrap().clone();
    assert!(ranges.len() > 3, "{ranges:?}");
    for pair in ranges.windows(2) {
        assert_eq!(pair[0].1, pair[1].0, "contiguous");
        assert_eq!(pair[0].1 % 3600, 0, "aligned: {ranges:?}");
    }
}

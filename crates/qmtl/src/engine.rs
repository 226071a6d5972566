//! The backfill engine: one job per (node, interval) needing history, run with bounded
//! concurrency, each job's range fetched in chunks, each chunk retried with exponential
//! backoff and jitter, and every step visible in metrics, `tracing` events and a
//! progress bar.
//!
//! The engine does not know what the rows are for: each decoded chunk goes to a
//! [`ChunkSink`] (the runner merges it into caches and keeps it for replay). A failed job
//! does not stop the others; its [`JobReport`] names the error. Cancellation ends every
//! job at its next await point, and `backfill_jobs_in_progress` returns to zero however
//! a job ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batch::{decode, BatchError, Columns};
use crate::interval::Interval;
use crate::loader::{CacheLoader, LoaderError};
use crate::metrics::{Metrics, NodeLabels};
use crate::node::NodeId;
use crate::time::Timestamp;

/// The per-attempt limit used when none is set.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How the engine fetches and retries.
#[derive(Debug, Clone)]
#[must_use]
pub struct BackfillConfig {
    /// Retries after the first attempt of a chunk, and of opening each source (default 3).
    pub max_retries: usize,
    /// Jobs running at once (default 4).
    pub concurrency: usize,
    /// Buckets per chunk (default 50,000 intervals).
    pub chunk_buckets: u64,
    /// First backoff delay (default 100 ms).
    pub min_delay: Duration,
    /// Largest backoff delay (default 5 s).
    pub max_delay: Duration,
    /// Limit on one attempt (default 60 s): a fetch, or the opening of a source. An
    /// attempt that runs out is retried like any transient failure. `None`: no limit.
    pub request_timeout: Option<Duration>,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        BackfillConfig {
            max_retries: 3,
            concurrency: 4,
            chunk_buckets: 50_000,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
        }
    }
}

impl BackfillConfig {
    /// Sets the retry count.
    pub fn max_retries(mut self, n: usize) -> Self {
        self.max_retries = n;
        self
    }
    /// Sets the concurrency (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
    /// Sets the chunk size in buckets (at least 1).
    pub fn chunk_buckets(mut self, n: u64) -> Self {
        self.chunk_buckets = n.max(1);
        self
    }
    /// Sets the backoff bounds.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_delay = min;
        self.max_delay = max.max(min);
        self
    }
    /// Sets the per-attempt timeout.
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The retry schedule of one chunk or one source opening: up to `max_retries`
    /// retries, backing off from `min_delay` (doubling, with jitter) to `max_delay`.
    pub fn retry_policy(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .with_jitter()
    }
}

/// One unit of work: history for a node at an interval over `[start, end)`.
#[derive(Clone)]
pub struct BackfillJob {
    /// The node the history is for.
    pub node_id: NodeId,
    /// Its name, for people.
    pub name: String,
    /// Its interval.
    pub interval: Interval,
    /// Inclusive start.
    pub start: Timestamp,
    /// Exclusive end.
    pub end: Timestamp,
    /// The payload fields to decode.
    pub fields: Arc<[String]>,
    /// Where the rows come from.
    pub loader: Arc<dyn CacheLoader>,
    /// Only the newest this many rows of the range are needed (a warm-up-only run): the
    /// engine asks [`CacheLoader::fetch_last`] for them in one fetch, and fetches the
    /// whole range in chunks when the loader cannot select them. `None` loads the range.
    pub newest: Option<u64>,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Every chunk loaded.
    Completed,
    /// A chunk failed after its retries.
    Failed,
    /// Cancelled before completing.
    Cancelled,
}

/// The outcome of one job.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    /// Node id.
    pub node_id: NodeId,
    /// Node name.
    #[serde(skip)]
    pub name: String,
    /// Interval (seconds).
    pub interval: Interval,
    /// Requested start.
    pub start: Timestamp,
    /// Requested end (exclusive).
    pub end: Timestamp,
    /// Rows loaded.
    pub rows: u64,
    /// First loaded timestamp.
    #[serde(skip)]
    pub first_ts: Option<Timestamp>,
    /// Last loaded timestamp.
    #[serde(skip)]
    pub last_ts: Option<Timestamp>,
    /// Retried attempts.
    pub retries: u64,
    /// The ending.
    pub status: JobStatus,
    /// The last error, for a failed job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why a job that completed loaded nothing, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Receives each decoded chunk of a job, in time order within the job.
pub trait ChunkSink: Send + Sync {
    /// Takes the rows of `[start, end)` of job number `job`.
    ///
    /// # Errors
    /// A [`SinkError`]; the job fails without retry.
    fn accept(
        &self,
        job: usize,
        start: Timestamp,
        end: Timestamp,
        rows: Columns,
    ) -> Result<(), SinkError>;
}

/// Why a sink refused a chunk.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SinkError {
    /// An error with a message and its cause.
    pub fn new(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        SinkError {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// Why one chunk failed.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The loader failed.
    #[error("loader: {0}")]
    Loader(#[from] LoaderError),
    /// The batch did not fit the stream.
    #[error("batch: {0}")]
    Batch(#[from] BatchError),
    /// The sink refused the rows.
    #[error("cache: {0}")]
    Sink(#[from] SinkError),
}

impl ChunkError {
    fn is_retryable(&self) -> bool {
        matches!(self, ChunkError::Loader(e) if e.is_retryable())
    }
}

/// Keeps `backfill_jobs_in_progress` honest: up on creation, down on drop.
struct InProgress<'a>(&'a Metrics);

impl<'a> InProgress<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.jobs_in_progress.inc();
        InProgress(metrics)
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.jobs_in_progress.dec();
    }
}

/// Runs `jobs` and returns one report per job, in the jobs' order.
pub async fn run_backfill(
    jobs: Vec<BackfillJob>,
    config: &BackfillConfig,
    metrics: Arc<Metrics>,
    sink: Arc<dyn ChunkSink>,
    cancel: CancellationToken,
    progress: ProgressBar,
) -> Vec<JobReport> {
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let mut set = JoinSet::new();
    for (index, job) in jobs.iter().cloned().enumerate() {
        let (permits, metrics, sink, cancel, progress, config) = (
            permits.clone(),
            metrics.clone(),
            sink.clone(),
            cancel.clone(),
            progress.clone(),
            config.clone(),
        );
        set.spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            let report = run_job(index, &job, &config, &metrics, &*sink, &cancel, &progress).await;
            (index, report)
        });
    }
    let mut reports: Vec<Option<JobReport>> = vec![None; jobs.len()];
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((index, report)) => reports[index] = Some(report),
            Err(error) => tracing::error!(%error, "backfill.job_panicked"),
        }
    }
    progress.finish_and_clear();
    reports
        .into_iter()
        .zip(jobs)
        .map(|(r, job)| {
            r.unwrap_or_else(|| JobReport {
                error: Some("the job's task ended without a report".into()),
                ..empty_report(&job, JobStatus::Failed)
            })
        })
        .collect()
}

fn empty_report(job: &BackfillJob, status: JobStatus) -> JobReport {
    JobReport {
        node_id: job.node_id.clone(),
        name: job.name.clone(),
        interval: job.interval,
        start: job.start,
        end: job.end,
        rows: 0,
        first_ts: None,
        last_ts: None,
        retries: 0,
        status,
        error: None,
        note: None,
    }
}

/// What one fetch asks the loader for.
#[derive(Debug, Clone, Copy)]
enum Ask {
    /// Every row of the range.
    Range,
    /// The newest this many rows of the range, if the loader can select them.
    Newest(u64),
}

/// One attempt at a fetch, bounded by the request timeout. `None`: the loader cannot
/// select the newest rows, so the caller falls back to range fetches.
async fn fetch(
    job: &BackfillJob,
    (start, end): (Timestamp, Timestamp),
    ask: Ask,
    timeout: Option<Duration>,
) -> Result<Option<Columns>, ChunkError> {
    let loader = &job.loader;
    let fetch = async {
        match ask {
            Ask::Range => loader
                .fetch(start, end, &job.node_id, job.interval)
                .await
                .map(Some),
            Ask::Newest(n) => {
                loader
                    .fetch_last(start, end, n, &job.node_id, job.interval)
                    .await
            }
        }
    };
    let batch = match timeout {
        Some(after) => tokio::time::timeout(after, fetch)
            .await
            .map_err(|_| LoaderError::Timeout { after })??,
        None => fetch.await?,
    };
    match batch {
        Some(batch) => Ok(Some(decode(&batch, &job.fields, start, end)?)),
        None => Ok(None),
    }
}

/// How one fetch of a job ended.
enum Step {
    /// Rows were handed to the sink.
    Loaded,
    /// The loader cannot select the newest rows.
    Unsupported,
    /// The job failed or was cancelled; it ends here.
    Stop,
}

/// One job's fetches, with its report and its metrics' labels.
struct JobRun<'a> {
    index: usize,
    job: &'a BackfillJob,
    config: &'a BackfillConfig,
    metrics: &'a Metrics,
    labels: NodeLabels,
    sink: &'a dyn ChunkSink,
    cancel: &'a CancellationToken,
    progress: &'a ProgressBar,
    report: JobReport,
}

impl JobRun<'_> {
    /// Fetches `range` as `ask` says (retrying transient failures with backoff and
    /// jitter), hands the rows to the sink as covering `marked`, and accounts for them.
    async fn load(
        &mut self,
        (start, end): (Timestamp, Timestamp),
        ask: Ask,
        marked: (Timestamp, Timestamp),
    ) -> Step {
        let job = self.job;
        let backoff = self.config.retry_policy();
        let timeout = self.config.request_timeout;
        let mut attempt = 1u64;
        let (report, metrics, labels) = (&mut self.report, self.metrics, &self.labels);
        let fetched = (|| fetch(job, (start, end), ask, timeout))
            .retry(backoff)
            .when(ChunkError::is_retryable)
            .notify(|error, delay| {
                report.retries += 1;
                metrics.retry_total.get_or_create(labels).inc();
                tracing::warn!(
                    node_id = %job.node_id, interval = job.interval.secs(), start, end,
                    attempt, ask = ?ask, delay_ms = delay.as_millis() as u64,
                    error = %error, "backfill.retry"
                );
                attempt += 1;
            });
        let outcome = tokio::select! {
            biased;
            () = self.cancel.cancelled() => None,
            r = fetched => Some(r),
        };

        // Hand the rows over, or end the job.
        let result = match outcome {
            None => {
                self.report.status = JobStatus::Cancelled;
                tracing::info!(node_id = %job.node_id, interval = job.interval.secs(),
                    rows = self.report.rows, "backfill.cancelled");
                return Step::Stop;
            }
            Some(Ok(None)) => return Step::Unsupported,
            Some(Ok(Some(rows))) => {
                let (n, first, last) = (rows.len() as u64, rows.ts.first(), rows.ts.last());
                let (first, last) = (first.copied(), last.copied());
                self.sink
                    .accept(self.index, marked.0, marked.1, rows)
                    .map(|()| (n, first, last))
                    .map_err(ChunkError::from)
            }
            Some(Err(error)) => Err(error),
        };
        match result {
            Ok((rows, first, last)) => {
                let report = &mut self.report;
                report.rows += rows;
                report.first_ts = report.first_ts.or(first);
                if let Some(last) = last {
                    report.last_ts = Some(last);
                    self.metrics
                        .last_timestamp
                        .get_or_create(&self.labels)
                        .set(last);
                }
                self.metrics
                    .rows_total
                    .get_or_create(&self.labels)
                    .inc_by(rows);
                self.progress.inc(marked.1.saturating_sub(marked.0) as u64);
                Step::Loaded
            }
            Err(error) => {
                let what = match ask {
                    Ask::Range => format!("[{start}, {end})"),
                    Ask::Newest(n) => format!("newest {n} of [{start}, {end})"),
                };
                self.report.status = JobStatus::Failed;
                self.report.error = Some(format!("{what}: {error}"));
                self.metrics.failure_total.get_or_create(&self.labels).inc();
                tracing::error!(
                    node_id = %job.node_id, name = %job.name, interval = job.interval.secs(),
                    start, end, attempt, rows = self.report.rows, error = %error,
                    "backfill.failed"
                );
                Step::Stop
            }
        }
    }
}

async fn run_job(
    index: usize,
    job: &BackfillJob,
    config: &BackfillConfig,
    metrics: &Metrics,
    sink: &dyn ChunkSink,
    cancel: &CancellationToken,
    progress: &ProgressBar,
) -> JobReport {
    let _in_progress = InProgress::new(metrics);
    let labels = NodeLabels::new(&job.node_id, job.interval);
    let began = Instant::now();

    // Every per-node series exists from the job's start, so a scrape during the run
    // shows all of them (backfill_last_timestamp stays 0 until the first chunk lands).
    let _ = metrics.last_timestamp.get_or_create(&labels);
    let _ = metrics.retry_total.get_or_create(&labels);
    let _ = metrics.failure_total.get_or_create(&labels);
    let _ = metrics.rows_total.get_or_create(&labels);
    let mut report = empty_report(job, JobStatus::Completed);
    let span = (config.chunk_buckets.saturating_mul(job.interval.secs())).min(i64::MAX as u64);
    let span = span as i64;
    tracing::info!(
        node_id = %job.node_id, name = %job.name, interval = job.interval.secs(),
        start = job.start, end = job.end, source = %job.loader.describe(), "backfill.start"
    );

    // Fetch only where the source has rows, when it says where that is.
    let (lo, hi) = match job.loader.coverage() {
        Some((first, last)) => (job.start.max(first), job.end.min(last.saturating_add(1))),
        None => (job.start, job.end),
    };
    if lo >= hi {
        report.note = Some(match job.loader.coverage() {
            Some((first, last)) => format!(
                "no rows in [{}, {}): the source holds [{first}, {last}]",
                job.start, job.end
            ),
            None => format!("no rows in [{}, {})", job.start, job.end),
        });
        tracing::warn!(node_id = %job.node_id, name = %job.name, interval = job.interval.secs(),
            start = job.start, end = job.end, "backfill.empty_range");
        let empty = Columns {
            ts: vec![],
            values: vec![vec![]; job.fields.len()],
        };
        if let Err(error) = sink.accept(index, job.start, job.end, empty) {
            report.status = JobStatus::Failed;
            report.error = Some(error.to_string());
        }
    }

    // A warm-up-only job fetches just its newest rows when the loader can select them.
    let mut run = JobRun {
        index,
        job,
        config,
        metrics,
        labels: labels.clone(),
        sink,
        cancel,
        progress,
        report,
    };
    let mut chunk_start = lo;
    if let Some(count) = job.newest.filter(|_| lo < hi) {
        match run
            .load((lo, hi), Ask::Newest(count), (job.start, job.end))
            .await
        {
            Step::Loaded | Step::Stop => chunk_start = hi,
            Step::Unsupported => {}
        }
    }

    while chunk_start < hi {
        // Chunks end on bucket boundaries, so no bucket is split between two chunks.
        let aligned = job.interval.bucket_ceil(chunk_start.saturating_add(span));
        let chunk_end = if aligned > chunk_start {
            aligned.min(hi)
        } else {
            hi
        };
        // The first and last chunks stand for the whole requested range.
        let mark_start = if chunk_start == lo {
            job.start
        } else {
            chunk_start
        };
        let mark_end = if chunk_end == hi { job.end } else { chunk_end };
        let marked = (mark_start, mark_end);
        if let Step::Stop = run.load((chunk_start, chunk_end), Ask::Range, marked).await {
            break;
        }
        chunk_start = chunk_end;
    }
    let mut report = run.report;

    metrics
        .duration_seconds
        .get_or_create(&labels)
        .observe(began.elapsed().as_secs_f64());
    if report.status == JobStatus::Completed && report.rows == 0 && report.note.is_none() {
        report.note = Some(format!(
            "no rows in [{}, {}) for this node at interval {} in {}; check the range, the \
             node id and that ts is in epoch seconds",
            job.start,
            job.end,
            job.interval.secs(),
            job.loader.describe()
        ));
    }
    if report.status == JobStatus::Completed {
        tracing::info!(
            node_id = %job.node_id, name = %job.name, interval = job.interval.secs(),
            start = job.start, end = job.end, rows = report.rows, retries = report.retries,
            "backfill.complete"
        );
    }
    report
}

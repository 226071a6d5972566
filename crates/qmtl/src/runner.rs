//! The `Runner`: builds a strategy's DAG, plans and runs its backfill, replays history
//! through the DAG, and reports.
//!
//! Modes: `backtest` and `offline` run locally (backfill, then replay all loaded history
//! in time order across streams); a backtest given a gateway URL also registers with it
//! (run type `backtest`) and ends the registration when done. `dryrun` and `live`
//! register with a gateway, apply its queue map, backfill, replay the warm-up and then
//! process live rows until the source ends or the run is cancelled (see
//! [`crate::live`] and the private `session` module below).
//!
//! Database sources read the table `node_data` unless [`Runner::backfill_table`] names
//! another. With [`Runner::record_to`], the outputs of chosen nodes (by default the
//! strategy's target node) are kept during replay and written to a table at the end of
//! a run whose replay completed (see [`crate::recorder`]).
//!
//! Without a start and end, the range is the warm-up window the DAG needs: each stream
//! needs `period` values of its own, extended by what downstream nodes need before they
//! are ready. The window counts intervals, not trading sessions: a market that closes at
//! weekends needs an explicit, wider `backfill_start`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), qmtl::RunError> {
//! use qmtl::strategies::SampleStrategy;
//! use qmtl::Runner;
//!
//! let report = Runner::backtest(SampleStrategy)
//!     .backfill_source("csv:data/sample.csv")
//!     .backfill_start(1_700_000_000)
//!     .backfill_end(1_700_003_600)
//!     .run()
//!     .await?;
//! assert!(report.succeeded());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::Retryable;
use tokio_util::sync::CancellationToken;

use crate::batch::Columns;
use crate::cache::{BulkRows, NodeCache};
use crate::dag::{Dag, DagError, Strategy};
use crate::engine::{run_backfill, BackfillConfig, BackfillJob, ChunkSink, SinkError};
use crate::gateway_client::{GatewayClient, GatewayError, RunType};
use crate::interval::Interval;
use crate::live::{LiveError, LiveSpec};
use crate::loader::{CacheLoader, LoaderError};
use crate::metrics::{self, Metrics, MetricsError, MetricsServer, NodeLabels, UpstreamLabels};
use crate::node::{NodeSpec, NodeType};
use crate::recorder::{OutputBuffer, RecordError, RecordLimits, Recorder};
use crate::replay::{replay_merged, Executor, OnMissing, ReplayError};
use crate::report::{LiveFigures, NodeReport, Report, Timings};
use crate::sources::{SourceMap, SourceOptions, SourceSpec, SourceSpecError, DEFAULT_TABLE};
use crate::telemetry;

#[path = "session.rs"]
mod session;
use crate::time::{format_timestamp, parse_timestamp, TimeError, Timestamp};

/// How a strategy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Backfill, then replay all history locally.
    Backtest,
    /// Register with a gateway and process live rows without trading.
    Dryrun,
    /// Register with a gateway and process live rows.
    Live,
    /// Run locally without a gateway.
    Offline,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Backtest => "backtest",
            Mode::Dryrun => "dryrun",
            Mode::Live => "live",
            Mode::Offline => "offline",
        })
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "backtest" => Ok(Mode::Backtest),
            "dryrun" | "dry-run" => Ok(Mode::Dryrun),
            "live" => Ok(Mode::Live),
            "offline" => Ok(Mode::Offline),
            _ => Err(format!(
                "mode '{s}' is not one of: backtest, dryrun, live, offline"
            )),
        }
    }
}

/// A time given as epoch seconds or as text (epoch seconds or ISO-8601).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeArg {
    /// Epoch seconds.
    Seconds(Timestamp),
    /// Text to parse.
    Text(String),
}

impl From<i64> for TimeArg {
    fn from(v: i64) -> Self {
        TimeArg::Seconds(v)
    }
}
impl From<&str> for TimeArg {
    fn from(v: &str) -> Self {
        TimeArg::Text(v.to_owned())
    }
}
impl From<String> for TimeArg {
    fn from(v: String) -> Self {
        TimeArg::Text(v)
    }
}

impl TimeArg {
    fn resolve(&self, flag: &'static str) -> Result<Timestamp, RunError> {
        match self {
            TimeArg::Seconds(v) => crate::time::check_seconds(*v),
            TimeArg::Text(t) => parse_timestamp(t),
        }
        .map_err(|source| RunError::Time { flag, source })
    }
}

/// Why a run could not complete.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The strategy's DAG is invalid.
    #[error("strategy '{strategy}': {source}")]
    Dag {
        /// The strategy.
        strategy: String,
        /// The cause.
        #[source]
        source: DagError,
    },
    /// A source spec is invalid.
    #[error(transparent)]
    Spec(#[from] SourceSpecError),
    /// A start or end time is invalid.
    #[error("{flag}: {source}")]
    Time {
        /// Which flag.
        flag: &'static str,
        /// The cause.
        #[source]
        source: TimeError,
    },
    /// Start not before end.
    #[error(
        "backfill range is empty: start {start} ({start_h}) is not before end {end} ({end_h}); \
         --backfill-start must be earlier than --backfill-end"
    )]
    EmptyRange {
        /// Start.
        start: Timestamp,
        /// Start for humans.
        start_h: String,
        /// End.
        end: Timestamp,
        /// End for humans.
        end_h: String,
    },
    /// A stream has no source.
    #[error(
        "stream '{stream}' has no backfill source; give --backfill-source SPEC, or \
         --backfill-source {stream}=SPEC for this stream only"
    )]
    NoSource {
        /// The stream's name.
        stream: String,
    },
    /// A source mapping names no stream of the strategy.
    #[error(
        "--backfill-source names stream '{stream}', which the strategy lacks (streams: {known})"
    )]
    UnknownStream {
        /// The name given.
        stream: String,
        /// The strategy's streams.
        known: String,
    },
    /// A source could not be opened.
    #[error("cannot open backfill source {spec}: {source}")]
    OpenSource {
        /// The spec, without secrets.
        spec: String,
        /// The cause.
        #[source]
        source: LoaderError,
    },
    /// A source stayed unreachable (or kept timing out) through every attempt to open it.
    #[error("cannot open backfill source {spec} after {attempts} attempt(s): {source}; {hint}")]
    SourceUnavailable {
        /// The spec, without secrets.
        spec: String,
        /// Attempts made (1 + --max-retries).
        attempts: u64,
        /// What to change, for the last attempt's kind of failure.
        hint: &'static str,
        /// The last attempt's error (boxed: it keeps the enum small).
        #[source]
        source: Box<LoaderError>,
    },
    /// The run was cancelled (SIGINT/SIGTERM) while a source was still being opened.
    #[error("stopped while opening backfill source {spec} (attempt {attempts})")]
    StoppedWhileOpening {
        /// The spec, without secrets.
        spec: String,
        /// Attempts made before the stop.
        attempts: u64,
    },
    /// Node outputs could not be recorded.
    #[error("cannot record to {spec}: {source}")]
    Record {
        /// The spec, without secrets.
        spec: String,
        /// The cause.
        #[source]
        source: RecordError,
    },
    /// A node to record is not in the strategy.
    #[error("--record-nodes names node '{name}', which the strategy lacks (nodes: {known})")]
    UnknownRecordNode {
        /// The name given.
        name: String,
        /// The strategy's nodes.
        known: String,
    },
    /// Talking to the gateway failed.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// Live rows could not be had.
    #[error("live rows: {0}")]
    Live(#[from] LiveError),
    /// A node is computed by another strategy, but there is no database to read its
    /// queue from.
    #[error(
        "node '{node}' is computed by another strategy (queue {queue}), and its rows are \
         kept in the history table of a database; give --backfill-source questdb:DSN (or \
         postgres:DSN), or --record-to, naming the database that strategy records to"
    )]
    NoQueueStore {
        /// The node's name.
        node: String,
        /// The queue.
        queue: String,
    },
    /// Dryrun and live were given no gateway URL.
    #[error("mode {mode} needs --gateway-url URL (for example http://127.0.0.1:8000)")]
    GatewayRequired {
        /// The mode.
        mode: Mode,
    },
    /// The metrics server did not start.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Replay stopped.
    #[error("replay: {0}")]
    Replay(#[from] ReplayError),
    /// The report's directory does not exist.
    #[error(
        "cannot write report {path}: directory {dir} does not exist; create it or choose \
         another --report-json path"
    )]
    ReportDir {
        /// The report path.
        path: PathBuf,
        /// Its missing directory.
        dir: PathBuf,
    },
    /// The report path is a directory.
    #[error("--report-json {path} is a directory; give a file path such as {path}/report.json")]
    ReportIsDir {
        /// The path given.
        path: PathBuf,
    },
    /// A negative start or end.
    #[error("{flag} {value} is before 1970; give epoch seconds or an ISO-8601 UTC time")]
    NegativeTime {
        /// Which flag.
        flag: &'static str,
        /// The value.
        value: Timestamp,
    },
    /// The report could not be written.
    #[error("cannot write report {path}: {source}")]
    Report {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl RunError {
    /// Whether the error is a mistake in how the run was asked for (exit code 2), rather
    /// than a failure while running (exit code 1).
    pub fn is_usage(&self) -> bool {
        match self {
            RunError::OpenSource { source, .. } => source.is_input_error(),
            RunError::Record { source, .. } => source.is_usage(),
            RunError::Metrics(m) => matches!(m, MetricsError::PortInUse { .. }),
            RunError::Gateway(g) => g.is_usage(),
            RunError::Live(l) => l.is_usage(),
            RunError::Replay(_)
            | RunError::Report { .. }
            | RunError::SourceUnavailable { .. }
            | RunError::StoppedWhileOpening { .. } => false,
            _ => true,
        }
    }
}

enum SourceArg {
    Spec {
        stream: Option<String>,
        text: String,
    },
    Loader {
        stream: Option<String>,
        loader: Arc<dyn CacheLoader>,
    },
}

/// Runs a strategy; build with [`Runner::backtest`] and friends, then [`Runner::run`].
#[must_use]
pub struct Runner {
    strategy: Arc<dyn Strategy>,
    strategy_name: String,
    mode: Mode,
    gateway_url: Option<String>,
    sources: Vec<SourceArg>,
    start: Option<TimeArg>,
    end: Option<TimeArg>,
    on_missing: OnMissing,
    config: BackfillConfig,
    metrics: Option<Arc<Metrics>>,
    metrics_port: Option<u16>,
    report_json: Option<PathBuf>,
    print_plan: bool,
    track_reads: bool,
    cancel: CancellationToken,
    backfill_table: Option<String>,
    record: Option<RecordSettings>,
    record_limits: RecordLimits,
    gateway_token: Option<String>,
    live: LiveSpec,
    poll_interval: Duration,
}

/// Where and what [`Runner::record_to`] records.
#[derive(Debug, Clone)]
struct RecordSettings {
    spec: String,
    table: String,
    nodes: Vec<String>,
}

/// One planned backfill: a stream, its range and where its rows come from.
#[derive(Debug, Clone)]
pub struct PlanEntry {
    /// Stream name.
    pub name: String,
    /// Stream id.
    pub node_id: String,
    /// Interval.
    pub interval: Interval,
    /// Start (inclusive).
    pub start: Timestamp,
    /// End (exclusive).
    pub end: Timestamp,
    /// Source description.
    pub source: String,
}

impl Runner {
    /// A runner for `strategy` in `mode`.
    pub fn new(mode: Mode, strategy: impl Strategy + 'static) -> Runner {
        Runner::from_arc(mode, Arc::new(strategy))
    }

    /// A runner for a shared strategy.
    pub fn from_arc(mode: Mode, strategy: Arc<dyn Strategy>) -> Runner {
        Runner {
            strategy,
            strategy_name: "strategy".into(),
            mode,
            gateway_url: None,
            sources: Vec::new(),
            start: None,
            end: None,
            on_missing: OnMissing::Skip,
            config: BackfillConfig::default(),
            metrics: None,
            metrics_port: None,
            report_json: None,
            print_plan: false,
            track_reads: false,
            cancel: CancellationToken::new(),
            backfill_table: None,
            record: None,
            record_limits: RecordLimits::default(),
            gateway_token: None,
            live: LiveSpec::Table,
            poll_interval: crate::live::table::DEFAULT_POLL_INTERVAL,
        }
    }

    /// Backtest mode.
    pub fn backtest(strategy: impl Strategy + 'static) -> Runner {
        Runner::new(Mode::Backtest, strategy)
    }
    /// Dry-run mode (needs a gateway).
    pub fn dryrun(strategy: impl Strategy + 'static) -> Runner {
        Runner::new(Mode::Dryrun, strategy)
    }
    /// Live mode (needs a gateway).
    pub fn live(strategy: impl Strategy + 'static) -> Runner {
        Runner::new(Mode::Live, strategy)
    }
    /// Offline mode.
    pub fn offline(strategy: impl Strategy + 'static) -> Runner {
        Runner::new(Mode::Offline, strategy)
    }

    /// The name used in logs and the report.
    pub fn strategy_name(mut self, name: impl Into<String>) -> Self {
        self.strategy_name = name.into();
        self
    }
    /// The gateway URL (`http://HOST:PORT`).
    pub fn gateway_url(mut self, url: impl Into<String>) -> Self {
        self.gateway_url = Some(url.into());
        self
    }
    /// The bearer token the gateway requires, if any.
    pub fn gateway_token(mut self, token: Option<String>) -> Self {
        self.gateway_token = token;
        self
    }
    /// Where dryrun and live rows come from after the warm-up (default: follow the
    /// history table).
    pub fn live_source(mut self, spec: LiveSpec) -> Self {
        self.live = spec;
        self
    }
    /// How often the table is polled for live rows (default 1 s).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }
    /// A source spec for every stream (`csv:PATH`), or `NAME=SPEC` for one stream.
    pub fn backfill_source(mut self, spec: impl Into<String>) -> Self {
        self.sources.push(SourceArg::Spec {
            stream: None,
            text: spec.into(),
        });
        self
    }
    /// A source spec for the stream named `stream`.
    pub fn backfill_source_for(mut self, stream: &str, spec: impl Into<String>) -> Self {
        let stream = Some(stream.to_owned());
        self.sources.push(SourceArg::Spec {
            stream,
            text: spec.into(),
        });
        self
    }
    /// A loader object for every stream (`stream` None) or for one stream.
    pub fn backfill_loader(mut self, stream: Option<&str>, loader: Arc<dyn CacheLoader>) -> Self {
        let stream = stream.map(str::to_owned);
        self.sources.push(SourceArg::Loader { stream, loader });
        self
    }
    /// Start of the history range (inclusive): epoch seconds or ISO-8601.
    pub fn backfill_start(mut self, t: impl Into<TimeArg>) -> Self {
        self.start = Some(t.into());
        self
    }
    /// End of the history range (exclusive): epoch seconds or ISO-8601.
    pub fn backfill_end(mut self, t: impl Into<TimeArg>) -> Self {
        self.end = Some(t.into());
        self
    }
    /// What nodes do at gaps.
    pub fn on_missing(mut self, policy: OnMissing) -> Self {
        self.on_missing = policy;
        self
    }
    /// Retry, concurrency and chunking settings.
    pub fn backfill_config(mut self, config: BackfillConfig) -> Self {
        self.config = config;
        self
    }
    /// The metric set to update (default: [`metrics::global`]).
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
    /// Serves the metrics on `127.0.0.1:port` for the length of the run.
    pub fn metrics_port(mut self, port: u16) -> Self {
        self.metrics_port = Some(port);
        self
    }
    /// Writes the report as JSON to `path`.
    pub fn report_json(mut self, path: impl Into<PathBuf>) -> Self {
        self.report_json = Some(path.into());
        self
    }
    /// Prints the backfill plan to stdout before loading.
    pub fn print_plan(mut self, on: bool) -> Self {
        self.print_plan = on;
        self
    }
    /// Counts compute functions' cache reads into `cache_read_total`.
    pub fn track_cache_reads(mut self, on: bool) -> Self {
        self.track_reads = on;
        self
    }
    /// A token that cancels the run (backfill jobs stop at their next await point).
    pub fn cancel_token(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// The table database sources (`questdb:`, `postgres:`) read; default `node_data`.
    pub fn backfill_table(mut self, table: impl Into<String>) -> Self {
        self.backfill_table = Some(table.into());
        self
    }
    /// Records node outputs to the database `spec` (`questdb:DSN` or `postgres:DSN`),
    /// in the table `node_data` unless [`Runner::record_table`] names another.
    pub fn record_to(mut self, spec: impl Into<String>) -> Self {
        let settings = self.record.get_or_insert_with(|| RecordSettings {
            spec: String::new(),
            table: DEFAULT_TABLE.to_owned(),
            nodes: Vec::new(),
        });
        settings.spec = spec.into();
        self
    }
    /// The table [`Runner::record_to`] writes (created when missing).
    pub fn record_table(mut self, table: impl Into<String>) -> Self {
        if let Some(settings) = &mut self.record {
            settings.table = table.into();
        } else {
            self.record = Some(RecordSettings {
                spec: String::new(),
                table: table.into(),
                nodes: Vec::new(),
            });
        }
        self
    }
    /// The nodes whose outputs [`Runner::record_to`] writes, by name (default: the
    /// strategy's target node).
    pub fn record_nodes<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let nodes = names.into_iter().map(Into::into).collect();
        match &mut self.record {
            Some(settings) => settings.nodes = nodes,
            None => {
                self.record = Some(RecordSettings {
                    spec: String::new(),
                    table: DEFAULT_TABLE.to_owned(),
                    nodes,
                })
            }
        }
        self
    }

    /// How a dryrun or live run's recorder rides out a database outage: when the warm-up
    /// and the live loop wait for it, and when the run fails (default
    /// [`RecordLimits::default`]; an attempt to write is given at most the
    /// [`BackfillConfig::request_timeout`] too).
    pub fn record_limits(mut self, limits: RecordLimits) -> Self {
        self.record_limits = limits;
        self
    }

    /// Builds the DAG without running anything.
    ///
    /// # Errors
    /// [`RunError::Dag`].
    pub fn dag(&self) -> Result<Dag, RunError> {
        Dag::build(&*self.strategy).map_err(|source| RunError::Dag {
            strategy: self.strategy_name.clone(),
            source,
        })
    }

    /// Runs the strategy. A backfill job that fails after its retries does not make this
    /// an error: the report's [`Report::succeeded`] is false and the failed jobs carry
    /// their last error (replay is skipped, since it would see incomplete history).
    ///
    /// # Errors
    /// [`RunError`] for invalid input ([`RunError::is_usage`]) and for failures that stop
    /// the run as a whole.
    pub async fn run(self) -> Result<Report, RunError> {
        let dag = self.dag()?;

        // A report that cannot be written is found out now, not after the work.
        if let Some(path) = &self.report_json {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir.filter(|d| !d.is_dir()) {
                return Err(RunError::ReportDir {
                    path: path.clone(),
                    dir: dir.to_path_buf(),
                });
            }
            if path.is_dir() {
                return Err(RunError::ReportIsDir { path: path.clone() });
            }
        }

        // Dryrun and live run registered; a backtest with a URL registers around the run.
        match (self.mode, self.gateway_url.clone()) {
            (Mode::Dryrun | Mode::Live, None) => Err(RunError::GatewayRequired { mode: self.mode }),
            (Mode::Dryrun | Mode::Live, Some(_)) => session::run(self, dag).await,
            (Mode::Backtest, Some(url)) => {
                let client = GatewayClient::new(&url)?.token(self.gateway_token.clone());
                let registration = client.register(&dag, RunType::Backtest).await?;
                let id = registration.strategy_id.clone();
                let heartbeat = client.keep_alive(&registration);
                let result = self.run_local(dag).await;
                drop(heartbeat);
                session::end_registration(&client, &id).await;
                result.map(|mut report| {
                    report.live.strategy_id = Some(id);
                    report
                })
            }
            (_, url) => {
                if let Some(url) = url {
                    tracing::warn!(
                        gateway_url = %crate::secret::redact_dsn(&url), mode = %self.mode,
                        "gateway.ignored_in_local_mode"
                    );
                }
                self.run_local(dag).await
            }
        }
    }

    /// Backfills, then replays all history locally.
    async fn run_local(self, dag: Dag) -> Result<Report, RunError> {
        // Check the range.
        let (explicit_start, end) = self.resolve_range()?;
        let warmup = warmup_spans(&dag);

        // Resolve a loader per stream, opening each distinct spec once.
        let (loaders, open_retries) = self.open_sources_counted(&dag).await?;
        let mut recording = self.open_recorder(&dag).await?;

        // Plan one job per stream.
        let mut plan = Vec::new();
        let mut jobs = Vec::new();
        for (spec, loader) in dag.streams().zip(&loaders) {
            let span = warmup.get(&spec.id).copied().unwrap_or(0);
            let start = explicit_start.unwrap_or_else(|| end.saturating_sub(span));
            if start >= end {
                return Err(RunError::EmptyRange {
                    start,
                    start_h: format_timestamp(start),
                    end,
                    end_h: format_timestamp(end),
                });
            }
            plan.push(PlanEntry {
                name: spec.name.clone(),
                node_id: spec.id.to_string(),
                interval: spec.interval,
                start,
                end,
                source: loader.describe(),
            });
            jobs.push(BackfillJob {
                node_id: spec.id.clone(),
                name: spec.name.clone(),
                interval: spec.interval,
                start,
                end,
                fields: spec.fields.clone().into(),
                loader: loader.clone(),
                newest: None,
            });
        }
        self.show_plan(&plan);

        // Serve metrics for the length of the run.
        let (metrics, _server) = self.serve_metrics().await?;

        // Backfill: merge each chunk into the stream's cache and keep it for replay.
        let began = Instant::now();
        let stream_indices: Vec<usize> = dag
            .nodes()
            .iter()
            .enumerate()
            .filter(|(_, n)| n.node_type == NodeType::StreamInput)
            .map(|(i, _)| i)
            .collect();
        let sink = Arc::new(HistorySink::new(&dag, &stream_indices, true));
        let mut job_reports = self.backfill(jobs, &metrics, sink.clone()).await;
        for (job, retries) in job_reports.iter_mut().zip(open_retries) {
            job.retries += retries;
        }
        let backfill_s = began.elapsed().as_secs_f64();

        // Replay history through the DAG when every job completed.
        let mut exec = Executor::new(&dag, self.on_missing);
        exec.set_cancel(self.cancel.clone());
        exec.track_reads(self.track_reads);
        if let Some((_, buffer, _)) = &recording {
            exec.set_output_sink(Box::new(buffer.clone()));
        }
        let (caches, history) = sink.take();
        for (&index, cache) in stream_indices.iter().zip(caches) {
            *exec.cache_mut(index) = cache;
        }
        let all_completed = job_reports
            .iter()
            .all(|j| j.status == crate::JobStatus::Completed);
        let began = Instant::now();
        let mut events = 0;
        let mut replay_error = None;
        if all_completed {
            let streams: Vec<(usize, &Columns)> =
                stream_indices.iter().copied().zip(history.iter()).collect();
            match replay_merged(&mut exec, &streams) {
                Ok(n) => events = n,
                Err(e) => replay_error = Some(e),
            }
        }
        let replay_s = began.elapsed().as_secs_f64();
        let replayed = all_completed && replay_error.is_none();
        if let (Some((recorder, buffer, spec)), true) = (&mut recording, replayed) {
            record_outputs(recorder, buffer, spec).await?;
        }
        if self.track_reads {
            export_cache_reads(&exec, &metrics);
        }

        // Report.
        let report = build_report(
            &self.strategy_name,
            self.mode,
            &exec,
            job_reports,
            events,
            Timings {
                backfill_s,
                replay_s,
            },
        );
        for job in report.failed_jobs() {
            tracing::error!(
                node_id = %job.node_id, name = %job.name, interval = job.interval.secs(),
                start = job.start, end = job.end, status = ?job.status,
                error = job.error.as_deref().unwrap_or(""), "backfill.summary_failed"
            );
        }
        tracing::info!(
            strategy = %self.strategy_name, mode = %self.mode, events,
            backfill_s, replay_s, succeeded = report.succeeded(), "run.complete"
        );
        for job in report.jobs.iter().filter(|j| j.note.is_some()) {
            tracing::warn!(
                node_id = %job.node_id, name = %job.name,
                note = job.note.as_deref().unwrap_or(""), "backfill.note"
            );
        }
        if let Some(path) = &self.report_json {
            report.write_json(path).map_err(|source| RunError::Report {
                path: path.clone(),
                source,
            })?;
        }
        match replay_error {
            Some(e) => Err(e.into()),
            None => Ok(report),
        }
    }

    /// The explicit start, if any, and the end (now when not given).
    fn resolve_range(&self) -> Result<(Option<Timestamp>, Timestamp), RunError> {
        let resolve = |t: &Option<TimeArg>, flag| -> Result<Option<Timestamp>, RunError> {
            let value = t.as_ref().map(|t| t.resolve(flag)).transpose()?;
            match value {
                Some(value) if value < 0 => Err(RunError::NegativeTime { flag, value }),
                other => Ok(other),
            }
        };
        let start = resolve(&self.start, "--backfill-start")?;
        let end = resolve(&self.end, "--backfill-end")?.unwrap_or_else(crate::time::now);
        Ok((start, end))
    }

    /// Runs the backfill jobs with this run's settings, progress bar and cancel token.
    async fn backfill(
        &self,
        jobs: Vec<BackfillJob>,
        metrics: &Arc<Metrics>,
        sink: Arc<dyn ChunkSink>,
    ) -> Vec<crate::JobReport> {
        let total: u64 = jobs.iter().map(|j| (j.end - j.start).max(0) as u64).sum();
        let bar = telemetry::progress_bar(total, "backfill");
        run_backfill(
            jobs,
            &self.config,
            metrics.clone(),
            sink,
            self.cancel.clone(),
            bar,
        )
        .await
    }

    /// The metric set in use, and its server when a port was asked for.
    async fn serve_metrics(&self) -> Result<(Arc<Metrics>, Option<MetricsServer>), RunError> {
        let metrics = self
            .metrics
            .clone()
            .unwrap_or_else(|| metrics::global().clone());
        let server = match self.metrics_port {
            Some(port) => {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                Some(metrics::serve_metrics(metrics.clone(), addr).await?)
            }
            None => None,
        };
        Ok((metrics, server))
    }

    async fn open_sources(&self, dag: &Dag) -> Result<Vec<Arc<dyn CacheLoader>>, RunError> {
        let (loaders, _) = self.open_sources_counted(dag).await?;
        Ok(loaders)
    }

    /// A loader per stream of `dag`, in stream order, and the retries opening each
    /// stream's source took (counted for every stream a source feeds).
    async fn open_sources_counted(
        &self,
        dag: &Dag,
    ) -> Result<(Vec<Arc<dyn CacheLoader>>, Vec<u64>), RunError> {
        let names: Vec<&str> = dag.streams().map(|s| s.name.as_str()).collect();
        let mut texts = Vec::new();
        let mut objects: Vec<(Option<&str>, &Arc<dyn CacheLoader>)> = Vec::new();
        for arg in &self.sources {
            match arg {
                SourceArg::Spec { stream: None, text } => texts.push(text.clone()),
                SourceArg::Spec {
                    stream: Some(s),
                    text,
                } => texts.push(format!("{s}={text}")),
                SourceArg::Loader { stream, loader } => objects.push((stream.as_deref(), loader)),
            }
        }
        let map = SourceMap::parse(&texts)?;
        let mapped = map.by_stream.iter().map(|(n, _)| n.as_str());
        for stream in mapped.chain(objects.iter().filter_map(|(s, _)| *s)) {
            if !names.contains(&stream) {
                return Err(RunError::UnknownStream {
                    stream: stream.to_owned(),
                    known: names.join(", "),
                });
            }
        }

        let options = SourceOptions {
            table: self
                .backfill_table
                .clone()
                .unwrap_or_else(|| DEFAULT_TABLE.to_owned()),
        };
        // Pick each stream's loader object or spec.
        let mut chosen: Vec<Result<Arc<dyn CacheLoader>, &SourceSpec>> = Vec::new();
        for &name in &names {
            let object = objects
                .iter()
                .find(|(s, _)| *s == Some(name))
                .or_else(|| objects.iter().find(|(s, _)| s.is_none()));
            let by_map = map
                .by_stream
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s);
            chosen.push(match (by_map, object, map.default.as_ref()) {
                (Some(spec), _, _) | (None, None, Some(spec)) => Err(spec),
                (None, Some((_, loader)), _) => Ok((*loader).clone()),
                (None, None, None) => {
                    return Err(RunError::NoSource {
                        stream: name.to_owned(),
                    })
                }
            });
        }

        // Open each distinct spec once, retrying with the backfill's budget; its retries
        // count for every (node, interval) it feeds.
        let metrics = self
            .metrics
            .clone()
            .unwrap_or_else(|| metrics::global().clone());
        let streams: Vec<NodeLabels> = dag
            .streams()
            .map(|s| NodeLabels::new(&s.id, s.interval))
            .collect();
        let mut opened: HashMap<&SourceSpec, (Arc<dyn CacheLoader>, u64)> = HashMap::new();
        for spec in chosen.iter().filter_map(|c| c.as_ref().err()) {
            if opened.contains_key(*spec) {
                continue;
            }
            let fed: Vec<&NodeLabels> = chosen
                .iter()
                .zip(&streams)
                .filter(|(c, _)| c.as_ref().err() == Some(spec))
                .map(|(_, labels)| labels)
                .collect();
            let retry = OpenRetry {
                config: &self.config,
                metrics: &metrics,
                fed: &fed,
                cancel: &self.cancel,
            };
            opened.insert(spec, retry.open(spec, &options).await?);
        }
        let mut loaders = Vec::new();
        let mut retries = Vec::new();
        for choice in &chosen {
            let (loader, n) = match choice {
                Ok(loader) => (loader.clone(), 0),
                Err(spec) => opened[spec].clone(),
            };
            loaders.push(loader);
            retries.push(n);
        }

        // Each source must hold every field its stream reads.
        for (stream, loader) in dag.streams().zip(&loaders) {
            loader
                .check_fields(&stream.fields)
                .map_err(|source| RunError::OpenSource {
                    spec: loader.describe(),
                    source,
                })?;
        }
        Ok((loaders, retries))
    }

    /// Connects the recorder, if one was asked for, and picks the nodes to record.
    async fn open_recorder(
        &self,
        dag: &Dag,
    ) -> Result<Option<(Recorder, OutputBuffer, String)>, RunError> {
        let Some(settings) = self.record.as_ref().filter(|s| !s.spec.is_empty()) else {
            return Ok(None);
        };
        let nodes: Vec<&NodeSpec> = if settings.nodes.is_empty() {
            vec![dag.target()]
        } else {
            let mut chosen = Vec::new();
            for name in &settings.nodes {
                let found = dag.nodes().iter().find(|n| n.name == *name);
                chosen.push(found.ok_or_else(|| {
                    RunError::UnknownRecordNode {
                        name: name.clone(),
                        known: dag
                            .nodes()
                            .iter()
                            .map(|n| n.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                })?);
            }
            chosen
        };
        let spec = match settings.spec.parse::<SourceSpec>() {
            Ok(spec) => spec.to_string(),
            Err(source) => {
                return Err(RunError::Record {
                    spec: "the --record-to spec".into(),
                    source: source.into(),
                })
            }
        };
        let recorder = Recorder::open(&settings.spec, &settings.table)
            .await
            .map_err(|source| RunError::Record {
                spec: spec.clone(),
                source,
            })?;
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        tracing::info!(
            target_spec = %spec, table = %settings.table, nodes = %names.join(","),
            "record.plan"
        );
        Ok(Some((recorder, OutputBuffer::new(&nodes), spec)))
    }

    fn show_plan(&self, plan: &[PlanEntry]) {
        for p in plan {
            tracing::info!(
                name = %p.name, node_id = %p.node_id, interval = p.interval.secs(),
                start = p.start, end = p.end, source = %p.source, "backfill.plan"
            );
        }
        if self.print_plan {
            println!("backfill plan ({} {}):", self.strategy_name, self.mode);
            for p in plan {
                println!(
                    "  {} [{}] interval {} range [{}, {}) = [{}, {}) source {}",
                    p.name,
                    &p.node_id[..12],
                    p.interval.human(),
                    p.start,
                    p.end,
                    format_timestamp(p.start),
                    format_timestamp(p.end),
                    p.source
                );
            }
        }
    }
}

/// Opens `spec` once per run (no retries: the stream sources of a run go through
/// [`OpenRetry`]).
async fn open_once(
    opened: &mut HashMap<SourceSpec, Arc<dyn CacheLoader>>,
    spec: &SourceSpec,
    options: &SourceOptions,
) -> Result<Arc<dyn CacheLoader>, RunError> {
    if let Some(loader) = opened.get(spec) {
        return Ok(loader.clone());
    }
    let loader = spec
        .open_with(options)
        .await
        .map_err(|source| RunError::OpenSource {
            spec: spec.to_string(),
            source,
        })?;
    opened.insert(spec.clone(), loader.clone());
    Ok(loader)
}

/// Opening a source with the backfill's retry budget.
///
/// Opening is one operation with the budget of one chunk: the first attempt and up to
/// [`BackfillConfig::max_retries`] retries, backing off from
/// [`BackfillConfig::min_delay`] (doubling, with jitter) to
/// [`BackfillConfig::max_delay`]; each attempt (connect, table checks) is bounded by
/// [`BackfillConfig::request_timeout`]. Only errors [`LoaderError::is_retryable`] calls
/// transient are retried (a refused or dropped connection, a timed-out attempt); a wrong
/// password or a missing table fails at once. A cancellation ends the wait at once,
/// mid-attempt or mid-backoff, with [`RunError::StoppedWhileOpening`].
struct OpenRetry<'a> {
    config: &'a BackfillConfig,
    metrics: &'a Metrics,
    /// The (node, interval) pairs the source feeds, whose retry counters count.
    fed: &'a [&'a NodeLabels],
    /// The run's cancellation: no retry starts once it fires.
    cancel: &'a CancellationToken,
}

impl OpenRetry<'_> {
    /// The opened loader and the retries it took.
    async fn open(
        &self,
        spec: &SourceSpec,
        options: &SourceOptions,
    ) -> Result<(Arc<dyn CacheLoader>, u64), RunError> {
        let backoff = self.config.retry_policy();
        let timeout = self.config.request_timeout;
        let attempt = || async {
            match timeout {
                Some(after) => tokio::time::timeout(after, spec.open_with(options))
                    .await
                    .map_err(|_| LoaderError::Timeout { after })?,
                None => spec.open_with(options).await,
            }
        };
        // A run cancelled before it started still opens its sources once (without
        // retries); a cancellation during the wait ends it at once.
        let cancelled_before = self.cancel.is_cancelled();
        let mut retries = 0u64;
        let opened = attempt
            .retry(backoff)
            .when(|e| e.is_retryable() && !self.cancel.is_cancelled())
            .notify(|error, delay| {
                retries += 1;
                for labels in self.fed {
                    self.metrics.retry_total.get_or_create(labels).inc();
                }
                tracing::warn!(
                    source = %spec, attempt = retries, delay_ms = delay.as_millis() as u64,
                    error = %error, "source.open_retry"
                );
            });
        let opened = if cancelled_before {
            opened.await
        } else {
            tokio::select! {
                opened = opened => opened,
                () = self.cancel.cancelled() => {
                    return Err(RunError::StoppedWhileOpening {
                        spec: spec.to_string(),
                        attempts: retries + 1,
                    })
                }
            }
        };
        match opened {
            Ok(loader) => Ok((loader, retries)),
            Err(source) if source.is_retryable() => Err(RunError::SourceUnavailable {
                spec: spec.to_string(),
                attempts: retries + 1,
                hint: open_hint(&source),
                source: Box::new(source),
            }),
            Err(source) => Err(RunError::OpenSource {
                spec: spec.to_string(),
                source,
            }),
        }
    }
}

/// What to change when a source could not be opened, for the kind of the last failure.
fn open_hint(error: &LoaderError) -> &'static str {
    match error {
        LoaderError::Timeout { .. } => {
            "raise --request-timeout if the server is slow to answer, or --max-retries to \
             wait longer for it"
        }
        // Its own message already names connect_timeout.
        LoaderError::ConnectTimeout { .. } => "or raise --max-retries to wait longer for it",
        _ => "raise --max-retries to wait longer for the server",
    }
}

/// Writes what the chosen nodes emitted during replay.
async fn record_outputs(
    recorder: &mut Recorder,
    buffer: &OutputBuffer,
    spec: &str,
) -> Result<(), RunError> {
    let fail = |source| RunError::Record {
        spec: spec.to_owned(),
        source,
    };
    recorder
        .persist_recorded(&buffer.take())
        .await
        .map_err(fail)?;
    tracing::info!(target_spec = %spec, rows = recorder.written(), "record.complete");
    Ok(())
}

/// Seconds of history each stream must supply before every node downstream of it is
/// ready, counted in each node's own interval: a node of period `p` needs `p` distinct
/// buckets of each input, which an input at interval `i` yields over `(p - 1) × i`
/// seconds after its first output. One interval of the slowest node on the way is added
/// for bucket alignment.
pub(crate) fn warmup_spans(dag: &Dag) -> HashMap<crate::NodeId, i64> {
    let nodes = dag.nodes();
    let mut ready = vec![0i64; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        if n.node_type != NodeType::StreamInput {
            let fill = |u: usize| (n.period as i64 - 1) * nodes[u].interval.secs_i64();
            ready[i] = n
                .input_indices
                .iter()
                .map(|&u| ready[u] + fill(u))
                .max()
                .unwrap_or(0);
        }
    }
    let mut out = HashMap::new();
    for (s, stream) in nodes.iter().enumerate() {
        if stream.node_type != NodeType::StreamInput {
            continue;
        }
        let own = stream.period as i64 * stream.interval.secs_i64();
        let mut reach = vec![false; nodes.len()];
        reach[s] = true;
        let mut span = own;
        for (i, n) in nodes.iter().enumerate().skip(s + 1) {
            if n.input_indices.iter().any(|&u| reach[u]) {
                reach[i] = true;
                let slack = n.interval.secs_i64().max(stream.interval.secs_i64());
                span = span.max(ready[i] + slack);
            }
        }
        out.insert(stream.id.clone(), span);
    }
    out
}

/// Merges chunks into stream caches and keeps the rows for replay.
struct HistorySink {
    state: Mutex<(Vec<NodeCache>, Vec<Columns>)>,
    specs: Vec<NodeSpec>,
    keep: bool,
}

impl HistorySink {
    fn new(dag: &Dag, streams: &[usize], keep: bool) -> Self {
        let specs: Vec<NodeSpec> = streams.iter().map(|&i| dag.nodes()[i].clone()).collect();
        let caches = specs.iter().map(NodeCache::for_stream).collect();
        let history = specs
            .iter()
            .map(|s| Columns {
                ts: Vec::new(),
                values: vec![Vec::new(); s.fields.len()],
            })
            .collect();
        HistorySink {
            state: Mutex::new((caches, history)),
            specs,
            keep,
        }
    }

    fn take(&self) -> (Vec<NodeCache>, Vec<Columns>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *state)
    }
}

impl ChunkSink for HistorySink {
    fn accept(
        &self,
        job: usize,
        start: Timestamp,
        end: Timestamp,
        rows: Columns,
    ) -> Result<(), SinkError> {
        let spec = &self.specs[job];
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (caches, history) = &mut *state;
        let columns: Vec<&[f64]> = rows.values.iter().map(Vec::as_slice).collect();
        let bulk = BulkRows {
            ts: &rows.ts,
            columns: &columns,
        };
        caches[job]
            .backfill_bulk(&spec.id, spec.interval, bulk, (start, end))
            .map_err(|e| SinkError::new(format!("merging into node '{}'", spec.name), e))?;
        if self.keep {
            let kept = &mut history[job];
            kept.ts.extend_from_slice(&rows.ts);
            for (into, from) in kept.values.iter_mut().zip(&rows.values) {
                into.extend_from_slice(from);
            }
        }
        Ok(())
    }
}

fn export_cache_reads(exec: &Executor, metrics: &Metrics) {
    for index in 0..exec.nodes().len() {
        for input in exec.cache(index).inputs() {
            let labels = UpstreamLabels {
                upstream_id: input.upstream().to_string(),
                interval: input.ring().interval().to_string(),
            };
            metrics
                .cache_read_total
                .get_or_create(&labels)
                .inc_by(input.reads());
            if let Some(ts) = input.last_read() {
                metrics
                    .cache_last_read_timestamp
                    .get_or_create(&labels)
                    .set(ts);
            }
        }
    }
}

fn build_report(
    strategy: &str,
    mode: Mode,
    exec: &Executor,
    jobs: Vec<crate::JobReport>,
    events: u64,
    timings: Timings,
) -> Report {
    let nodes = exec
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let stats = exec.stats(i);
            let cache = exec.cache(i);
            let loaded = jobs.iter().filter(|j| j.node_id == spec.id);
            let is_stream = spec.node_type == NodeType::StreamInput;
            let (rows, first, last) = if is_stream {
                loaded.fold(
                    (0, None, None),
                    |(r, f, l): (u64, Option<i64>, Option<i64>), j| {
                        (r + j.rows, f.or(j.first_ts), j.last_ts.or(l))
                    },
                )
            } else {
                (0, stats.first_ts, stats.last_ts)
            };
            NodeReport {
                node_id: spec.id.clone(),
                name: spec.name.clone(),
                node_type: spec.node_type,
                interval: spec.interval.secs(),
                period: spec.period,
                rows_loaded: rows,
                first_ts: first,
                last_ts: last,
                ready: cache.ready(),
                gaps: cache.gaps(),
                outputs: stats.outputs,
                queue: None,
            }
        })
        .collect();
    Report {
        strategy: strategy.to_owned(),
        mode: mode.to_string(),
        nodes,
        jobs,
        events,
        timings,
        live: LiveFigures::default(),
    }
}

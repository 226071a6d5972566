//! The `qmtl` command line, as a library so that users can build their own binary with
//! their own strategies:
//!
//! ```no_run
//! use qmtl::strategies::{builtin, MomentumStrategy};
//!
//! fn main() -> std::process::ExitCode {
//!     let registry = builtin().with("momentum_fast", "5/20 averages", || MomentumStrategy {
//!         fast: 5,
//!         slow: 20,
//!     });
//!     qmtl_cli::main_with(registry)
//! }
//! ```
//!
//! Exit codes: 0 success (a dryrun or live run stopped by SIGINT/SIGTERM included), 1
//! runtime failure (a failed backfill, a replay error, an unreachable database or
//! gateway, a gateway answering 5xx or garbage, a timeout), 2 usage error (bad flags,
//! unknown strategy or stream, bad source spec, refused credentials, missing table, bad
//! source content, a gateway answering 401, 409 or 422, a bad live row).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use qmtl::batch::BatchError;
use qmtl::engine::BackfillConfig;
use qmtl::live::LiveSpec;
use qmtl::metrics::MetricsError;
use qmtl::recorder::{RecordError, Recorder};
use qmtl::sources::{SourceSpec, SourceSpecError, DEFAULT_TABLE};
use qmtl::strategies::{StrategyEntry, StrategyRegistry, UnknownStrategy};
use qmtl::{Dag, JobStatus, LoaderError, Mode, OnMissing, Report, RunError, Runner};
use signals::CancelOnSignal;

mod gateway_cmd;
mod signals;

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "qmtl",
    version,
    about = "Run strategies whose caches are backfilled with history"
)]
struct Cli {
    /// Log line format on stderr (filter with RUST_LOG, default info).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    Backtest,
    Dryrun,
    Live,
    Offline,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnMissingArg {
    Skip,
    Fail,
    Continue,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Backfill a strategy's caches and run it.
    Run(Box<RunArgs>),
    /// List the strategies this binary knows.
    Strategies,
    /// Print each node's id, name, type, interval and period.
    Nodes {
        /// Strategy name (or the guide's module:Class form).
        strategy: String,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the DAG JSON exactly as it is sent to a gateway.
    Dag {
        /// Strategy name (or the guide's module:Class form).
        strategy: String,
    },
    /// Load history (such as a CSV file) into a database table for one stream of a
    /// strategy, keyed by the stream's node id and interval, so that `qmtl run
    /// --backfill-source questdb:DSN` finds it. Rows already there for the same
    /// (node_id, interval, ts) are replaced, so importing twice is harmless.
    ///
    /// Example: qmtl import --strategy momentum --stream bars --from csv:data/eurusd_1h.csv
    /// --into questdb:postgresql://USER:PASSWORD@127.0.0.1:8812/qdb
    Import(ImportArgs),
    /// Run the gateway: strategies register their DAG here and learn which nodes other
    /// running strategies already compute. Stops cleanly on SIGINT/SIGTERM.
    Gateway(gateway_cmd::GatewayArgs),
}

#[derive(Debug, clap::Args)]
struct ImportArgs {
    /// Strategy name (or the guide's module:Class form).
    #[arg(long)]
    strategy: String,
    /// The stream (StreamInput) of the strategy the rows are for, by name.
    #[arg(long, value_name = "NAME")]
    stream: String,
    /// Where the rows come from: csv:PATH, or any backfill source spec.
    #[arg(long, value_name = "SPEC")]
    from: String,
    /// The database to write: questdb:DSN or postgres:DSN
    /// (DSN = postgresql://USER:PASSWORD@HOST:PORT/DB).
    #[arg(long, value_name = "SPEC")]
    into: String,
    /// The table to write (created when missing).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_TABLE)]
    table: String,
}

/// A mistake in the command's arguments found after parsing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Strategy name (or the guide's module:Class form, resolved by its Class part).
    strategy: String,
    /// How to run.
    #[arg(long, value_enum, default_value = "backtest")]
    mode: ModeArg,
    /// Gateway URL, http://HOST:PORT (needed by dryrun and live; a backtest given one
    /// registers as a backtest).
    #[arg(long, value_name = "URL")]
    gateway_url: Option<String>,
    /// The gateway's bearer token (or set QMTL_GATEWAY_TOKEN, which keeps it out of the
    /// process list).
    #[arg(long, value_name = "TOKEN")]
    gateway_token: Option<String>,
    /// Where dryrun and live rows come from after the warm-up: table (poll the history
    /// table), jsonl:PATH or jsonl:- (JSON lines, one row each:
    /// {"stream":"bars","ts":1700000000,"close":1.1,...}; the run ends with the input).
    #[arg(long, value_name = "SPEC", default_value = "table")]
    live_source: String,
    /// Seconds between polls of the history table for live rows.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = positive_seconds)]
    poll_interval: Duration,
    /// History source: csv:PATH, or NAME=SPEC for one stream. Repeatable.
    #[arg(long, value_name = "SPEC")]
    backfill_source: Vec<String>,
    /// Start of history, inclusive: epoch seconds or ISO-8601 UTC.
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    backfill_start: Option<String>,
    /// End of history, exclusive: epoch seconds or ISO-8601 UTC.
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    backfill_end: Option<String>,
    /// What a node does when an input skipped a bucket.
    #[arg(long, value_enum, default_value = "skip")]
    on_missing: OnMissingArg,
    /// Serve Prometheus metrics on 127.0.0.1:PORT/metrics during the run.
    #[arg(long, value_name = "PORT")]
    metrics_port: Option<u16>,
    /// Keep serving /metrics this many seconds after the run ends (Ctrl-C ends it early).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 0,
        requires = "metrics_port"
    )]
    metrics_linger: u64,
    /// Write the run report as JSON.
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,
    /// Retries after the first attempt, per chunk and for opening each source (backoff
    /// from 100 ms doubling to 5 s).
    #[arg(long, default_value_t = 3)]
    max_retries: usize,
    /// Backfill jobs at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Seconds one attempt (a fetch, or connecting to a database source and checking its
    /// table) may take before it counts as failed and is retried.
    #[arg(
        long,
        value_name = "SECS",
        default_value = "60",
        value_parser = positive_seconds,
        allow_hyphen_values = true
    )]
    request_timeout: Option<Duration>,
    /// Count compute functions' cache reads (cache_read_total).
    #[arg(long)]
    track_cache_reads: bool,
    /// The table questdb: and postgres: sources read.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_TABLE)]
    backfill_table: String,
    /// Record node outputs into this database (questdb:DSN or postgres:DSN) at the end
    /// of a run whose replay completed; a later run can backfill from them.
    #[arg(long, value_name = "SPEC")]
    record_to: Option<String>,
    /// The nodes to record, by name, comma-separated (default: the strategy's target
    /// node, e.g. signal for momentum).
    #[arg(
        long,
        value_name = "NAMES",
        value_delimiter = ',',
        requires = "record_to"
    )]
    record_nodes: Vec<String>,
    /// The table --record-to writes (created when missing).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_TABLE)]
    record_table: String,
}

fn positive_seconds(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (0.001..1e9).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "'{text}' is not a positive number of seconds, at least 0.001 (for example 30 \
             or 0.5)"
        )),
    }
}

/// Lets a closed pipe end the process quietly, as for other command-line tools
/// (`qmtl dag momentum | head`), instead of a panic in `println!`. Rust ignores SIGPIPE
/// by default: <https://github.com/rust-lang/rust/issues/62569>.
fn restore_default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called once at start-up, before any thread exists; it only resets the
    // disposition of one signal to the system default.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Runs the command line with `registry` as the known strategies; returns the exit code.
pub fn main_with(registry: StrategyRegistry) -> ExitCode {
    restore_default_sigpipe();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    qmtl::telemetry::init(matches!(cli.log_format, LogFormat::Json));
    match dispatch(cli.command, &registry) {
        Ok(code) => code,
        Err(error) => {
            // Every error's message already ends with its cause.
            eprintln!("error: {error}");
            ExitCode::from(exit_code(&error))
        }
    }
}

fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<UnknownStrategy>().is_some() {
        return 2;
    }
    if let Some(MetricsError::PortInUse { .. }) = error.downcast_ref::<MetricsError>() {
        return 2;
    }
    if let Some(run) = error.downcast_ref::<RunError>() {
        return if run.is_usage() { 2 } else { 1 };
    }
    if let Some(record) = error.downcast_ref::<RecordError>() {
        return if record.is_usage() { 2 } else { 1 };
    }
    if let Some(load) = error.downcast_ref::<LoaderError>() {
        return if load.is_input_error() { 2 } else { 1 };
    }
    let usage = error.downcast_ref::<UsageError>().is_some()
        || error.downcast_ref::<SourceSpecError>().is_some()
        || error.downcast_ref::<BatchError>().is_some();
    if usage {
        2
    } else {
        1
    }
}

fn dispatch(command: Command, registry: &StrategyRegistry) -> anyhow::Result<ExitCode> {
    match command {
        Command::Strategies => {
            let width = registry
                .entries()
                .iter()
                .map(|e| e.name.len())
                .max()
                .unwrap_or(0);
            for e in registry.entries() {
                println!("{:<width$}  {}", e.name, e.about);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Nodes { strategy, json } => {
            let dag = build(registry.resolve(&strategy)?)?;
            print_nodes(&dag, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dag { strategy } => {
            let dag = build(registry.resolve(&strategy)?)?;
            println!("{}", serde_json::to_string_pretty(&dag.to_json())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Gateway(args) => gateway_cmd::run(args),
        Command::Run(args) => {
            let entry = registry.resolve(&args.strategy)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
            runtime.block_on(run(entry, *args))
        }
        Command::Import(args) => {
            let entry = registry.resolve(&args.strategy)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
            runtime.block_on(import(entry, args))
        }
    }
}

/// Epoch seconds bounding what `import` reads from its source (the year 5138).
const IMPORT_LIMIT: i64 = 100_000_000_000;

async fn import(entry: &StrategyEntry, args: ImportArgs) -> anyhow::Result<ExitCode> {
    // Find the stream the rows are for.
    let dag = build(entry)?;
    let Some(stream) = dag.streams().find(|s| s.name == args.stream) else {
        let names: Vec<&str> = dag.streams().map(|s| s.name.as_str()).collect();
        return Err(UsageError(format!(
            "strategy '{}' has no stream '{}' (streams: {})",
            entry.name,
            args.stream,
            names.join(", ")
        ))
        .into());
    };

    // Read every row of the source as the stream's fields.
    let from: SourceSpec = args.from.parse()?;
    let loader = from.open().await?;
    let batch = loader
        .fetch(-IMPORT_LIMIT, IMPORT_LIMIT, &stream.id, stream.interval)
        .await?;
    let columns = qmtl::batch::decode(&batch, &stream.fields, -IMPORT_LIMIT, IMPORT_LIMIT)?;

    // Write them under the stream's node id and interval.
    let into: SourceSpec = args.into.parse()?;
    let mut recorder = Recorder::open(&args.into, &args.table).await?;
    recorder
        .persist_columns(&stream.id, stream.interval, &stream.fields, &columns)
        .await?;
    recorder.flush().await?;
    println!(
        "imported {} rows of stream '{}' (node {}, interval {}) from {} into table {} at {}",
        columns.len(),
        stream.name,
        stream.id,
        stream.interval.secs(),
        loader.describe(),
        args.table,
        into
    );
    Ok(ExitCode::SUCCESS)
}

fn build(entry: &StrategyEntry) -> Result<Dag, RunError> {
    Runner::from_arc(Mode::Backtest, entry.make())
        .strategy_name(&entry.name)
        .dag()
}

fn print_nodes(dag: &Dag, json: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<serde_json::Value> = dag
            .nodes()
            .iter()
            .map(|n| {
                serde_json::json!({
                    "node_id": n.id,
                    "name": n.name,
                    "node_type": n.node_type,
                    "interval": n.interval.secs(),
                    "period": n.period,
                    "fields": n.fields,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<64}  {:<12} {:<12} {:>8} {:>6}",
        "node_id", "name", "type", "interval", "period"
    );
    for n in dag.nodes() {
        println!(
            "{:<64}  {:<12} {:<12} {:>8} {:>6}",
            n.id,
            n.name,
            n.node_type.to_string(),
            n.interval.human(),
            n.period
        );
    }
    Ok(())
}

async fn run(entry: &StrategyEntry, args: RunArgs) -> anyhow::Result<ExitCode> {
    let mode = match args.mode {
        ModeArg::Backtest => Mode::Backtest,
        ModeArg::Dryrun => Mode::Dryrun,
        ModeArg::Live => Mode::Live,
        ModeArg::Offline => Mode::Offline,
    };
    let on_missing = match args.on_missing {
        OnMissingArg::Skip => OnMissing::Skip,
        OnMissingArg::Fail => OnMissing::Fail,
        OnMissingArg::Continue => OnMissing::Continue,
    };
    let timeout = args.request_timeout;
    let config = BackfillConfig::default()
        .max_retries(args.max_retries)
        .concurrency(usize::from(args.concurrency))
        .request_timeout(timeout);

    let mut runner = Runner::from_arc(mode, entry.make())
        .strategy_name(&entry.name)
        .on_missing(on_missing)
        .backfill_config(config)
        .track_cache_reads(args.track_cache_reads)
        .print_plan(true);
    if let Some(url) = args.gateway_url {
        runner = runner.gateway_url(url);
    }
    let token = args
        .gateway_token
        .or_else(|| std::env::var(gateway_cmd::TOKEN_ENV).ok());
    let live: LiveSpec = args
        .live_source
        .parse()
        .map_err(|e: qmtl::live::LiveSpecError| UsageError(e.to_string()))?;
    runner = runner
        .gateway_token(token)
        .live_source(live)
        .poll_interval(args.poll_interval);
    for spec in args.backfill_source {
        runner = runner.backfill_source(spec);
    }
    if let Some(t) = args.backfill_start {
        runner = runner.backfill_start(t);
    }
    if let Some(t) = args.backfill_end {
        runner = runner.backfill_end(t);
    }
    let server = match args.metrics_port {
        Some(port) => Some(qmtl::metrics::start_metrics_server(port).await?),
        None => None,
    };
    if let Some(path) = &args.report_json {
        runner = runner.report_json(path);
    }
    runner = runner.backfill_table(args.backfill_table);
    if let Some(spec) = args.record_to {
        runner = runner
            .record_to(spec)
            .record_table(args.record_table)
            .record_nodes(args.record_nodes);
    }
    let signals = CancelOnSignal::install();
    let runner = runner.cancel_token(signals.token());

    let report = match runner.run().await {
        // A dryrun or live run stopped before its sources opened, or while it registered
        // with the gateway, ends as any stop does.
        Err(error @ RunError::StoppedWhileOpening { .. })
            if matches!(mode, Mode::Dryrun | Mode::Live) =>
        {
            eprintln!("{error}");
            return Ok(ExitCode::SUCCESS);
        }
        Err(RunError::Gateway(error))
            if error.is_stop() && matches!(mode, Mode::Dryrun | Mode::Live) =>
        {
            eprintln!("{error}");
            return Ok(ExitCode::SUCCESS);
        }
        result => result?,
    };
    print_summary(&report);
    if let Some(path) = &args.report_json {
        println!("report written to {}", path.display());
    }
    if let (Some(server), true) = (&server, args.metrics_linger > 0) {
        println!(
            "serving http://{}/metrics for {}s more (Ctrl-C to stop)",
            server.local_addr(),
            args.metrics_linger
        );
        let linger = tokio::time::sleep(Duration::from_secs(args.metrics_linger));
        let stop = signals.token();
        tokio::select! {
            () = linger => {}
            () = stop.cancelled() => {}
        }
    }
    // A dryrun or live run ends by signal; stopping it during its backfill is no failure.
    let stopped = signals.token().is_cancelled()
        && matches!(mode, Mode::Dryrun | Mode::Live)
        && report
            .failed_jobs()
            .all(|j| j.status == JobStatus::Cancelled);
    if !report.succeeded() && !stopped {
        for job in report.failed_jobs() {
            eprintln!(
                "backfill {:?}: node {} ({}) interval {} range [{}, {}): {}",
                job.status,
                job.name,
                job.node_id,
                job.interval.secs(),
                job.start,
                job.end,
                job.error.as_deref().unwrap_or("cancelled")
            );
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(report: &Report) {
    println!(
        "{:<10} {:<12} {:>8} {:>6} {:>11} {:>11} {:>11} {:>5} {:>5} {:>8}",
        "node",
        "type",
        "interval",
        "period",
        "rows_loaded",
        "first_ts",
        "last_ts",
        "ready",
        "gaps",
        "outputs"
    );
    let opt = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |t| t.to_string());
    for n in &report.nodes {
        println!(
            "{:<10} {:<12} {:>8} {:>6} {:>11} {:>11} {:>11} {:>5} {:>5} {:>8}",
            n.name,
            n.node_type.to_string(),
            n.interval,
            n.period,
            n.rows_loaded,
            opt(n.first_ts),
            opt(n.last_ts),
            n.ready,
            n.gaps,
            n.outputs
        );
    }
    println!(
        "{} events replayed; backfill {:.3}s, replay {:.3}s",
        report.events, report.timings.backfill_s, report.timings.replay_s
    );
    if let Some(id) = &report.live.strategy_id {
        println!(
            "gateway strategy {id}: {} live rows, {} live outputs, {} duplicate rows dropped",
            report.live.live_events, report.live.live_outputs, report.live.live_duplicates
        );
    }
}

//! The database benchmarks of `scripts/bench.sh`: one figure per process, so that each
//! process's peak resident memory (VmHWM) belongs to that figure alone.
//!
//! `cargo run --release -p qmtl --example bench -- FIGURE DSN TABLE [ARGS]` prints one
//! JSON line `{"seconds", "rows", "peak_rss_mb", "peak_rss_all_repeats_mb"}` (seconds: the
//! best of the repeats; peak_rss_mb: the peak after the first repeat, which is what a
//! process running the figure once reaches; the other: after every repeat):
//!
//! - `loader questdb|postgres DSN TABLE ROWS`: one fetch of node `one`'s rows (ts + 5
//!   float64 at 60 s) into Arrow through the `questdb:` or `postgres:` loader;
//! - `backfill DSN TABLE ROWS`: a backtest's full backfill of the same rows into a
//!   StreamInput cache through the backfill engine, metrics on (the global registry);
//! - `concurrency questdb|postgres DSN TABLE ROWS [AT_ONCE]`: ten jobs, nodes `c0` to
//!   `c9`, ROWS rows each, through the engine and the `questdb:` or `postgres:` loader,
//!   AT_ONCE jobs (and pooled connections) at a time (default 4, the engine's default);
//! - `warmup DSN TABLE ROWS NODE`: time to ready of a warm-up-only job for a node with
//!   period 30 over a ROWS-row range: open the loader, fetch the newest 30 rows through
//!   [`qmtl::CacheLoader::fetch_last`] in the engine, merge them into the cache.
//!
//! The tables are made by `scripts/bench.sh`; the bench only reads them.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow_array::RecordBatch;
use qmtl::batch::Columns;
use qmtl::engine::{run_backfill, BackfillJob, ChunkSink, SinkError};
use qmtl::metrics::Metrics;
use qmtl::sources::{Flavor, LoaderOptions, PgSource};
use qmtl::{
    BackfillConfig, CacheLoader, DagBuilder, DagError, Interval, LoaderError, Node, NodeId,
    NodeRef, QuestDBLoader, Row, Runner, Strategy, StreamInput, Timestamp,
};

/// Timed repeats per figure; the best one is reported.
const REPEATS: usize = 3;
/// The bars' interval in the tables, seconds.
const STEP: i64 = 60;
/// The warm-up node's period.
const PERIOD: u64 = 30;

/// One stream of 1-minute bars (ts + 5 float64) and a period-30 SMA of its close.
struct OneStream;

impl Strategy for OneStream {
    fn setup(&self, dag: &mut DagBuilder) -> Result<NodeRef, DagError> {
        let bars = dag.stream_input(
            StreamInput::new("bars")
                .interval("1m")
                .period(PERIOD)
                .fields(["open", "high", "low", "close", "volume"]),
        )?;
        dag.node(
            Node::new("sma")
                .input(&bars)
                .period(PERIOD)
                .fields(["sma"])
                .compute("sma@1", |view| {
                    let close = view.input(0).field_at(3);
                    Some(Row::one(close.iter().sum::<f64>() / close.len() as f64))
                }),
        )
    }
}

/// Reads another node's rows: the tables key the bench's rows by short fixed ids.
struct Renamed {
    inner: QuestDBLoader,
    node: NodeId,
}

#[async_trait::async_trait]
impl CacheLoader for Renamed {
    async fn fetch(
        &self,
        start: Timestamp,
        end: Timestamp,
        _node_id: &NodeId,
        interval: Interval,
    ) -> Result<RecordBatch, LoaderError> {
        self.inner.fetch(start, end, &self.node, interval).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Keeps every job's rows, as a backtest does for its replay.
struct Keep(Mutex<Vec<Columns>>);

impl ChunkSink for Keep {
    fn accept(
        &self,
        job: usize,
        _start: Timestamp,
        _end: Timestamp,
        rows: Columns,
    ) -> Result<(), SinkError> {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let into = &mut kept[job];
        into.ts.extend_from_slice(&rows.ts);
        for (to, from) in into.values.iter_mut().zip(&rows.values) {
            to.extend_from_slice(from);
        }
        Ok(())
    }
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

async fn open(flavor: Flavor, dsn: &str, table: &str, pool_size: usize) -> QuestDBLoader {
    let source = PgSource::parse(flavor, dsn).expect("a valid DSN");
    let options = LoaderOptions {
        table: table.to_owned(),
        pool_size,
    };
    QuestDBLoader::open(&source, &options)
        .await
        .expect("the bench table opens")
}

fn minute() -> Interval {
    Interval::from_secs(STEP as u64).expect("60 s is an interval")
}

fn fields() -> Arc<[String]> {
    ["open", "high", "low", "close", "volume"]
        .map(String::from)
        .into()
}

/// Runs `jobs` through the engine and returns the rows loaded.
async fn engine(jobs: Vec<BackfillJob>, config: &BackfillConfig) -> u64 {
    let kept = (0..jobs.len())
        .map(|_| Columns {
            ts: Vec::new(),
            values: vec![Vec::new(); 5],
        })
        .collect();
    let sink = Arc::new(Keep(Mutex::new(kept)));
    let reports = run_backfill(
        jobs,
        config,
        Arc::new(Metrics::new()),
        sink,
        tokio_util::sync::CancellationToken::new(),
        indicatif::ProgressBar::hidden(),
    )
    .await;
    for report in &reports {
        assert!(report.error.is_none(), "job failed: {:?}", report.error);
    }
    reports.iter().map(|r| r.rows).sum()
}

fn job(loader: Arc<dyn CacheLoader>, node: &str, rows: i64, newest: Option<u64>) -> BackfillJob {
    BackfillJob {
        node_id: NodeId::from_hex(node),
        name: node.to_owned(),
        interval: minute(),
        start: 0,
        end: rows * STEP,
        fields: fields(),
        loader,
        newest,
    }
}

/// One timed repeat of a figure: (seconds, rows).
async fn once(figure: &str, flavor: Flavor, args: &[String]) -> (f64, u64) {
    let (dsn, table) = (&args[0], &args[1]);
    let rows: i64 = args[2].parse().expect("ROWS is a number");
    let began = Instant::now();
    let loaded = match figure {
        "loader" => unreachable!("handled in main"),
        "backfill" => {
            let loader = Renamed {
                inner: open(Flavor::QuestDb, dsn, table, 4).await,
                node: NodeId::from_hex("one"),
            };
            let report = Runner::backtest(OneStream)
                .backfill_loader(None, Arc::new(loader))
                .backfill_start(0)
                .backfill_end(rows * STEP)
                .run()
                .await
                .expect("the backtest runs");
            assert!(report.succeeded(), "{:?}", report.jobs);
            return (report.timings.backfill_s, report.jobs[0].rows);
        }
        "concurrency" => {
            let at_once: usize = args.get(3).map_or(Ok(4), |n| n.parse()).expect("a count");
            let loader: Arc<dyn CacheLoader> = Arc::new(open(flavor, dsn, table, at_once).await);
            let jobs = (0..10)
                .map(|i| job(loader.clone(), &format!("c{i}"), rows, None))
                .collect();
            let began = Instant::now();
            let loaded = engine(jobs, &BackfillConfig::default().concurrency(at_once)).await;
            return (began.elapsed().as_secs_f64(), loaded);
        }
        "warmup" => {
            let node = args.get(3).map_or("one", String::as_str);
            let loader: Arc<dyn CacheLoader> = Arc::new(open(Flavor::QuestDb, dsn, table, 1).await);
            let jobs = vec![job(loader, node, rows, Some(PERIOD))];
            engine(jobs, &BackfillConfig::default()).await
        }
        other => panic!("unknown figure {other}; use loader, backfill, concurrency or warmup"),
    };
    (began.elapsed().as_secs_f64(), loaded)
}

fn flavor_of(name: &str) -> Flavor {
    match name {
        "postgres" => Flavor::Postgres,
        "questdb" => Flavor::QuestDb,
        other => panic!("unknown flavor {other}; use questdb or postgres"),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let figure = args.first().map_or("", String::as_str).to_owned();
    let mut best = f64::MAX;
    let mut rows = 0;
    let mut first_peak = None;
    if figure == "loader" {
        let loader = open(flavor_of(&args[1]), &args[2], &args[3], 1).await;
        let end = args[4].parse::<i64>().expect("ROWS is a number") * STEP;
        for _ in 0..REPEATS {
            let began = Instant::now();
            let batch = loader
                .fetch(0, end, &NodeId::from_hex("one"), minute())
                .await
                .expect("the fetch succeeds");
            best = best.min(began.elapsed().as_secs_f64());
            rows = batch.num_rows() as u64;
        }
    } else if figure == "concurrency" {
        let flavor = flavor_of(&args[1]);
        for _ in 0..REPEATS {
            let (seconds, loaded) = once(&figure, flavor, &args[2..]).await;
            best = best.min(seconds);
            rows = loaded;
        }
    } else {
        let repeats = if figure == "warmup" { 5 } else { REPEATS };
        for _ in 0..repeats {
            let (seconds, loaded) = once(&figure, Flavor::QuestDb, &args[1..]).await;
            best = best.min(seconds);
            rows = loaded;
            first_peak.get_or_insert_with(peak_rss_mb);
        }
    }
    // The first repeat's peak is that of a process that ran the figure once, as a user's
    // run does; later repeats add what the allocator kept from the earlier ones.
    let peak = peak_rss_mb();
    println!(
        "{}",
        serde_json::json!({
            "seconds": best,
            "rows": rows,
            "peak_rss_mb": first_peak.unwrap_or(peak),
            "peak_rss_all_repeats_mb": peak,
        })
    );
}

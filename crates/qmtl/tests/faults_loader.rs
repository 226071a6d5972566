//! Loader faults against a real PostgreSQL server started by the test (`support/pg.rs`):
//! a session killed mid-backfill, a server down when the run starts (back in time, or
//! not), a fetch that hangs, a server that accepts and never answers, and a `BIGINT`
//! `ts` that holds milliseconds. Each run goes through [`Runner`], so the retries are
//! seen where a user sees them: the report, `backfill_retry_total` and the error text.
//!
//! To catch the loader mid-fetch deterministically, a wrapper loader ([`Gate`]) pauses
//! before the chunk a test picks; the test then takes an `ACCESS EXCLUSIVE` lock on the
//! table from a session of its own, lets the fetch go, and waits until
//! `pg_stat_activity` shows the loader's backend waiting on that lock. The wrapper also
//! records every range it is asked for, which shows what was fetched again.

#[path = "support/pg.rs"]
mod pg;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use qmtl::metrics::{Metrics, NodeLabels};
use qmtl::report::NodeReport;
use qmtl::runner::RunError;
use qmtl::sources::{Flavor, LoaderOptions, PgSource};
use qmtl::strategies::MomentumStrategy;
use qmtl::{
    BackfillConfig, CacheLoader, Dag, Interval, LoaderError, NodeId, QuestDBLoader, Report, Runner,
};
use tokio::sync::{mpsc, Notify};
use tokio_postgres::{Client, NoTls};

const START: i64 = 1_492_592_400;
const END: i64 = 1_518_019_200;

/// Longest a test waits for something that happens within seconds on an idle machine.
const PATIENCE: Duration = Duration::from_secs(120);

fn bars() -> (NodeId, Interval) {
    let dag = Dag::build(&MomentumStrategy::default()).unwrap();
    let bars = dag.streams().find(|s| s.name == "bars").unwrap();
    (bars.id.clone(), bars.interval)
}

fn bar_labels() -> NodeLabels {
    let (id, interval) = bars();
    NodeLabels::new(&id, interval)
}

/// Creates `table` on `server` holding the bundled EUR/USD bars for the momentum
/// strategy's `bars` stream, `ts` as BIGINT epoch seconds times `scale`.
fn bars_table(server: &pg::Server, table: &str, scale: i64) {
    let (id, interval) = bars();
    server.psql(&format!(
        "CREATE TABLE {table} (node_id TEXT, interval INT, ts BIGINT, open FLOAT8, \
         high FLOAT8, low FLOAT8, close FLOAT8, volume FLOAT8)"
    ));
    let csv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/eurusd_1h.csv");
    let mut out = String::new();
    for line in std::fs::read_to_string(csv).unwrap().lines().skip(1) {
        let (stamp, values) = line.split_once(',').unwrap();
        let secs = qmtl::time::parse_timestamp(stamp).unwrap();
        let ts = secs * scale;
        out.push_str(&format!("{id},{},{ts},{values}\n", interval.secs()));
    }
    let file = server.dir.join(format!("{table}.csv"));
    std::fs::write(&file, out).unwrap();
    server.psql(&format!("\\copy {table} FROM '{}' CSV", file.display()));
}

fn source(server: &pg::Server) -> PgSource {
    PgSource::parse(Flavor::Postgres, &server.dsn()).unwrap()
}

async fn open(server: &pg::Server, table: &str) -> Result<QuestDBLoader, LoaderError> {
    let options = LoaderOptions {
        table: table.into(),
        ..LoaderOptions::default()
    };
    QuestDBLoader::open(&source(server), &options).await
}

/// A session of the test's own, like psql.
async fn session(server: &pg::Server) -> Client {
    let (client, connection) = tokio_postgres::connect(&server.dsn(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// The loader's backends (application name `qmtl`) waiting for a lock on table `$1`.
/// (A statement waiting on a lock while it is parsed may still show the previous one's
/// text in `pg_stat_activity`, so the lock itself is what is looked for.)
const WAITING_ON_TABLE: &str = "SELECT l.pid FROM pg_locks l \
     JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE NOT l.granted AND l.relation = $1::text::regclass AND a.application_name = 'qmtl'";

/// Waits until a backend of the loader waits on a lock on `table`, and returns its pid.
async fn backend_waiting_on(client: &Client, table: &str) -> i32 {
    backend_waiting_on_except(client, table, None).await
}

/// Waits until a backend of the loader other than `stuck` waits on a lock on `table`
/// while `stuck` no longer does, and returns its pid.
async fn backend_waiting_on_except(client: &Client, table: &str, stuck: Option<i32>) -> i32 {
    let began = Instant::now();
    loop {
        let rows = client.query(WAITING_ON_TABLE, &[&table]).await.unwrap();
        let pids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        if stuck.is_none_or(|stuck| !pids.contains(&stuck)) {
            if let Some(&other) = pids.first() {
                return other;
            }
        }
        assert!(
            began.elapsed() < PATIENCE,
            "no loader backend but {stuck:?} waits on {table} (waiting: {pids:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `backfill_retry_total` of the bars stream reaches `n`.
async fn retries_reach(metrics: &Metrics, n: u64) {
    let began = Instant::now();
    while metrics.retry_total.get_or_create(&bar_labels()).get() < n {
        assert!(began.elapsed() < PATIENCE, "no retry was counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loader that records the ranges it is asked for and, once, pauses before the fetch
/// number `pause_at` (0-based) until the test lets it go.
struct Gate {
    inner: QuestDBLoader,
    calls: Mutex<Vec<(i64, i64)>>,
    pause_at: Option<usize>,
    reached: mpsc::UnboundedSender<()>,
    go: Notify,
}

impl Gate {
    fn new(
        inner: QuestDBLoader,
        pause_at: Option<usize>,
    ) -> (Arc<Gate>, mpsc::UnboundedReceiver<()>) {
        let (reached, rx) = mpsc::unbounded_channel();
        let gate = Gate {
            inner,
            calls: Mutex::new(Vec::new()),
            pause_at,
            reached,
            go: Notify::new(),
        };
        (Arc::new(gate), rx)
    }

    fn calls(&self) -> Vec<(i64, i64)> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl CacheLoader for Gate {
    async fn fetch(
        &self,
        start: i64,
        end: i64,
        node_id: &NodeId,
        interval: Interval,
    ) -> Result<RecordBatch, LoaderError> {
        let number = {
            let mut calls = self.calls.lock().unwrap();
            calls.push((start, end));
            calls.len() - 1
        };
        if Some(number) == self.pause_at {
            self.reached.send(()).unwrap();
            self.go.notified().await;
        }
        self.inner.fetch(start, end, node_id, interval).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn check_fields(&self, fields: &[String]) -> Result<(), LoaderError> {
        self.inner.check_fields(fields)
    }
}

fn config() -> BackfillConfig {
    BackfillConfig::default().chunk_buckets(500).concurrency(1)
}

fn runner(loader: Arc<dyn CacheLoader>, config: BackfillConfig, metrics: &Arc<Metrics>) -> Runner {
    Runner::backtest(MomentumStrategy::default())
        .backfill_loader(None, loader)
        .backfill_config(config)
        .metrics(metrics.clone())
        .backfill_start(START)
        .backfill_end(END)
}

/// A momentum backtest over the bundled range, reading the bars from `source`.
fn source_runner(source: &str, config: BackfillConfig, metrics: &Arc<Metrics>) -> Runner {
    Runner::backtest(MomentumStrategy::default())
        .backfill_source(source.to_owned())
        .backfill_config(config)
        .metrics(metrics.clone())
        .backfill_start(START)
        .backfill_end(END)
}

/// (name, rows_loaded, first_ts, last_ts, ready, gaps, outputs) of every node.
type Figures = Vec<(String, u64, Option<i64>, Option<i64>, bool, u64, u64)>;

fn figures(report: &Report) -> Figures {
    let f = |n: &NodeReport| {
        let (first, last) = (n.first_ts, n.last_ts);
        let name = n.name.clone();
        (name, n.rows_loaded, first, last, n.ready, n.gaps, n.outputs)
    };
    report.nodes.iter().map(f).collect()
}

/// The job's figures that do not depend on retries.
fn job_figures(report: &Report) -> Vec<(u64, i64, i64)> {
    let jobs = report.jobs.iter();
    jobs.map(|j| (j.rows, j.start, j.end)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_killed_mid_backfill_is_retried_and_resumes_from_the_chunk_it_lost() {
    let server = pg::server();
    bars_table(server, "fault_kill", 1);

    // An undisturbed run gives the figures to match and the chunks fetched.
    let (calm, _) = Gate::new(open(server, "fault_kill").await.unwrap(), None);
    let calm_metrics = Arc::new(Metrics::new());
    let want = runner(calm.clone(), config(), &calm_metrics)
        .run()
        .await
        .unwrap();
    assert!(want.succeeded());
    let chunks = calm.calls();
    assert!(
        chunks.len() > 6,
        "the range should span several chunks: {chunks:?}"
    );

    // Pause before the fifth chunk, lock the table, and let the fetch block on the lock.
    let (gate, mut reached) = Gate::new(open(server, "fault_kill").await.unwrap(), Some(4));
    let metrics = Arc::new(Metrics::new());
    let run = tokio::spawn(runner(gate.clone(), config(), &metrics).run());
    reached.recv().await.unwrap();
    let psql = session(server).await;
    psql.batch_execute("BEGIN; LOCK TABLE fault_kill IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    gate.go.notify_one();

    // Kill the loader's session while it waits, then release the lock.
    let pid = backend_waiting_on(&psql, "fault_kill").await;
    let killed: bool = psql
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    psql.batch_execute("COMMIT").await.unwrap();
    let got = run.await.unwrap().unwrap();

    // The job completed with the undisturbed run's figures, and counted its retries.
    assert!(got.succeeded(), "{:?}", got.jobs);
    assert_eq!(figures(&got), figures(&want));
    assert_eq!(job_figures(&got), job_figures(&want));
    let retries = got.jobs[0].retries;
    assert!(retries >= 1, "{:?}", got.jobs);
    assert_eq!(
        metrics.retry_total.get_or_create(&bar_labels()).get(),
        retries
    );

    // Only the lost chunk was fetched again, once per retry: the run resumed from it.
    let calls = gate.calls();
    let mut times: HashMap<(i64, i64), u64> = HashMap::new();
    for range in &calls {
        *times.entry(*range).or_default() += 1;
    }
    for (i, range) in chunks.iter().enumerate() {
        let want = if i == 4 { retries + 1 } else { 1 };
        assert_eq!(
            times.get(range),
            Some(&want),
            "chunk {i} {range:?} in {calls:?}"
        );
    }
    assert_eq!(calls.len() as u64, chunks.len() as u64 + retries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_at_the_start_is_waited_for_within_the_retry_budget() {
    let server = Arc::new(pg::private());
    bars_table(&server, "fault_down", 1);
    // The test server commits asynchronously; an immediate stop would lose the rows.
    server.psql("CHECKPOINT");
    server.stop();

    // Start the server again once the first failed attempt has been counted.
    let metrics = Arc::new(Metrics::new());
    let starter = {
        let (server, metrics) = (server.clone(), metrics.clone());
        tokio::spawn(async move {
            retries_reach(&metrics, 1).await;
            tokio::task::spawn_blocking(move || server.start())
                .await
                .unwrap();
        })
    };
    let report = source_runner(
        &format!("postgres:{}", server.dsn()),
        BackfillConfig::default().max_retries(12),
        &metrics,
    )
    .backfill_table("fault_down")
    .run()
    .await
    .unwrap();
    starter.await.unwrap();

    assert!(report.succeeded(), "{:?}", report.jobs);
    assert_eq!(report.jobs[0].rows, 5000, "{:?}", report.jobs);
    let counted = metrics.retry_total.get_or_create(&bar_labels()).get();
    assert!(counted >= 1);
    assert_eq!(report.jobs[0].retries, counted);
    assert_eq!(metrics.jobs_in_progress.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stays_down_fails_naming_host_and_port_after_the_budget() {
    let server = pg::private();
    server.stop();
    let metrics = Arc::new(Metrics::new());
    let err = source_runner(
        &format!("postgres:{}", server.dsn()),
        BackfillConfig::default().max_retries(2),
        &metrics,
    )
    .run()
    .await
    .unwrap_err();

    let text = err.to_string();
    assert!(
        matches!(
            &err,
            RunError::SourceUnavailable {
                attempts: 3,
                source,
                ..
            } if matches!(**source, LoaderError::Unreachable { .. })
        ),
        "{err:?}"
    );
    assert!(!err.is_usage(), "a server that is down is no usage error");
    assert!(
        text.contains(&format!("127.0.0.1:{}", server.port)),
        "{text}"
    );
    assert!(text.contains("--max-retries"), "{text}");
    assert!(!text.contains(&server.password), "{text}");
    assert_eq!(metrics.retry_total.get_or_create(&bar_labels()).get(), 2);
    assert_eq!(metrics.jobs_in_progress.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_fetch_times_out_counts_a_retry_and_the_next_attempt_succeeds() {
    let server = pg::server();
    bars_table(server, "fault_hang", 1);

    // Hold the first fetch on a lock until its attempt has timed out.
    let (gate, mut reached) = Gate::new(open(server, "fault_hang").await.unwrap(), Some(0));
    let metrics = Arc::new(Metrics::new());
    let config = config()
        .max_retries(6)
        .request_timeout(Some(Duration::from_secs(1)));
    let run = tokio::spawn(runner(gate.clone(), config, &metrics).run());
    reached.recv().await.unwrap();
    let psql = session(server).await;
    psql.batch_execute("BEGIN; LOCK TABLE fault_hang IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    gate.go.notify_one();
    // Watch from a session of its own: inside the locking transaction, pg_stat_activity
    // would keep showing the snapshot taken at its first read.
    let watch = session(server).await;
    let stuck = backend_waiting_on(&watch, "fault_hang").await;
    retries_reach(&metrics, 1).await;

    // The timed-out statement is cancelled on the server and the retry runs on a fresh
    // session, not queued behind it on the abandoned one.
    let retry = backend_waiting_on_except(&watch, "fault_hang", Some(stuck)).await;
    assert_ne!(retry, stuck);
    psql.batch_execute("COMMIT").await.unwrap();
    let report = run.await.unwrap().unwrap();

    assert!(report.succeeded(), "{:?}", report.jobs);
    assert_eq!(report.jobs[0].rows, 5000);
    let retries = report.jobs[0].retries;
    assert!(retries >= 1);
    assert_eq!(
        metrics.retry_total.get_or_create(&bar_labels()).get(),
        retries
    );
    let first = gate.calls()[0];
    let again = gate.calls().iter().filter(|r| **r == first).count() as u64;
    assert_eq!(
        again,
        retries + 1,
        "the timed-out chunk is fetched once per retry"
    );
}

/// A TCP server on 127.0.0.1 that accepts connections and never answers them.
fn silent_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        // Keep every socket open, read nothing and answer nothing.
        let held: Vec<_> = listener.incoming().flatten().collect();
        drop(held);
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_bounded_by_connect_timeout_then_retried() {
    let port = silent_server();
    let dsn = format!("postgresql://qmtl:hunter2secret@127.0.0.1:{port}/qmtl?connect_timeout=1");
    let metrics = Arc::new(Metrics::new());
    let err = source_runner(
        &format!("postgres:{dsn}"),
        BackfillConfig::default().max_retries(1),
        &metrics,
    )
    .run()
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            &err,
            RunError::SourceUnavailable {
                attempts: 2,
                source,
                ..
            } if matches!(**source, LoaderError::ConnectTimeout { .. })
        ),
        "{err:?}"
    );
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2secret"), "{text}");
    assert_eq!(metrics.retry_total.get_or_create(&bar_labels()).get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_bounded_by_the_request_timeout() {
    let port = silent_server();
    let dsn = format!("postgresql://qmtl:hunter2secret@127.0.0.1:{port}/qmtl");
    let metrics = Arc::new(Metrics::new());
    let err = source_runner(
        &format!("postgres:{dsn}"),
        BackfillConfig::default()
            .max_retries(1)
            .request_timeout(Some(Duration::from_millis(500))),
        &metrics,
    )
    .run()
    .await
    .unwrap_err();
    assert!(
        matches!(
            &err,
            RunError::SourceUnavailable {
                attempts: 2,
                source,
                ..
            } if matches!(**source, LoaderError::Timeout { .. })
        ),
        "{err:?}"
    );
    assert!(!err.is_usage());
    assert!(!err.to_string().contains("hunter2secret"));
}

#[tokio::test]
async fn a_bigint_ts_in_milli_micro_or_nanoseconds_is_refused_with_the_unit_and_the_fix() {
    let server = pg::server();
    let cases = [
        ("fault_ms", 1_000, "milliseconds"),
        ("fault_us", 1_000_000, "microseconds"),
        ("fault_ns", 1_000_000_000, "nanoseconds"),
    ];
    for (table, scale, unit) in cases {
        bars_table(server, table, scale);
        let err = open(server, table).await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, LoaderError::TsUnit { div, .. } if *div == scale),
            "{table}: {err:?}"
        );
        assert!(err.is_input_error() && !err.is_retryable(), "{table}");
        assert!(text.contains(unit), "{table}: {text}");
        assert!(text.contains(&format!("ts / {scale}")), "{table}: {text}");
        assert!(text.contains(table), "{table}: {text}");
    }

    // Seconds, and an empty table, pass.
    bars_table(server, "fault_secs", 1);
    open(server, "fault_secs").await.unwrap();
    server.psql("CREATE TABLE fault_empty (node_id TEXT, interval INT, ts BIGINT, close FLOAT8)");
    open(server, "fault_empty").await.unwrap();
}

#[tokio::test]
async fn table_names_that_are_not_plain_identifiers_are_refused_before_connecting() {
    // A closed port: the name is checked before any connection is tried.
    let dsn = format!("postgresql://qmtl:pw@127.0.0.1:{}/qmtl", pg::closed_port());
    for bad in ["x;drop table y", "\"q\"", "a.b.c", "bad-name", "1abc"] {
        let err = Runner::backtest(MomentumStrategy::default())
            .backfill_source(format!("postgres:{dsn}"))
            .backfill_table(bad)
            .backfill_start(START)
            .backfill_end(END)
            .run()
            .await
            .unwrap_err();
        assert!(err.is_usage(), "{bad}: {err}");
        assert!(
            err.to_string().contains("not a valid table name"),
            "{bad}: {err}"
        );
    }
}

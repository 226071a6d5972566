//! The recorder against a real PostgreSQL server started by the test (see
//! `support/pg.rs`): a backtest records the signal node's outputs, a second run backfills
//! them and sees the same figures and values; recording is idempotent; missing tables
//! and columns are created; a hand-made table without a key gets one. Through a database
//! restart the recorder keeps what it could not write and writes it once, afterwards;
//! at the end of a run it gives up on a database that stays down by its deadline and
//! says how many rows were not recorded. A producer held back while too many rows wait
//! resumes once the database takes them, or fails when the outage outlasts its bound.

#[path = "support/pg.rs"]
mod pg;

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::RecordBatch;
use qmtl::batch::Columns;
use qmtl::recorder::{Dialect, RecordError, RecordLimits, Recorded, Recorder};
use qmtl::sources::{Flavor, LoaderOptions, PgSource};
use qmtl::strategies::MomentumStrategy;
use qmtl::{
    CacheLoader, Dag, DagBuilder, DagError, Interval, LoaderError, Node, NodeId, NodeRef,
    OnMissing, QuestDBLoader, Report, Row, Runner, Strategy, StreamInput, Timestamp,
};

const START: i64 = 1_492_592_400;
const END: i64 = 1_518_019_200;

fn data_csv() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/eurusd_1h.csv");
    format!("csv:{}", path.display())
}

fn signal_node() -> (NodeId, Interval) {
    let dag = Dag::build(&MomentumStrategy::default()).unwrap();
    let signal = dag.nodes().iter().find(|n| n.name == "signal").unwrap();
    (signal.id.clone(), signal.interval)
}

async fn record_run(table: &str) -> Report {
    let report = Runner::backtest(MomentumStrategy::default())
        .backfill_source(data_csv())
        .backfill_start(START)
        .backfill_end(END)
        .record_to(format!("questdb:{}", pg::server().dsn()))
        .record_table(table)
        .run()
        .await
        .unwrap();
    assert!(report.succeeded());
    report
}

async fn loader(table: &str) -> QuestDBLoader {
    let source = PgSource::parse(Flavor::QuestDb, &pg::server().dsn()).unwrap();
    let options = LoaderOptions {
        table: table.into(),
        ..LoaderOptions::default()
    };
    QuestDBLoader::open(&source, &options).await.unwrap()
}

/// Reads back the rows the signal node emitted.
struct RecordedSignal {
    inner: QuestDBLoader,
    signal: NodeId,
}

#[async_trait::async_trait]
impl CacheLoader for RecordedSignal {
    async fn fetch(
        &self,
        start: Timestamp,
        end: Timestamp,
        _node_id: &NodeId,
        interval: Interval,
    ) -> Result<RecordBatch, LoaderError> {
        self.inner.fetch(start, end, &self.signal, interval).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A strategy whose one stream carries recorded signals, echoed by one node.
struct Echo;

impl Strategy for Echo {
    fn setup(&self, dag: &mut DagBuilder) -> Result<NodeRef, DagError> {
        let signal = dag.stream_input(
            StreamInput::new("signal")
                .interval("1h")
                .period(1)
                .fields(["signal", "spread"]),
        )?;
        dag.node(
            Node::new("echo")
                .input(&signal)
                .period(1)
                .fields(["signal", "spread"])
                .compute("echo@1", |view| {
                    let row = view.input(0).latest()?;
                    Some(Row::new(&[row.value(0), row.value(1)]))
                }),
        )
    }
}

#[tokio::test]
async fn a_second_run_backfills_what_the_first_recorded() {
    let first = record_run("round_trip").await;
    let signal = first.nodes.iter().find(|n| n.name == "signal").unwrap();
    assert!(signal.outputs > 4000, "{signal:?}");

    // The table holds one row per emitted output.
    let (id, interval) = signal_node();
    let count = pg::server().psql(&format!(
        "SELECT count(*) FROM round_trip WHERE node_id = '{id}' AND interval = 3600"
    ));
    assert_eq!(count, signal.outputs.to_string());

    // A second run backfills them and sees the same figures.
    let reader = RecordedSignal {
        inner: loader("round_trip").await,
        signal: id.clone(),
    };
    let second = Runner::backtest(Echo)
        .backfill_loader(None, Arc::new(reader))
        .on_missing(OnMissing::Continue)
        .backfill_start(START)
        .backfill_end(END)
        .run()
        .await
        .unwrap();
    assert!(second.succeeded());
    let stream = &second.nodes[0];
    assert_eq!(stream.rows_loaded, signal.outputs);
    assert_eq!(stream.first_ts, signal.first_ts);
    assert_eq!(stream.last_ts, signal.last_ts);
    assert_eq!(second.nodes[1].outputs, signal.outputs);

    // And the values are the momentum signal's: the last spread is SMA10 - SMA30 of close.
    let batch = loader("round_trip")
        .await
        .fetch(START, END, &id, interval)
        .await
        .unwrap();
    let closes: Vec<f64> = std::fs::read_to_string(data_csv().trim_start_matches("csv:"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(4).unwrap().parse().unwrap())
        .collect();
    let mean = |n: usize| closes[closes.len() - n..].iter().sum::<f64>() / n as f64;
    let spread = batch.column(2).as_primitive::<Float64Type>();
    let last = spread.value(spread.len() - 1);
    assert!((last - (mean(10) - mean(30))).abs() < 1e-12, "{last}");
    let ts = batch.column(0).as_primitive::<Int64Type>();
    assert_eq!(Some(ts.value(ts.len() - 1)), signal.last_ts);
}

#[tokio::test]
async fn recording_twice_leaves_one_row_per_key() {
    let first = record_run("twice").await;
    record_run("twice").await;
    let outputs = first
        .nodes
        .iter()
        .find(|n| n.name == "signal")
        .unwrap()
        .outputs;
    let count = pg::server().psql("SELECT count(*) FROM twice");
    assert_eq!(count, outputs.to_string());
}

#[tokio::test]
async fn persist_creates_the_table_adds_columns_and_upserts() {
    let server = pg::server();
    let mut recorder = Recorder::open(&format!("postgres:{}", server.dsn()), "made_here")
        .await
        .unwrap();
    assert_eq!(recorder.dialect(), Dialect::Postgres);
    let node = NodeId::from_hex("abc");
    let hour = Interval::from_secs(3600).unwrap();
    recorder
        .persist(&node, hour, 3600, &[("x", 1.0)])
        .await
        .unwrap();
    recorder
        .persist(&node, hour, 7200, &[("x", 2.0), ("y", 20.0)])
        .await
        .unwrap();
    recorder
        .persist(&node, hour, 3600, &[("x", 1.5)])
        .await
        .unwrap();
    recorder.flush().await.unwrap();
    let rows = server.psql("SELECT ts, x, y FROM made_here ORDER BY ts");
    assert_eq!(rows, "3600|1.5|\n7200|2|20");

    let err = recorder
        .persist(&node, hour, 1, &[("bad name", 1.0)])
        .await
        .unwrap_err();
    assert!(matches!(err, RecordError::BadField { .. }), "{err}");
}

#[tokio::test]
async fn a_hand_made_table_without_a_key_gets_one_and_stays_idempotent() {
    let server = pg::server();
    server.psql(
        "CREATE TABLE keyless (node_id TEXT, interval INT, ts TIMESTAMP, close DOUBLE PRECISION)",
    );
    let node = NodeId::from_hex("k");
    let hour = Interval::from_secs(3600).unwrap();
    for value in [1.0, 2.0] {
        let mut recorder = Recorder::open(&format!("questdb:{}", server.dsn()), "keyless")
            .await
            .unwrap();
        recorder
            .persist(&node, hour, 1_700_000_000, &[("close", value)])
            .await
            .unwrap();
        recorder.flush().await.unwrap();
    }
    let rows = server.psql("SELECT ts, close FROM keyless");
    assert_eq!(rows, "2023-11-14 22:13:20|2");
}

#[tokio::test]
async fn recording_to_a_file_or_an_unknown_node_is_a_usage_error() {
    let err = Recorder::open(&data_csv(), "t").await.unwrap_err();
    assert!(matches!(err, RecordError::NotADatabase { .. }) && err.is_usage());

    let run = Runner::backtest(MomentumStrategy::default())
        .backfill_source(data_csv())
        .backfill_start(START)
        .backfill_end(END)
        .record_to(format!("questdb:{}", pg::server().dsn()))
        .record_nodes(["nope"])
        .run()
        .await
        .unwrap_err();
    assert!(run.is_usage());
    assert!(run.to_string().contains("'nope'"), "{run}");
}

/// `rows` outputs of one node at hourly times from `first`, value = time.
fn outputs(node: &NodeId, first: i64, rows: i64) -> Recorded {
    let ts: Vec<i64> = (0..rows).map(|k| first + k * 3600).collect();
    Recorded {
        node_id: node.clone(),
        interval: Interval::from_secs(3600).unwrap(),
        fields: vec!["v".to_owned()],
        columns: Columns {
            values: vec![ts.iter().map(|&t| t as f64).collect()],
            ts,
        },
    }
}

#[tokio::test]
async fn rows_recorded_while_the_database_restarts_are_written_once_when_it_is_back() {
    let server = pg::private();
    let spec = format!("postgres:{}", server.dsn());
    let mut recorder = Recorder::open(&spec, "outage").await.unwrap();
    let node = NodeId::from_hex("feed");

    // Before: written at once.
    recorder.record([&outputs(&node, 0, 500)]).await.unwrap();
    assert_eq!(recorder.waiting(), 0);

    // During: kept in memory, in order, and no error while under the bound. (The test
    // server runs with synchronous_commit=off, so an immediate stop could lose its own
    // last acknowledged commits; a checkpoint first makes them durable.)
    server.psql("CHECKPOINT");
    server.stop();
    recorder
        .record([&outputs(&node, 500 * 3600, 700)])
        .await
        .unwrap();
    recorder
        .record([&outputs(&node, 1200 * 3600, 300)])
        .await
        .unwrap();
    assert_eq!(recorder.waiting(), 1000);

    // After: the waiting rows and new ones are written, each key once.
    server.start();
    let began = std::time::Instant::now();
    while recorder.waiting() > 0 {
        assert!(
            began.elapsed().as_secs() < 30,
            "still {} waiting",
            recorder.waiting()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        recorder.record([]).await.unwrap();
    }
    recorder
        .record([&outputs(&node, 1500 * 3600, 10)])
        .await
        .unwrap();
    recorder
        .finish(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let (count, distinct, min, max) = (
        server.psql("SELECT count(*) FROM outage"),
        server.psql("SELECT count(DISTINCT ts) FROM outage"),
        server.psql("SELECT min(ts) FROM outage"),
        server.psql("SELECT max(ts) FROM outage"),
    );
    let spread = server.psql("SELECT ts / 3600 / 100, count(*) FROM outage GROUP BY 1 ORDER BY 1");
    assert_eq!(
        (count.as_str(), distinct.as_str()),
        ("1510", "1510"),
        "{spread}"
    );
    assert_eq!(
        (min.as_str(), max.as_str()),
        ("0", &*(1509 * 3600).to_string())
    );
    assert_eq!(
        server.psql("SELECT count(*) FROM outage WHERE v <> ts"),
        "0"
    );
    assert_eq!(recorder.written(), 1510);
}

#[tokio::test]
async fn finishing_against_a_database_that_stays_down_names_the_rows_not_recorded() {
    let server = pg::private();
    let spec = format!("postgres:{}", server.dsn());
    let mut recorder = Recorder::open(&spec, "down").await.unwrap();
    server.stop();
    let node = NodeId::from_hex("feed");
    recorder.record([&outputs(&node, 0, 42)]).await.unwrap();

    let began = std::time::Instant::now();
    let err = recorder
        .finish(std::time::Duration::from_millis(800))
        .await
        .unwrap_err();
    assert!(
        began.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    assert!(
        matches!(err, RecordError::Unwritten { rows: 42, .. }),
        "{err}"
    );
    assert!(!err.is_usage() && !err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("42 row(s)") && text.contains("down"),
        "{text}"
    );
    assert!(!text.contains(&server.password), "{text}");
    assert_eq!(recorder.waiting(), 42);
}

#[tokio::test]
async fn more_rows_waiting_than_the_bound_fail_the_recording_instead_of_growing() {
    let server = pg::private();
    let spec = format!("postgres:{}", server.dsn());
    let mut recorder = Recorder::open(&spec, "bounded").await.unwrap();
    server.stop();
    let node = NodeId::from_hex("feed");
    let bound = qmtl::recorder::MAX_WAITING_ROWS;
    recorder
        .record([&outputs(&node, 0, bound as i64)])
        .await
        .unwrap();

    // One row more, still within the backoff of the first failure: it fails at once.
    let err = recorder
        .record([&outputs(&node, bound as i64 * 3600, 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, RecordError::Outage { rows, .. } if rows == bound + 1),
        "{err}"
    );
    assert!(!err.is_usage(), "a runtime failure: exit 1");
}

#[tokio::test]
async fn a_producer_held_back_during_an_outage_resumes_once_the_rows_are_written() {
    let server = pg::private();
    let spec = format!("postgres:{}", server.dsn());
    let mut recorder = Recorder::open(&spec, "held").await.unwrap();
    recorder.set_limits(
        RecordLimits::default()
            .pause_rows(100)
            .max_waiting_rows(1000),
    );
    let node = NodeId::from_hex("feed");

    // Under the pause threshold nothing waits; over it, the producer waits for the
    // database, which comes back a second later. (A checkpoint first keeps the table's
    // creation through the immediate stop of a server running with
    // synchronous_commit=off.)
    server.psql("CHECKPOINT");
    server.stop();
    recorder.record([&outputs(&node, 0, 50)]).await.unwrap();
    recorder.make_room().await.unwrap();
    assert_eq!(recorder.waiting(), 50);
    recorder
        .record([&outputs(&node, 50 * 3600, 450)])
        .await
        .unwrap();
    assert_eq!(recorder.waiting(), 500);
    let restart = tokio::task::spawn_blocking(move || {
        std::thread::sleep(std::time::Duration::from_secs(1));
        server.start();
        server
    });
    let (room, server) = tokio::join!(recorder.make_room(), restart);
    let server = server.unwrap();
    room.unwrap();
    assert_eq!(recorder.waiting(), 0);
    assert_eq!(recorder.written(), 500);
    assert_eq!(server.psql("SELECT count(DISTINCT ts) FROM held"), "500");
    assert_eq!(server.psql("SELECT count(*) FROM held"), "500");
}

#[tokio::test]
async fn a_producer_held_back_fails_once_the_outage_outlasts_its_bound() {
    let server = pg::private();
    let spec = format!("postgres:{}", server.dsn());
    let mut recorder = Recorder::open(&spec, "held_too_long").await.unwrap();
    recorder.set_limits(
        RecordLimits::default()
            .pause_rows(100)
            .outage(std::time::Duration::from_secs(1)),
    );
    server.stop();
    let node = NodeId::from_hex("feed");
    recorder.record([&outputs(&node, 0, 500)]).await.unwrap();

    let err = recorder.make_room().await.unwrap_err();
    assert!(
        matches!(
            err,
            RecordError::Outage {
                rows: 500,
                limit_s: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_usage(), "a runtime failure: exit 1");
    assert!(!err.to_string().contains(&server.password), "{err}");
}

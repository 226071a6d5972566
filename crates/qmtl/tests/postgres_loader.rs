//! `QuestDBLoader` against a real PostgreSQL server started by the test (see
//! `support/pg.rs`): hand-made tables with `BIGINT` and `TIMESTAMP` `ts` backfill the
//! momentum example exactly as the bundled CSV does, payload types decode to `f64`, and
//! every listed failure is reported as its own error, without the password.

#[path = "support/pg.rs"]
mod pg;

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::Array;
use qmtl::report::NodeReport;
use qmtl::sources::{Flavor, LoaderOptions, PgSource, SourceOptions, SourceSpec};
use qmtl::strategies::MomentumStrategy;
use qmtl::{CacheLoader, Dag, Interval, LoaderError, NodeId, QuestDBLoader, Report, Runner};

const START: i64 = 1_492_592_400;
const END: i64 = 1_518_019_200;

fn data_csv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/eurusd_1h.csv")
}

fn bars() -> (NodeId, Interval) {
    let dag = Dag::build(&MomentumStrategy::default()).unwrap();
    let bars = dag.streams().find(|s| s.name == "bars").unwrap();
    (bars.id.clone(), bars.interval)
}

fn source(flavor: Flavor, dsn: &str) -> PgSource {
    PgSource::parse(flavor, dsn).unwrap()
}

fn options(table: &str) -> LoaderOptions {
    LoaderOptions {
        table: table.into(),
        ..LoaderOptions::default()
    }
}

/// The bundled CSV's rows as `(epoch seconds, "YYYY-MM-DD HH:MM:SS", [o, h, l, c, v])`.
fn csv_rows() -> Vec<(i64, String, Vec<String>)> {
    let text = std::fs::read_to_string(data_csv()).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let mut cells = line.split(',');
            let stamp = cells.next().unwrap().to_owned();
            let secs = qmtl::time::parse_timestamp(&stamp).unwrap();
            (secs, stamp, cells.map(str::to_owned).collect())
        })
        .collect()
}

/// Creates `table` by hand with lower-case columns and fills it with the CSV's rows for
/// the momentum strategy's `bars` stream, `ts` as `ts_type`.
fn hand_made_table(table: &str, ts_type: &str) {
    let server = pg::server();
    let (id, interval) = bars();
    server.psql(&format!(
        "CREATE TABLE {table} (node_id TEXT, interval INT, ts {ts_type}, open DOUBLE PRECISION, \
         high DOUBLE PRECISION, low DOUBLE PRECISION, close DOUBLE PRECISION, \
         volume DOUBLE PRECISION)"
    ));
    let file = server.dir.join(format!("{table}.csv"));
    let mut out = String::new();
    for (secs, stamp, values) in csv_rows() {
        let ts = if ts_type == "BIGINT" || ts_type == "INTEGER" {
            secs.to_string()
        } else {
            stamp
        };
        out.push_str(&format!(
            "{id},{},{ts},{}\n",
            interval.secs(),
            values.join(",")
        ));
    }
    std::fs::write(&file, out).unwrap();
    server.psql(&format!("\\copy {table} FROM '{}' CSV", file.display()));
}

/// (name, rows_loaded, first_ts, last_ts, ready, gaps, outputs) of one node.
type Figures = (String, u64, Option<i64>, Option<i64>, bool, u64, u64);

fn figures(report: &Report) -> Vec<Figures> {
    let f = |n: &NodeReport| {
        (
            n.name.clone(),
            n.rows_loaded,
            n.first_ts,
            n.last_ts,
            n.ready,
            n.gaps,
            n.outputs,
        )
    };
    report.nodes.iter().map(f).collect()
}

async fn csv_report() -> Report {
    Runner::backtest(MomentumStrategy::default())
        .backfill_source(format!("csv:{}", data_csv().display()))
        .backfill_start(START)
        .backfill_end(END)
        .run()
        .await
        .unwrap()
}

async fn db_report(spec: &str, table: &str) -> Report {
    let report = Runner::backtest(MomentumStrategy::default())
        .backfill_source(spec)
        .backfill_table(table)
        .backfill_start(START)
        .backfill_end(END)
        .run()
        .await
        .unwrap();
    assert!(
        report.succeeded(),
        "{:?}",
        report.failed_jobs().collect::<Vec<_>>()
    );
    report
}

#[tokio::test]
async fn a_bigint_ts_table_backfills_exactly_like_the_csv() {
    hand_made_table("hand_bigint", "BIGINT");
    let dsn = pg::server().dsn();
    let want = figures(&csv_report().await);
    let got = db_report(&format!("questdb:{dsn}"), "hand_bigint").await;
    assert_eq!(figures(&got), want);
    assert_eq!(got.nodes[0].rows_loaded, 5000);
    assert_eq!(got.nodes[0].first_ts, Some(1_492_592_400));
    assert_eq!(got.nodes[0].last_ts, Some(1_518_015_600));
    let bare = db_report(&dsn, "hand_bigint").await;
    assert_eq!(figures(&bare), want);
}

#[tokio::test]
async fn a_timestamp_ts_table_backfills_exactly_like_the_csv() {
    hand_made_table("hand_timestamp", "TIMESTAMP");
    let dsn = pg::server().dsn();
    let want = figures(&csv_report().await);
    let got = db_report(&format!("questdb:{dsn}"), "hand_timestamp").await;
    assert_eq!(figures(&got), want);
    let pg_path = db_report(&format!("postgres:{dsn}"), "hand_timestamp").await;
    assert_eq!(figures(&pg_path), want);
}

#[tokio::test]
async fn a_timestamptz_table_needs_the_postgres_scheme() {
    let server = pg::server();
    server.psql(
        "CREATE TABLE hand_tz (node_id TEXT, interval INT, ts TIMESTAMPTZ, close DOUBLE \
         PRECISION); INSERT INTO hand_tz VALUES ('n', 60, '2024-01-01 00:00:00+00', 1.5), \
         ('n', 60, '2024-01-01 00:01:00+00', 2.5), ('n', 60, '2024-01-01 00:02:00+00', 3.5)",
    );
    let pg_source = source(Flavor::Postgres, &server.dsn());
    let loader = QuestDBLoader::open(&pg_source, &options("hand_tz"))
        .await
        .unwrap();
    let minute = Interval::from_secs(60).unwrap();
    let batch = loader
        .fetch(1_704_067_200, 1_704_067_320, &NodeId::from_hex("n"), minute)
        .await
        .unwrap();
    let ts = batch.column(0).as_primitive::<Int64Type>();
    assert_eq!(ts.values(), &[1_704_067_200, 1_704_067_260]);

    let quest = source(Flavor::QuestDb, &server.dsn());
    let err = QuestDBLoader::open(&quest, &options("hand_tz"))
        .await
        .unwrap_err();
    assert!(matches!(err, LoaderError::TsType { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("the questdb: scheme reads BIGINT or INTEGER epoch seconds or TIMESTAMP"),
        "{text}"
    );
    assert!(text.contains("through the postgres: scheme"), "{text}");
    assert!(!text.contains("or TIMESTAMPTZ"), "{text}");
}

#[tokio::test]
async fn an_integer_ts_used_to_fail_every_fetch_and_now_backfills_like_the_csv() {
    hand_made_table("hand_int", "INTEGER");
    let dsn = pg::server().dsn();
    let want = figures(&csv_report().await);
    let got = db_report(&format!("questdb:{dsn}"), "hand_int").await;
    assert_eq!(figures(&got), want);
    let pg_path = db_report(&format!("postgres:{dsn}"), "hand_int").await;
    assert_eq!(figures(&pg_path), want);

    // A range an INTEGER ts cannot express is refused, naming the table and the fix.
    let loader = QuestDBLoader::open(&source(Flavor::QuestDb, &dsn), &options("hand_int"))
        .await
        .unwrap();
    let (id, interval) = bars();
    let err = loader
        .fetch(START, 3_000_000_000, &id, interval)
        .await
        .unwrap_err();
    assert!(matches!(err, LoaderError::TsRange { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("hand_int") && text.contains("BIGINT"),
        "{text}"
    );
    assert!(err.is_input_error() && !err.is_retryable(), "{text}");
    let last = loader
        .fetch(START, i64::from(i32::MAX), &id, interval)
        .await
        .unwrap();
    assert_eq!(last.num_rows(), 5000);
}

#[tokio::test]
async fn a_smallint_ts_is_refused_at_open() {
    let server = pg::server();
    server.psql("CREATE TABLE small_ts (node_id TEXT, interval INT, ts SMALLINT, close FLOAT8)");
    for flavor in [Flavor::QuestDb, Flavor::Postgres] {
        let err = QuestDBLoader::open(&source(flavor, &server.dsn()), &options("small_ts"))
            .await
            .unwrap_err();
        assert!(matches!(err, LoaderError::TsType { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("has type INT2") && text.contains("BIGINT"),
            "{text}"
        );
        assert!(err.is_input_error(), "{text}");
    }
}

#[tokio::test]
async fn numeric_and_text_fields_used_to_fail_late_and_are_now_refused_up_front() {
    let server = pg::server();
    server.psql(
        "CREATE TABLE wrong_types (node_id TEXT, interval INT, ts BIGINT, open NUMERIC, \
         high TEXT, low FLOAT8, close FLOAT8)",
    );
    let (_, want_fields) = {
        let dag = Dag::build(&MomentumStrategy::default()).unwrap();
        let bars = dag.streams().find(|s| s.name == "bars").unwrap();
        (bars.id.clone(), bars.fields.clone())
    };
    let quest = source(Flavor::QuestDb, &server.dsn());
    let loader = QuestDBLoader::open(&quest, &options("wrong_types"))
        .await
        .unwrap();
    let err = loader.check_fields(&want_fields).unwrap_err();
    assert!(matches!(err, LoaderError::TableFields { .. }), "{err}");
    assert!(err.is_input_error() && !err.is_retryable());
    let text = err.to_string();
    for want in [
        "table wrong_types cannot feed fields",
        "missing volume (columns: node_id, interval, ts, open, high, low, close)",
        "column open has type NUMERIC; use DOUBLE PRECISION, REAL, BIGINT or INTEGER, or \
         read the table through the postgres: scheme",
        "column high has type TEXT; use DOUBLE PRECISION, REAL, BIGINT or INTEGER",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let fine = ["close".to_owned(), "LOW".to_owned()];
    assert!(loader.check_fields(&fine).is_ok());

    // Through the runner it is a usage error (exit 2) before any fetch.
    let run = Runner::backtest(MomentumStrategy::default())
        .backfill_source(format!("questdb:{}", server.dsn()))
        .backfill_table("wrong_types")
        .backfill_start(START)
        .backfill_end(END)
        .run()
        .await
        .unwrap_err();
    assert!(run.is_usage(), "{run}");
    assert!(
        run.to_string().contains("column open has type NUMERIC"),
        "{run}"
    );
    assert!(!run.to_string().contains(&server.password), "{run}");

    // The postgres: scheme reads NUMERIC, cast to DOUBLE PRECISION.
    let pg_loader = QuestDBLoader::open(
        &source(Flavor::Postgres, &server.dsn()),
        &options("wrong_types"),
    )
    .await
    .unwrap();
    let err = pg_loader
        .check_fields(&want_fields)
        .unwrap_err()
        .to_string();
    assert!(!err.contains("column open"), "{err}");
    assert!(!err.contains("postgres: scheme"), "{err}");
}

#[tokio::test]
async fn a_numeric_payload_backfills_like_the_csv_through_the_postgres_scheme() {
    hand_made_table("hand_numeric", "BIGINT");
    let server = pg::server();
    server.psql("ALTER TABLE hand_numeric ALTER COLUMN open TYPE NUMERIC");
    let want = figures(&csv_report().await);
    let got = db_report(&format!("postgres:{}", server.dsn()), "hand_numeric").await;
    assert_eq!(figures(&got), want);
    let loader = QuestDBLoader::open(
        &source(Flavor::Postgres, &server.dsn()),
        &options("hand_numeric"),
    )
    .await
    .unwrap();
    let (id, interval) = bars();
    let batch = loader.fetch(START, END, &id, interval).await.unwrap();
    let open = batch.column_by_name("open").unwrap();
    let first: f64 = server
        .psql(&format!(
            "SELECT open::float8 FROM hand_numeric WHERE ts = {START}"
        ))
        .parse()
        .unwrap();
    assert_eq!(open.as_primitive::<Float64Type>().value(0), first);
}

#[tokio::test]
async fn an_unencoded_password_in_the_dsn_gets_a_hint_and_a_usage_error() {
    let server = pg::server();
    let dsn = format!(
        "questdb:postgresql://qa1:Sec@r:t/p%w#q?z@127.0.0.1:{}/qmtl",
        server.port
    );
    let run = Runner::backtest(MomentumStrategy::default())
        .backfill_source(dsn)
        .backfill_start(START)
        .backfill_end(END)
        .run()
        .await
        .unwrap_err();
    let text = run.to_string();
    assert!(run.is_usage(), "{text}");
    assert!(
        text.contains("percent-encode") && text.contains("@ as %40"),
        "{text}"
    );
    assert!(!text.contains("Sec") && !text.contains("p%w"), "{text}");
}

/// The only test that touches `PGPASSWORD`: the environment is shared by the tests of
/// this binary, and every other test gives its password in the DSN.
#[tokio::test]
async fn pgpassword_supplies_the_password_and_its_absence_is_a_usage_error() {
    let server = pg::server();
    let dsn = format!(
        "postgresql://{}@127.0.0.1:{}/{}",
        pg::USER,
        server.port,
        pg::DB
    );
    hand_made_table("pgpassword", "BIGINT");

    // Neither the DSN nor PGPASSWORD: a usage error that says where to put it.
    std::env::remove_var("PGPASSWORD");
    let err = QuestDBLoader::open(&source(Flavor::QuestDb, &dsn), &options("pgpassword"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LoaderError::PasswordRequired { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("requires a password for user 'qmtl'") && text.contains("PGPASSWORD"),
        "{text}"
    );
    assert!(err.is_input_error() && !err.is_retryable(), "{text}");
    let run = Runner::backtest(MomentumStrategy::default())
        .backfill_source(format!("questdb:{dsn}"))
        .backfill_table("pgpassword")
        .backfill_start(START)
        .backfill_end(END)
        .run()
        .await
        .unwrap_err();
    assert!(run.is_usage(), "{run}");

    // PGPASSWORD alone: the backfill runs.
    std::env::set_var("PGPASSWORD", &server.password);
    let parsed = source(Flavor::QuestDb, &dsn);
    std::env::remove_var("PGPASSWORD");
    let loader = QuestDBLoader::open(&parsed, &options("pgpassword"))
        .await
        .unwrap();
    assert!(!loader.describe().contains(&server.password));
    let (id, interval) = bars();
    let batch = loader.fetch(START, END, &id, interval).await.unwrap();
    assert_eq!(batch.num_rows(), 5000);
}

#[tokio::test]
async fn payload_types_decode_to_f64_nulls_stay_null_and_text_is_left_out() {
    let server = pg::server();
    server.psql(
        "CREATE TABLE mixed (node_id VARCHAR(80), interval SMALLINT, ts BIGINT, a REAL, \
         b INTEGER, c BIGINT, d SMALLINT, e DOUBLE PRECISION, note TEXT); \
         INSERT INTO mixed VALUES ('n', 60, 120, 1.5, 2, 3, 4, NULL, 'x'), \
         ('n', 60, 60, 0.5, -2, NULL, 1, 9.25, 'y'), ('other', 60, 90, 0, 0, 0, 0, 0, 'z'), \
         ('n', 3600, 90, 0, 0, 0, 0, 0, 'z')",
    );
    let loader = QuestDBLoader::open(&source(Flavor::QuestDb, &server.dsn()), &options("mixed"))
        .await
        .unwrap();
    let minute = Interval::from_secs(60).unwrap();
    let batch = loader
        .fetch(0, 1000, &NodeId::from_hex("n"), minute)
        .await
        .unwrap();
    let names: Vec<&str> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(names, ["ts", "a", "b", "c", "d", "e"]);
    assert_eq!(
        batch.column(0).as_primitive::<Int64Type>().values(),
        &[60, 120]
    );
    let col = |i: usize| batch.column(i).as_primitive::<Float64Type>().clone();
    assert_eq!(col(1).values(), &[0.5, 1.5]);
    assert_eq!(col(2).values(), &[-2.0, 2.0]);
    assert!(col(3).is_null(0) && col(3).value(1) == 3.0);
    assert!(col(5).is_null(1) && col(5).value(0) == 9.25);

    // An interval the SMALLINT column cannot hold matches nothing.
    let huge = Interval::from_secs(100_000).unwrap();
    let none = loader
        .fetch(0, 1000, &NodeId::from_hex("n"), huge)
        .await
        .unwrap();
    assert_eq!(none.num_rows(), 0);
}

#[tokio::test]
async fn an_unreachable_server_is_named_retried_and_not_a_usage_error() {
    let port = pg::closed_port();
    let dsn = format!("postgresql://qmtl:topsecret@127.0.0.1:{port}/qmtl");
    let err = QuestDBLoader::open(&source(Flavor::QuestDb, &dsn), &options("node_data"))
        .await
        .unwrap_err();
    assert!(matches!(err, LoaderError::Unreachable { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("topsecret"), "{text}");
    assert!(err.is_retryable() && !err.is_input_error());

    let run = Runner::backtest(MomentumStrategy::default())
        .backfill_source(format!("questdb:{dsn}"))
        .backfill_start(START)
        .backfill_end(END)
        .run()
        .await
        .unwrap_err();
    assert!(!run.is_usage(), "{run}");
    assert!(!run.to_string().contains("topsecret"), "{run}");
}

#[tokio::test]
async fn a_wrong_password_names_the_user_but_not_the_password() {
    let server = pg::server();
    let dsn = format!(
        "postgresql://qmtl:wrong-pass-123@127.0.0.1:{}/qmtl",
        server.port
    );
    let err = QuestDBLoader::open(&source(Flavor::QuestDb, &dsn), &options("node_data"))
        .await
        .unwrap_err();
    assert!(matches!(err, LoaderError::AuthFailed { .. }), "{err}");
    let text = format!("{err} {err:?}");
    assert!(text.contains("user 'qmtl'"), "{text}");
    assert!(!text.contains("wrong-pass-123"), "{text}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn table_and_column_problems_are_named() {
    let server = pg::server();
    server.psql(
        "CREATE TABLE no_ts (node_id TEXT, interval INT, time BIGINT, close FLOAT8); \
         CREATE TABLE text_ts (node_id TEXT, interval INT, ts TEXT, close FLOAT8)",
    );
    let quest = source(Flavor::QuestDb, &server.dsn());
    type Case = (&'static str, fn(&LoaderError) -> bool, &'static str);
    let cases: [Case; 4] = [
        (
            "absent_table",
            |e| matches!(e, LoaderError::TableMissing { .. }),
            "table absent_table does not exist",
        ),
        (
            "no_ts",
            |e| matches!(e, LoaderError::MissingColumn { column: "ts", .. }),
            "no_ts has no 'ts' column (columns: node_id, interval, time, close)",
        ),
        (
            "text_ts",
            |e| matches!(e, LoaderError::TsType { .. }),
            "column 'ts' has type TEXT",
        ),
        (
            "bad-name",
            |e| matches!(e, LoaderError::BadIdentifier { .. }),
            "'bad-name' is not a valid table name",
        ),
    ];
    for (table, is, want) in cases {
        let err = QuestDBLoader::open(&quest, &options(table))
            .await
            .unwrap_err();
        assert!(is(&err), "{table}: {err:?}");
        assert!(err.to_string().contains(want), "{table}: {err}");
        assert!(
            err.is_input_error() && !err.is_retryable(),
            "{table}: {err}"
        );
    }

    // Through the runner, a missing table is a usage error naming the table.
    let run = Runner::backtest(MomentumStrategy::default())
        .backfill_source(format!("questdb:{}", server.dsn()))
        .backfill_table("absent_table")
        .backfill_start(START)
        .backfill_end(END)
        .run()
        .await
        .unwrap_err();
    assert!(run.is_usage(), "{run}");
    assert!(run.to_string().contains("absent_table"), "{run}");
    assert!(!run.to_string().contains(&server.password), "{run}");
}

#[tokio::test]
async fn rows_with_a_null_ts_fail_the_job_and_are_counted() {
    let server = pg::server();
    let (id, interval) = bars();
    server.psql(&format!(
        "CREATE TABLE null_ts (node_id TEXT, interval INT, ts BIGINT, open FLOAT8, high FLOAT8, \
         low FLOAT8, close FLOAT8, volume FLOAT8); \
         INSERT INTO null_ts VALUES ('{id}', {s}, {START}, 1, 1, 1, 1, 1), \
         ('{id}', {s}, NULL, 2, 2, 2, 2, 2), ('{id}', {s}, NULL, 3, 3, 3, 3, 3)",
        s = interval.secs()
    ));
    let loader = QuestDBLoader::open(&source(Flavor::QuestDb, &server.dsn()), &options("null_ts"))
        .await
        .unwrap();
    let err = loader.fetch(START, END, &id, interval).await.unwrap_err();
    assert!(matches!(err, LoaderError::NullTs { rows: 2, .. }), "{err}");
    assert!(!err.is_retryable());

    let report = Runner::backtest(MomentumStrategy::default())
        .backfill_loader(None, Arc::new(loader))
        .backfill_start(START)
        .backfill_end(END)
        .run()
        .await
        .unwrap();
    assert!(!report.succeeded());
    let job = report.failed_jobs().next().unwrap();
    assert!(
        job.error
            .as_deref()
            .unwrap()
            .contains("2 row(s) with a null ts"),
        "{job:?}"
    );
    assert_eq!(job.retries, 0);
}

#[tokio::test]
async fn source_options_choose_the_table_and_descriptions_hide_the_password() {
    let server = pg::server();
    hand_made_table("described", "BIGINT");
    let spec: SourceSpec = format!("questdb:{}", server.dsn()).parse().unwrap();
    let loader = spec
        .open_with(&SourceOptions {
            table: "described".into(),
        })
        .await
        .unwrap();
    let shown = loader.describe();
    assert!(!shown.contains(&server.password), "{shown}");
    assert!(shown.contains("qmtl:***@127.0.0.1"), "{shown}");
    assert!(shown.contains("described"), "{shown}");
    assert!(!format!("{spec:?} {spec}").contains(&server.password));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_rows_are_the_tail_of_the_range_fetch() {
    let server = pg::server();
    // Minute bars with a gap (every 7th missing) and one other node's rows in between.
    server.psql(
        "CREATE TABLE newest (node_id TEXT NOT NULL, interval INT NOT NULL, ts BIGINT, \
         open FLOAT8, close FLOAT8); \
         INSERT INTO newest SELECT 'n', 60, i * 60, i, CASE WHEN i % 5 = 0 THEN NULL \
         ELSE i + 0.5 END FROM generate_series(0, 9999) AS i WHERE i % 7 <> 3; \
         INSERT INTO newest SELECT 'other', 60, i * 60 + 30, -1, -1 \
         FROM generate_series(0, 9999) AS i",
    );
    let minute = Interval::from_secs(60).unwrap();
    let node = NodeId::from_hex("n");
    for flavor in [Flavor::QuestDb, Flavor::Postgres] {
        let loader = QuestDBLoader::open(&source(flavor, &server.dsn()), &options("newest"))
            .await
            .unwrap();
        for (start, end, count) in [
            (0, 600_000, 30),
            (0, 300_000, 1),
            (120_000, 121_000, 100),
            (0, 600_000, 0),
            (500, 500, 5),
            (0, 600_000, 20_000),
        ] {
            let range = loader.fetch(start, end, &node, minute).await.unwrap();
            let newest = loader
                .fetch_last(start, end, count, &node, minute)
                .await
                .unwrap()
                .expect("the database loader selects the newest rows");
            let tail = range.num_rows().min(count as usize);
            let want = range.slice(range.num_rows() - tail, tail);
            assert_eq!(newest, want, "{flavor:?} [{start}, {end}) newest {count}");
        }
    }
}

/// Loader throughput for 1,000,000 rows (ts + 5 float64) of one node, against
/// `psql -c "COPY (the same SELECT) TO STDOUT (FORMAT binary)" > /dev/null` timed in the
/// same run. A measurement, not a check: run it on a release build with
/// `cargo test --release -p qmtl --test postgres_loader -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run explicitly on a release build"]
async fn throughput_of_one_million_rows_against_binary_copy() {
    let server = pg::server();
    server.psql(
        "CREATE TABLE bench (node_id TEXT NOT NULL, interval INT NOT NULL, ts BIGINT NOT NULL, \
         open FLOAT8, high FLOAT8, low FLOAT8, close FLOAT8, volume FLOAT8, \
         PRIMARY KEY (node_id, interval, ts)); \
         INSERT INTO bench SELECT 'n', 60, i * 60, i, i + 0.5, i - 0.5, i + 0.25, 1000 + i \
         FROM generate_series(0, 999999) AS i",
    );
    server.psql("VACUUM ANALYZE bench");
    let select = "SELECT ts, open, high, low, close, volume FROM bench WHERE node_id = 'n' \
                  AND interval = 60 AND ts >= 0 AND ts < 60000000 ORDER BY ts";
    let copy = || {
        let began = std::time::Instant::now();
        let status = std::process::Command::new(server.bin().join("psql"))
            .arg("-h")
            .arg(&server.dir)
            .args([
                "-p",
                &server.port.to_string(),
                "-U",
                pg::USER,
                "-d",
                pg::DB,
                "-X",
            ])
            .args(["-c", &format!("COPY ({select}) TO STDOUT (FORMAT binary)")])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        began.elapsed().as_secs_f64()
    };
    let minute = Interval::from_secs(60).unwrap();
    let node = NodeId::from_hex("n");
    for flavor in [Flavor::QuestDb, Flavor::Postgres] {
        let loader = QuestDBLoader::open(&source(flavor, &server.dsn()), &options("bench"))
            .await
            .unwrap();
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            let reference = copy();
            let began = std::time::Instant::now();
            let batch = loader.fetch(0, 60_000_000, &node, minute).await.unwrap();
            let took = began.elapsed().as_secs_f64();
            assert_eq!(batch.num_rows(), 1_000_000);
            best = (best.0.min(took), best.1.min(reference));
        }
        println!(
            "{flavor:?}: loader {:.3}s, binary COPY {:.3}s, ratio {:.2}",
            best.0,
            best.1,
            best.0 / best.1
        );
    }
}

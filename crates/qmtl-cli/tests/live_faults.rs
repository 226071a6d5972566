//! Faults of a dryrun run with real processes (a throwaway PostgreSQL server, `qmtl
//! gateway`, `qmtl run --mode dryrun`): the database restarting while the run records
//! and follows the table, SIGTERM / SIGINT during the backfill, the warm-up replay and
//! the live phase, and a signal while the database is down (exit 1, naming the rows not
//! recorded, with the report still written). The database restarting during a warm-up
//! whose outputs outnumber the recorder's waiting-rows bound is run in process through
//! the library, whose recorder limits can be made small.
//!
//! "No recorded row lost" is checked as: after the run exits, every recorded node has
//! exactly as many rows in the table as the report says it emitted (`outputs`), the table
//! holding nothing else for it. Time from the signal to the exit is bounded by 2 s.
//!
//! The tests take one lock, so that no two runs compete for the machine's cores while a
//! time is measured.

#![cfg(unix)]

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use qmtl::live::LiveSpec;
use qmtl::metrics::Metrics;
use qmtl::recorder::{RecordError, RecordLimits};
use qmtl::runner::RunError;
use qmtl::strategies::MomentumStrategy;
use qmtl::{Report, Runner};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use support::{
    bundled_csv, count_rows, gateway, http_get, import, node_id, pg, qmtl, read_report,
    report_node, wait_rows, Running, END, LAST_BAR, START,
};

/// The bound the issue sets from a signal to the exit.
const EXIT_BOUND: Duration = Duration::from_secs(2);

/// Bars of the long warm-up case.
const WARMUP_BARS: u64 = 421_000;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A gauge's value in a Prometheus text exposition.
fn gauge(metrics: &str, name: &str) -> Option<i64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn dryrun(url: &str, report: &Path) -> Command {
    let mut cmd = qmtl();
    cmd.args(["run", "momentum", "--mode", "dryrun", "--gateway-url", url])
        .args(["--poll-interval", "0.2", "--report-json"])
        .arg(report);
    cmd
}

/// Checks that each recorded node has exactly its reported outputs in `table`.
#[track_caller]
fn assert_every_output_recorded(server: &pg::Server, table: &str, report: &Value, names: &[&str]) {
    for name in names {
        let node = report_node(report, name);
        let id = node["node_id"].as_str().unwrap();
        let outputs = node["outputs"].as_u64().unwrap();
        let rows = count_rows(server, table, id, i64::MIN);
        assert_eq!(
            rows, outputs,
            "node {name}: rows in {table} vs outputs\n{report}"
        );
    }
}

fn bar_line(bars: &str, ts: i64) -> String {
    let close = 1.30 + (ts % 97) as f64 * 0.001;
    format!(
        "{{\"stream\": \"{bars}\", \"ts\": {ts}, \"open\": {close}, \"high\": {close}, \
         \"low\": {close}, \"close\": {close}, \"volume\": 10}}\n"
    )
}

/// A dryrun over the bundled file with live rows from stdin, recording every node into
/// `table` of `server`, with `extra` flags; returns it once live, and its report's path.
fn live_from_stdin(
    server: &pg::Server,
    url: &str,
    table: &str,
    extra: &[&str],
) -> (Running, PathBuf) {
    let report = server.dir.join(format!("{table}.json"));
    let mut cmd = dryrun(url, &report);
    cmd.args([
        "--backfill-source",
        &bundled_csv(),
        "--backfill-start",
        START,
    ])
    .args(["--backfill-end", END, "--live-source", "jsonl:-"])
    .args(["--record-to", &format!("postgres:{}", server.dsn())])
    .args(["--record-table", table])
    .args(extra)
    .stdin(Stdio::piped());
    let mut run = Running::spawn(cmd);
    run.wait_for("live.start", Duration::from_secs(120));
    (run, report)
}

/// Writes a bar of `bars` at each of `stamps` to the run's input.
fn send_bars(run: &mut Running, bars: &str, stamps: impl IntoIterator<Item = i64>) {
    for ts in stamps {
        run.stdin()
            .write_all(bar_line(bars, ts).as_bytes())
            .unwrap();
    }
    run.stdin().flush().unwrap();
}

fn insert_bars(server: &pg::Server, table: &str, bars: &str, from: i64, n: i64) {
    let values: Vec<String> = (0..n)
        .map(|k| {
            let ts = from + k * 3600;
            format!("('{bars}', 3600, {ts}, 1.3, 1.3, 1.3, 1.{k}, 10)")
        })
        .collect();
    server.psql(&format!(
        "INSERT INTO {table} (node_id, interval, ts, open, high, low, close, volume) VALUES {}",
        values.join(", ")
    ));
}

/// A checkpoint, then an immediate stop. The test server runs with
/// synchronous_commit=off, so without the checkpoint its own last acknowledged commits
/// could be lost by the stop; that would be the server's loss, not the run's.
fn crash(server: &pg::Server) {
    server.psql("CHECKPOINT");
    server.stop();
}

#[test]
fn recorded_rows_survive_a_database_restart_and_are_written_exactly_once() {
    let _serial = serial();
    let server = pg::private();
    let (_gateway, url) = gateway(&[]);
    let table = "outage";
    let metrics_port = pg::closed_port().to_string();
    let bars = node_id("momentum", "bars");
    let signal = node_id("momentum", "signal");

    // Live rows come on stdin; every node is recorded into the restarting server.
    let extra = ["--metrics-port", metrics_port.as_str()];
    let (mut run, report) = live_from_stdin(&server, &url, table, &extra);
    let first = LAST_BAR + 3600;
    let ts = |k: i64| first + k * 3600;

    // Before the restart: written as they come.
    send_bars(&mut run, &bars, (0..3).map(ts));
    wait_rows(&server, table, &signal, first, 3, &[&run]);

    // While the database is down: computed, kept, and counted as waiting.
    crash(&server);
    send_bars(&mut run, &bars, (3..6).map(ts));
    run.wait_for("recorder.write_retrying", Duration::from_secs(30));
    let metrics = http_get(&format!("127.0.0.1:{metrics_port}"), "/metrics");
    let waiting = gauge(&metrics, "recorder_rows_waiting").unwrap();
    assert!(waiting >= 3, "{metrics}");

    // Back: the waiting rows are written, then rows that come after.
    server.start();
    wait_rows(&server, table, &signal, first, 6, &[&run]);
    send_bars(&mut run, &bars, (6..9).map(ts));
    wait_rows(&server, table, &signal, first, 9, &[&run]);
    let metrics = http_get(&format!("127.0.0.1:{metrics_port}"), "/metrics");
    assert_eq!(
        gauge(&metrics, "recorder_rows_waiting"),
        Some(0),
        "{metrics}"
    );
    assert_eq!(
        gauge(&metrics, "backfill_jobs_in_progress"),
        Some(0),
        "{metrics}"
    );

    // The input ends, the run ends cleanly; every output is in the table exactly once.
    drop(run.child.stdin.take());
    let (status, _) = run.wait(Instant::now(), Duration::from_secs(60));
    assert!(status.success(), "{status}:\n{}", run.output());
    assert!(
        run.output().contains("recorder.write_recovered"),
        "{}",
        run.output()
    );
    assert!(!run.output().contains(&server.password), "{}", run.output());
    let report = read_report(&report);
    assert_eq!(report["live_events"], 9, "{report}");
    assert_eq!(count_rows(&server, table, &signal, first), 9);
    assert_every_output_recorded(&server, table, &report, &["bars", "sma_fast", "signal"]);
    let keys = server.psql(&format!(
        "SELECT count(DISTINCT (node_id, ts)) FROM {table}"
    ));
    let rows = server.psql(&format!("SELECT count(*) FROM {table}"));
    assert_eq!(keys, rows);
}

#[test]
fn the_table_follower_survives_a_database_restart_without_skipping_or_repeating_rows() {
    let _serial = serial();
    let server = pg::private();
    let (_gateway, url) = gateway(&[]);
    let table = "follow";
    let bars = node_id("momentum", "bars");
    let signal = node_id("momentum", "signal");
    let source = format!("questdb:{}", server.dsn());
    import(&server, "momentum", "bars", &bundled_csv(), table);

    // The run backfills from the table, follows it, and records into it.
    let report = server.dir.join("follow.json");
    let mut cmd = dryrun(&url, &report);
    cmd.args(["--backfill-source", &source, "--backfill-table", table])
        .args(["--backfill-start", START, "--backfill-end", END]);
    let mut run = Running::spawn(cmd);
    run.wait_for("live.start", Duration::from_secs(120));
    let first = LAST_BAR + 3600;

    // Rows before, after a restart during which polls fail, and after that.
    insert_bars(&server, table, &bars, first, 3);
    wait_rows(&server, table, &signal, first, 3, &[&run]);
    crash(&server);
    run.wait_for("live.poll_failed", Duration::from_secs(30));
    server.start();
    insert_bars(&server, table, &bars, first + 3 * 3600, 3);
    wait_rows(&server, table, &signal, first, 6, &[&run]);
    insert_bars(&server, table, &bars, first + 6 * 3600, 3);
    wait_rows(&server, table, &signal, first, 9, &[&run]);

    let (status, took) = run.signal("TERM");
    assert!(status.success(), "{status}:\n{}", run.output());
    assert!(took < EXIT_BOUND, "took {took:?}:\n{}", run.output());
    let report = read_report(&report);
    assert_eq!(report["live_events"], 9, "{report}");
    assert_eq!(report["live_duplicates"], 0, "{report}");
    assert_eq!(count_rows(&server, table, &signal, first), 9);
    assert_every_output_recorded(&server, table, &report, &["sma_fast", "sma_slow", "signal"]);
}

#[test]
fn sigterm_and_sigint_during_live_exit_within_2s_with_every_output_recorded() {
    let _serial = serial();
    let server = pg::server();
    let (_gateway, url) = gateway(&[]);
    let bars = node_id("momentum", "bars");
    for signal in ["TERM", "INT"] {
        let table = format!("live_{}", signal.to_lowercase());
        let (mut run, report) = live_from_stdin(server, &url, &table, &[]);
        send_bars(&mut run, &bars, (1..=5).map(|k| LAST_BAR + k * 3600));
        // The signal comes while the last rows may still be on their way in.
        std::thread::sleep(Duration::from_millis(300));

        let (status, took) = run.signal(signal);
        assert!(status.success(), "SIG{signal}: {status}:\n{}", run.output());
        assert!(
            took < EXIT_BOUND,
            "SIG{signal} took {took:?}:\n{}",
            run.output()
        );
        let report = read_report(&report);
        assert_every_output_recorded(server, &table, &report, &["bars", "sma_fast", "signal"]);
    }
}

/// A table of `rows` hourly bars of constant price for the `momentum` strategy.
fn big_table(server: &pg::Server, table: &str, rows: u64) {
    let bars = node_id("momentum", "bars");
    server.psql(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (node_id TEXT, interval INT, ts BIGINT, \
         open FLOAT8, high FLOAT8, low FLOAT8, close FLOAT8, volume FLOAT8); \
         TRUNCATE {table}; \
         INSERT INTO {table} SELECT '{bars}', 3600, g::bigint * 3600, 1, 1, 1, \
         1 + (g % 7) * 0.01, 1 FROM generate_series(1, {rows}) AS g"
    ));
}

/// A dryrun backfilling every row of `table` on `server` and recording into `record`;
/// returns it and the path of its report.
fn over_whole_table(
    server: &pg::Server,
    url: &str,
    table: &str,
    record: &str,
) -> (Command, PathBuf) {
    let report = server.dir.join(format!("{record}.json"));
    let source = format!("questdb:{}", server.dsn());
    let mut cmd = dryrun(url, &report);
    cmd.args(["--backfill-source", &source, "--backfill-table", table])
        .args(["--backfill-start", "0", "--backfill-end", "3600000001"])
        .args(["--record-to", &format!("postgres:{}", server.dsn())])
        .args(["--record-table", record]);
    (cmd, report)
}

/// Sends `signal` and checks the run exits 0 within [`EXIT_BOUND`].
#[track_caller]
fn assert_exit_0_in_time(run: &mut Running, signal: &str) {
    let (status, took) = run.signal(signal);
    assert_eq!(status.code(), Some(0), "SIG{signal}:\n{}", run.output());
    assert!(
        took < EXIT_BOUND,
        "SIG{signal} took {took:?}:\n{}",
        run.output()
    );
}

#[test]
fn sigterm_and_sigint_during_backfill_exit_within_2s_with_nothing_computed_or_recorded() {
    let _serial = serial();
    let server = pg::server();
    big_table(server, "backfill_big", 1_000_000);
    let (_gateway, url) = gateway(&[]);
    for signal in ["TERM", "INT"] {
        let record = format!("backfill_{}", signal.to_lowercase());
        let (mut cmd, report) = over_whole_table(server, &url, "backfill_big", &record);
        cmd.args(["--concurrency", "1"]);
        let mut run = Running::spawn(cmd);
        run.wait_for("backfill.start", Duration::from_secs(60));

        assert_exit_0_in_time(&mut run, signal);
        let report = read_report(&report);
        assert_eq!(report["jobs"][0]["status"], "cancelled", "{report}");
        assert_every_output_recorded(server, &record, &report, &["sma_fast", "signal"]);
    }
}

#[test]
fn sigterm_and_sigint_during_a_long_warmup_exit_within_2s_with_every_output_recorded() {
    let _serial = serial();
    let server = pg::server();
    // Enough bars that replaying and recording them takes many slices.
    big_table(server, "warmup_big", WARMUP_BARS);
    let (_gateway, url) = gateway(&[]);
    for signal in ["TERM", "INT"] {
        let record = format!("warmup_{}", signal.to_lowercase());
        let (cmd, report) = over_whole_table(server, &url, "warmup_big", &record);
        let mut run = Running::spawn(cmd);
        // Part way through: after ten slices of three nodes are written.
        run.wait_for_count("recorder.written", 30, Duration::from_secs(120));

        assert_exit_0_in_time(&mut run, signal);
        assert!(!run.output().contains("live.start"), "{}", run.output());
        let report = read_report(&report);
        let signal_outputs = report_node(&report, "signal")["outputs"].as_u64().unwrap();
        assert!(
            signal_outputs > 0 && signal_outputs < WARMUP_BARS,
            "stopped part way: {report}"
        );
        assert_every_output_recorded(
            server,
            &record,
            &report,
            &["sma_fast", "sma_slow", "signal"],
        );
    }
}

/// A jsonl run recording into `server`, at `live.start`, with the server then stopped
/// and two live rows computed that cannot be recorded; returns it and its report's path.
fn run_with_database_down(server: &pg::Server, url: &str, table: &str) -> (Running, PathBuf) {
    let bars = node_id("momentum", "bars");
    let (mut run, report) = live_from_stdin(server, url, table, &[]);
    server.stop();
    send_bars(&mut run, &bars, (1..=2).map(|k| LAST_BAR + k * 3600));
    (run, report)
}

/// Checks the exit (1, in time, naming the rows not recorded) and that the report was
/// written anyway, with the error and the run's counts.
#[track_caller]
fn assert_exit_1_naming_unrecorded_rows(run: &mut Running, server: &pg::Server, report: &Path) {
    let (status, took) = run.signal("TERM");
    assert_eq!(status.code(), Some(1), "{}", run.output());
    assert!(took < EXIT_BOUND, "took {took:?}:\n{}", run.output());
    let output = run.output();
    assert!(output.contains("were not recorded"), "{output}");
    assert!(!output.contains(&server.password), "{output}");
    assert!(!output.contains("panicked"), "{output}");
    let report = read_report(report);
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains("were not recorded"), "{report}");
    assert!(!error.contains(&server.password), "{report}");
    assert_eq!(report["live_events"], 2, "{report}");
    assert!(report["strategy_id"].is_string(), "{report}");
    assert!(report_node(&report, "signal")["outputs"].as_u64() > Some(0));
}

#[test]
fn a_signal_while_the_database_is_down_exits_1_naming_the_rows_not_recorded() {
    let _serial = serial();
    let (_gateway, url) = gateway(&[]);

    // During the live phase.
    let server = pg::private();
    let (mut run, report) = run_with_database_down(&server, &url, "down_live");
    run.wait_for("recorder.write_retrying", Duration::from_secs(30));
    assert_exit_1_naming_unrecorded_rows(&mut run, &server, &report);

    // During the last write after the input ended, which would otherwise keep trying.
    let server = pg::private();
    let (mut run, report) = run_with_database_down(&server, &url, "down_end");
    drop(run.child.stdin.take());
    run.wait_for("recorder.final_write_retrying", Duration::from_secs(30));
    assert_exit_1_naming_unrecorded_rows(&mut run, &server, &report);
}

/// Bars of the warm-up that outlives a database restart: with every node recorded (a
/// `jsonl:` live source) its outputs are four times as many, far over [`TEST_LIMITS`]'s
/// waiting-rows bound.
const RESTART_BARS: u64 = 40_000;

/// Recorder limits scaled down so that a warm-up of [`RESTART_BARS`] dwarfs them. The
/// bound leaves room for the pause threshold plus one replay slice's outputs (4096 rows
/// for each of four nodes), which are buffered before the producer waits.
const TEST_LIMITS: (usize, usize) = (5_000, 30_000);

/// A dryrun in process over every row of `history` on `server`, recording every node
/// into `record` with [`TEST_LIMITS`], its live source an empty file (so it ends after
/// its warm-up); spawned on `runtime`, with the metrics it updates and its report path.
fn warmup_run(
    runtime: &tokio::runtime::Runtime,
    server: &pg::Server,
    url: &str,
    history: &str,
    record: &str,
    cancel: CancellationToken,
) -> (
    tokio::task::JoinHandle<Result<Report, RunError>>,
    Arc<Metrics>,
    PathBuf,
) {
    // The server is stopped while the run writes: its sessions commit synchronously, so
    // that a commit it acknowledged is not lost by the stop (the server's loss, not the
    // run's). The record table exists from the start, so its rows can be counted at once.
    server.psql("ALTER ROLE CURRENT_USER SET synchronous_commit = on");
    server.psql(&format!(
        "CREATE TABLE {record} (node_id TEXT NOT NULL, interval INTEGER NOT NULL, \
         ts BIGINT NOT NULL, PRIMARY KEY (node_id, interval, ts))"
    ));
    let live = server.dir.join(format!("{record}.jsonl"));
    std::fs::write(&live, "").unwrap();
    let report = server.dir.join(format!("{record}.json"));
    let metrics = Arc::new(Metrics::new());
    let (pause, bound) = TEST_LIMITS;
    let runner = Runner::dryrun(MomentumStrategy::default())
        .strategy_name("momentum")
        .gateway_url(url)
        .backfill_source(format!("questdb:{}", server.dsn()))
        .backfill_table(history)
        .backfill_start(0)
        .backfill_end(3_600_000_001)
        .record_to(format!("postgres:{}", server.dsn()))
        .record_table(record)
        .record_limits(
            RecordLimits::default()
                .pause_rows(pause)
                .max_waiting_rows(bound),
        )
        .live_source(LiveSpec::Jsonl(live))
        .metrics(metrics.clone())
        .report_json(&report)
        .cancel_token(cancel);
    (runtime.spawn(runner.run()), metrics, report)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Crashes `server` once the run has recorded its first rows into `record`, then waits
/// (up to 60 s) until the run holds its warm-up back: more rows wait than the pause
/// threshold.
fn crash_during_warmup(server: &pg::Server, record: &str, metrics: &Metrics) {
    let began = Instant::now();
    while server.psql(&format!("SELECT count(*) FROM {record}")) == "0" {
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "nothing recorded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    crash(server);
    let began = Instant::now();
    while metrics.recorder_rows_waiting.get() <= TEST_LIMITS.0 as i64 {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "the warm-up never waited: {} rows waiting",
            metrics.recorder_rows_waiting.get()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_warmup_larger_than_the_waiting_rows_bound_survives_a_restart_recording_each_output_once() {
    let _serial = serial();
    let server = pg::private();
    let (_gateway, url) = gateway(&[]);
    big_table(&server, "history", RESTART_BARS);
    let runtime = runtime();
    let cancel = CancellationToken::new();
    let (run, metrics, _) = warmup_run(&runtime, &server, &url, "history", "restart", cancel);

    // Down part way through the warm-up: the warm-up waits for the database instead of
    // piling its outputs past the bound, which would fail the run.
    crash_during_warmup(&server, "restart", &metrics);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !run.is_finished(),
        "the run ended while the database was down"
    );
    let waiting = metrics.recorder_rows_waiting.get();
    assert!(waiting <= TEST_LIMITS.1 as i64, "{waiting} rows waiting");

    // Back: the warm-up goes on and every output is recorded, each exactly once.
    server.start();
    let report = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(600), run).await })
        .expect("the run ends once its warm-up is done")
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let report = serde_json::to_value(&report).unwrap();
    let outputs: u64 = ["bars", "sma_fast", "sma_slow", "signal"]
        .iter()
        .map(|name| report_node(&report, name)["outputs"].as_u64().unwrap())
        .sum();
    assert!(outputs > 4 * TEST_LIMITS.1 as u64, "{report}");
    assert_eq!(
        report_node(&report, "bars")["outputs"].as_u64(),
        Some(RESTART_BARS),
        "{report}"
    );
    assert_every_output_recorded(
        &server,
        "restart",
        &report,
        &["bars", "sma_fast", "sma_slow", "signal"],
    );
    let keys = server.psql("SELECT count(DISTINCT (node_id, interval, ts)) FROM restart");
    let rows = server.psql("SELECT count(*) FROM restart");
    assert_eq!(keys, rows);
    assert_eq!(metrics.recorder_rows_waiting.get(), 0);
}

#[test]
fn a_signal_while_the_warmup_waits_for_the_database_stops_it_in_time_and_keeps_the_report() {
    let _serial = serial();
    let server = pg::private();
    let (_gateway, url) = gateway(&[]);
    big_table(&server, "history", RESTART_BARS);
    let runtime = runtime();
    let cancel = CancellationToken::new();
    let (run, metrics, report) =
        warmup_run(&runtime, &server, &url, "history", "held", cancel.clone());
    crash_during_warmup(&server, "held", &metrics);

    // The signal ends the wait; the rows still waiting are named, and the report is
    // written with the error.
    let signalled = Instant::now();
    cancel.cancel();
    let result = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), run).await })
        .expect("the run stops")
        .unwrap();
    let took = signalled.elapsed();
    assert!(took < EXIT_BOUND, "took {took:?}");
    let error = result.expect_err("the database is still down");
    assert!(
        matches!(
            &error,
            RunError::Record {
                source: RecordError::Unwritten { .. },
                ..
            }
        ),
        "{error}"
    );
    assert!(!error.is_usage(), "a runtime failure: exit 1");
    let report = read_report(&report);
    let signal_outputs = report_node(&report, "signal")["outputs"].as_u64().unwrap();
    assert!(
        signal_outputs > 0 && signal_outputs < RESTART_BARS,
        "{report}"
    );
    let text = report["error"].as_str().unwrap_or_default();
    assert!(text.contains("were not recorded"), "{report}");
    assert!(!text.contains(&server.password), "{report}");
}

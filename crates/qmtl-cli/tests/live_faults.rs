//! Faults of a dryrun run with real processes (a throwaway PostgreSQL server, `qmtl
//! gateway`, `qmtl run --mode dryrun`): the database restarting while the run records
//! and follows the table, SIGTERM / SIGINT during the backfill, the warm-up replay and
//! the live phase, and a signal while the database is down (exit 1, naming the rows not
//! recorded).
//!
//! "No recorded row lost" is checked as: after the run exits, every recorded node has
//! exactly as many rows in the table as the report says it emitted (`outputs`), the table
//! holding nothing else for it. Time from the signal to the exit is bounded by 2 s.
//!
//! The tests take one lock, so that no two runs compete for the machine's cores while a
//! time is measured.

#![cfg(unix)]

#[path = "../../qmtl/tests/support/pg.rs"]
mod pg;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

const START: &str = "1492592400";
const END: &str = "1518019200";
/// The last bar of the bundled file.
const LAST_BAR: i64 = 1_518_015_600;
/// The bound the issue sets from a signal to the exit.
const EXIT_BOUND: Duration = Duration::from_secs(2);

/// Bars of the long warm-up case.
const WARMUP_BARS: u64 = 421_000;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn qmtl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qmtl"));
    cmd.current_dir(repo()).env_remove("QMTL_GATEWAY_TOKEN");
    cmd
}

fn csv() -> String {
    format!("csv:{}", repo().join("data/eurusd_1h.csv").display())
}

fn node_ids(strategy: &str) -> Vec<(String, String)> {
    let out = qmtl().args(["nodes", strategy, "--json"]).output().unwrap();
    let nodes: Value = serde_json::from_slice(&out.stdout).unwrap();
    nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_owned(),
                n["node_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn node_id(strategy: &str, name: &str) -> String {
    node_ids(strategy)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1
}

/// A running child whose output lines are collected as they come.
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qmtl starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for pipe in pipes {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Running { child, lines }
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn stdin(&mut self) -> &mut ChildStdin {
        self.child.stdin.as_mut().expect("stdin is piped")
    }

    /// The first line containing `needle`, waiting up to `within`.
    #[track_caller]
    fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        let began = Instant::now();
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("exited ({status}) before '{needle}':\n{}", self.output());
            }
            assert!(
                began.elapsed() < within,
                "no '{needle}' within {within:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `within` for `n` lines containing `needle`.
    #[track_caller]
    fn wait_for_count(&mut self, needle: &str, n: usize, within: Duration) {
        let began = Instant::now();
        while self.output().matches(needle).count() < n {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "exited ({status}) before {n} '{needle}':\n{}",
                    self.output()
                );
            }
            assert!(
                began.elapsed() < within,
                "too few '{needle}':\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`TERM` or `INT`) and waits; returns the status and how long the
    /// exit took.
    fn signal(&mut self, signal: &str) -> (ExitStatus, Duration) {
        let pid = self.child.id().to_string();
        let sent = Instant::now();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(ok.success());
        let (status, took) = self.wait(sent);
        eprintln!("SIG{signal}: exit {status} after {took:?}");
        (status, took)
    }

    fn wait(&mut self, since: Instant) -> (ExitStatus, Duration) {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let took = since.elapsed();
                std::thread::sleep(Duration::from_millis(100));
                return (status, took);
            }
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "still running after 60 s:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `qmtl gateway` on a free port; returns it and its URL.
fn gateway() -> (Running, String) {
    let mut cmd = qmtl();
    cmd.args(["gateway", "--listen", "127.0.0.1:0"])
        .args(["--store", "sqlite::memory:"]);
    let mut running = Running::spawn(cmd);
    let line = running.wait_for("gateway listening on http://", Duration::from_secs(20));
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    (running, url)
}

/// GET over plain HTTP/1.0; returns the body.
fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_once("\r\n\r\n")
        .map_or(answer.clone(), |(_, b)| b.to_owned())
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

fn read_report(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn count(server: &pg::Server, table: &str, node: &str, from: i64) -> u64 {
    let sql = format!("SELECT count(*) FROM {table} WHERE node_id = '{node}' AND ts >= {from}");
    server.psql(&sql).parse().unwrap()
}

/// Waits up to 30 s for `want` rows of `node` at or after `from`.
#[track_caller]
fn wait_rows(server: &pg::Server, table: &str, node: &str, from: i64, want: u64, run: &Running) {
    let began = Instant::now();
    loop {
        let n = count(server, table, node, from);
        if n >= want {
            return;
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "{n} of {want} rows of {node} from {from}:\n{}",
            run.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks that each recorded node has exactly its reported outputs in `table`.
#[track_caller]
fn assert_every_output_recorded(server: &pg::Server, table: &str, report: &Value, names: &[&str]) {
    for name in names {
        let node = report["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == *name)
            .unwrap();
        let id = node["node_id"].as_str().unwrap();
        let outputs = node["outputs"].as_u64().unwrap();
        let rows = count(server, table, id, i64::MIN);
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
    let (_gateway, url) = gateway();
    let table = "outage";
    let report = server.dir.join("outage.json");
    let metrics_port = pg::closed_port().to_string();
    let bars = node_id("momentum", "bars");
    let signal = node_id("momentum", "signal");

    // Live rows come on stdin; every node is recorded into the restarting server.
    let mut cmd = dryrun(&url, &report);
    cmd.args(["--backfill-source", &csv(), "--backfill-start", START])
        .args(["--backfill-end", END, "--live-source", "jsonl:-"])
        .args(["--record-to", &format!("postgres:{}", server.dsn())])
        .args(["--record-table", table, "--metrics-port", &metrics_port])
        .stdin(Stdio::piped());
    let mut run = Running::spawn(cmd);
    run.wait_for("live.start", Duration::from_secs(120));
    let first = LAST_BAR + 3600;
    let ts = |k: i64| first + k * 3600;

    // Before the restart: written as they come.
    for k in 0..3 {
        run.stdin()
            .write_all(bar_line(&bars, ts(k)).as_bytes())
            .unwrap();
    }
    run.stdin().flush().unwrap();
    wait_rows(&server, table, &signal, first, 3, &run);

    // While the database is down: computed, kept, and counted as waiting.
    crash(&server);
    for k in 3..6 {
        run.stdin()
            .write_all(bar_line(&bars, ts(k)).as_bytes())
            .unwrap();
    }
    run.stdin().flush().unwrap();
    run.wait_for("recorder.write_retrying", Duration::from_secs(30));
    let metrics = http_get(&format!("127.0.0.1:{metrics_port}"), "/metrics");
    let waiting = gauge(&metrics, "recorder_rows_waiting").unwrap();
    assert!(waiting >= 3, "{metrics}");

    // Back: the waiting rows are written, then rows that come after.
    server.start();
    wait_rows(&server, table, &signal, first, 6, &run);
    for k in 6..9 {
        run.stdin()
            .write_all(bar_line(&bars, ts(k)).as_bytes())
            .unwrap();
    }
    run.stdin().flush().unwrap();
    wait_rows(&server, table, &signal, first, 9, &run);
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
    let (status, _) = run.wait(Instant::now());
    assert!(status.success(), "{status}:\n{}", run.output());
    assert!(
        run.output().contains("recorder.write_recovered"),
        "{}",
        run.output()
    );
    assert!(!run.output().contains(&server.password), "{}", run.output());
    let report = read_report(&report);
    assert_eq!(report["live_events"], 9, "{report}");
    assert_eq!(count(&server, table, &signal, first), 9);
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
    let (_gateway, url) = gateway();
    let table = "follow";
    let bars = node_id("momentum", "bars");
    let signal = node_id("momentum", "signal");
    let source = format!("questdb:{}", server.dsn());
    let out = qmtl()
        .args(["import", "--strategy", "momentum", "--stream", "bars"])
        .args(["--from", &csv(), "--into", &source, "--table", table])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

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
    wait_rows(&server, table, &signal, first, 3, &run);
    crash(&server);
    run.wait_for("live.poll_failed", Duration::from_secs(30));
    server.start();
    insert_bars(&server, table, &bars, first + 3 * 3600, 3);
    wait_rows(&server, table, &signal, first, 6, &run);
    insert_bars(&server, table, &bars, first + 6 * 3600, 3);
    wait_rows(&server, table, &signal, first, 9, &run);

    let (status, took) = run.signal("TERM");
    assert!(status.success(), "{status}:\n{}", run.output());
    assert!(took < EXIT_BOUND, "took {took:?}:\n{}", run.output());
    let report = read_report(&report);
    assert_eq!(report["live_events"], 9, "{report}");
    assert_eq!(report["live_duplicates"], 0, "{report}");
    assert_eq!(count(&server, table, &signal, first), 9);
    assert_every_output_recorded(&server, table, &report, &["sma_fast", "sma_slow", "signal"]);
}

#[test]
fn sigterm_and_sigint_during_live_exit_within_2s_with_every_output_recorded() {
    let _serial = serial();
    let server = pg::server();
    let (_gateway, url) = gateway();
    let bars = node_id("momentum", "bars");
    for signal in ["TERM", "INT"] {
        let table = format!("live_{}", signal.to_lowercase());
        let report = server.dir.join(format!("{table}.json"));
        let mut cmd = dryrun(&url, &report);
        cmd.args(["--backfill-source", &csv(), "--backfill-start", START])
            .args(["--backfill-end", END, "--live-source", "jsonl:-"])
            .args(["--record-to", &format!("postgres:{}", server.dsn())])
            .args(["--record-table", &table])
            .stdin(Stdio::piped());
        let mut run = Running::spawn(cmd);
        run.wait_for("live.start", Duration::from_secs(120));
        for k in 1..=5 {
            let line = bar_line(&bars, LAST_BAR + k * 3600);
            run.stdin().write_all(line.as_bytes()).unwrap();
        }
        run.stdin().flush().unwrap();
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

#[test]
fn sigterm_and_sigint_during_backfill_exit_within_2s_with_nothing_computed_or_recorded() {
    let _serial = serial();
    let server = pg::server();
    big_table(server, "backfill_big", 1_000_000);
    let (_gateway, url) = gateway();
    for signal in ["TERM", "INT"] {
        let record = format!("backfill_{}", signal.to_lowercase());
        let report = server.dir.join(format!("{record}.json"));
        let source = format!("questdb:{}", server.dsn());
        let mut cmd = dryrun(&url, &report);
        cmd.args([
            "--backfill-source",
            &source,
            "--backfill-table",
            "backfill_big",
        ])
        .args(["--backfill-start", "0", "--backfill-end", "3600000001"])
        .args(["--concurrency", "1"])
        .args(["--record-to", &format!("postgres:{}", server.dsn())])
        .args(["--record-table", &record]);
        let mut run = Running::spawn(cmd);
        run.wait_for("backfill.start", Duration::from_secs(60));

        let (status, took) = run.signal(signal);
        assert_eq!(status.code(), Some(0), "SIG{signal}:\n{}", run.output());
        assert!(
            took < EXIT_BOUND,
            "SIG{signal} took {took:?}:\n{}",
            run.output()
        );
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
    let (_gateway, url) = gateway();
    for signal in ["TERM", "INT"] {
        let record = format!("warmup_{}", signal.to_lowercase());
        let report = server.dir.join(format!("{record}.json"));
        let source = format!("questdb:{}", server.dsn());
        let mut cmd = dryrun(&url, &report);
        cmd.args([
            "--backfill-source",
            &source,
            "--backfill-table",
            "warmup_big",
        ])
        .args(["--backfill-start", "0", "--backfill-end", "3600000001"])
        .args(["--record-to", &format!("postgres:{}", server.dsn())])
        .args(["--record-table", &record]);
        let mut run = Running::spawn(cmd);
        // Part way through: after ten slices of three nodes are written.
        run.wait_for_count("recorder.written", 30, Duration::from_secs(120));

        let (status, took) = run.signal(signal);
        assert_eq!(status.code(), Some(0), "SIG{signal}:\n{}", run.output());
        assert!(
            took < EXIT_BOUND,
            "SIG{signal} took {took:?}:\n{}",
            run.output()
        );
        assert!(!run.output().contains("live.start"), "{}", run.output());
        let report = read_report(&report);
        let signal_outputs = report["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "signal")
            .unwrap()["outputs"]
            .as_u64()
            .unwrap();
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
/// and two live rows computed that cannot be recorded.
fn run_with_database_down(server: &pg::Server, url: &str, table: &str) -> Running {
    let report = server.dir.join(format!("{table}.json"));
    let bars = node_id("momentum", "bars");
    let mut cmd = dryrun(url, &report);
    cmd.args(["--backfill-source", &csv(), "--backfill-start", START])
        .args(["--backfill-end", END, "--live-source", "jsonl:-"])
        .args(["--record-to", &format!("postgres:{}", server.dsn())])
        .args(["--record-table", table])
        .stdin(Stdio::piped());
    let mut run = Running::spawn(cmd);
    run.wait_for("live.start", Duration::from_secs(120));
    server.stop();
    for k in 1..=2 {
        let line = bar_line(&bars, LAST_BAR + k * 3600);
        run.stdin().write_all(line.as_bytes()).unwrap();
    }
    run.stdin().flush().unwrap();
    run
}

#[track_caller]
fn assert_exit_1_naming_unrecorded_rows(run: &mut Running, server: &pg::Server) {
    let (status, took) = run.signal("TERM");
    assert_eq!(status.code(), Some(1), "{}", run.output());
    assert!(took < EXIT_BOUND, "took {took:?}:\n{}", run.output());
    let output = run.output();
    assert!(output.contains("were not recorded"), "{output}");
    assert!(!output.contains(&server.password), "{output}");
    assert!(!output.contains("panicked"), "{output}");
}

#[test]
fn a_signal_while_the_database_is_down_exits_1_naming_the_rows_not_recorded() {
    let _serial = serial();
    let (_gateway, url) = gateway();

    // During the live phase.
    let server = pg::private();
    let mut run = run_with_database_down(&server, &url, "down_live");
    run.wait_for("recorder.write_retrying", Duration::from_secs(30));
    assert_exit_1_naming_unrecorded_rows(&mut run, &server);

    // During the last write after the input ended, which would otherwise keep trying.
    let server = pg::private();
    let mut run = run_with_database_down(&server, &url, "down_end");
    drop(run.child.stdin.take());
    run.wait_for("recorder.final_write_retrying", Duration::from_secs(30));
    assert_exit_1_naming_unrecorded_rows(&mut run, &server);
}

//! The `qmtl` binary against a real PostgreSQL server started by the test (the shared
//! `support/pg.rs` of the library's tests): `qmtl import` of the bundled EUR/USD file
//! followed by the guide's `qmtl run momentum ... --backfill-source questdb:...` gives
//! the same node figures as the CSV path, the password shows nowhere, connection
//! failures exit with the right codes, and `--record-to` writes the signal node.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use support::{backtest_args, bundled_csv, import, node_id, pg, report_node, text, END, START};

fn qmtl(args: &[&str]) -> Output {
    support::qmtl()
        .args(args)
        .env("RUST_LOG", "debug")
        .output()
        .expect("run qmtl")
}

/// A file in the server's directory, which goes away with the server.
fn scratch(name: &str) -> PathBuf {
    pg::server().dir.join(name)
}

fn run_momentum(source: &str, report: &Path, extra: &[&str]) -> Output {
    let mut flags = vec!["--report-json", report.to_str().unwrap()];
    flags.extend_from_slice(extra);
    qmtl(&backtest_args(source, &flags))
}

/// (name, rows_loaded, first_ts, last_ts, ready, gaps, outputs) per node.
fn figures(report: &Value) -> Vec<Value> {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            serde_json::json!([
                n["name"],
                n["rows_loaded"],
                n["first_ts"],
                n["last_ts"],
                n["ready"],
                n["gaps"],
                n["outputs"]
            ])
        })
        .collect()
}

fn read_json(path: &Path) -> (String, Value) {
    let raw = std::fs::read_to_string(path).unwrap();
    let value = serde_json::from_str(&raw).unwrap();
    (raw, value)
}

#[test]
fn import_then_run_gives_the_csv_figures_and_never_shows_the_password() {
    let server = pg::server();
    let into = format!("questdb:{}", server.dsn());

    // Import the bundled file for the bars stream, twice: the second changes nothing.
    for _ in 0..2 {
        let out = qmtl(&[
            "import",
            "--strategy",
            "momentum",
            "--stream",
            "bars",
            "--from",
            &bundled_csv(),
            "--into",
            &into,
        ]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("imported 5000 rows of stream 'bars'"),
            "{}",
            text(&out)
        );
        assert!(!text(&out).contains(&server.password), "{}", text(&out));
    }
    assert_eq!(server.psql("SELECT count(*) FROM node_data"), "5000");

    // The guide's command reports what the CSV path reports.
    let csv_report = scratch("csv.json");
    let out = run_momentum(&bundled_csv(), &csv_report, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let db_report = scratch("db.json");
    let out = run_momentum(&into, &db_report, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let (raw, db) = read_json(&db_report);
    let (_, csv) = read_json(&csv_report);
    assert_eq!(figures(&db), figures(&csv));
    assert_eq!(db["nodes"][0]["rows_loaded"], 5000);
    assert_eq!(db["nodes"][0]["first_ts"], 1_492_592_400);
    assert_eq!(db["nodes"][0]["last_ts"], 1_518_015_600);

    // The password is in no output, log line or report; the plan shows it masked.
    let all = text(&out);
    assert!(!all.contains(&server.password), "{all}");
    assert!(!raw.contains(&server.password), "{raw}");
    assert!(
        all.contains("questdb:postgresql://qmtl:***@127.0.0.1"),
        "{all}"
    );
}

#[test]
fn connection_failures_name_the_server_or_user_with_the_right_exit_code() {
    let server = pg::server();
    let report = scratch("fail.json");

    let wrong = format!(
        "questdb:postgresql://qmtl:not-the-pass-42@127.0.0.1:{}/qmtl",
        server.port
    );
    let out = run_momentum(&wrong, &report, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("authentication failed for user 'qmtl'"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("not-the-pass-42"), "{}", text(&out));

    let port = pg::closed_port();
    let down = format!("questdb:postgresql://qmtl:not-the-pass-42@127.0.0.1:{port}/qmtl");
    let out = run_momentum(&down, &report, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("127.0.0.1:{port}")),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("not-the-pass-42"), "{}", text(&out));

    let out = run_momentum(
        &format!("questdb:{}", server.dsn()),
        &report,
        &["--backfill-table", "no_such_table"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("table no_such_table does not exist"),
        "{}",
        text(&out)
    );
}

#[test]
fn record_to_writes_the_signal_node_and_import_checks_the_stream() {
    let server = pg::server();
    let report = scratch("record.json");
    let into = format!("postgres:{}", server.dsn());
    let out = run_momentum(
        &bundled_csv(),
        &report,
        &["--record-to", &into, "--record-table", "cli_recorded"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(&server.password), "{}", text(&out));
    let (_, value) = read_json(&report);
    let signal = report_node(&value, "signal");
    let count = server.psql("SELECT count(*) FROM cli_recorded");
    assert_eq!(count, signal["outputs"].to_string());

    let out = qmtl(&[
        "import",
        "--strategy",
        "momentum",
        "--stream",
        "nope",
        "--from",
        &bundled_csv(),
        "--into",
        &into,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no stream 'nope' (streams: bars)"),
        "{}",
        text(&out)
    );
}

/// `GET /metrics` over a plain socket; None while nothing listens yet.
fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn the_guide_metrics_are_served_for_the_stream_node_on_the_questdb_path() {
    let server = pg::server();
    let into = format!("questdb:{}", server.dsn());
    import(server, "momentum", "bars", &bundled_csv(), "metrics_data");

    let port = pg::closed_port();
    let report = scratch("metrics.json");
    let mut child = support::qmtl()
        .args([
            "run",
            "momentum",
            "--backfill-source",
            &into,
            "--backfill-table",
        ])
        .args([
            "metrics_data",
            "--backfill-start",
            START,
            "--backfill-end",
            END,
        ])
        .args(["--metrics-port", &port.to_string(), "--metrics-linger", "5"])
        .arg("--report-json")
        .arg(&report)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // Scrape while the process serves, then let it finish.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut body = String::new();
    while std::time::Instant::now() < deadline {
        if let Some(text) = scrape(port).filter(|t| t.contains("backfill_last_timestamp{")) {
            body = text;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let id = node_id("momentum", "bars");
    for want in [
        "backfill_jobs_in_progress ".to_owned(),
        format!("backfill_last_timestamp{{node_id=\"{id}\",interval=\"3600\"}}"),
        format!("backfill_retry_total{{node_id=\"{id}\",interval=\"3600\"}}"),
        format!("backfill_failure_total{{node_id=\"{id}\",interval=\"3600\"}}"),
    ] {
        assert!(body.contains(&want), "missing {want} in\n{body}");
    }
    assert!(!body.contains(&server.password));
}

#[test]
fn the_guide_metrics_are_scraped_while_the_backfill_is_running() {
    // A million bars take long enough to load that a poll sees the job in flight.
    let server = pg::server();
    let id = node_id("momentum", "bars");
    server.psql(
        "CREATE TABLE big_bars (node_id TEXT, interval INT, ts BIGINT, open DOUBLE PRECISION, \
         high DOUBLE PRECISION, low DOUBLE PRECISION, close DOUBLE PRECISION, \
         volume DOUBLE PRECISION)",
    );
    server.psql(&format!(
        "INSERT INTO big_bars SELECT '{id}', 3600, g::bigint * 3600, 1, 1, 1, 1 + g % 7, 1 \
         FROM generate_series(1, 1000000) AS g"
    ));

    let port = pg::closed_port();
    let source = format!("questdb:{}", server.dsn());
    let mut child = support::qmtl()
        .args(["run", "momentum", "--backfill-source", &source])
        .args(["--backfill-table", "big_bars", "--backfill-start", "0"])
        .args(["--backfill-end", "3600000001", "--concurrency", "1"])
        .args(["--metrics-port", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut during = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        if let Some(text) = scrape(port).filter(|t| t.contains("backfill_jobs_in_progress 1")) {
            during = Some(text);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let during = during.expect("a scrape saw the job in progress");
    for want in [
        format!("backfill_last_timestamp{{node_id=\"{id}\",interval=\"3600\"}}"),
        format!("backfill_retry_total{{node_id=\"{id}\",interval=\"3600\"}} 0"),
        format!("backfill_failure_total{{node_id=\"{id}\",interval=\"3600\"}} 0"),
    ] {
        assert!(during.contains(&want), "missing {want} in\n{during}");
    }
}

//! Dryrun end to end with real processes: a throwaway PostgreSQL server, `qmtl import`,
//! `qmtl gateway` on a free port and `qmtl run --mode dryrun` following the history
//! table. Rows inserted while the run follows the table are computed and their outputs
//! recorded; `/metrics` shows the guide's four backfill metrics; a second strategy
//! sharing `sma_fast` reads it from the first one's queue instead of computing it;
//! SIGTERM ends both with exit 0 and a report. The backfill guide's own command works
//! as printed (hosts and ports changed), and a bad gateway is a clear error.

#![cfg(unix)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{
    bundled_csv, gateway, http_get, node_id, pg, qmtl, read_report, report_node, text, Running,
    END, LAST_BAR, START,
};

/// A file in the server's directory, which goes away with the server.
fn scratch(name: &str) -> PathBuf {
    pg::server().dir.join(name)
}

/// `qmtl import` of `from` into `table` of the shared server.
fn import(strategy: &str, stream: &str, from: &str, table: &str) {
    support::import(pg::server(), strategy, stream, from, table);
}

/// Rows of `node` at or after `from` in `table` of the shared server, waiting for `want`.
#[track_caller]
fn wait_rows(table: &str, node: &str, from: i64, want: u64, runs: &[&Running]) -> u64 {
    support::wait_rows(pg::server(), table, node, from, want, runs)
}

fn dryrun(strategy: &str, url: &str, table: &str, report: &Path, extra: &[&str]) -> Command {
    let source = format!("questdb:{}", pg::server().dsn());
    let mut cmd = qmtl();
    cmd.args(["run", strategy, "--mode", "dryrun", "--gateway-url", url])
        .args(["--backfill-source", &source, "--backfill-table", table])
        .args(["--backfill-start", START, "--backfill-end", END])
        .args(["--poll-interval", "0.2", "--report-json"])
        .arg(report)
        .args(extra);
    cmd
}

fn insert_bars(table: &str, bars: &str, from: i64, count: i64) {
    let mut values = Vec::new();
    for k in 0..count {
        let ts = from + k * 3600;
        let close = 1.30 + k as f64 * 0.01;
        values.push(format!(
            "('{bars}', 3600, {ts}, {close}, {close}, {close}, {close}, 10)"
        ));
    }
    pg::server().psql(&format!(
        "INSERT INTO {table} (node_id, interval, ts, open, high, low, close, volume) VALUES {}",
        values.join(", ")
    ));
}

#[test]
fn dryrun_follows_the_table_shares_a_node_and_stops_on_sigterm() {
    let table = "live_e2e";
    import("momentum", "bars", &bundled_csv(), table);
    let bars = node_id("momentum", "bars");
    let sma_fast = node_id("momentum", "sma_fast");
    let signal = node_id("momentum", "signal");
    let wide_signal = node_id("momentum_wide", "signal");
    assert_eq!(sma_fast, node_id("momentum_wide", "sma_fast"));
    let (_gateway, url) = gateway(&[]);

    // The first strategy backfills, replays, records its nodes and follows the table.
    let metrics_port = pg::closed_port().to_string();
    let report_a = scratch("live_a.json");
    let mut a = Running::spawn(dryrun(
        "momentum",
        &url,
        table,
        &report_a,
        &["--metrics-port", &metrics_port],
    ));
    a.wait_for("live.start", Duration::from_secs(60));
    let metrics = http_get(&format!("127.0.0.1:{metrics_port}"), "/metrics");
    for name in [
        "backfill_jobs_in_progress",
        "backfill_last_timestamp",
        "backfill_retry_total",
        "backfill_failure_total",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    assert!(
        metrics.contains(&format!("node_id=\"{bars}\"")),
        "{metrics}"
    );
    let warm = wait_rows(table, &sma_fast, 0, 1, &[&a]);
    assert!(
        warm > 4000,
        "the warm-up outputs of sma_fast are recorded: {warm}"
    );

    // The second strategy reads sma_fast from the first one's queue.
    let report_b = scratch("live_b.json");
    let mut b = Running::spawn(dryrun("momentum_wide", &url, table, &report_b, &[]));
    b.wait_for("live.start", Duration::from_secs(60));

    // Rows inserted now are computed by both, and their outputs recorded.
    let first_new = LAST_BAR + 3600;
    insert_bars(table, &bars, first_new, 3);
    wait_rows(table, &signal, first_new, 3, &[&a, &b]);
    wait_rows(table, &sma_fast, first_new, 3, &[&a, &b]);
    wait_rows(table, &wide_signal, first_new, 3, &[&a, &b]);

    // SIGTERM stops each within 2 s, with exit 0 and a report.
    for (run, path) in [(&mut b, &report_b), (&mut a, &report_a)] {
        let (status, took) = run.signal("TERM");
        assert!(status.success(), "{status}:\n{}", run.output());
        assert!(
            took < Duration::from_secs(2),
            "took {took:?}:\n{}",
            run.output()
        );
        let report = read_report(path);
        assert!(report["live_events"].as_u64().unwrap() >= 3, "{report}");
        assert!(report["live_outputs"].as_u64().unwrap() >= 3, "{report}");
        let id = report["strategy_id"].as_str().unwrap();
        let addr = url.trim_start_matches("http://");
        let status = http_get(addr, &format!("/strategies/{id}/status"));
        assert!(status.contains("ended"), "{status}");
    }
    let wide = read_report(&report_b);
    // Regression: the wide signal computed on stale sma_fast values, then again when they
    // arrived. Three new bars: three sma_slow and three signal outputs, no more.
    assert_eq!(wide["live_outputs"], 6, "{wide}");
    assert_eq!(report_node(&wide, "sma_fast")["queue"], sma_fast.as_str());
    assert!(
        report_node(&wide, "sma_fast")["rows_loaded"]
            .as_u64()
            .unwrap()
            > 4000
    );
    assert!(report_node(&wide, "signal")["outputs"].as_u64().unwrap() > 0);
    let own = read_report(&report_a);
    assert!(
        report_node(&own, "sma_fast").get("queue").is_none(),
        "{own}"
    );
    assert_eq!(own["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(wide["jobs"].as_array().unwrap().len(), 2);
}

#[test]
fn the_guides_dryrun_command_works_as_printed() {
    // One row a second for the sample's price stream over the guide's hour.
    let csv = scratch("price.csv");
    let mut rows = String::from("ts,value\n");
    for t in 1_700_000_000..1_700_003_600 {
        rows.push_str(&format!("{t},{}\n", (t % 97) as f64 / 10.0));
    }
    std::fs::write(&csv, rows).unwrap();
    import(
        "sample",
        "price",
        &format!("csv:{}", csv.display()),
        "node_data",
    );
    let (_gateway, url) = gateway(&[]);
    let port = url.rsplit(':').next().unwrap().to_owned();
    let server = pg::server();

    // The guide's line with the strategy, hosts and ports changed.
    let line = format!(
        "qmtl run tests.sample_strategy:SampleStrategy --mode dryrun --gateway-url \
         http://127.0.0.1:{port} --backfill-source questdb:postgresql://{}:{}@127.0.0.1:{}/{} \
         --backfill-start 1700000000 --backfill-end 1700003600",
        pg::USER,
        server.password,
        server.port,
        pg::DB
    );
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut cmd = qmtl();
    cmd.args(&words[1..]);
    let mut run = Running::spawn(cmd);
    run.wait_for("live.start", Duration::from_secs(60));
    let out = node_id("sample", "out");
    assert_eq!(
        wait_rows("node_data", &out, 1_700_000_000, 3600, &[&run]),
        3600
    );

    // A live row is passed through and recorded; SIGTERM ends the run cleanly.
    let price = node_id("sample", "price");
    server.psql(&format!(
        "INSERT INTO node_data (node_id, interval, ts, value) \
         VALUES ('{price}', 1, 1700003600, 42.5)"
    ));
    wait_rows("node_data", &out, 1_700_003_600, 1, &[&run]);
    let value = server.psql(&format!(
        "SELECT value FROM node_data WHERE node_id = '{out}' AND ts = 1700003600"
    ));
    assert_eq!(value, "42.5");
    let (status, took) = run.signal("TERM");
    assert!(status.success(), "{status}:\n{}", run.output());
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(!run.output().contains(&server.password), "{}", run.output());
    assert!(run.output().contains("1 live rows"), "{}", run.output());
}

#[test]
fn gateway_refusals_exit_with_their_codes() {
    let csv = bundled_csv();
    let (_gateway, url) = gateway(&["--token", "t0ken-x"]);
    let run = |url: &str| {
        qmtl()
            .args(["run", "momentum", "--mode", "live", "--gateway-url", url])
            .args(["--backfill-source", &csv, "--backfill-start", START])
            .args(["--backfill-end", END])
            .output()
            .unwrap()
    };
    let out = run(&url);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("401 unauthorized"), "{}", text(&out));

    let closed = format!("http://127.0.0.1:{}", pg::closed_port());
    let out = run(&closed);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("gateway {closed} is unreachable")),
        "{}",
        text(&out)
    );
}

#[test]
fn sigterm_during_a_dryrun_backfill_is_a_clean_stop() {
    // A million bars keep the backfill busy long enough to be interrupted.
    let table = "live_big";
    let bars = node_id("momentum", "bars");
    let server = pg::server();
    server.psql(&format!(
        "CREATE TABLE {table} (node_id TEXT, interval INT, ts BIGINT, open FLOAT8, \
         high FLOAT8, low FLOAT8, close FLOAT8, volume FLOAT8); \
         INSERT INTO {table} SELECT '{bars}', 3600, g::bigint * 3600, 1, 1, 1, 1, 1 \
         FROM generate_series(1, 1000000) AS g"
    ));
    let (_gateway, url) = gateway(&[]);
    let report = scratch("live_big.json");
    let source = format!("questdb:{}", server.dsn());
    let mut cmd = qmtl();
    cmd.args(["run", "momentum", "--mode", "dryrun", "--gateway-url", &url])
        .args(["--backfill-source", &source, "--backfill-table", table])
        .args(["--backfill-start", "0", "--backfill-end", "3600000001"])
        .args(["--concurrency", "1", "--report-json"])
        .arg(&report);
    let mut run = Running::spawn(cmd);
    run.wait_for("backfill.start", Duration::from_secs(60));
    let (status, took) = run.signal("TERM");
    assert_eq!(status.code(), Some(0), "{}", run.output());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let report = read_report(&report);
    assert_eq!(report["jobs"][0]["status"], "cancelled", "{report}");
}

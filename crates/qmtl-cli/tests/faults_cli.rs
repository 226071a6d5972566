//! Loader faults through the real `qmtl` binary and a real PostgreSQL server (the
//! library tests' `support/pg.rs`): exit codes and messages when the database is down
//! at the start (and back within the retry budget, or not), when a server accepts and
//! never answers, when `ts` holds milliseconds, and when a table name is not an
//! identifier; and the `--request-timeout` default shown by `--help`.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};

use support::{backtest_args, bundled_csv, import, pg, text};

fn qmtl() -> Command {
    let mut command = support::qmtl();
    command.env("RUST_LOG", "info");
    command
}

fn output(args: &[&str]) -> Output {
    qmtl().args(args).output().expect("run qmtl")
}

/// Standard error of `child` up to and including the first `source.open_retry` line,
/// and the lines after it as they come.
fn until_first_retry(child: &mut Child) -> (Vec<String>, impl Iterator<Item = String>) {
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines().map_while(Result::ok);
    let mut log: Vec<String> = Vec::new();
    for line in lines.by_ref() {
        let retried = line.contains("source.open_retry");
        log.push(line);
        if retried {
            break;
        }
    }
    (log, lines)
}

#[test]
fn a_database_down_through_the_whole_budget_exits_1_naming_host_and_port() {
    let server = pg::private();
    server.stop();
    let source = format!("postgres:{}", server.dsn());
    let out = output(&backtest_args(&source, &["--max-retries", "2"]));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains(&format!("127.0.0.1:{}", server.port)), "{all}");
    assert!(all.contains("after 3 attempt(s)"), "{all}");
    assert!(all.contains("--max-retries"), "{all}");
    assert!(
        all.contains("source.open_retry"),
        "each retry is logged: {all}"
    );
    assert!(!all.contains(&server.password), "{all}");
    assert!(!all.contains("panicked"), "{all}");
}

#[test]
fn a_database_that_comes_up_within_the_budget_lets_the_run_succeed() {
    let server = pg::private();
    import(&server, "momentum", "bars", &bundled_csv(), "node_data");
    // The test server commits asynchronously; an immediate stop would lose the rows.
    server.psql("CHECKPOINT");
    server.stop();

    // Start the server once the first retry is logged, then let the run finish.
    let source = format!("postgres:{}", server.dsn());
    let mut child = qmtl()
        .args(backtest_args(&source, &["--max-retries", "12"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run qmtl");
    let (mut log, lines) = until_first_retry(&mut child);
    assert!(
        log.iter().any(|l| l.contains("source.open_retry")),
        "{log:?}"
    );
    server.start();
    log.extend(lines);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", log.join("\n"));
    assert!(!log.join("\n").contains(&server.password));
}

#[test]
fn a_server_that_accepts_and_never_answers_exits_1_after_the_request_timeouts() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        // Keep every socket open, read nothing and answer nothing.
        let held: Vec<_> = listener.incoming().flatten().collect();
        drop(held);
    });
    let source = format!("postgres:postgresql://qmtl:hunter2secret@127.0.0.1:{port}/qmtl");
    let extra = ["--max-retries", "1", "--request-timeout", "0.5"];
    let out = output(&backtest_args(&source, &extra));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains(&format!("127.0.0.1:{port}")), "{all}");
    assert!(all.contains("did not answer within 500ms"), "{all}");
    assert!(all.contains("raise --request-timeout"), "{all}");
    assert!(!all.contains("hunter2secret"), "{all}");
}

#[test]
fn a_millisecond_ts_table_exits_2_naming_the_unit_and_the_fix() {
    let server = pg::server();
    import(server, "momentum", "bars", &bundled_csv(), "bars_ms");
    server.psql("UPDATE bars_ms SET ts = ts * 1000");
    let source = format!("postgres:{}", server.dsn());
    let out = output(&backtest_args(&source, &["--backfill-table", "bars_ms"]));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("looks like milliseconds"), "{all}");
    assert!(all.contains("ts / 1000"), "{all}");
}

#[test]
fn table_names_that_are_not_identifiers_exit_2_with_the_rule() {
    let server = pg::server();
    let source = format!("postgres:{}", server.dsn());
    for bad in ["nodes;drop table node_data", "a.b.c", "bad-name"] {
        let out = output(&backtest_args(&source, &["--backfill-table", bad]));
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{bad}: {all}");
        assert!(all.contains("not a valid table name"), "{bad}: {all}");
        assert!(
            all.contains("letters, digits and underscores"),
            "{bad}: {all}"
        );

        let csv = bundled_csv();
        let record = ["--record-to", &source, "--record-table", bad];
        let out = output(&backtest_args(&csv, &record));
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "--record-table {bad}: {all}");
        assert!(all.contains("not a valid table name"), "{bad}: {all}");
    }
}

#[test]
fn help_shows_the_request_timeout_default_and_what_it_bounds() {
    let out = output(&["run", "--help"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("--request-timeout <SECS>"), "{all}");
    assert!(all.contains("[default: 60]"), "{all}");
    assert!(all.contains("connecting to a database source"), "{all}");
}

#[test]
fn a_signal_while_waiting_for_a_down_database_stops_within_2_s() {
    let server = pg::private();
    server.stop();
    let source = format!("postgres:{}", server.dsn());
    // Sources open before the gateway is asked, so no gateway needs to listen.
    let gateway_url = format!("http://127.0.0.1:{}", pg::closed_port());
    for (mode, code) in [("backtest", 1), ("dryrun", 0)] {
        // A long budget: the run would wait minutes without the signal.
        let mut args = backtest_args(&source, &["--max-retries", "30"]);
        args[3] = mode;
        let gateway = ["--gateway-url", gateway_url.as_str()];
        if mode == "dryrun" {
            args.extend_from_slice(&gateway);
        }
        let mut child = qmtl()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run qmtl");
        let (mut log, lines) = until_first_retry(&mut child);
        let signalled = std::time::Instant::now();
        let pid = child.id().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(kill.success());
        log.extend(lines);
        let status = child.wait().unwrap();
        let took = signalled.elapsed();
        let all = log.join("\n");
        assert_eq!(status.code(), Some(code), "{mode}: {all}");
        assert!(took.as_secs_f64() < 2.0, "{mode}: took {took:?}: {all}");
        assert!(
            all.contains("stopped while opening backfill source"),
            "{all}"
        );
        assert!(!all.contains(&server.password), "{all}");
    }
}

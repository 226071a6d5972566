//! The `qmtl` binary end to end: the main job on the bundled EUR/USD data, the inspection
//! commands, and an exit code and a clear message for each kind of bad input.

mod support;

use std::process::Output;

use serde_json::Value;

use support::{backtest_args, bundled_csv, report_node, scratch, text, END, START};

fn qmtl(args: &[&str]) -> Output {
    support::qmtl().args(args).output().expect("qmtl runs")
}

fn backtest(extra: &[&str]) -> Output {
    let source = bundled_csv();
    qmtl(&backtest_args(&source, extra))
}

#[test]
fn momentum_backtest_on_the_bundled_data_reports_every_figure() {
    let report_path = scratch("r.json");
    let out = backtest(&["--report-json", report_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("backfill plan"), "the plan is printed");

    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(report["strategy"], "momentum");
    assert_eq!(report["mode"], "backtest");
    let nodes = report["nodes"].as_array().unwrap();
    let bars = report_node(&report, "bars");
    assert_eq!(bars["node_type"], "StreamInput");
    assert_eq!(bars["rows_loaded"], 5000);
    assert_eq!(bars["first_ts"], 1_492_592_400);
    assert_eq!(bars["last_ts"], 1_518_015_600);
    assert_eq!(bars["gaps"], 42, "one gap per weekend in the data");
    for n in nodes {
        assert_eq!(n["ready"], true, "{} not ready", n["name"]);
        for key in [
            "node_id", "interval", "period", "outputs", "gaps", "first_ts", "last_ts",
        ] {
            assert!(n.get(key).is_some(), "missing {key}");
        }
    }
    let signal = report_node(&report, "signal");
    assert!(signal["outputs"].as_u64().unwrap() > 4000, "{signal}");
    let job = &report["jobs"][0];
    assert_eq!(
        (job["rows"].as_u64(), job["status"].as_str()),
        (Some(5000), Some("completed"))
    );
    for key in ["node_id", "interval", "start", "end", "retries"] {
        assert!(job.get(key).is_some(), "missing job {key}");
    }
}

#[test]
fn start_and_end_accept_iso_8601() {
    let source = bundled_csv();
    let out = qmtl(&[
        "run",
        "momentum",
        "--backfill-source",
        &source,
        "--backfill-start",
        "2017-04-19T09:00:00Z",
        "--backfill-end",
        "2017-04-20",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1492592400, 1492646400"));
}

#[test]
fn the_guide_module_class_form_runs_the_sample() {
    let csv = scratch("sample.csv");
    std::fs::write(&csv, "ts,value\n1700000000,1\n1700000001,2\n1700000002,3\n").unwrap();
    let source = format!("csv:{}", csv.display());
    let out = qmtl(&[
        "run",
        "tests.sample_strategy:SampleStrategy",
        "--mode",
        "offline",
        "--backfill-source",
        &source,
        "--backfill-start",
        "1700000000",
        "--backfill-end",
        "1700003600",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("out "));
}

#[test]
fn inspection_commands_print_ids_and_the_gateway_dag() {
    let out = qmtl(&["strategies"]);
    assert_eq!(out.status.code(), Some(0));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("sample") && listed.contains("momentum"));

    let out = qmtl(&["nodes", "momentum", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let nodes: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(nodes.len(), 4);
    for key in ["node_id", "name", "node_type", "interval", "period"] {
        assert!(nodes[0].get(key).is_some(), "missing {key}");
    }
    assert_eq!(nodes[0]["interval"], 3600);

    let out = qmtl(&["dag", "momentum"]);
    let dag: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dag["nodes"][0]["node_id"], nodes[0]["node_id"]);
    assert_eq!(dag["target"], nodes[3]["node_id"]);

    let table = qmtl(&["nodes", "momentum"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("StreamInput"));
}

#[test]
fn usage_errors_exit_2_with_a_message_that_says_what_to_do() {
    let missing = scratch("does-not-exist.csv");
    let missing_spec = format!("csv:{}", missing.display());
    let bad_ts = scratch("bad-ts.csv");
    std::fs::write(&bad_ts, "ts,close\n1,2\nlater,3\n").unwrap();
    let bad_ts_spec = format!("csv:{}", bad_ts.display());
    let source = bundled_csv();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "nosuch"], "known strategies: sample, momentum"),
        (vec!["nodes", "nosuch"], "unknown strategy 'nosuch'"),
        (
            vec!["run", "momentum", "--mode", "paper"],
            "invalid value 'paper'",
        ),
        (
            vec!["run", "momentum", "--backfill-source", "ftp:x"],
            "known schemes",
        ),
        (
            vec!["run", "momentum", "--backfill-source", ""],
            "source is empty",
        ),
        (
            vec!["run", "momentum", "--backfill-source", "csv:"],
            "has no path",
        ),
        (
            vec!["run", "momentum", "--backfill-source", &missing_spec],
            "does-not-exist.csv",
        ),
        (
            vec!["run", "momentum", "--backfill-source", &bad_ts_spec],
            "line 3",
        ),
        (
            vec![
                "run",
                "momentum",
                "--backfill-source",
                &source,
                "--backfill-start",
                "2019-01-01",
                "--backfill-end",
                "2018-01-01",
            ],
            "is not before end",
        ),
        (
            vec![
                "run",
                "momentum",
                "--backfill-source",
                &source,
                "--backfill-start",
                "1e9",
            ],
            "--backfill-start: timestamp '1e9'",
        ),
        (
            vec![
                "run",
                "momentum",
                "--backfill-source",
                &source,
                "--backfill-start",
                "1492592400000",
            ],
            "looks like milliseconds",
        ),
        (
            vec!["run", "momentum", "--mode", "dryrun"],
            "needs --gateway-url",
        ),
        (
            vec![
                "run",
                "momentum",
                "--backfill-source",
                &source,
                "--backfill-start",
                "-100",
            ],
            "--backfill-start -100 is before 1970",
        ),
        (
            vec![
                "run",
                "momentum",
                "--backfill-source",
                &source,
                "--report-json",
                "/tmp",
            ],
            "--report-json /tmp is a directory",
        ),
        (
            vec![
                "run",
                "momentum",
                "--mode",
                "dryrun",
                "--gateway-url",
                "http://u:pw9x@127.0.0.1:9",
            ],
            "holds a user or password",
        ),
        (
            vec![
                "run",
                "momentum",
                "--mode",
                "live",
                "--gateway-url",
                "http://127.0.0.1:9",
            ],
            "stream 'bars' has no backfill source",
        ),
        (
            vec![
                "run",
                "momentum",
                "--backfill-source",
                &source,
                "--backfill-start",
                START,
                "--backfill-end",
                END,
                "--metrics-port",
                &port,
            ],
            "is already in use",
        ),
        (
            vec!["run", "momentum", "--request-timeout", "1e-12"],
            "at least 0.001",
        ),
        (
            vec!["run", "momentum", "--request-timeout", "-1"],
            "positive number of seconds",
        ),
        (
            vec!["run", "momentum", "--concurrency", "0"],
            "--concurrency",
        ),
    ];
    for (args, want) in cases {
        let out = qmtl(&args);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {all}");
        assert!(all.contains(want), "{args:?}: {all} should contain {want}");
        assert!(!all.contains("panicked"), "{args:?}: {all}");
        assert!(!all.contains("pw9x"), "{args:?}: {all}");
    }
}

#[test]
fn runtime_failures_exit_1_and_still_write_the_report() {
    // A weekend gap under --on-missing fail.
    let report_path = scratch("gap.json");
    let out = backtest(&[
        "--on-missing",
        "fail",
        "--report-json",
        report_path.to_str().unwrap(),
    ]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("jumped from 1492804800 to 1492981200"),
        "{all}"
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(report["jobs"][0]["status"], "completed");
}

#[test]
fn a_file_lacking_fields_is_refused_before_loading_naming_every_one() {
    let no_close = scratch("no-close.csv");
    std::fs::write(&no_close, "ts,open,high,low\n1492592400,1,1,1\n").unwrap();
    let spec = format!("csv:{}", no_close.display());
    let out = qmtl(&["run", "momentum", "--backfill-source", &spec]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("missing close, volume (columns besides the timestamp: open, high, low)"),
        "{all}"
    );
    assert!(all.contains("no-close.csv"), "{all}");
}

#[test]
fn a_report_path_in_a_missing_directory_is_refused_up_front() {
    let out = backtest(&["--report-json", "/nonexistent-qmtl-dir/r.json"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("directory /nonexistent-qmtl-dir does not exist"),
        "{all}"
    );
    assert!(!all.contains("backfill.start"), "nothing was loaded: {all}");
}

#[test]
fn a_range_without_rows_says_why() {
    let source = bundled_csv();
    let out = qmtl(&[
        "run",
        "momentum",
        "--backfill-source",
        &source,
        "--backfill-start",
        "2030-01-01",
        "--backfill-end",
        "2030-01-02",
    ]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("the source holds [1492592400, 1518015600]"),
        "{all}"
    );
}

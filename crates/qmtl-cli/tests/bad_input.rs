//! The auditable matrix of bad input: each group runs the real `qmtl` binary over a
//! table of cases and checks the exit code (2 for a usage error), that the output names
//! the problem and the fix, and that nothing panicked or showed a password. Cases that
//! must succeed (a BOM with CRLF line endings, explicit UTC offsets, ranges without data)
//! are here too, with what the report says.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use support::{read_report, scratch, text};

/// Writes `content` to a scratch file and returns its `csv:` spec.
fn csv(name: &str, content: &[u8]) -> String {
    let path = scratch(name);
    std::fs::write(&path, content).unwrap();
    format!("csv:{}", path.display())
}

/// Runs `qmtl`; a run that has not ended after a minute (only a case that wrongly
/// succeeds, such as a gateway that did start) is killed and fails the test.
fn qmtl(args: &[&str]) -> Output {
    let mut child = support::qmtl()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qmtl starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("qmtl {args:?} was still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// One row of a matrix: what is run, and what the output must say.
struct Case {
    what: &'static str,
    args: Vec<String>,
    /// Phrases naming the problem and the fix, all required.
    says: Vec<&'static str>,
}

fn case(what: &'static str, args: &[&str], says: &[&'static str]) -> Case {
    Case {
        what,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        says: says.to_vec(),
    }
}

/// Every case exits 2 and says every phrase; none panics or shows a password.
fn assert_usage_errors(cases: &[Case]) {
    for c in cases {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let out = qmtl(&args);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{}: {all}", c.what);
        for phrase in &c.says {
            assert!(
                all.contains(phrase),
                "{}: {all}\nshould say: {phrase}",
                c.what
            );
        }
        assert!(!all.contains("panicked"), "{}: {all}", c.what);
        assert!(
            !all.contains("Hunter2pw"),
            "{}: a password shown: {all}",
            c.what
        );
    }
}

/// `qmtl run sample` over `source` for the hour after 1700000000.
fn sample_run(source: &str) -> Vec<String> {
    sample_run_in(source, "1700000000", "1700003600")
}

fn sample_run_in(source: &str, start: &str, end: &str) -> Vec<String> {
    [
        "run",
        "sample",
        "--mode",
        "offline",
        "--backfill-source",
        source,
        "--backfill-start",
        start,
        "--backfill-end",
        end,
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect()
}

fn with_args(what: &'static str, args: Vec<String>, says: &[&'static str]) -> Case {
    Case {
        what,
        args,
        says: says.to_vec(),
    }
}

#[test]
fn bad_source_specs_exit_2_naming_the_spec_and_the_form_to_write() {
    let dir = scratch("a-directory.csv");
    std::fs::create_dir_all(&dir).unwrap();
    let dangling = scratch("dangling.csv");
    let _ = std::fs::remove_file(&dangling);
    std::os::unix::fs::symlink(scratch("nothing-here.csv"), &dangling).unwrap();
    let dir_spec = format!("csv:{}", dir.display());
    let dangling_spec = format!("csv:{}", dangling.display());
    let missing_spec = format!("csv:{}", scratch("missing.csv").display());
    let dsn_example = "write postgres:postgresql://USER:PASSWORD@HOST:PORT/DB";
    let mut cases = vec![
        with_args(
            "empty",
            sample_run(""),
            &["backfill source is empty", "give one such as csv:"],
        ),
        with_args(
            "blank",
            sample_run("  "),
            &["backfill source is empty", "give one such as csv:"],
        ),
        with_args(
            "unknown scheme",
            sample_run("ftp:bars.csv"),
            &[
                "unknown backfill source scheme 'ftp'",
                "known schemes: csv, questdb",
            ],
        ),
        with_args(
            "no scheme",
            sample_run("bars.csv"),
            &["has no scheme", "did you mean csv:bars.csv?"],
        ),
        with_args(
            "missing path",
            sample_run("csv:"),
            &["'csv:' has no path", "write csv:data/eurusd_1h.csv"],
        ),
        with_args(
            "missing DSN",
            sample_run("questdb:"),
            &["'questdb:' has no DSN", "write questdb:postgresql://"],
        ),
        with_args(
            "DSN without host",
            sample_run("postgres:postgresql://u:Hunter2pw@/db"),
            &["bad DSN: the DSN names no host", dsn_example],
        ),
        with_args(
            "DSN with a port but no host",
            sample_run("postgresql://u:Hunter2pw@:5432/db"),
            &["bad DSN: the DSN names no host", dsn_example],
        ),
        with_args(
            "DSN without user",
            sample_run("postgres:postgresql://:Hunter2pw@127.0.0.1:9/db"),
            &["the DSN names no user", dsn_example],
        ),
        with_args(
            "a directory",
            sample_run(&dir_spec),
            &[
                "a-directory.csv is not a file",
                "give the path of a CSV file",
            ],
        ),
        with_args(
            "a dangling symlink",
            sample_run(&dangling_spec),
            &["dangling.csv is not a file", "give the path of a CSV file"],
        ),
        with_args(
            "a missing file",
            sample_run(&missing_spec),
            &["cannot read", "missing.csv", "No such file or directory"],
        ),
    ];
    // Mode 000 stops everyone but root (as in CI), so the row runs only where it bites.
    let locked = scratch("locked.csv");
    std::fs::write(&locked, "ts,value\n1700000000,1\n").unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let locked_spec = format!("csv:{}", locked.display());
    if std::fs::read(&locked).is_err() {
        cases.push(with_args(
            "a file with mode 000",
            sample_run(&locked_spec),
            &["cannot read", "locked.csv", "Permission denied"],
        ));
    }
    assert_usage_errors(&cases);
}

#[test]
fn bad_data_exits_2_naming_the_file_the_line_and_the_fix_whatever_the_line_ends() {
    let header = "ts,value\n";
    let rows = |body: &str| format!("{header}1700000000,1\n{body}");
    // (name, content, phrases); CRLF copies of each must name the same line.
    let table: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "no-ts",
            "when,value\n1700000000,1\n".to_owned(),
            vec![
                "has no timestamp column (found: when,value)",
                "name one 'ts'",
            ],
        ),
        (
            "bad-ts",
            rows("noon,2\n"),
            vec![
                "line 3: timestamp 'noon' is not understood",
                "use epoch seconds or ISO",
            ],
        ),
        (
            "null-ts",
            rows(",2\n"),
            vec!["line 3: the timestamp is empty", "every row needs one"],
        ),
        (
            "duplicate-ts",
            rows("1700000001,2\n1700000001,3\n"),
            vec![
                "line 4: timestamp 1700000001 is not after the previous row's 1700000001",
                "remove duplicate rows",
            ],
        ),
        (
            "unsorted-ts",
            rows("1700000005,2\n1700000003,3\n"),
            vec![
                "line 4: timestamp 1700000003 is not after",
                "sort the file by time",
            ],
        ),
        (
            "millis",
            format!("{header}1700000000000,1\n"),
            vec![
                "line 2: timestamp 1700000000000 looks like milliseconds",
                "divide by 1000",
            ],
        ),
        (
            "fractional-ts",
            rows("1700000001.5,2\n"),
            vec![
                "line 3: timestamp '1700000001.5' is not whole epoch seconds",
                "ts must be whole epoch seconds or ISO-8601",
            ],
        ),
        (
            "micros",
            format!("{header}1700000000000000,1\n"),
            vec!["looks like microseconds", "divide by 1000000"],
        ),
        (
            "nanos",
            format!("{header}1700000000000000000,1\n"),
            vec!["looks like nanoseconds", "divide by 1000000000"],
        ),
        (
            "nan",
            rows("1700000001,NaN\n"),
            vec![
                "line 3, column 'value': 'NaN' is not a finite number",
                "leave the cell empty",
            ],
        ),
        (
            "inf",
            rows("1700000001,inf\n"),
            vec![
                "line 3, column 'value': 'inf' is not a finite number",
                "leave the cell empty",
            ],
        ),
        (
            "minus-inf",
            rows("1700000001,-inf\n"),
            vec!["line 3, column 'value': '-inf'", "leave the cell empty"],
        ),
        (
            "text",
            rows("1700000001,n/a\n"),
            vec!["'value' holds text ('n/a' at line 3)"],
        ),
        (
            "ragged",
            rows("1700000001,2,3\n"),
            vec!["malformed CSV", "line: 3", "found record with 3 fields"],
        ),
        (
            "empty",
            String::new(),
            vec![
                "holds no data rows",
                "a header line and at least one row are needed",
            ],
        ),
        (
            "header-only",
            header.to_owned(),
            vec![
                "holds no data rows",
                "a header line and at least one row are needed",
            ],
        ),
    ];
    let mut cases = Vec::new();
    for (name, content, says) in &table {
        for (eol, content) in [
            ("lf", content.clone()),
            ("crlf", content.replace('\n', "\r\n")),
        ] {
            let source = csv(&format!("{name}-{eol}.csv"), content.as_bytes());
            let mut case = with_args(name, sample_run(&source), says);
            case.says
                .push(if eol == "lf" { "-lf.csv" } else { "-crlf.csv" });
            cases.push(case);
        }
    }
    assert_usage_errors(&cases);
}

/// A sparse file of `bytes` bytes that starts with `head`: NUL bytes after it, no disk.
fn sparse_csv(name: &str, head: &[u8], bytes: u64) -> (String, std::path::PathBuf) {
    let source = csv(name, head);
    let path = std::path::PathBuf::from(&source["csv:".len()..]);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    (source, path)
}

/// Regression: `truncate -s 3G zeros.csv` and `csv:/dev/zero` aborted on a 4 GiB
/// allocation (exit 134), and a 1.5 GB line after a valid row took 2.1 GB of memory
/// before its error. QA's range: 1600000000 to 1600000010.
#[test]
fn files_that_are_not_csv_exit_2_after_reading_at_most_a_row() {
    let fifo = scratch("a-pipe.csv");
    let c_path = std::ffi::CString::new(fifo.display().to_string()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file there.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    let fifo_spec = format!("csv:{}", fifo.display());
    let (zeros, zeros_path) = sparse_csv("zeros.csv", b"", 3 << 30);
    let (long, long_path) = sparse_csv("long-line.csv", b"ts,value\n1600000000,1\n", 3 << 29);
    let qa = |source: &str| sample_run_in(source, "1600000000", "1600000010");
    let cases = [
        with_args(
            "a character device that never ends",
            qa("csv:/dev/zero"),
            &["/dev/zero is not a file", "give the path of a CSV file"],
        ),
        with_args(
            "a named pipe",
            qa(&fifo_spec),
            &["a-pipe.csv is not a file", "give the path of a CSV file"],
        ),
        with_args(
            "3 GiB of NUL bytes",
            qa(&zeros),
            &[
                "zeros.csv: malformed CSV: line 1 is longer than 1 MiB",
                "is this a CSV file?",
            ],
        ),
        with_args(
            "a 1.5 GB line after a valid row",
            qa(&long),
            &[
                "long-line.csv",
                "line 3 is longer than 1 MiB; is this a CSV file?",
            ],
        ),
    ];
    assert_usage_errors(&cases);
    for path in [fifo, zeros_path, long_path] {
        std::fs::remove_file(path).unwrap();
    }
}

/// Regression: a bad cell was quoted whole (a 10 MB cell made a 10 MB error line) and a
/// quoted line break went into the message raw.
#[test]
fn a_refusal_quotes_at_most_80_characters_of_a_cell_on_one_line() {
    let long = "x".repeat(500_000);
    let cut = format!("'{}…'", &long[..80]);
    let cases = [
        ("a 500 kB timestamp", format!("ts,value\n{long},1\n"), cut),
        (
            "a 500 kB number",
            format!("ts,value\n1700000000,1{}\n", "0".repeat(500_000)),
            format!("'1{}…' is not a finite number", "0".repeat(79)),
        ),
        (
            "a quoted line break",
            "ts,value\n\"no\non\",1\n".to_owned(),
            r"line 2: timestamp 'no\non' is not understood".to_owned(),
        ),
    ];
    for (what, content, quoted) in cases {
        let source = csv("quoted.csv", content.as_bytes());
        let args = sample_run(&source);
        let out = qmtl(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {all}");
        let error = all.lines().find(|l| l.starts_with("error:"));
        let error = error.unwrap_or_else(|| panic!("{what}: no error line in {all}"));
        assert!(
            error.contains(&quoted),
            "{what}: {error}\nshould say: {quoted}"
        );
        assert!(error.len() < 400, "{what}: {} bytes: {error}", error.len());
        assert!(all.len() < 2000, "{what}: {} bytes of output", all.len());
    }
}

/// Runs `sample` over `source` in `[start, end)` with a JSON report, expecting exit 0.
fn report_of(name: &str, source: &str, start: &str, end: &str) -> (Value, String) {
    let report = scratch(&format!("{name}.json"));
    let mut args = sample_run_in(source, start, end);
    args.extend(["--report-json".to_owned(), report.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = qmtl(&args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{name}: {all}");
    assert!(!all.contains("panicked"), "{name}: {all}");
    (read_report(&report), all)
}

fn stream(report: &Value) -> &Value {
    &report["nodes"][0]
}

#[test]
fn a_bom_with_crlf_and_explicit_utc_offsets_are_accepted() {
    // A byte-order mark and CRLF line endings, as spreadsheets write.
    let bom = csv(
        "bom-crlf.csv",
        b"\xef\xbb\xbfts,value\r\n1700000000,1\r\n1700000001,2\r\n",
    );
    let (report, _) = report_of("bom", &bom, "1700000000", "1700003600");
    assert_eq!(stream(&report)["rows_loaded"], 2, "{report}");
    assert_eq!(stream(&report)["last_ts"], 1_700_000_001);

    // Offsets are accepted and converted to UTC: all three rows are 22:13:20Z and on.
    let offsets = csv(
        "offsets.csv",
        b"ts,value\n2023-11-14T23:13:20+01:00,1\n2023-11-14 17:13:21-05:00,2\n\
          2023-11-14T22:13:22Z,3\n",
    );
    let (report, _) = report_of("offsets", &offsets, "1700000000", "1700003600");
    let node = stream(&report);
    assert_eq!(node["rows_loaded"], 3, "{report}");
    assert_eq!(
        (node["first_ts"].as_i64(), node["last_ts"].as_i64()),
        (Some(1_700_000_000), Some(1_700_000_002))
    );
}

#[test]
fn bad_ranges_exit_2_saying_which_bound_is_wrong() {
    let source = csv("range.csv", b"ts,value\n1700000000,1\n1700000001,2\n");
    let empty = [
        "is not before end",
        "--backfill-start must be earlier than --backfill-end",
    ];
    let before_1970 = [
        "is before 1970",
        "give epoch seconds or an ISO-8601 UTC time",
    ];
    let cases = [
        with_args(
            "start after end",
            sample_run_in(&source, "1700000010", "1700000000"),
            &empty,
        ),
        with_args(
            "start equal to end",
            sample_run_in(&source, "1700000000", "1700000000"),
            &empty,
        ),
        with_args(
            "negative start",
            sample_run_in(&source, "-5", "1700000000"),
            &["--backfill-start -5", before_1970[0], before_1970[1]],
        ),
        with_args(
            "negative end",
            sample_run_in(&source, "1700000000", "-5"),
            &["--backfill-end -5", before_1970[0], before_1970[1]],
        ),
        with_args(
            "unparsable start",
            sample_run_in(&source, "yesterday", "1700000000"),
            &[
                "--backfill-start: timestamp 'yesterday'",
                "use epoch seconds or ISO-8601",
            ],
        ),
        with_args(
            "a start in the year 3000 with no end (the end defaults to now)",
            {
                let mut args = sample_run(&source);
                args.truncate(args.len() - 4);
                args.extend(["--backfill-start".to_owned(), "3000-01-01".to_owned()]);
                args
            },
            &[
                "start 32503680000 (3000-01-01T00:00:00Z) is not before end",
                empty[1],
            ],
        ),
    ];
    assert_usage_errors(&cases);
}

#[test]
fn ranges_without_data_run_and_the_report_says_zero_rows_and_why() {
    let source = csv("sparse.csv", b"ts,value\n1700000000,1\n1700000001,2\n");
    let cases = [
        (
            "year-3000",
            "3000-01-01",
            "3000-01-02",
            "[32503680000, 32503766400)",
        ),
        (
            "before-the-data",
            "1600000000",
            "1600003600",
            "[1600000000, 1600003600)",
        ),
        (
            "after-the-data",
            "1700000002",
            "1700003600",
            "[1700000002, 1700003600)",
        ),
    ];
    for (name, start, end, range) in cases {
        let (report, all) = report_of(name, &source, start, end);
        assert_eq!(stream(&report)["rows_loaded"], 0, "{name}: {report}");
        let job = &report["jobs"][0];
        assert_eq!(job["rows"], 0, "{name}: {report}");
        let why = format!("no rows in {range}: the source holds [1700000000, 1700000001]");
        assert_eq!(job["note"].as_str(), Some(why.as_str()), "{name}: {report}");
        assert!(
            all.contains(&why),
            "{name}: the run's output says why too: {all}"
        );
    }
}

#[test]
fn cli_mistakes_exit_2_saying_what_is_accepted() {
    let source = csv("cli.csv", b"ts,value\n1700000000,1\n1700000001,2\n");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let with = |extra: &[&str]| {
        let mut args = sample_run(&source);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    };
    let seconds = "is not a positive number of seconds, at least 0.001 (for example 30 or 0.5)";
    let mut cases = vec![
        case(
            "unknown strategy",
            &["run", "nosuch"],
            &[
                "unknown strategy 'nosuch'",
                "known strategies: sample, momentum",
            ],
        ),
        case(
            "unknown strategy for nodes",
            &["nodes", "nosuch"],
            &[
                "unknown strategy 'nosuch'",
                "known strategies: sample, momentum",
            ],
        ),
        case(
            "unknown mode",
            &["run", "sample", "--mode", "paper"],
            &[
                "invalid value 'paper'",
                "possible values: backtest, dryrun, live, offline",
            ],
        ),
        with_args(
            "metrics port in use",
            with(&["--metrics-port", &port]),
            &["is already in use", "choose another with --metrics-port"],
        ),
        case(
            "gateway port in use",
            &["gateway", "--store", "sqlite::memory:", "--listen", &listen],
            &[
                "is already in use",
                "choose another with --listen HOST:PORT",
            ],
        ),
    ];
    // The interval-like option: a poll interval in seconds, not a unit string.
    for bad in ["abc", "0", "-1", "1h", "", "NaN"] {
        let arg = format!("--poll-interval={bad}");
        cases.push(with_args(
            "bad poll interval",
            with(&[arg.as_str()]),
            &["--poll-interval <SECS>", seconds],
        ));
    }
    assert_usage_errors(&cases);
    drop(taken);
}

/// Regression: a DSN given to `csv:` by mistake, or the second of two comma-joined DSNs,
/// had its password printed.
#[test]
fn a_password_in_a_misplaced_or_second_dsn_is_never_printed() {
    let (one, two) = (support::pg::closed_port(), support::pg::closed_port());
    let specs = [
        format!("csv:postgresql://u:SECRETPW1@127.0.0.1:{one}/db"),
        format!(
            "questdb:postgresql://u:pw@127.0.0.1:{one}/db,\
             postgresql://u:SECRETPW2@127.0.0.1:{two}/db"
        ),
    ];
    for spec in specs {
        let mut args = sample_run(&spec);
        args.extend(["--max-retries".to_owned(), "0".to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = qmtl(&args);
        let all = text(&out);
        assert!(matches!(out.status.code(), Some(1 | 2)), "{spec}: {all}");
        assert!(!all.contains("SECRETPW"), "{spec}: {all}");
        assert!(!all.contains("panicked"), "{spec}: {all}");
    }
}

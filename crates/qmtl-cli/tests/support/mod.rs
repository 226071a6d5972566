//! What the `qmtl` binary's integration tests share: how the binary is run, the bundled
//! EUR/USD file and its range, scratch files, a child whose output lines are collected
//! as they come, `qmtl gateway` as a process and the gateway library in process on free
//! ports of 127.0.0.1, a plain HTTP GET, and the node ids, imports, row counts and report
//! lookups the end-to-end tests build on. The PostgreSQL test server is the library's
//! `support/pg.rs`, included here unchanged as [`pg`].
//!
//! Each test binary compiles this module on its own and uses only part of it, hence the
//! `dead_code` allowance. Helpers that only one file needs stay in that file.

#![allow(dead_code)]

#[path = "../../../qmtl/tests/support/pg.rs"]
pub mod pg;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qmtl_gateway::{serve, Gateway, GatewayConfig, StoreSpec, Token};
use serde_json::Value;

/// The first bar of the bundled file, as `--backfill-start`.
pub const START: &str = "1492592400";
/// Just past the last bar of the bundled file, as `--backfill-end`.
pub const END: &str = "1518019200";
/// The last bar of the bundled file.
pub const LAST_BAR: i64 = 1_518_015_600;

/// The workspace root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `csv:` source spec of the bundled hourly EUR/USD file.
pub fn bundled_csv() -> String {
    format!("csv:{}", repo().join("data/eurusd_1h.csv").display())
}

/// The `qmtl` binary, run from the workspace root and taking neither a gateway token nor
/// a gateway timeout from the environment the tests run in.
pub fn qmtl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qmtl"));
    cmd.current_dir(repo())
        .env_remove("QMTL_GATEWAY_TOKEN")
        .env_remove("QMTL_GATEWAY_TIMEOUT_SECS");
    cmd
}

/// Standard output followed by standard error.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `name` in a temporary directory of this test binary and process, with no file left
/// there by an earlier process of the same id.
pub fn scratch(name: &str) -> PathBuf {
    let binary = env!("CARGO_CRATE_NAME").replace('_', "-");
    let dir = std::env::temp_dir().join(format!("qmtl-{binary}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

/// `qmtl run momentum --mode backtest` over the bundled range of `source`, then `extra`.
pub fn backtest_args<'a>(source: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "momentum",
        "--mode",
        "backtest",
        "--backfill-source",
        source,
        "--backfill-start",
        START,
        "--backfill-end",
        END,
    ];
    args.extend_from_slice(extra);
    args
}

/// The id of node `name` of `strategy`, as `qmtl nodes --json` prints it.
pub fn node_id(strategy: &str, name: &str) -> String {
    let out = qmtl().args(["nodes", strategy, "--json"]).output().unwrap();
    let nodes: Value = serde_json::from_slice(&out.stdout).unwrap();
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .map(|n| n["node_id"].as_str().unwrap().to_owned())
        .unwrap()
}

/// `qmtl import` of `from` for `stream` of `strategy` into `table` of `server`.
#[track_caller]
pub fn import(server: &pg::Server, strategy: &str, stream: &str, from: &str, table: &str) {
    let into = format!("questdb:{}", server.dsn());
    let out = qmtl()
        .args(["import", "--strategy", strategy, "--stream", stream])
        .args(["--from", from, "--into", &into, "--table", table])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// The JSON report a run wrote with `--report-json`.
pub fn read_report(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The entry of node `name` in a report.
pub fn report_node<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap()
}

/// Rows of `node` at or after `from` in `table`.
pub fn count_rows(server: &pg::Server, table: &str, node: &str, from: i64) -> u64 {
    let sql = format!("SELECT count(*) FROM {table} WHERE node_id = '{node}' AND ts >= {from}");
    server.psql(&sql).parse().unwrap()
}

/// Rows of `node` at or after `from` in `table`, waiting up to 30 s for `want` of them;
/// the output of `runs` is shown when they do not come.
#[track_caller]
pub fn wait_rows(
    server: &pg::Server,
    table: &str,
    node: &str,
    from: i64,
    want: u64,
    runs: &[&Running],
) -> u64 {
    let began = Instant::now();
    loop {
        let n = count_rows(server, table, node, from);
        if n >= want {
            return n;
        }
        if began.elapsed() > Duration::from_secs(30) {
            let logs: Vec<String> = runs.iter().map(|r| r.output()).collect();
            panic!(
                "{n} of {want} rows of {node} from {from}:\n{}",
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running child whose output lines (standard output and error) are collected as they
/// come. Dropping it kills the child.
pub struct Running {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Running {
    /// Starts `cmd` with its output piped into the collected lines.
    pub fn spawn(mut cmd: Command) -> Running {
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

    /// Every line collected so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The child's standard input, which the command must have piped.
    pub fn stdin(&mut self) -> &mut ChildStdin {
        self.child.stdin.as_mut().expect("stdin is piped")
    }

    /// The first line containing `needle`, waiting up to `within`.
    #[track_caller]
    pub fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        let began = Instant::now();
        loop {
            let found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
                .cloned();
            if let Some(line) = found {
                return line;
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
    pub fn wait_for_count(&mut self, needle: &str, n: usize, within: Duration) {
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

    /// Sends `signal` (`TERM`, `INT`, `KILL`) and waits up to 10 s for the exit; returns
    /// the status and how long the exit took.
    #[track_caller]
    pub fn signal(&mut self, signal: &str) -> (ExitStatus, Duration) {
        let pid = self.child.id().to_string();
        let sent = Instant::now();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(ok.success());
        let (status, took) = self.wait(sent, Duration::from_secs(10));
        eprintln!("SIG{signal}: exit {status} after {took:?}");
        (status, took)
    }

    /// Waits up to `within` after `since` for the exit; returns the status and how long
    /// after `since` it came. The last lines are given a moment to be collected.
    #[track_caller]
    pub fn wait(&mut self, since: Instant, within: Duration) -> (ExitStatus, Duration) {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let took = since.elapsed();
                std::thread::sleep(Duration::from_millis(100));
                return (status, took);
            }
            assert!(
                since.elapsed() < within,
                "still running after {within:?}:\n{}",
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

/// `qmtl gateway` on a free port with an in-memory store and `extra` flags; returns it
/// and its URL.
pub fn gateway(extra: &[&str]) -> (Running, String) {
    let mut cmd = qmtl();
    cmd.args(["gateway", "--listen", "127.0.0.1:0"])
        .args(["--store", "sqlite::memory:"])
        .args(extra);
    listening(cmd)
}

/// Starts `cmd`, a `qmtl gateway` command, and waits up to 30 s for the URL it listens
/// on; returns it and the URL.
pub fn listening(cmd: Command) -> (Running, String) {
    let mut running = Running::spawn(cmd);
    let line = running.wait_for("gateway listening on http://", Duration::from_secs(30));
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    (running, url)
}

/// The gateway library serving on a free port of 127.0.0.1 with an in-memory store and
/// `token`, if any; returns it and its URL.
pub async fn serve_gateway(token: Option<&str>) -> (Gateway, String) {
    let config = GatewayConfig::new(StoreSpec::parse("sqlite::memory:").unwrap())
        .listen("127.0.0.1:0".parse().unwrap())
        .token(token.and_then(Token::new));
    let gateway = serve(config).await.expect("the gateway starts");
    let url = format!("http://{}", gateway.local_addr());
    (gateway, url)
}

/// GET over plain HTTP/1.0; returns the body.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_once("\r\n\r\n")
        .map_or(answer.clone(), |(_, b)| b.to_owned())
}

//! `qmtl run --mode dryrun` against gateways that misbehave, and `qmtl gateway` killed
//! and restarted, all as real processes on 127.0.0.1.
//!
//! A fake gateway (a few lines of HTTP over `std::net`, written here) is refused,
//! slow, answers 500, answers garbage (not JSON, the wrong JSON, a truncated body) or
//! echoes the token; every case ends the run with exit 1 and a message naming the URL
//! and what happened, never a panic, and the fake records what the run sent: resends
//! only where safe (all with the same idempotency key), none after a 2xx or 4xx, and a
//! best-effort `DELETE /strategies?idempotency_key=KEY` whenever a registration may have
//! landed. A signal while the gateway holds a registration unanswered stops the run at
//! once (exit 0 within 2 s, the key abandoned), and an absurdly short lease is renewed
//! at most once a second. A proxy in front of a real gateway loses the first answer:
//! the resend gets the original registration, not a 409. A run killed with SIGKILL stops
//! blocking its DAG once its lease lapses, while heartbeats keep a live run's lease,
//! also across a restart of the gateway. A gateway killed with SIGTERM or SIGKILL and
//! started again on the same SQLite file or PostgreSQL database keeps its strategies
//! and queue maps. The gateway listens on loopback by default and refuses a zero lease.

#![cfg(unix)]

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qmtl::dag::DagJson;
use qmtl::{DagBuilder, Node, StreamInput};
use serde_json::{json, Value};

use support::{bundled_csv, listening, pg, qmtl, scratch, text, Running};

const TOKEN: &str = "tok-f4ults-5ecret";

/// A momentum dryrun over part of the bundled file, live rows from stdin.
fn dryrun(url: &str) -> Command {
    let mut cmd = qmtl();
    cmd.args(["run", "momentum", "--mode", "dryrun", "--gateway-url", url])
        .args(["--backfill-source", &bundled_csv()])
        .args([
            "--backfill-start",
            "1492592400",
            "--backfill-end",
            "1500000000",
        ])
        .args(["--live-source", "jsonl:-"]);
    cmd
}

/// Runs a dryrun that ends with its (empty) input.
fn dryrun_once(url: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = dryrun(url);
    cmd.envs(env.iter().copied()).stdin(Stdio::null());
    cmd.output().unwrap()
}

// ---------------------------------------------------------------------------------------
// A fake gateway.

/// One request as the fake received it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

impl Request {
    fn key(&self) -> Option<&str> {
        self.headers.get("idempotency-key").map(String::as_str)
    }
}

/// What the fake does with a registration.
#[derive(Clone)]
enum Reply {
    /// Answers these bytes, then closes.
    Raw(Vec<u8>),
    /// Answers nothing for this long, then closes.
    Silence(Duration),
    /// Answers `status` with `Authorization` echoed in a JSON detail.
    EchoToken(u16),
    /// Forwards to a real gateway; drops the connection instead of answering the first
    /// time.
    LoseFirstAnswer(String),
    /// Accepts as strategy `s-1` with a lease of this many seconds; answers the first
    /// `failing` heartbeats 503, then 410 (the lease lapsed).
    Leased { lease_secs: f64, failing: usize },
}

fn http(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one HTTP/1.1 message (head and `content-length` body); `None` at end of input.
fn read_message(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

fn parse_request(message: &[u8]) -> Request {
    let head = String::from_utf8_lossy(message);
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap().split(' ');
    let (method, path) = (first.next().unwrap(), first.next().unwrap());
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    Request {
        method: method.to_owned(),
        path: path.to_owned(),
        headers,
    }
}

/// A fake gateway on 127.0.0.1 that answers registrations with `reply` and every other
/// request (the client's `DELETE`) with 200, recording all of them.
struct Fake {
    url: String,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Fake {
    fn start(reply: Reply) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                let (reply, log) = (reply.clone(), log.clone());
                std::thread::spawn(move || serve_connection(stream, n, &reply, &log));
            }
        });
        Fake { url, seen }
    }

    fn seen(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits up to `within` until `n` registrations have arrived.
    #[track_caller]
    fn wait_for_posts(&self, n: usize, within: Duration) {
        let began = Instant::now();
        while self.posts().len() < n {
            assert!(began.elapsed() < within, "{:?}", self.seen());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn posts(&self) -> Vec<Request> {
        self.seen()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == "/strategies")
            .collect()
    }

    /// The requests other than registrations.
    fn others(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|r| r.method != "POST")
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }
}

fn serve_connection(mut stream: TcpStream, n: usize, reply: &Reply, log: &Mutex<Vec<Request>>) {
    while let Some(message) = read_message(&mut stream) {
        let request = parse_request(&message);
        log.lock().unwrap().push(request.clone());
        if request.path.ends_with("/heartbeat") {
            let Reply::Leased { failing, .. } = reply else {
                return;
            };
            let beats = log
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.path.ends_with("/heartbeat"))
                .count();
            let answer = if beats <= *failing {
                http("503 Service Unavailable", r#"{"detail":"store down"}"#)
            } else {
                http("410 Gone", r#"{"detail":"ended","strategy_id":"s-1"}"#)
            };
            let _ = stream.write_all(&answer);
            return;
        }
        if request.method != "POST" || request.path != "/strategies" {
            if let Reply::LoseFirstAnswer(upstream) = reply {
                let answer = forward(upstream, &message);
                let _ = stream.write_all(&answer);
                continue;
            }
            let _ = stream.write_all(&http("200 OK", r#"{"status":"ended"}"#));
            return;
        }
        match reply {
            Reply::Raw(bytes) => {
                let _ = stream.write_all(bytes);
                return;
            }
            Reply::Silence(how_long) => {
                std::thread::sleep(*how_long);
                return;
            }
            Reply::EchoToken(status) => {
                let auth = request.headers.get("authorization").cloned();
                let body = json!({ "detail": format!("bad header {auth:?}") }).to_string();
                let _ = stream.write_all(&http(&format!("{status} Nope"), &body));
                return;
            }
            Reply::Leased { lease_secs, .. } => {
                let body =
                    json!({ "strategy_id": "s-1", "queue_map": {}, "lease_secs": lease_secs });
                let _ = stream.write_all(&http("202 Accepted", &body.to_string()));
                return;
            }
            Reply::LoseFirstAnswer(upstream) => {
                let answer = forward(upstream, &message);
                let posts = log
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|r| r.method == "POST")
                    .count();
                if posts == 1 {
                    // The gateway acted on it; the client never hears so.
                    return;
                }
                let _ = stream.write_all(&answer);
            }
        }
        let _ = n;
    }
}

/// Sends one request to `upstream` (`http://HOST:PORT`) and returns its answer.
fn forward(upstream: &str, message: &[u8]) -> Vec<u8> {
    let mut conn = TcpStream::connect(upstream.trim_start_matches("http://")).unwrap();
    conn.write_all(message).unwrap();
    read_message(&mut conn).expect("the gateway answers")
}

/// Asserts a dryrun failed as a runtime error naming the URL and `what`, without a panic
/// or the token.
#[track_caller]
fn assert_runtime_failure(out: &Output, url: &str, what: &str) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains(url), "the URL is not named: {all}");
    assert!(all.contains(what), "no '{what}' in: {all}");
    assert!(!all.contains("panicked"), "{all}");
    assert!(!all.contains(TOKEN), "the token was printed: {all}");
}

/// Asserts the fake saw `attempts` registrations, all with one key, and, when `abandoned`,
/// a best-effort `DELETE` by that key.
#[track_caller]
fn assert_registrations(fake: &Fake, attempts: usize, abandoned: bool) {
    let posts = fake.posts();
    assert_eq!(posts.len(), attempts, "{posts:?}");
    let key = posts[0]
        .key()
        .expect("registrations carry an idempotency key");
    assert!(posts.iter().all(|p| p.key() == Some(key)), "{posts:?}");
    let delete = format!("DELETE /strategies?idempotency_key={key}");
    let want: Vec<String> = if abandoned { vec![delete] } else { vec![] };
    assert_eq!(fake.others(), want);
}

#[test]
fn a_refused_connection_is_retried_then_named_with_the_url() {
    let url = format!("http://127.0.0.1:{}", pg::closed_port());
    let out = dryrun_once(&url, &[]);
    assert_runtime_failure(&out, &url, "is unreachable (4 connection attempts)");
}

#[test]
fn a_gateway_slower_than_the_timeout_is_retried_with_the_same_key_then_abandoned() {
    let fake = Fake::start(Reply::Silence(Duration::from_secs(5)));
    let out = dryrun_once(&fake.url, &[("QMTL_GATEWAY_TIMEOUT_SECS", "0.5")]);
    assert_runtime_failure(
        &out,
        &fake.url,
        "did not answer POST /strategies within 500ms",
    );
    assert!(text(&out).contains("(4 attempts)"), "{}", text(&out));
    assert_registrations(&fake, 4, true);
}

/// Waits up to 5 s for `needle` in `run`'s output (the pipes may still hold the last
/// lines after the exit) and returns all of it.
fn output_with(run: &Running, needle: &str) -> String {
    let began = Instant::now();
    while !run.output().contains(needle) && began.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    run.output()
}

#[test]
fn sigterm_during_registration_retries_starts_no_new_attempt_and_abandons_the_key() {
    let fake = Fake::start(Reply::Silence(Duration::from_secs(30)));
    let mut cmd = dryrun(&fake.url);
    cmd.env("QMTL_GATEWAY_TIMEOUT_SECS", "1")
        .stdin(Stdio::null());
    let mut run = Running::spawn(cmd);
    run.wait_for("gateway.retry", Duration::from_secs(60));
    let (status, _) = run.signal("TERM");
    let stopped = format!("stopped while registering with {}", fake.url);
    let all = output_with(&run, &stopped);
    assert_eq!(status.code(), Some(0), "{all}");
    assert!(all.contains(&stopped), "{all}");
    let posts = fake.posts().len();
    assert!(posts < 4, "{:?}", fake.posts());
    assert_registrations(&fake, posts, true);
}

// Regression: the registration in flight was waited out (10 s) before the stop, then the
// cleanup took 1.5 s more, and the run exited 1.
#[test]
fn sigint_while_the_gateway_holds_the_registration_exits_0_within_2s_and_abandons_it() {
    let fake = Fake::start(Reply::Silence(Duration::from_secs(60)));
    let mut cmd = dryrun(&fake.url);
    cmd.stdin(Stdio::null());
    let mut run = Running::spawn(cmd);
    fake.wait_for_posts(1, Duration::from_secs(60));
    let (status, took) = run.signal("INT");
    let stopped = format!("stopped while registering with {}", fake.url);
    let all = output_with(&run, &stopped);
    assert_eq!(status.code(), Some(0), "{all}");
    assert!(
        took < Duration::from_secs(2),
        "the stop took {took:?}:\n{all}"
    );
    assert!(all.contains(&stopped), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    assert_registrations(&fake, 1, true);
}

// Regression: a lease of a microsecond had the client renew it about 100 times a second.
#[test]
fn an_absurdly_short_lease_is_renewed_at_most_once_a_second_with_a_warning() {
    let fake = Fake::start(Reply::Leased {
        lease_secs: 0.000_001,
        failing: usize::MAX,
    });
    let mut cmd = dryrun(&fake.url);
    cmd.stdin(Stdio::piped());
    let mut run = Running::spawn(cmd);
    let warning = run.wait_for("gateway.lease_too_short", Duration::from_secs(60));
    assert!(warning.contains("s-1"), "{warning}");
    std::thread::sleep(Duration::from_millis(3500));
    let heartbeats = fake
        .seen()
        .iter()
        .filter(|r| r.path == "/strategies/s-1/heartbeat")
        .count();
    // One a second from the registration on: 3 in 3.5 s (5 allowed for a slow pipe to
    // deliver the warning; unclamped, there were hundreds).
    assert!(
        heartbeats <= 5,
        "{heartbeats} heartbeats:\n{}",
        run.output()
    );
    drop(run.child.stdin.take());
    let (status, _) = run.wait(Instant::now(), Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", run.output());
}

#[test]
fn a_500_is_retried_with_the_same_key_then_reported_with_the_gateways_words() {
    let fake = Fake::start(Reply::Raw(http(
        "500 Internal Server Error",
        r#"{"detail":"disk on fire"}"#,
    )));
    let out = dryrun_once(&fake.url, &[]);
    assert_runtime_failure(&out, &fake.url, "failed (500): disk on fire");
    assert_registrations(&fake, 4, true);
}

#[test]
fn garbage_answers_fail_clearly_and_a_2xx_is_never_resent() {
    let cases: [(&str, Vec<u8>, &str, usize); 4] = [
        (
            "not JSON",
            http("202 Accepted", "<html>proxy error</html>"),
            "answered 202 with an unexpected body",
            1,
        ),
        (
            "the wrong JSON",
            http("202 Accepted", r#"{"id":5,"queues":"x"}"#),
            "answered 202 with an unexpected body",
            1,
        ),
        (
            "a queue map of numbers",
            http("202 Accepted", r#"{"strategy_id":"s","queue_map":{"a":1}}"#),
            "answered 202 with an unexpected body",
            1,
        ),
        (
            "a truncated body",
            b"HTTP/1.1 202 Accepted\r\ncontent-length: 100\r\n\r\n{\"strategy_id\":".to_vec(),
            "lost its connection before the answer (4 attempts)",
            4,
        ),
    ];
    for (case, bytes, what, attempts) in cases {
        let fake = Fake::start(Reply::Raw(bytes));
        let out = dryrun_once(&fake.url, &[]);
        assert_runtime_failure(&out, &fake.url, what);
        let posts = fake.posts().len();
        assert_eq!(posts, attempts, "{case}: {posts} registrations sent");
        assert_registrations(&fake, attempts, true);
    }
}

#[test]
fn a_4xx_is_final_never_resent_and_a_usage_error() {
    let fake = Fake::start(Reply::Raw(http(
        "422 Unprocessable Entity",
        r#"{"detail":"period must be positive","field":"dag_json.nodes[1].period"}"#,
    )));
    let out = dryrun_once(&fake.url, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("at field dag_json.nodes[1].period: period must be positive"),
        "{}",
        text(&out)
    );
    assert_registrations(&fake, 1, false);
}

#[test]
fn a_token_the_gateway_echoes_back_is_never_printed() {
    for status in [401, 500] {
        let fake = Fake::start(Reply::EchoToken(status));
        let out = dryrun(&fake.url)
            .args(["--gateway-token", TOKEN])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let all = text(&out);
        assert!(!all.contains(TOKEN), "the token was printed: {all}");
        assert!(all.contains("Bearer ***"), "{all}");
        let posts = fake.posts();
        let sent = posts[0].headers.get("authorization").unwrap();
        assert_eq!(sent, &format!("Bearer {TOKEN}"));
    }
}

// ---------------------------------------------------------------------------------------
// Real gateways.

/// `qmtl gateway` on a free port with the token; returns it and its URL.
fn gateway(store: &str, extra: &[&str]) -> (Running, String) {
    gateway_on("127.0.0.1:0", store, extra)
}

/// `qmtl gateway` on `listen` with the token; returns it and its URL.
fn gateway_on(listen: &str, store: &str, extra: &[&str]) -> (Running, String) {
    let mut cmd = qmtl();
    cmd.args(["gateway", "--listen", listen, "--store", store])
        .args(extra)
        .env("QMTL_GATEWAY_TOKEN", TOKEN);
    listening(cmd)
}

/// One HTTP request with the token, over a fresh connection; returns status and body.
fn call(method: &str, url: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    let body = body.map_or_else(String::new, Value::to_string);
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let answer = read_message(&mut stream).expect("the gateway answers");
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let status = String::from_utf8_lossy(&answer[9..12]).parse().unwrap();
    let value = serde_json::from_slice(&answer[head_end..]).unwrap_or(Value::Null);
    (status, value)
}

fn active_count(url: &str) -> i64 {
    let (status, body) = call("GET", url, "/status", None);
    assert_eq!(status, 200, "{body}");
    body["strategies_active"].as_i64().unwrap()
}

fn momentum_dag() -> Value {
    let out = qmtl().args(["dag", "momentum"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_resent_registration_whose_answer_was_lost_gets_the_original_not_a_409() {
    let (_gateway, upstream) = gateway("sqlite::memory:", &[]);
    let proxy = Fake::start(Reply::LoseFirstAnswer(upstream.clone()));
    let report = scratch("lost-answer.json");
    let out = dryrun(&proxy.url)
        .args(["--report-json", report.to_str().unwrap()])
        .env("QMTL_GATEWAY_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let posts = proxy.posts();
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert_eq!(posts[0].key(), posts[1].key());

    // The gateway stored one registration, the run's, and the run ended it.
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let id = report["strategy_id"].as_str().unwrap();
    let (status, body) = call("GET", &upstream, &format!("/strategies/{id}"), None);
    assert_eq!((status, &body["status"]), (200, &json!("ended")), "{body}");
    assert_eq!(active_count(&upstream), 0);
    let deletes = proxy.others();
    assert_eq!(deletes, vec![format!("DELETE /strategies/{id}")]);
}

#[test]
fn a_run_killed_with_sigkill_stops_blocking_its_dag_once_its_lease_lapses() {
    let lease = Duration::from_secs(5);
    let (_gateway, url) = gateway("sqlite::memory:", &["--lease-secs", "5"]);
    let token = [("QMTL_GATEWAY_TOKEN", TOKEN)];

    // A run that waits for live rows on stdin; its heartbeats hold the lease past 5 s.
    let mut cmd = dryrun(&url);
    cmd.envs(token).stdin(Stdio::piped());
    let mut run = Running::spawn(cmd);
    run.wait_for("gateway.registered", Duration::from_secs(60));
    std::thread::sleep(lease + Duration::from_secs(2));
    assert_eq!(active_count(&url), 1, "{}", run.output());

    // Killed, it ends nothing; its registration blocks the DAG until the lease lapses.
    let payload = json!({ "dag_json": momentum_dag(), "meta": null, "run_type": "dry-run" });
    let (status, _) = run.signal("KILL");
    assert!(!status.success());
    let (status, body) = call("POST", &url, "/strategies", Some(&payload));
    assert_eq!(status, 409, "{body}");
    std::thread::sleep(lease + Duration::from_secs(1));
    assert_eq!(active_count(&url), 0);
    let out = dryrun_once(&url, &token);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("gateway strategy"), "{}", text(&out));
}

#[test]
fn a_live_run_keeps_its_registration_across_a_gateway_restart() {
    let lease = Duration::from_secs(8);
    let listen = format!("127.0.0.1:{}", pg::closed_port());
    let db = scratch("run-across-restart.db");
    let store = format!("sqlite:{}", db.display());
    let (mut gw, url) = gateway_on(&listen, &store, &["--lease-secs", "8"]);
    let mut cmd = dryrun(&url);
    cmd.env("QMTL_GATEWAY_TOKEN", TOKEN).stdin(Stdio::piped());
    let mut run = Running::spawn(cmd);
    run.wait_for("gateway.registered", Duration::from_secs(60));

    // The gateway stops and comes back on the same address and file.
    assert!(gw.signal("TERM").0.success(), "{}", gw.output());
    drop(gw);
    std::thread::sleep(Duration::from_millis(500));
    let (_gw, url) = gateway_on(&listen, &store, &["--lease-secs", "8"]);

    // The run's heartbeats reach the new process: active past a whole lease.
    std::thread::sleep(lease + Duration::from_secs(1));
    assert_eq!(active_count(&url), 1, "{}", run.output());
    assert!(
        !run.output().contains("gateway.lease_lost"),
        "{}",
        run.output()
    );

    // Stopped, the run ends its registration on the restarted gateway.
    assert!(run.signal("TERM").0.success(), "{}", run.output());
    assert_eq!(active_count(&url), 0, "{}", run.output());
}

#[test]
fn failed_heartbeats_warn_and_a_lapsed_lease_is_reported_while_the_run_goes_on() {
    let fake = Fake::start(Reply::Leased {
        lease_secs: 0.3,
        failing: 2,
    });
    let mut cmd = dryrun(&fake.url);
    cmd.stdin(Stdio::piped());
    let mut run = Running::spawn(cmd);
    run.wait_for("gateway.heartbeat_failed", Duration::from_secs(60));
    let lost = run.wait_for("gateway.lease_lost", Duration::from_secs(30));
    assert!(
        lost.contains("s-1") && lost.contains("lease lapsed"),
        "{lost}"
    );

    // The run goes on, heartbeats stop, and it ends with its input as usual.
    std::thread::sleep(Duration::from_millis(500));
    assert!(run.child.try_wait().unwrap().is_none(), "{}", run.output());
    drop(run.child.stdin.take());
    let (status, _) = run.wait(Instant::now(), Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", run.output());
    let heartbeats = fake
        .seen()
        .iter()
        .filter(|r| r.path == "/strategies/s-1/heartbeat")
        .count();
    assert_eq!(
        heartbeats, 3,
        "two failed, one found the lease lapsed, then none"
    );
    assert!(fake.others().contains(&"DELETE /strategies/s-1".to_owned()));
}

/// `bars -> <node>`: DAGs built this way share the `bars` stream.
fn over_bars(node: &str) -> DagJson {
    let mut b = DagBuilder::new();
    let s = b
        .stream_input(
            StreamInput::new("bars")
                .interval("1h")
                .period(20)
                .fields(["close"]),
        )
        .unwrap();
    let n = b
        .node(
            Node::new(node)
                .input(&s)
                .fields(["v"])
                .compute(format!("{node}@1"), |_| None),
        )
        .unwrap();
    b.finish(&n).to_json()
}

fn register(url: &str, dag: &DagJson) -> (u16, Value) {
    let payload = json!({ "dag_json": dag, "meta": null, "run_type": "live" });
    call("POST", url, "/strategies", Some(&payload))
}

/// Registers two strategies sharing a stream, stops the gateway with `signal`, starts
/// it again on `store` and checks both strategies and the queue map are still there.
fn survives_a_restart(store: &str, signal: &str) {
    let (mut gw, url) = gateway(store, &[]);
    let (status, first) = register(&url, &over_bars("first"));
    assert_eq!(status, 202, "{first}");
    let (status, second) = register(&url, &over_bars("second"));
    assert_eq!(status, 202, "{second}");
    let shared = second["queue_map"].clone();
    assert_eq!(shared.as_object().unwrap().len(), 1, "{second}");
    let (stopped, _) = gw.signal(signal);
    if signal == "TERM" {
        assert!(stopped.success(), "{stopped}:\n{}", gw.output());
    }
    drop(gw);

    let (_gw, url) = gateway(store, &[]);
    let id = second["strategy_id"].as_str().unwrap();
    let (status, stored) = call("GET", &url, &format!("/strategies/{id}"), None);
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["status"], "active");
    assert_eq!(stored["queue_map"], shared);
    let (status, body) = register(&url, &over_bars("first"));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["strategy_id"], first["strategy_id"]);
    let (status, third) = register(&url, &over_bars("third"));
    assert_eq!(status, 202, "{third}");
    assert_eq!(
        third["queue_map"], shared,
        "the restarted gateway shares the stream"
    );
    assert_eq!(active_count(&url), 3);
}

#[test]
fn a_sqlite_gateway_killed_with_sigterm_or_sigkill_keeps_its_strategies() {
    for signal in ["TERM", "KILL"] {
        let db = scratch(&format!("restart-{signal}.db"));
        survives_a_restart(&format!("sqlite:{}", db.display()), signal);
    }
}

#[test]
fn a_postgres_gateway_killed_with_sigterm_or_sigkill_keeps_its_strategies() {
    let server = pg::server();
    for (signal, db) in [("TERM", "gw_faults_term"), ("KILL", "gw_faults_kill")] {
        server.psql(&format!("DROP DATABASE IF EXISTS {db}"));
        server.psql(&format!("CREATE DATABASE {db}"));
        let dsn = server.dsn();
        let base = dsn.rsplit_once('/').unwrap().0;
        survives_a_restart(&format!("postgres:{base}/{db}"), signal);
    }
}

#[test]
fn the_gateway_listens_on_loopback_unless_told_otherwise() {
    let mut cmd = qmtl();
    cmd.args(["gateway", "--store", "sqlite::memory:"]);
    let mut gw = Running::spawn(cmd);
    let began = Instant::now();
    loop {
        let all = gw.output();
        if all.contains("gateway listening on") {
            assert!(all.contains("http://127.0.0.1:8000"), "{all}");
            assert!(gw.signal("TERM").0.success());
            break;
        }
        if let Ok(Some(status)) = gw.child.try_wait() {
            // Port 8000 is taken here: the refusal still names the loopback address.
            std::thread::sleep(Duration::from_millis(100));
            let all = gw.output();
            assert_eq!(status.code(), Some(2), "{all}");
            assert!(all.contains("port 8000 on 127.0.0.1"), "{all}");
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(30), "{all}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_zero_lease_is_a_usage_error() {
    let out = qmtl()
        .args(["gateway", "--listen", "127.0.0.1:0", "--lease-secs", "0"])
        .args(["--store", "sqlite::memory:"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--lease-secs"), "{}", text(&out));
}

//! `qmtl gateway` as a real process: it serves on a free port, registers the momentum
//! DAG printed by `qmtl dag`, stops on SIGTERM with exit 0, keeps its strategies across
//! a restart on the same SQLite file, and never prints its token or a DSN password. A
//! taken port, a bad store spec, an empty token and a PostgreSQL store refusing the
//! password are usage errors (exit 2).

#![cfg(unix)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::{qmtl, scratch, text};

const TOKEN: &str = "tok-5ecret-value";

/// A running `qmtl gateway` and the base URL it printed.
struct Running {
    child: Child,
    base: String,
    first_line: String,
}

fn start(store: &str) -> Running {
    let mut child = qmtl()
        .args(["gateway", "--listen", "127.0.0.1:0", "--store", store])
        .env("QMTL_GATEWAY_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qmtl gateway starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
    });
    let first_line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the gateway prints its address");
    let addr = first_line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {first_line:?}"))
        .to_owned();
    Running {
        child,
        base: format!("http://{addr}"),
        first_line,
    }
}

/// Sends SIGTERM and returns the exit status and stderr, within a few seconds.
fn terminate(mut running: Running) -> (std::process::ExitStatus, String) {
    let pid = running.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the gateway did not stop within 5 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    running
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

fn momentum_payload() -> Value {
    let out = qmtl().args(["dag", "momentum"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let dag = String::from_utf8(out.stdout).unwrap();
    json!({ "dag_json": dag, "meta": null, "run_type": "dry-run" })
}

/// Registers the momentum DAG with the token.
async fn register(client: &reqwest::Client, gw: &Running) -> reqwest::Response {
    client
        .post(format!("{}/strategies", gw.base))
        .bearer_auth(TOKEN)
        .json(&momentum_payload())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn serves_until_sigterm_and_keeps_strategies_across_a_restart() {
    let db = scratch("restart.db");
    let store = format!("sqlite:{}", db.display());
    let client = reqwest::Client::new();

    // First run: the token is required; the momentum DAG registers.
    let gw = start(&store);
    assert!(
        gw.first_line.contains("token required"),
        "{}",
        gw.first_line
    );
    let r = client
        .get(format!("{}/status", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = register(&client, &gw).await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["strategy_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first_line = gw.first_line.clone();
    let (status, stderr) = terminate(gw);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        !first_line.contains(TOKEN) && !stderr.contains(TOKEN),
        "{stderr}"
    );

    // Second run on the same file: the strategy is still active and still conflicts.
    let gw = start(&store);
    let r = client
        .get(format!("{}/strategies/{id}/status", gw.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "active"})
    );
    let r = register(&client, &gw).await;
    assert_eq!(r.status(), 409);
    let (status, stderr) = terminate(gw);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains(TOKEN), "{stderr}");
    let _ = std::fs::remove_file(db);
}

#[test]
fn a_port_in_use_is_a_usage_error_naming_the_port() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = qmtl()
        .args(["gateway", "--store", "sqlite::memory:", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("port {port}")),
        "{}",
        text(&out)
    );
}

#[test]
fn a_bad_store_spec_is_a_usage_error_without_the_password() {
    for spec in ["mysql://u:pw-s3cret@127.0.0.1/db", "sqlite:", "postgres:"] {
        let out = qmtl()
            .args(["gateway", "--listen", "127.0.0.1:0", "--store", spec])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{spec}: {}", text(&out));
        assert!(text(&out).contains("sqlite:PATH"), "{}", text(&out));
        assert!(!text(&out).contains("pw-s3cret"), "{}", text(&out));
    }
}

/// Regression: a SQLite path in a missing directory, or a file that is not a database,
/// exited 1 as if the gateway had failed at run time.
#[test]
fn a_sqlite_store_that_cannot_be_a_database_is_a_usage_error() {
    let not_db = scratch("not-a-database.db");
    std::fs::write(&not_db, "plain text, not SQLite\n").unwrap();
    let specs = [
        "sqlite:/nonexistent-qmtl-dir/x.db".to_owned(),
        format!("sqlite:{}", not_db.display()),
    ];
    for spec in specs {
        let out = qmtl()
            .args(["gateway", "--listen", "127.0.0.1:0", "--store", &spec])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{spec}: {}", text(&out));
        assert!(text(&out).contains("writable file"), "{}", text(&out));
    }
}

#[test]
fn an_unreachable_postgres_store_fails_without_printing_the_password() {
    // A listener of our own that hangs up on every connection.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    let spec = format!("postgres:postgresql://qmtl:pw-s3cret@127.0.0.1:{port}/qmtl");
    let out = qmtl()
        .args(["gateway", "--listen", "127.0.0.1:0", "--store", &spec])
        .args(["--log-format", "json"])
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains(&format!("127.0.0.1:{port}/qmtl")), "{all}");
    assert!(!all.contains("pw-s3cret"), "{all}");
}

#[test]
fn an_empty_token_is_a_usage_error_not_a_gateway_without_authentication() {
    let cases: [(&[&str], Option<&str>, &str); 3] = [
        (&["--token", ""], None, "--token"),
        (&[], Some(""), "QMTL_GATEWAY_TOKEN"),
        (&["--token", "  "], Some(TOKEN), "--token"),
    ];
    for (args, env, origin) in cases {
        let mut cmd = qmtl();
        cmd.args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "sqlite::memory:",
        ])
        .args(args)
        .env_remove("QMTL_GATEWAY_TOKEN");
        if let Some(value) = env {
            cmd.env("QMTL_GATEWAY_TOKEN", value);
        }
        let out = cmd.output().unwrap();
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {all}");
        assert!(all.contains("token given by"), "{all}");
        assert!(all.contains(origin) && all.contains("empty"), "{all}");
        assert!(!all.contains("listening"), "{all}");
    }
}

/// A listener of our own that answers every PostgreSQL startup message the way a server
/// answers a wrong password: an ErrorResponse with SQLSTATE 28P01.
fn refusing_postgres() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut len = [0u8; 4];
            if conn.read_exact(&mut len).is_err() {
                continue;
            }
            let mut startup = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
            if conn.read_exact(&mut startup).is_err() {
                continue;
            }
            let mut fields = Vec::new();
            for (code, value) in [
                (b'S', "FATAL"),
                (b'V', "FATAL"),
                (b'C', "28P01"),
                (b'M', "password authentication failed for user \"qmtl\""),
            ] {
                fields.push(code);
                fields.extend_from_slice(value.as_bytes());
                fields.push(0);
            }
            fields.push(0);
            let mut message = vec![b'E'];
            message.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
            message.extend_from_slice(&fields);
            let _ = conn.write_all(&message);
        }
    });
    port
}

#[test]
fn a_postgres_store_refusing_the_password_is_a_usage_error_naming_the_user() {
    let port = refusing_postgres();
    let spec = format!("postgres:postgresql://qmtl:pw-s3cret@127.0.0.1:{port}/qmtl");
    let out = qmtl()
        .args(["gateway", "--listen", "127.0.0.1:0", "--store", &spec])
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("authentication failed for user qmtl"), "{all}");
    assert!(all.contains(&format!("127.0.0.1:{port}/qmtl")), "{all}");
    assert!(!all.contains("pw-s3cret"), "{all}");
    assert!(!all.contains("db error"), "{all}");
}

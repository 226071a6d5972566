//! Registrations that are safe to resend and bounded in time, on both stores (SQLite,
//! and a throwaway PostgreSQL server from `crates/qmtl/tests/support/pg.rs`): a repeat
//! with the same `Idempotency-Key` gets the original 202 back (also after a restart),
//! the same key with another DAG, run type or `meta` is 422 and after its strategy ended
//! 410; error answers repeat at most 80 characters of an id or value sent; a lease that
//! heartbeats keep renewing holds, a lapsed one ends the strategy (no conflict, no queue
//! map entry, no tag query match, never revived by a late heartbeat), also across a
//! restart; `DELETE /strategies?idempotency_key=` ends what a key stored; concurrent
//! resends of one registration all get the one strategy; tables an older gateway created
//! are upgraded in place; and the SDK's client keeps a lease renewed while its heartbeat
//! lives and reports a lapsed one.

mod support;

use std::time::Duration;

use qmtl::dag::DagJson;
use qmtl::{DagBuilder, StreamInput, TagMatch};
use qmtl_gateway::{Gateway, GatewayConfig, StoreSpec};
use reqwest::StatusCode;
use serde_json::{json, Value};

use support::{fresh_postgres, get, metrics, node_id, send, start_with, temp_db, url};

/// A lease long enough that no test sees it lapse unless it waits for that.
const LONG: Duration = Duration::from_secs(600);

async fn start(store: &StoreSpec, lease: Duration) -> Gateway {
    start_with(GatewayConfig::new(store.clone()).lease(lease)).await
}

/// A SQLite file unique to this test run.
fn sqlite(name: &str) -> StoreSpec {
    StoreSpec::Sqlite(temp_db(name))
}

/// `bars -> <node>`, with `bars` tagged `fx`.
fn over_bars(node: &str) -> DagJson {
    support::over_bars(node, "bars", &["fx"])
}

fn tag_query() -> DagJson {
    support::tag_query(&["fx"], TagMatch::Any)
}

async fn post(gw: &Gateway, dag: &DagJson, key: Option<&str>) -> (StatusCode, Value) {
    let body = json!({ "dag_json": dag, "meta": null, "run_type": "dry-run" });
    post_body(gw, &body, key).await
}

fn registration(dag: &DagJson, run_type: &str, meta: Value) -> Value {
    json!({ "dag_json": dag, "meta": meta, "run_type": run_type })
}

async fn post_body(gw: &Gateway, body: &Value, key: Option<&str>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(url(gw, "/strategies"))
        .json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    send(request).await
}

async fn heartbeat(gw: &Gateway, id: &str) -> (StatusCode, Value) {
    let path = format!("/strategies/{id}/heartbeat");
    send(reqwest::Client::new().post(url(gw, &path))).await
}

async fn status_of(gw: &Gateway, id: &str) -> String {
    let (code, body) = get(gw, &format!("/strategies/{id}/status")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    body["status"].as_str().unwrap().to_owned()
}

fn id_of(body: &Value) -> String {
    body["strategy_id"].as_str().unwrap().to_owned()
}

async fn a_repeated_key_gets_the_original_registration(store: StoreSpec) {
    let gw = start(&store, LONG).await;
    let (first, shared) = (over_bars("first"), over_bars("shared"));
    post(&gw, &first, None).await;

    // The first registration, then its repeat: the same id and queue map, a 202.
    let (code, original) = post(&gw, &shared, Some("run-key-1")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{original}");
    assert_eq!(original["lease_secs"], json!(600.0));
    let bars = node_id(&shared, "bars");
    assert_eq!(original["queue_map"], json!({ bars.clone(): bars }));
    let (code, repeat) = post(&gw, &shared, Some("run-key-1")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{repeat}");
    assert_eq!(repeat["strategy_id"], original["strategy_id"]);
    assert_eq!(repeat["queue_map"], original["queue_map"]);

    // Another key, or none, is another run: a conflict naming the first.
    for key in [None, Some("run-key-2")] {
        let (code, body) = post(&gw, &shared, key).await;
        assert_eq!(code, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["strategy_id"], original["strategy_id"]);
    }

    // The same key with another DAG is refused, naming the header.
    let (code, body) = post(&gw, &over_bars("other"), Some("run-key-1")).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "Idempotency-Key");

    // The repeat survives a restart on the same store.
    gw.stop().await.unwrap();
    let gw = start(&store, LONG).await;
    let (code, repeat) = post(&gw, &shared, Some("run-key-1")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{repeat}");
    assert_eq!(repeat["strategy_id"], original["strategy_id"]);
    assert_eq!(repeat["queue_map"], original["queue_map"]);

    // Once its strategy has ended, the key is gone for good: 410.
    let id = id_of(&original);
    let client = reqwest::Client::new();
    let (code, _) = send(client.delete(url(&gw, &format!("/strategies/{id}")))).await;
    assert_eq!(code, StatusCode::OK);
    let (code, body) = post(&gw, &shared, Some("run-key-1")).await;
    assert_eq!(code, StatusCode::GONE, "{body}");
    assert!(body["detail"].as_str().unwrap().contains(&id), "{body}");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_repeated_key_gets_the_original_registration_sqlite() {
    a_repeated_key_gets_the_original_registration(sqlite("repeat")).await;
}

#[tokio::test]
async fn a_repeated_key_gets_the_original_registration_postgres() {
    a_repeated_key_gets_the_original_registration(fresh_postgres("gw_lease_repeat")).await;
}

async fn a_key_resent_with_another_run_type_or_meta_is_422_naming_what_differs(store: StoreSpec) {
    let gw = start(&store, LONG).await;
    let dag = over_bars("mine");
    let sent = |run_type: &str, meta: Value| registration(&dag, run_type, meta);
    let original = sent("dry-run", json!({ "sdk": "test", "run": 1 }));
    let (code, first) = post_body(&gw, &original, Some("whole-key")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{first}");

    // The same content is a repeat, whatever the order of meta's keys.
    let reordered = sent("dry-run", json!({ "run": 1, "sdk": "test" }));
    let (code, repeat) = post_body(&gw, &reordered, Some("whole-key")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{repeat}");
    assert_eq!(repeat["strategy_id"], first["strategy_id"]);

    // Another run type or meta under the same key is another registration.
    let cases = [
        (sent("live", json!({ "sdk": "test", "run": 1 })), "run_type"),
        (sent("dry-run", json!({ "sdk": "test", "run": 2 })), "meta"),
        (sent("dry-run", json!({ "sdk": "test" })), "meta"),
        (sent("dry-run", Value::Null), "meta"),
    ];
    for (body, differs) in cases {
        let (code, answer) = post_body(&gw, &body, Some("whole-key")).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(answer["field"], "Idempotency-Key");
        let detail = answer["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("different {differs};")),
            "{detail}"
        );
    }

    // The original is untouched: still active, and its repeat still the same 202.
    assert_eq!(status_of(&gw, &id_of(&first)).await, "active");
    let (code, repeat) = post_body(&gw, &original, Some("whole-key")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{repeat}");
    assert_eq!(repeat["strategy_id"], first["strategy_id"]);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_key_resent_with_another_run_type_or_meta_is_422_naming_what_differs_sqlite() {
    let store = sqlite("whole");
    a_key_resent_with_another_run_type_or_meta_is_422_naming_what_differs(store).await;
}

#[tokio::test]
async fn a_key_resent_with_another_run_type_or_meta_is_422_naming_what_differs_postgres() {
    let store = fresh_postgres("gw_lease_whole");
    a_key_resent_with_another_run_type_or_meta_is_422_naming_what_differs(store).await;
}

/// Asserts `detail` repeats `sent` only as its first 80 characters and `…`.
#[track_caller]
fn assert_echo_capped(detail: &Value, sent: &str) {
    let detail = detail
        .as_str()
        .unwrap_or_else(|| panic!("no detail: {detail}"));
    let shown: String = sent.chars().take(80).collect();
    assert!(detail.contains(&format!("{shown}…")), "{detail}");
    let more: String = sent.chars().take(81).collect();
    assert!(!detail.contains(&more), "{detail}");
    assert!(
        detail.chars().count() <= 500,
        "{} chars",
        detail.chars().count()
    );
}

#[tokio::test]
async fn error_answers_repeat_at_most_80_characters_of_an_id_or_value_sent() {
    let gw = start(&StoreSpec::SqliteMemory, LONG).await;
    let client = reqwest::Client::new();
    let huge = "a".repeat(10_000);

    // An unknown strategy id, on every route that takes one.
    let path = format!("/strategies/{huge}");
    let requests = [
        client.post(url(&gw, &format!("{path}/heartbeat"))),
        client.get(url(&gw, &format!("{path}/status"))),
        client.get(url(&gw, &path)),
        client.delete(url(&gw, &path)),
    ];
    for request in requests {
        let (code, body) = send(request).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
        assert_echo_capped(&body["detail"], &huge);
    }

    // Query values.
    for query in [
        format!("/queues/by_tag?tags=fx&interval=60&match={huge}"),
        format!("/queues/by_tag?tags=fx&interval={huge}"),
    ] {
        let (code, body) = get(&gw, &query).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_echo_capped(&body["detail"], &huge);
    }

    // A value in the registration, and a reused key.
    let body = json!({ "dag_json": over_bars("x"), "meta": null, "run_type": huge });
    let (code, answer) = post_body(&gw, &body, None).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["field"], "run_type");
    assert_echo_capped(&answer["detail"], &huge);
    let key = "k".repeat(128);
    let (code, answer) = post(&gw, &over_bars("x"), Some(&key)).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{answer}");
    let (code, answer) = post(&gw, &over_bars("y"), Some(&key)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_echo_capped(&answer["detail"], &key);
    gw.stop().await.unwrap();
}

async fn heartbeats_hold_a_lease_and_a_lapsed_one_ends_the_strategy(store: StoreSpec) {
    let lease = Duration::from_secs(3);
    let gw = start(&store, lease).await;
    let (mine, other) = (over_bars("mine"), over_bars("other"));
    let (code, body) = post(&gw, &mine, None).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["lease_secs"], json!(3.0));
    let id = id_of(&body);

    // Renewed after 2 s, it is still active 2 s later, past its first lease.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, body) = heartbeat(&gw, &id).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "active");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status_of(&gw, &id).await, "active");

    // Without heartbeats it lapses: ended, and a late heartbeat does not revive it.
    tokio::time::sleep(lease + Duration::from_millis(500)).await;
    assert_eq!(status_of(&gw, &id).await, "ended");
    let metrics = metrics(&gw).await;
    assert!(
        metrics.contains("gateway_leases_expired_total 1"),
        "{metrics}"
    );
    let (code, body) = heartbeat(&gw, &id).await;
    assert_eq!(code, StatusCode::GONE, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("lease"), "{body}");
    let (code, body) = heartbeat(&gw, "no-such-strategy").await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");

    // Its nodes are no longer offered, and the same DAG registers again.
    let (code, body) = post(&gw, &other, None).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        body["queue_map"],
        json!({}),
        "a lapsed strategy's stream was shared"
    );
    let (code, body) = post(&gw, &mine, None).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_ne!(id_of(&body), id);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn heartbeats_hold_a_lease_and_a_lapsed_one_ends_the_strategy_sqlite() {
    heartbeats_hold_a_lease_and_a_lapsed_one_ends_the_strategy(sqlite("lapse")).await;
}

#[tokio::test]
async fn heartbeats_hold_a_lease_and_a_lapsed_one_ends_the_strategy_postgres() {
    let store = fresh_postgres("gw_lease_lapse");
    heartbeats_hold_a_lease_and_a_lapsed_one_ends_the_strategy(store).await;
}

async fn a_lease_that_lapsed_while_the_gateway_was_down_is_ended(store: StoreSpec) {
    let lease = Duration::from_millis(700);
    let gw = start(&store, lease).await;
    let (code, body) = post(&gw, &over_bars("mine"), None).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let id = id_of(&body);
    gw.stop().await.unwrap();
    tokio::time::sleep(lease * 2).await;

    // Restarted with a long lease: the stored expiry still counts.
    let gw = start(&store, LONG).await;
    let (code, body) = get(&gw, "/queues/by_tag?tags=fx&interval=3600").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        body["queues"],
        json!([]),
        "a lapsed strategy matched a tag query"
    );
    let (code, body) = post(&gw, &tag_query(), None).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let query_id = body["queue_map"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .cloned();
    let queues = &body["queue_map"][query_id.unwrap()];
    assert_eq!(queues, &json!([]), "{body}");
    assert_eq!(status_of(&gw, &id).await, "ended");
    let (code, body) = get(&gw, "/status").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        body["strategies_active"], 1,
        "only the tag query is active: {body}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_lease_that_lapsed_while_the_gateway_was_down_is_ended_sqlite() {
    a_lease_that_lapsed_while_the_gateway_was_down_is_ended(sqlite("down")).await;
}

#[tokio::test]
async fn a_lease_that_lapsed_while_the_gateway_was_down_is_ended_postgres() {
    let store = fresh_postgres("gw_lease_down");
    a_lease_that_lapsed_while_the_gateway_was_down_is_ended(store).await;
}

async fn delete_by_key_ends_what_the_key_registered(store: StoreSpec) {
    let gw = start(&store, LONG).await;
    let dag = over_bars("mine");
    let (code, body) = post(&gw, &dag, Some("abandoned-run")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let id = id_of(&body);
    let client = reqwest::Client::new();

    let path = "/strategies?idempotency_key=abandoned-run";
    let (code, body) = send(client.delete(url(&gw, path))).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["strategy_id"], id.as_str());
    assert_eq!(status_of(&gw, &id).await, "ended");
    let (code, _) = send(client.delete(url(&gw, path))).await;
    assert_eq!(code, StatusCode::OK, "ending twice is not an error");
    let (code, body) = post(&gw, &dag, None).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");

    let unknown = "/strategies?idempotency_key=never-sent";
    let (code, body) = send(client.delete(url(&gw, unknown))).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    let (code, body) = send(client.delete(url(&gw, "/strategies"))).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "idempotency_key");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn delete_by_key_ends_what_the_key_registered_sqlite() {
    delete_by_key_ends_what_the_key_registered(sqlite("by-key")).await;
}

#[tokio::test]
async fn delete_by_key_ends_what_the_key_registered_postgres() {
    delete_by_key_ends_what_the_key_registered(fresh_postgres("gw_lease_by_key")).await;
}

#[tokio::test]
async fn an_idempotency_key_that_is_empty_long_or_not_visible_ascii_is_422() {
    let gw = start(&StoreSpec::SqliteMemory, LONG).await;
    let long = "k".repeat(129);
    for key in ["", "has space", long.as_str(), "caf\u{e9}"] {
        let body = json!({ "dag_json": over_bars("x"), "meta": null, "run_type": "live" });
        let request = reqwest::Client::new()
            .post(url(&gw, "/strategies"))
            .header("Idempotency-Key", key.as_bytes())
            .json(&body);
        let (code, body) = send(request).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{key:?}: {body}");
        assert_eq!(body["field"], "Idempotency-Key");
    }
    let (code, body) = post(&gw, &over_bars("x"), Some(&"k".repeat(128))).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    gw.stop().await.unwrap();
}

async fn concurrent_resends_of_one_registration_get_one_strategy(store: StoreSpec) {
    let gw = start(&store, LONG).await;
    let dag = over_bars("raced");
    let mut racing = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let request = reqwest::Client::new()
            .post(url(&gw, "/strategies"))
            .header("Idempotency-Key", "racing-run")
            .json(&json!({ "dag_json": dag, "meta": null, "run_type": "dry-run" }));
        racing.spawn(send(request));
    }
    let answers = racing.join_all().await;
    let first = answers[0].1["strategy_id"].clone();
    for (code, body) in &answers {
        assert_eq!(*code, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["strategy_id"], first, "{body}");
    }
    let (_, health) = get(&gw, "/status").await;
    assert_eq!(health["strategies_active"], 1, "{health}");
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resends_of_one_registration_get_one_strategy_sqlite() {
    concurrent_resends_of_one_registration_get_one_strategy(sqlite("race")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resends_of_one_registration_get_one_strategy_postgres() {
    let store = fresh_postgres("gw_lease_race");
    concurrent_resends_of_one_registration_get_one_strategy(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_heartbeat_holds_its_lease_and_a_lapsed_one_is_reported() {
    use qmtl::gateway_client::{GatewayClient, GatewayError, RunType};

    // Heartbeats come every third of the lease but at most once a second: a lease of
    // 3 s is the shortest renewed every third.
    let lease = Duration::from_secs(3);
    let gw = start(&StoreSpec::SqliteMemory, lease).await;
    let client = GatewayClient::new(&format!("http://{}", gw.local_addr())).unwrap();
    let mut b = DagBuilder::new();
    let s = b.stream_input(
        StreamInput::new("bars")
            .interval("1h")
            .period(2)
            .fields(["close"]),
    );
    let dag = b.finish(&s.unwrap());
    let registration = client.register(&dag, RunType::DryRun).await.unwrap();
    assert_eq!(registration.lease, Some(lease));
    let id = registration.strategy_id.clone();

    // Renewed every second, it outlives its lease twice over.
    let heartbeat = client.keep_alive(&registration);
    tokio::time::sleep(lease * 2).await;
    assert_eq!(status_of(&gw, &id).await, "active");
    client.heartbeat(&id).await.expect("an active lease renews");

    // Without it, the lease lapses and the next heartbeat says so.
    drop(heartbeat);
    tokio::time::sleep(lease + Duration::from_millis(500)).await;
    assert_eq!(status_of(&gw, &id).await, "ended");
    let err = client.heartbeat(&id).await.unwrap_err();
    assert!(matches!(err, GatewayError::LeaseLost { .. }), "{err}");
    assert!(err.to_string().contains(&id), "{err}");
    let again = client.register(&dag, RunType::DryRun).await.unwrap();
    assert_ne!(again.strategy_id, id);
    gw.stop().await.unwrap();
}

/// The tables as the first gateway version created them, with one active strategy.
const OLD_SCHEMA: &str = "
CREATE TABLE gateway_strategies (
    strategy_id TEXT PRIMARY KEY, dag_hash TEXT NOT NULL, dag_json TEXT NOT NULL,
    meta TEXT, run_type TEXT NOT NULL, status TEXT NOT NULL, queue_map TEXT NOT NULL,
    created_at BIGINT NOT NULL, ended_at BIGINT
);
CREATE UNIQUE INDEX gateway_strategies_active_dag
    ON gateway_strategies (dag_hash) WHERE status = 'active';
CREATE TABLE gateway_nodes (
    strategy_id TEXT NOT NULL REFERENCES gateway_strategies (strategy_id),
    ord BIGINT NOT NULL, node_id TEXT NOT NULL, node_type TEXT NOT NULL,
    name TEXT NOT NULL, interval_s BIGINT NOT NULL, tags TEXT NOT NULL,
    PRIMARY KEY (strategy_id, ord)
);
INSERT INTO gateway_strategies VALUES
    ('old-one', 'h', '{}', NULL, 'live', 'active', '{\"q\":\"q\"}', 1, NULL);
";

async fn an_older_gateways_tables_are_upgraded_in_place(store: StoreSpec) {
    let gw = start(&store, LONG).await;
    let (code, body) = get(&gw, "/strategies/old-one").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        body["status"], "active",
        "an old strategy has no lease: {body}"
    );
    assert_eq!(body["queue_map"], json!({"q": "q"}));
    let (code, body) = post(&gw, &over_bars("new"), Some("k1")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let (code, again) = post(&gw, &over_bars("new"), Some("k1")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["strategy_id"], body["strategy_id"]);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn an_older_gateways_sqlite_tables_are_upgraded_in_place() {
    let store = sqlite("old");
    let StoreSpec::Sqlite(path) = &store else {
        unreachable!()
    };
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(OLD_SCHEMA).unwrap();
    drop(conn);
    an_older_gateways_tables_are_upgraded_in_place(store).await;
}

#[tokio::test]
async fn an_older_gateways_postgres_tables_are_upgraded_in_place() {
    let store = fresh_postgres("gw_lease_old");
    let StoreSpec::Postgres(dsn) = &store else {
        unreachable!()
    };
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    client.batch_execute(OLD_SCHEMA).await.unwrap();
    drop(client);
    let _ = connection.await;
    an_older_gateways_tables_are_upgraded_in_place(store).await;
}

//! The gateway over real sockets on 127.0.0.1: every answer of the API, queue maps for
//! shared nodes and tag queries, ending strategies, durability across a restart with a
//! SQLite file, verbatim storage of hostile names, a 10,000-node DAG, and a DAG of the
//! most nodes allowed under the default body limit.

mod support;

use std::time::Instant;

use base64::Engine as _;
use qmtl::dag::DagJson;
use qmtl::row::Row;
use qmtl::{DagBuilder, Node, StreamInput, TagMatch, TagQueryNode};
use qmtl_gateway::{Gateway, GatewayConfig, StoreSpec, Token};
use reqwest::StatusCode;
use serde_json::{json, Value};

use support::{chain, get, node_id, send, start, start_with, tag_query, temp_db, url};

fn bars() -> StreamInput {
    StreamInput::new("bars")
        .interval("1h")
        .period(20)
        .fields(["close"])
        .tags(["ohlcv", "eurusd"])
}

/// `bars -> <name>` with a compute identity of `<name>@1`.
fn strategy_over_bars(name: &str) -> DagJson {
    let mut b = DagBuilder::new();
    let s = b.stream_input(bars()).unwrap();
    let n = b
        .node(
            Node::new(name)
                .input(&s)
                .period(3)
                .fields(["v"])
                .compute(format!("{name}@1"), |_| Some(Row::one(0.0))),
        )
        .unwrap();
    b.finish(&n).to_json()
}

fn b64(dag: &DagJson) -> String {
    base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(dag).unwrap())
}

fn payload(dag: &DagJson, run_type: &str) -> Value {
    json!({ "dag_json": b64(dag), "meta": null, "run_type": run_type })
}

async fn post(gw: &Gateway, body: &Value) -> (StatusCode, Value) {
    send(
        reqwest::Client::new()
            .post(url(gw, "/strategies"))
            .json(body),
    )
    .await
}

async fn register(gw: &Gateway, dag: &DagJson) -> (String, Value) {
    let (status, body) = post(gw, &payload(dag, "dry-run")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    (
        body["strategy_id"].as_str().unwrap().to_owned(),
        body["queue_map"].clone(),
    )
}

#[tokio::test]
async fn registration_is_accepted_then_the_same_dag_conflicts() {
    let gw = start(&StoreSpec::SqliteMemory).await;
    let dag = strategy_over_bars("sma");

    let (id, queue_map) = register(&gw, &dag).await;
    assert_eq!(queue_map, json!({}), "nobody else computes anything yet");
    assert_eq!(
        get(&gw, &format!("/strategies/{id}/status")).await,
        (StatusCode::OK, json!({ "status": "active" }))
    );

    // The same DAG again, sent as a raw JSON object this time: same canonical hash.
    let raw = json!({ "dag_json": dag, "meta": {"owner": "a"}, "run_type": "live" });
    let (status, body) = post(&gw, &raw).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["strategy_id"], id.as_str());
    assert!(body["detail"].as_str().unwrap().contains(&id), "{body}");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_second_strategy_sharing_a_node_gets_its_queue() {
    let gw = start(&StoreSpec::SqliteMemory).await;
    let first = strategy_over_bars("sma");
    let second = strategy_over_bars("ema");
    register(&gw, &first).await;

    let (_, queue_map) = register(&gw, &second).await;
    let bars_id = node_id(&second, "bars");
    assert_eq!(bars_id, node_id(&first, "bars"));
    assert_eq!(
        queue_map,
        json!({ bars_id.clone(): bars_id }),
        "only the shared stream, named by its node id"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_tag_query_node_gets_the_queues_whose_tags_and_interval_match() {
    let gw = start(&StoreSpec::SqliteMemory).await;
    let producer = strategy_over_bars("sma");
    register(&gw, &producer).await;
    let bars_id = node_id(&producer, "bars");

    let cases: &[(&[&str], TagMatch, Value)] = &[
        (&["ohlcv"], TagMatch::Any, json!([bars_id])),
        (&["ohlcv", "gbpusd"], TagMatch::Any, json!([bars_id])),
        (&["ohlcv", "gbpusd"], TagMatch::All, json!([])),
        (&["eurusd", "ohlcv"], TagMatch::All, json!([bars_id])),
        (&["none"], TagMatch::Any, json!([])),
    ];
    for (tags, mode, want) in cases {
        let dag = tag_query(tags, *mode);
        let (id, queue_map) = register(&gw, &dag).await;
        let q = node_id(&dag, "basket");
        assert_eq!(queue_map, json!({ q: want }), "{tags:?} {mode:?}");
        let r = reqwest::Client::new()
            .delete(url(&gw, &format!("/strategies/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    // A different interval matches nothing.
    let mut b = DagBuilder::new();
    let q = b
        .tag_query(
            TagQueryNode::new("basket")
                .query_tags(["ohlcv"])
                .interval("1m")
                .fields(["v"])
                .compute("basket@1", |_| None),
        )
        .unwrap();
    let dag = b.finish(&q).to_json();
    let (_, queue_map) = register(&gw, &dag).await;
    assert_eq!(queue_map, json!({ node_id(&dag, "basket"): [] }));
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn queues_by_tag_answers_and_checks_its_parameters() {
    let gw = start(&StoreSpec::SqliteMemory).await;
    let dag = strategy_over_bars("sma");
    register(&gw, &dag).await;
    let bars_id = node_id(&dag, "bars");

    let ok = [
        ("/queues/by_tag?tags=ohlcv&interval=3600", json!([bars_id])),
        ("/queues/by_tag?tags=ohlcv,x&interval=1h", json!([bars_id])),
        (
            "/queues/by_tag?tags=ohlcv,x&interval=3600&match=all",
            json!([]),
        ),
        (
            "/queues/by_tag?tags=ohlcv,eurusd&interval=3600&match=all",
            json!([bars_id]),
        ),
        ("/queues/by_tag?tags=ohlcv&interval=60", json!([])),
    ];
    for (path, want) in ok {
        assert_eq!(
            get(&gw, path).await,
            (StatusCode::OK, json!({ "queues": want })),
            "{path}"
        );
    }
    let bad = [
        ("/queues/by_tag?interval=60", "tags"),
        ("/queues/by_tag?tags=a", "interval"),
        ("/queues/by_tag?tags=a&interval=0", "interval"),
        ("/queues/by_tag?tags=a&interval=-5", "interval"),
        ("/queues/by_tag?tags=a&interval=60&match=some", "match"),
    ];
    for (path, field) in bad {
        let (status, body) = get(&gw, path).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        assert_eq!(body["field"], field, "{path}: {body}");
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn delete_ends_a_strategy_and_its_nodes_are_no_longer_offered() {
    let gw = start(&StoreSpec::SqliteMemory).await;
    let client = reqwest::Client::new();
    let first = strategy_over_bars("sma");
    let (id, _) = register(&gw, &first).await;

    let r = client
        .delete(url(&gw, &format!("/strategies/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "strategy_id": id, "status": "ended" })
    );
    assert_eq!(
        get(&gw, &format!("/strategies/{id}/status")).await,
        (StatusCode::OK, json!({ "status": "ended" }))
    );

    // Its stream is no longer offered, by queue map or by tag.
    let (_, queue_map) = register(&gw, &strategy_over_bars("ema")).await;
    assert_eq!(queue_map, json!({}));
    let (_, body) = get(&gw, "/queues/by_tag?tags=ohlcv&interval=3600").await;
    let ema_bars = node_id(&first, "bars");
    assert_eq!(
        body,
        json!({ "queues": [ema_bars] }),
        "only the new strategy's"
    );

    // The ended DAG may register again; unknown ids are 404.
    register(&gw, &first).await;
    let r = client
        .delete(url(&gw, "/strategies/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_strategies_and_routes_are_404() {
    let gw = start(&StoreSpec::SqliteMemory).await;
    for path in ["/strategies/abc/status", "/strategies/abc", "/nothing"] {
        let (status, body) = get(&gw, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(body["detail"].is_string(), "{path}: {body}");
    }
    gw.stop().await.unwrap();
}

/// The momentum-like DAG as a JSON value, for hand-made bad variants.
fn dag_value() -> Value {
    serde_json::to_value(strategy_over_bars("sma")).unwrap()
}

fn with_dag(dag: Value) -> Value {
    json!({ "dag_json": dag, "meta": null, "run_type": "backtest" })
}

#[tokio::test]
async fn bad_payloads_get_422_naming_the_field() {
    let gw = start(&StoreSpec::SqliteMemory).await;
    let dag = dag_value();
    let bars_id = dag["nodes"][0]["node_id"].clone();
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut d = dag.clone();
        f(&mut d);
        with_dag(d)
    };
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "bad base64",
            json!({"dag_json": "!!not base64!!", "run_type": "live"}),
            "dag_json",
        ),
        (
            "base64 of non-JSON",
            json!({"dag_json": "aGVsbG8=", "run_type": "live"}),
            "dag_json",
        ),
        (
            "raw JSON string that does not parse",
            json!({"dag_json": "{\"nodes\": [", "run_type": "live"}),
            "dag_json",
        ),
        (
            "missing dag_json",
            json!({"meta": null, "run_type": "live"}),
            "dag_json",
        ),
        (
            "dag_json a number",
            json!({"dag_json": 5, "run_type": "live"}),
            "dag_json",
        ),
        (
            "no nodes",
            with_dag(json!({"nodes": [], "target": ""})),
            "dag_json.nodes",
        ),
        (
            "nodes missing",
            with_dag(json!({"target": ""})),
            "dag_json.nodes",
        ),
        (
            "unknown run_type",
            json!({"dag_json": dag, "run_type": "paper"}),
            "run_type",
        ),
        ("missing run_type", json!({"dag_json": dag}), "run_type"),
        (
            "meta not an object",
            json!({"dag_json": dag, "meta": [1], "run_type": "live"}),
            "meta",
        ),
        (
            "zero interval",
            edit(&|d| d["nodes"][0]["interval"] = json!(0)),
            "dag_json.nodes[0].interval",
        ),
        (
            "negative interval",
            edit(&|d| d["nodes"][1]["interval"] = json!(-60)),
            "dag_json.nodes[1].interval",
        ),
        (
            "zero period",
            edit(&|d| d["nodes"][1]["period"] = json!(0)),
            "dag_json.nodes[1].period",
        ),
        (
            "negative period",
            edit(&|d| d["nodes"][0]["period"] = json!(-1)),
            "dag_json.nodes[0].period",
        ),
        (
            "unknown input",
            edit(&|d| d["nodes"][1]["inputs"][0] = json!("ab".repeat(32))),
            "dag_json.nodes[1].inputs[0]",
        ),
        (
            "cycle",
            edit(&|d| {
                let sma = d["nodes"][1]["node_id"].clone();
                d["nodes"][0]["inputs"] = json!([sma]);
            }),
            "dag_json.nodes[0].inputs",
        ),
        (
            "self input",
            edit(&|d| d["nodes"][0]["inputs"] = json!([bars_id])),
            "dag_json.nodes[0].inputs",
        ),
        (
            "node id that its description does not give",
            edit(&|d| d["nodes"][0]["name"] = json!("renamed")),
            "dag_json.nodes[0].node_id",
        ),
        (
            "node type unknown",
            edit(&|d| d["nodes"][0]["node_type"] = json!("Bogus")),
            "dag_json.nodes[0]",
        ),
        (
            "node without period",
            edit(&|d| {
                d["nodes"][1].as_object_mut().unwrap().remove("period");
            }),
            "dag_json.nodes[1]",
        ),
        (
            "unknown target",
            edit(&|d| d["target"] = json!("cd".repeat(32))),
            "dag_json.target",
        ),
        (
            "duplicate node",
            edit(&|d| {
                let n = d["nodes"][0].clone();
                d["nodes"].as_array_mut().unwrap().push(n);
            }),
            "dag_json.nodes[2].node_id",
        ),
    ];
    for (what, body, field) in cases {
        let (status, answer) = post(&gw, &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {answer}");
        assert_eq!(answer["field"], field, "{what}: {answer}");
        let detail = answer["detail"].as_str().unwrap();
        assert!(detail.contains(field), "{what}: {detail}");
    }

    // Deep nesting, in the body and inside dag_json, is a 422, not a stack overflow.
    let client = reqwest::Client::new();
    let deep_body = format!("{{\"dag_json\": {deep}, \"run_type\": \"live\"}}");
    let inner = json!({ "dag_json": format!("{{\"nodes\": {deep}}}"), "run_type": "live" });
    for (body, field) in [(deep_body, "body"), (inner.to_string(), "dag_json")] {
        let r = client
            .post(url(&gw, "/strategies"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.json::<Value>().await.unwrap()["field"], field);
    }

    // Nothing was half-registered.
    let (_, health) = get(&gw, "/status").await;
    assert_eq!(health["strategies_active"], 0, "{health}");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn accepted_dag_encodings() {
    let gw = start(&StoreSpec::SqliteMemory).await;
    let text = serde_json::to_string_pretty(&strategy_over_bars("a")).unwrap();
    let wrapped = base64::engine::general_purpose::STANDARD
        .encode(&text)
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let bodies = [
        json!({"dag_json": b64(&strategy_over_bars("b")), "run_type": "backtest"}),
        json!({"dag_json": text, "meta": {"k": 1}, "run_type": "dry-run"}),
        json!({"dag_json": strategy_over_bars("c"), "run_type": "live"}),
        json!({"dag_json": wrapped.replace('=', ""), "run_type": "live"}),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let (status, answer) = post(&gw, body).await;
        let want = if i == 3 {
            StatusCode::CONFLICT // the same DAG as the pretty-printed one
        } else {
            StatusCode::ACCEPTED
        };
        assert_eq!(status, want, "body {i}: {answer}");
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_body_that_is_not_utf8_gets_400() {
    let gw = start(&StoreSpec::SqliteMemory).await;
    let r = reqwest::Client::new()
        .post(url(&gw, "/strategies"))
        .header("content-type", "application/json")
        .body(vec![b'{', 0xff, 0xfe, b'}'])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "body");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_body_above_the_limit_gets_413() {
    // The default limit, then a configured one.
    for (limit, gw) in [
        (
            qmtl_gateway::DEFAULT_MAX_BODY_BYTES,
            start(&StoreSpec::SqliteMemory).await,
        ),
        (
            4096,
            start_with(GatewayConfig::new(StoreSpec::SqliteMemory).body_limit(4096)).await,
        ),
    ] {
        let body = json!({ "dag_json": "A".repeat(limit + 1), "run_type": "live" });
        let r = reqwest::Client::new()
            .post(url(&gw, "/strategies"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "limit {limit}");
        let answer: Value = r.json().await.unwrap();
        assert!(
            answer["detail"]
                .as_str()
                .unwrap()
                .contains(&limit.to_string()),
            "{answer}"
        );
        gw.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    let config = GatewayConfig::new(StoreSpec::SqliteMemory).token(Token::new("s3cret-token"));
    let gw = start_with(config).await;
    let client = reqwest::Client::new();
    let cases = [
        (None, StatusCode::UNAUTHORIZED),
        (Some("Bearer wrong"), StatusCode::UNAUTHORIZED),
        (Some("Bearer s3cret-tokenX"), StatusCode::UNAUTHORIZED),
        (Some("Basic s3cret-token"), StatusCode::UNAUTHORIZED),
        (Some("Bearer s3cret-token"), StatusCode::OK),
    ];
    for path in ["/status", "/metrics", "/strategies/x/status"] {
        for (header, want) in cases {
            let mut req = client.get(url(&gw, path));
            if let Some(h) = header {
                req = req.header("authorization", h);
            }
            let r = req.send().await.unwrap();
            let want = if path.ends_with("x/status") && want == StatusCode::OK {
                StatusCode::NOT_FOUND
            } else {
                want
            };
            assert_eq!(r.status(), want, "{path} {header:?}");
            if want == StatusCode::UNAUTHORIZED {
                assert_eq!(r.headers()["www-authenticate"], "Bearer");
                assert!(!r.text().await.unwrap().contains("s3cret"));
            }
        }
    }
    let r = client
        .post(url(&gw, "/strategies"))
        .json(&payload(&strategy_over_bars("sma"), "live"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client
        .post(url(&gw, "/strategies"))
        .bearer_auth("s3cret-token")
        .json(&payload(&strategy_over_bars("sma"), "live"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    // The metrics count the refusals and never show the token.
    let metrics = client
        .get(url(&gw, "/metrics"))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("status=\"401\""), "{metrics}");
    assert!(!metrics.contains("s3cret"));
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn status_and_metrics_report_the_gateway_and_its_store() {
    let gw = start(&StoreSpec::SqliteMemory).await;
    register(&gw, &strategy_over_bars("sma")).await;
    let (status, health) = get(&gw, "/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["store"], json!({ "kind": "sqlite", "ok": true }));
    assert_eq!(health["strategies_active"], 1);

    let r = reqwest::get(url(&gw, "/metrics")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    for line in [
        "gateway_strategies_active 1",
        "gateway_store_up 1",
        "gateway_strategies_registered_total{run_type=\"dry-run\"} 1",
        "gateway_http_requests_total{route=\"/strategies\",method=\"POST\",status=\"202\"} 1",
        "gateway_http_requests_total{route=\"/status\",method=\"GET\",status=\"200\"} 1",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_restart_on_the_same_sqlite_file_keeps_strategies_and_queue_maps() {
    let path = temp_db("restart");
    let spec = StoreSpec::Sqlite(path.clone());
    let first = strategy_over_bars("sma");
    let tagq = tag_query(&["ohlcv"], TagMatch::Any);

    // Register a producer and a tag query, then stop.
    let gw = start(&spec).await;
    let (producer, _) = register(&gw, &first).await;
    let (consumer, tag_map) = register(&gw, &tagq).await;
    assert_eq!(
        tag_map,
        json!({ node_id(&tagq, "basket"): [node_id(&first, "bars")] })
    );
    gw.stop().await.unwrap();

    // Start again on the same file: both are still there, with their queue maps.
    let gw = start(&spec).await;
    assert_eq!(
        get(&gw, &format!("/strategies/{producer}/status")).await,
        (StatusCode::OK, json!({ "status": "active" }))
    );
    let (_, record) = get(&gw, &format!("/strategies/{consumer}")).await;
    assert_eq!(record["queue_map"], tag_map);
    assert_eq!(record["run_type"], "dry-run");

    // And the producer's nodes are still offered; its DAG still conflicts.
    let (_, queue_map) = register(&gw, &strategy_over_bars("ema")).await;
    let bars_id = node_id(&first, "bars");
    assert_eq!(queue_map, json!({ bars_id.clone(): bars_id }));
    let (status, _) = post(&gw, &payload(&first, "live")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    gw.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn names_and_tags_with_quotes_and_sql_are_stored_verbatim() {
    let path = temp_db("verbatim");
    let gw = start(&StoreSpec::Sqlite(path.clone())).await;
    let name = "x'); DROP TABLE gateway_strategies; -- \"quoted\" \\ back";
    let tag = "t' OR '1'='1";
    let mut b = DagBuilder::new();
    let s = b
        .stream_input(
            StreamInput::new(name)
                .interval(60)
                .fields(["close"])
                .tags([tag, "plain"]),
        )
        .unwrap();
    let dag = b.finish(&s).to_json();
    let text = serde_json::to_string(&dag).unwrap();
    let body = json!({ "dag_json": text, "meta": {"note": "'; DELETE FROM x; --"},
                       "run_type": "live" });
    let (status, answer) = post(&gw, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let strategy_id = answer["strategy_id"].as_str().unwrap().to_owned();

    // The hostile tag finds the stream through the query string.
    let r = reqwest::Client::new()
        .get(url(&gw, "/queues/by_tag"))
        .query(&[("tags", tag), ("interval", "60")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "queues": [dag.nodes[0].node_id] })
    );
    gw.stop().await.unwrap();

    // The file holds the text exactly as sent, and the tables are all there.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (stored_dag, meta): (String, String) = conn
        .query_row(
            "SELECT dag_json, meta FROM gateway_strategies WHERE strategy_id = ?1",
            [&strategy_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(stored_dag, text);
    assert_eq!(meta, r#"{"note":"'; DELETE FROM x; --"}"#);
    let (stored_name, tags): (String, String) = conn
        .query_row("SELECT name, tags FROM gateway_nodes", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(stored_name, name);
    assert_eq!(
        serde_json::from_str::<Vec<String>>(&tags).unwrap(),
        dag.nodes[0].tags
    );
    drop(conn);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn a_ten_thousand_node_dag_is_accepted() {
    let gw = start(&StoreSpec::SqliteMemory).await;

    // A stream and a chain of 9,999 nodes: deep enough to break any recursive check.
    let dag = chain(bars(), 10_000);
    assert_eq!(dag.nodes.len(), 10_000);
    let body = payload(&dag, "backtest");
    assert!(body.to_string().len() < qmtl_gateway::DEFAULT_MAX_BODY_BYTES);

    let started = Instant::now();
    let (status, answer) = post(&gw, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());

    // A second strategy with the same stream gets it from the big one.
    let (_, queue_map) = register(&gw, &strategy_over_bars("sma")).await;
    assert_eq!(queue_map.as_object().unwrap().len(), 1);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn an_unknown_field_or_a_reordering_does_not_dodge_the_duplicate_check() {
    let gw = start(&StoreSpec::SqliteMemory).await;
    let dag = dag_value();
    let (status, first) = post(&gw, &with_dag(dag.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let id = first["strategy_id"].as_str().unwrap();

    // Each variant is the same DAG as far as the gateway understands it.
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut d = dag.clone();
        f(&mut d);
        with_dag(d)
    };
    let variants: Vec<(&str, Value)> = vec![
        (
            "unknown field in a node",
            edit(&|d| d["nodes"][0]["extra"] = json!({})),
        ),
        (
            "unknown field in the document",
            edit(&|d| d["comment"] = json!("again")),
        ),
        (
            "nodes in another order",
            edit(&|d| d["nodes"].as_array_mut().unwrap().reverse()),
        ),
        (
            "tags in another order",
            edit(&|d| d["nodes"][0]["tags"] = json!(["ohlcv", "eurusd"])),
        ),
        (
            "the default match mode spelled out on a plain node",
            edit(&|d| d["nodes"][0]["match_mode"] = json!("any")),
        ),
    ];
    for (what, body) in variants {
        let (status, answer) = post(&gw, &body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{what}: {answer}");
        assert_eq!(answer["strategy_id"], id, "{what}");
    }

    // A tag query's match mode is part of the DAG: absent is "any", "all" differs.
    let tagq = serde_json::to_value(tag_query(&["ohlcv"], TagMatch::Any)).unwrap();
    let (status, _) = post(&gw, &with_dag(tagq.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mut absent = tagq.clone();
    absent["nodes"][0]
        .as_object_mut()
        .unwrap()
        .remove("match_mode");
    assert_eq!(post(&gw, &with_dag(absent)).await.0, StatusCode::CONFLICT);
    let mut all = tagq;
    all["nodes"][0]["match_mode"] = json!("all");
    assert_eq!(post(&gw, &with_dag(all)).await.0, StatusCode::ACCEPTED);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_forged_node_id_is_blamed_on_its_node_not_on_the_node_that_reads_it() {
    let gw = start(&StoreSpec::SqliteMemory).await;
    let mut dag = dag_value();
    dag["nodes"][0]["node_id"] = json!("ab".repeat(32));
    let (status, answer) = post(&gw, &with_dag(dag.clone())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["field"], "dag_json.nodes[0].node_id", "{answer}");

    // The same with the reader listed first.
    dag["nodes"].as_array_mut().unwrap().reverse();
    let (status, answer) = post(&gw, &with_dag(dag)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["field"], "dag_json.nodes[1].node_id", "{answer}");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn the_bearer_scheme_is_accepted_in_any_case() {
    let config = GatewayConfig::new(StoreSpec::SqliteMemory).token(Token::new("s3cret-token"));
    let gw = start_with(config).await;
    let client = reqwest::Client::new();
    for (header, want) in [
        ("bearer s3cret-token", StatusCode::OK),
        ("BEARER s3cret-token", StatusCode::OK),
        ("Bearer s3cret-token", StatusCode::OK),
        ("bearer wrong", StatusCode::UNAUTHORIZED),
        ("bearers3cret-token", StatusCode::UNAUTHORIZED),
    ] {
        let r = client
            .get(url(&gw, "/status"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{header}");
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_tag_that_by_tag_queries_cannot_name_is_refused() {
    let gw = start(&StoreSpec::SqliteMemory).await;
    let dag = dag_value();
    for (tags, field) in [
        (json!(["a,b"]), "dag_json.nodes[0].tags[0]"),
        (json!(["ok", "x,"]), "dag_json.nodes[0].tags[1]"),
        (json!([" padded"]), "dag_json.nodes[0].tags[0]"),
        (json!(["padded "]), "dag_json.nodes[0].tags[0]"),
        (json!([""]), "dag_json.nodes[0].tags[0]"),
    ] {
        let mut d = dag.clone();
        d["nodes"][0]["tags"] = tags.clone();
        let (status, answer) = post(&gw, &with_dag(d)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{tags}: {answer}");
        assert_eq!(answer["field"], field, "{tags}: {answer}");
        assert!(
            answer["detail"].as_str().unwrap().contains("comma"),
            "{answer}"
        );
    }
    let (_, health) = get(&gw, "/status").await;
    assert_eq!(health["strategies_active"], 0, "{health}");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_dag_json_that_decodes_to_bytes_that_are_not_utf8_is_blamed_on_dag_json() {
    let gw = start(&StoreSpec::SqliteMemory).await;
    let bytes = base64::engine::general_purpose::STANDARD.encode([b'{', 0xff, 0xfe, b'}']);
    let (status, answer) = post(&gw, &json!({ "dag_json": bytes, "run_type": "live" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["field"], "dag_json", "{answer}");
    assert!(
        answer["detail"].as_str().unwrap().contains("not UTF-8"),
        "{answer}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_dag_of_the_most_nodes_allowed_fits_under_the_default_body_limit() {
    let gw = start(&StoreSpec::SqliteMemory).await;

    // A stream and a chain of MAX_NODES - 1 nodes, sent as base64 (the larger form).
    let stream = StreamInput::new("s").interval(60).fields(["x"]);
    let dag = chain(stream, qmtl_gateway::MAX_NODES);
    assert_eq!(dag.nodes.len(), qmtl_gateway::MAX_NODES);
    let body = payload(&dag, "backtest");
    let size = body.to_string().len();
    assert!(size < qmtl_gateway::DEFAULT_MAX_BODY_BYTES, "{size} bytes");

    let (status, answer) = post(&gw, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    gw.stop().await.unwrap();
}

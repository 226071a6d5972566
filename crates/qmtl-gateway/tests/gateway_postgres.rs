//! The gateway with a PostgreSQL store, against a throwaway server (see
//! `crates/qmtl/tests/support/pg.rs`): strategies and queue maps survive a restart, two
//! gateways sharing one database see each other's strategies and conflicts, hostile
//! names are stored verbatim, the password shows in no answer, and a wrong password is a
//! usage error naming the user.

#[path = "../../qmtl/tests/support/pg.rs"]
mod pg;

use qmtl::dag::DagJson;
use qmtl::{DagBuilder, Node, StreamInput, TagMatch, TagQueryNode};
use qmtl_gateway::{serve, Gateway, GatewayConfig, StoreSpec};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A fresh database named `name` on the test server, as a store spec.
fn fresh_store(name: &str) -> StoreSpec {
    let server = pg::server();
    server.psql(&format!("DROP DATABASE IF EXISTS {name}"));
    server.psql(&format!("CREATE DATABASE {name}"));
    let dsn = server.dsn();
    let base = dsn.rsplit_once('/').unwrap().0;
    StoreSpec::parse(&format!("postgres:{base}/{name}")).unwrap()
}

async fn start(store: &StoreSpec) -> Gateway {
    let config = GatewayConfig::new(store.clone()).listen(([127, 0, 0, 1], 0).into());
    serve(config).await.expect("gateway starts")
}

fn url(gw: &Gateway, path: &str) -> String {
    format!("http://{}{path}", gw.local_addr())
}

fn over_bars(node: &str, bars_name: &str) -> DagJson {
    let mut b = DagBuilder::new();
    let s = b
        .stream_input(
            StreamInput::new(bars_name)
                .interval("1h")
                .period(20)
                .fields(["close"])
                .tags(["ohlcv", "o'brien"]),
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

fn tag_query() -> DagJson {
    let mut b = DagBuilder::new();
    let q = b
        .tag_query(
            TagQueryNode::new("basket")
                .query_tags(["o'brien"])
                .match_mode(TagMatch::All)
                .interval("1h")
                .fields(["v"])
                .compute("basket@1", |_| None),
        )
        .unwrap();
    b.finish(&q).to_json()
}

async fn post(gw: &Gateway, dag: &DagJson) -> (StatusCode, Value) {
    let body = json!({ "dag_json": dag, "meta": null, "run_type": "live" });
    let r = reqwest::Client::new()
        .post(url(gw, "/strategies"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

async fn get(gw: &Gateway, path: &str) -> (StatusCode, Value) {
    let r = reqwest::get(url(gw, path)).await.unwrap();
    (r.status(), r.json().await.unwrap())
}

#[tokio::test]
async fn strategies_and_queue_maps_survive_a_restart() {
    let store = fresh_store("gw_restart");
    let producer = over_bars("sma", "bars");
    let consumer = tag_query();
    let bars_id = producer.nodes[0].node_id.clone();
    let basket_id = consumer.nodes[0].node_id.clone();

    let gw = start(&store).await;
    let (status, first) = post(&gw, &producer).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, second) = post(&gw, &consumer).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
    assert_eq!(
        second["queue_map"],
        json!({ basket_id.clone(): [bars_id.clone()] })
    );
    gw.stop().await.unwrap();

    let gw = start(&store).await;
    let producer_id = first["strategy_id"].as_str().unwrap();
    assert_eq!(
        get(&gw, &format!("/strategies/{producer_id}/status")).await,
        (StatusCode::OK, json!({ "status": "active" }))
    );
    let consumer_id = second["strategy_id"].as_str().unwrap();
    let (_, record) = get(&gw, &format!("/strategies/{consumer_id}")).await;
    assert_eq!(record["queue_map"], second["queue_map"]);
    let (status, third) = post(&gw, &over_bars("ema", "bars")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(third["queue_map"], json!({ bars_id.clone(): bars_id }));
    let (status, _) = post(&gw, &producer).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Health names the store and shows no credentials.
    let (status, health) = get(&gw, "/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["store"], json!({ "kind": "postgres", "ok": true }));
    let metrics = reqwest::get(url(&gw, "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let password = &pg::server().password;
    assert!(!health.to_string().contains(password.as_str()));
    assert!(!metrics.contains(password.as_str()));
    assert!(!store.to_string().contains(password.as_str()));
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn two_gateways_sharing_a_database_see_each_other() {
    let store = fresh_store("gw_shared");
    let a = start(&store).await;
    let b = start(&store).await;
    let producer = over_bars("sma", "bars");
    let bars_id = producer.nodes[0].node_id.clone();

    let (status, _) = post(&a, &producer).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = post(&b, &producer).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the same DAG through the other gateway"
    );
    let (status, answer) = post(&b, &over_bars("ema", "bars")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(answer["queue_map"], json!({ bars_id.clone(): bars_id }));

    // Both register the same new DAG at once: exactly one wins.
    let racer = over_bars("wma", "other");
    let (ra, rb) = tokio::join!(post(&a, &racer), post(&b, &racer));
    let mut codes = [ra.0.as_u16(), rb.0.as_u16()];
    codes.sort_unstable();
    assert_eq!(codes, [202, 409], "{ra:?} {rb:?}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn hostile_names_are_stored_verbatim() {
    let store = fresh_store("gw_verbatim");
    let gw = start(&store).await;
    let name = "x'); DROP TABLE gateway_nodes; -- \"q\" $1 \\";
    let dag = over_bars("sma", name);
    let (status, answer) = post(&gw, &dag).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    gw.stop().await.unwrap();

    let dsn = pg::server().dsn();
    let dsn = format!("{}/gw_verbatim", dsn.rsplit_once('/').unwrap().0);
    let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT name, dag_json FROM gateway_nodes JOIN gateway_strategies \
                    USING (strategy_id) WHERE ord = 0",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), name);
    let stored: DagJson = serde_json::from_str(&row.get::<_, String>(1)).unwrap();
    assert_eq!(stored, dag);
}

#[tokio::test]
async fn a_ten_thousand_node_dag_is_accepted() {
    let store = fresh_store("gw_big");
    let gw = start(&store).await;
    let mut b = DagBuilder::new();
    let mut last = b
        .stream_input(StreamInput::new("bars").interval(60).fields(["close"]))
        .unwrap();
    for i in 1..10_000 {
        last = b
            .node(
                Node::new(format!("n{i}"))
                    .input(&last)
                    .fields(["v"])
                    .compute("step@1", |_| None),
            )
            .unwrap();
    }
    let dag = b.finish(&last).to_json();
    let (status, answer) = post(&gw, &dag).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_wrong_password_is_a_usage_error_naming_the_user_not_the_password() {
    let server = pg::server();
    let wrong = "wr0ng-pa55word";
    let spec = StoreSpec::parse(&format!(
        "postgres:postgresql://{}:{wrong}@127.0.0.1:{}/{}",
        pg::USER,
        server.port,
        pg::DB
    ))
    .unwrap();
    let config = GatewayConfig::new(spec).listen(([127, 0, 0, 1], 0).into());
    let err = serve(config)
        .await
        .expect_err("a wrong password is refused");
    let shown = err.to_string();
    assert!(err.is_usage(), "{shown}");
    assert!(
        shown.contains(&format!("authentication failed for user {}", pg::USER)),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("127.0.0.1:{}", server.port)),
        "{shown}"
    );
    assert!(!shown.contains(wrong), "{shown}");
    assert!(!format!("{err:?}").contains(wrong));
}

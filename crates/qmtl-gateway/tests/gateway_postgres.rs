//! The gateway with a PostgreSQL store, against a throwaway server (see
//! `crates/qmtl/tests/support/pg.rs`): strategies and queue maps survive a restart, two
//! gateways sharing one database see each other's strategies and conflicts, hostile
//! names are stored verbatim, the password shows in no answer, and a wrong password is a
//! usage error naming the user.

mod support;

use qmtl::dag::DagJson;
use qmtl::{StreamInput, TagMatch};
use qmtl_gateway::{serve, Gateway, GatewayConfig, StoreSpec};
use reqwest::StatusCode;
use serde_json::{json, Value};

use support::{chain, fresh_postgres, get, metrics, pg, send, start, tag_query, url};

/// `<bars_name> -> <node>`, the stream tagged with a quote in one tag.
fn over_bars(node: &str, bars_name: &str) -> DagJson {
    support::over_bars(node, bars_name, &["ohlcv", "o'brien"])
}

async fn post(gw: &Gateway, dag: &DagJson) -> (StatusCode, Value) {
    let body = json!({ "dag_json": dag, "meta": null, "run_type": "live" });
    send(
        reqwest::Client::new()
            .post(url(gw, "/strategies"))
            .json(&body),
    )
    .await
}

#[tokio::test]
async fn strategies_and_queue_maps_survive_a_restart() {
    let store = fresh_postgres("gw_restart");
    let producer = over_bars("sma", "bars");
    let consumer = tag_query(&["o'brien"], TagMatch::All);
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
    let metrics = metrics(&gw).await;
    let password = &pg::server().password;
    assert!(!health.to_string().contains(password.as_str()));
    assert!(!metrics.contains(password.as_str()));
    assert!(!store.to_string().contains(password.as_str()));
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn two_gateways_sharing_a_database_see_each_other() {
    let store = fresh_postgres("gw_shared");
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
    let store = fresh_postgres("gw_verbatim");
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
    let store = fresh_postgres("gw_big");
    let gw = start(&store).await;
    let dag = chain(
        StreamInput::new("bars").interval(60).fields(["close"]),
        10_000,
    );
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

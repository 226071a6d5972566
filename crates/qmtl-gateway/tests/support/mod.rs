//! What the gateway's integration tests share: a gateway serving on a free port of
//! 127.0.0.1 and plain requests to it, the stores it runs on (a SQLite file of this test
//! run, a fresh database on the PostgreSQL test server) and the DAGs the tests register
//! (a node over a tagged stream, a tag query, a long chain). The PostgreSQL test server
//! is the library's `support/pg.rs`, included here unchanged as [`pg`].
//!
//! Each test binary compiles this module on its own and uses only part of it, hence the
//! `dead_code` allowance. Helpers that only one file needs stay in that file.

#![allow(dead_code)]

#[path = "../../../qmtl/tests/support/pg.rs"]
pub mod pg;

use std::path::PathBuf;

use qmtl::dag::DagJson;
use qmtl::{DagBuilder, Node, StreamInput, TagMatch, TagQueryNode};
use qmtl_gateway::{serve, Gateway, GatewayConfig, StoreSpec};
use reqwest::StatusCode;
use serde_json::Value;

/// A gateway on `store` with the default settings, on a free port of 127.0.0.1.
pub async fn start(store: &StoreSpec) -> Gateway {
    start_with(GatewayConfig::new(store.clone())).await
}

/// A gateway with `config`, on a free port of 127.0.0.1 whatever `config` listens on.
pub async fn start_with(config: GatewayConfig) -> Gateway {
    serve(config.listen(([127, 0, 0, 1], 0).into()))
        .await
        .expect("gateway starts")
}

/// The URL of `path` on `gw`.
pub fn url(gw: &Gateway, path: &str) -> String {
    format!("http://{}{path}", gw.local_addr())
}

/// Sends `request`; returns the status and the JSON body (null when it is not JSON).
pub async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let r = request.send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

/// `GET path` on `gw`; returns the status and the JSON body (null when it is not JSON).
pub async fn get(gw: &Gateway, path: &str) -> (StatusCode, Value) {
    send(reqwest::Client::new().get(url(gw, path))).await
}

/// The text `GET /metrics` on `gw` answers.
pub async fn metrics(gw: &Gateway) -> String {
    let r = reqwest::get(url(gw, "/metrics")).await.unwrap();
    r.text().await.unwrap()
}

/// A SQLite file path unique to this test binary, process and `name`, in a directory of
/// its own with nothing left from before.
pub fn temp_db(name: &str) -> PathBuf {
    let binary = env!("CARGO_CRATE_NAME");
    let dir = std::env::temp_dir().join(format!("qmtl-{binary}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("gateway.db")
}

/// A fresh database named `name` on the shared PostgreSQL test server, as a store spec.
pub fn fresh_postgres(name: &str) -> StoreSpec {
    let server = pg::server();
    server.psql(&format!("DROP DATABASE IF EXISTS {name}"));
    server.psql(&format!("CREATE DATABASE {name}"));
    let dsn = server.dsn();
    let base = dsn.rsplit_once('/').unwrap().0;
    StoreSpec::parse(&format!("postgres:{base}/{name}")).unwrap()
}

/// `<stream> -> <node>`: an hourly stream of `close` with a period of 20 and `tags`, and
/// one node over it whose compute identity is `<node>@1`.
pub fn over_bars(node: &str, stream: &str, tags: &[&str]) -> DagJson {
    let mut b = DagBuilder::new();
    let s = b
        .stream_input(
            StreamInput::new(stream)
                .interval("1h")
                .period(20)
                .fields(["close"])
                .tags(tags.iter().copied()),
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

/// An hourly tag query node `basket` over `tags`, matched by `mode`.
pub fn tag_query(tags: &[&str], mode: TagMatch) -> DagJson {
    let mut b = DagBuilder::new();
    let q = b
        .tag_query(
            TagQueryNode::new("basket")
                .query_tags(tags.iter().copied())
                .match_mode(mode)
                .interval("1h")
                .fields(["v"])
                .compute("basket@1", |_| None),
        )
        .unwrap();
    b.finish(&q).to_json()
}

/// The id of node `name` of `dag`.
pub fn node_id(dag: &DagJson, name: &str) -> String {
    dag.nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap()
        .node_id
        .clone()
}

/// `stream` and a chain of nodes after it, `nodes` in all: deep enough, for thousands, to
/// break any recursive check.
pub fn chain(stream: StreamInput, nodes: usize) -> DagJson {
    let mut b = DagBuilder::new();
    let mut last = b.stream_input(stream).unwrap();
    for i in 1..nodes {
        last = b
            .node(
                Node::new(format!("n{i}"))
                    .input(&last)
                    .fields(["v"])
                    .compute("step@1", |_| None),
            )
            .unwrap();
    }
    b.finish(&last).to_json()
}

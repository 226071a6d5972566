//! Property tests of the registration checks: no input makes them panic, and a valid
//! DAG is accepted whatever the order of its nodes and keys, with the same hash. A DAG
//! mutated at random (fields set to any JSON, keys removed, nodes repeated or dropped,
//! inputs and target pointed anywhere) is either refused naming a field, or accepted
//! only when it is whole: unique ids that match each node's description, inputs and
//! target that name nodes of the DAG. Over HTTP, such bodies get a 2xx or a 4xx answer,
//! never a 5xx. Case counts are set here so the file runs in seconds.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::OnceLock;

use proptest::prelude::*;
use qmtl::{DagBuilder, Node, StreamInput};
use qmtl_gateway::payload::{parse_registration, Registration};
use qmtl_gateway::{serve, GatewayConfig, StoreSpec};
use serde_json::{json, Value};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn valid_dag() -> Value {
    let mut b = DagBuilder::new();
    let s = b
        .stream_input(StreamInput::new("s").interval(60).fields(["x"]).tags(["a"]))
        .unwrap();
    let t = b
        .stream_input(StreamInput::new("t").interval(60).fields(["x"]))
        .unwrap();
    let n = b
        .node(
            Node::new("n")
                .input(&s)
                .input(&t)
                .fields(["v"])
                .compute("f@1", |_| None),
        )
        .unwrap();
    serde_json::to_value(b.finish(&n).to_json()).unwrap()
}

fn envelope(dag: &Value) -> Vec<u8> {
    json!({ "dag_json": dag, "run_type": "live" })
        .to_string()
        .into_bytes()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_registration(&body);
    }

    #[test]
    fn arbitrary_text_as_dag_json_never_panics(text in ".{0,256}") {
        let body = json!({ "dag_json": text, "run_type": "live" }).to_string();
        let _ = parse_registration(body.as_bytes());
    }

    #[test]
    fn a_mutated_field_is_refused_or_accepted_never_panics(
        node in 0usize..3,
        key in prop::sample::select(vec![
            "node_id", "node_type", "name", "interval", "period", "tags", "inputs",
            "code_hash", "config_hash", "schema_hash", "match_mode",
        ]),
        value in prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
            Just(json!([])),
            Just(json!(["x"])),
            Just(json!({})),
        ],
    ) {
        let mut dag = valid_dag();
        dag["nodes"][node][key] = value;
        if let Err(e) = parse_registration(&envelope(&dag)) {
            prop_assert!(e.to_string().contains(&e.field()) || e.field() == "body");
        }
    }

    #[test]
    fn node_order_does_not_matter(order in Just(vec![0usize, 1, 2]).prop_shuffle()) {
        let dag = valid_dag();
        let reference = parse_registration(&envelope(&dag)).unwrap();
        let mut shuffled = dag.clone();
        let nodes = dag["nodes"].as_array().unwrap();
        shuffled["nodes"] = Value::Array(order.iter().map(|&i| nodes[i].clone()).collect());
        let again = parse_registration(&envelope(&shuffled)).unwrap();
        prop_assert_eq!(again.dag.nodes.len(), 3);
        prop_assert_eq!(again.dag_hash, reference.dag_hash);
    }
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,10}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const NODE_KEYS: &[&str] = &[
    "node_id",
    "node_type",
    "name",
    "interval",
    "period",
    "tags",
    "inputs",
    "code_hash",
    "config_hash",
    "schema_hash",
    "match_mode",
];

/// One change to the valid DAG.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, &'static str, Value),
    Remove(usize, &'static str),
    Repeat(usize),
    Drop(usize),
    /// Point input `.1` of node `.0` at node `.2`'s id.
    Rewire(usize, usize, usize),
    Target(Value),
    Rename(usize, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let node = 0usize..4;
    let key = prop::sample::select(NODE_KEYS);
    prop_oneof![
        (node.clone(), key.clone(), any_json()).prop_map(|(n, k, v)| Mutation::Set(n, k, v)),
        (node.clone(), key).prop_map(|(n, k)| Mutation::Remove(n, k)),
        node.clone().prop_map(Mutation::Repeat),
        node.clone().prop_map(Mutation::Drop),
        (node.clone(), 0usize..3, node.clone()).prop_map(|(n, i, to)| Mutation::Rewire(n, i, to)),
        any_json().prop_map(Mutation::Target),
        (node, "[a-z]{0,3}").prop_map(|(n, name)| Mutation::Rename(n, name)),
    ]
}

fn apply(dag: &mut Value, m: &Mutation) {
    let Some(nodes) = dag["nodes"].as_array_mut() else {
        return;
    };
    let len = nodes.len();
    if len == 0 {
        return;
    }
    match m {
        Mutation::Set(n, key, value) => nodes[n % len][*key] = value.clone(),
        Mutation::Remove(n, key) => {
            if let Some(node) = nodes[n % len].as_object_mut() {
                node.remove(*key);
            }
        }
        Mutation::Repeat(n) => {
            let copy = nodes[n % len].clone();
            nodes.push(copy);
        }
        Mutation::Drop(n) => {
            nodes.remove(n % len);
        }
        Mutation::Rewire(n, i, to) => {
            let id = nodes[to % len]["node_id"].clone();
            if let Some(inputs) = nodes[n % len]["inputs"].as_array_mut() {
                match inputs.get_mut(*i) {
                    Some(slot) => *slot = id,
                    None => inputs.push(id),
                }
            }
        }
        Mutation::Target(t) => dag["target"] = t.clone(),
        Mutation::Rename(n, name) => nodes[n % len]["name"] = Value::from(name.as_str()),
    }
}

/// What an accepted DAG must be: whole and self-consistent.
fn assert_whole(reg: &Registration) -> Result<(), TestCaseError> {
    let nodes = &reg.dag.nodes;
    prop_assert!(!nodes.is_empty());
    let ids: HashSet<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
    prop_assert_eq!(ids.len(), nodes.len(), "node ids are unique");
    let names: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    prop_assert_eq!(names.len(), nodes.len(), "node names are unique");
    prop_assert!(
        ids.contains(reg.dag.target.as_str()),
        "the target is a node"
    );
    for n in nodes {
        prop_assert!(n.interval > 0 && n.period > 0, "{n:?}");
        let expected = n.expected_id().map(|id| id.to_string());
        prop_assert_eq!(expected.as_deref(), Some(n.node_id.as_str()));
        for input in &n.inputs {
            prop_assert!(ids.contains(input.as_str()), "input {input} is a node");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn a_mutated_dag_is_refused_naming_a_field_or_accepted_whole(
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut dag = valid_dag();
        for m in &mutations {
            apply(&mut dag, m);
        }
        match parse_registration(&envelope(&dag)) {
            Ok(reg) => assert_whole(&reg)?,
            Err(e) => {
                let field = e.field();
                prop_assert!(field.starts_with("dag_json"), "{field}: {e}");
                prop_assert!(e.to_string().contains(&field), "{field}: {e}");
            }
        }
    }

    #[test]
    fn any_json_as_the_dag_or_the_envelope_is_refused_or_accepted_whole(
        dag in any_json(),
        envelope_value in any_json(),
    ) {
        for body in [
            json!({ "dag_json": dag, "run_type": "backtest" }).to_string(),
            envelope_value.to_string(),
        ] {
            match parse_registration(body.as_bytes()) {
                Ok(reg) => assert_whole(&reg)?,
                Err(e) => prop_assert!(
                    e.field() == "body" || e.to_string().contains(&e.field()),
                    "{e}"
                ),
            }
        }
    }
}

/// One gateway for the HTTP properties, on 127.0.0.1 with an in-memory store, kept for
/// the life of the test process.
fn gateway() -> &'static (tokio::runtime::Runtime, SocketAddr) {
    static GATEWAY: OnceLock<(tokio::runtime::Runtime, SocketAddr)> = OnceLock::new();
    GATEWAY.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let config = GatewayConfig::new(StoreSpec::SqliteMemory).listen(([127, 0, 0, 1], 0).into());
        let gateway = runtime.block_on(serve(config)).expect("gateway starts");
        let addr = gateway.local_addr();
        // Served until the process ends.
        std::mem::forget(gateway);
        (runtime, addr)
    })
}

/// POSTs `body` to `/strategies` and returns the status code.
fn post_strategy(body: Vec<u8>) -> u16 {
    let (runtime, addr) = gateway();
    runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{addr}/strategies"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the gateway answers")
            .status()
            .as_u16()
    })
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn over_http_a_mutated_dag_gets_2xx_or_4xx_never_5xx(
        mutations in prop::collection::vec(mutation(), 0..4),
        run_type in prop::sample::select(vec!["backtest", "dry-run", "live", "paper"]),
    ) {
        let mut dag = valid_dag();
        for m in &mutations {
            apply(&mut dag, m);
        }
        let body = json!({ "dag_json": dag, "run_type": run_type }).to_string();
        let status = post_strategy(body.into_bytes());
        prop_assert!((200..300).contains(&status) || (400..500).contains(&status), "{status}");
    }

    #[test]
    fn over_http_any_body_gets_2xx_or_4xx_never_5xx(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            any_json().prop_map(|v| v.to_string().into_bytes()),
        ],
    ) {
        let status = post_strategy(body);
        prop_assert!((200..300).contains(&status) || (400..500).contains(&status), "{status}");
    }
}

#[test]
fn the_valid_dag_is_accepted_over_http_so_the_properties_reach_the_store() {
    let status = post_strategy(envelope(&valid_dag()));
    // 409 when a property case registered the same DAG first.
    assert!(status == 202 || status == 409, "{status}");
}

#[test]
fn deeply_nested_json_is_refused_not_a_stack_overflow() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let dag_json = format!(r#"{{"dag_json": {{"nodes": {deep}}}, "run_type": "live"}}"#);
    for body in [deep.clone(), dag_json] {
        let err = parse_registration(body.as_bytes()).unwrap_err();
        assert_eq!(err.field(), "body", "{err}");
        let status = post_strategy(body.into_bytes());
        assert!((400..500).contains(&status), "{status}");
    }
}

//! Property tests of the registration checks: no input makes them panic, and a valid
//! DAG is accepted whatever the order of its nodes and keys, with the same hash.

use proptest::prelude::*;
use qmtl::{DagBuilder, Node, StreamInput};
use qmtl_gateway::payload::parse_registration;
use serde_json::{json, Value};

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

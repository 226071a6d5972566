//! The DAG executor: compute order, gap policies, tie order across streams and the
//! width check on emitted rows.

use std::sync::{Arc, Mutex};

use qmtl::batch::Columns;
use qmtl::node::NodeSpec;
use qmtl::replay::{replay_merged, Executor, Feed, OutputSink, ReplayError};
use qmtl::{Dag, DagBuilder, Node, OnMissing, Row, StreamInput, Timestamp};

const H: i64 = 3600;

/// A stream `a` and a node `sum` adding the latest values of its window (period 2).
fn sum_dag() -> Dag {
    let mut b = DagBuilder::new();
    let a = b
        .stream_input(StreamInput::new("a").interval("1h").period(1).fields(["v"]))
        .unwrap();
    let sum = b
        .node(
            Node::new("sum")
                .input(&a)
                .period(2)
                .fields(["s"])
                .compute("sum@1", |view| {
                    Some(Row::one(view.input(0).field("v")?.iter().sum()))
                }),
        )
        .unwrap();
    b.finish(&sum)
}

type Emitted = Arc<Mutex<Vec<(String, Timestamp, Vec<f64>)>>>;

struct Collect(Emitted);

impl OutputSink for Collect {
    fn emit(&mut self, node: &NodeSpec, ts: Timestamp, row: &Row) {
        self.0
            .lock()
            .unwrap()
            .push((node.name.clone(), ts, row.values().to_vec()));
    }
}

fn run(dag: &Dag, policy: OnMissing, hours: &[i64]) -> (Result<u64, ReplayError>, Emitted) {
    let mut exec = Executor::new(dag, policy);
    let out: Emitted = Arc::default();
    exec.set_output_sink(Box::new(Collect(out.clone())));
    let cols = Columns {
        ts: hours.iter().map(|h| h * H).collect(),
        values: vec![hours.iter().map(|h| *h as f64).collect()],
    };
    let result = replay_merged(&mut exec, &[(0, &cols)]);
    (result, out)
}

#[test]
fn a_node_computes_only_once_ready() {
    let (r, out) = run(&sum_dag(), OnMissing::Skip, &[1, 2, 3]);
    assert_eq!(r, Ok(3));
    let out = out.lock().unwrap();
    assert_eq!(
        *out,
        [
            ("sum".into(), 2 * H, vec![3.0]),
            ("sum".into(), 3 * H, vec![5.0])
        ]
    );
}

#[test]
fn skip_stores_the_value_but_does_not_compute_at_a_gap() {
    let (r, out) = run(&sum_dag(), OnMissing::Skip, &[1, 2, 5, 6]);
    assert_eq!(r, Ok(4));
    let ts: Vec<i64> = out.lock().unwrap().iter().map(|e| e.1).collect();
    assert_eq!(
        ts,
        [2 * H, 6 * H],
        "no compute at the gap at 5h; 6h sees 5h stored"
    );
    assert_eq!(out.lock().unwrap()[1].2, [11.0]);
}

#[test]
fn continue_computes_across_a_gap() {
    let (_, out) = run(&sum_dag(), OnMissing::Continue, &[1, 2, 5]);
    assert_eq!(out.lock().unwrap().last().unwrap().2, [7.0]);
}

#[test]
fn fail_names_node_interval_and_both_timestamps() {
    let (r, _) = run(&sum_dag(), OnMissing::Fail, &[1, 2, 5]);
    let err = r.unwrap_err();
    let text = err.to_string();
    for want in ["'sum'", "interval 3600", "from 7200 to 18000"] {
        assert!(text.contains(want), "{text} should contain {want}");
    }
}

fn pair_dag() -> Dag {
    let mut b = DagBuilder::new();
    let x = b
        .stream_input(StreamInput::new("x").interval(1).fields(["v"]))
        .unwrap();
    let y = b
        .stream_input(StreamInput::new("y").interval(1).fields(["v"]))
        .unwrap();
    let pair = b
        .node(
            Node::new("pair")
                .input(&x)
                .input(&y)
                .fields(["x", "y"])
                .compute("pair@1", |v| {
                    let x = v.input(0).latest()?.value(0);
                    let y = v.input(1).latest()?.value(0);
                    Some(Row::new(&[x, y]))
                }),
        )
        .unwrap();
    b.finish(&pair)
}

type Rows = Vec<(i64, Vec<f64>)>;

fn pairs(xs: Columns, ys: Columns) -> (Result<u64, ReplayError>, Rows) {
    let mut exec = Executor::new(&pair_dag(), OnMissing::Continue);
    let out: Emitted = Arc::default();
    exec.set_output_sink(Box::new(Collect(out.clone())));
    let result = replay_merged(&mut exec, &[(0, &xs), (1, &ys)]);
    let rows = out
        .lock()
        .unwrap()
        .iter()
        .map(|(_, t, v)| (*t, v.clone()))
        .collect();
    (result, rows)
}

#[test]
fn streams_merge_by_time() {
    let xs = Columns {
        ts: vec![1, 2],
        values: vec![vec![10.0, 20.0]],
    };
    let ys = Columns {
        ts: vec![2, 3],
        values: vec![vec![200.0, 300.0]],
    };
    let (result, rows) = pairs(xs, ys);
    assert_eq!(result, Ok(4));
    assert_eq!(rows, [(2, vec![20.0, 200.0]), (3, vec![20.0, 300.0])]);
}

#[test]
fn rows_of_one_timestamp_are_computed_once_on_all_new_values() {
    // Regression: a tie used to compute on x's new value with y's stale one, then again.
    let xs = Columns {
        ts: vec![1, 2],
        values: vec![vec![10.0, 20.0]],
    };
    let ys = Columns {
        ts: vec![1, 2],
        values: vec![vec![100.0, 200.0]],
    };
    let (result, rows) = pairs(xs, ys);
    assert_eq!(result, Ok(4));
    assert_eq!(rows, [(1, vec![10.0, 100.0]), (2, vec![20.0, 200.0])]);
}

#[test]
fn a_cancelled_replay_stops_early() {
    let n = 100_000i64;
    let xs = Columns {
        ts: (0..n).collect(),
        values: vec![vec![1.0; n as usize]],
    };
    let ys = Columns {
        ts: vec![],
        values: vec![vec![]],
    };
    let mut exec = Executor::new(&pair_dag(), OnMissing::Continue);
    let token = tokio_util::sync::CancellationToken::new();
    token.cancel();
    exec.set_cancel(token);
    let result = replay_merged(&mut exec, &[(0, &xs), (1, &ys)]);
    assert!(matches!(result, Err(ReplayError::Cancelled { events }) if events < n as u64));
}

#[test]
fn a_row_of_the_wrong_width_is_an_error_naming_the_node() {
    let mut b = DagBuilder::new();
    let a = b
        .stream_input(StreamInput::new("a").interval(1).fields(["v"]))
        .unwrap();
    let bad = b
        .node(
            Node::new("bad")
                .input(&a)
                .fields(["x", "y"])
                .compute("bad@1", |_| Some(Row::one(1.0))),
        )
        .unwrap();
    let dag = b.finish(&bad);
    let mut exec = Executor::new(&dag, OnMissing::Skip);
    let err = exec.push(0, 1, &[1.0]).unwrap_err();
    assert_eq!(
        err,
        ReplayError::RowWidth {
            node: "bad".into(),
            got: 1,
            want: 2
        }
    );
}

#[test]
fn repeated_rows_of_one_time_compute_once_with_the_last_row() {
    let mut b = DagBuilder::new();
    let a = b
        .stream_input(StreamInput::new("a").interval(1).fields(["v"]))
        .unwrap();
    let out = b
        .node(
            Node::new("out")
                .input(&a)
                .fields(["v"])
                .compute("id@1", |v| Some(Row::one(v.input(0).latest()?.value(0)))),
        )
        .unwrap();
    let dag = b.finish(&out);
    let mut exec = Executor::new(&dag, OnMissing::Continue);
    let emitted: Emitted = Arc::default();
    exec.set_output_sink(Box::new(Collect(emitted.clone())));
    let cols = Columns {
        ts: vec![1, 2, 2, 3],
        values: vec![vec![1.0, 2.0, 20.0, 3.0]],
    };
    assert_eq!(replay_merged(&mut exec, &[(0, &cols)]), Ok(4));
    let rows: Vec<(i64, Vec<f64>)> = emitted
        .lock()
        .unwrap()
        .iter()
        .map(|(_, t, v)| (*t, v.clone()))
        .collect();
    assert_eq!(rows, [(1, vec![1.0]), (2, vec![20.0]), (3, vec![3.0])]);
}

#[test]
fn a_node_reading_another_strategys_output_waits_for_it_and_computes_once() {
    // Regression: the signal computed on the local input's new value with the shared
    // node's stale one, then again when the shared node's row arrived.
    let mut b = DagBuilder::new();
    let a = b
        .stream_input(StreamInput::new("a").interval(1).fields(["v"]))
        .unwrap();
    let copy = |name: &str, input: &qmtl::NodeRef| {
        Node::new(name)
            .input(input)
            .fields(["v"])
            .compute(format!("{name}@1"), |v| {
                Some(Row::one(v.input(0).latest()?.value(0)))
            })
    };
    let shared = b.node(copy("shared", &a)).unwrap();
    let local = b.node(copy("local", &a)).unwrap();
    let sig = b
        .node(
            Node::new("sig")
                .input(&shared)
                .input(&local)
                .fields(["s", "l"])
                .compute("sig@1", |v| {
                    let s = v.input(0).latest()?.value(0);
                    let l = v.input(1).latest()?.value(0);
                    Some(Row::new(&[s, l]))
                }),
        )
        .unwrap();
    let dag = b.finish(&sig);
    let mut exec = Executor::new(&dag, OnMissing::Continue);
    exec.set_external(shared.index());
    let emitted: Emitted = Arc::default();
    exec.set_output_sink(Box::new(Collect(emitted.clone())));
    for t in 1..=3 {
        // The local input arrives first; the other strategy's row comes later.
        exec.push_to(Feed::Node(a.index()), t, &[t as f64]).unwrap();
        exec.push_to(Feed::Node(shared.index()), t, &[10.0 * t as f64])
            .unwrap();
    }
    let sigs: Vec<(i64, Vec<f64>)> = emitted
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _, _)| n == "sig")
        .map(|(_, t, v)| (*t, v.clone()))
        .collect();
    assert_eq!(
        sigs,
        [
            (1, vec![10.0, 1.0]),
            (2, vec![20.0, 2.0]),
            (3, vec![30.0, 3.0])
        ]
    );
}

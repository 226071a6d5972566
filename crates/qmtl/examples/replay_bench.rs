//! Replay throughput and peak memory of a backtest over synthetic in-memory bars.
//!
//! `cargo run --release -p qmtl --example replay_bench -- DAG ROWS` where DAG is `sma`
//! (one stream, one SMA(20) node) or `momentum` (the built-in example strategy), prints
//! one JSON line: rows, backfill and replay seconds, replay events per second, and the
//! process's peak resident memory (VmHWM) in MB.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use qmtl::strategies::MomentumStrategy;
use qmtl::{
    BackfillConfig, CacheLoader, DagBuilder, DagError, Interval, LoaderError, Node, NodeId,
    NodeRef, Row, Runner, Strategy, StreamInput,
};

/// A random-walk bar per hour, generated on request.
struct Synthetic;

#[async_trait::async_trait]
impl CacheLoader for Synthetic {
    async fn fetch(
        &self,
        start: i64,
        end: i64,
        _node: &NodeId,
        interval: Interval,
    ) -> Result<RecordBatch, LoaderError> {
        let ts: Vec<i64> = (interval.bucket_ceil(start)..end)
            .step_by(interval.secs() as usize)
            .collect();
        let close: Vec<f64> = ts
            .iter()
            .map(|t| 100.0 + ((*t / 3600) as f64 * 0.01).sin() * 5.0)
            .collect();
        let col = |v: &Vec<f64>| Arc::new(Float64Array::from(v.clone())) as ArrayRef;
        RecordBatch::try_from_iter([
            ("ts", Arc::new(Int64Array::from(ts.clone())) as ArrayRef),
            ("open", col(&close)),
            ("high", col(&close)),
            ("low", col(&close)),
            ("close", col(&close)),
            ("volume", col(&close)),
        ])
        .map_err(LoaderError::permanent)
    }

    fn describe(&self) -> String {
        "synthetic".into()
    }
}

/// One stream and a 20-bar simple moving average of its close.
struct Sma20;

impl Strategy for Sma20 {
    fn setup(&self, dag: &mut DagBuilder) -> Result<NodeRef, DagError> {
        let bars = dag.stream_input(
            StreamInput::new("bars")
                .interval("1h")
                .period(20)
                .fields(["close"]),
        )?;
        dag.node(
            Node::new("sma")
                .input(&bars)
                .period(20)
                .fields(["sma"])
                .compute("sma@1", |view| {
                    let close = view.input(0).field_at(0);
                    Some(Row::one(close.iter().sum::<f64>() / close.len() as f64))
                }),
        )
    }
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dag = args.get(1).map_or("sma", String::as_str).to_owned();
    let rows: i64 = args
        .get(2)
        .and_then(|r| r.parse().ok())
        .unwrap_or(1_000_000);
    let start = 1_000_000_000 - 1_000_000_000 % 3600;
    let end = start + rows * 3600;
    let runner = match dag.as_str() {
        "momentum" => Runner::backtest(MomentumStrategy::default()),
        _ => Runner::backtest(Sma20),
    };
    let report = runner
        .backfill_loader(None, Arc::new(Synthetic))
        .backfill_start(start)
        .backfill_end(end)
        .backfill_config(BackfillConfig::default().chunk_buckets(100_000))
        .run()
        .await
        .expect("benchmark run");
    let t = report.timings;
    println!(
        "{}",
        serde_json::json!({
            "dag": dag,
            "rows": report.events,
            "backfill_s": t.backfill_s,
            "replay_s": t.replay_s,
            "events_per_s": report.events as f64 / t.replay_s,
            "peak_rss_mb": peak_rss_mb(),
        })
    );
}

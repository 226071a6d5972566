//! Writing a strategy and a loader of your own, and running them with the `Runner`.
//!
//! `cargo run -p qmtl --example custom_strategy` backfills a made-up price series from an
//! in-memory loader and prints how often a 3-bar breakout fired.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use qmtl::{
    CacheLoader, DagBuilder, DagError, Interval, LoaderError, Node, NodeId, NodeRef, Row, Runner,
    Strategy, StreamInput,
};

/// A loader serving a fixed table from memory; a real one would query a database.
struct InMemory {
    ts: Vec<i64>,
    price: Vec<f64>,
}

#[async_trait::async_trait]
impl CacheLoader for InMemory {
    async fn fetch(
        &self,
        start: i64,
        end: i64,
        _node: &NodeId,
        _interval: Interval,
    ) -> Result<RecordBatch, LoaderError> {
        let lo = self.ts.partition_point(|t| *t < start);
        let hi = self.ts.partition_point(|t| *t < end).max(lo);
        RecordBatch::try_from_iter([
            (
                "ts",
                Arc::new(Int64Array::from(self.ts[lo..hi].to_vec())) as ArrayRef,
            ),
            (
                "price",
                Arc::new(Float64Array::from(self.price[lo..hi].to_vec())) as ArrayRef,
            ),
        ])
        .map_err(LoaderError::permanent)
    }

    fn describe(&self) -> String {
        format!("memory ({} rows)", self.ts.len())
    }
}

/// Emits 1 when the latest price is above the highest of the two before it.
struct Breakout;

impl Strategy for Breakout {
    fn setup(&self, dag: &mut DagBuilder) -> Result<NodeRef, DagError> {
        let px = dag.stream_input(
            StreamInput::new("px")
                .interval("1m")
                .period(3)
                .fields(["price"]),
        )?;
        dag.node(
            Node::new("breakout")
                .input(&px)
                .period(3)
                .fields(["fired"])
                .compute("breakout@1", |view| {
                    let p = view.input(0).field("price")?;
                    let fired = p[2] > p[0].max(p[1]);
                    Some(Row::one(if fired { 1.0 } else { 0.0 }))
                }),
        )
    }
}

#[tokio::main]
async fn main() -> Result<(), qmtl::RunError> {
    let ts: Vec<i64> = (0..600).map(|i| 1_700_000_040 + i * 60).collect();
    let price = ts.iter().map(|t| ((*t as f64) / 600.0).sin()).collect();
    let report = Runner::backtest(Breakout)
        .strategy_name("breakout")
        .backfill_loader(None, Arc::new(InMemory { ts, price }))
        .backfill_start(1_700_000_040)
        .backfill_end(1_700_036_040)
        .run()
        .await?;
    let node = report.node("breakout").expect("declared above");
    println!(
        "{} bars, breakout computed {} times",
        report.events, node.outputs
    );
    Ok(())
}

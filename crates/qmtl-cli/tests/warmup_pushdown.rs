//! Warm-up pushdown against a real gateway and a real PostgreSQL server: a dryrun whose
//! range is its warm-up's own (no explicit start) asks the loader for only the newest
//! rows its caches need (`CacheLoader::fetch_last`), never for the range, and loads
//! exactly that many rows however long the table's history is.

mod support;

use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use qmtl::sources::{Flavor, LoaderOptions, PgSource};
use qmtl::strategies::MomentumStrategy;
use qmtl::{CacheLoader, Dag, Interval, LoaderError, NodeId, QuestDBLoader, Runner};

use support::{pg, scratch, serve_gateway};

/// Hourly bars in the table.
const ROWS: i64 = 50_000;
const BASE: i64 = 1_400_000_000;

/// Delegates to a real loader and notes which method each fetch used.
struct Spy {
    inner: QuestDBLoader,
    calls: Mutex<Vec<(&'static str, i64, i64, u64)>>,
}

#[async_trait::async_trait]
impl CacheLoader for Spy {
    async fn fetch(
        &self,
        start: i64,
        end: i64,
        node_id: &NodeId,
        interval: Interval,
    ) -> Result<RecordBatch, LoaderError> {
        let batch = self.inner.fetch(start, end, node_id, interval).await?;
        let rows = batch.num_rows() as u64;
        self.calls.lock().unwrap().push(("fetch", start, end, rows));
        Ok(batch)
    }

    async fn fetch_last(
        &self,
        start: i64,
        end: i64,
        count: u64,
        node_id: &NodeId,
        interval: Interval,
    ) -> Result<Option<RecordBatch>, LoaderError> {
        self.calls
            .lock()
            .unwrap()
            .push(("fetch_last", start, end, count));
        self.inner
            .fetch_last(start, end, count, node_id, interval)
            .await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_up_only_dryrun_fetches_just_the_newest_rows_it_needs() {
    let server = pg::server();
    let dag = Dag::build(&MomentumStrategy::default()).unwrap();
    let bars = dag.streams().find(|s| s.name == "bars").unwrap().id.clone();
    server.psql(&format!(
        "CREATE TABLE pushdown (node_id TEXT NOT NULL, interval INT NOT NULL, \
         ts BIGINT NOT NULL, open FLOAT8, high FLOAT8, low FLOAT8, close FLOAT8, \
         volume FLOAT8, PRIMARY KEY (node_id, interval, ts)); \
         INSERT INTO pushdown SELECT '{bars}', 3600, {BASE} + i * 3600, i, i, i, i, 1 \
         FROM generate_series(0, {}) AS i",
        ROWS - 1
    ));
    let source = PgSource::parse(Flavor::QuestDb, &server.dsn()).unwrap();
    let options = LoaderOptions {
        table: "pushdown".into(),
        ..LoaderOptions::default()
    };
    let spy = Arc::new(Spy {
        inner: QuestDBLoader::open(&source, &options).await.unwrap(),
        calls: Mutex::new(Vec::new()),
    });
    let (gateway, url) = serve_gateway(None).await;

    // An empty live source: the run ends once its warm-up is done.
    let live = scratch("live.jsonl");
    std::fs::write(&live, "").unwrap();
    let end = BASE + ROWS * 3600;
    let report = Runner::dryrun(MomentumStrategy::default())
        .gateway_url(&url)
        .backfill_loader(None, spy.clone())
        .backfill_end(end)
        .live_source(qmtl::live::LiveSpec::Jsonl(live))
        .run()
        .await
        .unwrap();
    gateway.shutdown_handle().shutdown();

    let calls = spy.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let (method, start, call_end, count) = calls[0];
    assert_eq!((method, call_end), ("fetch_last", end), "{calls:?}");
    assert_eq!(count as i64, (end - start) / 3600, "{calls:?}");
    let job = &report.jobs[0];
    assert_eq!(job.rows, count, "{:?}", report.jobs);
    assert!(
        count < 1000,
        "a warm-up needs far fewer rows than the table's {ROWS}"
    );
    let bars_node = report.node("bars").unwrap();
    assert_eq!(bars_node.rows_loaded, count);
    assert_eq!(bars_node.last_ts, Some(end - 3600));
    assert!(
        report.nodes.iter().all(|n| n.ready),
        "the newest rows are enough for every node to be ready: {:?}",
        report.nodes
    );
}

//! A run registered with a gateway (`dryrun` and `live`): register the DAG, apply the
//! queue map, backfill, replay the warm-up, then process live rows until the live source
//! ends or the run is cancelled, and end the registration however the run ends. While
//! the run lives its registration's lease is renewed (see
//! [`GatewayClient::keep_alive`]).
//!
//! Without an explicit start the range is the warm-up's own, and each feed asks its
//! loader for only the newest rows its warm-up replays ([`CacheLoader::fetch_last`]: a
//! stream's warm-up span in intervals, twice the period for a queue), so the time to
//! ready does not grow with the history the source holds. An explicit start asks for the
//! whole range to be replayed, and recorded, so it is loaded whole.
//!
//! The queue map decides what executes here. A processing node that another active
//! strategy computes does not execute: it becomes a feed whose rows (its history and its
//! live rows) are read from its queue, which in this version is the history table,
//! rows keyed by the node id. A tag query node gets one input per matched queue, with
//! the payload fields found in the table for that queue. Streams are always feeds.
//!
//! Queues live in one database, the *queue store*: the `--record-to` database and table
//! when given, else the first `questdb:` / `postgres:` backfill source and the backfill
//! table. Every node that executes here (every node except streams and nodes read from
//! a queue; with a JSON-lines live source, streams too) is recorded there as it
//! produces rows, warm-up included, so that other strategies can read it as a queue:
//! the warm-up is replayed in slices of [`REPLAY_SLICE_ROWS`] rows per feed and each
//! slice's outputs are written before the next is replayed; live outputs are written at
//! the end of every live cycle (at least once per poll interval) and at shutdown. Without
//! a queue store nothing is recorded, and a warning says that strategies mapping these
//! nodes will get no rows.
//!
//! The run rides out a restart of the queue store's database: the table follower tries
//! failed polls again from the same watermark, and the recorder keeps unwritten rows in
//! memory and writes them once the database is back (bounded by
//! [`crate::recorder::OUTAGE_LIMIT`] and [`crate::recorder::MAX_WAITING_ROWS`]; past
//! them the run fails). While more than [`crate::recorder::PAUSE_ROWS`] rows wait, the
//! warm-up replay and the live loop stop producing and wait for the database, so a
//! restart during a long warm-up delays the run instead of failing it (the limits are
//! [`Runner::record_limits`]; an attempt to write is given at most the run's request
//! timeout). At shutdown what is left is written with a deadline of
//! [`FINAL_WRITE_SIGNALLED`] after a signal (so the process still exits promptly) or
//! [`FINAL_WRITE`] when the live source ended; rows that cannot be written by then fail
//! the run with an error naming how many were not recorded.
//!
//! A run that fails once its warm-up has begun still writes its report (with the error
//! in `error`) before returning the error.
//!
//! After a clean stop every output the run computed (the report's `outputs` of each
//! recorded node, warm-up and live) is in the table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Array, RecordBatch};

use super::{
    build_report, export_cache_reads, open_once, warmup_spans, PlanEntry, RunError, Runner,
};
use crate::batch::Columns;
use crate::cache::BulkRows;
use crate::dag::Dag;
use crate::engine::{BackfillJob, ChunkSink, JobStatus, SinkError};
use crate::gateway_client::{GatewayClient, QueueTarget, Registration, RunType};
use crate::live::{JsonlSource, LiveBatch, LiveFeed, LiveSource, LiveSpec, TableFollower};
use crate::loader::CacheLoader;
use crate::node::{NodeId, NodeSpec, NodeType};
use crate::recorder::{OutputBuffer, RecordLimits, Recorded, Recorder};
use crate::replay::{replay_feeds, Executor, Feed, ReplayError};
use crate::report::{Report, Timings};
use crate::sources::{SourceMap, SourceOptions, SourceSpec, DEFAULT_TABLE};
use crate::time::Timestamp;
use crate::Mode;

/// How long ending the registration may take at shutdown.
const END_TIMEOUT: Duration = Duration::from_millis(1500);

/// Input rows per feed in one slice of the warm-up replay; the outputs of a slice are
/// recorded before the next slice is replayed.
pub const REPLAY_SLICE_ROWS: usize = 4096;

/// How long the last write may keep trying a failing database after a signal.
pub const FINAL_WRITE_SIGNALLED: Duration = Duration::from_millis(800);

/// How long the last write may keep trying a failing database when the live source ended.
pub const FINAL_WRITE: Duration = Duration::from_secs(30);

/// Ends a registration, best effort: a failure is logged, never returned.
pub(super) async fn end_registration(client: &GatewayClient, strategy_id: &str) {
    match tokio::time::timeout(END_TIMEOUT, client.end(strategy_id)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(
            gateway_url = %client.url(), strategy_id, error = %error, "gateway.end_failed"
        ),
        Err(_) => tracing::warn!(
            gateway_url = %client.url(), strategy_id, timeout_ms = END_TIMEOUT.as_millis() as u64,
            "gateway.end_timed_out"
        ),
    }
}

/// One feed of the run: where its rows come from and where they enter the DAG.
struct FeedPlan {
    feed: LiveFeed,
    target: Feed,
    /// The stream's node index, for a stream (its own cache takes the rows too).
    stream: Option<usize>,
    loader: Arc<dyn CacheLoader>,
    start: Timestamp,
    /// The rows the warm-up needs, when the range is the warm-up's own (no explicit
    /// start): only the newest this many of `[start, end)` are fetched when the loader
    /// can select them. An explicit start asks for the whole range to be replayed (and
    /// recorded), so it is loaded whole.
    newest: Option<u64>,
}

/// One resolved input of a tag query node: (queue id, interval, fields).
type TagInput = (NodeId, crate::Interval, Arc<[String]>);

/// The database and table queues are read from and recorded to.
struct QueueStore {
    spec: SourceSpec,
    table: String,
}

/// Runs a dryrun or live strategy; see the module docs.
pub(super) async fn run(runner: Runner, dag: Dag) -> Result<Report, RunError> {
    let url = runner.gateway_url.clone().unwrap_or_default();
    let client = GatewayClient::new(&url)?
        .token(runner.gateway_token.clone())
        .stop_retrying_on(runner.cancel.clone());

    // Open everything that can fail on bad input before registering.
    let loaders = runner.open_sources(&dag).await?;
    let store = queue_store(&runner)?;
    let recorder = match &store {
        Some(store) => Some(open_store_recorder(store).await?),
        None => None,
    };

    // Register; from here on the registration is ended however the run ends.
    let run_type = if runner.mode == Mode::Live {
        RunType::Live
    } else {
        RunType::DryRun
    };
    let registration = client.register(&dag, run_type).await?;
    let id = registration.strategy_id.clone();
    let heartbeat = client.keep_alive(&registration);
    let result = run_registered(&runner, &dag, loaders, store, recorder, &registration).await;
    drop(heartbeat);
    end_registration(&client, &id).await;

    // Write the report, also for a run that failed once its warm-up began (with the
    // error in it), so that its counts are not lost.
    let (mut report, failure) = match result {
        Ok(report) => (report, None),
        Err(Failed {
            report: Some(report),
            error,
        }) => (*report, Some(error)),
        Err(Failed {
            report: None,
            error,
        }) => return Err(error),
    };
    report.live.strategy_id = Some(id);
    report.live.error = failure.as_ref().map(ToString::to_string);
    let written = match &runner.report_json {
        Some(path) => report.write_json(path).map_err(|source| RunError::Report {
            path: path.clone(),
            source,
        }),
        None => Ok(()),
    };
    match (failure, written) {
        (None, written) => written.map(|()| report),
        (Some(error), Ok(())) => Err(error),
        (Some(error), Err(unwritten)) => {
            tracing::error!(error = %unwritten, "report.write_failed");
            Err(error)
        }
    }
}

/// A run that failed after registering: the error, and when the warm-up had begun, the
/// report of what the run did until then.
struct Failed {
    report: Option<Box<Report>>,
    error: RunError,
}

impl From<RunError> for Failed {
    fn from(error: RunError) -> Self {
        Failed {
            report: None,
            error,
        }
    }
}

/// The queue store, by the rule in the module docs.
fn queue_store(runner: &Runner) -> Result<Option<QueueStore>, RunError> {
    if let Some(settings) = runner.record.as_ref().filter(|s| !s.spec.is_empty()) {
        let spec = settings.spec.parse::<SourceSpec>()?;
        return Ok(Some(QueueStore {
            spec,
            table: settings.table.clone(),
        }));
    }
    let texts: Vec<String> = runner
        .sources
        .iter()
        .filter_map(|arg| match arg {
            super::SourceArg::Spec { stream: None, text } => Some(text.clone()),
            super::SourceArg::Spec {
                stream: Some(s),
                text,
            } => Some(format!("{s}={text}")),
            super::SourceArg::Loader { .. } => None,
        })
        .collect();
    let map = SourceMap::parse(&texts)?;
    let database = map
        .default
        .iter()
        .chain(map.by_stream.iter().map(|(_, s)| s))
        .find(|s| matches!(s, SourceSpec::Postgres(_)))
        .cloned();
    Ok(database.map(|spec| QueueStore {
        spec,
        table: runner
            .backfill_table
            .clone()
            .unwrap_or_else(|| DEFAULT_TABLE.to_owned()),
    }))
}

async fn open_store_recorder(store: &QueueStore) -> Result<Recorder, RunError> {
    let SourceSpec::Postgres(source) = &store.spec else {
        return Err(RunError::Record {
            spec: store.spec.to_string(),
            source: crate::recorder::RecordError::NotADatabase {
                spec: store.spec.to_string(),
            },
        });
    };
    Recorder::connect(source, &store.table)
        .await
        .map_err(|source| RunError::Record {
            spec: store.spec.to_string(),
            source,
        })
}

/// Everything after registration: plan, backfill, replay, live.
async fn run_registered(
    runner: &Runner,
    dag: &Dag,
    loaders: Vec<Arc<dyn CacheLoader>>,
    store: Option<QueueStore>,
    mut recorder: Option<Recorder>,
    registration: &Registration,
) -> Result<Report, Failed> {
    // Resolve the range.
    let (explicit_start, end) = runner.resolve_range()?;
    let warmup = warmup_spans(dag);
    let start_of = |span: i64, interval: crate::Interval| {
        explicit_start.unwrap_or_else(|| warmup_start(end, span, interval))
    };
    let warmup_only = explicit_start.is_none();
    if let Some(start) = explicit_start.filter(|s| *s >= end) {
        return Err(RunError::EmptyRange {
            start,
            start_h: crate::time::format_timestamp(start),
            end,
            end_h: crate::time::format_timestamp(end),
        }
        .into());
    }

    // Plan the feeds: streams, nodes computed elsewhere, tag queries' queues.
    let mut queue_loader: Option<Arc<dyn CacheLoader>> = None;
    let mut feeds: Vec<FeedPlan> = Vec::new();
    let mut external: HashMap<usize, String> = HashMap::new();
    let mut tag_inputs: Vec<(usize, Vec<TagInput>)> = Vec::new();
    let mut streams = dag.streams().zip(&loaders);
    for (index, node) in dag.nodes().iter().enumerate() {
        let target = registration.queue_map.get(&node.id);
        match node.node_type {
            NodeType::StreamInput => {
                let (spec, loader) = streams.next().expect("one loader per stream");
                let span = warmup.get(&spec.id).copied().unwrap_or(0);
                feeds.push(FeedPlan {
                    feed: live_feed(node),
                    target: Feed::Node(index),
                    stream: Some(index),
                    loader: loader.clone(),
                    start: start_of(span, node.interval),
                    newest: warmup_only.then(|| rows_in(span, node.interval)),
                });
            }
            NodeType::Node => {
                let Some(QueueTarget::Queue(queue)) = target else {
                    continue;
                };
                let loader = open_queue_loader(&mut queue_loader, &store, node, queue).await?;
                let mut feed = live_feed(node);
                feed.node_id = NodeId::from_hex(queue.as_str());
                feeds.push(FeedPlan {
                    feed,
                    target: Feed::Node(index),
                    stream: None,
                    loader,
                    start: start_of(
                        2 * node.period as i64 * node.interval.secs_i64(),
                        node.interval,
                    ),
                    newest: warmup_only.then_some(2 * node.period as u64),
                });
                external.insert(index, queue.clone());
            }
            NodeType::TagQueryNode => {
                let queues = match target {
                    Some(QueueTarget::Queues(q)) => q.as_slice(),
                    _ => &[],
                };
                if queues.is_empty() {
                    tracing::warn!(
                        node_id = %node.id, name = %node.name, "tag_query.no_queues"
                    );
                    continue;
                }
                let loader = open_queue_loader(&mut queue_loader, &store, node, &queues[0]).await?;
                let span = 2 * node.period as i64 * node.interval.secs_i64();
                let start = start_of(span, node.interval);
                let mut inputs = Vec::new();
                for queue in queues {
                    let id = NodeId::from_hex(queue.as_str());
                    let Some(fields) = probe_fields(&*loader, &id, node, start, end).await else {
                        tracing::warn!(
                            node_id = %node.id, queue = %queue, start, end,
                            "tag_query.queue_without_rows_skipped"
                        );
                        continue;
                    };
                    let slot = inputs.len();
                    inputs.push((id.clone(), node.interval, fields.clone()));
                    feeds.push(FeedPlan {
                        feed: LiveFeed {
                            name: queue.clone(),
                            node_id: id,
                            interval: node.interval,
                            fields,
                        },
                        target: Feed::Input { node: index, slot },
                        stream: None,
                        loader: loader.clone(),
                        start,
                        newest: warmup_only.then_some(2 * node.period as u64),
                    });
                }
                tracing::info!(
                    node_id = %node.id, name = %node.name, queues = inputs.len(),
                    "tag_query.resolved"
                );
                tag_inputs.push((index, inputs));
            }
        }
    }
    let plan: Vec<PlanEntry> = feeds
        .iter()
        .map(|f| PlanEntry {
            name: f.feed.name.clone(),
            node_id: f.feed.node_id.to_string(),
            interval: f.feed.interval,
            start: f.start,
            end,
            source: f.loader.describe(),
        })
        .collect();
    runner.show_plan(&plan);

    // Serve metrics for the length of the run.
    let (metrics, _server) = runner.serve_metrics().await?;
    if let Some(recorder) = &mut recorder {
        recorder.set_waiting_gauge(metrics.recorder_rows_waiting.clone());
        recorder.set_limits(run_record_limits(runner));
    }

    // Backfill every feed.
    let began = Instant::now();
    let jobs: Vec<BackfillJob> = feeds
        .iter()
        .map(|f| BackfillJob {
            node_id: f.feed.node_id.clone(),
            name: f.feed.name.clone(),
            interval: f.feed.interval,
            start: f.start,
            end,
            fields: f.feed.fields.clone(),
            loader: f.loader.clone(),
            newest: f.newest,
        })
        .collect();
    let sink = Arc::new(FeedSink::new(&feeds));
    let job_reports = runner.backfill(jobs, &metrics, sink.clone()).await;
    let backfill_s = began.elapsed().as_secs_f64();
    let history = sink.take();

    // Build the executor: external nodes, resolved tag queries, stream caches.
    let mut exec = Executor::new(dag, runner.on_missing);
    exec.set_cancel(runner.cancel.clone());
    exec.track_reads(runner.track_reads);
    for &index in external.keys() {
        exec.set_external(index);
    }
    for (index, inputs) in &tag_inputs {
        exec.set_tag_inputs(*index, inputs);
    }
    for (f, columns) in feeds.iter().zip(&history) {
        if let Some(index) = f.stream {
            let cols: Vec<&[f64]> = columns.values.iter().map(Vec::as_slice).collect();
            let rows = BulkRows {
                ts: &columns.ts,
                columns: &cols,
            };
            let id = &f.feed.node_id;
            if let Err(error) =
                exec.cache_mut(index)
                    .backfill_bulk(id, f.feed.interval, rows, (f.start, end))
            {
                tracing::error!(node_id = %id, error = %error, "backfill.merge_failed");
            }
        }
    }
    let recorded = recorded_nodes(runner, dag, &exec)?;
    let buffer = OutputBuffer::new(&recorded.iter().collect::<Vec<_>>());
    match &recorder {
        Some(_) => exec.set_output_sink(Box::new(buffer.clone())),
        None if !recorded.is_empty() => tracing::warn!(
            nodes = recorded.len(),
            "record.no_queue_store_others_get_no_rows"
        ),
        None => {}
    }

    // Replay the warm-up when every job completed, slice by slice, recording what each
    // slice produced (waiting for the recorder whenever too many rows wait for a failing
    // database). A signal during the warm-up replay stops the run cleanly, like one
    // during the backfill: what was replayed is recorded and reported. Whatever ends the
    // replay, the live phase or the last write, the report says what the run did.
    let all_completed = job_reports.iter().all(|j| j.status == JobStatus::Completed);
    let mut events = 0;
    let mut replay_s = 0.0;
    let mut outputs_after_replay = None;
    let mut live = crate::report::LiveFigures::default();
    let mut spare: Vec<Recorded> = Vec::new();
    let outcome = async {
        let began = Instant::now();
        if all_completed {
            let inputs: Vec<(Feed, &Columns)> =
                feeds.iter().map(|f| f.target).zip(history.iter()).collect();
            let mut slices = ReplaySlices::new(&inputs);
            while !runner.cancel.is_cancelled() && slices.advance(REPLAY_SLICE_ROWS) {
                let pushed_before: Vec<u64> = stream_outputs(&exec, &feeds);
                let (done, cancelled) = match replay_feeds(&mut exec, &slices.current()) {
                    Ok(n) => (n, false),
                    Err(ReplayError::Cancelled { events }) => (events, true),
                    Err(e) => return Err(e.into()),
                };
                events += done;
                // Streams emit nothing to the buffer: keep the rows the slice pushed.
                let pushed = stream_outputs(&exec, &feeds);
                for ((f, slice), (before, after)) in feeds
                    .iter()
                    .zip(&slices.scratch)
                    .zip(pushed_before.iter().zip(&pushed))
                {
                    let rows = (after - before) as usize;
                    buffer.push_columns(&f.feed.node_id, slice, 0..rows.min(slice.len()));
                }
                if let Some(recorder) = &mut recorder {
                    record_cycle(
                        recorder,
                        &buffer,
                        &mut spare,
                        store.as_ref(),
                        &runner.cancel,
                    )
                    .await?;
                }
                if cancelled {
                    break;
                }
            }
        }
        replay_s = began.elapsed().as_secs_f64();
        if let Some(recorder) = &mut recorder {
            record_cycle(
                recorder,
                &buffer,
                &mut spare,
                store.as_ref(),
                &runner.cancel,
            )
            .await?;
        }
        outputs_after_replay = Some(total_outputs(&exec));

        // Follow live rows until the source ends or the run is cancelled.
        if all_completed && !runner.cancel.is_cancelled() {
            let watermarks: Vec<Timestamp> = feeds
                .iter()
                .zip(&job_reports)
                .map(|(f, job)| {
                    let step = f.feed.interval.secs_i64();
                    match job.last_ts {
                        Some(last) => f.feed.interval.bucket(last),
                        None => f.feed.interval.bucket(f.start).saturating_sub(step),
                    }
                })
                .collect();
            let live_feeds: Vec<LiveFeed> = feeds.iter().map(|f| f.feed.clone()).collect();
            let mut source: Box<dyn LiveSource> = match &runner.live {
                LiveSpec::Table => Box::new(TableFollower::new(
                    feeds
                        .iter()
                        .zip(&watermarks)
                        .map(|(f, w)| (f.feed.clone(), f.loader.clone(), *w))
                        .collect(),
                    runner.poll_interval,
                )),
                LiveSpec::Jsonl(path) => {
                    Box::new(JsonlSource::open(path, &live_feeds, runner.poll_interval)?)
                }
            };
            tracing::info!(
                strategy = %runner.strategy_name, source = %source.describe(), feeds = feeds.len(),
                poll_ms = runner.poll_interval.as_millis() as u64, "live.start"
            );
            let mut last = watermarks;
            let mut batch = LiveBatch::new(&live_feeds);
            // Rows of another strategy's queue arrive on its schedule: stream rows wait until
            // every queue has caught up with their time, so a node reading both computes once,
            // on the values of that time. Pending rows live in reused buffers.
            let gates: Vec<bool> = feeds
                .iter()
                .map(|f| f.stream.is_none() && matches!(f.target, Feed::Node(_)))
                .collect();
            let mut pending: Vec<(Timestamp, usize, usize)> = Vec::new();
            let mut pending_values: Vec<f64> = Vec::new();
            loop {
                batch.clear();
                let more = tokio::select! {
                    biased;
                    () = runner.cancel.cancelled() => false,
                    more = source.next_batch(&mut batch) => more?,
                };
                batch.sort();
                for (f, ts, values) in batch.iter() {
                    let bucket = feeds[f].feed.interval.bucket(ts);
                    if bucket <= last[f] {
                        live.live_duplicates += 1;
                        continue;
                    }
                    last[f] = bucket;
                    pending.push((ts, f, pending_values.len()));
                    pending_values.extend_from_slice(values);
                }

                // Process, in time order, the rows every queue has caught up with (all of
                // them once the source has ended).
                let ready_until = if more {
                    feeds
                        .iter()
                        .zip(&gates)
                        .zip(&last)
                        .filter(|((_, gate), _)| **gate)
                        .map(|((f, _), b)| b.saturating_add(f.feed.interval.secs_i64() - 1))
                        .min()
                        .unwrap_or(Timestamp::MAX)
                } else {
                    Timestamp::MAX
                };
                pending.sort_by_key(|&(ts, f, at)| (ts, f, at));
                let ready = pending.partition_point(|&(ts, _, _)| ts <= ready_until);
                let mut staged: Option<Timestamp> = None;
                for &(ts, f, at) in &pending[..ready] {
                    let plan = &feeds[f];
                    let values = &pending_values[at..at + plan.feed.fields.len()];
                    if let Some(previous) = staged.filter(|p| *p != ts) {
                        exec.compute(previous)?;
                    }
                    if let Some(index) = plan.stream {
                        exec.cache_mut(index).append(0, ts, values);
                        buffer.push_row(&plan.feed.node_id, ts, values);
                    }
                    exec.stage(plan.target, ts, values);
                    staged = Some(ts);
                    live.live_events += 1;
                }
                if let Some(ts) = staged {
                    exec.compute(ts)?;
                }
                pending.drain(..ready);
                if pending.is_empty() {
                    pending_values.clear();
                }

                if let Some(recorder) = &mut recorder {
                    record_cycle(
                        recorder,
                        &buffer,
                        &mut spare,
                        store.as_ref(),
                        &runner.cancel,
                    )
                    .await?;
                }
                if !more {
                    break;
                }
            }
            tracing::info!(
                strategy = %runner.strategy_name, live_events = live.live_events,
                live_duplicates = live.live_duplicates, cancelled = runner.cancel.is_cancelled(),
                "live.stopped"
            );
        }

        // Write what is left, waiting only briefly for a failing database after a signal
        // (also when the signal comes during a longer last write).
        if let Some(recorder) = &mut recorder {
            buffer.swap_out(&mut spare);
            let fail = |source| record_error(store.as_ref(), source);
            recorder.buffer_recorded(spare.iter()).map_err(fail)?;
            let mut written = None;
            if !runner.cancel.is_cancelled() {
                written = tokio::select! {
                    biased;
                    result = recorder.finish(FINAL_WRITE) => Some(result),
                    () = runner.cancel.cancelled() => None,
                };
            }
            let written = match written {
                Some(result) => result,
                None => recorder.finish(FINAL_WRITE_SIGNALLED).await,
            };
            written.map_err(fail)?;
            tracing::info!(rows = recorder.written(), "recorder.finished");
        }
        Ok::<(), RunError>(())
    }
    .await;
    live.live_outputs =
        outputs_after_replay.map_or(0, |after| total_outputs(&exec).saturating_sub(after));

    if runner.track_reads {
        export_cache_reads(&exec, &metrics);
    }

    // Report.
    let mut report = build_report(
        &runner.strategy_name,
        runner.mode,
        &exec,
        job_reports,
        events,
        Timings {
            backfill_s,
            replay_s,
        },
    );
    for (index, queue) in &external {
        let node = &mut report.nodes[*index];
        node.queue = Some(queue.clone());
        node.rows_loaded = report
            .jobs
            .iter()
            .filter(|j| j.node_id.as_str() == queue.as_str())
            .map(|j| j.rows)
            .sum();
    }
    report.live = live;
    tracing::info!(
        strategy = %runner.strategy_name, mode = %runner.mode, events,
        live_events = report.live.live_events, backfill_s, replay_s,
        succeeded = report.succeeded() && outcome.is_ok(), "run.complete"
    );
    match outcome {
        Ok(()) => Ok(report),
        Err(error) => Err(Failed {
            report: Some(Box::new(report)),
            error,
        }),
    }
}

/// The rows of one interval each that fit in `span` seconds: what a warm-up of that span
/// replays.
fn rows_in(span: i64, interval: crate::Interval) -> u64 {
    let step = interval.secs_i64().max(1);
    (span.max(0).saturating_add(step - 1) / step) as u64
}

/// The start of a warm-up of `span` seconds ending at `end` for a feed at `interval`:
/// the span's whole buckets before the bucket `end` falls in, which is still filling,
/// plus that bucket. Counting back from `end` itself would cut the oldest bucket short
/// and, when the newest row is the last completed bucket's, give the warm-up one row
/// fewer than a node's period needs.
fn warmup_start(end: Timestamp, span: i64, interval: crate::Interval) -> Timestamp {
    interval.bucket(end).saturating_sub(span.max(0))
}

fn live_feed(node: &NodeSpec) -> LiveFeed {
    LiveFeed {
        name: node.name.clone(),
        node_id: node.id.clone(),
        interval: node.interval,
        fields: node.fields.clone().into(),
    }
}

/// Rows pushed so far by each feed that is a stream (0 for other feeds).
fn stream_outputs(exec: &Executor, feeds: &[FeedPlan]) -> Vec<u64> {
    feeds
        .iter()
        .map(|f| f.stream.map_or(0, |index| exec.stats(index).outputs))
        .collect()
}

fn total_outputs(exec: &Executor) -> u64 {
    (0..exec.nodes().len())
        .filter(|&i| exec.nodes()[i].node_type != NodeType::StreamInput && !exec.is_external(i))
        .map(|i| exec.stats(i).outputs)
        .sum()
}

async fn open_queue_loader(
    opened: &mut Option<Arc<dyn CacheLoader>>,
    store: &Option<QueueStore>,
    node: &NodeSpec,
    queue: &str,
) -> Result<Arc<dyn CacheLoader>, RunError> {
    if let Some(loader) = opened {
        return Ok(loader.clone());
    }
    let Some(store) = store else {
        return Err(RunError::NoQueueStore {
            node: node.name.clone(),
            queue: queue.to_owned(),
        });
    };
    let options = SourceOptions {
        table: store.table.clone(),
    };
    let loader = open_once(&mut HashMap::new(), &store.spec, &options).await?;
    *opened = Some(loader.clone());
    Ok(loader)
}

/// The payload fields a tag query's queue carries: the table's numeric columns holding
/// at least one value for the queue in the range. `None` when the queue has no rows.
async fn probe_fields(
    loader: &dyn CacheLoader,
    queue: &NodeId,
    node: &NodeSpec,
    start: Timestamp,
    end: Timestamp,
) -> Option<Arc<[String]>> {
    let batch: RecordBatch = match loader.fetch(start, end, queue, node.interval).await {
        Ok(batch) => batch,
        Err(error) => {
            tracing::warn!(queue = %queue, error = %error, "tag_query.probe_failed");
            return None;
        }
    };
    if batch.num_rows() == 0 {
        return None;
    }
    let fields: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, c)| !f.name().eq_ignore_ascii_case("ts") && c.null_count() < c.len())
        .map(|(f, _)| f.name().clone())
        .take(crate::row::MAX_FIELDS)
        .collect();
    (!fields.is_empty()).then(|| fields.into())
}

/// The nodes recorded as queues: every node executing here except streams (streams too
/// with a JSON-lines live source), plus any `--record-nodes`.
fn recorded_nodes(runner: &Runner, dag: &Dag, exec: &Executor) -> Result<Vec<NodeSpec>, RunError> {
    let jsonl = matches!(runner.live, LiveSpec::Jsonl(_));
    let mut chosen: Vec<NodeSpec> = dag
        .nodes()
        .iter()
        .enumerate()
        .filter(|(i, n)| !exec.is_external(*i) && (jsonl || n.node_type != NodeType::StreamInput))
        .map(|(_, n)| n.clone())
        .collect();
    if let Some(settings) = &runner.record {
        for name in &settings.nodes {
            let Some(node) = dag.by_name(name) else {
                return Err(RunError::UnknownRecordNode {
                    name: name.clone(),
                    known: dag
                        .nodes()
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            if !chosen.iter().any(|n| n.id == node.id) {
                chosen.push(node.clone());
            }
        }
    }
    Ok(chosen)
}

/// Writes what the recorded nodes produced since the previous cycle, riding out a
/// database outage ([`Recorder::record`]), and holds the producer back while too many
/// rows wait for the database ([`Recorder::make_room`]).
async fn record_cycle(
    recorder: &mut Recorder,
    buffer: &OutputBuffer,
    spare: &mut Vec<Recorded>,
    store: Option<&QueueStore>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), RunError> {
    buffer.swap_out(spare);
    // The rows are buffered before the first await; a signal cuts the write (or the wait)
    // short, and what it had not finished is written by the run's last write.
    let write = async {
        recorder.record(spare.iter()).await?;
        recorder.make_room().await
    };
    tokio::select! {
        biased;
        result = write => result.map_err(|source| record_error(store, source)),
        () = cancel.cancelled() => Ok(()),
    }
}

/// The recorder limits of a run: the runner's, with an attempt to write given at most
/// the run's request timeout.
fn run_record_limits(runner: &Runner) -> RecordLimits {
    let limits = runner.record_limits;
    match runner.config.request_timeout {
        Some(timeout) => limits.write_timeout(limits.write_timeout.min(timeout)),
        None => limits,
    }
}

fn record_error(store: Option<&QueueStore>, source: crate::recorder::RecordError) -> RunError {
    RunError::Record {
        spec: store.map_or_else(String::new, |s| s.spec.to_string()),
        source,
    }
}

/// Cuts the warm-up's feeds into consecutive slices of time, each holding at most about
/// `rows` rows per feed and never splitting the rows of one time, so that replaying the
/// slices one after another is the same as replaying the feeds at once.
struct ReplaySlices<'a> {
    feeds: &'a [(Feed, &'a Columns)],
    cursors: Vec<usize>,
    scratch: Vec<Columns>,
}

impl<'a> ReplaySlices<'a> {
    fn new(feeds: &'a [(Feed, &'a Columns)]) -> Self {
        ReplaySlices {
            feeds,
            cursors: vec![0; feeds.len()],
            scratch: feeds
                .iter()
                .map(|(_, c)| Columns {
                    ts: Vec::new(),
                    values: vec![Vec::new(); c.values.len()],
                })
                .collect(),
        }
    }

    /// Moves to the next slice; `false` when every row has been handed out.
    fn advance(&mut self, rows: usize) -> bool {
        // The slice ends before the earliest time found `rows` rows ahead in any feed;
        // when rows of that one time fill a whole slice, it ends after them.
        let bound = self
            .feeds
            .iter()
            .zip(&self.cursors)
            .filter_map(|((_, c), &at)| c.ts.get(at + rows).copied())
            .min();
        let ends = |inclusive: bool| -> Vec<usize> {
            self.feeds
                .iter()
                .zip(&self.cursors)
                .map(|((_, c), &at)| match bound {
                    None => c.ts.len(),
                    Some(b) => at + c.ts[at..].partition_point(|&t| t < b || (inclusive && t == b)),
                })
                .collect()
        };
        let mut until = ends(false);
        if until.iter().zip(&self.cursors).all(|(e, at)| e == at) {
            until = ends(true);
        }
        if until.iter().zip(&self.cursors).all(|(e, at)| e == at) {
            return false;
        }

        // Copy the slice's rows into the scratch columns.
        for (k, ((_, from), into)) in self.feeds.iter().zip(&mut self.scratch).enumerate() {
            let range = self.cursors[k]..until[k];
            into.ts.clear();
            into.ts.extend_from_slice(&from.ts[range.clone()]);
            for (column, source) in into.values.iter_mut().zip(&from.values) {
                column.clear();
                column.extend_from_slice(&source[range.clone()]);
            }
        }
        self.cursors = until;
        true
    }

    /// The current slice, as replay inputs.
    fn current(&self) -> Vec<(Feed, &Columns)> {
        self.feeds
            .iter()
            .map(|(feed, _)| *feed)
            .zip(self.scratch.iter())
            .collect()
    }
}

/// Keeps each feed's backfilled rows, in order, for the cache merge and the replay.
struct FeedSink {
    history: std::sync::Mutex<Vec<Columns>>,
}

impl FeedSink {
    fn new(feeds: &[FeedPlan]) -> Self {
        let history = feeds
            .iter()
            .map(|f| Columns {
                ts: Vec::new(),
                values: vec![Vec::new(); f.feed.fields.len()],
            })
            .collect();
        FeedSink {
            history: std::sync::Mutex::new(history),
        }
    }

    fn take(&self) -> Vec<Columns> {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *history)
    }
}

impl ChunkSink for FeedSink {
    fn accept(
        &self,
        job: usize,
        _start: Timestamp,
        _end: Timestamp,
        rows: Columns,
    ) -> Result<(), SinkError> {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let kept = &mut history[job];
        kept.ts.extend_from_slice(&rows.ts);
        for (into, from) in kept.values.iter_mut().zip(&rows.values) {
            into.extend_from_slice(from);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(ts: &[Timestamp]) -> Columns {
        Columns {
            ts: ts.to_vec(),
            values: vec![ts.iter().map(|&t| t as f64).collect()],
        }
    }

    const HOUR: i64 = 3600;

    #[test]
    fn an_automatic_warmup_starts_period_whole_buckets_before_the_current_one() {
        let hour = crate::Interval::from_secs(3600).unwrap();
        let base = 1_700_000_000 - 1_700_000_000 % HOUR;
        // (end, span, start): mid-bucket, on a bucket's first second, one second in.
        let cases = [
            (base + 1800, 3 * HOUR, base - 3 * HOUR),
            (base, 3 * HOUR, base - 3 * HOUR),
            (base + 1, 3 * HOUR, base - 3 * HOUR),
            (base + HOUR - 1, 1, base - 1),
            (base + 1800, 0, base),
        ];
        for (end, span, start) in cases {
            assert_eq!(
                warmup_start(end, span, hour),
                start,
                "end {end}, span {span}"
            );
        }
    }

    #[test]
    fn a_warmup_holds_period_bars_when_the_newest_bar_is_the_last_completed_one() {
        let dag = Dag::build(&crate::strategies::MomentumStrategy::default()).unwrap();
        let bars = dag.streams().find(|s| s.name == "bars").unwrap();
        let span = warmup_spans(&dag)[&bars.id];
        let needed = rows_in(span, bars.interval);
        let slowest = dag.nodes().iter().map(|n| n.period).max().unwrap() as u64;
        assert!(needed >= slowest, "{needed} bars for a period of {slowest}");
        let base = 1_700_000_000 - 1_700_000_000 % HOUR;
        for offset in [0, 1, 1800, HOUR - 1] {
            // Bars up to the last completed hour; the current one has none yet.
            let end = base + offset;
            let start = warmup_start(end, span, bars.interval);
            let newest = bars.interval.bucket(end) - HOUR;
            let held = (start..=newest).step_by(HOUR as usize).count() as u64;
            assert_eq!(held, needed, "end {end}");
        }
    }

    #[test]
    fn a_write_attempt_gets_at_most_the_runs_request_timeout() {
        let strategy = crate::strategies::MomentumStrategy::default;
        let run = |timeout: Option<Duration>| {
            let config = crate::BackfillConfig::default().request_timeout(timeout);
            run_record_limits(&Runner::dryrun(strategy()).backfill_config(config))
        };
        let default = crate::recorder::WRITE_TIMEOUT;
        let short = Duration::from_secs(2);
        assert_eq!(run(Some(short)).write_timeout, short);
        assert_eq!(run(Some(Duration::from_secs(60))).write_timeout, default);
        assert_eq!(run(None).write_timeout, default);
        let limits = RecordLimits::default().write_timeout(Duration::from_secs(1));
        let runner = Runner::dryrun(strategy()).record_limits(limits);
        assert_eq!(run_record_limits(&runner), limits);
    }

    #[test]
    fn replay_slices_hand_out_every_row_once_and_never_split_a_time() {
        let cases: [(&[Timestamp], &[Timestamp], usize); 4] = [
            (&[1, 2, 3, 4, 5, 6, 7], &[2, 4, 6, 8], 2),
            (&[5, 5, 5, 5, 6], &[5, 7], 2),
            (&[], &[1, 2, 3], 1),
            (&[1, 1, 1], &[1, 1], 1),
        ];
        for (a, b, rows) in cases {
            let (a, b) = (columns(a), columns(b));
            let feeds = [(Feed::Node(0), &a), (Feed::Node(1), &b)];
            let mut slices = ReplaySlices::new(&feeds);
            let mut seen: Vec<Vec<Timestamp>> = vec![Vec::new(); 2];
            let mut last_max: Option<Timestamp> = None;
            while slices.advance(rows) {
                let slice = slices.current();
                let times: Vec<Timestamp> = slice
                    .iter()
                    .flat_map(|(_, c)| c.ts.iter().copied())
                    .collect();
                assert!(!times.is_empty());
                let min = *times.iter().min().unwrap();
                assert!(
                    last_max.is_none_or(|m| m < min),
                    "a time split across slices"
                );
                last_max = times.iter().max().copied();
                for (k, (_, c)) in slice.iter().enumerate() {
                    assert_eq!(c.values[0].len(), c.ts.len());
                    seen[k].extend_from_slice(&c.ts);
                }
            }
            assert_eq!(seen, [a.ts.clone(), b.ts.clone()]);
        }
    }
}

//! The DAG executor: pushes stream rows through the nodes in topological order.
//!
//! For each timestamp, the rows of every stream at that time are appended to the caches
//! of the nodes that read them; then each touched node, in declaration order, runs its
//! compute function once (after all of its inputs have taken this timestamp's values).
//! A node computes only when its cache is ready. When an append raised a gap flag, the
//! [`OnMissing`] policy decides: `skip` stores the value but does not compute for that
//! event, `fail` stops with an error naming node, interval and both timestamps,
//! `continue` computes anyway.
//! Emitted rows flow on to the node's consumers within the same event.
//!
//! When a strategy runs with a gateway, some nodes are computed by another strategy:
//! [`Executor::set_external`] turns such a node into a feed (it never computes; its rows
//! are pushed like a stream's), and [`Executor::set_tag_inputs`] gives a tag query node
//! one input per matched queue, fed with [`Executor::push_to`] and [`Feed::Input`].
//!
//! The loop allocates nothing per event.

use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cache::{Appended, NodeCache};
use crate::dag::Dag;
use crate::interval::Interval;
use crate::node::{NodeId, NodeSpec, NodeType};
use crate::row::{Row, MAX_FIELDS};
use crate::time::Timestamp;

/// What a node does when an input skipped a bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMissing {
    /// Store the value, do not compute for that event.
    #[default]
    Skip,
    /// Stop the run with an error.
    Fail,
    /// Compute as if nothing were missing.
    Continue,
}

impl FromStr for OnMissing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "skip" => Ok(OnMissing::Skip),
            "fail" => Ok(OnMissing::Fail),
            "continue" => Ok(OnMissing::Continue),
            _ => Err(format!(
                "on-missing '{s}' is not one of: skip, fail, continue"
            )),
        }
    }
}

/// Why replay stopped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplayError {
    /// A gap under `on_missing = fail`.
    #[error(
        "node '{node}' ({node_id}): input {upstream} at interval {interval} jumped from \
         {previous} to {ts}, skipping buckets (on-missing is fail)"
    )]
    Gap {
        /// The node's name.
        node: String,
        /// The node's id.
        node_id: NodeId,
        /// The upstream id.
        upstream: NodeId,
        /// The upstream interval (seconds).
        interval: Interval,
        /// The previous bucket.
        previous: Timestamp,
        /// The new bucket.
        ts: Timestamp,
    },
    /// The run was cancelled during replay.
    #[error("cancelled after {events} events")]
    Cancelled {
        /// Events replayed before stopping.
        events: u64,
    },
    /// A compute function returned a row of the wrong width.
    #[error("node '{node}' emitted {got} values but declares {want} fields")]
    RowWidth {
        /// The node's name.
        node: String,
        /// Values emitted.
        got: usize,
        /// Fields declared.
        want: usize,
    },
}

/// Counters kept per node during replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Rows emitted (for a stream: rows pushed).
    pub outputs: u64,
    /// Timestamp of the first emitted row.
    pub first_ts: Option<Timestamp>,
    /// Timestamp of the last emitted row.
    pub last_ts: Option<Timestamp>,
    /// Computes skipped because of a gap.
    pub skipped: u64,
}

/// Receives every row a node emits.
pub trait OutputSink: Send {
    /// Called for each emitted row.
    fn emit(&mut self, node: &NodeSpec, ts: Timestamp, row: &Row);
}

/// Where a row enters the DAG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// As the output of node `index` (a stream, or a node computed elsewhere).
    Node(usize),
    /// Into input `slot` of node `node` only (a tag query's matched queue).
    Input {
        /// The consuming node.
        node: usize,
        /// Its input.
        slot: usize,
    },
}

struct PendingGap {
    input: usize,
    previous: Timestamp,
    ts: Timestamp,
}

/// Runs a DAG over pushed stream rows.
pub struct Executor {
    nodes: Vec<NodeSpec>,
    caches: Vec<NodeCache>,
    consumers: Vec<Vec<(usize, usize)>>,
    stats: Vec<NodeStats>,
    /// The bucket of each node's last computed row (spares a division per compute).
    last_bucket: Vec<Option<Timestamp>>,
    touched: Vec<bool>,
    gaps: Vec<Option<PendingGap>>,
    on_missing: OnMissing,
    track_reads: bool,
    external: Vec<bool>,
    wait_all: Vec<bool>,
    sink: Option<Box<dyn OutputSink>>,
    cancel: Option<CancellationToken>,
}

impl Executor {
    /// An executor with empty caches for every node of `dag`.
    pub fn new(dag: &Dag, on_missing: OnMissing) -> Executor {
        let nodes = dag.nodes().to_vec();
        let mut consumers = vec![Vec::new(); nodes.len()];
        let caches = nodes
            .iter()
            .enumerate()
            .map(|(n, spec)| {
                if spec.node_type == NodeType::StreamInput {
                    return NodeCache::for_stream(spec);
                }
                let inputs: Vec<_> = spec
                    .input_indices
                    .iter()
                    .enumerate()
                    .map(|(slot, &u)| {
                        consumers[u].push((n, slot));
                        let up = &nodes[u];
                        (up.id.clone(), up.interval, up.fields.clone().into())
                    })
                    .collect();
                NodeCache::new(spec.id.clone(), spec.period, &inputs)
            })
            .collect();
        let count = nodes.len();
        Executor {
            nodes,
            caches,
            consumers,
            stats: vec![NodeStats::default(); count],
            last_bucket: vec![None; count],
            touched: vec![false; count],
            gaps: (0..count).map(|_| None).collect(),
            on_missing,
            track_reads: false,
            external: vec![false; count],
            wait_all: vec![false; count],
            sink: None,
            cancel: None,
        }
    }

    /// Counts cache reads made by compute functions (see [`crate::cache::InputCache`]).
    pub fn track_reads(&mut self, on: bool) {
        self.track_reads = on;
    }

    /// Sends every emitted row to `sink`.
    pub fn set_output_sink(&mut self, sink: Box<dyn OutputSink>) {
        self.sink = Some(sink);
    }

    /// Marks node `index` as computed elsewhere: it never computes here, its upstreams
    /// no longer deliver to it, and its rows enter with [`Executor::push`].
    ///
    /// # Panics
    /// When `index` is not a node of the DAG.
    #[track_caller]
    pub fn set_external(&mut self, index: usize) {
        assert!(index < self.nodes.len(), "node index {index} out of range");
        self.external[index] = true;
        for consumers in &mut self.consumers {
            consumers.retain(|&(c, _)| c != index);
        }
        // Rows of another strategy arrive on their own schedule: a node reading one waits
        // until every input holds the current bucket, so it computes once, on fresh values.
        for &(c, _) in &self.consumers[index] {
            self.wait_all[c] = true;
        }
    }

    /// Whether node `index` is computed elsewhere.
    pub fn is_external(&self, index: usize) -> bool {
        self.external[index]
    }

    /// Gives tag query node `index` its resolved inputs, (queue id, interval, fields)
    /// each, replacing its (empty) cache; feed them with [`Feed::Input`].
    ///
    /// # Panics
    /// When `index` is not a node of the DAG.
    #[track_caller]
    pub fn set_tag_inputs(&mut self, index: usize, inputs: &[(NodeId, Interval, Arc<[String]>)]) {
        let spec = &self.nodes[index];
        self.caches[index] = NodeCache::new(spec.id.clone(), spec.period, inputs);
    }

    /// The nodes, in topological order.
    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    /// The cache of node `index`.
    pub fn cache(&self, index: usize) -> &NodeCache {
        &self.caches[index]
    }

    /// The cache of node `index`, for merging history.
    pub fn cache_mut(&mut self, index: usize) -> &mut NodeCache {
        &mut self.caches[index]
    }

    /// The counters of node `index`.
    pub fn stats(&self, index: usize) -> NodeStats {
        self.stats[index]
    }

    fn deliver(&mut self, from: usize, ts: Timestamp, values: &[f64]) {
        for k in 0..self.consumers[from].len() {
            let (c, slot) = self.consumers[from][k];
            self.deliver_one(c, slot, ts, values);
        }
    }

    fn record(&mut self, node: usize, ts: Timestamp) {
        let s = &mut self.stats[node];
        s.outputs += 1;
        s.first_ts.get_or_insert(ts);
        s.last_ts = Some(ts);
    }

    /// Pushes one row of stream `stream` (a node index) at `ts` through the DAG. The row
    /// does not enter the stream's own cache (history and live feeds fill that).
    ///
    /// # Errors
    /// [`ReplayError`] for a gap under `fail`, or a compute row of the wrong width.
    pub fn push(
        &mut self,
        stream: usize,
        ts: Timestamp,
        values: &[f64],
    ) -> Result<(), ReplayError> {
        self.record(stream, ts);
        self.deliver(stream, ts, values);
        self.run_from(stream + 1, ts)
    }

    /// Pushes one row at `ts` through the DAG where `feed` says it enters.
    ///
    /// # Errors
    /// As [`Executor::push`].
    pub fn push_to(
        &mut self,
        feed: Feed,
        ts: Timestamp,
        values: &[f64],
    ) -> Result<(), ReplayError> {
        match feed {
            Feed::Node(index) => self.push(index, ts, values),
            Feed::Input { node, slot } => {
                self.deliver_one(node, slot, ts, values);
                self.run_from(node, ts)
            }
        }
    }

    /// Hands one row at `ts` to the caches where `feed` says it enters, without computing:
    /// stage every row of one timestamp, then [`Executor::compute`] once, so a node fed
    /// by several inputs computes once per timestamp on all of its new values.
    pub fn stage(&mut self, feed: Feed, ts: Timestamp, values: &[f64]) {
        match feed {
            Feed::Node(index) => {
                self.record(index, ts);
                self.deliver(index, ts, values);
            }
            Feed::Input { node, slot } => self.deliver_one(node, slot, ts, values),
        }
    }

    /// Computes every node touched by the rows staged at `ts`, in topological order.
    ///
    /// # Errors
    /// As [`Executor::push`].
    pub fn compute(&mut self, ts: Timestamp) -> Result<(), ReplayError> {
        self.run_from(0, ts)
    }

    /// Stops replay at its next check (every few thousand events) when `token` is
    /// cancelled.
    pub fn set_cancel(&mut self, token: CancellationToken) {
        self.cancel = Some(token);
    }

    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }

    fn deliver_one(&mut self, c: usize, slot: usize, ts: Timestamp, values: &[f64]) {
        let cache = &mut self.caches[c];
        let previous = cache.inputs()[slot].ring().last_timestamp();
        match cache.append(slot, ts, values) {
            Appended::New { gap } => {
                self.touched[c] = true;
                if gap && self.gaps[c].is_none() {
                    let previous = previous.unwrap_or(ts);
                    self.gaps[c] = Some(PendingGap {
                        input: slot,
                        previous,
                        ts,
                    });
                }
            }
            Appended::Replaced | Appended::Filled => self.touched[c] = true,
            Appended::Late => {}
        }
    }

    /// Computes every touched node from `first` on, in topological order.
    fn run_from(&mut self, first: usize, ts: Timestamp) -> Result<(), ReplayError> {
        for n in first..self.nodes.len() {
            if !std::mem::take(&mut self.touched[n]) || self.external[n] {
                continue;
            }
            let gap = self.gaps[n].take();
            if let (Some(g), OnMissing::Fail) = (&gap, self.on_missing) {
                let spec = &self.nodes[n];
                let input = &self.caches[n].inputs()[g.input];
                return Err(ReplayError::Gap {
                    node: spec.name.clone(),
                    node_id: spec.id.clone(),
                    upstream: input.upstream().clone(),
                    interval: input.ring().interval(),
                    previous: g.previous,
                    ts: g.ts,
                });
            }
            if !self.caches[n].ready() {
                continue;
            }
            if self.wait_all[n] && !self.caches[n].all_inputs_at(ts) {
                continue;
            }
            if gap.is_some() && self.on_missing == OnMissing::Skip {
                self.stats[n].skipped += 1;
                continue;
            }
            let spec = &self.nodes[n];
            let Some(compute) = &spec.compute else {
                continue;
            };
            let view = if self.track_reads {
                self.caches[n].tracked_view()
            } else {
                self.caches[n].view()
            };
            // Matched by reference: moving the row out of the option would copy it.
            let computed = compute(&view);
            let Some(row) = computed.as_ref() else {
                continue;
            };
            if row.len() != spec.fields.len() {
                return Err(ReplayError::RowWidth {
                    node: spec.name.clone(),
                    got: row.len(),
                    want: spec.fields.len(),
                });
            }
            let out_ts = bucket_after(spec.interval, self.last_bucket[n], ts);
            self.last_bucket[n] = Some(out_ts);
            if let Some(sink) = self.sink.as_mut() {
                sink.emit(spec, out_ts, row);
            }
            self.record(n, out_ts);
            self.deliver(n, out_ts, row.values());
        }
        Ok(())
    }
}

/// The bucket of `ts` at `interval`, without a division when it is `previous` (a bucket)
/// or the one after it, as it nearly always is in a replay.
fn bucket_after(interval: Interval, previous: Option<Timestamp>, ts: Timestamp) -> Timestamp {
    if let Some(previous) = previous {
        let offset = ts.wrapping_sub(previous) as u64;
        let step = interval.secs();
        if ts >= previous && offset < step.saturating_mul(2) {
            return if offset < step {
                previous
            } else {
                previous + interval.secs_i64()
            };
        }
    }
    interval.bucket(ts)
}

/// Replays several streams' columns merged by time; equal times go in stream order.
///
/// `streams` holds `(node index, columns)` pairs.
///
/// # Errors
/// The first [`ReplayError`].
pub fn replay_merged(
    exec: &mut Executor,
    streams: &[(usize, &crate::batch::Columns)],
) -> Result<u64, ReplayError> {
    let feeds: Vec<(Feed, &crate::batch::Columns)> =
        streams.iter().map(|&(n, c)| (Feed::Node(n), c)).collect();
    replay_feeds(exec, &feeds)
}

/// Replays several feeds' columns merged by time. Rows of equal time are staged
/// together (in feed order) and computed once, so no node computes on half of a
/// timestamp's inputs.
///
/// # Errors
/// The first [`ReplayError`]; [`ReplayError::Cancelled`] when the executor's cancel
/// token fires.
pub fn replay_feeds(
    exec: &mut Executor,
    streams: &[(Feed, &crate::batch::Columns)],
) -> Result<u64, ReplayError> {
    const CANCEL_CHECK: u64 = 4096;
    let mut row = [0.0; MAX_FIELDS];

    // One feed: no merging (rows are ascending).
    if let [(feed, cols)] = streams {
        let width = cols.values.len();
        for (i, &ts) in cols.ts.iter().enumerate() {
            for (f, column) in cols.values.iter().enumerate() {
                row[f] = column[i];
            }
            exec.stage(*feed, ts, &row[..width]);
            // Repeated rows of one time: the last one stands, computed once.
            if cols.ts.get(i + 1) != Some(&ts) {
                exec.compute(ts)?;
            }
            if (i as u64 + 1).is_multiple_of(CANCEL_CHECK) && exec.cancelled() {
                return Err(ReplayError::Cancelled {
                    events: i as u64 + 1,
                });
            }
        }
        return Ok(cols.ts.len() as u64);
    }

    let mut cursors = vec![0usize; streams.len()];
    let mut events = 0u64;
    let mut next_check = CANCEL_CHECK;
    loop {
        // The earliest time among the feeds' next rows.
        let next = streams
            .iter()
            .zip(&cursors)
            .filter_map(|((_, cols), &i)| cols.ts.get(i).copied())
            .min();
        let Some(ts) = next else { break };

        // Stage every feed's row at that time, then compute once.
        for (k, (feed, cols)) in streams.iter().enumerate() {
            while cols.ts.get(cursors[k]) == Some(&ts) {
                let i = cursors[k];
                let width = cols.values.len();
                for (f, column) in cols.values.iter().enumerate() {
                    row[f] = column[i];
                }
                exec.stage(*feed, ts, &row[..width]);
                cursors[k] += 1;
                events += 1;
            }
        }
        exec.compute(ts)?;

        if events >= next_check {
            next_check = events + CANCEL_CHECK;
            if exec.cancelled() {
                return Err(ReplayError::Cancelled { events });
            }
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_after_a_previous_one_is_the_bucket_of_the_time() {
        let h = Interval::HOUR;
        let cases = [
            (None, 7_205),
            (Some(3_600), 3_600),
            (Some(3_600), 7_199),
            (Some(3_600), 7_200),
            (Some(3_600), 10_799),
            (Some(3_600), 10_800),
            (Some(3_600), 0),
            (Some(-3_600), -1),
            (Some(-3_600), 1),
            (Some(h.bucket(i64::MAX)), i64::MAX),
            (Some(i64::MIN + 1_000), i64::MAX),
        ];
        for (previous, ts) in cases {
            let previous = previous.map(|p| h.bucket(p));
            assert_eq!(
                bucket_after(h, previous, ts),
                h.bucket(ts),
                "{previous:?} {ts}"
            );
        }
    }
}

//! The DAG executor: pushes stream rows through the nodes in topological order.
//!
//! For each row of a stream, the row is appended to the cache of every node that reads
//! the stream; then each touched node, in declaration order, runs its compute function
//! once (after all of its inputs have taken this event's values). A node computes only
//! when its cache is ready. When an append raised a gap flag, the [`OnMissing`] policy
//! decides: `skip` stores the value but does not compute for that event, `fail` stops
//! with an error naming node, interval and both timestamps, `continue` computes anyway.
//! Emitted rows flow on to the node's consumers within the same event.
//!
//! The loop allocates nothing per event.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

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
    touched: Vec<bool>,
    gaps: Vec<Option<PendingGap>>,
    on_missing: OnMissing,
    track_reads: bool,
    sink: Option<Box<dyn OutputSink>>,
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
            touched: vec![false; count],
            gaps: (0..count).map(|_| None).collect(),
            on_missing,
            track_reads: false,
            sink: None,
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
            let cache = &mut self.caches[c];
            let previous = cache.inputs()[slot].ring().last_timestamp();
            let appended = cache.append(slot, ts, values);
            match appended {
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
                Appended::Replaced => self.touched[c] = true,
                Appended::Late => {}
            }
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
        let mut out = [0.0; MAX_FIELDS];
        for n in stream + 1..self.nodes.len() {
            if !std::mem::take(&mut self.touched[n]) {
                continue;
            }
            let gap = self.gaps[n].take();
            if let (Some(g), OnMissing::Fail) = (&gap, self.on_missing) {
                let spec = &self.nodes[n];
                let up = &self.nodes[spec.input_indices[g.input]];
                return Err(ReplayError::Gap {
                    node: spec.name.clone(),
                    node_id: spec.id.clone(),
                    upstream: up.id.clone(),
                    interval: up.interval,
                    previous: g.previous,
                    ts: g.ts,
                });
            }
            if !self.caches[n].ready() {
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
            let Some(row) = compute(&view) else { continue };
            if row.len() != spec.fields.len() {
                return Err(ReplayError::RowWidth {
                    node: spec.name.clone(),
                    got: row.len(),
                    want: spec.fields.len(),
                });
            }
            let out_ts = spec.interval.bucket(ts);
            if let Some(sink) = self.sink.as_mut() {
                sink.emit(spec, out_ts, &row);
            }
            let width = row.len();
            out[..width].copy_from_slice(row.values());
            self.record(n, out_ts);
            self.deliver(n, out_ts, &out[..width]);
        }
        Ok(())
    }
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
    let mut cursors = vec![0usize; streams.len()];
    let mut row = [0.0; MAX_FIELDS];
    let mut events = 0u64;
    loop {
        // Pick the stream whose next row is earliest; ties go to the first declared.
        let mut best: Option<(usize, Timestamp)> = None;
        for (k, (_, cols)) in streams.iter().enumerate() {
            if let Some(&t) = cols.ts.get(cursors[k]) {
                if best.is_none_or(|(_, bt)| t < bt) {
                    best = Some((k, t));
                }
            }
        }
        let Some((k, ts)) = best else { break };
        let (node, cols) = streams[k];
        let i = cursors[k];
        let width = cols.values.len();
        for (f, column) in cols.values.iter().enumerate() {
            row[f] = column[i];
        }
        exec.push(node, ts, &row[..width])?;
        cursors[k] += 1;
        events += 1;
    }
    Ok(events)
}

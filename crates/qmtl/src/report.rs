//! The run report: what each node loaded and produced and how each backfill job ended.
//! Written as JSON by `--report-json`; tests and benchmarks read it.

use std::path::Path;

use serde::Serialize;

use crate::engine::{JobReport, JobStatus};
use crate::node::{NodeId, NodeType};
use crate::time::Timestamp;

/// Figures for one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// Node id.
    pub node_id: NodeId,
    /// Node name.
    pub name: String,
    /// Node kind.
    pub node_type: NodeType,
    /// Interval in seconds.
    pub interval: u64,
    /// Period.
    pub period: usize,
    /// Rows loaded from history (streams only; 0 for other nodes).
    pub rows_loaded: u64,
    /// First timestamp loaded (streams) or emitted (other nodes).
    pub first_ts: Option<Timestamp>,
    /// Last timestamp loaded (streams) or emitted (other nodes).
    pub last_ts: Option<Timestamp>,
    /// Whether the node's cache held `period` values of every input at the end.
    pub ready: bool,
    /// Gap flags raised in the node's cache.
    pub gaps: u64,
    /// Rows the node emitted (for a stream: rows pushed to its consumers).
    pub outputs: u64,
}

/// Wall-clock phases of the run, in seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timings {
    /// Loading history.
    pub backfill_s: f64,
    /// Replaying it through the DAG.
    pub replay_s: f64,
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Strategy name.
    pub strategy: String,
    /// Mode name.
    pub mode: String,
    /// Per-node figures, in topological order.
    pub nodes: Vec<NodeReport>,
    /// Per-job outcomes.
    pub jobs: Vec<JobReport>,
    /// Stream rows replayed through the DAG.
    pub events: u64,
    /// Phase durations.
    pub timings: Timings,
}

impl Report {
    /// Whether every backfill job completed.
    pub fn succeeded(&self) -> bool {
        self.jobs.iter().all(|j| j.status == JobStatus::Completed)
    }

    /// The jobs that did not complete.
    pub fn failed_jobs(&self) -> impl Iterator<Item = &JobReport> {
        self.jobs
            .iter()
            .filter(|j| j.status != JobStatus::Completed)
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeReport> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Writes the report as pretty JSON to `path` (through a temporary file, so a reader
    /// never sees half a report).
    ///
    /// # Errors
    /// The I/O error of creating or renaming the file.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).expect("reports serialize to JSON");
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, text + "\n")?;
        std::fs::rename(&tmp, path)
    }
}

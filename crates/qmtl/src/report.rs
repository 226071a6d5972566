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
    /// For a node another strategy computes: the queue its rows were read from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

/// What a run registered with a gateway did after its warm-up.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveFigures {
    /// Live rows pushed through the DAG (after the warm-up replay).
    pub live_events: u64,
    /// Rows nodes emitted while processing live rows.
    pub live_outputs: u64,
    /// Live rows dropped because their bucket was not after the last one processed.
    pub live_duplicates: u64,
    /// The strategy id the gateway gave, when the run registered with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy_id: Option<String>,
    /// Why a dryrun or live run failed once its warm-up began (say, outputs it could not
    /// record): the report of such a run is still written, with the error, before the
    /// run returns that error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    /// Live processing (zero for a run without live rows).
    #[serde(flatten)]
    pub live: LiveFigures,
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

    /// Writes the report as pretty JSON to `path`.
    ///
    /// A regular file (or a path that does not exist yet) is replaced atomically: the
    /// report goes to a new, uniquely named file beside it (created exclusively, so no
    /// existing file or link is followed) that is then renamed over the path. Anything
    /// else — a symlink, a FIFO, a device such as `/dev/stdout` — is written through,
    /// never replaced.
    ///
    /// # Errors
    /// The I/O error of writing, syncing or renaming.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;

        let text = serde_json::to_string_pretty(self).expect("reports serialize to JSON") + "\n";
        let replace = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta.file_type().is_file(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(e),
        };
        if !replace {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)?;
            file.write_all(text.as_bytes())?;
            return file.flush();
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
        let tmp_name = format!(
            ".{}.{}.{}.tmp",
            name.as_deref().unwrap_or("report"),
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let tmp = dir.map_or_else(|| tmp_name.clone().into(), |d| d.join(&tmp_name));
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            strategy: "s".into(),
            mode: "backtest".into(),
            nodes: vec![],
            jobs: vec![],
            events: 3,
            timings: Timings::default(),
            live: LiveFigures::default(),
        }
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("qmtl-report-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn replaces_a_regular_file_and_leaves_no_temporary_behind() {
        let d = dir("regular");
        let path = d.join("r.json");
        std::fs::write(&path, "old").unwrap();
        report().write_json(&path).unwrap();
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("\"events\": 3"));
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn writes_through_a_symlink_instead_of_replacing_it() {
        let d = dir("link");
        let target = d.join("real.json");
        std::fs::write(&target, "old").unwrap();
        let link = d.join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        report().write_json(&link).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(std::fs::read_to_string(&target)
            .unwrap()
            .contains("\"events\": 3"));
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_temporary_link_is_not_followed() {
        let d = dir("planted");
        let victim = d.join("victim.txt");
        std::fs::write(&victim, "keep me").unwrap();
        std::os::unix::fs::symlink(&victim, d.join("r.json.tmp")).unwrap();
        report().write_json(&d.join("r.json")).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let err = report()
            .write_json(Path::new("/nonexistent-qmtl/r.json"))
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}

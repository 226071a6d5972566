//! Live rows: what a dryrun or live run processes after its backfill and warm-up replay.
//!
//! A [`LiveSource`] hands the runner batches of rows, each for one [`LiveFeed`] (a
//! stream, a node computed by another strategy, or a queue matched by a tag query),
//! through a reusable [`LiveBatch`]. Strategies never see the source, so a message
//! broker can be added later as another implementation of the trait. Two come with this
//! build, chosen with [`LiveSpec`] (`--live-source` on the command line):
//!
//! - [`TableFollower`] (`table`, the default): polls the history table each feed was
//!   backfilled from for rows newer than the feed's watermark, at least once a second
//!   whatever the interval (configurable).
//! - [`JsonlSource`] (`jsonl:PATH`, `jsonl:-` for stdin): one JSON object per line, for
//!   demos and tests; see [`jsonl`] for the format. The run ends when the input ends.
//!
//! The watermark of a feed is a bucket: the last bucket its backfill loaded (or the
//! bucket before the backfill's start when it loaded none). A source reports rows of
//! later buckets only, and the runner drops any row whose bucket is not after the last
//! one it pushed for that feed, so a row replayed during warm-up is never computed again
//! and no output is emitted twice for one bucket.

pub mod jsonl;
pub mod table;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

pub use self::jsonl::JsonlSource;
pub use self::table::TableFollower;
use crate::batch::BatchError;
use crate::interval::Interval;
use crate::loader::LoaderError;
use crate::node::NodeId;
use crate::time::Timestamp;

/// One sequence of live rows: a stream, or the queue of a node computed elsewhere.
#[derive(Debug, Clone)]
pub struct LiveFeed {
    /// The node's name (for a tag query's queue: the queue id).
    pub name: String,
    /// The node id the rows are kept under (the queue name).
    pub node_id: NodeId,
    /// The rows' interval.
    pub interval: Interval,
    /// The payload fields, in order.
    pub fields: Arc<[String]>,
}

/// Rows of one delivery, reused from one delivery to the next so that steady-state
/// delivery allocates nothing.
#[derive(Debug, Default)]
pub struct LiveBatch {
    rows: Vec<(Timestamp, usize, usize)>,
    values: Vec<f64>,
    widths: Vec<usize>,
}

impl LiveBatch {
    /// An empty batch for rows of `feeds`.
    pub fn new(feeds: &[LiveFeed]) -> Self {
        LiveBatch {
            rows: Vec::new(),
            values: Vec::new(),
            widths: feeds.iter().map(|f| f.fields.len()).collect(),
        }
    }

    /// Forgets the rows, keeping the memory.
    pub fn clear(&mut self) {
        self.rows.clear();
        self.values.clear();
    }

    /// Adds a row of feed `feed` at `ts`.
    ///
    /// # Panics
    /// When `values` does not have one value per field of the feed.
    #[track_caller]
    pub fn push(&mut self, feed: usize, ts: Timestamp, values: &[f64]) {
        assert_eq!(
            values.len(),
            self.widths[feed],
            "a live row needs one value per field of its feed"
        );
        self.rows.push((ts, feed, self.values.len()));
        self.values.extend_from_slice(values);
    }

    /// Orders the rows by time; equal times keep feed order, then arrival order.
    pub fn sort(&mut self) {
        self.rows.sort_by_key(|&(ts, feed, at)| (ts, feed, at));
    }

    /// The rows as (feed, ts, values).
    pub fn iter(&self) -> impl Iterator<Item = (usize, Timestamp, &[f64])> + '_ {
        self.rows
            .iter()
            .map(|&(ts, feed, at)| (feed, ts, &self.values[at..at + self.widths[feed]]))
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Why live rows could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// A poll of the table failed in a way retrying will not cure.
    #[error("following node {node_id} at interval {interval}: {source}")]
    Poll {
        /// The feed's node id.
        node_id: NodeId,
        /// Its interval.
        interval: Interval,
        /// The cause.
        #[source]
        source: LoaderError,
    },
    /// Polled rows did not fit the feed.
    #[error("following node {node_id} at interval {interval}: {source}")]
    Decode {
        /// The feed's node id.
        node_id: NodeId,
        /// Its interval.
        interval: Interval,
        /// The cause.
        #[source]
        source: BatchError,
    },
    /// The JSON-lines input could not be opened or read.
    #[error("cannot read live rows from {path}: {source}")]
    Read {
        /// The path (`-` for stdin).
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A JSON line that is not a row of a known feed.
    #[error("{path} line {line}: {reason}")]
    BadLine {
        /// The path (`-` for stdin).
        path: String,
        /// 1-based line number.
        line: u64,
        /// What is wrong, and what is expected.
        reason: String,
    },
}

impl LiveError {
    /// Whether the error is bad input (a bad line, an unreadable file) rather than a
    /// failure of the database.
    pub fn is_usage(&self) -> bool {
        match self {
            LiveError::Poll { source, .. } => source.is_input_error(),
            LiveError::Decode { .. } | LiveError::Read { .. } | LiveError::BadLine { .. } => true,
        }
    }
}

/// Delivers live rows; see the module docs.
#[async_trait::async_trait]
pub trait LiveSource: Send {
    /// Adds to `batch` the rows that arrived since the previous call, waiting at most
    /// about one poll cycle (the batch may stay empty). Returns `false` once the source
    /// has ended and will deliver nothing more.
    ///
    /// # Errors
    /// A [`LiveError`] that ends the run.
    async fn next_batch(&mut self, batch: &mut LiveBatch) -> Result<bool, LiveError>;

    /// The source, for logs (never with a password).
    fn describe(&self) -> String;
}

/// Which live source a run uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LiveSpec {
    /// Follow the history table (the default).
    #[default]
    Table,
    /// JSON lines from a file, or from stdin for `-`.
    Jsonl(PathBuf),
}

/// A `--live-source` value that is not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("live source '{given}' is not understood; use table, jsonl:PATH or jsonl:- (stdin)")]
pub struct LiveSpecError {
    /// The text given.
    pub given: String,
}

impl FromStr for LiveSpec {
    type Err = LiveSpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || LiveSpecError {
            given: text.to_owned(),
        };
        let trimmed = text.trim();
        if trimmed.eq_ignore_ascii_case("table") {
            return Ok(LiveSpec::Table);
        }
        match trimmed.split_once(':') {
            Some((scheme, path))
                if scheme.eq_ignore_ascii_case("jsonl") && !path.trim().is_empty() =>
            {
                Ok(LiveSpec::Jsonl(PathBuf::from(path.trim())))
            }
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_specs() {
        assert_eq!("table".parse(), Ok(LiveSpec::Table));
        assert_eq!("jsonl:-".parse(), Ok(LiveSpec::Jsonl("-".into())));
        assert_eq!(
            "JSONL: rows.jsonl".parse(),
            Ok(LiveSpec::Jsonl("rows.jsonl".into()))
        );
        for bad in ["", "jsonl:", "kafka:x", "rows.jsonl"] {
            assert!(bad.parse::<LiveSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn batches_sort_by_time_then_feed_and_keep_their_memory() {
        let feeds = [
            LiveFeed {
                name: "a".into(),
                node_id: NodeId::from_hex("a"),
                interval: Interval::from_secs(1).unwrap(),
                fields: vec!["x".to_owned()].into(),
            },
            LiveFeed {
                name: "b".into(),
                node_id: NodeId::from_hex("b"),
                interval: Interval::from_secs(1).unwrap(),
                fields: vec!["x".to_owned(), "y".to_owned()].into(),
            },
        ];
        let mut batch = LiveBatch::new(&feeds);
        batch.push(1, 5, &[1.0, 2.0]);
        batch.push(0, 5, &[3.0]);
        batch.push(0, 4, &[4.0]);
        batch.sort();
        let rows: Vec<(usize, i64, Vec<f64>)> =
            batch.iter().map(|(f, t, v)| (f, t, v.to_vec())).collect();
        assert_eq!(
            rows,
            [(0, 4, vec![4.0]), (0, 5, vec![3.0]), (1, 5, vec![1.0, 2.0])]
        );
        let capacity = batch.rows.capacity();
        batch.clear();
        assert!(batch.is_empty());
        assert_eq!(batch.rows.capacity(), capacity);
    }
}

//! The `CacheLoader` trait: where history comes from.
//!
//! A loader answers `fetch(start, end, node_id, interval)` with an Arrow [`RecordBatch`]
//! holding an `Int64` column `ts` (epoch seconds, ascending, every value in the half-open
//! range `[start, end)`) and payload columns named as the stream's fields (matched
//! ignoring case). Any type can be a loader:
//!
//! ```
//! use std::sync::Arc;
//! use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
//! use qmtl::{CacheLoader, Interval, LoaderError, NodeId};
//!
//! /// One bar per interval, close = the bar's index.
//! struct Ramp;
//!
//! #[async_trait::async_trait]
//! impl CacheLoader for Ramp {
//!     async fn fetch(&self, start: i64, end: i64, _node: &NodeId, interval: Interval)
//!         -> Result<RecordBatch, LoaderError>
//!     {
//!         let ts: Vec<i64> = (interval.bucket_ceil(start)..end)
//!             .step_by(interval.secs() as usize).collect();
//!         let close: Vec<f64> = ts.iter().map(|t| *t as f64).collect();
//!         RecordBatch::try_from_iter([
//!             ("ts", Arc::new(Int64Array::from(ts)) as ArrayRef),
//!             ("close", Arc::new(Float64Array::from(close)) as ArrayRef),
//!         ])
//!         .map_err(LoaderError::permanent)
//!     }
//!
//!     fn describe(&self) -> String { "ramp".into() }
//! }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use arrow_array::RecordBatch;

use crate::interval::Interval;
use crate::node::NodeId;
use crate::time::{TimeError, Timestamp};

/// A boxed error from a user loader.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Provides history for a (node, interval) pair.
#[async_trait::async_trait]
pub trait CacheLoader: Send + Sync {
    /// Rows with `start <= ts < end` for `node_id` at `interval`, ordered by `ts`.
    ///
    /// # Errors
    /// A [`LoaderError`]; [`LoaderError::is_retryable`] decides whether the backfill
    /// engine tries again.
    async fn fetch(
        &self,
        start: Timestamp,
        end: Timestamp,
        node_id: &NodeId,
        interval: Interval,
    ) -> Result<RecordBatch, LoaderError>;

    /// A description for logs and plans. Never include a password.
    fn describe(&self) -> String;
}

/// Why history could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The CSV itself is malformed.
    #[error("{path}: malformed CSV: {source}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: csv::Error,
    },
    /// The file has no header or no data rows.
    #[error("{path} holds no data rows; a header line and at least one row are needed")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// No column could be taken as the timestamp.
    #[error(
        "{path} has no timestamp column (found: {found}); name one 'ts', 'datetime', \
         'date' or 'time', or leave the first column's name empty"
    )]
    NoTsColumn {
        /// The file.
        path: PathBuf,
        /// The header, comma-separated.
        found: String,
    },
    /// A timestamp cell did not parse.
    #[error("{path} line {line}: {source}")]
    BadTimestamp {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The cause.
        #[source]
        source: TimeError,
    },
    /// An empty timestamp cell.
    #[error("{path} line {line}: the timestamp is empty; every row needs one")]
    NullTimestamp {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
    },
    /// Timestamps that go backwards or repeat.
    #[error(
        "{path} line {line}: timestamp {ts} is not after the previous row's {previous}; \
         sort the file by time and remove duplicate rows"
    )]
    Unsorted {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// This row's timestamp.
        ts: Timestamp,
        /// The previous row's timestamp.
        previous: Timestamp,
    },
    /// One attempt took longer than the configured request timeout.
    #[error("the source did not answer within {after:?}")]
    Timeout {
        /// The timeout in force.
        after: Duration,
    },
    /// An error from another loader, marked transient (retried) or permanent.
    #[error("{source}")]
    Custom {
        /// Whether trying again may help.
        retryable: bool,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

impl LoaderError {
    /// Wraps an error that trying again may cure (a dropped connection, a busy server).
    pub fn transient(source: impl Into<BoxError>) -> Self {
        LoaderError::Custom {
            retryable: true,
            source: source.into(),
        }
    }

    /// Wraps an error that trying again will not cure.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        LoaderError::Custom {
            retryable: false,
            source: source.into(),
        }
    }

    /// Whether the backfill engine should try again.
    pub fn is_retryable(&self) -> bool {
        match self {
            LoaderError::Timeout { .. } => true,
            LoaderError::Custom { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// Whether the error is in the user's input (a file or its content), not the system.
    pub fn is_input_error(&self) -> bool {
        !matches!(
            self,
            LoaderError::Timeout { .. } | LoaderError::Custom { .. }
        )
    }
}

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

    /// The newest `count` rows with `start <= ts < end`, ordered by `ts` (ascending), or
    /// `None` when the loader cannot select them cheaply; the engine then fetches the
    /// whole range instead. A run that needs only the warm-up (a dryrun or a live run)
    /// asks for just the rows its caches keep, so its time to ready does not grow with
    /// the range. The default answers `None`.
    ///
    /// # Errors
    /// As [`CacheLoader::fetch`].
    async fn fetch_last(
        &self,
        start: Timestamp,
        end: Timestamp,
        count: u64,
        node_id: &NodeId,
        interval: Interval,
    ) -> Result<Option<RecordBatch>, LoaderError> {
        let _ = (start, end, count, node_id, interval);
        Ok(None)
    }

    /// A description for logs and plans. Never include a password.
    fn describe(&self) -> String;

    /// The first and last timestamps the source holds, if it knows them cheaply. The
    /// engine then fetches only inside that span and can say why a range is empty.
    fn coverage(&self) -> Option<(Timestamp, Timestamp)> {
        None
    }

    /// Checks, before any fetch, that the source can supply `fields` (a stream's payload
    /// fields, matched ignoring case), so a mistake in the input is reported up front.
    ///
    /// # Errors
    /// A [`LoaderError`] naming the fields the source lacks.
    fn check_fields(&self, fields: &[String]) -> Result<(), LoaderError> {
        let _ = fields;
        Ok(())
    }
}

/// Why history could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// A file could not be opened or read.
    #[error(
        "cannot read {}: {source}",
        crate::secret::redact_dsn(&path.display().to_string())
    )]
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
    /// A directory or another non-file where a file was expected.
    #[error("{path} is not a file; give the path of a CSV file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// Two columns with the same name (ignoring case).
    #[error("{path} has two columns named '{column}' (ignoring case); rename one")]
    DuplicateColumn {
        /// The file.
        path: PathBuf,
        /// The repeated name.
        column: String,
    },
    /// A payload cell that parses as a number but not a finite one.
    #[error(
        "{path} line {line}, column '{column}': '{value}' is not a finite number; leave the \
         cell empty for a missing value"
    )]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The column.
        column: String,
        /// The cell as written.
        value: String,
    },
    /// The file lacks fields the stream reads, or holds text in them.
    #[error("{path} cannot feed fields {wanted}: {problems}")]
    Fields {
        /// The file.
        path: PathBuf,
        /// The stream's fields, comma-separated.
        wanted: String,
        /// What is wrong, e.g. "missing: close, volume (columns: ts, open)".
        problems: String,
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
    /// The database server did not accept a connection (down, wrong host or port).
    #[error("cannot reach the database server at {addr}: {}", pg_text(source))]
    Unreachable {
        /// `host:port`.
        addr: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A connection attempt (TCP connect, startup, authentication) took longer than the
    /// DSN's `connect_timeout` (10 s when it sets none).
    #[error(
        "the database server at {addr} did not complete a connection within {after:?}; \
         check that HOST:PORT is the database's PostgreSQL-wire port, or raise \
         connect_timeout in the DSN"
    )]
    ConnectTimeout {
        /// `host:port`.
        addr: String,
        /// The connect timeout in force.
        after: Duration,
    },
    /// The server asks for a password and neither the DSN nor `PGPASSWORD` gives one.
    #[error(
        "the server at {addr} requires a password for user '{user}'; put it in the DSN \
         (percent-encoded) or set PGPASSWORD"
    )]
    PasswordRequired {
        /// `host:port`.
        addr: String,
        /// The user.
        user: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server refused the user's credentials.
    #[error(
        "authentication failed for user '{user}' at {addr}; check the user and password \
         in the DSN: {}",
        pg_text(source)
    )]
    AuthFailed {
        /// `host:port`.
        addr: String,
        /// The user (never the password).
        user: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// No connection could be taken from the pool.
    #[error("no connection to the database server at {addr}: {source}")]
    Pool {
        /// `host:port`.
        addr: String,
        /// The cause.
        #[source]
        source: deadpool_postgres::PoolError,
    },
    /// A table name that is not a plain identifier.
    #[error(
        "'{name}' is not a valid table name; use letters, digits and underscores, not \
         starting with a digit (optionally SCHEMA.TABLE)"
    )]
    BadIdentifier {
        /// The name as given.
        name: String,
    },
    /// The history table does not exist.
    #[error(
        "table {table} does not exist at {addr}; load history into it with `qmtl import`, \
         or name another table with --backfill-table"
    )]
    TableMissing {
        /// The table.
        table: String,
        /// `host:port`.
        addr: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A key column is missing from the history table.
    #[error("table {table} has no '{column}' column (columns: {found})")]
    MissingColumn {
        /// The table.
        table: String,
        /// `node_id`, `interval` or `ts`.
        column: &'static str,
        /// The table's columns, comma-separated.
        found: String,
    },
    /// `ts` of a type that is not a time, or one the scheme cannot bind.
    #[error("table {table}: column 'ts' has type {found}; {expected}{hint}")]
    TsType {
        /// The table.
        table: String,
        /// The SQL type found.
        found: String,
        /// What the scheme reads, e.g. "the questdb: scheme reads BIGINT ...".
        expected: &'static str,
        /// A suggestion, if one fits.
        hint: &'static str,
    },
    /// The stream's fields are not all numeric columns of the history table.
    #[error("table {table} cannot feed fields {wanted}: {problems}")]
    TableFields {
        /// The table.
        table: String,
        /// The stream's fields, comma-separated.
        wanted: String,
        /// What is wrong, e.g. "missing volume (columns: ...); column open has type ...".
        problems: String,
    },
    /// A fetch range that an `INTEGER` `ts` column cannot express.
    #[error(
        "table {table}: the range [{start}, {end}) ends after {limit} \
         (2038-01-19 03:14:07 UTC), the last second an INTEGER ts column holds; end the \
         backfill by then, or store ts as BIGINT"
    )]
    TsRange {
        /// The table.
        table: String,
        /// The range's start, epoch seconds.
        start: Timestamp,
        /// The range's end (exclusive), epoch seconds.
        end: Timestamp,
        /// The largest `ts` the column holds.
        limit: Timestamp,
    },
    /// An integer `ts` whose magnitude says it is not epoch seconds (milli-, micro- or
    /// nanoseconds).
    #[error(
        "table {table}: column 'ts' holds {value}, which looks like {unit}, but epoch \
         seconds are expected; store seconds (e.g. UPDATE {table} SET ts = ts / {div}) or \
         load the table through a view that divides ts by {div}"
    )]
    TsUnit {
        /// The table.
        table: String,
        /// A value of the column.
        value: i64,
        /// The unit it looks like.
        unit: &'static str,
        /// What to divide by.
        div: i64,
    },
    /// Rows of the node with a null `ts`: the job fails rather than drop them.
    #[error(
        "table {table} holds {rows} row(s) with a null ts for node {node_id} at interval \
         {interval}; a row without a time cannot be placed, so delete or fix them"
    )]
    NullTs {
        /// The table.
        table: String,
        /// The node.
        node_id: NodeId,
        /// The interval.
        interval: Interval,
        /// How many.
        rows: i64,
    },
    /// The server returned rows out of time order.
    #[error(
        "table {table}: node {node_id} at interval {interval}: row {row} has ts {ts}, \
         before the previous row's {previous}; the rows did not arrive ordered by ts"
    )]
    OutOfOrder {
        /// The table.
        table: String,
        /// The node.
        node_id: NodeId,
        /// The interval.
        interval: Interval,
        /// 0-based row of the fetch.
        row: u64,
        /// This row's ts.
        ts: Timestamp,
        /// The previous row's ts.
        previous: Timestamp,
    },
    /// A query failed on the server or the connection broke during it.
    #[error("database error at {addr}{}: {}", on_table(table), pg_text(source))]
    Database {
        /// `host:port`.
        addr: String,
        /// The table, if the query was about one.
        table: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A value arrived in a form the loader cannot decode.
    #[error("table {table}: {}", pg_text(source))]
    Decode {
        /// The table.
        table: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The decoded columns did not form a batch.
    #[error("table {table}: {source}")]
    Arrow {
        /// The table.
        table: String,
        /// The cause.
        #[source]
        source: arrow_schema::ArrowError,
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
            LoaderError::Unreachable { .. }
            | LoaderError::ConnectTimeout { .. }
            | LoaderError::Pool { .. } => true,
            LoaderError::Database { source, .. } => crate::sources::postgres::is_transient(source),
            _ => false,
        }
    }

    /// Whether the error is in the user's input (a file, a DSN's credentials, a table
    /// name or the table's content), not the system. An unreachable server, a broken
    /// connection or a failed query is not.
    pub fn is_input_error(&self) -> bool {
        !matches!(
            self,
            LoaderError::Timeout { .. }
                | LoaderError::Custom { .. }
                | LoaderError::Unreachable { .. }
                | LoaderError::ConnectTimeout { .. }
                | LoaderError::Pool { .. }
                | LoaderError::Database { .. }
                | LoaderError::Decode { .. }
                | LoaderError::Arrow { .. }
        )
    }
}

fn on_table(table: &str) -> String {
    if table.is_empty() {
        String::new()
    } else {
        format!(" on table {table}")
    }
}

fn pg_text(error: &tokio_postgres::Error) -> String {
    crate::sources::postgres::error_text(error)
}

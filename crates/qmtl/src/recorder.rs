//! The recorder: writes node outputs into a history table, so that a later run can
//! backfill from what an earlier run produced. The backfill guide's era called this a
//! `DataSink` (its QuestDB one `QuestDBSink`); here it is [`Recorder`], with the guide's
//! `persist(node_id, interval, ts, payload)`.
//!
//! The table has the layout the loader reads ([`crate::sources::postgres::table`]):
//! `node_id`, `interval`, `ts` and one `DOUBLE PRECISION` column per payload field.
//! Rows are buffered and written in multi-row `INSERT` statements with bound parameters
//! (up to [`ROWS_PER_STATEMENT`] rows each), never one statement per row.
//!
//! Writing is idempotent on (`node_id`, `interval`, `ts`): recording the same outputs
//! twice leaves one row per key holding the latest values. How depends on the server
//! found at the other end (asked once with `SELECT version()`), whatever the scheme:
//! - PostgreSQL: the table is created with a primary key on the three columns and rows
//!   go in with `INSERT ... ON CONFLICT (...) DO UPDATE`. A table created by hand
//!   without such a key gets a unique index (`<table>_qmtl_key`) on first conflict
//!   check; that fails, with the server's word, if the table already holds duplicates.
//! - QuestDB, which has no `ON CONFLICT`: the table is created as a WAL table with
//!   `ts` as designated timestamp and `DEDUP UPSERT KEYS(ts, node_id, interval)`, so the
//!   server replaces rows with the same key; rows go in with a plain multi-row `INSERT`.
//!   A QuestDB table created by hand is asked to `DEDUP ENABLE` the same keys; if it
//!   cannot (not a WAL table), a warning says that re-recording will duplicate rows.
//!
//! A missing table is created, and payload columns the table lacks are added.
//!
//! A run that records while it follows live rows uses [`Recorder::record`], which rides
//! out a database outage: rows that could not be written stay in memory, in order, and
//! writing is tried again with a growing backoff (from [`FIRST_RETRY`] up to
//! [`LAST_RETRY`] between attempts; each failed attempt is a `recorder.write_retrying`
//! warning; an attempt longer than [`WRITE_TIMEOUT`] counts as failed). Because writes
//! are idempotent, rows of a statement whose outcome is unknown (a lost connection, a
//! timed-out or abandoned attempt) are simply written again. An outage is bounded: once
//! rows have waited longer than [`OUTAGE_LIMIT`], or more than [`MAX_WAITING_ROWS`] rows
//! wait, the next attempt that fails ends the run with [`RecordError::Outage`] instead of
//! growing without limit. A producer that can outrun the database (a long warm-up
//! replay) calls [`Recorder::make_room`] after each [`Recorder::record`]: while more than
//! [`PAUSE_ROWS`] rows wait, it waits for the database, retrying on the backoff, so a
//! restart delays the producer instead of filling memory up to the bound. The attempt
//! timeout, the bounds and the pause threshold above are the defaults of
//! [`RecordLimits`] ([`Recorder::set_limits`]).
//!
//! [`Recorder::finish`] writes what is left at the end of a run, retrying only for a
//! short deadline, and names how many rows were not recorded when it gives up.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{ClientWrapper, Pool};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use crate::batch::Columns;
use crate::interval::Interval;
use crate::loader::LoaderError;
use crate::node::{NodeId, NodeSpec};
use crate::replay::OutputSink;
use crate::row::Row;
use crate::sources::postgres::table::{
    int_param, is_identifier, quote, read_layout, ts_param, Layout, Param, TableName,
};
use crate::sources::postgres::{error_text, is_transient};
use crate::sources::{PgSource, SourceSpec, SourceSpecError};
use crate::time::Timestamp;

/// Most rows in one `INSERT` statement (fewer when a row has many columns, so that a
/// statement stays under the protocol's 65,535 parameters).
pub const ROWS_PER_STATEMENT: usize = 1000;

/// Buffered rows that trigger a write.
const FLUSH_ROWS: usize = 10_000;

/// The wait before the first retry of a failed write; it doubles after each failure.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The longest wait between two attempts to write during an outage.
pub const LAST_RETRY: Duration = Duration::from_secs(5);

/// How long one attempt to write may take during a run before it counts as failed (a
/// database that accepts connections but does not answer); a dryrun or live run gives
/// it at most its request timeout. The attempt holds up its caller for that long.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long rows may wait for an unreachable database before the run fails.
pub const OUTAGE_LIMIT: Duration = Duration::from_secs(300);

/// How many rows may wait for an unreachable database before the run fails (about
/// 50 MB for rows of five fields).
pub const MAX_WAITING_ROWS: usize = 1_000_000;

/// Rows waiting above which [`Recorder::make_room`] holds the producer back until the
/// database takes them: far below [`MAX_WAITING_ROWS`], so that a producer that waits
/// never reaches that bound.
pub const PAUSE_ROWS: usize = 100_000;

/// How a [`Recorder`] rides out an outage: how long one attempt may take, when
/// producers are held back and when the outage fails the run. The default is
/// [`WRITE_TIMEOUT`], [`OUTAGE_LIMIT`], [`MAX_WAITING_ROWS`] and [`PAUSE_ROWS`].
///
/// ```
/// use std::time::Duration;
/// use qmtl::recorder::RecordLimits;
///
/// let limits = RecordLimits::default()
///     .write_timeout(Duration::from_secs(2))
///     .pause_rows(5_000)
///     .max_waiting_rows(50_000);
/// assert_eq!(limits.pause_rows, 5_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct RecordLimits {
    /// How long one attempt to write may take before it counts as failed.
    pub write_timeout: Duration,
    /// How long rows may wait for a failing database before the run fails.
    pub outage: Duration,
    /// How many rows may wait for a failing database before the run fails.
    pub max_waiting_rows: usize,
    /// Rows waiting above which [`Recorder::make_room`] holds the producer back (taken
    /// as at most `max_waiting_rows`).
    pub pause_rows: usize,
}

impl Default for RecordLimits {
    fn default() -> Self {
        RecordLimits {
            write_timeout: WRITE_TIMEOUT,
            outage: OUTAGE_LIMIT,
            max_waiting_rows: MAX_WAITING_ROWS,
            pause_rows: PAUSE_ROWS,
        }
    }
}

impl RecordLimits {
    /// How long one attempt to write may take.
    pub fn write_timeout(mut self, limit: Duration) -> Self {
        self.write_timeout = limit;
        self
    }
    /// How long rows may wait for a failing database.
    pub fn outage(mut self, limit: Duration) -> Self {
        self.outage = limit;
        self
    }
    /// How many rows may wait for a failing database.
    pub fn max_waiting_rows(mut self, rows: usize) -> Self {
        self.max_waiting_rows = rows;
        self
    }
    /// Rows waiting above which producers are held back.
    pub fn pause_rows(mut self, rows: usize) -> Self {
        self.pause_rows = rows;
        self
    }
}

/// The SQL dialect of the server at the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL or a server compatible with its SQL (TimescaleDB).
    Postgres,
    /// QuestDB.
    QuestDb,
}

/// Why node outputs could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The record spec is malformed.
    #[error(transparent)]
    Spec(#[from] SourceSpecError),
    /// The record spec is not a database.
    #[error("cannot record to {spec}; record to questdb:DSN or postgres:DSN")]
    NotADatabase {
        /// The spec, without secrets.
        spec: String,
    },
    /// Connecting, or reading the table's layout, failed.
    #[error(transparent)]
    Connect(#[from] LoaderError),
    /// The table (or its key index, or a column) could not be created.
    #[error("cannot prepare table {table} at {addr}: {}", error_text(source))]
    Create {
        /// The table.
        table: String,
        /// `host:port`.
        addr: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A payload field whose name cannot be a column.
    #[error(
        "node {node_id}: field '{field}' cannot be a column name; use letters, digits and \
         underscores, not starting with a digit"
    )]
    BadField {
        /// The node.
        node_id: NodeId,
        /// The field.
        field: String,
    },
    /// A payload column of a type that cannot hold an `f64`.
    #[error("table {table}: column '{column}' has type {found}; recording needs DOUBLE PRECISION")]
    ColumnType {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The SQL type found.
        found: String,
    },
    /// A row whose width differs from its field list.
    #[error("node {node_id}: a row of {values} values for {fields} fields")]
    Width {
        /// The node.
        node_id: NodeId,
        /// Fields given.
        fields: usize,
        /// Values given.
        values: usize,
    },
    /// An `INSERT` failed.
    #[error(
        "writing {rows} row(s) of node {node_id} at interval {interval} into table {table} \
         at {addr} failed: {}",
        error_text(source)
    )]
    Write {
        /// The table.
        table: String,
        /// `host:port`.
        addr: String,
        /// The node.
        node_id: NodeId,
        /// The interval.
        interval: Interval,
        /// Rows in the failed statement.
        rows: usize,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// An attempt to write took too long; what it wrote is written again by the next.
    #[error("writing into table {table} at {addr} took more than {waited_ms} ms")]
    TimedOut {
        /// The table.
        table: String,
        /// `host:port`.
        addr: String,
        /// How long the attempt was given.
        waited_ms: u64,
    },
    /// The run ended while the database was failing, and it was still failing when the
    /// last write's deadline passed: the waiting rows were not recorded.
    #[error(
        "{rows} row(s) for table {table} at {addr} were not recorded: the database was \
         still failing {waited_ms} ms after the run ended; check that it is up and \
         reachable: {source}"
    )]
    Unwritten {
        /// The table.
        table: String,
        /// `host:port`.
        addr: String,
        /// Rows left unwritten.
        rows: usize,
        /// How long the last write kept trying.
        waited_ms: u64,
        /// The last attempt's error.
        #[source]
        source: Box<RecordError>,
    },
    /// The database stayed unreachable past the outage bound, or the run ended before it
    /// came back: the waiting rows were not recorded.
    #[error(
        "{rows} row(s) for table {table} at {addr} were not recorded: the database has \
         been failing for {failing_s} s (the limits are {limit_s} s or {limit_rows} \
         waiting rows); check that it is up and reachable, then run again: {source}"
    )]
    Outage {
        /// The table.
        table: String,
        /// `host:port`.
        addr: String,
        /// Rows left unwritten.
        rows: usize,
        /// Seconds since the first failed attempt.
        failing_s: u64,
        /// The outage bound in seconds ([`RecordLimits::outage`]).
        limit_s: u64,
        /// The waiting-rows bound ([`RecordLimits::max_waiting_rows`]).
        limit_rows: usize,
        /// The last attempt's error.
        #[source]
        source: Box<RecordError>,
    },
}

impl RecordError {
    /// Whether trying again may cure the error: the database was unreachable, lost the
    /// connection or was restarting.
    pub fn is_retryable(&self) -> bool {
        match self {
            RecordError::Connect(e) => e.is_retryable(),
            RecordError::Create { source, .. } | RecordError::Write { source, .. } => {
                is_transient(source)
            }
            RecordError::TimedOut { .. } => true,
            _ => false,
        }
    }

    /// Whether the error is a mistake in how recording was asked for (a bad spec, table
    /// name, credentials or field name) rather than a failure while writing.
    pub fn is_usage(&self) -> bool {
        match self {
            RecordError::Spec(_)
            | RecordError::NotADatabase { .. }
            | RecordError::BadField { .. }
            | RecordError::ColumnType { .. } => true,
            RecordError::Connect(e) => e.is_input_error(),
            RecordError::Create { .. }
            | RecordError::Width { .. }
            | RecordError::Write { .. }
            | RecordError::TimedOut { .. }
            | RecordError::Unwritten { .. }
            | RecordError::Outage { .. } => false,
        }
    }
}

/// Rows of one node waiting to be written.
struct Pending {
    node_id: NodeId,
    interval: Interval,
    fields: Arc<[String]>,
    ts: Vec<Timestamp>,
    /// Row-major, `fields.len()` values per row.
    values: Vec<f64>,
    /// Rows from the front already written (a group is only written once deduplicated,
    /// and never grows after that).
    done: usize,
}

/// Writes node outputs into a history table; see the module docs.
///
/// ```no_run
/// # async fn demo() -> Result<(), qmtl::recorder::RecordError> {
/// use qmtl::recorder::Recorder;
/// use qmtl::{Interval, NodeId};
///
/// let mut recorder =
///     Recorder::open("questdb:postgresql://admin:quest@localhost:8812/qdb", "node_data")
///         .await?;
/// let node = NodeId::from_hex("4f1c...");
/// let hour = Interval::from_secs(3600).unwrap();
/// recorder.persist(&node, hour, 1_700_000_000, &[("signal", 1.0), ("spread", 0.002)]).await?;
/// recorder.flush().await?;
/// # Ok(()) }
/// ```
pub struct Recorder {
    source: PgSource,
    table: TableName,
    pool: Pool,
    dialect: Dialect,
    layout: Layout,
    pending: Vec<Pending>,
    pending_rows: usize,
    written: u64,
    outage: Option<Outage>,
    limits: RecordLimits,
    waiting_gauge: Option<prometheus_client::metrics::gauge::Gauge>,
}

/// A run of failed writes: when it began and when to try again.
#[derive(Debug, Clone, Copy)]
struct Outage {
    since: Instant,
    failures: u32,
    next_attempt: Instant,
}

impl Outage {
    /// The wait after `failures` failed attempts.
    fn backoff(failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        FIRST_RETRY.saturating_mul(1 << doublings).min(LAST_RETRY)
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("source", &self.source)
            .field("table", &self.table)
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Parses a `questdb:` or `postgres:` spec and connects (see [`Recorder::connect`]).
    ///
    /// # Errors
    /// [`RecordError::Spec`], [`RecordError::NotADatabase`], or as
    /// [`Recorder::connect`].
    pub async fn open(spec: &str, table: &str) -> Result<Recorder, RecordError> {
        match spec.parse::<SourceSpec>()? {
            SourceSpec::Postgres(source) => Recorder::connect(&source, table).await,
            other => Err(RecordError::NotADatabase {
                spec: other.to_string(),
            }),
        }
    }

    /// Connects, creates `table` if it is missing and reads its layout.
    ///
    /// # Errors
    /// [`RecordError::Connect`] for a bad table name, an unreachable server, refused
    /// credentials or an unusable layout; [`RecordError::Create`] when the table cannot
    /// be created.
    pub async fn connect(source: &PgSource, table: &str) -> Result<Recorder, RecordError> {
        let table = TableName::parse(table)?;
        let (pool, client) = source.connect(1).await?;
        let dialect = detect_dialect(&client, source).await?;

        // Create the table when it is missing; make an existing QuestDB table dedup.
        let layout = match read_layout(&client, source, &table).await {
            Ok(layout) => {
                if dialect == Dialect::QuestDb {
                    enable_dedup(&client, &table).await;
                }
                layout
            }
            Err(LoaderError::TableMissing { .. }) => {
                let sql = create_table_sql(dialect, &table);
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| create_error(source, &table, e))?;
                tracing::info!(source = %source, table = %table, ?dialect, "recorder.created");
                read_layout(&client, source, &table).await?
            }
            Err(other) => return Err(other.into()),
        };
        drop(client);
        Ok(Recorder {
            source: source.clone(),
            table,
            pool,
            dialect,
            layout,
            pending: Vec::new(),
            pending_rows: 0,
            written: 0,
            outage: None,
            limits: RecordLimits::default(),
            waiting_gauge: None,
        })
    }

    /// The dialect found at the other end.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Rows written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Rows buffered and not written yet (during an outage, the rows waiting for the
    /// database).
    pub fn waiting(&self) -> usize {
        self.pending_rows
    }

    /// Sets how the recorder rides out an outage (default [`RecordLimits::default`]).
    pub fn set_limits(&mut self, limits: RecordLimits) {
        self.limits = limits;
    }

    /// How the recorder rides out an outage.
    pub fn limits(&self) -> RecordLimits {
        self.limits
    }

    /// Keeps `gauge` at the number of rows waiting to be written.
    pub fn set_waiting_gauge(&mut self, gauge: prometheus_client::metrics::gauge::Gauge) {
        gauge.set(self.pending_rows as i64);
        self.waiting_gauge = Some(gauge);
    }

    fn show_waiting(&self) {
        if let Some(gauge) = &self.waiting_gauge {
            gauge.set(self.pending_rows as i64);
        }
    }

    /// Buffers every non-empty node of `recorded` and writes what is buffered, riding
    /// out a database outage (see the module docs): a failure that retrying may cure
    /// keeps the rows and returns `Ok` until the outage bound is passed. Attempts are
    /// spaced by the backoff, so calling this often costs nothing during an outage.
    ///
    /// # Errors
    /// [`RecordError::Outage`] past the outage bound; any error that retrying will not
    /// cure, as [`Recorder::flush`].
    pub async fn record<'a>(
        &mut self,
        recorded: impl IntoIterator<Item = &'a Recorded>,
    ) -> Result<(), RecordError> {
        self.buffer_recorded(recorded)?;
        self.try_flush().await
    }

    /// Back-pressure for a producer: while more rows wait than the limits' `pause_rows`,
    /// waits for the database, trying again on the outage's backoff, until they are
    /// written. Returns at once when few enough rows wait. A producer that calls it after
    /// each [`Recorder::record`] is delayed by a database restart instead of piling rows
    /// up to the waiting-rows bound; the outage's time bound still ends the wait. The
    /// future may be dropped at any await (say, on a signal): the rows stay buffered.
    ///
    /// # Errors
    /// As [`Recorder::record`]: [`RecordError::Outage`] once the outage bound is passed,
    /// or an error that retrying will not cure.
    pub async fn make_room(&mut self) -> Result<(), RecordError> {
        let room = self.limits.pause_rows.min(self.limits.max_waiting_rows);
        if self.pending_rows <= room {
            return Ok(());
        }
        tracing::warn!(
            table = %self.table, addr = %self.source.addr(), rows_waiting = self.pending_rows,
            pause_rows = room, "recorder.producer_paused"
        );
        let began = Instant::now();
        while self.pending_rows > room {
            if let Some(outage) = self.outage {
                tokio::time::sleep_until(outage.next_attempt.into()).await;
            }
            self.try_flush().await?;
        }
        tracing::info!(
            table = %self.table, rows_waiting = self.pending_rows,
            paused_ms = began.elapsed().as_millis() as u64, "recorder.producer_resumed"
        );
        Ok(())
    }

    /// Buffers every non-empty node of `recorded` without writing; [`Recorder::finish`]
    /// or a later [`Recorder::record`] writes them.
    ///
    /// # Errors
    /// [`RecordError::Width`] or [`RecordError::BadField`] for rows that do not fit their
    /// node's fields.
    pub fn buffer_recorded<'a>(
        &mut self,
        recorded: impl IntoIterator<Item = &'a Recorded>,
    ) -> Result<(), RecordError> {
        for r in recorded.into_iter().filter(|r| !r.columns.is_empty()) {
            self.buffer_columns(&r.node_id, r.interval, &r.fields, &r.columns)?;
        }
        self.show_waiting();
        Ok(())
    }

    /// Writes what is buffered unless an outage's backoff says to wait; see
    /// [`Recorder::record`].
    async fn try_flush(&mut self) -> Result<(), RecordError> {
        // During an outage, wait for the backoff unless a bound is passed: then try now,
        // and fail if that attempt fails.
        let now = Instant::now();
        let over_bound = self.pending_rows > self.limits.max_waiting_rows
            || self
                .outage
                .is_some_and(|o| now.duration_since(o.since) > self.limits.outage);
        let backing_off = self.outage.is_some_and(|o| now < o.next_attempt);
        if self.pending_rows == 0 || (backing_off && !over_bound) {
            return Ok(());
        }
        let result = self.flush_within(self.limits.write_timeout).await;
        self.settle(result, Instant::now())
    }

    /// [`Recorder::flush`], given at most `limit`. Dropping a write part way is safe: the
    /// rows of unfinished statements stay buffered and are written again, idempotently.
    async fn flush_within(&mut self, limit: Duration) -> Result<(), RecordError> {
        match tokio::time::timeout(limit, self.flush()).await {
            Ok(result) => result,
            Err(_) => {
                self.show_waiting();
                Err(RecordError::TimedOut {
                    table: self.table.to_string(),
                    addr: self.source.addr(),
                    waited_ms: limit.as_millis() as u64,
                })
            }
        }
    }

    /// Updates the outage state after a write attempt; see [`Recorder::record`].
    fn settle(&mut self, result: Result<(), RecordError>, now: Instant) -> Result<(), RecordError> {
        match result {
            Ok(()) => {
                if let Some(outage) = self.outage.take() {
                    tracing::info!(
                        table = %self.table, addr = %self.source.addr(),
                        failures = outage.failures,
                        down_ms = now.duration_since(outage.since).as_millis() as u64,
                        "recorder.write_recovered"
                    );
                }
                Ok(())
            }
            Err(error) if error.is_retryable() => {
                let mut outage = self.outage.unwrap_or(Outage {
                    since: now,
                    failures: 0,
                    next_attempt: now,
                });
                outage.failures += 1;
                let failing = now.duration_since(outage.since);
                let limits = self.limits;
                if failing > limits.outage || self.pending_rows > limits.max_waiting_rows {
                    return Err(self.outage_error(error, failing));
                }
                let wait = Outage::backoff(outage.failures);
                outage.next_attempt = now + wait;
                self.outage = Some(outage);
                tracing::warn!(
                    table = %self.table, addr = %self.source.addr(), error = %error,
                    rows_waiting = self.pending_rows, failures = outage.failures,
                    retry_in_ms = wait.as_millis() as u64, "recorder.write_retrying"
                );
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    fn outage_error(&self, error: RecordError, failing: Duration) -> RecordError {
        RecordError::Outage {
            table: self.table.to_string(),
            addr: self.source.addr(),
            rows: self.pending_rows,
            failing_s: failing.as_secs(),
            limit_s: self.limits.outage.as_secs(),
            limit_rows: self.limits.max_waiting_rows,
            source: Box::new(error),
        }
    }

    /// Writes every buffered row at the end of a run, trying again after failures that
    /// retrying may cure until `deadline` has passed.
    ///
    /// # Errors
    /// [`RecordError::Unwritten`] naming the rows left unwritten when the deadline passes;
    /// any error that retrying will not cure, as [`Recorder::flush`].
    pub async fn finish(&mut self, deadline: Duration) -> Result<(), RecordError> {
        let began = Instant::now();
        let mut failures = 0;
        loop {
            let left = deadline.saturating_sub(began.elapsed());
            let error = match self.flush_within(left.max(Duration::from_millis(1))).await {
                Ok(()) => return self.settle(Ok(()), Instant::now()),
                Err(error) if error.is_retryable() => error,
                Err(error) => return Err(error),
            };
            failures += 1;
            let wait = Outage::backoff(failures);
            if began.elapsed() + wait > deadline {
                return Err(RecordError::Unwritten {
                    table: self.table.to_string(),
                    addr: self.source.addr(),
                    rows: self.pending_rows,
                    waited_ms: began.elapsed().as_millis() as u64,
                    source: Box::new(error),
                });
            }
            tracing::warn!(
                table = %self.table, addr = %self.source.addr(), error = %error,
                rows_waiting = self.pending_rows, failures,
                retry_in_ms = wait.as_millis() as u64, "recorder.final_write_retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// The guide's `persist`: buffers one row of `node_id` at `interval`, its payload as
    /// `(field, value)` pairs, and writes the buffer once it is large.
    ///
    /// # Errors
    /// As [`Recorder::flush`].
    pub async fn persist(
        &mut self,
        node_id: &NodeId,
        interval: Interval,
        ts: Timestamp,
        payload: &[(&str, f64)],
    ) -> Result<(), RecordError> {
        let fields: Vec<String> = payload.iter().map(|(f, _)| (*f).to_owned()).collect();
        let values: Vec<f64> = payload.iter().map(|(_, v)| *v).collect();
        let pending = self.pending_for(node_id, interval, &fields)?;
        pending.ts.push(ts);
        pending.values.extend_from_slice(&values);
        self.pending_rows += 1;
        self.flush_if_full().await
    }

    /// Writes every non-empty node of `recorded` and flushes.
    ///
    /// # Errors
    /// As [`Recorder::persist_columns`] and [`Recorder::flush`].
    pub async fn persist_recorded<'a>(
        &mut self,
        recorded: impl IntoIterator<Item = &'a Recorded>,
    ) -> Result<(), RecordError> {
        for r in recorded.into_iter().filter(|r| !r.columns.is_empty()) {
            self.persist_columns(&r.node_id, r.interval, &r.fields, &r.columns)
                .await?;
        }
        self.flush().await
    }

    /// Buffers every row of `columns` (values field-major, as the engine decodes them).
    ///
    /// # Errors
    /// [`RecordError::Width`] when `columns` does not have one column per field; else as
    /// [`Recorder::flush`].
    pub async fn persist_columns(
        &mut self,
        node_id: &NodeId,
        interval: Interval,
        fields: &[String],
        columns: &Columns,
    ) -> Result<(), RecordError> {
        self.buffer_columns(node_id, interval, fields, columns)?;
        self.flush_if_full().await
    }

    fn buffer_columns(
        &mut self,
        node_id: &NodeId,
        interval: Interval,
        fields: &[String],
        columns: &Columns,
    ) -> Result<(), RecordError> {
        if columns.values.len() != fields.len() {
            return Err(RecordError::Width {
                node_id: node_id.clone(),
                fields: fields.len(),
                values: columns.values.len(),
            });
        }
        let pending = self.pending_for(node_id, interval, fields)?;
        for (row, ts) in columns.ts.iter().enumerate() {
            pending.ts.push(*ts);
            pending
                .values
                .extend(columns.values.iter().map(|column| column[row]));
        }
        self.pending_rows += columns.len();
        Ok(())
    }

    fn pending_for(
        &mut self,
        node_id: &NodeId,
        interval: Interval,
        fields: &[String],
    ) -> Result<&mut Pending, RecordError> {
        // Rows join the node's newest group, unless writing has begun on it or its fields
        // differ: the rows of one node stay in the order given, whatever other nodes do.
        let newest = self
            .pending
            .iter()
            .rposition(|p| p.node_id == *node_id && p.interval == interval);
        let usable = newest.filter(|&k| {
            let p = &self.pending[k];
            p.done == 0 && *p.fields == *fields
        });
        let k = match usable {
            Some(k) => k,
            None => {
                if let Some(field) = fields.iter().find(|f| !is_identifier(f)) {
                    return Err(RecordError::BadField {
                        node_id: node_id.clone(),
                        field: field.clone(),
                    });
                }
                self.pending.push(Pending {
                    node_id: node_id.clone(),
                    interval,
                    fields: fields.into(),
                    ts: Vec::new(),
                    values: Vec::new(),
                    done: 0,
                });
                self.pending.len() - 1
            }
        };
        Ok(&mut self.pending[k])
    }

    async fn flush_if_full(&mut self) -> Result<(), RecordError> {
        if self.pending_rows >= FLUSH_ROWS {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes every buffered row, in the order buffered.
    ///
    /// # Errors
    /// [`RecordError::Connect`] when no connection can be had, [`RecordError::Create`]
    /// when a payload column cannot be added, [`RecordError::ColumnType`] for a payload
    /// column that is not `DOUBLE PRECISION`, [`RecordError::Write`] for a failed
    /// `INSERT`. The rows not known to be written stay buffered, in order, for the next
    /// flush ([`RecordError::is_retryable`] says whether it may succeed).
    pub async fn flush(&mut self) -> Result<(), RecordError> {
        let result = self.write_pending().await;
        self.show_waiting();
        result
    }

    /// Writes the groups in order, statement by statement, moving each group's `done`
    /// mark after each statement: a failure, or the future being dropped (a timeout),
    /// leaves exactly the rows not known to be written in the buffer.
    async fn write_pending(&mut self) -> Result<(), RecordError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let client = self.source.checkout(&self.pool).await?;
        while !self.pending.is_empty() {
            if self.pending[0].done == 0 {
                let before = self.pending[0].ts.len();
                dedup_last(&mut self.pending[0]);
                self.pending_rows -= before - self.pending[0].ts.len();
            }
            let fields = self.pending[0].fields.clone();
            self.ensure_columns(&client, &fields).await?;
            let width = 3 + fields.len();
            let per_statement = ROWS_PER_STATEMENT.min(u16::MAX as usize / width).max(1);
            while self.pending[0].done < self.pending[0].ts.len() {
                let group = &self.pending[0];
                let rows = per_statement.min(group.ts.len() - group.done);
                self.insert(&client, group, group.done, rows).await?;
                self.pending[0].done += rows;
                self.pending_rows -= rows;
                self.written += rows as u64;
            }
            let group = self.pending.remove(0);
            tracing::info!(
                node_id = %group.node_id, interval = group.interval.secs(),
                rows = group.ts.len(), table = %self.table, "recorder.written"
            );
        }
        Ok(())
    }

    /// Adds payload columns the table lacks and checks the types of those it has.
    async fn ensure_columns(
        &mut self,
        client: &Client,
        fields: &[String],
    ) -> Result<(), RecordError> {
        let missing: Vec<&String> = fields
            .iter()
            .filter(|f| self.column_for(f).is_none())
            .collect();
        if !missing.is_empty() {
            for field in missing {
                let sql = add_column_sql(self.dialect, &self.table, field);
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| create_error(&self.source, &self.table, e))?;
            }
            self.layout = read_layout(client, &self.source, &self.table).await?;
        }
        Ok(())
    }

    fn column_for(&self, field: &str) -> Option<&String> {
        self.layout
            .payload
            .iter()
            .map(|(name, _)| name)
            .chain(&self.layout.skipped)
            .find(|name| name.eq_ignore_ascii_case(field))
    }

    async fn insert(
        &self,
        client: &ClientWrapper,
        group: &Pending,
        first: usize,
        rows: usize,
    ) -> Result<(), RecordError> {
        // Build the statement from checked identifiers and placeholders only.
        let mut columns = vec![
            quote(&self.layout.node_id),
            quote(&self.layout.interval),
            quote(&self.layout.ts_name),
        ];
        for field in group.fields.iter() {
            let name = self.column_for(field).expect("columns were ensured");
            columns.push(quote(name));
        }
        let width = columns.len();
        let tuples: Vec<String> = (0..rows)
            .map(|r| {
                let marks: Vec<String> =
                    (1..=width).map(|c| format!("${}", r * width + c)).collect();
                format!("({})", marks.join(", "))
            })
            .collect();
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES {}",
            self.table.quoted(),
            columns.join(", "),
            tuples.join(", ")
        );
        if self.dialect == Dialect::Postgres {
            let keys = columns[..3].join(", ");
            let updates: Vec<String> = columns[3..]
                .iter()
                .map(|c| format!("{c} = EXCLUDED.{c}"))
                .collect();
            if updates.is_empty() {
                sql.push_str(&format!(" ON CONFLICT ({keys}) DO NOTHING"));
            } else {
                sql.push_str(&format!(
                    " ON CONFLICT ({keys}) DO UPDATE SET {}",
                    updates.join(", ")
                ));
            }
        }
        let write_error = |source| RecordError::Write {
            table: self.table.to_string(),
            addr: self.source.addr(),
            node_id: group.node_id.clone(),
            interval: group.interval,
            rows,
            source,
        };
        let statement = client.prepare_cached(&sql).await.map_err(write_error)?;

        // Bind every value in the type the server declared for its column.
        let types = statement.params();
        for (c, ty) in types.iter().enumerate().take(width).skip(3) {
            if *ty != Type::FLOAT8 {
                return Err(RecordError::ColumnType {
                    table: self.table.to_string(),
                    column: self
                        .column_for(&group.fields[c - 3])
                        .cloned()
                        .unwrap_or_default(),
                    found: ty.name().to_uppercase(),
                });
            }
        }
        let Some(interval) = int_param(&types[1], group.interval.secs_i64()) else {
            return Err(RecordError::ColumnType {
                table: self.table.to_string(),
                column: self.layout.interval.clone(),
                found: types[1].name().to_uppercase(),
            });
        };
        let node_id = group.node_id.as_str();
        let fields = group.fields.len();
        let stamps: Vec<Param> = group.ts[first..first + rows]
            .iter()
            .map(|t| ts_param(self.layout.ts, *t))
            .collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(rows * width);
        for (r, stamp) in stamps.iter().enumerate() {
            params.push(&node_id);
            params.push(interval.as_ref());
            params.push(stamp.as_ref());
            let at = (first + r) * fields;
            for value in &group.values[at..at + fields] {
                params.push(value);
            }
        }

        // Write; on PostgreSQL, add the key index a hand-made table lacks, once.
        match client.execute_raw(&statement, params.iter().copied()).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::INVALID_COLUMN_REFERENCE) => {
                let sql = unique_index_sql(&self.table, &self.layout);
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| create_error(&self.source, &self.table, e))?;
                tracing::info!(table = %self.table, "recorder.key_index_created");
                client
                    .execute_raw(&statement, params.iter().copied())
                    .await
                    .map_err(write_error)?;
                Ok(())
            }
            Err(e) => Err(write_error(e)),
        }
    }
}

/// Keeps the last row of each `ts`, in time order (a statement may not touch a key
/// twice).
fn dedup_last(group: &mut Pending) {
    let fields = group.fields.len();
    let sorted_unique = group.ts.windows(2).all(|w| w[0] < w[1]);
    if sorted_unique {
        return;
    }
    let mut order: Vec<usize> = (0..group.ts.len()).collect();
    order.sort_by_key(|&i| group.ts[i]);
    let mut ts = Vec::with_capacity(order.len());
    let mut values = Vec::with_capacity(group.values.len());
    for (k, &i) in order.iter().enumerate() {
        if order
            .get(k + 1)
            .is_some_and(|&j| group.ts[j] == group.ts[i])
        {
            continue;
        }
        ts.push(group.ts[i]);
        values.extend_from_slice(&group.values[i * fields..(i + 1) * fields]);
    }
    group.ts = ts;
    group.values = values;
}

async fn detect_dialect(client: &Client, source: &PgSource) -> Result<Dialect, LoaderError> {
    let row = client
        .query_one("SELECT version()", &[])
        .await
        .map_err(|e| source.connect_error(e))?;
    let version: String = row.try_get(0).map_err(|e| source.connect_error(e))?;
    Ok(if version.to_ascii_lowercase().contains("questdb") {
        Dialect::QuestDb
    } else {
        Dialect::Postgres
    })
}

fn create_error(source: &PgSource, table: &TableName, e: tokio_postgres::Error) -> RecordError {
    RecordError::Create {
        table: table.to_string(),
        addr: source.addr(),
        source: e,
    }
}

fn create_table_sql(dialect: Dialect, table: &TableName) -> String {
    let (node_id, interval, ts) = (quote("node_id"), quote("interval"), quote("ts"));
    match dialect {
        Dialect::Postgres => format!(
            "CREATE TABLE IF NOT EXISTS {} ({node_id} TEXT NOT NULL, {interval} INTEGER NOT \
             NULL, {ts} BIGINT NOT NULL, PRIMARY KEY ({node_id}, {interval}, {ts}))",
            table.quoted()
        ),
        Dialect::QuestDb => format!(
            "CREATE TABLE IF NOT EXISTS {} ({node_id} SYMBOL, {interval} INT, {ts} TIMESTAMP) \
             TIMESTAMP({ts}) PARTITION BY DAY WAL DEDUP UPSERT KEYS({ts}, {node_id}, \
             {interval})",
            table.quoted()
        ),
    }
}

fn add_column_sql(dialect: Dialect, table: &TableName, field: &str) -> String {
    match dialect {
        Dialect::Postgres => format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} DOUBLE PRECISION",
            table.quoted(),
            quote(field)
        ),
        Dialect::QuestDb => format!(
            "ALTER TABLE {} ADD COLUMN {} DOUBLE",
            table.quoted(),
            quote(field)
        ),
    }
}

fn unique_index_sql(table: &TableName, layout: &Layout) -> String {
    format!(
        "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({}, {}, {})",
        quote(&format!("{}_qmtl_key", table.name())),
        table.quoted(),
        quote(&layout.node_id),
        quote(&layout.interval),
        quote(&layout.ts_name)
    )
}

async fn enable_dedup(client: &Client, table: &TableName) {
    let sql = format!(
        "ALTER TABLE {} DEDUP ENABLE UPSERT KEYS({}, {}, {})",
        table.quoted(),
        quote("ts"),
        quote("node_id"),
        quote("interval")
    );
    if let Err(error) = client.batch_execute(&sql).await {
        tracing::warn!(
            table = %table, error = %error_text(&error),
            "recorder.dedup_unavailable_rows_may_repeat"
        );
    }
}

/// Collects the rows chosen nodes emit during replay, for a [`Recorder`] to write after.
///
/// Install a clone with [`crate::replay::Executor::set_output_sink`]; take the rows with
/// [`OutputBuffer::take`].
#[derive(Clone, Default)]
pub struct OutputBuffer {
    wanted: Arc<[NodeId]>,
    rows: Arc<Mutex<Vec<Recorded>>>,
}

/// The rows one node emitted.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The node.
    pub node_id: NodeId,
    /// Its interval.
    pub interval: Interval,
    /// Its fields.
    pub fields: Vec<String>,
    /// Its rows, field-major.
    pub columns: Columns,
}

impl OutputBuffer {
    /// A buffer keeping the rows of `nodes`.
    pub fn new(nodes: &[&NodeSpec]) -> OutputBuffer {
        let rows = nodes
            .iter()
            .map(|n| Recorded {
                node_id: n.id.clone(),
                interval: n.interval,
                fields: n.fields.clone(),
                columns: Columns {
                    ts: Vec::new(),
                    values: vec![Vec::new(); n.fields.len()],
                },
            })
            .collect();
        OutputBuffer {
            wanted: nodes.iter().map(|n| n.id.clone()).collect(),
            rows: Arc::new(Mutex::new(rows)),
        }
    }

    /// The rows kept so far, one entry per node; leaves the buffer empty.
    pub fn take(&self) -> Vec<Recorded> {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *rows)
    }

    /// Moves the rows kept so far into `spare` (one entry per node) and keeps
    /// collecting into `spare`'s former, emptied vectors, so a live run that drains the
    /// buffer every cycle reuses the same memory instead of allocating.
    pub fn swap_out(&self, spare: &mut Vec<Recorded>) {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() != rows.len() {
            *spare = rows
                .iter()
                .map(|r| Recorded {
                    node_id: r.node_id.clone(),
                    interval: r.interval,
                    fields: r.fields.clone(),
                    columns: Columns {
                        ts: Vec::new(),
                        values: vec![Vec::new(); r.fields.len()],
                    },
                })
                .collect();
        }
        for recorded in spare.iter_mut() {
            recorded.columns.ts.clear();
            recorded.columns.values.iter_mut().for_each(Vec::clear);
        }
        std::mem::swap(&mut *rows, spare);
    }
}

impl OutputBuffer {
    /// Keeps rows `rows` of `columns` as rows of `node_id`, when that node is recorded:
    /// for a stream, whose rows the executor pushes without emitting them.
    pub fn push_columns(&self, node_id: &NodeId, columns: &Columns, rows: std::ops::Range<usize>) {
        let Some(k) = self.wanted.iter().position(|id| id == node_id) else {
            return;
        };
        let mut kept = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(recorded) = kept.get_mut(k) {
            recorded
                .columns
                .ts
                .extend_from_slice(&columns.ts[rows.clone()]);
            for (into, from) in recorded.columns.values.iter_mut().zip(&columns.values) {
                into.extend_from_slice(&from[rows.clone()]);
            }
        }
    }

    /// Keeps one row of `node_id` at `ts`, when that node is recorded (see
    /// [`OutputBuffer::push_columns`]).
    pub fn push_row(&self, node_id: &NodeId, ts: Timestamp, values: &[f64]) {
        let Some(k) = self.wanted.iter().position(|id| id == node_id) else {
            return;
        };
        let mut kept = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(recorded) = kept.get_mut(k) {
            recorded.columns.ts.push(ts);
            for (column, value) in recorded.columns.values.iter_mut().zip(values) {
                column.push(*value);
            }
        }
    }
}

impl OutputSink for OutputBuffer {
    fn emit(&mut self, node: &NodeSpec, ts: Timestamp, row: &Row) {
        let Some(k) = self.wanted.iter().position(|id| *id == node.id) else {
            return;
        };
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(recorded) = rows.get_mut(k) {
            recorded.columns.ts.push(ts);
            for (column, value) in recorded.columns.values.iter_mut().zip(row.values()) {
                column.push(*value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_keeps_the_last_row_of_each_time_in_order() {
        let mut out = Pending {
            node_id: NodeId::from_hex("n"),
            interval: Interval::from_secs(60).unwrap(),
            fields: vec!["a".to_owned()].into(),
            ts: vec![120, 60, 120, 180],
            values: vec![1.0, 2.0, 3.0, 4.0],
            done: 0,
        };
        dedup_last(&mut out);
        assert_eq!(out.ts, [60, 120, 180]);
        assert_eq!(out.values, [2.0, 3.0, 4.0]);
    }

    #[test]
    fn retries_back_off_from_the_first_wait_doubling_to_the_last() {
        let waits: Vec<u64> = (1..=9)
            .map(|n| Outage::backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(Outage::backoff(u32::MAX), LAST_RETRY);
    }

    #[test]
    fn questdb_tables_dedup_on_the_key_and_postgres_tables_have_it_as_primary_key() {
        let table = TableName::parse("node_data").unwrap();
        let quest = create_table_sql(Dialect::QuestDb, &table);
        assert!(quest.contains("DEDUP UPSERT KEYS(\"ts\", \"node_id\", \"interval\")"));
        assert!(quest.contains("TIMESTAMP(\"ts\")"));
        assert!(!quest.contains("ON CONFLICT"));
        let pg = create_table_sql(Dialect::Postgres, &table);
        assert!(pg.contains("PRIMARY KEY (\"node_id\", \"interval\", \"ts\")"));
    }
}

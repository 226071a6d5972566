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

use std::sync::{Arc, Mutex};

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
use crate::sources::postgres::error_text;
use crate::sources::postgres::table::{
    int_param, is_identifier, quote, read_layout, ts_param, Layout, Param, TableName,
};
use crate::sources::{PgSource, SourceSpec, SourceSpecError};
use crate::time::Timestamp;

/// Most rows in one `INSERT` statement (fewer when a row has many columns, so that a
/// statement stays under the protocol's 65,535 parameters).
pub const ROWS_PER_STATEMENT: usize = 1000;

/// Buffered rows that trigger a write.
const FLUSH_ROWS: usize = 10_000;

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
}

impl RecordError {
    /// Whether the error is a mistake in how recording was asked for (a bad spec, table
    /// name, credentials or field name) rather than a failure while writing.
    pub fn is_usage(&self) -> bool {
        match self {
            RecordError::Spec(_)
            | RecordError::NotADatabase { .. }
            | RecordError::BadField { .. }
            | RecordError::ColumnType { .. } => true,
            RecordError::Connect(e) => e.is_input_error(),
            RecordError::Create { .. } | RecordError::Width { .. } | RecordError::Write { .. } => {
                false
            }
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
        self.flush_if_full().await
    }

    fn pending_for(
        &mut self,
        node_id: &NodeId,
        interval: Interval,
        fields: &[String],
    ) -> Result<&mut Pending, RecordError> {
        let same =
            |p: &Pending| p.node_id == *node_id && p.interval == interval && *p.fields == *fields;
        if !self.pending.last().is_some_and(same) {
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
            });
        }
        Ok(self
            .pending
            .last_mut()
            .expect("a pending group was just ensured"))
    }

    async fn flush_if_full(&mut self) -> Result<(), RecordError> {
        if self.pending_rows >= FLUSH_ROWS {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes every buffered row.
    ///
    /// # Errors
    /// [`RecordError::Connect`] when no connection can be had, [`RecordError::Create`]
    /// when a payload column cannot be added, [`RecordError::ColumnType`] for a payload
    /// column that is not `DOUBLE PRECISION`, [`RecordError::Write`] for a failed
    /// `INSERT`. Rows of a failed group stay unwritten and are dropped.
    pub async fn flush(&mut self) -> Result<(), RecordError> {
        let groups = std::mem::take(&mut self.pending);
        self.pending_rows = 0;
        if groups.is_empty() {
            return Ok(());
        }
        let client = self.source.checkout(&self.pool).await?;
        for group in groups {
            let group = dedup_last(group);
            self.ensure_columns(&client, &group).await?;
            let width = 3 + group.fields.len();
            let per_statement = ROWS_PER_STATEMENT.min(u16::MAX as usize / width).max(1);
            let mut row = 0;
            while row < group.ts.len() {
                let rows = per_statement.min(group.ts.len() - row);
                self.insert(&client, &group, row, rows).await?;
                row += rows;
            }
            self.written += group.ts.len() as u64;
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
        group: &Pending,
    ) -> Result<(), RecordError> {
        let missing: Vec<&String> = group
            .fields
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
fn dedup_last(mut group: Pending) -> Pending {
    let fields = group.fields.len();
    let sorted_unique = group.ts.windows(2).all(|w| w[0] < w[1]);
    if sorted_unique {
        return group;
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
    group
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
        let group = Pending {
            node_id: NodeId::from_hex("n"),
            interval: Interval::from_secs(60).unwrap(),
            fields: vec!["a".to_owned()].into(),
            ts: vec![120, 60, 120, 180],
            values: vec![1.0, 2.0, 3.0, 4.0],
        };
        let out = dedup_last(group);
        assert_eq!(out.ts, [60, 120, 180]);
        assert_eq!(out.values, [2.0, 3.0, 4.0]);
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

//! `QuestDBLoader`: history from a table on a QuestDB or PostgreSQL server.
//!
//! For each fetch the loader runs, on a pooled connection, one prepared statement
//!
//! ```sql
//! SELECT "ts", <payload columns> FROM <table>
//! WHERE "node_id" = $1 AND "interval" = $2 AND "ts" >= $3 AND "ts" < $4 ORDER BY "ts"
//! ```
//!
//! through the extended query protocol with binary results (for
//! [`CacheLoader::fetch_last`], the same with `ORDER BY "ts" DESC LIMIT $5`, the rows
//! then put back in ascending order), and decodes the streamed rows
//! straight into Arrow builders: an `Int64` `ts` column in epoch seconds and one
//! `Float64` column per numeric payload column (a SQL `NULL` becomes an Arrow null).
//! Text and other non-numeric columns are not read (a `NUMERIC` column is read through
//! the `postgres:` flavor only, selected as `"col"::float8`; see [`super::table`]).
//!
//! Before any fetch the runner asks [`CacheLoader::check_fields`] whether the table
//! holds every field of the stream as a column the loader reads; a missing field or a
//! column of another type is reported then, naming the table and the fix, rather than as
//! a missing field of the first batch.
//!
//! An `INTEGER` `ts` is bound as `INTEGER`; a fetch whose range ends after
//! 2038-01-19 03:14:07 UTC, the last second it holds, fails with [`LoaderError::TsRange`].
//!
//! Rows with a null `ts` cannot be placed in time. They are never selected by the range,
//! so before the first fetch for a (node, interval) the loader counts them; if there are
//! any, the fetch fails with [`LoaderError::NullTs`] (not retried) instead of silently
//! dropping them.

use std::collections::HashSet;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use arrow_array::builder::{Float64Builder, Int64Builder};
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use chrono::{DateTime, NaiveDateTime, Utc};
use deadpool_postgres::Pool;
use futures_util::TryStreamExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::table::{
    int_param, query_error, quote, read_layout, ts_bounds, Layout, NumKind, Param, TableName,
    TsKind, DEFAULT_TABLE,
};
use super::{Flavor, PgSource};
use crate::interval::Interval;
use crate::loader::{CacheLoader, LoaderError};
use crate::node::NodeId;
use crate::time::Timestamp;

/// Rows reserved up front in each column; columns grow past it as rows arrive.
const MAX_RESERVED_ROWS: i64 = 1 << 16;

/// Connections in the pool when none is set: the engine's default concurrency.
const DEFAULT_POOL_SIZE: usize = 4;

/// The same loader; the name reads better for a `postgres:` source.
pub type PostgresLoader = QuestDBLoader;

/// History from a QuestDB or PostgreSQL table (`questdb:` and `postgres:` sources).
///
/// The guide's `QuestDBLoader("postgresql://user:pass@localhost:8812/qdb")`:
///
/// ```no_run
/// # async fn demo() -> Result<(), qmtl::LoaderError> {
/// use qmtl::QuestDBLoader;
///
/// let loader = QuestDBLoader::connect("postgresql://admin:quest@localhost:8812/qdb").await?;
/// println!("{}", qmtl::CacheLoader::describe(&loader)); // the password shows as ***
/// # Ok(()) }
/// ```
pub struct QuestDBLoader {
    source: PgSource,
    table: TableName,
    pool: Pool,
    layout: Layout,
    select_sql: String,
    last_sql: String,
    null_check_sql: String,
    schema: Arc<Schema>,
    checked: Mutex<HashSet<(NodeId, u64)>>,
}

impl std::fmt::Debug for QuestDBLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuestDBLoader")
            .field("source", &self.source)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// Settings for [`QuestDBLoader::open`].
#[derive(Debug, Clone)]
#[must_use]
pub struct LoaderOptions {
    /// The history table (default `node_data`).
    pub table: String,
    /// Connections in the pool (default 4).
    pub pool_size: usize,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            table: DEFAULT_TABLE.to_owned(),
            pool_size: DEFAULT_POOL_SIZE,
        }
    }
}

impl QuestDBLoader {
    /// Connects to the `node_data` table through the `questdb:` flavor.
    ///
    /// # Errors
    /// As [`QuestDBLoader::open`]; a DSN that does not parse is a
    /// [`LoaderError::Custom`] wrapping the [`crate::sources::SourceSpecError`].
    pub async fn connect(dsn: &str) -> Result<QuestDBLoader, LoaderError> {
        let source = PgSource::parse(Flavor::QuestDb, dsn).map_err(LoaderError::permanent)?;
        QuestDBLoader::open(&source, &LoaderOptions::default()).await
    }

    /// Connects, checks the table and reads its layout.
    ///
    /// # Errors
    /// [`LoaderError::BadIdentifier`] for a bad table name, [`LoaderError::Unreachable`],
    /// [`LoaderError::AuthFailed`], [`LoaderError::PasswordRequired`],
    /// [`LoaderError::TableMissing`], [`LoaderError::MissingColumn`] or
    /// [`LoaderError::TsType`].
    pub async fn open(
        source: &PgSource,
        options: &LoaderOptions,
    ) -> Result<QuestDBLoader, LoaderError> {
        let table = TableName::parse(&options.table)?;

        // Connect and read the table's layout.
        let (pool, client) = source.connect(options.pool_size).await?;
        let layout = read_layout(&client, source, &table).await?;
        drop(client);

        // Prepare the statements' text once.
        let mut columns = vec![quote(&layout.ts_name)];
        columns.extend(layout.payload.iter().map(|(name, kind)| kind.select(name)));
        let keys = format!(
            "{} = $1 AND {} = $2",
            quote(&layout.node_id),
            quote(&layout.interval)
        );
        let ts = quote(&layout.ts_name);
        let select_sql = format!(
            "SELECT {} FROM {} WHERE {keys} AND {ts} >= $3 AND {ts} < $4 ORDER BY {ts}",
            columns.join(", "),
            table.quoted(),
        );
        let last_sql = format!("{select_sql} DESC LIMIT $5");
        let null_check_sql = format!(
            "SELECT count(*) FROM {} WHERE {keys} AND {ts} IS NULL",
            table.quoted()
        );
        let mut fields = vec![Field::new("ts", DataType::Int64, false)];
        fields.extend(
            layout
                .payload
                .iter()
                .map(|(name, _)| Field::new(name, DataType::Float64, true)),
        );
        tracing::info!(
            source = %source, table = %table, ts_kind = ?layout.ts,
            payload = layout.payload.len(), skipped = layout.skipped.len(), "loader.opened"
        );
        Ok(QuestDBLoader {
            source: source.clone(),
            table,
            pool,
            layout,
            select_sql,
            last_sql,
            null_check_sql,
            schema: Arc::new(Schema::new(fields)),
            checked: Mutex::new(HashSet::new()),
        })
    }

    /// The table read.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// How the table stores `ts`.
    pub fn ts_kind(&self) -> TsKind {
        self.layout.ts
    }

    fn was_checked(&self, key: &(NodeId, u64)) -> bool {
        let checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        checked.contains(key)
    }

    async fn check_null_ts(
        &self,
        client: &tokio_postgres::Client,
        node_id: &NodeId,
        interval: Interval,
        interval_param: &Param,
    ) -> Result<(), LoaderError> {
        let key = (node_id.clone(), interval.secs());
        if self.was_checked(&key) {
            return Ok(());
        }
        let statement = client
            .prepare(&self.null_check_sql)
            .await
            .map_err(|e| query_error(&self.source, &self.table, e))?;
        let row = client
            .query_one(&statement, &[&node_id.as_str(), interval_param.as_ref()])
            .await
            .map_err(|e| query_error(&self.source, &self.table, e))?;
        let rows: i64 = row
            .try_get(0)
            .map_err(|e| query_error(&self.source, &self.table, e))?;
        if rows > 0 {
            return Err(LoaderError::NullTs {
                table: self.table.to_string(),
                node_id: node_id.clone(),
                interval,
                rows,
            });
        }
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        checked.insert(key);
        Ok(())
    }
}

impl QuestDBLoader {
    /// Runs the range select (`newest: None`) or the newest-rows select and decodes it.
    async fn select(
        &self,
        start: Timestamp,
        end: Timestamp,
        newest: Option<u64>,
        node_id: &NodeId,
        interval: Interval,
    ) -> Result<RecordBatch, LoaderError> {
        let db = |e| query_error(&self.source, &self.table, e);
        let client = self.source.checkout(&self.pool).await?;
        let sql = match newest {
            Some(_) => &self.last_sql,
            None => &self.select_sql,
        };
        let statement = client.prepare_cached(sql).await.map_err(db)?;
        let mut decoder = Decoder::new(&self.layout, start, end, interval);
        if let Some(count) = newest {
            decoder = decoder.newest_first(count);
        }

        // Bind the key and range in the types the server declared for them.
        let Some(interval_param) = int_param(&statement.params()[1], interval.secs_i64()) else {
            return decoder.finish(&self.schema, self.context(node_id, interval));
        };
        self.check_null_ts(&client, node_id, interval, &interval_param)
            .await?;
        let Some([start_param, end_param]) = ts_bounds(self.layout.ts, start, end) else {
            return Err(LoaderError::TsRange {
                table: self.table.to_string(),
                start,
                end,
                limit: i32::MAX.into(),
            });
        };
        let limit = i64::try_from(newest.unwrap_or(0)).unwrap_or(i64::MAX);
        let node = node_id.as_str();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &node,
            interval_param.as_ref(),
            start_param.as_ref(),
            end_param.as_ref(),
        ];
        if newest.is_some() {
            params.push(&limit);
        }

        // Stream the rows into the column builders.
        let rows = client.query_raw(&statement, params).await.map_err(db)?;
        let mut rows = pin!(rows);
        let context = self.context(node_id, interval);
        while let Some(row) = rows.try_next().await.map_err(db)? {
            decoder.push(&row, &context)?;
        }
        tracing::debug!(
            node_id = %node_id, interval = interval.secs(), start, end, newest,
            rows = decoder.len(), "loader.fetched"
        );
        decoder.finish(&self.schema, context)
    }
}

#[async_trait::async_trait]
impl CacheLoader for QuestDBLoader {
    async fn fetch(
        &self,
        start: Timestamp,
        end: Timestamp,
        node_id: &NodeId,
        interval: Interval,
    ) -> Result<RecordBatch, LoaderError> {
        self.select(start, end, None, node_id, interval).await
    }

    async fn fetch_last(
        &self,
        start: Timestamp,
        end: Timestamp,
        count: u64,
        node_id: &NodeId,
        interval: Interval,
    ) -> Result<Option<RecordBatch>, LoaderError> {
        self.select(start, end, Some(count), node_id, interval)
            .await
            .map(Some)
    }

    fn describe(&self) -> String {
        format!("{} table {}", self.source, self.table)
    }

    fn check_fields(&self, fields: &[String]) -> Result<(), LoaderError> {
        match self.layout.field_problems(fields, self.source.flavor()) {
            None => Ok(()),
            Some(problems) => Err(LoaderError::TableFields {
                table: self.table.to_string(),
                wanted: fields.join(", "),
                problems,
            }),
        }
    }
}

impl QuestDBLoader {
    fn context(&self, node_id: &NodeId, interval: Interval) -> Context {
        Context {
            table: self.table.to_string(),
            node_id: node_id.clone(),
            interval,
        }
    }
}

/// What an error about one fetch names.
struct Context {
    table: String,
    node_id: NodeId,
    interval: Interval,
}

/// Binary rows to Arrow columns.
struct Decoder<'a> {
    layout: &'a Layout,
    ts: Int64Builder,
    payload: Vec<Float64Builder>,
    previous: Option<Timestamp>,
    rows: u64,
    /// Rows arrive newest first (`ORDER BY ts DESC`) and are reversed at the end.
    descending: bool,
}

impl<'a> Decoder<'a> {
    fn new(layout: &'a Layout, start: Timestamp, end: Timestamp, interval: Interval) -> Self {
        let expected = (end.saturating_sub(start) / interval.secs_i64()).saturating_add(1);
        let reserve = expected.clamp(0, MAX_RESERVED_ROWS) as usize;
        Decoder {
            layout,
            ts: Int64Builder::with_capacity(reserve),
            payload: layout
                .payload
                .iter()
                .map(|_| Float64Builder::with_capacity(reserve))
                .collect(),
            previous: None,
            rows: 0,
            descending: false,
        }
    }

    /// Expects at most `count` rows, newest first.
    fn newest_first(mut self, count: u64) -> Self {
        let reserve = usize::try_from(count).unwrap_or(usize::MAX);
        let reserve = reserve.min(MAX_RESERVED_ROWS as usize);
        self.ts = Int64Builder::with_capacity(reserve);
        for builder in &mut self.payload {
            *builder = Float64Builder::with_capacity(reserve);
        }
        self.descending = true;
        self
    }

    fn len(&self) -> u64 {
        self.rows
    }

    fn push(&mut self, row: &Row, context: &Context) -> Result<(), LoaderError> {
        let field = |e| LoaderError::Decode {
            table: context.table.clone(),
            source: e,
        };
        let ts = match self.layout.ts {
            TsKind::Seconds => row.try_get::<_, Option<i64>>(0).map_err(field)?,
            TsKind::Seconds32 => row
                .try_get::<_, Option<i32>>(0)
                .map_err(field)?
                .map(i64::from),
            TsKind::Timestamp => row
                .try_get::<_, Option<NaiveDateTime>>(0)
                .map_err(field)?
                .map(|t| t.and_utc().timestamp()),
            TsKind::TimestampTz => row
                .try_get::<_, Option<DateTime<Utc>>>(0)
                .map_err(field)?
                .map(|t| t.timestamp()),
        };
        let Some(ts) = ts else {
            return Err(LoaderError::NullTs {
                table: context.table.clone(),
                node_id: context.node_id.clone(),
                interval: context.interval,
                rows: 1,
            });
        };
        self.check_order(ts, context)?;
        self.ts.append_value(ts);
        for (i, ((_, kind), builder)) in self
            .layout
            .payload
            .iter()
            .zip(&mut self.payload)
            .enumerate()
        {
            let column = i + 1;
            let value = match kind {
                NumKind::F8 | NumKind::Numeric => row.try_get::<_, Option<f64>>(column),
                NumKind::F4 => row
                    .try_get::<_, Option<f32>>(column)
                    .map(|v| v.map(f64::from)),
                NumKind::I8 => row
                    .try_get::<_, Option<i64>>(column)
                    .map(|v| v.map(|v| v as f64)),
                NumKind::I4 => row
                    .try_get::<_, Option<i32>>(column)
                    .map(|v| v.map(f64::from)),
                NumKind::I2 => row
                    .try_get::<_, Option<i16>>(column)
                    .map(|v| v.map(f64::from)),
            }
            .map_err(field)?;
            builder.append_option(value);
        }
        self.rows += 1;
        Ok(())
    }

    fn check_order(&mut self, ts: Timestamp, context: &Context) -> Result<(), LoaderError> {
        if let Some(previous) = self.previous {
            let back = if self.descending {
                ts > previous
            } else {
                ts < previous
            };
            if back {
                return Err(LoaderError::OutOfOrder {
                    table: context.table.clone(),
                    node_id: context.node_id.clone(),
                    interval: context.interval,
                    row: self.rows,
                    ts,
                    previous,
                });
            }
        }
        self.previous = Some(ts);
        Ok(())
    }

    fn finish(
        mut self,
        schema: &Arc<Schema>,
        context: Context,
    ) -> Result<RecordBatch, LoaderError> {
        let ts = self.ts.finish();
        let payload = self.payload.iter_mut().map(|b| b.finish());
        let mut columns: Vec<ArrayRef> = Vec::new();
        if self.descending {
            columns.push(Arc::new(ts.iter().rev().collect::<Int64Array>()));
            columns.extend(
                payload.map(|c| Arc::new(c.iter().rev().collect::<Float64Array>()) as ArrayRef),
            );
        } else {
            columns.push(Arc::new(ts));
            columns.extend(payload.map(|c| Arc::new(c) as ArrayRef));
        }
        RecordBatch::try_new(schema.clone(), columns).map_err(|source| LoaderError::Arrow {
            table: context.table,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            ts: TsKind::Seconds,
            node_id: "node_id".into(),
            interval: "interval".into(),
            ts_name: "ts".into(),
            payload: vec![],
            skipped: vec![],
            columns: vec![],
        }
    }

    #[test]
    fn rows_that_go_back_in_time_are_refused_with_their_position() {
        let layout = layout();
        let interval = Interval::from_secs(60).unwrap();
        let mut decoder = Decoder::new(&layout, 0, 1000, interval);
        let context = Context {
            table: "node_data".into(),
            node_id: NodeId::from_hex("abc"),
            interval,
        };
        decoder.check_order(120, &context).unwrap();
        decoder.rows += 1;
        decoder.check_order(120, &context).unwrap();
        decoder.rows += 1;
        let err = decoder.check_order(60, &context).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::OutOfOrder {
                    row: 2,
                    ts: 60,
                    previous: 120,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.is_input_error() && !err.is_retryable());
    }

    #[test]
    fn reserves_no_more_than_the_cap() {
        let layout = layout();
        let interval = Interval::from_secs(1).unwrap();
        let decoder = Decoder::new(&layout, 0, i64::MAX, interval);
        assert!(decoder.ts.capacity() <= MAX_RESERVED_ROWS as usize);
        let empty = Decoder::new(&layout, 10, 0, interval);
        assert_eq!(empty.len(), 0);
    }
}

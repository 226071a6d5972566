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
//! On the `postgres:` flavor a range is read instead with the same select wrapped in
//! `COPY (...) TO STDOUT (FORMAT binary)` and the COPY's tuples are decoded into the same
//! builders: the driver then hands over bytes rather than building a row object per row,
//! which saves about a quarter of the loader's CPU. The key and range reach the COPY,
//! which takes no parameters, as bound arguments of `set_config` in its transaction, read
//! back with `current_setting`. QuestDB's wire has no `COPY`, so `questdb:` keeps the
//! select.
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
use tokio_postgres::{NoTls, Row};

use super::table::{
    check_ts_unit, int_param, query_error, quote, read_layout, ts_bounds, Layout, NumKind, Param,
    TableName, TsKind, DEFAULT_TABLE, TS_LIMIT,
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

    /// Connects, checks the table and reads its layout: one attempt, not retried here (a
    /// run retries it with its backfill budget; see [`LoaderError::is_retryable`]). The
    /// connection's handshake is bounded by the DSN's `connect_timeout` (10 s by default).
    ///
    /// # Errors
    /// [`LoaderError::BadIdentifier`] for a bad table name, [`LoaderError::Unreachable`],
    /// [`LoaderError::ConnectTimeout`], [`LoaderError::AuthFailed`],
    /// [`LoaderError::PasswordRequired`], [`LoaderError::TableMissing`],
    /// [`LoaderError::MissingColumn`], [`LoaderError::TsType`] or [`LoaderError::TsUnit`]
    /// for a `BIGINT` `ts` that holds milliseconds (or micro-, nanoseconds).
    pub async fn open(
        source: &PgSource,
        options: &LoaderOptions,
    ) -> Result<QuestDBLoader, LoaderError> {
        let table = TableName::parse(&options.table)?;

        // Connect and read the table's layout.
        let (pool, client) = source.connect(options.pool_size).await?;
        let layout = read_layout(&client, source, &table).await?;
        check_ts_unit(&client, source, &table, &layout).await?;
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
        tracing::info!(
            source = %source, table = %table, ts_kind = ?layout.ts,
            payload = layout.payload.len(), skipped = layout.skipped.len(), "loader.opened"
        );
        let schema = batch_schema(&layout);
        Ok(QuestDBLoader {
            source: source.clone(),
            table,
            pool,
            layout,
            select_sql,
            last_sql,
            null_check_sql,
            schema,
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

/// The schema of a fetched batch: `ts` (Int64, never null) and one nullable Float64
/// column per payload field of `layout`, in its order.
fn batch_schema(layout: &Layout) -> Arc<Schema> {
    let mut fields = vec![Field::new("ts", DataType::Int64, false)];
    fields.extend(
        layout
            .payload
            .iter()
            .map(|(name, _)| Field::new(name, DataType::Float64, true)),
    );
    Arc::new(Schema::new(fields))
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
        let mut client = Checkout(Some(self.source.checkout(&self.pool).await?));
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

        // Stream the rows into the column builders: a `postgres:` range through a binary
        // COPY (no row object per row), anything else through the prepared select.
        let context = self.context(node_id, interval);
        if newest.is_none() && self.source.flavor() == Flavor::Postgres {
            self.copy_range(&mut client, &mut decoder, (start, end), &context)
                .await?;
        } else {
            let rows = client.query_raw(&statement, params).await.map_err(db)?;
            let mut rows = pin!(rows);
            while let Some(row) = rows.try_next().await.map_err(db)? {
                decoder.push(&row, &context)?;
            }
        }
        tracing::debug!(
            node_id = %node_id, interval = interval.secs(), start, end, newest,
            rows = decoder.len(), "loader.fetched"
        );
        client.give_back();
        decoder.finish(&self.schema, context)
    }
}

/// A pooled connection that goes back to the pool only when its fetch ran to the end.
///
/// A fetch abandoned midway (its attempt timed out, or the run was cancelled) may leave a
/// statement running on the server; a connection handed back in that state would make the
/// next attempt queue behind it, and against a server that hangs, hang the same way. So
/// such a connection leaves the pool (which opens a fresh one when needed), and the server
/// is asked to cancel what it was running. A fetch that ended in an error also leaves a
/// fresh connection for the retry.
struct Checkout(Option<deadpool_postgres::Object>);

impl Checkout {
    /// Returns the connection to the pool.
    fn give_back(&mut self) {
        self.0.take();
    }
}

impl std::ops::Deref for Checkout {
    type Target = deadpool_postgres::Object;

    fn deref(&self) -> &Self::Target {
        self.0
            .as_ref()
            .expect("a checkout holds its connection until dropped")
    }
}

impl std::ops::DerefMut for Checkout {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0
            .as_mut()
            .expect("a checkout holds its connection until dropped")
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let Some(object) = self.0.take() else {
            return;
        };
        let client = deadpool_postgres::Object::take(object);
        let cancel = client.cancel_token();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = cancel.cancel_query(NoTls).await {
                    tracing::debug!(error = %error, "loader.cancel_failed");
                }
            });
        }
        tracing::debug!("loader.connection_discarded");
    }
}

impl QuestDBLoader {
    /// The binary COPY of a range. `COPY` takes no parameters and no value is ever put
    /// into SQL text, so the node, interval and range are bound to `set_config` in the
    /// same transaction and the query reads them back with `current_setting` (a stable
    /// function, so the primary key's index still serves the range).
    fn copy_sql(&self) -> String {
        let ts = quote(&self.layout.ts_name);
        let bound = |name: &str| {
            let secs = format!("current_setting('{name}')::bigint");
            match self.layout.ts {
                TsKind::Seconds | TsKind::Seconds32 => secs,
                TsKind::Timestamp => format!("(to_timestamp({secs}) AT TIME ZONE 'UTC')"),
                TsKind::TimestampTz => format!("to_timestamp({secs})"),
            }
        };
        let mut columns = vec![ts.clone()];
        columns.extend(
            self.layout
                .payload
                .iter()
                .map(|(name, kind)| kind.select(name)),
        );
        format!(
            "COPY (SELECT {} FROM {} WHERE {} = current_setting('{COPY_NODE}') \
             AND {} = current_setting('{COPY_INTERVAL}')::bigint \
             AND {ts} >= {} AND {ts} < {} ORDER BY {ts}) TO STDOUT (FORMAT binary)",
            columns.join(", "),
            self.table.quoted(),
            quote(&self.layout.node_id),
            quote(&self.layout.interval),
            bound(COPY_START),
            bound(COPY_END),
        )
    }

    /// Reads `[start, end)` of the context's node through a binary COPY into `decoder`.
    async fn copy_range(
        &self,
        client: &mut deadpool_postgres::Object,
        decoder: &mut Decoder<'_>,
        (start, end): (Timestamp, Timestamp),
        context: &Context,
    ) -> Result<(), LoaderError> {
        let db = |e| query_error(&self.source, &self.table, e);
        let transaction = client.transaction().await.map_err(db)?;

        // Bind the key and range as settings local to this transaction.
        let start = start.clamp(-TS_LIMIT, TS_LIMIT).to_string();
        let end = end.clamp(-TS_LIMIT, TS_LIMIT).to_string();
        let interval = context.interval.secs().to_string();
        let node = context.node_id.as_str();
        let settings: [&(dyn ToSql + Sync); 4] = [&node, &interval, &start, &end];
        transaction
            .execute(COPY_SETTINGS_SQL, &settings)
            .await
            .map_err(db)?;

        // Stream the COPY's data into the column builders.
        let stream = transaction.copy_out(&self.copy_sql()).await.map_err(db)?;
        let mut stream = pin!(stream);
        let mut reader = CopyReader::default();
        while let Some(data) = stream.try_next().await.map_err(db)? {
            reader.feed(&data, decoder, context)?;
        }
        reader.finish(decoder, context)?;
        transaction.commit().await.map_err(db)
    }
}

/// The settings a binary COPY reads its node, interval and range from, and the query
/// that sets them (the names in the same order) for its transaction only.
///
/// The query also turns off explicit sorts for the transaction. When the rows of several
/// nodes share a table, `ts` alone correlates poorly with the rows' places on disk and
/// the planner prefers a bitmap scan and a sort over walking the key index (`node_id`,
/// `interval`, `ts`) in order, which costs the server some 40 % more CPU. Without an
/// index that yields `ts` order, every plan sorts and the choice among them is unchanged.
const COPY_NODE: &str = "qmtl.node_id";
const COPY_INTERVAL: &str = "qmtl.interval";
const COPY_START: &str = "qmtl.ts_start";
const COPY_END: &str = "qmtl.ts_end";
const COPY_SETTINGS_SQL: &str = "SELECT set_config('qmtl.node_id', $1, true), \
     set_config('qmtl.interval', $2, true), set_config('qmtl.ts_start', $3, true), \
     set_config('qmtl.ts_end', $4, true), set_config('enable_sort', 'off', true)";

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
        self.push_ts(ts, context)?;
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

    /// Appends a row's `ts`, refusing a null and a step back in time.
    fn push_ts(&mut self, ts: Option<Timestamp>, context: &Context) -> Result<(), LoaderError> {
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
        Ok(())
    }

    /// Appends one binary COPY tuple: `fields` gives each column's place in `data` as
    /// (offset, length), `None` for a SQL null, in select order, `ts` first.
    fn push_copy(
        &mut self,
        data: &[u8],
        fields: &[Option<(usize, usize)>],
        context: &Context,
    ) -> Result<(), CopyProblem> {
        let bytes = |field: &Option<(usize, usize)>| field.map(|(at, len)| &data[at..at + len]);
        let ts = match bytes(&fields[0]) {
            None => None,
            Some(bytes) => Some(match self.layout.ts {
                TsKind::Seconds => i64::from_be_bytes(fixed(bytes)?),
                TsKind::Seconds32 => i64::from(i32::from_be_bytes(fixed(bytes)?)),
                TsKind::Timestamp | TsKind::TimestampTz => {
                    let micros = i64::from_be_bytes(fixed(bytes)?);
                    if micros == i64::MAX || micros == i64::MIN {
                        return Err(CopyProblem::InfiniteTs);
                    }
                    micros.div_euclid(1_000_000) + PG_EPOCH
                }
            }),
        };
        self.push_ts(ts, context).map_err(CopyProblem::Loader)?;
        for ((field, (_, kind)), builder) in fields[1..]
            .iter()
            .zip(&self.layout.payload)
            .zip(&mut self.payload)
        {
            let Some(bytes) = bytes(field) else {
                builder.append_null();
                continue;
            };
            builder.append_value(match kind {
                NumKind::F8 | NumKind::Numeric => f64::from_be_bytes(fixed(bytes)?),
                NumKind::F4 => f64::from(f32::from_be_bytes(fixed(bytes)?)),
                NumKind::I8 => i64::from_be_bytes(fixed(bytes)?) as f64,
                NumKind::I4 => f64::from(i32::from_be_bytes(fixed(bytes)?)),
                NumKind::I2 => f64::from(i16::from_be_bytes(fixed(bytes)?)),
            });
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

/// PostgreSQL's epoch, 2000-01-01 00:00:00 UTC, in Unix seconds.
const PG_EPOCH: i64 = 946_684_800;

/// The signature that opens a binary COPY stream.
const COPY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// `bytes` as an array of exactly `N` bytes.
fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], CopyProblem> {
    bytes.try_into().map_err(|_| CopyProblem::Width {
        want: N,
        got: bytes.len(),
    })
}

/// What was wrong with a binary COPY stream.
#[derive(Debug)]
enum CopyProblem {
    /// The stream does not start with the binary COPY header.
    Header,
    /// A tuple with another number of columns than selected.
    Columns { want: usize, got: i16 },
    /// A value of another width than its column's type.
    Width { want: usize, got: usize },
    /// A `ts` of `infinity` or `-infinity`.
    InfiniteTs,
    /// The stream ended inside a tuple or without its trailer.
    Truncated,
    /// A row the loader refuses (a null `ts`, rows out of order).
    Loader(LoaderError),
}

/// A binary COPY stream that does not hold what the loader selected.
#[derive(Debug, thiserror::Error)]
#[error(
    "table {table}: the binary COPY for node {node_id} at interval {interval} is unreadable \
     at row {row}: {problem}"
)]
pub struct CopyFormatError {
    table: String,
    node_id: NodeId,
    interval: Interval,
    row: u64,
    problem: String,
}

impl CopyProblem {
    fn into_error(self, rows: u64, context: &Context) -> LoaderError {
        let problem = match self {
            CopyProblem::Loader(error) => return error,
            CopyProblem::Header => "no binary COPY header".to_owned(),
            CopyProblem::Columns { want, got } => format!("{got} columns, expected {want}"),
            CopyProblem::Width { want, got } => format!("a value of {got} bytes, expected {want}"),
            CopyProblem::InfiniteTs => "an infinite ts".to_owned(),
            CopyProblem::Truncated => "the stream ended inside a row".to_owned(),
        };
        LoaderError::permanent(CopyFormatError {
            table: context.table.clone(),
            node_id: context.node_id.clone(),
            interval: context.interval,
            row: rows,
            problem,
        })
    }
}

/// Splits a binary COPY stream, arriving in pieces of any size, into tuples.
#[derive(Default)]
struct CopyReader {
    /// The bytes of an incomplete header or tuple carried over to the next piece.
    pending: Vec<u8>,
    header_read: bool,
    trailer_read: bool,
    /// Where each column of the tuple being decoded lies (reused).
    fields: Vec<Option<(usize, usize)>>,
}

impl CopyReader {
    fn feed(
        &mut self,
        data: &[u8],
        decoder: &mut Decoder<'_>,
        context: &Context,
    ) -> Result<(), LoaderError> {
        let result = if self.pending.is_empty() {
            self.read(data, decoder, context).map(|used| {
                self.pending.extend_from_slice(&data[used..]);
            })
        } else {
            let mut buffer = std::mem::take(&mut self.pending);
            buffer.extend_from_slice(data);
            self.read(&buffer, decoder, context).map(|used| {
                buffer.drain(..used);
                self.pending = buffer;
            })
        };
        result.map_err(|problem| problem.into_error(decoder.rows, context))
    }

    fn finish(&self, decoder: &Decoder<'_>, context: &Context) -> Result<(), LoaderError> {
        if self.trailer_read && self.pending.is_empty() {
            Ok(())
        } else {
            Err(CopyProblem::Truncated.into_error(decoder.rows, context))
        }
    }

    /// Decodes every complete tuple of `data`; returns how many bytes were used.
    fn read(
        &mut self,
        data: &[u8],
        decoder: &mut Decoder<'_>,
        context: &Context,
    ) -> Result<usize, CopyProblem> {
        let mut at = 0;
        if !self.header_read {
            // Signature, flags, then an extension area of the given length.
            let Some(extension) = be_i32(data, COPY_SIGNATURE.len() + 4) else {
                return Ok(0);
            };
            if &data[..COPY_SIGNATURE.len()] != COPY_SIGNATURE || extension < 0 {
                return Err(CopyProblem::Header);
            }
            let body = COPY_SIGNATURE.len() + 8 + extension as usize;
            if data.len() < body {
                return Ok(0);
            }
            self.header_read = true;
            at = body;
        }
        let want = 1 + decoder.payload.len();
        while let Some(count) = be_i16(data, at) {
            if count == -1 {
                self.trailer_read = true;
                return Ok(data.len());
            }
            if usize::try_from(count).ok() != Some(want) {
                return Err(CopyProblem::Columns { want, got: count });
            }
            // Find every column of the tuple before decoding any: it may be incomplete.
            let mut end = at + 2;
            self.fields.clear();
            for _ in 0..want {
                let Some(len) = be_i32(data, end) else {
                    return Ok(at);
                };
                end += 4;
                let Ok(len) = usize::try_from(len) else {
                    self.fields.push(None);
                    continue;
                };
                if data.len() - end < len {
                    return Ok(at);
                }
                self.fields.push(Some((end, len)));
                end += len;
            }
            decoder.push_copy(data, &self.fields, context)?;
            at = end;
        }
        Ok(at)
    }
}

fn be_i16(data: &[u8], at: usize) -> Option<i16> {
    let bytes = data.get(at..at.checked_add(2)?)?;
    Some(i16::from_be_bytes([bytes[0], bytes[1]]))
}

fn be_i32(data: &[u8], at: usize) -> Option<i32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
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

    /// A binary COPY stream of `rows`, each `(ts, [payload])` with `None` for a null.
    fn copy_stream(rows: &[(Option<i64>, Vec<Option<f64>>)]) -> Vec<u8> {
        let mut out = COPY_SIGNATURE.to_vec();
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&3i32.to_be_bytes());
        out.extend_from_slice(b"ext");
        for (ts, payload) in rows {
            out.extend_from_slice(&(1 + payload.len() as i16).to_be_bytes());
            let values = std::iter::once(ts.map(i64::to_be_bytes))
                .chain(payload.iter().map(|v| v.map(f64::to_be_bytes)));
            for value in values {
                match value {
                    Some(bytes) => {
                        out.extend_from_slice(&8i32.to_be_bytes());
                        out.extend_from_slice(&bytes);
                    }
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn two_field_layout() -> Layout {
        Layout {
            payload: vec![("open".into(), NumKind::F8), ("close".into(), NumKind::F8)],
            ..layout()
        }
    }

    fn context() -> Context {
        Context {
            table: "node_data".into(),
            node_id: NodeId::from_hex("abc"),
            interval: Interval::from_secs(60).unwrap(),
        }
    }

    /// Feeds `stream` cut into pieces of `piece` bytes; the decoded batch or the error.
    fn read_in_pieces(
        layout: &Layout,
        stream: &[u8],
        piece: usize,
    ) -> Result<RecordBatch, LoaderError> {
        let context = context();
        let mut decoder = Decoder::new(layout, 0, 1000, context.interval);
        let mut reader = CopyReader::default();
        for data in stream.chunks(piece) {
            reader.feed(data, &mut decoder, &context)?;
        }
        reader.finish(&decoder, &context)?;
        decoder.finish(&batch_schema(layout), context)
    }

    #[test]
    fn a_binary_copy_decodes_the_same_however_it_is_cut() {
        let layout = two_field_layout();
        let stream = copy_stream(&[
            (Some(60), vec![Some(1.5), Some(2.5)]),
            (Some(120), vec![None, Some(-3.0)]),
            (Some(180), vec![Some(4.0), None]),
        ]);
        for piece in [1, 2, 3, 7, 19, 26, stream.len()] {
            let batch = read_in_pieces(&layout, &stream, piece).unwrap();
            let ts = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            assert_eq!(ts.values(), &[60, 120, 180], "pieces of {piece}");
            let open = batch
                .column(1)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap();
            let close = batch
                .column(2)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap();
            assert_eq!(
                open.iter().collect::<Vec<_>>(),
                [Some(1.5), None, Some(4.0)]
            );
            assert_eq!(
                close.iter().collect::<Vec<_>>(),
                [Some(2.5), Some(-3.0), None]
            );
        }
    }

    #[test]
    fn an_empty_binary_copy_is_an_empty_batch() {
        let batch = read_in_pieces(&two_field_layout(), &copy_stream(&[]), 4).unwrap();
        assert_eq!(batch.num_rows(), 0);
    }

    #[test]
    fn a_binary_copy_timestamp_counts_from_2000_and_floors_to_seconds() {
        let layout = Layout {
            ts: TsKind::Timestamp,
            ..layout()
        };
        // 2000-01-01 00:00:01.5 and one microsecond before 2000-01-01.
        let stream = copy_stream(&[(Some(1_500_000), vec![]), (Some(-1), vec![])]);
        let context = context();
        let mut decoder = Decoder::new(&layout, 0, 1000, context.interval);
        let mut reader = CopyReader::default();
        let err = reader.feed(&stream, &mut decoder, &context).unwrap_err();
        // The second row goes back in time: the first decoded as 946684801.
        assert!(
            matches!(
                err,
                LoaderError::OutOfOrder {
                    ts: 946_684_799,
                    previous: 946_684_801,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_binary_copy_that_does_not_fit_the_selection_is_refused_naming_the_row() {
        let layout = two_field_layout();
        let good = copy_stream(&[(Some(60), vec![Some(1.0), Some(2.0)])]);
        let narrow = copy_stream(&[
            (Some(60), vec![Some(1.0), Some(2.0)]),
            (Some(120), vec![Some(1.0)]),
        ]);
        let mut wide_value = good.clone();
        // The first payload value claims 4 bytes: the rest no longer lines up.
        wide_value[COPY_SIGNATURE.len() + 11 + 2 + 12..][..4].copy_from_slice(&4i32.to_be_bytes());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"COPY".repeat(8), "no binary COPY header"),
            (narrow, "row 1: 2 columns, expected 3"),
            (wide_value, "a value of 4 bytes, expected 8"),
            (good[..good.len() - 2].to_vec(), "ended inside a row"),
            (good[..good.len() - 5].to_vec(), "ended inside a row"),
        ];
        for (stream, want) in cases {
            let err = read_in_pieces(&layout, &stream, 5).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(want), "{text} should contain {want}");
            assert!(text.contains("node_data") && text.contains("abc"), "{text}");
            assert!(!err.is_retryable(), "{text}");
        }
        let null_ts = copy_stream(&[(None, vec![Some(1.0), Some(2.0)])]);
        let err = read_in_pieces(&layout, &null_ts, 64).unwrap_err();
        assert!(matches!(err, LoaderError::NullTs { .. }), "{err}");
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

//! The history table: its name, its layout as the server describes it, and the values
//! bound for its key columns.
//!
//! A history table has the key columns `node_id` (text), `interval` (an integer number of
//! seconds) and `ts`, plus numeric payload columns. `ts` is either `BIGINT` or `INTEGER`
//! epoch seconds or a `TIMESTAMP` / `TIMESTAMPTZ` (QuestDB's designated timestamp arrives
//! as `TIMESTAMP`, in UTC; `TIMESTAMPTZ` only through the `postgres:` flavor); it is
//! converted to epoch seconds once, here and in the loader. An `INTEGER` `ts` ends on
//! 2038-01-19 03:14:07 UTC; a `SMALLINT` one cannot hold a real date and is refused, and
//! so is a `BIGINT` one whose values are milli-, micro- or nanoseconds (told by their
//! magnitude when the table is opened, with the divisor that fixes them).
//!
//! Payload columns are `DOUBLE PRECISION`, `REAL`, `BIGINT`, `INTEGER` or `SMALLINT`,
//! each read as `f64`. Through the `postgres:` flavor a `NUMERIC` column is read too,
//! cast to `DOUBLE PRECISION` by the server (`"col"::float8`, so digits beyond an `f64`'s
//! precision are rounded); the `questdb:` flavor keeps to the types above. Other columns
//! are not read, and a stream field naming one is refused before any fetch.
//! Column names match ignoring case.
//!
//! SQL is never assembled from values: values are always bound parameters. Only
//! identifiers are written into statements, and only identifiers that passed
//! [`is_identifier`] (letters, digits and underscores, not starting with a digit), each
//! double-quoted.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, Utc};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::{Flavor, PgSource};
use crate::loader::LoaderError;
use crate::time::{check_seconds, TimeError, Timestamp};

/// The table used when none is named.
pub const DEFAULT_TABLE: &str = "node_data";

/// Epoch seconds beyond which no timestamp is bound (the year 5138; PostgreSQL and
/// chrono both hold it).
pub(crate) const TS_LIMIT: i64 = 100_000_000_000;

/// The payload types a table may use, as the fix for a column of another type.
const PAYLOAD_TYPES: &str = "use DOUBLE PRECISION, REAL, BIGINT or INTEGER";

/// A parameter value of a type chosen from the statement's parameter types.
pub(crate) type Param = Box<dyn ToSql + Sync + Send>;

/// Whether `text` is a plain SQL identifier: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Double-quotes an identifier that passed [`is_identifier`]. A `"` inside is doubled
/// all the same, so that even a name that escaped the check stays one identifier.
pub(crate) fn quote(ident: &str) -> String {
    debug_assert!(is_identifier(ident), "unchecked identifier {ident:?}");
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A checked table name, `TABLE` or `SCHEMA.TABLE`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    schema: Option<String>,
    name: String,
}

impl TableName {
    /// Checks `text`.
    ///
    /// # Errors
    /// [`LoaderError::BadIdentifier`] unless each part is a plain identifier.
    pub fn parse(text: &str) -> Result<TableName, LoaderError> {
        let text = text.trim();
        let bad = || LoaderError::BadIdentifier {
            name: text.to_owned(),
        };
        let (schema, name) = match text.split_once('.') {
            Some((s, n)) => (Some(s), n),
            None => (None, text),
        };
        if !is_identifier(name) || schema.is_some_and(|s| !is_identifier(s)) {
            return Err(bad());
        }
        Ok(TableName {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        })
    }

    /// The table's own name, without the schema.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name as written into SQL.
    pub(crate) fn quoted(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote(s), quote(&self.name)),
            None => quote(&self.name),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// How the table stores `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsKind {
    /// `BIGINT` epoch seconds.
    Seconds,
    /// `INTEGER` epoch seconds (up to 2038-01-19 03:14:07 UTC).
    Seconds32,
    /// `TIMESTAMP` without time zone, read as UTC.
    Timestamp,
    /// `TIMESTAMPTZ`.
    TimestampTz,
}

/// A payload column's SQL type, each read as `f64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumKind {
    F8,
    F4,
    I8,
    I4,
    I2,
    /// `NUMERIC`, selected as `"col"::float8` (the `postgres:` flavor only).
    Numeric,
}

impl NumKind {
    fn of(ty: &Type, flavor: Flavor) -> Option<NumKind> {
        Some(match (ty.clone(), flavor) {
            (Type::FLOAT8, _) => NumKind::F8,
            (Type::FLOAT4, _) => NumKind::F4,
            (Type::INT8, _) => NumKind::I8,
            (Type::INT4, _) => NumKind::I4,
            (Type::INT2, _) => NumKind::I2,
            (Type::NUMERIC, Flavor::Postgres) => NumKind::Numeric,
            _ => return None,
        })
    }

    /// The column as written into the select list.
    pub(crate) fn select(self, name: &str) -> String {
        match self {
            NumKind::Numeric => format!("{}::float8", quote(name)),
            _ => quote(name),
        }
    }
}

/// The columns of a history table.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// How `ts` is stored.
    pub ts: TsKind,
    /// The actual names of the key columns.
    pub node_id: String,
    pub interval: String,
    pub ts_name: String,
    /// Numeric payload columns, in table order.
    pub payload: Vec<(String, NumKind)>,
    /// Columns neither key nor numeric payload (not read).
    pub skipped: Vec<String>,
    /// Every column with its SQL type (upper case), in table order.
    pub columns: Vec<(String, String)>,
}

impl Layout {
    /// Why the table cannot feed `fields` (matched ignoring case), or `None` when every
    /// field is a payload column the loader reads.
    pub(crate) fn field_problems(&self, fields: &[String], flavor: Flavor) -> Option<String> {
        let keys = [&self.node_id, &self.interval, &self.ts_name];
        let mut missing = Vec::new();
        let mut problems = Vec::new();
        for field in fields {
            let read = self
                .payload
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(field));
            if read {
                continue;
            }
            let column = self
                .columns
                .iter()
                .filter(|(name, _)| !keys.contains(&name))
                .find(|(name, _)| name.eq_ignore_ascii_case(field));
            match column {
                None => missing.push(field.as_str()),
                Some((name, _)) if !is_identifier(name) => problems.push(format!(
                    "column \"{name}\" is not read because its name is not a plain \
                     identifier; rename it {field}"
                )),
                Some((name, ty)) => {
                    let also = if ty == "NUMERIC" && flavor == Flavor::QuestDb {
                        ", or read the table through the postgres: scheme, which casts \
                         NUMERIC to DOUBLE PRECISION"
                    } else {
                        ""
                    };
                    problems.push(format!(
                        "column {name} has type {ty}; {PAYLOAD_TYPES}{also}"
                    ));
                }
            }
        }
        if !missing.is_empty() {
            let names: Vec<&str> = self.columns.iter().map(|(n, _)| n.as_str()).collect();
            problems.insert(
                0,
                format!(
                    "missing {} (columns: {})",
                    missing.join(", "),
                    names.join(", ")
                ),
            );
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

/// Reads the layout of `table` from the server (a prepared `SELECT *`, never executed).
///
/// # Errors
/// [`LoaderError::TableMissing`], [`LoaderError::MissingColumn`],
/// [`LoaderError::TsType`] or [`LoaderError::Database`].
pub(crate) async fn read_layout(
    client: &Client,
    source: &PgSource,
    table: &TableName,
) -> Result<Layout, LoaderError> {
    let sql = format!("SELECT * FROM {}", table.quoted());
    let statement = client
        .prepare(&sql)
        .await
        .map_err(|e| query_error(source, table, e))?;
    let columns = statement.columns();
    let found = || {
        let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
        names.join(", ")
    };
    let key = |wanted: &'static str| {
        columns
            .iter()
            .find(|c| c.name().eq_ignore_ascii_case(wanted) && is_identifier(c.name()))
            .ok_or_else(|| LoaderError::MissingColumn {
                table: table.to_string(),
                column: wanted,
                found: found(),
            })
    };
    let node_id = key("node_id")?;
    let interval = key("interval")?;
    let ts = key("ts")?;
    let ts_kind = match (ts.type_().clone(), source.flavor()) {
        (Type::INT8, _) => TsKind::Seconds,
        (Type::INT4, _) => TsKind::Seconds32,
        (Type::TIMESTAMP, _) => TsKind::Timestamp,
        (Type::TIMESTAMPTZ, Flavor::Postgres) => TsKind::TimestampTz,
        (other, flavor) => {
            return Err(LoaderError::TsType {
                table: table.to_string(),
                found: other.name().to_uppercase(),
                expected: match flavor {
                    Flavor::QuestDb => {
                        "the questdb: scheme reads BIGINT or INTEGER epoch seconds or TIMESTAMP"
                    }
                    Flavor::Postgres => {
                        "expected BIGINT or INTEGER epoch seconds, TIMESTAMP or TIMESTAMPTZ"
                    }
                },
                hint: match other {
                    Type::TIMESTAMPTZ => {
                        " (it cannot bind TIMESTAMPTZ parameters); read this table through \
                         the postgres: scheme, e.g. postgres:postgresql://USER@HOST:PORT/DB"
                    }
                    Type::INT2 => {
                        "; SMALLINT holds no epoch second past 1970-01-01 09:06:07, store ts \
                         as BIGINT"
                    }
                    _ => "",
                },
            });
        }
    };
    let keys = [node_id.name(), interval.name(), ts.name()];
    let mut payload = Vec::new();
    let mut skipped = Vec::new();
    for column in columns {
        if keys.contains(&column.name()) {
            continue;
        }
        match NumKind::of(column.type_(), source.flavor()) {
            Some(kind) if is_identifier(column.name()) => {
                payload.push((column.name().to_owned(), kind))
            }
            _ => skipped.push(column.name().to_owned()),
        }
    }
    Ok(Layout {
        ts: ts_kind,
        node_id: node_id.name().to_owned(),
        interval: interval.name().to_owned(),
        ts_name: ts.name().to_owned(),
        payload,
        skipped,
        columns: columns
            .iter()
            .map(|c| (c.name().to_owned(), c.type_().name().to_uppercase()))
            .collect(),
    })
}

/// Checks, on one row, that a `BIGINT` `ts` holds epoch seconds: a value whose magnitude
/// says milli-, micro- or nanoseconds (see [`check_seconds`]) would match no range in
/// seconds, so the table is refused with the unit it looks like and the fix, rather than
/// every job loading nothing. Any row will do: a column holds one unit. An empty table
/// and the other `ts` kinds pass (an `INTEGER` cannot hold a millisecond time).
///
/// # Errors
/// [`LoaderError::TsUnit`], or the error of the query.
pub(crate) async fn check_ts_unit(
    client: &Client,
    source: &PgSource,
    table: &TableName,
    layout: &Layout,
) -> Result<(), LoaderError> {
    if layout.ts != TsKind::Seconds {
        return Ok(());
    }
    let ts = quote(&layout.ts_name);
    let sql = format!(
        "SELECT {ts} FROM {} WHERE {ts} IS NOT NULL LIMIT 1",
        table.quoted()
    );
    let row = client
        .query_opt(&sql, &[])
        .await
        .map_err(|e| query_error(source, table, e))?;
    let Some(row) = row else {
        return Ok(());
    };
    let value: i64 = row.try_get(0).map_err(|e| LoaderError::Decode {
        table: table.to_string(),
        source: e,
    })?;
    match check_seconds(value) {
        Err(TimeError::WrongUnit { value, unit, div }) => Err(LoaderError::TsUnit {
            table: table.to_string(),
            value,
            unit,
            div,
        }),
        _ => Ok(()),
    }
}

/// Classifies an error from a statement on `table`.
pub(crate) fn query_error(
    source: &PgSource,
    table: &TableName,
    error: tokio_postgres::Error,
) -> LoaderError {
    if error.code() == Some(&SqlState::UNDEFINED_TABLE) {
        return LoaderError::TableMissing {
            table: table.to_string(),
            addr: source.addr(),
            source: error,
        };
    }
    if error.as_db_error().is_none() && error.is_closed() {
        return LoaderError::Unreachable {
            addr: source.addr(),
            source: error,
        };
    }
    LoaderError::Database {
        addr: source.addr(),
        table: table.to_string(),
        source: error,
    }
}

/// `secs` as the parameter type `ty` of the `interval` column, or `None` when the value
/// does not fit (then no row can match).
pub(crate) fn int_param(ty: &Type, value: i64) -> Option<Param> {
    Some(match *ty {
        Type::INT2 => Box::new(i16::try_from(value).ok()?),
        Type::INT4 => Box::new(i32::try_from(value).ok()?),
        _ => Box::new(value),
    })
}

/// Epoch seconds as a parameter for a `ts` stored as `kind`. `TIMESTAMP` binds a
/// `NaiveDateTime` (UTC); only `TIMESTAMPTZ` (never on the `questdb:` flavor, see
/// [`read_layout`]) binds a `DateTime<Utc>`.
pub(crate) fn ts_param(kind: TsKind, secs: Timestamp) -> Param {
    let secs = secs.clamp(-TS_LIMIT, TS_LIMIT);
    let utc = || DateTime::<Utc>::from_timestamp(secs, 0).unwrap_or_default();
    match kind {
        TsKind::Seconds => Box::new(secs),
        TsKind::Seconds32 => Box::new(secs.clamp(i32::MIN.into(), i32::MAX.into()) as i32),
        TsKind::Timestamp => Box::new(naive(utc())),
        TsKind::TimestampTz => Box::new(utc()),
    }
}

/// The bounds of the half-open range `[start, end)` as parameters for a `ts` stored as
/// `kind`, or `None` when an `INTEGER` `ts` cannot express `end` (it ends after
/// `i32::MAX`). A `start` before `i32::MIN` is raised to it, which selects the same rows.
pub(crate) fn ts_bounds(kind: TsKind, start: Timestamp, end: Timestamp) -> Option<[Param; 2]> {
    if kind == TsKind::Seconds32 && end > i64::from(i32::MAX) {
        return None;
    }
    Some([ts_param(kind, start), ts_param(kind, end)])
}

fn naive(t: DateTime<Utc>) -> NaiveDateTime {
    t.naive_utc()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_identifiers_only() {
        for good in ["node_data", "_t", "T1", "public.node_data"] {
            assert!(TableName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "a-b",
            "a b",
            "x;drop table y",
            "\"q\"",
            "a.b.c",
            ".a",
        ] {
            let err = TableName::parse(bad).unwrap_err();
            assert!(
                matches!(err, LoaderError::BadIdentifier { .. }),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            TableName::parse("s.t").unwrap().quoted(),
            "\"s\".\"t\"".to_owned()
        );
    }

    #[test]
    fn interval_params_that_do_not_fit_match_nothing() {
        assert!(int_param(&Type::INT2, 40_000).is_none());
        assert!(int_param(&Type::INT4, 3600).is_some());
        assert!(int_param(&Type::INT8, i64::MAX).is_some());
    }
}

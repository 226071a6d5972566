//! The gateway's store: which strategies are registered, their DAGs verbatim, and the
//! node index that answers "who already computes node X" and "which queues carry these
//! tags".
//!
//! Two backends share one schema and one set of operations: an embedded SQLite database
//! ([`sqlite`], a file or memory) and PostgreSQL ([`postgres`], for gateways that share
//! state). Every statement binds its values as parameters; no SQL is ever assembled from
//! user input. The tables are `gateway_strategies` (one row per registration, with the
//! DAG text, `meta`, run type, status and the queue map it was given) and
//! `gateway_nodes` (one row per node of each registration, with its id, type, name,
//! interval and tags). A unique index on the DAG hash of active strategies makes "the
//! same DAG registered twice" a conflict even between gateways sharing PostgreSQL.
//!
//! Two columns make registration safe to retry and bounded in time, and both survive a
//! restart since they are stored with the strategy: `idempotency_key` (the client's key
//! for one run; a repeat with the same key gets the original registration back instead
//! of a conflict) and `lease_expires_ms` (epoch milliseconds; a strategy whose lease
//! has passed is ended by [`Store::expire`], which every handler runs first, and by the
//! registration transaction itself). Tables made by an older gateway get the columns
//! added on open.
//!
//! This module owns the store spec (`sqlite:PATH`, `sqlite::memory:`, `postgres:DSN`),
//! which never shows a DSN password when printed, and [`StoreError`].

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use qmtl::TagMatch;
use serde_json::{Map, Value};

use crate::echo::echo;
use crate::queue::{queue_name, tags_match};

pub mod postgres;
pub mod sqlite;

/// Where the gateway keeps its state.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// A SQLite database file, created when missing.
    Sqlite(PathBuf),
    /// A SQLite database in memory, lost when the gateway stops.
    SqliteMemory,
    /// A PostgreSQL database, by DSN (URL or `key=value` form).
    Postgres(String),
}

/// The default store: a SQLite file in the working directory.
pub const DEFAULT_STORE: &str = "sqlite:qmtl-gateway.db";

impl StoreSpec {
    /// Parses `sqlite:PATH`, `sqlite::memory:` or `postgres:DSN` (a bare `postgres://` or
    /// `postgresql://` URL is accepted as the DSN too).
    ///
    /// # Errors
    /// [`StoreError::BadSpec`] naming the accepted forms.
    pub fn parse(text: &str) -> Result<StoreSpec, StoreError> {
        let bad = || StoreError::BadSpec {
            spec: redact_dsn(text),
        };
        if text == "sqlite::memory:" {
            return Ok(StoreSpec::SqliteMemory);
        }
        if let Some(path) = text.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(StoreSpec::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(StoreSpec::Postgres(text.to_owned()));
        }
        if let Some(dsn) = text
            .strip_prefix("postgres:")
            .or_else(|| text.strip_prefix("postgresql:"))
        {
            if dsn.trim().is_empty() {
                return Err(bad());
            }
            return Ok(StoreSpec::Postgres(dsn.to_owned()));
        }
        Err(bad())
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreSpec::Sqlite(_) | StoreSpec::SqliteMemory => "sqlite",
            StoreSpec::Postgres(_) => "postgres",
        }
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            StoreSpec::SqliteMemory => f.write_str("sqlite::memory:"),
            StoreSpec::Postgres(dsn) => write!(f, "postgres:{}", redact_dsn(dsn)),
        }
    }
}

impl fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreSpec({self})")
    }
}

pub use qmtl::secret::redact_dsn;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store spec is not one of the accepted forms.
    #[error(
        "store '{spec}' is not understood; use sqlite:PATH, sqlite::memory: or \
         postgres:DSN"
    )]
    BadSpec {
        /// The spec as given, password redacted.
        spec: String,
    },
    /// The PostgreSQL DSN does not parse.
    #[error("the PostgreSQL DSN of store '{spec}' is not valid: {source}")]
    BadDsn {
        /// The spec, password redacted.
        spec: String,
        /// The parse error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The SQLite database could not be opened or set up.
    #[error(
        "cannot open the SQLite store {path}: {source}; give a writable file in an existing \
         directory (sqlite:PATH) or sqlite::memory:"
    )]
    SqliteOpen {
        /// The path (or `:memory:`).
        path: String,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A SQLite statement failed.
    #[error("SQLite store: {op} failed: {source}")]
    Sqlite {
        /// The operation.
        op: &'static str,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The SQLite worker thread could not be started.
    #[error("cannot start the SQLite store thread: {source}")]
    SqliteThread {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The SQLite worker thread is gone (the gateway is stopping).
    #[error("SQLite store: {op} failed: the store is closed")]
    SqliteClosed {
        /// The operation.
        op: &'static str,
    },
    /// No PostgreSQL connection could be had (the server is unreachable, refused us for
    /// a reason other than authentication, or the pool timed out).
    #[error(
        "cannot connect to the PostgreSQL store at {target}: {}",
        postgres::describe_pool_error(.source)
    )]
    PostgresConnect {
        /// host:port/dbname, without credentials.
        target: String,
        /// The cause.
        #[source]
        source: deadpool_postgres::PoolError,
    },
    /// The PostgreSQL server refused the DSN's user name or password (SQLSTATE class
    /// 28, invalid authorization).
    #[error(
        "authentication failed for user {user} at the PostgreSQL store {target}; check \
         the user name and password in the DSN"
    )]
    PostgresAuth {
        /// host:port/dbname, without credentials.
        target: String,
        /// The user name the DSN gives.
        user: String,
        /// The server's answer (never holds the password).
        #[source]
        source: tokio_postgres::Error,
    },
    /// A PostgreSQL statement failed.
    #[error("PostgreSQL store: {op} failed: {source}")]
    Postgres {
        /// The operation.
        op: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The PostgreSQL connection pool could not be built.
    #[error("cannot set up the PostgreSQL store at {target}: {source}")]
    PostgresPool {
        /// host:port/dbname, without credentials.
        target: String,
        /// The cause.
        #[source]
        source: deadpool_postgres::BuildError,
    },
    /// A stored JSON column does not parse.
    #[error("strategy {strategy_id}: stored {column} is not valid JSON: {source}")]
    Corrupt {
        /// The strategy.
        strategy_id: String,
        /// The column.
        column: &'static str,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// An idempotency key came back with a registration other than the one it was
    /// first sent with: another DAG, run type or `meta`.
    #[error(
        "idempotency key '{}' was first used for strategy {strategy_id} with a \
         different {differs}; use a new key for each run",
        echo(key)
    )]
    KeyReused {
        /// The key.
        key: String,
        /// The strategy first registered with it.
        strategy_id: String,
        /// What differs: `DAG`, `run_type` or `meta`.
        differs: &'static str,
    },
    /// An idempotency key came back after its strategy ended (deleted or lease lapsed).
    #[error(
        "strategy {strategy_id}, registered with this idempotency key, has ended (deleted \
         or its lease lapsed); register again with a new key"
    )]
    KeyEnded {
        /// The ended strategy.
        strategy_id: String,
    },
    /// The same DAG is registered and active already.
    #[error(
        "the same DAG (hash {dag_hash}) is already registered as active strategy \
         {strategy_id}; end it with DELETE /strategies/{strategy_id} first"
    )]
    Duplicate {
        /// The DAG's canonical hash.
        dag_hash: String,
        /// The active strategy that has it.
        strategy_id: String,
    },
}

impl StoreError {
    /// Whether the error is a duplicate registration (HTTP 409).
    pub fn is_conflict(&self) -> bool {
        self.conflicting_strategy().is_some()
    }

    /// For a duplicate registration, the active strategy that has the same DAG.
    pub fn conflicting_strategy(&self) -> Option<&str> {
        match self {
            StoreError::Duplicate { strategy_id, .. } => Some(strategy_id),
            _ => None,
        }
    }

    /// Whether the error is in the user's configuration (a bad spec or DSN, a wrong
    /// user name or password, a SQLite path that cannot be a database file).
    pub fn is_usage(&self) -> bool {
        match self {
            StoreError::BadSpec { .. }
            | StoreError::BadDsn { .. }
            | StoreError::PostgresAuth { .. } => true,
            StoreError::SqliteOpen { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(
                    rusqlite::ErrorCode::CannotOpen
                        | rusqlite::ErrorCode::NotADatabase
                        | rusqlite::ErrorCode::ReadOnly
                )
            ),
            _ => false,
        }
    }
}

/// A strategy's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Registered; its nodes are offered to others.
    Active,
    /// Ended by `DELETE`; its nodes are no longer offered.
    Ended,
}

impl Status {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Ended => "ended",
        }
    }

    /// Parses a stored name (anything unknown reads as ended, offering nothing).
    pub fn parse(text: &str) -> Status {
        if text == "active" {
            Status::Active
        } else {
            Status::Ended
        }
    }
}

/// One node row to store.
#[derive(Debug, Clone)]
pub struct NodeRow {
    /// Hex node id.
    pub node_id: String,
    /// `StreamInput`, `Node` or `TagQueryNode`.
    pub node_type: String,
    /// Name, verbatim.
    pub name: String,
    /// Interval in seconds.
    pub interval: i64,
    /// Tags as a JSON array, verbatim.
    pub tags_json: String,
}

/// A tag query of a new registration, to resolve against other active strategies.
#[derive(Debug, Clone)]
pub struct TagQuery {
    /// The tag query node's id (the queue map key).
    pub node_id: String,
    /// Its interval in seconds.
    pub interval: i64,
    /// Its query tags.
    pub tags: Vec<String>,
    /// Any or all.
    pub mode: TagMatch,
}

/// Everything stored for a new registration.
#[derive(Debug, Clone)]
pub struct NewStrategy {
    /// The new id.
    pub strategy_id: String,
    /// The DAG's canonical hash.
    pub dag_hash: String,
    /// The DAG text, verbatim.
    pub dag_text: String,
    /// `meta` as JSON text.
    pub meta_text: Option<String>,
    /// The run type's wire name.
    pub run_type: &'static str,
    /// Registration time, epoch seconds.
    pub created_at: i64,
    /// Registration time, epoch milliseconds (leases are kept in milliseconds).
    pub now_ms: i64,
    /// The client's key for this registration, when it sent one.
    pub idempotency_key: Option<String>,
    /// When the lease ends, epoch milliseconds (`None`: never).
    pub lease_expires_ms: Option<i64>,
    /// The DAG's nodes.
    pub nodes: Vec<NodeRow>,
    /// Its tag queries.
    pub tag_queries: Vec<TagQuery>,
}

/// What a registration stored, or found already stored under its idempotency key.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The strategy's id (the original one for a repeat).
    pub strategy_id: String,
    /// Its queue map (the original one for a repeat).
    pub queue_map: Map<String, Value>,
    /// Whether this was a repeat of an earlier registration with the same key.
    pub repeated: bool,
    /// Strategies the registration's transaction ended because their lease passed.
    pub expired: u64,
}

/// The outcome of renewing a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The strategy is active; its lease now ends later.
    Renewed,
    /// The strategy exists but has ended (deleted, or its lease lapsed).
    Ended,
    /// No such strategy.
    Unknown,
}

/// A stored strategy.
#[derive(Debug, Clone)]
pub struct StrategyRecord {
    /// Its id.
    pub strategy_id: String,
    /// Active or ended.
    pub status: Status,
    /// The run type's wire name.
    pub run_type: String,
    /// The DAG's canonical hash.
    pub dag_hash: String,
    /// The queue map it was given at registration.
    pub queue_map: Map<String, Value>,
    /// Registration time, epoch seconds.
    pub created_at: i64,
}

/// A candidate queue: a node of an active strategy, with its tags as stored.
pub(crate) struct Candidate {
    pub node_id: String,
    pub tags_json: String,
}

/// The queue ids among `candidates` whose tags match, sorted and de-duplicated.
pub(crate) fn matching_queues(
    candidates: &[Candidate],
    query: &[String],
    mode: TagMatch,
) -> Vec<String> {
    let mut out = BTreeSet::new();
    for c in candidates {
        // Tags were checked to be a string array when stored; a row that no longer
        // parses offers nothing rather than failing every query.
        let tags: Vec<String> = serde_json::from_str(&c.tags_json).unwrap_or_default();
        if tags_match(&tags, query, mode) {
            out.insert(queue_name(&c.node_id));
        }
    }
    out.into_iter().collect()
}

/// The queue map: shared nodes map to their queue; tag queries to their queue lists.
pub(crate) fn build_queue_map(
    shared: Vec<String>,
    resolved: Vec<(String, Vec<String>)>,
) -> Map<String, Value> {
    let mut map = Map::new();
    for id in shared {
        let queue = queue_name(&id);
        map.insert(id, Value::String(queue));
    }
    for (id, queues) in resolved {
        map.insert(
            id,
            Value::Array(queues.into_iter().map(Value::String).collect()),
        );
    }
    map
}

/// An open store.
pub enum Store {
    /// Embedded SQLite.
    Sqlite(sqlite::SqliteStore),
    /// PostgreSQL.
    Postgres(postgres::PgStore),
}

impl Store {
    /// Opens (and if needed creates the tables of) the store `spec` names.
    ///
    /// # Errors
    /// [`StoreError`] when the database cannot be opened, reached or set up.
    pub async fn open(spec: &StoreSpec) -> Result<Store, StoreError> {
        match spec {
            StoreSpec::Sqlite(path) => Ok(Store::Sqlite(
                sqlite::SqliteStore::open(Some(path.clone())).await?,
            )),
            StoreSpec::SqliteMemory => Ok(Store::Sqlite(sqlite::SqliteStore::open(None).await?)),
            StoreSpec::Postgres(dsn) => Ok(Store::Postgres(
                postgres::PgStore::open(dsn, &spec.to_string()).await?,
            )),
        }
    }

    /// Stores a registration and returns the queue map it gets, in one transaction that
    /// first ends strategies whose lease has passed. A registration carrying the
    /// idempotency key of an active strategy with the same DAG gets that strategy back
    /// (its lease renewed) instead of a conflict.
    ///
    /// # Errors
    /// [`StoreError::Duplicate`] when an active strategy has the same DAG hash;
    /// [`StoreError::KeyReused`] and [`StoreError::KeyEnded`] for a key already used
    /// with another DAG or by an ended strategy; other variants for database failures.
    pub async fn register(&self, new: NewStrategy) -> Result<Registered, StoreError> {
        match self {
            Store::Sqlite(s) => s.register(new).await,
            Store::Postgres(s) => s.register(new).await,
        }
    }

    /// The strategy with id `strategy_id`, if any.
    ///
    /// # Errors
    /// [`StoreError`] for database failures.
    pub async fn strategy(&self, strategy_id: &str) -> Result<Option<StrategyRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.strategy(strategy_id).await,
            Store::Postgres(s) => s.strategy(strategy_id).await,
        }
    }

    /// Ends a strategy; returns false when no such strategy exists. Ending an ended
    /// strategy is not an error.
    ///
    /// # Errors
    /// [`StoreError`] for database failures.
    pub async fn end(&self, strategy_id: &str, ended_at: i64) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.end(strategy_id, ended_at).await,
            Store::Postgres(s) => s.end(strategy_id, ended_at).await,
        }
    }

    /// Ends every active strategy whose lease ended at or before `now_ms`; returns how
    /// many it ended.
    ///
    /// # Errors
    /// [`StoreError`] for database failures.
    pub async fn expire(&self, now_ms: i64) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.expire(now_ms).await,
            Store::Postgres(s) => s.expire(now_ms).await,
        }
    }

    /// Moves the lease of active strategy `strategy_id` to end at `until_ms`, unless it
    /// has already lapsed at `now_ms` (a lapsed lease is never revived).
    ///
    /// # Errors
    /// [`StoreError`] for database failures.
    pub async fn renew(
        &self,
        strategy_id: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Renewal, StoreError> {
        match self {
            Store::Sqlite(s) => s.renew(strategy_id, now_ms, until_ms).await,
            Store::Postgres(s) => s.renew(strategy_id, now_ms, until_ms).await,
        }
    }

    /// Ends the strategy registered with idempotency key `key`; returns its id, or
    /// `None` when no strategy has that key.
    ///
    /// # Errors
    /// [`StoreError`] for database failures.
    pub async fn end_by_key(&self, key: &str, ended_at: i64) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.end_by_key(key, ended_at).await,
            Store::Postgres(s) => s.end_by_key(key, ended_at).await,
        }
    }

    /// Queues of active strategies at `interval` whose tags match `tags` under `mode`.
    ///
    /// # Errors
    /// [`StoreError`] for database failures.
    pub async fn queues_by_tag(
        &self,
        tags: Vec<String>,
        interval: i64,
        mode: TagMatch,
    ) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.queues_by_tag(tags, interval, mode).await,
            Store::Postgres(s) => s.queues_by_tag(tags, interval, mode).await,
        }
    }

    /// How many strategies are active; also proves the store answers.
    ///
    /// # Errors
    /// [`StoreError`] for database failures.
    pub async fn active_count(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.active_count().await,
            Store::Postgres(s) => s.active_count().await,
        }
    }
}

/// What a registration finds stored under its idempotency key (the columns of each
/// backend's `BY_KEY` query, in this order).
pub(crate) struct KeyedRow {
    pub strategy_id: String,
    pub dag_hash: String,
    pub status: String,
    pub queue_map: String,
    pub run_type: String,
    pub meta: Option<String>,
}

/// What differs between the registration stored under a key and `new`, sent with the
/// same key: `None` when it is the same registration (the same DAG, run type and
/// `meta`, whatever the order of `meta`'s keys).
fn difference(row: &KeyedRow, new: &NewStrategy) -> Option<&'static str> {
    if row.dag_hash != new.dag_hash {
        return Some("DAG");
    }
    if row.run_type != new.run_type {
        return Some("run_type");
    }
    let parse = |text: Option<&str>| text.map(serde_json::from_str::<Value>);
    let same_meta = match (parse(row.meta.as_deref()), parse(new.meta_text.as_deref())) {
        (None, None) => true,
        (Some(Ok(stored)), Some(Ok(sent))) => stored == sent,
        // A stored text that no longer parses is compared as text.
        _ => row.meta == new.meta_text,
    };
    (!same_meta).then_some("meta")
}

/// The answer to a registration whose key is already stored (see [`Store::register`]).
pub(crate) fn repeat_of(
    new: &NewStrategy,
    row: KeyedRow,
    expired: u64,
) -> Result<Registered, StoreError> {
    if let Some(differs) = difference(&row, new) {
        return Err(StoreError::KeyReused {
            key: new.idempotency_key.clone().unwrap_or_default(),
            strategy_id: row.strategy_id,
            differs,
        });
    }
    let KeyedRow {
        strategy_id,
        status,
        queue_map,
        ..
    } = row;
    if Status::parse(&status) != Status::Active {
        return Err(StoreError::KeyEnded { strategy_id });
    }
    Ok(Registered {
        queue_map: parse_queue_map(&strategy_id, &queue_map)?,
        strategy_id,
        repeated: true,
        expired,
    })
}

/// Parses a stored queue map.
pub(crate) fn parse_queue_map(
    strategy_id: &str,
    text: &str,
) -> Result<Map<String, Value>, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt {
        strategy_id: strategy_id.to_owned(),
        column: "queue_map",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_without_passwords() {
        let cases = [
            ("sqlite:qmtl-gateway.db", "sqlite:qmtl-gateway.db"),
            ("sqlite::memory:", "sqlite::memory:"),
            (
                "postgres:postgresql://u:s3cret@127.0.0.1:5432/db",
                "postgres:postgresql://u:***@127.0.0.1:5432/db",
            ),
            (
                "postgresql://u:s3cret@h/db?sslmode=disable",
                "postgres:postgresql://u:***@h/db?sslmode=disable",
            ),
            (
                "postgres:host=h user=u password=s3cret dbname=d",
                "postgres:host=h user=u password=*** dbname=d",
            ),
            (
                "postgres:host=h password = 's3 cret' dbname=d",
                "postgres:host=h password = *** dbname=d",
            ),
            (
                "postgres:postgresql://h/db?user=u&password=s3cret&x=1",
                "postgres:postgresql://h/db?user=u&password=***&x=1",
            ),
        ];
        for (text, shown) in cases {
            let spec = StoreSpec::parse(text).unwrap();
            assert_eq!(spec.to_string(), shown, "{text}");
            assert!(!format!("{spec:?}").contains("s3"), "{text}");
        }
    }

    #[test]
    fn bad_specs_are_refused_without_echoing_passwords() {
        for text in [
            "",
            "sqlite:",
            "postgres:",
            "mysql://u:s3cret@h/db",
            "memory",
        ] {
            let err = StoreSpec::parse(text).unwrap_err();
            assert!(err.is_usage(), "{text}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn a_resent_key_is_a_repeat_only_with_the_same_dag_run_type_and_meta() {
        let stored = KeyedRow {
            strategy_id: "s".into(),
            dag_hash: "h".into(),
            status: "active".into(),
            queue_map: "{}".into(),
            run_type: "dry-run".into(),
            meta: Some(r#"{"a":1,"b":[2]}"#.into()),
        };
        let sent = |hash: &str, run_type: &'static str, meta: Option<&str>| NewStrategy {
            strategy_id: "new".into(),
            dag_hash: hash.into(),
            dag_text: "{}".into(),
            meta_text: meta.map(str::to_owned),
            run_type,
            created_at: 0,
            now_ms: 0,
            idempotency_key: Some("k".into()),
            lease_expires_ms: None,
            nodes: Vec::new(),
            tag_queries: Vec::new(),
        };
        let cases = [
            (sent("h", "dry-run", Some(r#"{"a":1,"b":[2]}"#)), None),
            (sent("h", "dry-run", Some(r#"{ "b": [2], "a": 1 }"#)), None),
            (
                sent("other", "dry-run", Some(r#"{"a":1,"b":[2]}"#)),
                Some("DAG"),
            ),
            (
                sent("h", "live", Some(r#"{"a":1,"b":[2]}"#)),
                Some("run_type"),
            ),
            (
                sent("h", "dry-run", Some(r#"{"a":1,"b":[3]}"#)),
                Some("meta"),
            ),
            (sent("h", "dry-run", Some("{}")), Some("meta")),
            (sent("h", "dry-run", None), Some("meta")),
        ];
        for (new, want) in cases {
            assert_eq!(difference(&stored, &new), want, "{new:?}");
        }
        let no_meta = KeyedRow {
            meta: None,
            ..stored
        };
        assert_eq!(difference(&no_meta, &sent("h", "dry-run", None)), None);
    }

    #[test]
    fn queue_map_has_strings_for_shared_nodes_and_lists_for_tag_queries() {
        let map = build_queue_map(
            vec!["aa".into()],
            vec![("qq".into(), vec!["bb".into(), "cc".into()])],
        );
        assert_eq!(
            Value::Object(map),
            serde_json::json!({"aa": "aa", "qq": ["bb", "cc"]})
        );
    }
}

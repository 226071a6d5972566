//! The embedded SQLite store: one connection owned by a dedicated thread.
//!
//! SQLite calls block, so they never run on the async runtime: every operation is a
//! closure sent to the store's thread, which runs it against its connection and answers
//! on a oneshot channel. One connection also serializes writes, which is what SQLite
//! wants. The thread ends, closing the database, when the last [`SqliteStore`] handle is
//! dropped. Statements are the ones described in [`super`], always with bound
//! parameters.

use std::path::PathBuf;
use std::sync::mpsc;

use qmtl::TagMatch;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{
    build_queue_map, matching_queues, parse_queue_map, repeat_of, Candidate, KeyedRow, NewStrategy,
    Registered, Renewal, Status, StoreError, StrategyRecord,
};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS gateway_strategies (
    strategy_id TEXT PRIMARY KEY,
    dag_hash    TEXT NOT NULL,
    dag_json    TEXT NOT NULL,
    meta        TEXT,
    run_type    TEXT NOT NULL,
    status      TEXT NOT NULL,
    queue_map   TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    idempotency_key  TEXT,
    lease_expires_ms INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS gateway_strategies_active_dag
    ON gateway_strategies (dag_hash) WHERE status = 'active';
CREATE TABLE IF NOT EXISTS gateway_nodes (
    strategy_id TEXT NOT NULL REFERENCES gateway_strategies (strategy_id),
    ord         INTEGER NOT NULL,
    node_id     TEXT NOT NULL,
    node_type   TEXT NOT NULL,
    name        TEXT NOT NULL,
    interval_s  INTEGER NOT NULL,
    tags        TEXT NOT NULL,
    PRIMARY KEY (strategy_id, ord)
);
CREATE INDEX IF NOT EXISTS gateway_nodes_node_id ON gateway_nodes (node_id);
CREATE INDEX IF NOT EXISTS gateway_nodes_interval ON gateway_nodes (interval_s);
";

/// Columns added after the first version, for tables an older gateway created.
const ADDED_COLUMNS: [(&str, &str); 2] = [
    (
        "idempotency_key",
        "ALTER TABLE gateway_strategies ADD COLUMN idempotency_key TEXT",
    ),
    (
        "lease_expires_ms",
        "ALTER TABLE gateway_strategies ADD COLUMN lease_expires_ms INTEGER",
    ),
];

const KEY_INDEX: &str = "
CREATE UNIQUE INDEX IF NOT EXISTS gateway_strategies_key
    ON gateway_strategies (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS gateway_strategies_lease
    ON gateway_strategies (lease_expires_ms) WHERE status = 'active';
";

const END_ACTIVE: &str = "
UPDATE gateway_strategies SET status = 'ended', ended_at = ?2
WHERE strategy_id = ?1 AND status = 'active'";

const EXPIRE: &str = "
UPDATE gateway_strategies SET status = 'ended', ended_at = ?2
WHERE status = 'active' AND lease_expires_ms IS NOT NULL AND lease_expires_ms <= ?1";

const BY_KEY: &str = "
SELECT strategy_id, dag_hash, status, queue_map, run_type, meta
FROM gateway_strategies WHERE idempotency_key = ?1";

const ACTIVE_BY_HASH: &str =
    "SELECT strategy_id FROM gateway_strategies WHERE dag_hash = ?1 AND status = 'active'";

const SHARED_NODES: &str = "
SELECT DISTINCT mine.node_id
FROM gateway_nodes mine
JOIN gateway_nodes other
    ON other.node_id = mine.node_id AND other.strategy_id <> mine.strategy_id
JOIN gateway_strategies s
    ON s.strategy_id = other.strategy_id AND s.status = 'active'
WHERE mine.strategy_id = ?1 AND mine.node_type <> 'TagQueryNode'
ORDER BY mine.node_id";

const CANDIDATES: &str = "
SELECT DISTINCT n.node_id, n.tags
FROM gateway_nodes n
JOIN gateway_strategies s ON s.strategy_id = n.strategy_id AND s.status = 'active'
WHERE n.interval_s = ?1 AND n.node_type <> 'TagQueryNode' AND n.strategy_id <> ?2";

/// A SQLite store; cheap to share behind an `Arc`.
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
}

impl SqliteStore {
    /// Opens the database at `path` (in memory when `None`) and creates the tables.
    ///
    /// # Errors
    /// [`StoreError::SqliteOpen`] when the file cannot be opened or set up.
    pub async fn open(path: Option<PathBuf>) -> Result<SqliteStore, StoreError> {
        let label = path
            .as_ref()
            .map_or_else(|| ":memory:".to_owned(), |p| p.display().to_string());
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready_tx, ready) = oneshot::channel();
        std::thread::Builder::new()
            .name("qmtl-gateway-sqlite".into())
            .spawn(move || {
                let opened = match &path {
                    Some(p) => Connection::open(p),
                    None => Connection::open_in_memory(),
                }
                .and_then(|conn| {
                    conn.busy_timeout(std::time::Duration::from_secs(5))?;
                    conn.execute_batch(SCHEMA)?;
                    migrate(&conn)?;
                    Ok(conn)
                });
                let mut conn = match opened {
                    Ok(conn) => {
                        let _ = ready_tx.send(Ok(()));
                        conn
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = inbox.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|source| StoreError::SqliteThread { source })?;
        match ready.await {
            Ok(Ok(())) => Ok(SqliteStore { jobs }),
            Ok(Err(source)) => Err(StoreError::SqliteOpen {
                path: label,
                source,
            }),
            Err(_) => Err(StoreError::SqliteClosed { op: "open" }),
        }
    }

    /// Runs `f` on the store's thread and waits for its result.
    async fn call<R, F>(&self, op: &'static str, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::SqliteClosed { op })?;
        rx.await.map_err(|_| StoreError::SqliteClosed { op })?
    }

    pub(super) async fn register(&self, new: NewStrategy) -> Result<Registered, StoreError> {
        self.call("register", move |conn| register(conn, &new))
            .await
    }

    pub(super) async fn expire(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.call("expire leases", move |conn| {
            let ended = conn
                .execute(EXPIRE, params![now_ms, now_ms.div_euclid(1000)])
                .map_err(sql("expire leases"))?;
            Ok(ended as u64)
        })
        .await
    }

    pub(super) async fn renew(
        &self,
        id: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Renewal, StoreError> {
        let id = id.to_owned();
        self.call("renew lease", move |conn| {
            let op = "renew lease";
            let renewed = conn
                .execute(
                    "UPDATE gateway_strategies SET lease_expires_ms = ?3 \
                     WHERE strategy_id = ?1 AND status = 'active' \
                     AND (lease_expires_ms IS NULL OR lease_expires_ms > ?2)",
                    params![id, now_ms, until_ms],
                )
                .map_err(sql(op))?;
            if renewed > 0 {
                return Ok(Renewal::Renewed);
            }
            let known = conn
                .query_row(
                    "SELECT 1 FROM gateway_strategies WHERE strategy_id = ?1",
                    params![id],
                    |_| Ok(()),
                )
                .optional()
                .map_err(sql(op))?
                .is_some();
            Ok(if known {
                Renewal::Ended
            } else {
                Renewal::Unknown
            })
        })
        .await
    }

    pub(super) async fn end_by_key(
        &self,
        key: &str,
        ended_at: i64,
    ) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.call("end strategy by key", move |conn| {
            let op = "end strategy by key";
            let id: Option<String> = conn
                .query_row(
                    "SELECT strategy_id FROM gateway_strategies WHERE idempotency_key = ?1",
                    params![key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql(op))?;
            if let Some(id) = &id {
                conn.execute(END_ACTIVE, params![id, ended_at])
                    .map_err(sql(op))?;
            }
            Ok(id)
        })
        .await
    }

    pub(super) async fn strategy(&self, id: &str) -> Result<Option<StrategyRecord>, StoreError> {
        let id = id.to_owned();
        self.call("read strategy", move |conn| {
            let op = "read strategy";
            let row = conn
                .query_row(
                    "SELECT status, run_type, dag_hash, queue_map, created_at \
                     FROM gateway_strategies WHERE strategy_id = ?1",
                    params![id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    },
                )
                .optional()
                .map_err(sql(op))?;
            let Some((status, run_type, dag_hash, queue_map, created_at)) = row else {
                return Ok(None);
            };
            Ok(Some(StrategyRecord {
                queue_map: parse_queue_map(&id, &queue_map)?,
                strategy_id: id,
                status: Status::parse(&status),
                run_type,
                dag_hash,
                created_at,
            }))
        })
        .await
    }

    pub(super) async fn end(&self, id: &str, ended_at: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call("end strategy", move |conn| {
            let op = "end strategy";
            let known = conn
                .query_row(
                    "SELECT 1 FROM gateway_strategies WHERE strategy_id = ?1",
                    params![id],
                    |_| Ok(()),
                )
                .optional()
                .map_err(sql(op))?
                .is_some();
            if known {
                conn.execute(END_ACTIVE, params![id, ended_at])
                    .map_err(sql(op))?;
            }
            Ok(known)
        })
        .await
    }

    pub(super) async fn queues_by_tag(
        &self,
        tags: Vec<String>,
        interval: i64,
        mode: TagMatch,
    ) -> Result<Vec<String>, StoreError> {
        self.call("queues by tag", move |conn| {
            let candidates = candidates(conn, interval, "", "queues by tag")?;
            Ok(matching_queues(&candidates, &tags, mode))
        })
        .await
    }

    pub(super) async fn active_count(&self) -> Result<i64, StoreError> {
        self.call("count active strategies", |conn| {
            conn.query_row(
                "SELECT COUNT(*) FROM gateway_strategies WHERE status = 'active'",
                [],
                |r| r.get(0),
            )
            .map_err(sql("count active strategies"))
        })
        .await
    }
}

fn sql(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { op, source }
}

/// Adds the columns an older gateway's tables lack, then their indexes.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for (column, alter) in ADDED_COLUMNS {
        let present: i64 = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('gateway_strategies') WHERE name = ?1",
            params![column],
            |r| r.get(0),
        )?;
        if present == 0 {
            conn.execute_batch(alter)?;
        }
    }
    conn.execute_batch(KEY_INDEX)
}

fn register(conn: &mut Connection, new: &NewStrategy) -> Result<Registered, StoreError> {
    let op = "register";
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql(op))?;

    // End lapsed leases, so they neither conflict nor share their nodes.
    let expired = tx
        .execute(EXPIRE, params![new.now_ms, new.created_at])
        .map_err(sql(op))? as u64;

    // A repeat of a registration already stored gets the original back.
    if let Some(key) = &new.idempotency_key {
        let row: Option<KeyedRow> = tx
            .query_row(BY_KEY, params![key], |r| {
                Ok(KeyedRow {
                    strategy_id: r.get(0)?,
                    dag_hash: r.get(1)?,
                    status: r.get(2)?,
                    queue_map: r.get(3)?,
                    run_type: r.get(4)?,
                    meta: r.get(5)?,
                })
            })
            .optional()
            .map_err(sql(op))?;
        if let Some(row) = row {
            let repeat = repeat_of(new, row, expired)?;
            if let Some(until) = new.lease_expires_ms {
                tx.execute(
                    "UPDATE gateway_strategies SET lease_expires_ms = ?2 WHERE strategy_id = ?1",
                    params![repeat.strategy_id, until],
                )
                .map_err(sql(op))?;
            }
            tx.commit().map_err(sql(op))?;
            return Ok(repeat);
        }
    }

    // Refuse a DAG that an active strategy already has.
    let existing: Option<String> = tx
        .query_row(ACTIVE_BY_HASH, params![new.dag_hash], |r| r.get(0))
        .optional()
        .map_err(sql(op))?;
    if let Some(strategy_id) = existing {
        return Err(StoreError::Duplicate {
            dag_hash: new.dag_hash.clone(),
            strategy_id,
        });
    }

    // Store the strategy and its nodes.
    tx.execute(
        "INSERT INTO gateway_strategies \
         (strategy_id, dag_hash, dag_json, meta, run_type, status, queue_map, created_at, \
          idempotency_key, lease_expires_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'active', '{}', ?6, ?7, ?8)",
        params![
            new.strategy_id,
            new.dag_hash,
            new.dag_text,
            new.meta_text,
            new.run_type,
            new.created_at,
            new.idempotency_key,
            new.lease_expires_ms
        ],
    )
    .map_err(sql(op))?;
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO gateway_nodes \
                 (strategy_id, ord, node_id, node_type, name, interval_s, tags) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(sql(op))?;
        for (ord, n) in new.nodes.iter().enumerate() {
            insert
                .execute(params![
                    new.strategy_id,
                    ord as i64,
                    n.node_id,
                    n.node_type,
                    n.name,
                    n.interval,
                    n.tags_json
                ])
                .map_err(sql(op))?;
        }
    }

    // Work out the queue map and keep it with the strategy.
    let shared: Vec<String> = {
        let mut stmt = tx.prepare(SHARED_NODES).map_err(sql(op))?;
        let rows = stmt
            .query_map(params![new.strategy_id], |r| r.get(0))
            .map_err(sql(op))?;
        rows.collect::<Result<_, _>>().map_err(sql(op))?
    };
    let mut resolved = Vec::with_capacity(new.tag_queries.len());
    for q in &new.tag_queries {
        let c = candidates(&tx, q.interval, &new.strategy_id, op)?;
        resolved.push((q.node_id.clone(), matching_queues(&c, &q.tags, q.mode)));
    }
    let map = build_queue_map(shared, resolved);
    tx.execute(
        "UPDATE gateway_strategies SET queue_map = ?2 WHERE strategy_id = ?1",
        params![new.strategy_id, Value::Object(map.clone()).to_string()],
    )
    .map_err(sql(op))?;
    tx.commit().map_err(sql(op))?;
    Ok(Registered {
        strategy_id: new.strategy_id.clone(),
        queue_map: map,
        repeated: false,
        expired,
    })
}

/// Non-tag-query nodes of active strategies other than `exclude` at `interval`.
fn candidates(
    conn: &Connection,
    interval: i64,
    exclude: &str,
    op: &'static str,
) -> Result<Vec<Candidate>, StoreError> {
    let mut stmt = conn.prepare_cached(CANDIDATES).map_err(sql(op))?;
    let rows = stmt
        .query_map(params![interval, exclude], |r| {
            Ok(Candidate {
                node_id: r.get(0)?,
                tags_json: r.get(1)?,
            })
        })
        .map_err(sql(op))?;
    rows.collect::<Result<_, _>>().map_err(sql(op))
}

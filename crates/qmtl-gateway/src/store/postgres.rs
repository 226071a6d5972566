//! The PostgreSQL store, for gateways that share state: a small connection pool, the
//! same schema and operations as the SQLite store (see [`super`]), all statements with
//! bound parameters.
//!
//! Tables are created on open under a transaction-scoped advisory lock, so gateways
//! starting together do not race on `CREATE TABLE IF NOT EXISTS`. Two gateways
//! registering the same DAG at once are kept apart by the unique index on active DAG
//! hashes: the loser's insert fails and is reported as a duplicate. Connections do not
//! use TLS in this version.
//!
//! A server that refuses the DSN's user or password (SQLSTATE class 28) is reported as
//! [`StoreError::PostgresAuth`] naming the user, a usage error; any other failure to get
//! a connection is [`StoreError::PostgresConnect`] naming host, port and database.

use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod};
use qmtl::TagMatch;
use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use super::{
    build_queue_map, matching_queues, parse_queue_map, repeat_of, Candidate, KeyedRow, NewStrategy,
    Registered, Renewal, Status, StoreError, StrategyRecord,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS gateway_strategies (
    strategy_id TEXT PRIMARY KEY,
    dag_hash    TEXT NOT NULL,
    dag_json    TEXT NOT NULL,
    meta        TEXT,
    run_type    TEXT NOT NULL,
    status      TEXT NOT NULL,
    queue_map   TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    ended_at    BIGINT
);
ALTER TABLE gateway_strategies ADD COLUMN IF NOT EXISTS idempotency_key TEXT;
ALTER TABLE gateway_strategies ADD COLUMN IF NOT EXISTS lease_expires_ms BIGINT;
CREATE UNIQUE INDEX IF NOT EXISTS gateway_strategies_key
    ON gateway_strategies (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS gateway_strategies_lease
    ON gateway_strategies (lease_expires_ms) WHERE status = 'active';
CREATE UNIQUE INDEX IF NOT EXISTS gateway_strategies_active_dag
    ON gateway_strategies (dag_hash) WHERE status = 'active';
CREATE TABLE IF NOT EXISTS gateway_nodes (
    strategy_id TEXT NOT NULL REFERENCES gateway_strategies (strategy_id),
    ord         BIGINT NOT NULL,
    node_id     TEXT NOT NULL,
    node_type   TEXT NOT NULL,
    name        TEXT NOT NULL,
    interval_s  BIGINT NOT NULL,
    tags        TEXT NOT NULL,
    PRIMARY KEY (strategy_id, ord)
);
CREATE INDEX IF NOT EXISTS gateway_nodes_node_id ON gateway_nodes (node_id);
CREATE INDEX IF NOT EXISTS gateway_nodes_interval ON gateway_nodes (interval_s);
";

/// Any constant: the advisory lock key that serializes schema creation.
const SCHEMA_LOCK: i64 = 0x716d_746c_6777;

const ACTIVE_BY_HASH: &str =
    "SELECT strategy_id FROM gateway_strategies WHERE dag_hash = $1 AND status = 'active'";

const EXPIRE: &str = "
UPDATE gateway_strategies SET status = 'ended', ended_at = $2
WHERE status = 'active' AND lease_expires_ms IS NOT NULL AND lease_expires_ms <= $1";

const BY_KEY: &str = "
SELECT strategy_id, dag_hash, status, queue_map, run_type, meta
FROM gateway_strategies WHERE idempotency_key = $1";

const INSERT_NODES: &str = "
INSERT INTO gateway_nodes (strategy_id, ord, node_id, node_type, name, interval_s, tags)
SELECT $1, t.ord, t.node_id, t.node_type, t.name, t.interval_s, t.tags
FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[])
    AS t (ord, node_id, node_type, name, interval_s, tags)";

const SHARED_NODES: &str = "
SELECT DISTINCT mine.node_id
FROM gateway_nodes mine
JOIN gateway_nodes other
    ON other.node_id = mine.node_id AND other.strategy_id <> mine.strategy_id
JOIN gateway_strategies s
    ON s.strategy_id = other.strategy_id AND s.status = 'active'
WHERE mine.strategy_id = $1 AND mine.node_type <> 'TagQueryNode'
ORDER BY mine.node_id";

const CANDIDATES: &str = "
SELECT DISTINCT n.node_id, n.tags
FROM gateway_nodes n
JOIN gateway_strategies s ON s.strategy_id = n.strategy_id AND s.status = 'active'
WHERE n.interval_s = $1 AND n.node_type <> 'TagQueryNode' AND n.strategy_id <> $2";

/// A PostgreSQL store.
pub struct PgStore {
    pool: Pool,
    target: String,
    user: String,
}

impl PgStore {
    /// Connects to `dsn`, checks the connection and creates the tables. `shown` is the
    /// spec as it may be printed (password redacted).
    ///
    /// # Errors
    /// [`StoreError::BadDsn`] for a DSN that does not parse; connection and statement
    /// errors naming host, port and database (never the password).
    pub async fn open(dsn: &str, shown: &str) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config =
            dsn.parse().map_err(|source| StoreError::BadDsn {
                spec: shown.to_owned(),
                source,
            })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let target = describe(&config);
        let user = config
            .get_user()
            .unwrap_or("(none given: the operating-system user)")
            .to_owned();
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(8)
            .build()
            .map_err(|source| StoreError::PostgresPool {
                target: target.clone(),
                source,
            })?;
        let store = PgStore { pool, target, user };

        // Create the tables, one gateway at a time.
        let mut client = store.client().await?;
        let op = "create tables";
        let tx = client.transaction().await.map_err(pg(op))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(pg(op))?;
        tx.batch_execute(SCHEMA).await.map_err(pg(op))?;
        tx.commit().await.map_err(pg(op))?;
        drop(client);
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|source| match source {
            PoolError::Backend(e) if is_auth_failure(&e) => StoreError::PostgresAuth {
                target: self.target.clone(),
                user: self.user.clone(),
                source: e,
            },
            source => StoreError::PostgresConnect {
                target: self.target.clone(),
                source,
            },
        })
    }

    pub(super) async fn register(&self, new: NewStrategy) -> Result<Registered, StoreError> {
        let op = "register";
        let mut client = self.client().await?;
        let result = register(&mut client, &new).await;

        // Each statement reads the latest commits, so a request with the same key may
        // have committed between our key lookup and our duplicate check (we see a
        // duplicate) or our insert (a unique violation): look the key up again.
        let raced = match &result {
            Err(StoreError::Duplicate { .. }) => true,
            Err(StoreError::Postgres { source, .. }) => {
                source.code() == Some(&SqlState::UNIQUE_VIOLATION)
            }
            _ => false,
        };
        if !raced {
            return result;
        }
        if let Some(key) = &new.idempotency_key {
            if let Some(row) = client.query_opt(BY_KEY, &[key]).await.map_err(pg(op))? {
                return repeat_of(&new, keyed(&row), 0);
            }
        }
        let Err(StoreError::Postgres { source, .. }) = result else {
            return result;
        };

        // Another gateway registered the same DAG between our check and our insert.
        let row = client
            .query_opt(ACTIVE_BY_HASH, &[&new.dag_hash])
            .await
            .map_err(pg(op))?;
        match row {
            Some(row) => Err(StoreError::Duplicate {
                dag_hash: new.dag_hash.clone(),
                strategy_id: row.get(0),
            }),
            None => Err(StoreError::Postgres { op, source }),
        }
    }

    pub(super) async fn expire(&self, now_ms: i64) -> Result<u64, StoreError> {
        let op = "expire leases";
        let client = self.client().await?;
        client
            .execute(EXPIRE, &[&now_ms, &now_ms.div_euclid(1000)])
            .await
            .map_err(pg(op))
    }

    pub(super) async fn renew(
        &self,
        id: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Renewal, StoreError> {
        let op = "renew lease";
        let client = self.client().await?;
        let renewed = client
            .execute(
                "UPDATE gateway_strategies SET lease_expires_ms = $3 \
                 WHERE strategy_id = $1 AND status = 'active' \
                 AND (lease_expires_ms IS NULL OR lease_expires_ms > $2)",
                &[&id, &now_ms, &until_ms],
            )
            .await
            .map_err(pg(op))?;
        if renewed > 0 {
            return Ok(Renewal::Renewed);
        }
        let known = client
            .query_opt(
                "SELECT 1 FROM gateway_strategies WHERE strategy_id = $1",
                &[&id],
            )
            .await
            .map_err(pg(op))?
            .is_some();
        Ok(if known {
            Renewal::Ended
        } else {
            Renewal::Unknown
        })
    }

    pub(super) async fn end_by_key(
        &self,
        key: &str,
        ended_at: i64,
    ) -> Result<Option<String>, StoreError> {
        let op = "end strategy by key";
        let client = self.client().await?;
        let row = client
            .query_opt(
                "UPDATE gateway_strategies \
                 SET status = CASE WHEN status = 'active' THEN 'ended' ELSE status END, \
                     ended_at = CASE WHEN status = 'active' THEN $2 ELSE ended_at END \
                 WHERE idempotency_key = $1 RETURNING strategy_id",
                &[&key, &ended_at],
            )
            .await
            .map_err(pg(op))?;
        Ok(row.map(|r| r.get(0)))
    }

    pub(super) async fn strategy(&self, id: &str) -> Result<Option<StrategyRecord>, StoreError> {
        let op = "read strategy";
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT status, run_type, dag_hash, queue_map, created_at \
                 FROM gateway_strategies WHERE strategy_id = $1",
                &[&id],
            )
            .await
            .map_err(pg(op))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let status: String = row.get(0);
        let queue_map: String = row.get(3);
        Ok(Some(StrategyRecord {
            queue_map: parse_queue_map(id, &queue_map)?,
            strategy_id: id.to_owned(),
            status: Status::parse(&status),
            run_type: row.get(1),
            dag_hash: row.get(2),
            created_at: row.get(4),
        }))
    }

    pub(super) async fn end(&self, id: &str, ended_at: i64) -> Result<bool, StoreError> {
        let op = "end strategy";
        let client = self.client().await?;
        let known = client
            .query_opt(
                "SELECT 1 FROM gateway_strategies WHERE strategy_id = $1",
                &[&id],
            )
            .await
            .map_err(pg(op))?
            .is_some();
        if known {
            client
                .execute(
                    "UPDATE gateway_strategies SET status = 'ended', ended_at = $2 \
                     WHERE strategy_id = $1 AND status = 'active'",
                    &[&id, &ended_at],
                )
                .await
                .map_err(pg(op))?;
        }
        Ok(known)
    }

    pub(super) async fn queues_by_tag(
        &self,
        tags: Vec<String>,
        interval: i64,
        mode: TagMatch,
    ) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let candidates = candidates(&client, interval, "", "queues by tag").await?;
        Ok(matching_queues(&candidates, &tags, mode))
    }

    pub(super) async fn active_count(&self) -> Result<i64, StoreError> {
        let op = "count active strategies";
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT COUNT(*) FROM gateway_strategies WHERE status = 'active'",
                &[],
            )
            .await
            .map_err(pg(op))?;
        Ok(row.get(0))
    }
}

fn pg(op: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Postgres { op, source }
}

/// Whether the server refused the user name or password: SQLSTATE class 28.
fn is_auth_failure(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|c| c.code().starts_with("28"))
}

/// The cause of a failed connection, for messages: the server's own message when it
/// answered (`tokio_postgres` shows only "db error"), else the error and its cause.
pub(super) fn describe_pool_error(error: &PoolError) -> String {
    let PoolError::Backend(e) = error else {
        return error.to_string();
    };
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// `host:port/dbname` of the first host, for messages (no user, no password).
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    format!("{host}:{port}/{db}")
}

fn keyed(row: &tokio_postgres::Row) -> KeyedRow {
    KeyedRow {
        strategy_id: row.get(0),
        dag_hash: row.get(1),
        status: row.get(2),
        queue_map: row.get(3),
        run_type: row.get(4),
        meta: row.get(5),
    }
}

async fn register(
    client: &mut deadpool_postgres::Object,
    new: &NewStrategy,
) -> Result<Registered, StoreError> {
    let op = "register";
    let tx = client.transaction().await.map_err(pg(op))?;

    // End lapsed leases, so they neither conflict nor share their nodes.
    let expired = tx
        .execute(EXPIRE, &[&new.now_ms, &new.created_at])
        .await
        .map_err(pg(op))?;

    // A repeat of a registration already stored gets the original back.
    if let Some(key) = &new.idempotency_key {
        if let Some(row) = tx.query_opt(BY_KEY, &[key]).await.map_err(pg(op))? {
            let repeat = repeat_of(new, keyed(&row), expired)?;
            if let Some(until) = new.lease_expires_ms {
                tx.execute(
                    "UPDATE gateway_strategies SET lease_expires_ms = $2 WHERE strategy_id = $1",
                    &[&repeat.strategy_id, &until],
                )
                .await
                .map_err(pg(op))?;
            }
            tx.commit().await.map_err(pg(op))?;
            return Ok(repeat);
        }
    }

    // Refuse a DAG that an active strategy already has.
    if let Some(row) = tx
        .query_opt(ACTIVE_BY_HASH, &[&new.dag_hash])
        .await
        .map_err(pg(op))?
    {
        return Err(StoreError::Duplicate {
            dag_hash: new.dag_hash.clone(),
            strategy_id: row.get(0),
        });
    }

    // Store the strategy and its nodes (one statement for all nodes).
    tx.execute(
        "INSERT INTO gateway_strategies \
         (strategy_id, dag_hash, dag_json, meta, run_type, status, queue_map, created_at, \
          idempotency_key, lease_expires_ms) \
         VALUES ($1, $2, $3, $4, $5, 'active', '{}', $6, $7, $8)",
        &[
            &new.strategy_id,
            &new.dag_hash,
            &new.dag_text,
            &new.meta_text,
            &new.run_type,
            &new.created_at,
            &new.idempotency_key,
            &new.lease_expires_ms,
        ],
    )
    .await
    .map_err(pg(op))?;
    let ords: Vec<i64> = (0..new.nodes.len() as i64).collect();
    let ids: Vec<&str> = new.nodes.iter().map(|n| n.node_id.as_str()).collect();
    let types: Vec<&str> = new.nodes.iter().map(|n| n.node_type.as_str()).collect();
    let names: Vec<&str> = new.nodes.iter().map(|n| n.name.as_str()).collect();
    let intervals: Vec<i64> = new.nodes.iter().map(|n| n.interval).collect();
    let tags: Vec<&str> = new.nodes.iter().map(|n| n.tags_json.as_str()).collect();
    tx.execute(
        INSERT_NODES,
        &[
            &new.strategy_id,
            &ords,
            &ids,
            &types,
            &names,
            &intervals,
            &tags,
        ],
    )
    .await
    .map_err(pg(op))?;

    // Work out the queue map and keep it with the strategy.
    let shared: Vec<String> = tx
        .query(SHARED_NODES, &[&new.strategy_id])
        .await
        .map_err(pg(op))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut resolved = Vec::with_capacity(new.tag_queries.len());
    for q in &new.tag_queries {
        let c = candidates(&tx, q.interval, &new.strategy_id, op).await?;
        resolved.push((q.node_id.clone(), matching_queues(&c, &q.tags, q.mode)));
    }
    let map = build_queue_map(shared, resolved);
    tx.execute(
        "UPDATE gateway_strategies SET queue_map = $2 WHERE strategy_id = $1",
        &[&new.strategy_id, &Value::Object(map.clone()).to_string()],
    )
    .await
    .map_err(pg(op))?;
    tx.commit().await.map_err(pg(op))?;
    Ok(Registered {
        strategy_id: new.strategy_id.clone(),
        queue_map: map,
        repeated: false,
        expired,
    })
}

/// Non-tag-query nodes of active strategies other than `exclude` at `interval`.
async fn candidates<C: GenericClient>(
    client: &C,
    interval: i64,
    exclude: &str,
    op: &'static str,
) -> Result<Vec<Candidate>, StoreError> {
    let rows = client
        .query(CANDIDATES, &[&interval, &exclude])
        .await
        .map_err(pg(op))?;
    Ok(rows
        .iter()
        .map(|r| Candidate {
            node_id: r.get(0),
            tags_json: r.get(1),
        })
        .collect())
}

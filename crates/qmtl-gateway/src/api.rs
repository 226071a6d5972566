//! The HTTP API: routes, handlers, the bearer-token check and request metrics.
//!
//! - `POST /strategies`: 202 `{"strategy_id","queue_map","lease_secs"}`; 409 when the
//!   same DAG is active; 422 for a bad field; 400 for a body that is not UTF-8; 413 for
//!   a body above the limit. With an `Idempotency-Key: KEY` header (1 to 128 visible
//!   ASCII characters, one per run), a repeat with the same key and the same content
//!   (DAG, run type and `meta`, whatever the order of its keys) answers the original 202
//!   (same id and queue map, lease renewed) while that strategy is active, so a client
//!   may resend a registration whose answer it lost; the same key with other content is
//!   422 (field `Idempotency-Key`, the detail naming what differs), with an ended
//!   strategy 410.
//! - `POST /strategies/{id}/heartbeat`: renews the lease, 200
//!   `{"strategy_id","status":"active","lease_secs"}`; 410 when the strategy has ended
//!   (deleted, or its lease lapsed: a lapsed lease is never revived); 404.
//! - `GET /strategies/{id}`: 200 the stored record with its queue map; 404.
//! - `GET /strategies/{id}/status`: 200 `{"status"}` (`active` or `ended`); 404.
//! - `DELETE /strategies/{id}`: 200 `{"strategy_id","status":"ended"}`; 404.
//! - `DELETE /strategies?idempotency_key=KEY`: ends the strategy registered with that
//!   key, for a client that gave up without learning the id; 200 as above; 404.
//! - `GET /queues/by_tag?tags=a,b&interval=60[&match=any|all]`: 200 `{"queues"}`; 422.
//!   `tags` is one comma-separated list, blanks around each tag trimmed; that is why a
//!   registered tag may not contain a comma or start or end with a blank.
//! - `GET /status`: 200 health with the store's state; 503 when the store fails.
//! - `GET /metrics`: 200 Prometheus text.
//!
//! Every registration holds a lease of the gateway's lease time (default 30 s), renewed
//! by heartbeats. A strategy whose lease passes is ended: every handler first ends the
//! lapsed ones, so a lapsed strategy no longer conflicts with the same DAG, is not in
//! queue maps or tag queries, and reads as `ended`.
//!
//! Every error answer is JSON: `{"detail": message, "field": path}` (`field` only when
//! one field is at fault). A detail repeats at most 80 characters of any id, key, name
//! or value the request sent, and is at most 500 characters in all (see
//! [`crate::echo`]). With a token configured, every route answers 401 without
//! `Authorization: Bearer TOKEN` (the scheme in any case). Parsing and checking a DAG
//! runs on the blocking pool, not on the async workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use qmtl::node::sha256_hex;
use qmtl::{Interval, TagMatch};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Token;
use crate::echo::{capped, echo, MAX_DETAIL_CHARS, MAX_ECHO_CHARS};
use crate::metrics::{GatewayMetrics, RequestLabels, RouteLabels, RunTypeLabels};
use crate::payload::{is_tag_query, parse_registration, Registration};
use crate::queue::{parse_match, split_tags};
use crate::store::{NewStrategy, NodeRow, Renewal, Status, Store, StoreError, TagQuery};

/// The request header that makes a registration safe to resend.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The longest accepted idempotency key, in bytes.
const MAX_KEY_BYTES: usize = 128;

/// What the handlers share.
pub(crate) struct AppState {
    pub store: Store,
    pub store_kind: &'static str,
    pub metrics: GatewayMetrics,
    pub token: Option<Token>,
    pub body_limit: usize,
    pub sequence: AtomicU64,
    pub lease: Duration,
}

/// The gateway's router over `state`.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let limit = state.body_limit;
    Router::new()
        .route("/strategies", post(register).delete(end_by_key))
        .route("/strategies/{id}", get(strategy).delete(end))
        .route("/strategies/{id}/heartbeat", post(heartbeat))
        .route("/strategies/{id}/status", get(status))
        .route("/queues/by_tag", get(queues_by_tag))
        .route("/status", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// A JSON error answer.
fn problem(status: StatusCode, field: Option<String>, detail: impl Into<String>) -> Response {
    let detail = detail.into();
    let mut body = json!({ "detail": capped(&detail, MAX_DETAIL_CHARS) });
    if let Some(field) = field {
        body["field"] = Value::String(field);
    }
    (status, Json(body)).into_response()
}

/// The answer to a store failure: 503 when the database cannot be reached, else 500.
fn store_failure(op: &'static str, error: &StoreError) -> Response {
    tracing::warn!(op, error = %error, "store.failed");
    let status = match error {
        StoreError::PostgresConnect { .. }
        | StoreError::PostgresAuth { .. }
        | StoreError::SqliteClosed { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    problem(status, None, format!("the gateway's store failed: {error}"))
}

fn now_secs() -> i64 {
    now_ms().div_euclid(1000)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Ends the strategies whose lease has passed, before a handler reads the store. A
/// failure is answered like any store failure.
async fn expire_leases(state: &AppState) -> Result<(), Response> {
    match state.store.expire(now_ms()).await {
        Ok(ended) => {
            count_expired(state, ended);
            Ok(())
        }
        Err(e) => Err(store_failure("expire leases", &e)),
    }
}

/// Counts and logs strategies ended because their lease passed.
fn count_expired(state: &AppState, ended: u64) {
    if ended > 0 {
        state.metrics.leases_expired.inc_by(ended);
        tracing::info!(ended, "strategy.lease_expired");
    }
}

/// The lease in seconds, as answered.
fn lease_secs(state: &AppState) -> f64 {
    state.lease.as_secs_f64()
}

/// The `Idempotency-Key` header: absent, a valid key, or `Err` for a malformed one
/// (answered with [`bad_key`]).
fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ()> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value.as_bytes();
    if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.iter().all(u8::is_ascii_graphic) {
        return Err(());
    }
    Ok(Some(String::from_utf8_lossy(key).into_owned()))
}

/// The answer to a malformed `Idempotency-Key` header.
fn bad_key() -> Response {
    problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("Idempotency-Key".into()),
        format!("the Idempotency-Key header must be 1 to {MAX_KEY_BYTES} visible ASCII characters"),
    )
}

async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let header = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if !token.accepts(header) {
            let mut response = problem(
                StatusCode::UNAUTHORIZED,
                None,
                "missing or wrong bearer token; send Authorization: Bearer TOKEN",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            method: method.clone(),
            status: status.to_string(),
        })
        .inc();
    state
        .metrics
        .duration
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(elapsed.as_secs_f64());
    tracing::debug!(
        route,
        method,
        status,
        elapsed_ms = elapsed.as_millis() as u64,
        "http.request"
    );
    response
}

async fn register(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(key) = idempotency_key(&headers) else {
        return bad_key();
    };

    // Read the body within the size limit.
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                Some("body".into()),
                format!(
                    "the request body is larger than the gateway's limit of {} bytes",
                    state.body_limit
                ),
            );
        }
        Err(rejection) => {
            return problem(
                rejection.status(),
                Some("body".into()),
                rejection.body_text(),
            )
        }
    };

    // Decode and check it off the async workers.
    let parsed = tokio::task::spawn_blocking(move || parse_registration(&body)).await;
    let registration = match parsed {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let status = if e.is_encoding() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            tracing::debug!(field = %e.field(), error = %e, "strategy.refused");
            return problem(status, Some(e.field()), e.to_string());
        }
        Err(join) => {
            tracing::warn!(error = %join, "strategy.check_failed");
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                "checking the DAG failed unexpectedly",
            );
        }
    };

    // Store it and answer with its queue map.
    let sequence = state.sequence.fetch_add(1, Ordering::Relaxed);
    let mut new = new_strategy(&registration, sequence);
    new.idempotency_key = key;
    new.lease_expires_ms = Some(new.now_ms.saturating_add(state.lease.as_millis() as i64));
    let nodes = new.nodes.len();
    let run_type = registration.run_type.as_str();
    let stored = state.store.register(new).await;
    if let Ok(stored) = &stored {
        count_expired(&state, stored.expired);
    }
    match stored {
        Ok(stored) if stored.repeated => {
            tracing::info!(
                strategy_id = %stored.strategy_id, run_type, "strategy.registration_repeated"
            );
            let body = json!({
                "strategy_id": stored.strategy_id,
                "queue_map": stored.queue_map,
                "lease_secs": lease_secs(&state),
            });
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Ok(stored) => {
            let strategy_id = stored.strategy_id;
            let queue_map = stored.queue_map;
            state
                .metrics
                .registered
                .get_or_create(&RunTypeLabels {
                    run_type: run_type.to_owned(),
                })
                .inc();
            tracing::info!(
                strategy_id,
                run_type,
                nodes,
                queues = queue_map.len(),
                "strategy.registered"
            );
            let body = json!({
                "strategy_id": strategy_id,
                "queue_map": queue_map,
                "lease_secs": lease_secs(&state),
            });
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(e @ StoreError::KeyReused { .. }) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("Idempotency-Key".into()),
            e.to_string(),
        ),
        Err(e @ StoreError::KeyEnded { .. }) => problem(StatusCode::GONE, None, e.to_string()),
        Err(e) => match e.conflicting_strategy() {
            Some(existing) => {
                let body = json!({
                    "detail": e.to_string(),
                    "field": "dag_json",
                    "strategy_id": existing,
                });
                (StatusCode::CONFLICT, Json(body)).into_response()
            }
            None => store_failure("register", &e),
        },
    }
}

/// The rows to store for a checked registration; the id is unique per gateway process
/// and, through the time and process id, across gateways sharing a store.
fn new_strategy(r: &Registration, sequence: u64) -> NewStrategy {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!("{}:{nanos}:{sequence}:{}", r.dag_hash, std::process::id());
    let strategy_id = sha256_hex(seed.as_bytes())[..32].to_owned();
    let now_ms = nanos.div_euclid(1_000_000) as i64;
    let nodes = r
        .dag
        .nodes
        .iter()
        .map(|n| NodeRow {
            node_id: n.node_id.clone(),
            node_type: n.node_type.to_string(),
            name: n.name.clone(),
            interval: n.interval,
            tags_json: serde_json::to_string(&n.tags).expect("strings serialize"),
        })
        .collect();
    let tag_queries = r
        .dag
        .nodes
        .iter()
        .filter(|n| is_tag_query(n))
        .map(|n| TagQuery {
            node_id: n.node_id.clone(),
            interval: n.interval,
            tags: n.tags.clone(),
            mode: n.match_mode.unwrap_or_default(),
        })
        .collect();
    NewStrategy {
        strategy_id,
        dag_hash: r.dag_hash.clone(),
        dag_text: r.dag_text.clone(),
        meta_text: r
            .meta
            .as_ref()
            .map(|m| Value::Object(m.clone()).to_string()),
        run_type: r.run_type.as_str(),
        created_at: now_ms.div_euclid(1000),
        now_ms,
        idempotency_key: None,
        lease_expires_ms: None,
        nodes,
        tag_queries,
    }
}

fn unknown_strategy(id: &str) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        None,
        format!("strategy {} is not registered with this gateway", echo(id)),
    )
}

async fn strategy(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if let Err(failure) = expire_leases(&state).await {
        return failure;
    }
    match state.store.strategy(&id).await {
        Ok(Some(r)) => Json(json!({
            "strategy_id": r.strategy_id,
            "status": r.status.as_str(),
            "run_type": r.run_type,
            "dag_hash": r.dag_hash,
            "created_at": r.created_at,
            "queue_map": r.queue_map,
        }))
        .into_response(),
        Ok(None) => unknown_strategy(&id),
        Err(e) => store_failure("read strategy", &e),
    }
}

async fn status(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if let Err(failure) = expire_leases(&state).await {
        return failure;
    }
    match state.store.strategy(&id).await {
        Ok(Some(r)) => Json(json!({ "status": r.status.as_str() })).into_response(),
        Ok(None) => unknown_strategy(&id),
        Err(e) => store_failure("read strategy", &e),
    }
}

async fn end(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.store.end(&id, now_secs()).await {
        Ok(true) => {
            tracing::info!(strategy_id = %id, "strategy.ended");
            Json(json!({ "strategy_id": id, "status": Status::Ended.as_str() })).into_response()
        }
        Ok(false) => unknown_strategy(&id),
        Err(e) => store_failure("end strategy", &e),
    }
}

async fn heartbeat(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if let Err(failure) = expire_leases(&state).await {
        return failure;
    }
    let now = now_ms();
    let until = now.saturating_add(state.lease.as_millis() as i64);
    match state.store.renew(&id, now, until).await {
        Ok(Renewal::Renewed) => {
            tracing::debug!(strategy_id = %id, "strategy.lease_renewed");
            Json(json!({
                "strategy_id": id,
                "status": Status::Active.as_str(),
                "lease_secs": lease_secs(&state),
            }))
            .into_response()
        }
        Ok(Renewal::Ended) => {
            let body = json!({
                "detail": format!(
                    "strategy {} has ended (deleted, or its lease lapsed without a \
                     heartbeat); register again",
                    echo(&id)
                ),
                "strategy_id": id,
                "status": Status::Ended.as_str(),
            });
            (StatusCode::GONE, Json(body)).into_response()
        }
        Ok(Renewal::Unknown) => unknown_strategy(&id),
        Err(e) => store_failure("renew lease", &e),
    }
}

#[derive(Debug, Deserialize)]
struct ByKey {
    idempotency_key: Option<String>,
}

async fn end_by_key(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ByKey>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(key) = query.ok().and_then(|Query(q)| q.idempotency_key) else {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("idempotency_key".into()),
            "query parameter idempotency_key is required (or DELETE /strategies/{id})",
        );
    };
    match state.store.end_by_key(&key, now_secs()).await {
        Ok(Some(id)) => {
            tracing::info!(strategy_id = %id, "strategy.ended");
            Json(json!({ "strategy_id": id, "status": Status::Ended.as_str() })).into_response()
        }
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            None,
            "no strategy was registered with this idempotency key",
        ),
        Err(e) => store_failure("end strategy by key", &e),
    }
}

#[derive(Debug, Deserialize)]
struct ByTag {
    tags: Option<String>,
    interval: Option<String>,
    #[serde(rename = "match")]
    match_mode: Option<String>,
}

async fn queues_by_tag(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ByTag>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let bad = |field: &str, detail: String| {
        problem(StatusCode::UNPROCESSABLE_ENTITY, Some(field.into()), detail)
    };
    let Ok(Query(q)) = query else {
        return bad("query", "the query string is not valid".into());
    };
    let tags = split_tags(q.tags.as_deref().unwrap_or(""));
    if tags.is_empty() {
        return bad(
            "tags",
            "query parameter tags is required, e.g. tags=a,b".into(),
        );
    }
    let interval = match q.interval.as_deref().map(|t| (t, t.parse::<Interval>())) {
        Some((_, Ok(i))) => i.secs_i64(),
        // The parser's words quote the text: only when it is short enough to repeat.
        Some((text, Err(e))) if text.chars().count() <= MAX_ECHO_CHARS => {
            return bad("interval", format!("query parameter interval: {e}"))
        }
        Some((text, Err(_))) => {
            return bad(
                "interval",
                format!(
                    "query parameter interval '{}' is not an interval; give seconds or a \
                     duration such as 60 or 1h",
                    echo(text)
                ),
            )
        }
        None => {
            return bad(
                "interval",
                "query parameter interval is required, e.g. interval=60".into(),
            )
        }
    };
    let mode = match q.match_mode.as_deref() {
        None => TagMatch::Any,
        Some(text) => match parse_match(text) {
            Some(m) => m,
            None => {
                return bad(
                    "match",
                    format!(
                        "query parameter match is '{}'; expected any or all",
                        echo(text)
                    ),
                )
            }
        },
    };
    if let Err(failure) = expire_leases(&state).await {
        return failure;
    }
    match state.store.queues_by_tag(tags, interval, mode).await {
        Ok(queues) => Json(json!({ "queues": queues })).into_response(),
        Err(e) => store_failure("queues by tag", &e),
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let kind = state.store_kind;
    let active = match state.store.expire(now_ms()).await {
        Ok(ended) => {
            count_expired(&state, ended);
            state.store.active_count().await
        }
        Err(e) => Err(e),
    };
    match active {
        Ok(active) => {
            state.metrics.store_up.set(1);
            state.metrics.active.set(active);
            Json(json!({
                "status": "ok",
                "version": env!("CARGO_PKG_VERSION"),
                "store": { "kind": kind, "ok": true },
                "strategies_active": active,
            }))
            .into_response()
        }
        Err(e) => {
            state.metrics.store_up.set(0);
            tracing::warn!(error = %e, "store.unhealthy");
            let body = json!({
                "status": "degraded",
                "version": env!("CARGO_PKG_VERSION"),
                "store": { "kind": kind, "ok": false, "error": e.to_string() },
            });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let active = match state.store.expire(now_ms()).await {
        Ok(ended) => {
            count_expired(&state, ended);
            state.store.active_count().await
        }
        Err(e) => Err(e),
    };
    match active {
        Ok(active) => {
            state.metrics.store_up.set(1);
            state.metrics.active.set(active);
        }
        Err(e) => {
            state.metrics.store_up.set(0);
            tracing::warn!(error = %e, "store.unhealthy");
        }
    }
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(header::CONTENT_TYPE, content_type)],
        state.metrics.encode(),
    )
        .into_response()
}

async fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        None,
        "no such route; see /status, /metrics, /strategies and /queues/by_tag",
    )
}

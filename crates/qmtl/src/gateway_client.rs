//! The SDK side of the gateway: registering a strategy's DAG, reading the queue map the
//! gateway answers with, and ending the strategy when the run stops.
//!
//! [`GatewayClient::register`] sends `POST /strategies` with the DAG JSON as a JSON object
//! (the gateway also accepts base64), `meta` and the run type (`"backtest"`, `"dry-run"`
//! or `"live"`), and returns a [`Registration`]: the strategy id and, per node that
//! another active strategy already computes, the queue its rows are read from
//! ([`QueueTarget`]). [`GatewayClient::end`] sends `DELETE /strategies/{id}`.
//!
//! Every registration carries an `Idempotency-Key` header, new for each call of
//! [`GatewayClient::register`]; the gateway answers a repeat with the same key with the
//! original registration instead of a conflict. That makes a registration as safe to
//! resend as `DELETE` already is, so both are tried up to 4 times (pauses of 150, 300 and
//! 600 ms) when the gateway could not be reached, did not answer in time, lost the
//! connection or answered 5xx ([`GatewayError::is_retryable`]). A 4xx answer is final
//! and never resent. A heartbeat is sent once: the next one is its retry. With
//! [`GatewayClient::stop_retrying_on`], a run cancelled while it registers abandons the
//! attempt in flight at once and starts no new one ([`GatewayError::Stopped`]). When a
//! registration fails after it may have reached the gateway (it timed out, lost its
//! connection, got a 5xx or an answer that is not the API's, or was stopped; not when
//! every connection was refused or the gateway refused it with a 4xx, which stores
//! nothing), the client asks the gateway, best effort, to end whatever it stored under
//! the key (`DELETE /strategies?idempotency_key=KEY`, allowed 1.5 s, or 0.5 s after a
//! stop so that the run still stops within 2 s), so no half-registered strategy stays
//! active; should that fail too, the registration's lease ends it.
//!
//! A registration lives as long as its lease (the gateway's `--lease-secs`, answered as
//! `lease_secs`); [`GatewayClient::keep_alive`] renews it with
//! `POST /strategies/{id}/heartbeat` every third of the lease, but never more often
//! than once a second, whatever the gateway answers, while the run lives (for a lease
//! under 3 s the client warns `gateway.lease_too_short`: such a lease may lapse between
//! heartbeats). A lease that is not a positive number of seconds below 10^9 is an
//! answer that is not the API's. A failed heartbeat is a warning and the next one tries
//! again. When the gateway answers that the strategy has ended (410, or 404 from a
//! gateway that forgot it), the lease has lapsed: the heartbeat stops with a warning
//! and the run goes on, but other strategies no longer see its nodes; it is not
//! registered again, since a new queue map cannot be applied to a run in progress.
//!
//! Each request may take 10 s, or the seconds in `QMTL_GATEWAY_TIMEOUT_SECS`. Plain
//! `http://` only: this build has no TLS, so put a TLS-terminating proxy in front of a
//! gateway reached over a network. The token is never shown: an answer that echoes it
//! is shown with `***` in its place.
//!
//! Every answer the gateway gives as an error (`{"detail", "field"}`) becomes a
//! [`GatewayError`] variant holding the URL and the gateway's words; classify them with
//! [`GatewayError::is_usage`] and [`GatewayError::is_retryable`], never by message text.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::dag::Dag;
use crate::node::{sha256_hex, NodeId};

/// Attempts for one request (the first and up to three resends).
const ATTEMPTS: u32 = 4;

/// The first pause between attempts; it doubles after each.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(150);

/// Longest accepted answer body, in bytes.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// The most characters of the gateway's `detail` (or `field`) an error shows.
const MAX_DETAIL_CHARS: usize = 500;

/// The limit on one request unless [`TIMEOUT_ENV`] says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the best-effort end of an abandoned registration may take.
const ABANDON_TIMEOUT: Duration = Duration::from_millis(1500);

/// How long the best-effort end of a registration stopped by its run may take: short,
/// so that a signal stops the run within 2 s.
const ABANDON_TIMEOUT_STOPPED: Duration = Duration::from_millis(500);

/// The shortest pause between heartbeats, whatever lease the gateway answers.
pub const MIN_HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// The environment variable holding the limit on one request, in seconds.
pub const TIMEOUT_ENV: &str = "QMTL_GATEWAY_TIMEOUT_SECS";

/// The header carrying a registration's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// How a strategy registers, as sent in `run_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunType {
    /// `"backtest"`.
    Backtest,
    /// `"dry-run"`.
    DryRun,
    /// `"live"`.
    Live,
}

impl RunType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunType::Backtest => "backtest",
            RunType::DryRun => "dry-run",
            RunType::Live => "live",
        }
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<RunType> {
        [RunType::Backtest, RunType::DryRun, RunType::Live]
            .into_iter()
            .find(|r| r.as_str() == text)
    }
}

/// Where a node's rows come from when another strategy computes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueTarget {
    /// A node computed elsewhere: the queue (node id) its outputs are kept under.
    Queue(String),
    /// A tag query node: the queues whose tags and interval match.
    Queues(Vec<String>),
}

/// The gateway's answer to a registration.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The id the gateway gave the strategy.
    pub strategy_id: String,
    /// Per node id, where its rows come from (absent: computed locally).
    pub queue_map: HashMap<NodeId, QueueTarget>,
    /// How long the registration lives without a heartbeat (`None` from a gateway
    /// without leases).
    pub lease: Option<Duration>,
    /// The idempotency key it was sent with.
    pub idempotency_key: String,
}

/// Why talking to the gateway failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The URL cannot be used.
    #[error("gateway URL '{url}' is not usable: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// No connection could be opened.
    #[error(
        "gateway {url} is unreachable ({attempts} connection attempts); is `qmtl gateway` \
         running there? {source}"
    )]
    Unreachable {
        /// The gateway's base URL.
        url: String,
        /// Connection attempts made.
        attempts: u32,
        /// The last connection error.
        #[source]
        source: reqwest::Error,
    },
    /// The request was sent but no answer came in time.
    #[error(
        "gateway {url} did not answer {what} within {after:?} ({attempts} attempts); is it \
         overloaded? (raise the limit with QMTL_GATEWAY_TIMEOUT_SECS)"
    )]
    Timeout {
        /// The gateway's base URL.
        url: String,
        /// The request.
        what: &'static str,
        /// The time allowed per attempt.
        after: Duration,
        /// Attempts made.
        attempts: u32,
    },
    /// The connection failed after the request was sent.
    #[error("gateway {url}: {what} lost its connection before the answer ({attempts} attempts)")]
    Transport {
        /// The gateway's base URL.
        url: String,
        /// The request.
        what: &'static str,
        /// Attempts made.
        attempts: u32,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// 401: the token is missing or wrong.
    #[error(
        "gateway {url} refused the request (401 unauthorized): {detail}; pass the gateway's \
         token with --gateway-token or QMTL_GATEWAY_TOKEN"
    )]
    Unauthorized {
        /// The gateway's base URL.
        url: String,
        /// The gateway's words.
        detail: String,
    },
    /// 409: the same DAG is already registered and active.
    #[error(
        "gateway {url}: this strategy's DAG is already registered and active as strategy \
         {strategy_id}; stop that run (or DELETE {url}/strategies/{strategy_id}) first"
    )]
    Conflict {
        /// The gateway's base URL.
        url: String,
        /// The active strategy with the same DAG.
        strategy_id: String,
    },
    /// 4xx other than 401 and 409 (422 for an invalid DAG, 413 for a large one).
    #[error(
        "gateway {url} rejected the registration ({status}){}: {detail}",
        field_text(field)
    )]
    Rejected {
        /// The gateway's base URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The gateway's words.
        detail: String,
        /// The offending field, when the gateway named one.
        field: Option<String>,
    },
    /// 5xx.
    #[error("gateway {url} failed ({status}): {detail}")]
    Server {
        /// The gateway's base URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The gateway's words (or the start of its body).
        detail: String,
    },
    /// An answer that is not what the API promises.
    #[error("gateway {url} answered {status} with an unexpected body ({excerpt:?})")]
    Garbage {
        /// The gateway's base URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        excerpt: String,
        /// The decoding error, when the body was not the expected JSON.
        #[source]
        source: Option<serde_json::Error>,
    },
    /// The run was cancelled (SIGINT/SIGTERM) while it registered: the attempt in flight
    /// was abandoned and no new one started.
    #[error("stopped while registering with {url} (attempt {attempts})")]
    Stopped {
        /// The gateway's base URL.
        url: String,
        /// Attempts made, the abandoned one included.
        attempts: u32,
        /// The failure of the attempt before the stop, when the stop came during the
        /// pause before a resend.
        #[source]
        source: Option<Box<GatewayError>>,
    },
    /// A heartbeat found the strategy ended: its lease lapsed or it was deleted.
    #[error(
        "gateway {url} no longer holds strategy {strategy_id} as active (its lease lapsed \
         or it was ended); other strategies no longer see its nodes"
    )]
    LeaseLost {
        /// The gateway's base URL.
        url: String,
        /// The strategy.
        strategy_id: String,
    },
}

fn field_text(field: &Option<String>) -> String {
    field
        .as_ref()
        .map_or_else(String::new, |f| format!(" at field {f}"))
}

impl GatewayError {
    /// Whether the error is a mistake in how the run was asked for (a bad URL or token,
    /// a DAG already running, a DAG the gateway refuses) rather than a failure of the
    /// gateway or the network.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            GatewayError::BadUrl { .. }
                | GatewayError::Unauthorized { .. }
                | GatewayError::Conflict { .. }
                | GatewayError::Rejected { .. }
        )
    }

    /// Whether sending the request again may succeed: no connection, no answer in time,
    /// a lost connection or a 5xx. Registrations and ends are safe to resend (see the
    /// module docs); a 4xx or an answer that is not the API's is final.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            GatewayError::Unreachable { .. }
                | GatewayError::Timeout { .. }
                | GatewayError::Transport { .. }
                | GatewayError::Server { .. }
        )
    }

    /// Whether the run was asked to stop while the request was under way (see
    /// [`GatewayClient::stop_retrying_on`]): a stop, not a failure of the gateway.
    pub fn is_stop(&self) -> bool {
        matches!(self, GatewayError::Stopped { .. })
    }

    /// The same error, counting `attempts` attempts.
    fn after_attempts(mut self, n: u32) -> Self {
        if let GatewayError::Unreachable { attempts, .. }
        | GatewayError::Timeout { attempts, .. }
        | GatewayError::Transport { attempts, .. } = &mut self
        {
            *attempts = n;
        }
        self
    }
}

/// Talks to one gateway.
///
/// ```no_run
/// # async fn demo(dag: &qmtl::Dag) -> Result<(), qmtl::gateway_client::GatewayError> {
/// use qmtl::gateway_client::{GatewayClient, RunType};
///
/// let client = GatewayClient::new("http://127.0.0.1:8000")?;
/// let registration = client.register(dag, RunType::DryRun).await?;
/// let heartbeat = client.keep_alive(&registration);
/// println!("{} nodes computed elsewhere", registration.queue_map.len());
/// drop(heartbeat);
/// client.end(&registration.strategy_id).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct GatewayClient {
    url: String,
    http: reqwest::Client,
    token: Option<String>,
    timeout: Duration,
    stop_retrying: Option<tokio_util::sync::CancellationToken>,
}

impl std::fmt::Debug for GatewayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClient")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Problem {
    detail: Option<String>,
    field: Option<String>,
    strategy_id: Option<String>,
}

#[derive(Deserialize)]
struct Accepted {
    strategy_id: String,
    #[serde(default)]
    queue_map: HashMap<String, serde_json::Value>,
    lease_secs: Option<f64>,
}

/// Renews a registration's lease while it lives; dropping it stops the renewals.
#[must_use = "the lease is renewed only while the Heartbeat lives"]
#[derive(Debug)]
pub struct Heartbeat {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The request limit from [`TIMEOUT_ENV`], when set to a positive number of seconds.
fn timeout_from_env() -> Option<Duration> {
    let text = std::env::var(TIMEOUT_ENV).ok()?;
    match text.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.001..=3600.0).contains(&secs) => {
            Some(Duration::from_secs_f64(secs))
        }
        _ => {
            tracing::warn!(
                variable = TIMEOUT_ENV, value = %text,
                default_secs = DEFAULT_TIMEOUT.as_secs(), "gateway.bad_timeout_setting"
            );
            None
        }
    }
}

/// How often a lease of `lease` is renewed: every third of it, so two heartbeats may
/// fail before it lapses, but never more often than [`MIN_HEARTBEAT_EVERY`], whatever a
/// misconfigured gateway answers.
pub fn heartbeat_every(lease: Duration) -> Duration {
    (lease / 3).max(MIN_HEARTBEAT_EVERY)
}

/// A key unique to one registration call: process, time, a counter and the DAG.
fn new_idempotency_key(dag_hash: &str) -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let seed = format!("{}:{nanos}:{sequence}:{dag_hash}", std::process::id());
    sha256_hex(seed.as_bytes())[..32].to_owned()
}

impl GatewayClient {
    /// A client for the gateway at `url` (`http://HOST:PORT`), with a 10 s limit per
    /// request, or the seconds in `QMTL_GATEWAY_TIMEOUT_SECS` when set.
    ///
    /// # Errors
    /// [`GatewayError::BadUrl`] for a URL that is not `http://HOST[:PORT]`.
    pub fn new(url: &str) -> Result<GatewayClient, GatewayError> {
        let trimmed = url.trim().trim_end_matches('/').to_owned();
        // Shown without user info, query or fragment, which may hold secrets.
        let shown = crate::secret::redact_dsn(url.split(['?', '#']).next().unwrap_or(url));
        let bad = |reason| GatewayError::BadUrl {
            url: shown.clone(),
            reason,
        };
        if trimmed.starts_with("https://") {
            return Err(bad(
                "https is not supported by this build (no TLS); use http://",
            ));
        }
        let Some(rest) = trimmed.strip_prefix("http://") else {
            return Err(bad(
                "it must start with http://, e.g. http://127.0.0.1:8000",
            ));
        };
        if rest.is_empty() || rest.starts_with(':') {
            return Err(bad("it names no host, e.g. http://127.0.0.1:8000"));
        }
        if rest.contains(['?', '#']) {
            return Err(bad(
                "it has a query or fragment; give only http://HOST:PORT[/PATH]",
            ));
        }
        let authority = rest.split('/').next().unwrap_or(rest);
        if authority.contains('@') {
            return Err(bad(
                "it holds a user or password; give the token with --gateway-token or \
                 QMTL_GATEWAY_TOKEN instead",
            ));
        }
        let timeout = timeout_from_env().unwrap_or(DEFAULT_TIMEOUT);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .map_err(|_| bad("the HTTP client could not be built"))?;
        Ok(GatewayClient {
            url: trimmed,
            http,
            token: None,
            timeout,
            stop_retrying: None,
        })
    }

    /// Abandons a registration once `token` is cancelled during it: the attempt in
    /// flight is dropped at once (or the pause before a resend cut short), no new
    /// attempt starts, and the registration fails with [`GatewayError::Stopped`], so a
    /// run asked to stop is not held up by the gateway. A token cancelled before the
    /// registration began does not shorten it; ending a strategy is never cut short.
    #[must_use]
    pub fn stop_retrying_on(mut self, token: tokio_util::sync::CancellationToken) -> Self {
        self.stop_retrying = Some(token);
        self
    }

    /// Sends `Authorization: Bearer TOKEN` with every request.
    #[must_use]
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// The limit on one request (default 10 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Registers `dag` with `run_type`, under a new idempotency key, resending it when
    /// that is safe (see the module docs).
    ///
    /// # Errors
    /// Any [`GatewayError`]: 401, 409 (with the active strategy's id), 4xx with the
    /// gateway's `detail` and `field`, 5xx, an unreachable gateway, a timeout, or an
    /// answer that is not the API's; [`GatewayError::Stopped`] when the token given to
    /// [`GatewayClient::stop_retrying_on`] was cancelled during it. Before a failure
    /// that came after the request may have reached the gateway is returned, the
    /// gateway is asked to end whatever it stored under the key.
    pub async fn register(
        &self,
        dag: &Dag,
        run_type: RunType,
    ) -> Result<Registration, GatewayError> {
        let body = serde_json::json!({
            "dag_json": dag.to_json(),
            "meta": { "sdk": "qmtl-rust", "version": env!("CARGO_PKG_VERSION") },
            "run_type": run_type.as_str(),
        });
        let body = serde_json::to_vec(&body).expect("the DAG JSON serializes");
        let key = new_idempotency_key(&sha256_hex(&body));
        let url = format!("{}/strategies", self.url);
        let build = || {
            self.http
                .post(&url)
                .header("content-type", "application/json")
                .header(IDEMPOTENCY_KEY, &key)
                .body(body.clone())
        };
        let decode = |status, bytes: &[u8]| self.accepted(status, bytes, &key);
        let (result, reached) = self.send_retrying("POST /strategies", build, decode).await;
        let registration = match result {
            Ok(registration) => registration,
            Err(error) => {
                // A refusal (4xx) means nothing is stored under the key.
                if reached && !error.is_usage() {
                    let within = if error.is_stop() {
                        ABANDON_TIMEOUT_STOPPED
                    } else {
                        ABANDON_TIMEOUT
                    };
                    self.abandon(&key, within).await;
                }
                return Err(error);
            }
        };
        tracing::info!(
            gateway_url = %self.url, strategy_id = %registration.strategy_id,
            run_type = run_type.as_str(), queues = registration.queue_map.len(),
            lease_ms = registration.lease.map(|l| l.as_millis() as u64),
            "gateway.registered"
        );
        Ok(registration)
    }

    /// Decodes a registration's answer.
    fn accepted(&self, status: u16, bytes: &[u8], key: &str) -> Result<Registration, GatewayError> {
        if status != 202 && status != 200 && status != 201 {
            return Err(self.failure(status, bytes));
        }
        let accepted: Accepted =
            serde_json::from_slice(bytes).map_err(|e| self.garbage(status, bytes, Some(e)))?;
        let mut queue_map = HashMap::new();
        for (node, target) in accepted.queue_map {
            let target = match target {
                serde_json::Value::String(q) => QueueTarget::Queue(q),
                serde_json::Value::Array(items) => {
                    let queues: Option<Vec<String>> = items
                        .into_iter()
                        .map(|v| v.as_str().map(str::to_owned))
                        .collect();
                    QueueTarget::Queues(queues.ok_or_else(|| self.garbage(status, bytes, None))?)
                }
                _ => return Err(self.garbage(status, bytes, None)),
            };
            queue_map.insert(NodeId::from_hex(node), target);
        }
        let lease = match accepted.lease_secs {
            None => None,
            Some(secs) if secs.is_finite() && secs > 0.0 && secs < 1e9 => {
                Some(Duration::from_secs_f64(secs))
            }
            Some(_) => return Err(self.garbage(status, bytes, None)),
        };
        Ok(Registration {
            strategy_id: accepted.strategy_id,
            queue_map,
            lease,
            idempotency_key: key.to_owned(),
        })
    }

    /// Asks the gateway, best effort, to end what it stored under `key`; a failure is
    /// logged (the lease ends the registration anyway).
    async fn abandon(&self, key: &str, within: Duration) {
        let url = format!("{}/strategies?idempotency_key={key}", self.url);
        let request = self.send_once("DELETE /strategies?idempotency_key", || {
            self.http.delete(&url)
        });
        match tokio::time::timeout(within, request).await {
            Ok(Ok((200 | 204, _))) => {
                tracing::info!(gateway_url = %self.url, "gateway.registration_abandoned");
            }
            Ok(Ok((404, _))) => {
                tracing::debug!(gateway_url = %self.url, "gateway.registration_never_stored");
            }
            Ok(Ok((status, _))) => tracing::warn!(
                gateway_url = %self.url, status, "gateway.abandon_failed"
            ),
            Ok(Err(error)) => tracing::warn!(
                gateway_url = %self.url, error = %error, "gateway.abandon_failed"
            ),
            Err(_) => tracing::warn!(
                gateway_url = %self.url, timeout_ms = within.as_millis() as u64,
                "gateway.abandon_failed"
            ),
        }
    }

    /// Ends the strategy `strategy_id`, so its nodes are no longer offered to others.
    ///
    /// # Errors
    /// As [`GatewayClient::register`]; 404 (already unknown) is [`GatewayError::Rejected`].
    pub async fn end(&self, strategy_id: &str) -> Result<(), GatewayError> {
        // Ending is what a stopping run does last, so a stop does not cut its retries.
        let this = GatewayClient {
            stop_retrying: None,
            ..self.clone()
        };
        let url = format!("{}/strategies/{strategy_id}", this.url);
        let decode = |status, bytes: &[u8]| match status {
            200 | 204 => Ok(()),
            _ => Err(this.failure(status, bytes)),
        };
        let (result, _) = this
            .send_retrying("DELETE /strategies/{id}", || this.http.delete(&url), decode)
            .await;
        result?;
        tracing::info!(gateway_url = %self.url, strategy_id, "gateway.ended");
        Ok(())
    }

    /// Renews the lease of `strategy_id` once (no resend: the next heartbeat is the
    /// retry).
    ///
    /// # Errors
    /// [`GatewayError::LeaseLost`] when the gateway answers 410 or 404 (the strategy
    /// ended or is unknown); otherwise as [`GatewayClient::register`].
    pub async fn heartbeat(&self, strategy_id: &str) -> Result<(), GatewayError> {
        let url = format!("{}/strategies/{strategy_id}/heartbeat", self.url);
        let (status, bytes) = self
            .send_once("POST /strategies/{id}/heartbeat", || self.http.post(&url))
            .await?;
        match status {
            200 | 204 => Ok(()),
            404 | 410 => Err(GatewayError::LeaseLost {
                url: self.url.clone(),
                strategy_id: strategy_id.to_owned(),
            }),
            _ => Err(self.failure(status, &bytes)),
        }
    }

    /// Starts renewing `registration`'s lease every third of it (at most once a
    /// second, see [`heartbeat_every`]), until the returned [`Heartbeat`] is dropped;
    /// nothing to do for a gateway without leases. Must be called inside a Tokio
    /// runtime.
    pub fn keep_alive(&self, registration: &Registration) -> Heartbeat {
        let Some(lease) = registration.lease else {
            return Heartbeat { task: None };
        };
        let every = heartbeat_every(lease);
        if every > lease / 3 {
            tracing::warn!(
                gateway_url = %self.url, strategy_id = %registration.strategy_id,
                lease_ms = lease.as_millis() as u64, every_ms = every.as_millis() as u64,
                "gateway.lease_too_short"
            );
        }
        let client = self.clone().timeout(self.timeout.min(every));
        let id = registration.strategy_id.clone();
        let task = tokio::spawn(async move {
            let start = tokio::time::Instant::now() + every;
            let mut ticks = tokio::time::interval_at(start, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match client.heartbeat(&id).await {
                    Ok(()) => tracing::trace!(strategy_id = %id, "gateway.heartbeat"),
                    Err(error @ GatewayError::LeaseLost { .. }) => {
                        tracing::warn!(
                            gateway_url = %client.url, strategy_id = %id, error = %error,
                            "gateway.lease_lost"
                        );
                        return;
                    }
                    Err(error) => tracing::warn!(
                        gateway_url = %client.url, strategy_id = %id, error = %error,
                        "gateway.heartbeat_failed"
                    ),
                }
            }
        });
        Heartbeat { task: Some(task) }
    }

    /// Sends a request up to [`ATTEMPTS`] times while the failure is retryable, and
    /// decodes the answer with `decode` (whose failures may be retryable too: a 5xx).
    /// Also returns whether any attempt may have reached the gateway.
    async fn send_retrying<T>(
        &self,
        what: &'static str,
        build: impl Fn() -> reqwest::RequestBuilder,
        decode: impl Fn(u16, &[u8]) -> Result<T, GatewayError>,
    ) -> (Result<T, GatewayError>, bool) {
        let stop = self.stop_retrying.as_ref().filter(|t| !t.is_cancelled());
        let mut delay = FIRST_RETRY_DELAY;
        let mut reached = false;
        let mut attempt = 1;
        loop {
            // One attempt, dropped as soon as the run is stopped.
            let sent = match stop {
                Some(stop) => {
                    tokio::select! {
                        biased;
                        () = stop.cancelled() => {
                            // It may have been sent: count it as reaching the gateway.
                            return (Err(self.stopped(attempt, None)), true);
                        }
                        sent = self.send_once(what, &build) => sent,
                    }
                }
                None => self.send_once(what, &build).await,
            };
            let result = match sent {
                Ok((status, bytes)) => decode(status, &bytes),
                Err(error) => Err(error),
            };
            let error = match result {
                Ok(value) => return (Ok(value), reached),
                Err(error) => error,
            };
            reached |= !matches!(error, GatewayError::Unreachable { .. });
            if !error.is_retryable() || attempt >= ATTEMPTS {
                return (Err(error.after_attempts(attempt)), reached);
            }
            if stop.is_some_and(|t| t.is_cancelled()) {
                return (Err(self.stopped(attempt, Some(error))), reached);
            }
            tracing::warn!(
                gateway_url = %self.url, request = what, attempt,
                delay_ms = delay.as_millis() as u64, error = %error, "gateway.retry"
            );
            match stop {
                Some(stop) => {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop.cancelled() => {
                            return (Err(self.stopped(attempt, Some(error))), reached);
                        }
                    }
                }
                None => tokio::time::sleep(delay).await,
            }
            delay *= 2;
            attempt += 1;
        }
    }

    /// The error for a registration stopped by its run after `attempts` attempts;
    /// `last` is the failure of the attempt before the stop, if it had failed.
    fn stopped(&self, attempts: u32, last: Option<GatewayError>) -> GatewayError {
        tracing::info!(gateway_url = %self.url, attempts, "gateway.registration_stopped");
        GatewayError::Stopped {
            url: self.url.clone(),
            attempts,
            source: last.map(|e| Box::new(e.after_attempts(attempts))),
        }
    }

    /// Sends a request once and reads its answer.
    async fn send_once(
        &self,
        what: &'static str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(u16, Vec<u8>), GatewayError> {
        let mut request = build().timeout(self.timeout);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let bytes = self.read_body(what, response).await?;
                Ok((status, bytes))
            }
            Err(e) if e.is_connect() => Err(GatewayError::Unreachable {
                url: self.url.clone(),
                attempts: 1,
                source: e,
            }),
            Err(e) => Err(self.transport(what, e)),
        }
    }

    async fn read_body(
        &self,
        what: &'static str,
        mut response: reqwest::Response,
    ) -> Result<Vec<u8>, GatewayError> {
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport(what, e))?
        {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_ANSWER_BYTES {
                let status = response.status().as_u16();
                return Err(self.garbage(status, &bytes, None));
            }
        }
        Ok(bytes)
    }

    fn transport(&self, what: &'static str, e: reqwest::Error) -> GatewayError {
        if e.is_timeout() {
            GatewayError::Timeout {
                url: self.url.clone(),
                what,
                after: self.timeout,
                attempts: 1,
            }
        } else {
            GatewayError::Transport {
                url: self.url.clone(),
                what,
                attempts: 1,
                source: e,
            }
        }
    }

    /// Text from the gateway, as it may be shown: the token, if echoed, replaced.
    ///
    /// The gateway's words are shown at most [`MAX_DETAIL_CHARS`] characters long, with
    /// control characters escaped: an answer cannot flood the terminal or drive it.
    fn shown(&self, text: String) -> String {
        let masked = match &self.token {
            Some(token) if text.contains(token.as_str()) => text.replace(token.as_str(), "***"),
            _ => text,
        };
        crate::quote::quote_up_to(&masked, MAX_DETAIL_CHARS)
    }

    /// The start of an answer body, as it may be shown.
    fn excerpt(&self, bytes: &[u8]) -> String {
        // Decode all of it first, so a token straddling the cut is still found.
        let text = String::from_utf8_lossy(bytes).into_owned();
        let masked = match &self.token {
            Some(token) if text.contains(token.as_str()) => text.replace(token.as_str(), "***"),
            _ => text,
        };
        crate::quote::quote_up_to(&masked, 120)
    }

    fn garbage(
        &self,
        status: u16,
        bytes: &[u8],
        source: Option<serde_json::Error>,
    ) -> GatewayError {
        GatewayError::Garbage {
            url: self.url.clone(),
            status,
            excerpt: self.excerpt(bytes),
            source,
        }
    }

    /// The error for a non-success answer.
    fn failure(&self, status: u16, bytes: &[u8]) -> GatewayError {
        let Ok(problem) = serde_json::from_slice::<Problem>(bytes) else {
            if status >= 500 {
                return GatewayError::Server {
                    url: self.url.clone(),
                    status,
                    detail: self.excerpt(bytes),
                };
            }
            return self.garbage(status, bytes, None);
        };
        let url = self.url.clone();
        let detail = self.shown(problem.detail.unwrap_or_default());
        match status {
            401 => GatewayError::Unauthorized { url, detail },
            409 => match problem.strategy_id {
                Some(strategy_id) => GatewayError::Conflict { url, strategy_id },
                None => self.garbage(status, bytes, None),
            },
            400..=499 => GatewayError::Rejected {
                url,
                status,
                detail,
                field: problem.field.map(|f| self.shown(f)),
            },
            500..=599 => GatewayError::Server {
                url,
                status,
                detail,
            },
            _ => self.garbage(status, bytes, None),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_with_credentials_or_queries_are_refused_without_echoing_them() {
        for url in [
            "http://u:SeKrEt99@127.0.0.1:1",
            "http://127.0.0.1:1/?token=SeKrEt99",
        ] {
            let Err(err) = GatewayClient::new(url) else {
                panic!("accepted {url}")
            };
            let err = err.to_string();
            assert!(!err.contains("SeKrEt99"), "{err}");
            assert!(err.contains("127.0.0.1:1"), "{err}");
        }
    }

    use super::*;

    #[test]
    fn urls_must_be_plain_http_with_a_host() {
        for bad in [
            "https://h:1",
            "ftp://h",
            "127.0.0.1:8000",
            "http://",
            "http://:80",
        ] {
            let err = GatewayClient::new(bad).unwrap_err();
            assert!(matches!(err, GatewayError::BadUrl { .. }), "{bad}");
            assert!(err.is_usage());
        }
        let ok = GatewayClient::new("http://127.0.0.1:8000/").unwrap();
        assert_eq!(ok.url(), "http://127.0.0.1:8000");
    }

    #[test]
    fn error_answers_become_variants_with_the_gateways_words() {
        let client = GatewayClient::new("http://127.0.0.1:1").unwrap();
        let cases: &[(u16, &str, &str)] = &[
            (401, r#"{"detail":"missing token"}"#, "401 unauthorized"),
            (
                409,
                r#"{"detail":"dup","strategy_id":"abc"}"#,
                "active as strategy abc",
            ),
            (
                422,
                r#"{"detail":"period must be positive","field":"dag_json.nodes[0].period"}"#,
                "(422) at field dag_json.nodes[0].period: period must be positive",
            ),
            (500, "oops", "failed (500): oops"),
            (
                503,
                r#"{"detail":"store down"}"#,
                "failed (503): store down",
            ),
            (418, "not json", "unexpected body"),
        ];
        for (status, body, want) in cases {
            let err = client.failure(*status, body.as_bytes());
            assert!(err.to_string().contains(want), "{status}: {err}");
        }
        assert!(client.failure(409, br#"{"strategy_id":"x"}"#).is_usage());
        assert!(!client.failure(500, b"x").is_usage());
    }

    #[test]
    fn only_transient_failures_are_retryable() {
        let client = GatewayClient::new("http://127.0.0.1:1").unwrap();
        let cases: &[(u16, &[u8], bool)] = &[
            (500, b"oops", true),
            (503, br#"{"detail":"store down"}"#, true),
            (401, br#"{"detail":"no"}"#, false),
            (409, br#"{"strategy_id":"x"}"#, false),
            (410, br#"{"detail":"ended"}"#, false),
            (422, br#"{"detail":"bad","field":"f"}"#, false),
            (418, b"not json", false),
        ];
        for (status, body, retryable) in cases {
            let err = client.failure(*status, body);
            assert_eq!(err.is_retryable(), *retryable, "{status}: {err}");
        }
        assert!(!client.garbage(202, b"<html>", None).is_retryable());
    }

    #[test]
    fn heartbeats_come_every_third_of_the_lease_but_at_most_once_a_second() {
        let ms = Duration::from_millis;
        let cases = [
            (Duration::from_secs(30), Duration::from_secs(10)),
            (Duration::from_secs(3), Duration::from_secs(1)),
            (ms(1500), Duration::from_secs(1)),
            (Duration::from_nanos(1_000), Duration::from_secs(1)),
            (Duration::ZERO, Duration::from_secs(1)),
            (
                Duration::from_secs(900_000_000),
                Duration::from_secs(300_000_000),
            ),
        ];
        for (lease, every) in cases {
            assert_eq!(heartbeat_every(lease), every, "lease {lease:?}");
        }
    }

    #[test]
    fn a_registration_stopped_by_its_run_is_a_stop_naming_the_url_not_a_failure() {
        let client = GatewayClient::new("http://127.0.0.1:1").unwrap();
        let last = client.failure(503, br#"{"detail":"store down"}"#);
        for err in [client.stopped(1, None), client.stopped(2, Some(last))] {
            assert!(err.is_stop(), "{err}");
            assert!(!err.is_usage() && !err.is_retryable(), "{err}");
            let text = err.to_string();
            assert!(
                text.starts_with("stopped while registering with http://127.0.0.1:1"),
                "{text}"
            );
        }
        let err = client.stopped(2, Some(client.failure(503, b"x")));
        let cause = std::error::Error::source(&err).expect("the last failure is kept");
        assert!(cause.to_string().contains("503"), "{cause}");
        assert!(!client.failure(503, b"x").is_stop());
    }

    #[test]
    fn a_token_echoed_by_the_gateway_is_masked() {
        let token = "T0k-very-secret";
        let client = GatewayClient::new("http://127.0.0.1:1")
            .unwrap()
            .token(Some(token.to_owned()));
        let json = format!(r#"{{"detail":"got Bearer {token}"}}"#);
        let long = format!("{}Bearer {token}", "x".repeat(110));
        let errors = [
            client.failure(401, json.as_bytes()),
            client.failure(422, json.as_bytes()),
            client.failure(500, json.as_bytes()),
            client.failure(502, format!("<p>{token}</p>").as_bytes()),
            client.garbage(202, long.as_bytes(), None),
        ];
        assert!(!format!("{client:?}").contains(token), "{client:?}");
        for err in errors {
            let text = err.to_string();
            assert!(
                !text.contains(token) && !text.contains("T0k-very"),
                "{text}"
            );
            assert!(!format!("{err:?}").contains(token), "{err:?}");
        }
    }

    /// Regression: a gateway's 200 kB detail holding terminal escapes was printed whole.
    #[test]
    fn a_gateways_words_are_shown_short_and_without_control_characters() {
        let client = GatewayClient::new("http://127.0.0.1:1").unwrap();
        let detail = format!(r"\u001b]0;owned\u0007{}", "d".repeat(200_000));
        let json = format!(r#"{{"detail":"{detail}","field":"f\nx"}}"#);
        for status in [400, 422, 500] {
            let text = client.failure(status, json.as_bytes()).to_string();
            assert!(text.len() < 1_000, "{status}: {} bytes", text.len());
            assert!(!text.chars().any(char::is_control), "{status}: {text}");
            assert!(text.contains("\\u{1b}]0;owned"), "{status}: {text}");
        }
        let raw = format!("\u{1b}[2J{}", "z".repeat(10_000));
        let text = client.failure(502, raw.as_bytes()).to_string();
        assert!(
            text.len() < 400 && !text.chars().any(char::is_control),
            "{text}"
        );
    }
}

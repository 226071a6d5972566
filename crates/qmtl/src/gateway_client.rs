//! The SDK side of the gateway: registering a strategy's DAG, reading the queue map the
//! gateway answers with, and ending the strategy when the run stops.
//!
//! [`GatewayClient::register`] sends `POST /strategies` with the DAG JSON as a JSON object
//! (the gateway also accepts base64), `meta` and the run type (`"backtest"`, `"dry-run"`
//! or `"live"`), and returns a [`Registration`]: the strategy id and, per node that
//! another active strategy already computes, the queue its rows are read from
//! ([`QueueTarget`]). [`GatewayClient::end`] sends `DELETE /strategies/{id}`.
//!
//! Retries are limited to what is safe: a request is retried only when the connection
//! could not be opened (the request never left this process). A request that was sent
//! and then timed out or lost its connection is not sent again, since the gateway may
//! already have stored it; the error says so. Plain `http://` only: this build has no
//! TLS, so put a TLS-terminating proxy in front of a gateway reached over a network.
//!
//! Every answer the gateway gives as an error (`{"detail", "field"}`) becomes a
//! [`GatewayError`] variant holding the URL and the gateway's words; classify them with
//! [`GatewayError::is_usage`], never by message text.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use crate::dag::Dag;
use crate::node::NodeId;

/// Connection attempts for one request (the first and the retries after a refused
/// connection).
const CONNECT_ATTEMPTS: u32 = 4;

/// The first pause between connection attempts; it doubles after each.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(150);

/// Longest accepted answer body, in bytes.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

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
        "gateway {url} did not answer {what} within {after:?}; not retried, since the \
         gateway may have acted on it"
    )]
    Timeout {
        /// The gateway's base URL.
        url: String,
        /// The request.
        what: &'static str,
        /// The time allowed.
        after: Duration,
    },
    /// The connection failed after the request was sent.
    #[error("gateway {url}: {what} failed after it was sent; not retried: {source}")]
    Transport {
        /// The gateway's base URL.
        url: String,
        /// The request.
        what: &'static str,
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
}

/// Talks to one gateway.
///
/// ```no_run
/// # async fn demo(dag: &qmtl::Dag) -> Result<(), qmtl::gateway_client::GatewayError> {
/// use qmtl::gateway_client::{GatewayClient, RunType};
///
/// let client = GatewayClient::new("http://127.0.0.1:8000")?;
/// let registration = client.register(dag, RunType::DryRun).await?;
/// println!("{} nodes computed elsewhere", registration.queue_map.len());
/// client.end(&registration.strategy_id).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct GatewayClient {
    url: String,
    http: reqwest::Client,
    token: Option<String>,
    timeout: Duration,
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
}

impl GatewayClient {
    /// A client for the gateway at `url` (`http://HOST:PORT`), with a 10 s limit per
    /// request.
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
        let timeout = Duration::from_secs(10);
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
        })
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

    /// Registers `dag` with `run_type`.
    ///
    /// # Errors
    /// Any [`GatewayError`]: 401, 409 (with the active strategy's id), 4xx with the
    /// gateway's `detail` and `field`, 5xx, an unreachable gateway, a timeout, or an
    /// answer that is not the API's.
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
        let url = format!("{}/strategies", self.url);
        let (status, bytes) = self
            .send("POST /strategies", || {
                self.http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
            })
            .await?;
        if status != 202 && status != 200 && status != 201 {
            return Err(self.failure(status, &bytes));
        }
        let accepted: Accepted =
            serde_json::from_slice(&bytes).map_err(|e| self.garbage(status, &bytes, Some(e)))?;
        let mut queue_map = HashMap::new();
        for (node, target) in accepted.queue_map {
            let target = match target {
                serde_json::Value::String(q) => QueueTarget::Queue(q),
                serde_json::Value::Array(items) => {
                    let queues: Option<Vec<String>> = items
                        .into_iter()
                        .map(|v| v.as_str().map(str::to_owned))
                        .collect();
                    QueueTarget::Queues(queues.ok_or_else(|| self.garbage(status, &bytes, None))?)
                }
                _ => return Err(self.garbage(status, &bytes, None)),
            };
            queue_map.insert(NodeId::from_hex(node), target);
        }
        tracing::info!(
            gateway_url = %self.url, strategy_id = %accepted.strategy_id,
            run_type = run_type.as_str(), queues = queue_map.len(), "gateway.registered"
        );
        Ok(Registration {
            strategy_id: accepted.strategy_id,
            queue_map,
        })
    }

    /// Ends the strategy `strategy_id`, so its nodes are no longer offered to others.
    ///
    /// # Errors
    /// As [`GatewayClient::register`]; 404 (already unknown) is [`GatewayError::Rejected`].
    pub async fn end(&self, strategy_id: &str) -> Result<(), GatewayError> {
        let url = format!("{}/strategies/{strategy_id}", self.url);
        let (status, bytes) = self
            .send("DELETE /strategies/{id}", || self.http.delete(&url))
            .await?;
        if status == 200 || status == 204 {
            tracing::info!(gateway_url = %self.url, strategy_id, "gateway.ended");
            return Ok(());
        }
        Err(self.failure(status, &bytes))
    }

    /// Sends a request, retrying only connections that could not be opened.
    async fn send(
        &self,
        what: &'static str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(u16, Vec<u8>), GatewayError> {
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 1;
        loop {
            let mut request = build().timeout(self.timeout);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let bytes = self.read_body(what, response).await?;
                    return Ok((status, bytes));
                }
                Err(e) if e.is_connect() && attempt < CONNECT_ATTEMPTS => {
                    tracing::warn!(
                        gateway_url = %self.url, attempt, delay_ms = delay.as_millis() as u64,
                        error = %e, "gateway.connect_retry"
                    );
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) if e.is_connect() => {
                    return Err(GatewayError::Unreachable {
                        url: self.url.clone(),
                        attempts: attempt,
                        source: e,
                    })
                }
                Err(e) => return Err(self.transport(what, e)),
            }
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
            }
        } else {
            GatewayError::Transport {
                url: self.url.clone(),
                what,
                source: e,
            }
        }
    }

    fn garbage(
        &self,
        status: u16,
        bytes: &[u8],
        source: Option<serde_json::Error>,
    ) -> GatewayError {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned();
        GatewayError::Garbage {
            url: self.url.clone(),
            status,
            excerpt: text,
            source,
        }
    }

    /// The error for a non-success answer.
    fn failure(&self, status: u16, bytes: &[u8]) -> GatewayError {
        let Ok(problem) = serde_json::from_slice::<Problem>(bytes) else {
            if status >= 500 {
                let excerpt = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]);
                return GatewayError::Server {
                    url: self.url.clone(),
                    status,
                    detail: excerpt.into_owned(),
                };
            }
            return self.garbage(status, bytes, None);
        };
        let url = self.url.clone();
        let detail = problem.detail.unwrap_or_default();
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
                field: problem.field,
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
}

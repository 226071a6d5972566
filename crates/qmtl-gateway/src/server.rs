//! Starting and stopping a gateway: configuration, binding, the store, graceful
//! shutdown.
//!
//! [`serve`] binds first (so a taken port is reported at once, naming the port), then
//! opens the store, then answers requests until [`ShutdownHandle::shutdown`] or
//! [`Gateway::stop`]. Shutdown is graceful: requests in flight finish, then the store is
//! closed. Signal handling belongs to the caller (the `qmtl gateway` command turns
//! SIGINT and SIGTERM into a shutdown).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{router, AppState};
use crate::auth::Token;
use crate::metrics::GatewayMetrics;
use crate::payload::DEFAULT_MAX_BODY_BYTES;
use crate::store::{Store, StoreError, StoreSpec};

/// The default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";

/// The default lease: a registration not renewed by a heartbeat within this long ends.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How to run a gateway.
#[must_use]
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    listen: SocketAddr,
    store: StoreSpec,
    token: Option<Token>,
    body_limit: usize,
    lease: Duration,
}

impl GatewayConfig {
    /// A gateway on [`DEFAULT_LISTEN`] keeping its state in `store`, without a token,
    /// with the default body limit ([`DEFAULT_MAX_BODY_BYTES`]) and lease
    /// ([`DEFAULT_LEASE`]).
    pub fn new(store: StoreSpec) -> Self {
        GatewayConfig {
            listen: DEFAULT_LISTEN.parse().expect("a valid constant address"),
            store,
            token: None,
            body_limit: DEFAULT_MAX_BODY_BYTES,
            lease: DEFAULT_LEASE,
        }
    }

    /// How long a registration lives without a heartbeat (clients renew it every third
    /// of this). The expiry time is stored with the strategy, so it holds across
    /// restarts.
    ///
    /// # Panics
    /// When `lease` is under one millisecond, which no client could keep renewed.
    #[track_caller]
    pub fn lease(mut self, lease: Duration) -> Self {
        assert!(
            lease >= Duration::from_millis(1),
            "a gateway lease must be at least 1 ms; use DEFAULT_LEASE for the usual 30 s"
        );
        self.lease = lease;
        self
    }

    /// The address to bind (port 0 picks a free port; see [`Gateway::local_addr`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Requires `Authorization: Bearer TOKEN` on every request.
    pub fn token(mut self, token: Option<Token>) -> Self {
        self.token = token;
        self
    }

    /// The largest accepted request body in bytes; larger ones get 413.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }
}

/// Why a gateway did not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listen port is taken.
    #[error(
        "port {port} on {host} is already in use (another gateway?); choose another with \
         --listen HOST:PORT"
    )]
    PortInUse {
        /// The port.
        port: u16,
        /// The host.
        host: String,
    },
    /// Binding failed for another reason.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the gateway store {store}: {source}")]
    Store {
        /// The spec, password redacted.
        store: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// The server failed while running.
    #[error("the gateway on {addr} failed: {source}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server task panicked or was aborted.
    #[error("the gateway task on {addr} ended abnormally: {source}")]
    Task {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl GatewayError {
    /// Whether the error is the user's to fix (a taken port, a bad store spec).
    pub fn is_usage(&self) -> bool {
        match self {
            GatewayError::PortInUse { .. } => true,
            GatewayError::Store { source, .. } => source.is_usage(),
            _ => false,
        }
    }
}

/// Stops a running gateway from anywhere.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Starts a graceful shutdown.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Gateway {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that stops the gateway.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.stop.clone())
    }

    /// Waits until the gateway has stopped (after a shutdown from a handle).
    ///
    /// # Errors
    /// [`GatewayError::Serve`] or [`GatewayError::Task`] when serving failed.
    pub async fn wait(self) -> Result<(), GatewayError> {
        let addr = self.addr;
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(GatewayError::Serve { addr, source }),
            Err(source) => Err(GatewayError::Task { addr, source }),
        }
    }

    /// Shuts down gracefully and waits until stopped.
    ///
    /// # Errors
    /// As for [`Gateway::wait`].
    pub async fn stop(self) -> Result<(), GatewayError> {
        self.stop.cancel();
        self.wait().await
    }
}

/// Binds, opens the store and starts answering; must be called inside a Tokio runtime.
///
/// ```no_run
/// # async fn demo() -> Result<(), qmtl_gateway::GatewayError> {
/// use qmtl_gateway::{serve, GatewayConfig, StoreSpec};
///
/// let config = GatewayConfig::new(StoreSpec::SqliteMemory).listen(([127, 0, 0, 1], 0).into());
/// let gateway = serve(config).await?;
/// println!("listening on {}", gateway.local_addr());
/// gateway.stop().await?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// [`GatewayError::PortInUse`] naming the port when it is taken, [`GatewayError::Bind`]
/// for other bind failures, [`GatewayError::Store`] when the store cannot be opened.
pub async fn serve(config: GatewayConfig) -> Result<Gateway, GatewayError> {
    // Bind first, so a taken port is reported before any store work.
    let listener = TcpListener::bind(config.listen).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            GatewayError::PortInUse {
                port: config.listen.port(),
                host: config.listen.ip().to_string(),
            }
        } else {
            GatewayError::Bind {
                addr: config.listen,
                source,
            }
        }
    })?;
    let addr = listener.local_addr().map_err(|source| GatewayError::Bind {
        addr: config.listen,
        source,
    })?;

    // Open the store.
    let store = Store::open(&config.store)
        .await
        .map_err(|source| GatewayError::Store {
            store: config.store.to_string(),
            source,
        })?;
    let state = Arc::new(AppState {
        store,
        store_kind: config.store.kind(),
        metrics: GatewayMetrics::new(),
        token: config.token.clone(),
        body_limit: config.body_limit,
        sequence: AtomicU64::new(0),
        lease: config.lease,
    });

    // Serve until stopped.
    let app = router(state);
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tracing::info!(
        addr = %addr,
        store = %config.store,
        token_required = config.token.is_some(),
        body_limit = config.body_limit,
        lease_ms = config.lease.as_millis() as u64,
        "gateway.listening"
    );
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(stopped.cancelled_owned())
            .await;
        tracing::info!(addr = %addr, "gateway.stopped");
        result
    });
    Ok(Gateway { addr, stop, task })
}

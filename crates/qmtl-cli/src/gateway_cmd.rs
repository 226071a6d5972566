//! `qmtl gateway`: runs the gateway server (the `qmtl-gateway` crate) until SIGINT or
//! SIGTERM, then stops gracefully and exits 0.
//!
//! Defaults: listen on 127.0.0.1:8000 (loopback only), keep state in the SQLite file
//! `qmtl-gateway.db` in the working directory, no token. The token may come from
//! `--token` or, better (it stays out of the process list), from `QMTL_GATEWAY_TOKEN`.
//! Neither the token nor a DSN password is ever printed or logged. A taken port, a bad
//! store spec, an empty token (which would protect nothing, so it is refused rather than
//! taken to mean "no token") and a PostgreSQL store that refuses the DSN's user or
//! password are usage errors (exit code 2); a store that cannot be reached exits 1.
//!
//! `--lease-secs N` (default 30) is how long a registration lives without a heartbeat
//! from its run; a run killed without ending its registration stops blocking the same
//! DAG that long after its last heartbeat.

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use qmtl_gateway::{serve, GatewayConfig, StoreSpec, Token, DEFAULT_LISTEN, DEFAULT_STORE};

use crate::signals::CancelOnSignal;

/// The environment variable read when `--token` is not given.
pub(crate) const TOKEN_ENV: &str = "QMTL_GATEWAY_TOKEN";

/// Arguments of `qmtl gateway`.
#[derive(clap::Args)]
pub(crate) struct GatewayArgs {
    /// Address to listen on; loopback by default (use 0.0.0.0:PORT for all interfaces,
    /// with a token).
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Where strategies are kept: sqlite:PATH (a file, created if missing),
    /// sqlite::memory: (lost at exit) or postgres:DSN (shared between gateways).
    #[arg(long, value_name = "SPEC", default_value = DEFAULT_STORE)]
    store: String,
    /// Require `Authorization: Bearer TOKEN` on every request (or set
    /// QMTL_GATEWAY_TOKEN, which keeps the token out of the process list).
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Seconds a registration lives without a heartbeat from its run (runs renew it
    /// every third of this); a killed run's registration ends this long after its last
    /// heartbeat.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    lease_secs: u64,
}

impl fmt::Debug for GatewayArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let store = StoreSpec::parse(&self.store)
            .map_or_else(|_| "(invalid)".to_owned(), |s| s.to_string());
        f.debug_struct("GatewayArgs")
            .field("listen", &self.listen)
            .field("store", &store)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("lease_secs", &self.lease_secs)
            .finish()
    }
}

/// Why the token given cannot be used.
#[derive(Debug, thiserror::Error)]
enum TokenError {
    /// Empty or only blanks: it would protect nothing.
    #[error(
        "the token given by {origin} is empty; an empty token would protect nothing, so \
         give a non-empty token or leave {origin} unset to run without one"
    )]
    Empty {
        /// `--token` or the environment variable.
        origin: &'static str,
    },
    /// The environment variable holds bytes that are not Unicode.
    #[error("{TOKEN_ENV} is not valid Unicode; set a text token")]
    NotUnicode,
}

/// The token from `--token`, else from the environment (`env` is its lookup).
fn token_from(
    flag: Option<String>,
    env: Result<String, std::env::VarError>,
) -> Result<Option<Token>, TokenError> {
    let (secret, origin) = match (flag, env) {
        (Some(secret), _) => (secret, "--token"),
        (None, Ok(secret)) => (secret, TOKEN_ENV),
        (None, Err(std::env::VarError::NotPresent)) => return Ok(None),
        (None, Err(std::env::VarError::NotUnicode(_))) => return Err(TokenError::NotUnicode),
    };
    if secret.trim().is_empty() {
        return Err(TokenError::Empty { origin });
    }
    Ok(Token::new(&secret))
}

/// Runs the gateway until a signal; returns the exit code.
pub(crate) fn run(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    // Check the arguments.
    let store = match StoreSpec::parse(&args.store) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let token = match token_from(args.token, std::env::var(TOKEN_ENV)) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if !args.listen.ip().is_loopback() && token.is_none() {
        tracing::warn!(addr = %args.listen, "gateway.listening_without_token");
    }
    let config = GatewayConfig::new(store.clone())
        .listen(args.listen)
        .token(token.clone())
        .lease(std::time::Duration::from_secs(args.lease_secs));

    // Serve until SIGINT or SIGTERM.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let signals = CancelOnSignal::install();
        let gateway = match serve(config).await {
            Ok(g) => g,
            Err(e) if e.is_usage() => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(2));
            }
            Err(e) => return Err(e.into()),
        };
        println!(
            "gateway listening on http://{} (store {store}, token {}, lease {} s)",
            gateway.local_addr(),
            if token.is_some() {
                "required"
            } else {
                "not required"
            },
            args.lease_secs
        );
        let _ = std::io::stdout().flush();

        let stop = signals.token();
        let handle = gateway.shutdown_handle();
        tokio::spawn(async move {
            stop.cancelled().await;
            handle.shutdown();
        });
        gateway.wait().await?;
        println!("gateway stopped");
        Ok(ExitCode::SUCCESS)
    })
}

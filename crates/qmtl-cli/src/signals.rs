//! Turns SIGINT and SIGTERM into a cancellation token, so a run stops its jobs cleanly;
//! a second signal exits at once with status 130.

use tokio_util::sync::CancellationToken;

/// Cancels its token on the first SIGINT or SIGTERM.
pub struct CancelOnSignal {
    token: CancellationToken,
}

impl CancelOnSignal {
    /// Starts listening (inside a Tokio runtime).
    pub fn install() -> Self {
        let token = CancellationToken::new();
        let cancel = token.clone();
        tokio::spawn(async move {
            let signal = wait_for_signal().await;
            tracing::warn!(signal, "signal.received");
            cancel.cancel();

            // A second signal means "now": stop without waiting for a clean end.
            let again = wait_for_signal().await;
            tracing::warn!(signal = again, "signal.forced_exit");
            std::process::exit(130);
        });
        CancelOnSignal { token }
    }

    /// The token cancelled by a signal.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "SIGINT"
}

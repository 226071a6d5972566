//! The QMTL gateway: where strategies register their DAG and learn which of its nodes
//! other running strategies already compute.
//!
//! A strategy registers with `POST /strategies`; the gateway checks the DAG (every node
//! id is recomputed from the node's description with
//! [`qmtl::dag::NodeJson::expected_id`], the same definition the SDK uses), stores it
//! verbatim, and answers with a queue map: for each node that another active strategy
//! computes, the queue its outputs go to, and for each tag query node the queues whose
//! tags and interval match. A queue is named by its node id (see [`queue`]). State lives
//! in a [`store`]: an embedded SQLite file by default, or PostgreSQL when gateways share
//! it; either survives restarts. A registration holds a lease that its client renews
//! with heartbeats; one whose client stopped renewing it ends by itself, and a resent
//! registration carrying the same idempotency key gets the original answer back.
//!
//! The routes and their answers are listed in [`api`]; payload checks in [`payload`].
//! Start a gateway with [`serve`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use qmtl_gateway::{serve, GatewayConfig, StoreSpec, Token};
//!
//! let config = GatewayConfig::new(StoreSpec::parse("sqlite:qmtl-gateway.db")?)
//!     .listen("127.0.0.1:8000".parse()?)
//!     .token(Token::new("change-me"));
//! let gateway = serve(config).await?;
//! let stop = gateway.shutdown_handle();
//! # stop.shutdown();
//! gateway.wait().await?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod echo;
pub mod metrics;
pub mod payload;
pub mod queue;
pub mod server;
pub mod store;

pub use auth::Token;
pub use payload::{DEFAULT_MAX_BODY_BYTES, MAX_NODES};
pub use server::{
    serve, Gateway, GatewayConfig, GatewayError, ShutdownHandle, DEFAULT_LEASE, DEFAULT_LISTEN,
};
pub use store::{StoreError, StoreSpec, DEFAULT_STORE};

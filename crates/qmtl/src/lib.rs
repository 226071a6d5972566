//! QMTL: a strategy runtime whose node caches are filled with history before a strategy
//! processes live data.
//!
//! A strategy ([`Strategy`]) declares a DAG of nodes: [`StreamInput`]s that receive rows,
//! processing [`Node`]s whose compute functions read a bounded window of each input
//! through a [`CacheView`], and [`TagQueryNode`]s whose inputs are found by tag. Before
//! rows are processed, the backfill engine ([`engine`]) loads history for each stream
//! from a [`CacheLoader`] (a CSV file with [`sources::CsvLoader`], a QuestDB or
//! PostgreSQL table with [`QuestDBLoader`], or any type of your own) into the caches, in
//! chunks, with retries, metrics ([`metrics`]) and a progress bar. A [`Recorder`] writes
//! node outputs back to a table for later runs. The [`Runner`] ties it together; the
//! `qmtl` command is a thin layer over it.
//!
//! A documented example, whose id is pinned by a test so ids stay stable across
//! releases and machines:
//!
//! ```
//! use qmtl::{DagBuilder, StreamInput};
//!
//! let mut dag = DagBuilder::new();
//! let price = dag
//!     .stream_input(
//!         StreamInput::new("price").interval("1h").period(20).fields(["close"])
//!             .tags(["fx", "eurusd"]),
//!     )
//!     .unwrap();
//! assert_eq!(
//!     price.id().as_str(),
//!     "324249f2e8378306108a4b0dfc559cbdc5c7edcb3d610f44fe41f46f2939b897"
//! );
//! ```

#![warn(missing_docs)]

pub mod batch;
pub mod cache;
pub mod dag;
pub mod engine;
pub mod gateway_client;
pub mod interval;
pub mod live;
pub mod loader;
pub mod metrics;
pub mod node;
pub mod quote;
pub mod recorder;
pub mod replay;
pub mod report;
pub mod row;
pub mod runner;
pub mod secret;
pub mod sources;
pub mod strategies;
pub mod telemetry;
pub mod time;

pub use cache::{BackfillState, CacheView, NodeCache, Window};
pub use dag::{Dag, DagBuilder, DagError, Strategy};
pub use engine::{BackfillConfig, JobReport, JobStatus};
pub use interval::{Interval, IntervalError};
pub use loader::{CacheLoader, LoaderError};
pub use node::{Node, NodeId, NodeRef, NodeType, StreamInput, TagMatch, TagQueryNode};
pub use recorder::Recorder;
pub use replay::OnMissing;
pub use report::Report;
pub use row::Row;
pub use runner::{Mode, RunError, Runner};
pub use sources::{PostgresLoader, QuestDBLoader};
pub use time::Timestamp;

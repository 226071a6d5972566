//! The example strategies and the registry that names strategies for the command line.
//!
//! - `sample`: the backfill guide's SampleStrategy — one stream `price` (interval 1 s,
//!   period 1, field `value`) and a pass-through node `out`.
//! - `momentum`: for hourly OHLCV bars — a stream `bars` (period 20), a fast and a slow
//!   moving average of `close` (10 and 30 bars) and a `signal` node: +1 while the fast
//!   average is above the slow one, -1 while below, with the spread between them.
//! - `momentum_wide`: the same with a 50-bar slow average. Its `bars` stream and its
//!   `sma_fast` node are defined exactly as momentum's, so they have the same node ids:
//!   run next to momentum with a gateway, it reads `sma_fast` from momentum's queue
//!   instead of computing it.
//!
//! A registry resolves the guide's `module:Class` form by its class part, ignoring case,
//! underscores and a trailing `Strategy`: `tests.sample_strategy:SampleStrategy` finds
//! `sample`.

use std::sync::Arc;

use crate::dag::{DagBuilder, DagError, Strategy};
use crate::node::{Node, NodeRef, StreamInput};
use crate::row::Row;

/// The guide's sample: a one-second stream passed through unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct SampleStrategy;

impl Strategy for SampleStrategy {
    fn setup(&self, dag: &mut DagBuilder) -> Result<NodeRef, DagError> {
        let price = dag.stream_input(
            StreamInput::new("price")
                .interval(1)
                .period(1)
                .fields(["value"]),
        )?;
        dag.node(
            Node::new("out")
                .input(&price)
                .period(1)
                .fields(["value"])
                .compute("passthrough@1", |view| {
                    let latest = view.input(0).latest()?;
                    Some(Row::one(latest.value(0)))
                }),
        )
    }
}

/// Moving-average momentum over hourly bars.
#[derive(Debug, Clone, Copy)]
pub struct MomentumStrategy {
    /// Bars in the fast average.
    pub fast: u64,
    /// Bars in the slow average.
    pub slow: u64,
}

impl Default for MomentumStrategy {
    fn default() -> Self {
        MomentumStrategy { fast: 10, slow: 30 }
    }
}

/// The fields of momentum's `bars` stream, in order.
const BAR_FIELDS: [&str; 5] = ["open", "high", "low", "close", "volume"];

/// A `window`-bar moving average of `bars`' close. The field's position is found once,
/// here, rather than by name on every event.
fn sma(name: &str, bars: &NodeRef, window: u64) -> Node {
    let close = BAR_FIELDS
        .iter()
        .position(|f| *f == "close")
        .expect("the bars stream declares close");
    Node::new(name)
        .input(bars)
        .period(window)
        .fields(["sma"])
        .config(serde_json::json!({ "window": window, "field": "close" }))
        .compute("sma@1", move |view| {
            let bars = view.input(0);
            Some(Row::one(bars.sum_at(close) / bars.len() as f64))
        })
}

impl Strategy for MomentumStrategy {
    fn setup(&self, dag: &mut DagBuilder) -> Result<NodeRef, DagError> {
        let bars = dag.stream_input(
            StreamInput::new("bars")
                .interval("1h")
                .period(20)
                .fields(BAR_FIELDS)
                .tags(["ohlcv"]),
        )?;
        let fast = dag.node(sma("sma_fast", &bars, self.fast))?;
        let slow = dag.node(sma("sma_slow", &bars, self.slow))?;
        dag.node(
            Node::new("signal")
                .input(&fast)
                .input(&slow)
                .period(1)
                .fields(["signal", "spread"])
                .compute("momentum_signal@1", |view| {
                    let fast = view.input(0).latest()?.value(0);
                    let slow = view.input(1).latest()?.value(0);
                    let spread = fast - slow;
                    let signal = if spread > 0.0 {
                        1.0
                    } else if spread < 0.0 {
                        -1.0
                    } else {
                        0.0
                    };
                    Some(Row::new(&[signal, spread]))
                }),
        )
    }
}

/// A named strategy the command line can run.
#[derive(Clone)]
pub struct StrategyEntry {
    /// The name used on the command line.
    pub name: String,
    /// One line about it.
    pub about: String,
    make: Arc<dyn Fn() -> Arc<dyn Strategy> + Send + Sync>,
}

impl std::fmt::Debug for StrategyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrategyEntry")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl StrategyEntry {
    /// A fresh instance.
    pub fn make(&self) -> Arc<dyn Strategy> {
        (self.make)()
    }
}

/// No strategy answers to the name given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown strategy '{given}'; known strategies: {known}")]
pub struct UnknownStrategy {
    /// The name given.
    pub given: String,
    /// The names known, comma-separated.
    pub known: String,
}

/// Strategies by name.
#[derive(Clone, Default)]
pub struct StrategyRegistry {
    entries: Vec<StrategyEntry>,
}

fn normalize(name: &str) -> String {
    let class = name.rsplit(':').next().unwrap_or(name);
    let class = class.rsplit('.').next().unwrap_or(class);
    let mut n: String = class
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .collect::<String>()
        .to_lowercase();
    if n.len() > "strategy".len() && n.ends_with("strategy") {
        n.truncate(n.len() - "strategy".len());
    }
    n
}

impl StrategyRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a strategy under `name`.
    #[must_use]
    pub fn with<S, F>(mut self, name: &str, about: &str, make: F) -> Self
    where
        S: Strategy + 'static,
        F: Fn() -> S + Send + Sync + 'static,
    {
        self.entries.push(StrategyEntry {
            name: name.to_owned(),
            about: about.to_owned(),
            make: Arc::new(move || Arc::new(make())),
        });
        self
    }

    /// The entries, in the order added.
    pub fn entries(&self) -> &[StrategyEntry] {
        &self.entries
    }

    /// The entry for `name`, also in the guide's `module:Class` form.
    ///
    /// # Errors
    /// [`UnknownStrategy`] listing the known names.
    pub fn resolve(&self, name: &str) -> Result<&StrategyEntry, UnknownStrategy> {
        let wanted = normalize(name);
        self.entries
            .iter()
            .find(|e| e.name == name)
            .or_else(|| self.entries.iter().find(|e| normalize(&e.name) == wanted))
            .ok_or_else(|| UnknownStrategy {
                given: name.to_owned(),
                known: self
                    .entries
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// The strategies built into the `qmtl` binary.
pub fn builtin() -> StrategyRegistry {
    StrategyRegistry::new()
        .with(
            "sample",
            "the backfill guide's SampleStrategy: one stream, pass-through",
            || SampleStrategy,
        )
        .with(
            "momentum",
            "fast/slow moving averages of hourly close and a signal",
            MomentumStrategy::default,
        )
        .with(
            "momentum_wide",
            "momentum with a 50-bar slow average; shares bars and sma_fast with momentum",
            || MomentumStrategy { fast: 10, slow: 50 },
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::Dag;

    #[test]
    fn resolves_the_guide_form_by_class() {
        let r = builtin();
        for name in [
            "sample",
            "tests.sample_strategy:SampleStrategy",
            "SampleStrategy",
            "SAMPLE",
        ] {
            assert_eq!(r.resolve(name).unwrap().name, "sample", "{name}");
        }
        assert_eq!(
            r.resolve("examples:MomentumStrategy").unwrap().name,
            "momentum"
        );
        let err = r.resolve("nope").unwrap_err().to_string();
        assert!(err.contains("known strategies: sample, momentum"), "{err}");
    }

    #[test]
    fn examples_build() {
        let dag = Dag::build(&MomentumStrategy::default()).unwrap();
        assert_eq!(dag.nodes().len(), 4);
        assert_eq!(dag.target().name, "signal");
        let wide = Dag::build(&MomentumStrategy { fast: 10, slow: 50 }).unwrap();
        for shared in ["bars", "sma_fast"] {
            assert_eq!(
                dag.by_name(shared).unwrap().id,
                wide.by_name(shared).unwrap().id
            );
        }
        assert_ne!(
            dag.by_name("sma_slow").unwrap().id,
            wide.by_name("sma_slow").unwrap().id
        );
        let sample = Dag::build(&SampleStrategy).unwrap();
        assert_eq!(sample.target().name, "out");
    }
}

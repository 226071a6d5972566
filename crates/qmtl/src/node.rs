//! Node definitions and their identity.
//!
//! Three kinds of node make up a strategy: a [`StreamInput`] (rows that come from a
//! source), a processing [`Node`] (a compute function over its inputs' cached windows)
//! and a [`TagQueryNode`] (inputs chosen at run time by tags and interval). Each is
//! declared with a by-value builder and added to a [`crate::DagBuilder`], which checks it
//! and gives it its [`NodeId`].
//!
//! A node id is the SHA-256 of a canonical JSON description: node type, name, the hash of
//! the code identity the user declares (for example `"sma@1"`), the hash of the config,
//! the hash of the payload schema, interval, period, sorted tags and the ids of the inputs
//! in order. The same definition gives the same id on every machine; any difference in
//! those parts gives a different id. Concretely, the id is
//! `sha256(json)` where `json` is the compact JSON object, keys in this order:
//! `{"node_type","name","code_hash","config_hash","schema_hash","interval","period",
//! "tags","inputs"}`, with `code_hash = sha256(code identity)` (`"StreamInput"` for a
//! stream), `config_hash = sha256(config JSON, keys sorted)` and
//! `schema_hash = sha256(JSON array of field names)`, all lower-case hex.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::CacheView;
use crate::interval::{Interval, IntervalError};
use crate::row::Row;

/// The hex SHA-256 id of a node.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Wraps an id string as given (for ids read back from JSON or a gateway).
    pub fn from_hex(hex: impl Into<Arc<str>>) -> NodeId {
        NodeId(hex.into())
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for humans.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

/// The kind of a node, as written in the DAG JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeType {
    /// Rows from a history source or a live feed.
    StreamInput,
    /// A compute function over cached input windows.
    Node,
    /// A compute function whose inputs are chosen by tags and interval.
    TagQueryNode,
}

impl fmt::Display for NodeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeType::StreamInput => "StreamInput",
            NodeType::Node => "Node",
            NodeType::TagQueryNode => "TagQueryNode",
        })
    }
}

/// What a [`TagQueryNode`] requires of a queue's tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TagMatch {
    /// At least one tag in common.
    #[default]
    Any,
    /// Every requested tag present.
    All,
}

/// A compute function: reads the node's cache and may emit one row.
pub type ComputeFn = Arc<dyn Fn(&CacheView<'_>) -> Option<Row> + Send + Sync>;

/// Converts the accepted interval forms (`"1h"`, `3600`, [`Interval`]) into an interval.
pub trait IntoInterval {
    /// The interval, or why the value is not one.
    ///
    /// # Errors
    /// [`IntervalError`] for zero, negative or malformed values.
    fn into_interval(self) -> Result<Interval, IntervalError>;
}

impl IntoInterval for Interval {
    fn into_interval(self) -> Result<Interval, IntervalError> {
        Ok(self)
    }
}
impl IntoInterval for &str {
    fn into_interval(self) -> Result<Interval, IntervalError> {
        self.parse()
    }
}
impl IntoInterval for String {
    fn into_interval(self) -> Result<Interval, IntervalError> {
        self.parse()
    }
}
impl IntoInterval for u64 {
    fn into_interval(self) -> Result<Interval, IntervalError> {
        Interval::from_secs(self)
    }
}
impl IntoInterval for i64 {
    fn into_interval(self) -> Result<Interval, IntervalError> {
        Interval::try_from(self)
    }
}
impl IntoInterval for i32 {
    fn into_interval(self) -> Result<Interval, IntervalError> {
        Interval::try_from(self)
    }
}

/// A handle to a node already added to a DAG; pass it as an input to later nodes.
#[derive(Debug, Clone)]
pub struct NodeRef {
    pub(crate) index: usize,
    pub(crate) id: NodeId,
    pub(crate) interval: Interval,
}

impl NodeRef {
    /// The node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// The node's interval.
    pub fn interval(&self) -> Interval {
        self.interval
    }

    /// The node's position in its DAG (inputs always come before their consumers).
    pub fn index(&self) -> usize {
        self.index
    }
}

fn collect_strings<I, S>(items: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    items.into_iter().map(Into::into).collect()
}

/// A source of rows: declared with a name, an interval, a period and payload fields.
#[must_use]
pub struct StreamInput {
    pub(crate) name: String,
    pub(crate) interval: Option<Result<Interval, IntervalError>>,
    pub(crate) period: u64,
    pub(crate) tags: Vec<String>,
    pub(crate) fields: Vec<String>,
}

impl StreamInput {
    /// A stream named `name`; give it an interval, a period and its fields.
    pub fn new(name: impl Into<String>) -> Self {
        StreamInput {
            name: name.into(),
            interval: None,
            period: 1,
            tags: vec![],
            fields: vec![],
        }
    }
    /// The bucket width of the stream's rows (`"1h"`, `3600`, ...).
    pub fn interval(mut self, interval: impl IntoInterval) -> Self {
        self.interval = Some(interval.into_interval());
        self
    }
    /// How many recent values the stream's own cache keeps.
    pub fn period(mut self, period: u64) -> Self {
        self.period = period;
        self
    }
    /// Tags by which other strategies can find this stream.
    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags = collect_strings(tags);
        self
    }
    /// The payload fields read from the source, matched by name ignoring case.
    pub fn fields<I: IntoIterator<Item = S>, S: Into<String>>(mut self, fields: I) -> Self {
        self.fields = collect_strings(fields);
        self
    }
}

/// A processing node: a compute function over the cached windows of its inputs.
#[must_use]
pub struct Node {
    pub(crate) name: String,
    pub(crate) inputs: Vec<NodeRef>,
    pub(crate) interval: Option<Result<Interval, IntervalError>>,
    pub(crate) period: u64,
    pub(crate) tags: Vec<String>,
    pub(crate) fields: Vec<String>,
    pub(crate) config: serde_json::Value,
    pub(crate) code: Option<String>,
    pub(crate) compute: Option<ComputeFn>,
}

impl Node {
    /// A node named `name`; give it inputs, a period, its output fields and a compute.
    pub fn new(name: impl Into<String>) -> Self {
        Node {
            name: name.into(),
            inputs: vec![],
            interval: None,
            period: 1,
            tags: vec![],
            fields: vec![],
            config: serde_json::Value::Object(Default::default()),
            code: None,
            compute: None,
        }
    }
    /// Adds an input; its window is `view.input(i)` in the order inputs were added.
    pub fn input(mut self, upstream: &NodeRef) -> Self {
        self.inputs.push(upstream.clone());
        self
    }
    /// The node's output interval (default: its first input's).
    pub fn interval(mut self, interval: impl IntoInterval) -> Self {
        self.interval = Some(interval.into_interval());
        self
    }
    /// How many recent values of each input the node's cache keeps.
    pub fn period(mut self, period: u64) -> Self {
        self.period = period;
        self
    }
    /// Tags by which other strategies can find this node's output.
    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags = collect_strings(tags);
        self
    }
    /// Names of the values the compute function emits, in order.
    pub fn fields<I: IntoIterator<Item = S>, S: Into<String>>(mut self, fields: I) -> Self {
        self.fields = collect_strings(fields);
        self
    }
    /// Parameters that change what the node computes; part of its id.
    pub fn config(mut self, config: serde_json::Value) -> Self {
        self.config = config;
        self
    }
    /// The compute function and the code identity it is declared under (for example
    /// `"sma@1"`). Change the identity whenever the function's behaviour changes: it is
    /// part of the node id, and other strategies reuse outputs by id.
    pub fn compute<F>(mut self, code: impl Into<String>, f: F) -> Self
    where
        F: Fn(&CacheView<'_>) -> Option<Row> + Send + Sync + 'static,
    {
        self.code = Some(code.into());
        self.compute = Some(Arc::new(f));
        self
    }
}

/// A node whose inputs are the queues matching its tags and interval, resolved through
/// the gateway when the strategy registers.
#[must_use]
pub struct TagQueryNode {
    pub(crate) inner: Node,
    pub(crate) query_tags: Vec<String>,
    pub(crate) match_mode: TagMatch,
}

impl TagQueryNode {
    /// A tag query named `name`; give it tags, an interval, a period and a compute.
    pub fn new(name: impl Into<String>) -> Self {
        TagQueryNode {
            inner: Node::new(name),
            query_tags: vec![],
            match_mode: TagMatch::Any,
        }
    }
    /// The tags an upstream queue must carry.
    pub fn query_tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.query_tags = collect_strings(tags);
        self
    }
    /// Whether any or all of the query tags must match.
    pub fn match_mode(mut self, mode: TagMatch) -> Self {
        self.match_mode = mode;
        self
    }
    /// The interval of the queues to select, and of this node's output.
    pub fn interval(mut self, interval: impl IntoInterval) -> Self {
        self.inner = self.inner.interval(interval);
        self
    }
    /// How many recent values of each matched queue the cache keeps.
    pub fn period(mut self, period: u64) -> Self {
        self.inner = self.inner.period(period);
        self
    }
    /// Names of the values the compute function emits, in order.
    pub fn fields<I: IntoIterator<Item = S>, S: Into<String>>(mut self, fields: I) -> Self {
        self.inner = self.inner.fields(fields);
        self
    }
    /// The compute function and its code identity (see [`Node::compute`]).
    pub fn compute<F>(mut self, code: impl Into<String>, f: F) -> Self
    where
        F: Fn(&CacheView<'_>) -> Option<Row> + Send + Sync + 'static,
    {
        self.inner = self.inner.compute(code, f);
        self
    }
}

/// A checked node inside a DAG.
#[derive(Clone)]
pub struct NodeSpec {
    /// The node's id.
    pub id: NodeId,
    /// Its kind.
    pub node_type: NodeType,
    /// Its name, unique within the strategy.
    pub name: String,
    /// Its interval.
    pub interval: Interval,
    /// Its period (cache window length).
    pub period: usize,
    /// Sorted, de-duplicated tags (for a tag query: the query tags).
    pub tags: Vec<String>,
    /// Input ids, in declaration order.
    pub inputs: Vec<NodeId>,
    /// Input positions in the DAG, parallel to `inputs`.
    pub input_indices: Vec<usize>,
    /// Payload field names (for a stream: read from the source; otherwise: emitted).
    pub fields: Vec<String>,
    /// Hash of the code identity.
    pub code_hash: String,
    /// Hash of the canonical config JSON.
    pub config_hash: String,
    /// Hash of the field list.
    pub schema_hash: String,
    /// The config as given.
    pub config: serde_json::Value,
    /// For a tag query: how tags must match.
    pub tag_match: Option<TagMatch>,
    /// The compute function (none for a stream).
    pub compute: Option<ComputeFn>,
}

impl fmt::Debug for NodeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeSpec")
            .field("id", &self.id)
            .field("node_type", &self.node_type)
            .field("name", &self.name)
            .field("interval", &self.interval)
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of `bytes` as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The hashed parts of a node, in the fixed order of the canonical description.
#[derive(Serialize)]
pub(crate) struct IdParts<'a> {
    pub node_type: NodeType,
    pub name: &'a str,
    pub code_hash: &'a str,
    pub config_hash: &'a str,
    pub schema_hash: &'a str,
    pub interval: Interval,
    pub period: usize,
    pub tags: &'a [String],
    pub inputs: &'a [NodeId],
}

impl IdParts<'_> {
    /// The node id these parts give.
    pub fn node_id(&self) -> NodeId {
        let canonical = serde_json::to_vec(self).expect("id parts serialize to JSON");
        NodeId::from_hex(sha256_hex(&canonical))
    }
}

/// Hashes of the code identity, config and schema, as recorded in the DAG JSON.
pub(crate) fn part_hashes(
    code: &str,
    config: &serde_json::Value,
    fields: &[String],
) -> [String; 3] {
    let config_text = serde_json::to_vec(config).expect("JSON values serialize");
    let schema_text = serde_json::to_vec(fields).expect("strings serialize");
    [
        sha256_hex(code.as_bytes()),
        sha256_hex(&config_text),
        sha256_hex(&schema_text),
    ]
}

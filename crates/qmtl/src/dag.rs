//! Strategies and their DAGs: the builder that checks each node as it is declared, the
//! finished [`Dag`], and its JSON form (the document a gateway receives).
//!
//! Inputs must be declared before the nodes that read them, so declaration order is a
//! topological order and a cycle cannot be built.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::interval::{Interval, IntervalError};
use crate::node::{
    part_hashes, IdParts, Node, NodeId, NodeRef, NodeSpec, NodeType, StreamInput, TagMatch,
    TagQueryNode,
};
use crate::row::MAX_FIELDS;

/// A trading strategy: declares its nodes and names the target node.
pub trait Strategy: Send + Sync {
    /// Declares the nodes into `dag` and returns the target (the node whose output is the
    /// strategy's result).
    ///
    /// # Errors
    /// The first [`DagError`] met while declaring nodes.
    fn setup(&self, dag: &mut DagBuilder) -> Result<NodeRef, DagError>;
}

/// Why a node could not be added to a DAG.
#[derive(Debug, thiserror::Error)]
pub enum DagError {
    /// The node's interval is not valid.
    #[error("node '{node}': {source}")]
    Interval {
        /// The node's name.
        node: String,
        /// The parse error.
        #[source]
        source: IntervalError,
    },
    /// A stream or tag query declared without an interval.
    #[error("node '{node}' has no interval; set one such as .interval(\"1h\")")]
    NoInterval {
        /// The node's name.
        node: String,
    },
    /// Period zero.
    #[error("node '{node}' has period 0; the period must be a positive number of values")]
    ZeroPeriod {
        /// The node's name.
        node: String,
    },
    /// The period is larger than a cache may hold.
    #[error("node '{node}' has period {period}; the largest allowed is {max}")]
    PeriodTooLarge {
        /// The node's name.
        node: String,
        /// The requested period.
        period: u64,
        /// The limit.
        max: u64,
    },
    /// Two nodes with the same name.
    #[error("node name '{node}' is used twice; names must be unique within a strategy")]
    DuplicateName {
        /// The repeated name.
        node: String,
    },
    /// Empty name.
    #[error("a node has an empty name; give every node a name")]
    EmptyName,
    /// No payload fields, or too many.
    #[error("node '{node}' declares {count} fields; declare between 1 and {MAX_FIELDS}")]
    FieldCount {
        /// The node's name.
        node: String,
        /// How many were declared.
        count: usize,
    },
    /// The same field twice.
    #[error("node '{node}' declares field '{field}' twice")]
    DuplicateField {
        /// The node's name.
        node: String,
        /// The repeated field.
        field: String,
    },
    /// A processing node without inputs.
    #[error("node '{node}' has no inputs; add one with .input(&upstream)")]
    NoInputs {
        /// The node's name.
        node: String,
    },
    /// A processing node without a compute function.
    #[error("node '{node}' has no compute function; add one with .compute(\"name@1\", f)")]
    NoCompute {
        /// The node's name.
        node: String,
    },
    /// An input handle from another DAG.
    #[error("node '{node}' has an input that was not added to this DAG")]
    ForeignInput {
        /// The node's name.
        node: String,
    },
}

/// Collects nodes for a strategy; see [`Strategy::setup`].
#[derive(Default)]
pub struct DagBuilder {
    nodes: Vec<NodeSpec>,
    names: HashSet<String>,
}

/// The largest period a cache accepts.
pub const MAX_PERIOD: u64 = 10_000_000;

struct Common<'a> {
    node_type: NodeType,
    name: String,
    interval: Option<Result<Interval, IntervalError>>,
    period: u64,
    tags: Vec<String>,
    fields: Vec<String>,
    inputs: &'a [NodeRef],
    config: serde_json::Value,
    code: String,
}

impl DagBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stream input.
    ///
    /// # Errors
    /// [`DagError`] for a missing or invalid interval, period 0, a duplicate name or a
    /// bad field list.
    pub fn stream_input(&mut self, s: StreamInput) -> Result<NodeRef, DagError> {
        self.add(
            Common {
                node_type: NodeType::StreamInput,
                name: s.name,
                interval: s.interval,
                period: s.period,
                tags: s.tags,
                fields: s.fields,
                inputs: &[],
                config: serde_json::Value::Object(Default::default()),
                code: "StreamInput".to_owned(),
            },
            None,
            None,
        )
    }

    /// Adds a processing node.
    ///
    /// # Errors
    /// [`DagError`] for missing inputs or compute, an invalid interval, period 0, a
    /// duplicate name, a bad field list or an input from another DAG.
    pub fn node(&mut self, n: Node) -> Result<NodeRef, DagError> {
        if n.inputs.is_empty() {
            return Err(DagError::NoInputs { node: n.name });
        }
        let compute = n.compute.ok_or_else(|| DagError::NoCompute {
            node: n.name.clone(),
        })?;
        let interval = n
            .interval
            .or_else(|| n.inputs.first().map(|i| Ok(i.interval)));
        self.add(
            Common {
                node_type: NodeType::Node,
                name: n.name,
                interval,
                period: n.period,
                tags: n.tags,
                fields: n.fields,
                inputs: &n.inputs,
                config: n.config,
                code: n.code.unwrap_or_default(),
            },
            Some(compute),
            None,
        )
    }

    /// Adds a tag query node; its inputs are resolved when the strategy registers with a
    /// gateway, and until then it has none (and is never ready).
    ///
    /// # Errors
    /// As for [`DagBuilder::node`], except that inputs are not required.
    pub fn tag_query(&mut self, q: TagQueryNode) -> Result<NodeRef, DagError> {
        let n = q.inner;
        let compute = n.compute.ok_or_else(|| DagError::NoCompute {
            node: n.name.clone(),
        })?;
        let mut config = serde_json::Map::new();
        config.insert(
            "match_mode".into(),
            serde_json::to_value(q.match_mode).expect("enum"),
        );
        config.insert("user".into(), n.config);
        self.add(
            Common {
                node_type: NodeType::TagQueryNode,
                name: n.name,
                interval: n.interval,
                period: n.period,
                tags: q.query_tags,
                fields: n.fields,
                inputs: &[],
                config: serde_json::Value::Object(config),
                code: n.code.unwrap_or_default(),
            },
            Some(compute),
            Some(q.match_mode),
        )
    }

    fn add(
        &mut self,
        c: Common<'_>,
        compute: Option<crate::node::ComputeFn>,
        tag_match: Option<TagMatch>,
    ) -> Result<NodeRef, DagError> {
        let node = c.name.clone();

        // Check the declared values.
        if node.is_empty() {
            return Err(DagError::EmptyName);
        }
        if self.names.contains(&node) {
            return Err(DagError::DuplicateName { node });
        }
        let interval = match c.interval {
            Some(Ok(i)) => i,
            Some(Err(source)) => return Err(DagError::Interval { node, source }),
            None => return Err(DagError::NoInterval { node }),
        };
        if c.period == 0 {
            return Err(DagError::ZeroPeriod { node });
        }
        if c.period > MAX_PERIOD {
            return Err(DagError::PeriodTooLarge {
                node,
                period: c.period,
                max: MAX_PERIOD,
            });
        }
        if c.fields.is_empty() || c.fields.len() > MAX_FIELDS {
            return Err(DagError::FieldCount {
                node,
                count: c.fields.len(),
            });
        }
        let mut seen = HashSet::new();
        for f in &c.fields {
            if !seen.insert(f.to_ascii_lowercase()) {
                return Err(DagError::DuplicateField {
                    node,
                    field: f.clone(),
                });
            }
        }
        for input in c.inputs {
            let known = self
                .nodes
                .get(input.index)
                .is_some_and(|n| n.id == input.id);
            if !known {
                return Err(DagError::ForeignInput { node });
            }
        }

        // Derive the identity.
        let mut tags = c.tags;
        tags.sort();
        tags.dedup();
        let inputs: Vec<NodeId> = c.inputs.iter().map(|i| i.id.clone()).collect();
        let [code_hash, config_hash, schema_hash] = part_hashes(&c.code, &c.config, &c.fields);
        let id = IdParts {
            node_type: c.node_type,
            name: &node,
            code_hash: &code_hash,
            config_hash: &config_hash,
            schema_hash: &schema_hash,
            interval,
            period: c.period as usize,
            tags: &tags,
            inputs: &inputs,
        }
        .node_id();

        let index = self.nodes.len();
        self.names.insert(node.clone());
        self.nodes.push(NodeSpec {
            id: id.clone(),
            node_type: c.node_type,
            name: node,
            interval,
            period: c.period as usize,
            tags,
            inputs,
            input_indices: c.inputs.iter().map(|i| i.index).collect(),
            fields: c.fields,
            code_hash,
            config_hash,
            schema_hash,
            config: c.config,
            tag_match,
            compute,
        });
        Ok(NodeRef {
            index,
            id,
            interval,
        })
    }

    /// Finishes the DAG with `target` as its target node.
    pub fn finish(self, target: &NodeRef) -> Dag {
        Dag {
            nodes: self.nodes,
            target: target.index,
        }
    }
}

/// A checked strategy DAG, nodes in topological (declaration) order.
#[derive(Clone)]
pub struct Dag {
    nodes: Vec<NodeSpec>,
    target: usize,
}

/// One node as written in the DAG JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeJson {
    /// Hex node id.
    pub node_id: String,
    /// `StreamInput`, `Node` or `TagQueryNode`.
    pub node_type: NodeType,
    /// Node name.
    pub name: String,
    /// Interval in seconds.
    pub interval: i64,
    /// Period.
    pub period: i64,
    /// Sorted tags (for a tag query: the query tags).
    pub tags: Vec<String>,
    /// Input node ids in order.
    pub inputs: Vec<String>,
    /// Hash of the code identity.
    pub code_hash: String,
    /// Hash of the config.
    pub config_hash: String,
    /// Hash of the payload schema.
    pub schema_hash: String,
    /// For a tag query: whether any or all of `tags` must match (absent means any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_mode: Option<TagMatch>,
}

impl NodeJson {
    /// The id this node's description gives, computed exactly as [`DagBuilder`] does
    /// (tags sorted and de-duplicated first), so a gateway can check a received
    /// `node_id` against the rest of the node.
    ///
    /// `None` when the interval or the period is not positive: such a node has no id.
    pub fn expected_id(&self) -> Option<NodeId> {
        let interval = Interval::try_from(self.interval).ok()?;
        let period = usize::try_from(self.period).ok().filter(|p| *p > 0)?;
        let mut tags = self.tags.clone();
        tags.sort();
        tags.dedup();
        let inputs: Vec<NodeId> = self
            .inputs
            .iter()
            .map(|i| NodeId::from_hex(i.as_str()))
            .collect();
        let id = IdParts {
            node_type: self.node_type,
            name: &self.name,
            code_hash: &self.code_hash,
            config_hash: &self.config_hash,
            schema_hash: &self.schema_hash,
            interval,
            period,
            tags: &tags,
            inputs: &inputs,
        }
        .node_id();
        Some(id)
    }
}

/// The DAG JSON document: `{"nodes": [...], "target": node_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagJson {
    /// Nodes in topological order.
    pub nodes: Vec<NodeJson>,
    /// The target node's id.
    pub target: String,
}

impl Dag {
    /// Runs `strategy.setup` and finishes the DAG.
    ///
    /// # Errors
    /// The strategy's first [`DagError`].
    pub fn build(strategy: &dyn Strategy) -> Result<Dag, DagError> {
        let mut b = DagBuilder::new();
        let target = strategy.setup(&mut b)?;
        Ok(b.finish(&target))
    }

    /// Nodes in topological order.
    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    /// The target node.
    pub fn target(&self) -> &NodeSpec {
        &self.nodes[self.target]
    }

    /// The node named `name`.
    pub fn by_name(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The stream inputs, in declaration order.
    pub fn streams(&self) -> impl Iterator<Item = &NodeSpec> {
        self.nodes
            .iter()
            .filter(|n| n.node_type == NodeType::StreamInput)
    }

    /// The JSON document sent to a gateway.
    pub fn to_json(&self) -> DagJson {
        let nodes = self
            .nodes
            .iter()
            .map(|n| NodeJson {
                node_id: n.id.to_string(),
                node_type: n.node_type,
                name: n.name.clone(),
                interval: n.interval.secs_i64(),
                period: n.period as i64,
                tags: n.tags.clone(),
                inputs: n.inputs.iter().map(ToString::to_string).collect(),
                code_hash: n.code_hash.clone(),
                config_hash: n.config_hash.clone(),
                schema_hash: n.schema_hash.clone(),
                match_mode: n.tag_match,
            })
            .collect();
        DagJson {
            nodes,
            target: self.target().id.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Row;

    fn stream(name: &str) -> StreamInput {
        StreamInput::new(name)
            .interval("1h")
            .period(20)
            .fields(["close"])
    }

    #[test]
    fn golden_node_id_of_the_documented_example() {
        // The example in the crate documentation: a one-hour close stream with period 20.
        let mut b = DagBuilder::new();
        let price = b
            .stream_input(stream("price").tags(["fx", "eurusd"]))
            .unwrap();
        assert_eq!(
            price.id().as_str(),
            "324249f2e8378306108a4b0dfc559cbdc5c7edcb3d610f44fe41f46f2939b897"
        );
    }

    #[test]
    fn every_described_part_changes_the_id() {
        let id = |s: StreamInput| DagBuilder::new().stream_input(s).unwrap().id().clone();
        let base = id(stream("price"));
        let variants = [
            id(stream("other")),
            id(stream("price").interval("1m")),
            id(stream("price").period(21)),
            id(stream("price").tags(["fx"])),
            id(stream("price").fields(["open"])),
        ];
        let mut all: HashSet<NodeId> = variants.iter().cloned().collect();
        assert_eq!(all.len(), variants.len());
        assert!(all.insert(base.clone()));
        assert_eq!(id(stream("price")), base, "same definition, same id");
    }

    #[test]
    fn processing_node_ids_depend_on_code_config_and_inputs() {
        let mut b = DagBuilder::new();
        let a = b.stream_input(stream("a")).unwrap();
        let c = b.stream_input(stream("c")).unwrap();
        let make = |b: &mut DagBuilder, name: &str, input: &NodeRef, code: &str, w: i64| {
            b.node(
                Node::new(name)
                    .input(input)
                    .fields(["v"])
                    .config(serde_json::json!({ "window": w }))
                    .compute(code, |_| Some(Row::one(0.0))),
            )
            .unwrap()
            .id()
            .clone()
        };
        let ids = [
            make(&mut b, "n1", &a, "f@1", 3),
            make(&mut b, "n2", &a, "f@1", 3),
            make(&mut b, "n3", &c, "f@1", 3),
            make(&mut b, "n4", &a, "f@2", 3),
            make(&mut b, "n5", &a, "f@1", 4),
        ];
        let unique: HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn rejects_bad_declarations_naming_the_node() {
        let mut b = DagBuilder::new();
        let errs = [
            b.stream_input(StreamInput::new("s").period(1).fields(["x"]))
                .unwrap_err(),
            b.stream_input(stream("s").interval("0s")).unwrap_err(),
            b.stream_input(stream("s").interval("-5")).unwrap_err(),
            b.stream_input(stream("s").period(0)).unwrap_err(),
            b.stream_input(stream("s").fields(Vec::<String>::new()))
                .unwrap_err(),
            b.stream_input(stream("s").fields(["a", "A"])).unwrap_err(),
        ];
        for e in &errs {
            assert!(e.to_string().contains("'s'"), "{e}");
        }
        b.stream_input(stream("s")).unwrap();
        assert!(matches!(
            b.stream_input(stream("s")),
            Err(DagError::DuplicateName { .. })
        ));
        let err = b
            .node(Node::new("n").fields(["v"]).compute("f", |_| None))
            .unwrap_err();
        assert!(matches!(err, DagError::NoInputs { .. }));
    }

    #[test]
    fn an_input_from_another_dag_is_rejected() {
        let mut other = DagBuilder::new();
        let foreign = other.stream_input(stream("x")).unwrap();
        let mut b = DagBuilder::new();
        b.stream_input(stream("y")).unwrap();
        let err = b
            .node(
                Node::new("n")
                    .input(&foreign)
                    .fields(["v"])
                    .compute("f", |_| None),
            )
            .unwrap_err();
        assert!(matches!(err, DagError::ForeignInput { .. }));
    }

    #[test]
    fn expected_id_recomputes_every_node_id_of_the_json() {
        let mut b = DagBuilder::new();
        let s = b
            .stream_input(stream("price").tags(["fx", "eurusd"]))
            .unwrap();
        b.node(
            Node::new("out")
                .input(&s)
                .fields(["v"])
                .config(serde_json::json!({ "window": 3 }))
                .compute("f@1", |_| None),
        )
        .unwrap();
        let q = b
            .tag_query(
                TagQueryNode::new("q")
                    .query_tags(["fx"])
                    .match_mode(TagMatch::All)
                    .interval("1h")
                    .fields(["v"])
                    .compute("g@1", |_| None),
            )
            .unwrap();
        let json = b.finish(&q).to_json();
        for n in &json.nodes {
            assert_eq!(n.expected_id().unwrap().as_str(), n.node_id, "{}", n.name);
        }
        assert_eq!(json.nodes[0].match_mode, None);
        assert_eq!(json.nodes[2].match_mode, Some(TagMatch::All));

        // Tag order does not matter; any described part does; a bad period has no id.
        let mut n = json.nodes[0].clone();
        n.tags.reverse();
        assert_eq!(n.expected_id().unwrap().as_str(), n.node_id);
        n.name.push('x');
        assert_ne!(n.expected_id().unwrap().as_str(), n.node_id);
        n.period = 0;
        assert_eq!(n.expected_id(), None);
    }

    #[test]
    fn match_mode_is_absent_from_json_unless_a_tag_query_has_one() {
        let mut b = DagBuilder::new();
        let s = b.stream_input(stream("price")).unwrap();
        let text = serde_json::to_string(&b.finish(&s).to_json()).unwrap();
        assert!(!text.contains("match_mode"), "{text}");
        let back: DagJson = serde_json::from_str(&text).unwrap();
        assert_eq!(back.nodes[0].match_mode, None);
    }

    #[test]
    fn json_has_the_gateway_keys() {
        let mut b = DagBuilder::new();
        let s = b.stream_input(stream("price")).unwrap();
        let n = b
            .node(
                Node::new("out")
                    .input(&s)
                    .fields(["v"])
                    .compute("f@1", |_| None),
            )
            .unwrap();
        let dag = b.finish(&n);
        let json = serde_json::to_value(dag.to_json()).unwrap();
        let node = &json["nodes"][1];
        for key in [
            "node_id",
            "node_type",
            "name",
            "interval",
            "period",
            "tags",
            "inputs",
            "code_hash",
            "config_hash",
            "schema_hash",
        ] {
            assert!(node.get(key).is_some(), "missing {key}");
        }
        assert_eq!(node["inputs"][0], json["nodes"][0]["node_id"]);
        assert_eq!(json["target"], node["node_id"]);
        assert_eq!(node["node_type"], "Node");
        assert_eq!(json["nodes"][0]["interval"], 3600);
    }
}

//! Decoding and checking a `POST /strategies` body, without I/O.
//!
//! This module turns the raw request bytes into a [`Registration`]: the DAG JSON (sent as
//! base64, as a JSON string, or as a JSON object), its canonical hash, the `meta` object
//! and the run type. Every way a body can be wrong is a [`PayloadError`] that names the
//! offending field (for example `dag_json.nodes[3].interval`), so the gateway can answer
//! 422 with a message the user can act on. It does not know about HTTP status codes or
//! the store.
//!
//! Checks, in order: the body is UTF-8 JSON (nesting is bounded by `serde_json`'s
//! recursion limit of 128, so deep nesting is an error, not a stack overflow); the
//! fields have the right shapes; the DAG has between 1 and [`MAX_NODES`] nodes; every
//! interval and period is positive (period at most [`qmtl::dag::MAX_PERIOD`]); every tag
//! can be named in a `/queues/by_tag` query (not empty, no comma, no blank at either
//! end); node ids and names are unique; the inputs that name nodes of the DAG form no
//! cycle; every `node_id` equals the id its description gives
//! ([`NodeJson::expected_id`]), checked for each node whose inputs all name nodes of
//! the DAG; every input names a node of the DAG; the target, when present, names a
//! node. Ids are checked before inputs so that a forged id is blamed on the node that
//! carries it, not on the nodes that read it by its true id.
//!
//! The DAG hash (what makes a second registration of the same DAG a conflict) covers
//! only what the gateway understands of the DAG, in one canonical form: the known fields
//! of each node (tags sorted and de-duplicated, the match mode of a tag query with its
//! default filled in, no match mode on other nodes), nodes ordered by id, and the
//! target. Unknown fields, key order, whitespace, node order and the encoding the DAG
//! was sent in do not change it.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use base64::Engine as _;
use qmtl::dag::{DagJson, NodeJson, MAX_PERIOD};
use qmtl::node::sha256_hex;
use qmtl::NodeType;
use serde::Deserialize;
use serde_json::Value;

use crate::echo::echo;

/// The default largest accepted request body: 32 MiB, room for a DAG of [`MAX_NODES`]
/// nodes sent as base64 (a node takes about 420 bytes of JSON, so 50,000 short-named
/// nodes are about 21 MB of JSON and 28 MB as base64).
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The most nodes one DAG may have. Under the default body limit
/// ([`DEFAULT_MAX_BODY_BYTES`]) a DAG this large fits when its names and tags are short;
/// a gateway that takes such DAGs with long names needs a larger limit.
pub const MAX_NODES: usize = 50_000;

pub use qmtl::gateway_client::RunType;

/// A checked registration request.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The DAG, parsed and checked.
    pub dag: DagJson,
    /// The DAG JSON text as received (decoded from base64 when it was sent so), stored
    /// verbatim.
    pub dag_text: String,
    /// SHA-256 of the canonical JSON of the DAG's known content (see the module
    /// documentation): the same DAG always has the same hash.
    pub dag_hash: String,
    /// The `meta` object, if any.
    pub meta: Option<serde_json::Map<String, Value>>,
    /// The run type.
    pub run_type: RunType,
}

/// Why a registration body was refused. [`PayloadError::field`] names the field.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The body is not UTF-8.
    #[error("the request body is not UTF-8 text: {source}")]
    NotUtf8 {
        /// The decoding error.
        #[source]
        source: std::str::Utf8Error,
    },
    /// The body is not JSON (or nests too deeply).
    #[error("the request body is not valid JSON: {source}")]
    BodyJson {
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The body is JSON but not an object.
    #[error("the request body must be a JSON object with dag_json, meta and run_type")]
    BodyNotObject,
    /// A required field is absent.
    #[error("field {field} is required")]
    Missing {
        /// The field path.
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("field {field} must be {expected}")]
    WrongType {
        /// The field path.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// `dag_json` is a string that is neither JSON nor base64.
    #[error("field dag_json is not valid base64 (nor a JSON object): {source}")]
    Base64 {
        /// The decoding error.
        #[source]
        source: base64::DecodeError,
    },
    /// `dag_json` decodes from base64 to bytes that are not UTF-8.
    #[error("field dag_json decodes from base64 to bytes that are not UTF-8: {source}")]
    DagNotUtf8 {
        /// The decoding error.
        #[source]
        source: std::string::FromUtf8Error,
    },
    /// The DAG text is not JSON (or nests too deeply).
    #[error("field dag_json is not valid JSON: {source}")]
    DagJson {
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The DAG has no nodes.
    #[error("field dag_json.nodes is empty; a DAG needs at least one node")]
    NoNodes,
    /// The DAG has more nodes than allowed.
    #[error("field dag_json.nodes has {count} nodes; at most {max} are accepted")]
    TooManyNodes {
        /// How many were sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A node lacks a key or has one of the wrong type.
    #[error("field dag_json.nodes[{index}] is not a valid node: {source}")]
    NodeShape {
        /// The node's position.
        index: usize,
        /// What serde found.
        #[source]
        source: serde_json::Error,
    },
    /// An interval or period that is zero or negative.
    #[error(
        "field dag_json.nodes[{index}].{field} of node '{}' is {value}; it must be a \
         positive number",
        echo(name)
    )]
    NotPositive {
        /// The node's position.
        index: usize,
        /// The node's name.
        name: String,
        /// `interval` or `period`.
        field: &'static str,
        /// The value sent.
        value: i64,
    },
    /// A period larger than a cache may hold.
    #[error(
        "field dag_json.nodes[{index}].period of node '{}' is {value}; at most {max}",
        echo(name)
    )]
    PeriodTooLarge {
        /// The node's position.
        index: usize,
        /// The node's name.
        name: String,
        /// The value sent.
        value: i64,
        /// The limit.
        max: u64,
    },
    /// A name or tag containing a NUL character, which a PostgreSQL store cannot keep.
    #[error(
        "field dag_json.nodes[{index}].{field} contains a NUL character (\\u0000), which \
         cannot be stored"
    )]
    Nul {
        /// The node's position.
        index: usize,
        /// `name` or `tags`.
        field: &'static str,
    },
    /// A tag that a `/queues/by_tag` query could not name: empty, with a comma (the
    /// query's separator) or with a blank at either end (the query trims them).
    #[error(
        "field dag_json.nodes[{index}].tags[{tag_index}] is '{}'; a tag must be \
         non-empty, contain no comma and not start or end with a blank, so that \
         /queues/by_tag?tags=... can name it",
        echo(tag)
    )]
    UnqueryableTag {
        /// The node's position.
        index: usize,
        /// The tag's position.
        tag_index: usize,
        /// The tag sent.
        tag: String,
    },
    /// Two nodes with the same id.
    #[error(
        "field dag_json.nodes[{index}].node_id {} is used by an earlier node",
        echo(node_id)
    )]
    DuplicateId {
        /// The later node's position.
        index: usize,
        /// The repeated id.
        node_id: String,
    },
    /// Two nodes with the same name.
    #[error(
        "field dag_json.nodes[{index}].name '{}' is used by an earlier node",
        echo(name)
    )]
    DuplicateName {
        /// The later node's position.
        index: usize,
        /// The repeated name.
        name: String,
    },
    /// An input that names no node of the DAG.
    #[error(
        "field dag_json.nodes[{index}].inputs[{input_index}] of node '{}' names \
         {}, which is not a node of this DAG",
        echo(name),
        echo(input)
    )]
    UnknownInput {
        /// The node's position.
        index: usize,
        /// The node's name.
        name: String,
        /// The input's position.
        input_index: usize,
        /// The unknown id.
        input: String,
    },
    /// The inputs form a cycle.
    #[error(
        "field dag_json.nodes[{index}].inputs of node '{}' form a cycle",
        echo(name)
    )]
    Cycle {
        /// The position of a node on the cycle.
        index: usize,
        /// Its name.
        name: String,
    },
    /// A node id that its description does not give.
    #[error(
        "field dag_json.nodes[{index}].node_id of node '{}' is {}, but its \
         description gives {expected}",
        echo(name),
        echo(given)
    )]
    IdMismatch {
        /// The node's position.
        index: usize,
        /// The node's name.
        name: String,
        /// The id sent.
        given: String,
        /// The id recomputed.
        expected: String,
    },
    /// A target that names no node.
    #[error("field dag_json.target {} is not a node of this DAG", echo(target))]
    UnknownTarget {
        /// The id sent.
        target: String,
    },
    /// An unknown run type.
    #[error(
        "field run_type is '{}'; expected backtest, dry-run or live",
        echo(value)
    )]
    RunType {
        /// The value sent.
        value: String,
    },
}

impl PayloadError {
    /// The path of the offending field (`body` when the body as a whole is wrong).
    pub fn field(&self) -> String {
        match self {
            PayloadError::NotUtf8 { .. }
            | PayloadError::BodyJson { .. }
            | PayloadError::BodyNotObject => "body".to_owned(),
            PayloadError::Missing { field } | PayloadError::WrongType { field, .. } => {
                (*field).to_owned()
            }
            PayloadError::Base64 { .. }
            | PayloadError::DagNotUtf8 { .. }
            | PayloadError::DagJson { .. } => "dag_json".to_owned(),
            PayloadError::NoNodes | PayloadError::TooManyNodes { .. } => {
                "dag_json.nodes".to_owned()
            }
            PayloadError::NodeShape { index, .. } => format!("dag_json.nodes[{index}]"),
            PayloadError::NotPositive { index, field, .. } => {
                format!("dag_json.nodes[{index}].{field}")
            }
            PayloadError::PeriodTooLarge { index, .. } => {
                format!("dag_json.nodes[{index}].period")
            }
            PayloadError::DuplicateId { index, .. } | PayloadError::IdMismatch { index, .. } => {
                format!("dag_json.nodes[{index}].node_id")
            }
            PayloadError::DuplicateName { index, .. } => format!("dag_json.nodes[{index}].name"),
            PayloadError::Nul { index, field } => format!("dag_json.nodes[{index}].{field}"),
            PayloadError::UnqueryableTag {
                index, tag_index, ..
            } => format!("dag_json.nodes[{index}].tags[{tag_index}]"),
            PayloadError::UnknownInput {
                index, input_index, ..
            } => format!("dag_json.nodes[{index}].inputs[{input_index}]"),
            PayloadError::Cycle { index, .. } => format!("dag_json.nodes[{index}].inputs"),
            PayloadError::UnknownTarget { .. } => "dag_json.target".to_owned(),
            PayloadError::RunType { .. } => "run_type".to_owned(),
        }
    }

    /// Whether the body is not text at all (as opposed to text with a wrong field).
    pub fn is_encoding(&self) -> bool {
        matches!(self, PayloadError::NotUtf8 { .. })
    }
}

/// Decodes and checks a registration body.
///
/// # Errors
/// The first [`PayloadError`] found, in the order listed in the module documentation.
pub fn parse_registration(body: &[u8]) -> Result<Registration, PayloadError> {
    // The envelope.
    let text = std::str::from_utf8(body).map_err(|source| PayloadError::NotUtf8 { source })?;
    let envelope: Value =
        serde_json::from_str(text).map_err(|source| PayloadError::BodyJson { source })?;
    let Value::Object(mut envelope) = envelope else {
        return Err(PayloadError::BodyNotObject);
    };
    let run_type = match envelope.remove("run_type") {
        None | Some(Value::Null) => return Err(PayloadError::Missing { field: "run_type" }),
        Some(Value::String(s)) => RunType::parse(&s).ok_or(PayloadError::RunType { value: s })?,
        Some(_) => {
            return Err(PayloadError::WrongType {
                field: "run_type",
                expected: "a string: backtest, dry-run or live",
            })
        }
    };
    let meta = match envelope.remove("meta") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => {
            return Err(PayloadError::WrongType {
                field: "meta",
                expected: "an object or null",
            })
        }
    };

    // The DAG text, then the DAG.
    let dag_text = match envelope.remove("dag_json") {
        None | Some(Value::Null) => return Err(PayloadError::Missing { field: "dag_json" }),
        Some(Value::String(s)) => decode_dag_string(s)?,
        Some(v @ Value::Object(_)) => v.to_string(),
        Some(_) => {
            return Err(PayloadError::WrongType {
                field: "dag_json",
                expected: "a base64 string, a JSON string or a JSON object",
            })
        }
    };
    let dag_value: Value =
        serde_json::from_str(&dag_text).map_err(|source| PayloadError::DagJson { source })?;
    let dag = check_dag(&dag_value)?;
    let dag_hash = dag_hash(&dag);

    Ok(Registration {
        dag,
        dag_text,
        dag_hash,
        meta,
        run_type,
    })
}

/// A `dag_json` string is raw JSON when it starts with `{`, base64 otherwise (standard
/// alphabet, padding optional, whitespace such as line breaks ignored).
fn decode_dag_string(s: String) -> Result<String, PayloadError> {
    if s.trim_start().starts_with('{') {
        return Ok(s);
    }
    let compact: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine
        .decode(compact)
        .map_err(|source| PayloadError::Base64 { source })?;
    String::from_utf8(bytes).map_err(|source| PayloadError::DagNotUtf8 { source })
}

/// Checks the DAG document; see the module documentation for the order of checks.
pub fn check_dag(dag: &Value) -> Result<DagJson, PayloadError> {
    // Shapes.
    let Value::Object(doc) = dag else {
        return Err(PayloadError::WrongType {
            field: "dag_json",
            expected: "a JSON object with nodes and target",
        });
    };
    let raw_nodes = match doc.get("nodes") {
        None | Some(Value::Null) => {
            return Err(PayloadError::Missing {
                field: "dag_json.nodes",
            })
        }
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(PayloadError::WrongType {
                field: "dag_json.nodes",
                expected: "an array of nodes",
            })
        }
    };
    if raw_nodes.is_empty() {
        return Err(PayloadError::NoNodes);
    }
    if raw_nodes.len() > MAX_NODES {
        return Err(PayloadError::TooManyNodes {
            count: raw_nodes.len(),
            max: MAX_NODES,
        });
    }
    let target = match doc.get("target") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => {
            return Err(PayloadError::WrongType {
                field: "dag_json.target",
                expected: "a node id string",
            })
        }
    };
    let nodes = raw_nodes
        .iter()
        .enumerate()
        .map(|(index, v)| {
            NodeJson::deserialize(v).map_err(|source| PayloadError::NodeShape { index, source })
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Values and uniqueness.
    let mut by_id: HashMap<&str, usize> = HashMap::with_capacity(nodes.len());
    let mut names: HashSet<&str> = HashSet::with_capacity(nodes.len());
    for (index, n) in nodes.iter().enumerate() {
        check_positive(index, n)?;
        if n.name.contains('\0') {
            return Err(PayloadError::Nul {
                index,
                field: "name",
            });
        }
        if n.tags.iter().any(|t| t.contains('\0')) {
            return Err(PayloadError::Nul {
                index,
                field: "tags",
            });
        }
        if let Some(tag_index) = n.tags.iter().position(|t| !is_queryable_tag(t)) {
            return Err(PayloadError::UnqueryableTag {
                index,
                tag_index,
                tag: n.tags[tag_index].clone(),
            });
        }
        if by_id.insert(n.node_id.as_str(), index).is_some() {
            return Err(PayloadError::DuplicateId {
                index,
                node_id: n.node_id.clone(),
            });
        }
        if !names.insert(n.name.as_str()) {
            return Err(PayloadError::DuplicateName {
                index,
                name: n.name.clone(),
            });
        }
    }

    // Resolve the inputs that name nodes of the DAG; unknown ones are reported last.
    let mut inputs_of: Vec<Vec<usize>> = Vec::with_capacity(nodes.len());
    let mut unknown: Vec<Option<usize>> = Vec::with_capacity(nodes.len());
    for n in &nodes {
        let mut inputs = Vec::with_capacity(n.inputs.len());
        let mut first_unknown = None;
        for (input_index, input) in n.inputs.iter().enumerate() {
            match by_id.get(input.as_str()) {
                Some(&at) => inputs.push(at),
                None => {
                    first_unknown.get_or_insert(input_index);
                }
            }
        }
        inputs_of.push(inputs);
        unknown.push(first_unknown);
    }

    // Cycles (one can only be built with forged ids, so it is reported as a cycle
    // rather than as the id mismatch it also is).
    if let Some(index) = node_on_cycle(&inputs_of) {
        return Err(PayloadError::Cycle {
            index,
            name: nodes[index].name.clone(),
        });
    }

    // Each node's own id, before the references to it: a node read by its true id
    // under a forged one is blamed for the forgery, not its readers. A node with an
    // unknown input is left to the next step, which names that input.
    for (index, n) in nodes.iter().enumerate() {
        if unknown[index].is_some() {
            continue;
        }
        let expected = n
            .expected_id()
            .expect("interval and period were checked positive");
        if expected.as_str() != n.node_id {
            return Err(PayloadError::IdMismatch {
                index,
                name: n.name.clone(),
                given: n.node_id.clone(),
                expected: expected.to_string(),
            });
        }
    }

    // Inputs that name no node of the DAG.
    for (index, n) in nodes.iter().enumerate() {
        if let Some(input_index) = unknown[index] {
            return Err(PayloadError::UnknownInput {
                index,
                name: n.name.clone(),
                input_index,
                input: n.inputs[input_index].clone(),
            });
        }
    }
    if let Some(t) = &target {
        if !by_id.contains_key(t.as_str()) {
            return Err(PayloadError::UnknownTarget { target: t.clone() });
        }
    }

    Ok(DagJson {
        target: target.unwrap_or_else(|| nodes[nodes.len() - 1].node_id.clone()),
        nodes,
    })
}

/// Whether `/queues/by_tag?tags=...` can name `tag`: the query splits on commas and
/// trims blanks, so a tag with a comma, a blank at either end, or no text at all could
/// be stored but never found.
pub fn is_queryable_tag(tag: &str) -> bool {
    !tag.is_empty() && !tag.contains(',') && tag.trim() == tag
}

/// SHA-256 of the canonical JSON of the DAG's known content, as described in the
/// module documentation.
pub fn dag_hash(dag: &DagJson) -> String {
    let mut nodes: Vec<NodeJson> = dag
        .nodes
        .iter()
        .map(|n| {
            let mut n = n.clone();
            n.tags.sort();
            n.tags.dedup();
            n.match_mode = if is_tag_query(&n) {
                Some(n.match_mode.unwrap_or_default())
            } else {
                None
            };
            n
        })
        .collect();
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let canonical = DagJson {
        nodes,
        target: dag.target.clone(),
    };
    let value = serde_json::to_value(&canonical).expect("a DAG serializes");
    sha256_hex(canonical_json(&value).as_bytes())
}

fn check_positive(index: usize, n: &NodeJson) -> Result<(), PayloadError> {
    for (field, value) in [("interval", n.interval), ("period", n.period)] {
        if value <= 0 {
            return Err(PayloadError::NotPositive {
                index,
                name: n.name.clone(),
                field,
                value,
            });
        }
    }
    if n.period as u64 > MAX_PERIOD {
        return Err(PayloadError::PeriodTooLarge {
            index,
            name: n.name.clone(),
            value: n.period,
            max: MAX_PERIOD,
        });
    }
    Ok(())
}

/// The position of a node on a cycle of the input graph, if there is one.
///
/// Kahn's algorithm removes every node not on or downstream of a cycle; from any node
/// left, following inputs that are also left must revisit a node, which is on a cycle.
/// Iterative, so a long chain cannot overflow the stack.
fn node_on_cycle(inputs_of: &[Vec<usize>]) -> Option<usize> {
    let n = inputs_of.len();
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut pending: Vec<usize> = vec![0; n];
    for (node, inputs) in inputs_of.iter().enumerate() {
        pending[node] = inputs.len();
        for &i in inputs {
            consumers[i].push(node);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| pending[i] == 0).collect();
    let mut done = vec![false; n];
    while let Some(node) = ready.pop() {
        done[node] = true;
        for &c in &consumers[node] {
            pending[c] -= 1;
            if pending[c] == 0 {
                ready.push(c);
            }
        }
    }
    let start = (0..n).find(|&i| !done[i])?;
    let mut seen = vec![false; n];
    let mut at = start;
    while !seen[at] {
        seen[at] = true;
        at = *inputs_of[at]
            .iter()
            .find(|&&i| !done[i])
            .expect("a node left by Kahn's algorithm has an input also left");
    }
    Some(at)
}

/// The canonical JSON text of `value`: object keys sorted by code point, no whitespace.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}", Value::String(k.clone()));
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => {
            let _ = write!(out, "{scalar}");
        }
    }
}

/// Whether the node is a tag query.
pub fn is_tag_query(n: &NodeJson) -> bool {
    n.node_type == NodeType::TagQueryNode
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = json!({"b": [1, {"z": null, "a": "x"}], "a": true});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":true,"b":[1,{"a":"x","z":null}]}"#
        );
        let reordered: Value =
            serde_json::from_str(r#"{ "a" : true, "b": [1, {"a":"x", "z":null}] }"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&reordered));
    }

    #[test]
    fn cycle_finder_names_a_node_on_the_cycle_not_one_downstream() {
        // 0 -> 1 -> 2 -> 1 (cycle 1,2), 3 reads 2 (downstream only).
        let inputs = vec![vec![], vec![0, 2], vec![1], vec![2]];
        let at = node_on_cycle(&inputs).unwrap();
        assert!(at == 1 || at == 2, "{at}");
        assert_eq!(node_on_cycle(&[vec![], vec![0], vec![0, 1]]), None);
        assert_eq!(node_on_cycle(&[vec![0]]), Some(0));
    }

    #[test]
    fn too_many_nodes_is_refused_before_each_node_is_read() {
        let dag = json!({ "nodes": vec![json!({}); MAX_NODES + 1] });
        let err = check_dag(&dag).unwrap_err();
        assert!(matches!(err, PayloadError::TooManyNodes { .. }), "{err}");
        assert_eq!(err.field(), "dag_json.nodes");
    }

    #[test]
    fn names_with_nul_are_refused() {
        let mut b = qmtl::DagBuilder::new();
        let s = b
            .stream_input(qmtl::StreamInput::new("a\0b").interval(60).fields(["x"]))
            .unwrap();
        let dag = serde_json::to_value(b.finish(&s).to_json()).unwrap();
        let err = check_dag(&dag).unwrap_err();
        assert_eq!(err.field(), "dag_json.nodes[0].name", "{err}");
    }

    #[test]
    fn values_sent_are_repeated_in_errors_only_up_to_80_characters() {
        let huge = "n".repeat(10_000);
        let errors = [
            PayloadError::RunType {
                value: huge.clone(),
            },
            PayloadError::DuplicateName {
                index: 1,
                name: huge.clone(),
            },
            PayloadError::UnknownInput {
                index: 1,
                name: huge.clone(),
                input_index: 0,
                input: huge.clone(),
            },
            PayloadError::UnknownTarget {
                target: huge.clone(),
            },
        ];
        for err in errors {
            let text = err.to_string();
            assert!(text.contains(&format!("{}…", &huge[..80])), "{text}");
            assert!(!text.contains(&huge[..81]), "{text}");
        }
    }

    #[test]
    fn run_types_round_trip() {
        for rt in [RunType::Backtest, RunType::DryRun, RunType::Live] {
            assert_eq!(RunType::parse(rt.as_str()), Some(rt));
        }
        assert_eq!(RunType::parse("dryrun"), None);
    }
}

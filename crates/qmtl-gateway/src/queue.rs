//! Queues: naming them and matching them by tag, without I/O.
//!
//! A queue is a node's output stream. In this version it is kept as the node's rows in
//! the history table, keyed by node id, so the queue (topic) name of a node is its hex
//! node id: a strategy that is told "node X is computed elsewhere, queue X" reads the
//! rows recorded under X. A message broker could later map ids to topics here, in one
//! place.
//!
//! A tag query selects queues whose interval equals the query's and whose tags match the
//! query tags: with [`TagMatch::Any`] at least one tag in common, with [`TagMatch::All`]
//! every query tag present. An empty query matches nothing in either mode.

use qmtl::TagMatch;

/// The queue (topic) name of the node with id `node_id`: the id itself.
pub fn queue_name(node_id: &str) -> String {
    node_id.to_owned()
}

/// Whether a queue tagged `tags` matches the `query` under `mode`.
pub fn tags_match(tags: &[String], query: &[String], mode: TagMatch) -> bool {
    if query.is_empty() {
        return false;
    }
    match mode {
        TagMatch::Any => query.iter().any(|q| tags.contains(q)),
        TagMatch::All => query.iter().all(|q| tags.contains(q)),
    }
}

/// Parses a `match` value: `any` or `all`.
pub fn parse_match(text: &str) -> Option<TagMatch> {
    match text {
        "any" => Some(TagMatch::Any),
        "all" => Some(TagMatch::All),
        _ => None,
    }
}

/// Splits a comma-separated tag list, trimming blanks and dropping empty entries.
pub fn split_tags(text: &str) -> Vec<String> {
    let mut tags: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn tag_matching_table() {
        let cases: &[(&[&str], &[&str], TagMatch, bool)] = &[
            (&["a", "b"], &["a"], TagMatch::Any, true),
            (&["a", "b"], &["a", "c"], TagMatch::Any, true),
            (&["a", "b"], &["a", "c"], TagMatch::All, false),
            (&["a", "b"], &["b", "a"], TagMatch::All, true),
            (&["a"], &["c"], TagMatch::Any, false),
            (&[], &["a"], TagMatch::Any, false),
            (&["a"], &[], TagMatch::Any, false),
            (&["a"], &[], TagMatch::All, false),
            (&["A"], &["a"], TagMatch::Any, false),
        ];
        for (tags, query, mode, want) in cases {
            assert_eq!(
                tags_match(&v(tags), &v(query), *mode),
                *want,
                "{tags:?} {query:?} {mode:?}"
            );
        }
    }

    #[test]
    fn split_tags_trims_sorts_and_drops_blanks() {
        assert_eq!(split_tags(" b, a,,a ,"), v(&["a", "b"]));
        assert!(split_tags(" , ").is_empty());
    }

    #[test]
    fn match_modes() {
        assert_eq!(parse_match("any"), Some(TagMatch::Any));
        assert_eq!(parse_match("all"), Some(TagMatch::All));
        assert_eq!(parse_match("ALL"), None);
    }
}

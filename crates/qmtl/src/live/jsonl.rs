//! [`JsonlSource`]: live rows as JSON lines, from a file or stdin, for demos and tests.
//!
//! Each non-blank line is one JSON object (wrapped here for width; one line each in the
//! input):
//!
//! ```text
//! {"stream": "bars", "ts": 1700000000, "open": 1.1, "high": 1.2, "low": 1.0, "close": 1.15,
//!  "volume": 10}
//! {"stream": "bars", "ts": 1700003600, "open": 1.15, "high": 1.3, "low": 1.1, "close": 1.2,
//!  "volume": 12}
//! ```
//!
//! - `stream` names the feed: a stream's name, the name of a node computed by another
//!   strategy, or a node id (queue name).
//! - `ts` is epoch seconds (an integer) or an ISO-8601 UTC text, as on the command line.
//! - Every field of the feed must be present as a number (names match ignoring case);
//!   other keys are ignored.
//!
//! A line that breaks these rules ends the run with an error naming the line. The
//! source ends, and with it the run, when the input ends. With this source every live
//! row of the run comes from the lines, including rows of nodes computed elsewhere.
//!
//! Lines are read and parsed on a thread of their own, so a slow pipe never blocks the
//! runtime.

use std::io::{BufRead, Read};
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{LiveBatch, LiveError, LiveFeed, LiveSource};
use crate::quote::{quote, quote_up_to};
use crate::time::{check_seconds, parse_whole_timestamp, Timestamp};

/// Rows parsed ahead of the runner.
const CHANNEL_ROWS: usize = 4096;

/// Most rows handed over in one batch.
const BATCH_ROWS: usize = 1024;

type Parsed = Result<(usize, Timestamp, Vec<f64>), LiveError>;

/// Rows from JSON lines; see the module docs.
pub struct JsonlSource {
    path: String,
    rows: mpsc::Receiver<Parsed>,
    wait: Duration,
}

impl JsonlSource {
    /// Starts reading `path` (`-` for stdin) as rows of `feeds`, handing over what
    /// arrived at least every `wait`.
    ///
    /// # Errors
    /// [`LiveError::Read`] when the file cannot be opened.
    pub fn open(path: &Path, feeds: &[LiveFeed], wait: Duration) -> Result<Self, LiveError> {
        let shown = path.display().to_string();
        let reader: Box<dyn BufRead + Send> = if shown == "-" {
            Box::new(std::io::BufReader::new(std::io::stdin()))
        } else {
            let file = std::fs::File::open(path).map_err(|source| LiveError::Read {
                path: shown.clone(),
                source,
            })?;
            Box::new(std::io::BufReader::new(file))
        };
        let (sender, rows) = mpsc::channel(CHANNEL_ROWS);
        let feeds = feeds.to_vec();
        let name = shown.clone();
        std::thread::Builder::new()
            .name("qmtl-jsonl".into())
            .spawn(move || read_lines(reader, &name, &feeds, &sender))
            .map_err(|source| LiveError::Read {
                path: shown.clone(),
                source,
            })?;
        Ok(JsonlSource {
            path: shown,
            rows,
            wait,
        })
    }
}

/// The longest line a JSON-lines source takes (one row of at most 16 numbers is far
/// shorter); a longer one ends the source with an error instead of filling memory.
pub const MAX_LINE_BYTES: u64 = 1 << 20;

fn read_lines(
    mut reader: Box<dyn BufRead + Send>,
    path: &str,
    feeds: &[LiveFeed],
    sender: &mpsc::Sender<Parsed>,
) {
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buf);
        line_no += 1;
        let parsed = match read {
            Err(source) => Err(LiveError::Read {
                path: path.to_owned(),
                source,
            }),
            Ok(0) => return,
            Ok(_) if buf.len() as u64 > MAX_LINE_BYTES && buf.last() != Some(&b'\n') => {
                Err(LiveError::BadLine {
                    path: path.to_owned(),
                    line: line_no,
                    reason: "longer than 1 MiB; is this a JSON-lines file?".to_owned(),
                })
            }
            Ok(_) => match std::str::from_utf8(&buf) {
                Err(_) => Err(LiveError::BadLine {
                    path: path.to_owned(),
                    line: line_no,
                    reason: "not UTF-8 text".to_owned(),
                }),
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => {
                    parse_line(text.trim_end(), feeds).map_err(|reason| LiveError::BadLine {
                        path: path.to_owned(),
                        line: line_no,
                        reason,
                    })
                }
            },
        };
        let stop = parsed.is_err();
        if sender.blocking_send(parsed).is_err() || stop {
            return;
        }
    }
}

/// A JSON number that is a whole count of seconds, written as an integer or not
/// (`1700000000`, `1700000000.0`, `1.7e9`).
fn whole_seconds(n: &serde_json::Number) -> Option<i64> {
    if let Some(secs) = n.as_i64() {
        return Some(secs);
    }
    let value = n.as_f64()?;
    // Beyond ±2^53 a float no longer tells whole seconds apart; no valid time is there.
    let whole = value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0;
    whole.then_some(value as i64)
}

/// Parses one line into (feed, ts, values).
fn parse_line(text: &str, feeds: &[LiveFeed]) -> Result<(usize, Timestamp, Vec<f64>), String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "not a JSON object".to_owned())?;
    let Some(stream) = object.get("stream").and_then(|s| s.as_str()) else {
        return Err("no \"stream\" text naming the feed".to_owned());
    };
    let Some(feed) = feeds
        .iter()
        .position(|f| f.name == stream || f.node_id.as_str() == stream)
    else {
        let names: Vec<&str> = feeds.iter().map(|f| f.name.as_str()).collect();
        return Err(format!(
            "stream '{}' is not a feed of this run (feeds: {})",
            quote(stream),
            names.join(", ")
        ));
    };
    let ts = match object.get("ts") {
        Some(serde_json::Value::Number(n)) => match whole_seconds(n) {
            Some(secs) => check_seconds(secs).map_err(|e| format!("ts: {e}"))?,
            None => return Err(format!("ts {n} is not whole epoch seconds")),
        },
        Some(serde_json::Value::String(t)) => {
            // The parser's words quote the text whole: shown short and escaped.
            parse_whole_timestamp(t)
                .map_err(|e| format!("ts: {}", quote_up_to(&e.to_string(), 300)))?
        }
        _ => return Err("no \"ts\" (epoch seconds or ISO-8601 text)".to_owned()),
    };
    let spec = &feeds[feed];
    let mut values = Vec::with_capacity(spec.fields.len());
    for field in spec.fields.iter() {
        let found = object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(field))
            .and_then(|(_, v)| v.as_f64());
        match found {
            Some(v) => values.push(v),
            None => {
                return Err(format!(
                    "stream '{stream}' needs a number for field '{field}' (fields: {})",
                    spec.fields.join(", ")
                ))
            }
        }
    }
    Ok((feed, ts, values))
}

#[async_trait::async_trait]
impl LiveSource for JsonlSource {
    async fn next_batch(&mut self, batch: &mut LiveBatch) -> Result<bool, LiveError> {
        let first = match tokio::time::timeout(self.wait, self.rows.recv()).await {
            Err(_) => return Ok(true),
            Ok(None) => return Ok(false),
            Ok(Some(row)) => row,
        };
        let (feed, ts, values) = first?;
        batch.push(feed, ts, &values);
        while batch.len() < BATCH_ROWS {
            match self.rows.try_recv() {
                Ok(row) => {
                    let (feed, ts, values) = row?;
                    batch.push(feed, ts, &values);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
        Ok(true)
    }

    fn describe(&self) -> String {
        format!("jsonl:{}", self.path)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::interval::Interval;
    use crate::node::NodeId;

    fn feeds() -> Vec<LiveFeed> {
        vec![LiveFeed {
            name: "bars".into(),
            node_id: NodeId::from_hex("abc"),
            interval: Interval::from_secs(60).unwrap(),
            fields: Arc::from(vec!["close".to_owned(), "volume".to_owned()]),
        }]
    }

    /// Regression: a source without line breaks (`jsonl:/dev/zero`) was read into memory
    /// until the allocator gave up (exit 134).
    #[test]
    fn a_line_longer_than_the_limit_ends_the_source_with_an_error() {
        let feeds = feeds();
        let mut input = br#"{"stream":"bars","ts":1700000000,"close":1,"volume":2}"#.to_vec();
        input.push(b'\n');
        input.extend(std::iter::repeat_n(b'0', 2 << 20));
        let reader: Box<dyn BufRead + Send> = Box::new(std::io::Cursor::new(input));
        let (sender, mut rows) = mpsc::channel(4);
        read_lines(reader, "big.jsonl", &feeds, &sender);
        assert_eq!(rows.try_recv().unwrap().unwrap().1, 1_700_000_000);
        let err = rows.try_recv().unwrap().unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("longer than 1 MiB"), "{err}");
    }

    #[test]
    fn parses_rows_and_names_what_is_wrong() {
        let feeds = feeds();
        let ok = parse_line(
            r#"{"stream":"bars","ts":1700000000,"Close":1.5,"volume":3,"x":"y"}"#,
            &feeds,
        );
        assert_eq!(ok, Ok((0, 1_700_000_000, vec![1.5, 3.0])));
        let by_id = parse_line(
            r#"{"stream":"abc","ts":"2023-11-14T22:13:20Z","close":1,"volume":2}"#,
            &feeds,
        );
        assert_eq!(by_id, Ok((0, 1_700_000_000, vec![1.0, 2.0])));
        // Regression: a whole number written with a decimal point was refused.
        for ts in ["1700000000.0", "1.7e9"] {
            let line = format!(r#"{{"stream":"bars","ts":{ts},"close":1,"volume":2}}"#);
            assert_eq!(
                parse_line(&line, &feeds),
                Ok((0, 1_700_000_000, vec![1.0, 2.0])),
                "{ts}"
            );
        }
        let cases = [
            ("nope", "not a JSON object"),
            ("[1]", "not a JSON object"),
            (r#"{"ts":1}"#, "no \"stream\""),
            (
                r#"{"stream":"x","ts":1}"#,
                "not a feed of this run (feeds: bars)",
            ),
            (r#"{"stream":"bars","close":1,"volume":1}"#, "no \"ts\""),
            (
                r#"{"stream":"bars","ts":1.5,"close":1,"volume":1}"#,
                "not whole",
            ),
            // Regression: a value quoted in full put a terminal escape in the message.
            (
                "{\"stream\":\"\\u001b[31mx\",\"ts\":1}",
                "stream '\\u{1b}[31mx' is not a feed",
            ),
            // Regression: a bad ts text was quoted whole, control characters and all.
            (
                "{\"stream\":\"bars\",\"ts\":\"\\u001b[31m\\n999\"}",
                "ts: timestamp '\\u{1b}[31m\\n999'",
            ),
            // Regression: a fraction written as text was cut to whole seconds.
            (
                r#"{"stream":"bars","ts":"1700000000.5","close":1,"volume":1}"#,
                "not whole epoch seconds",
            ),
            (r#"{"stream":"bars","ts":1,"close":1}"#, "field 'volume'"),
        ];
        for (line, want) in cases {
            let err = parse_line(line, &feeds).unwrap_err();
            assert!(err.contains(want), "{line}: {err}");
        }
    }
}

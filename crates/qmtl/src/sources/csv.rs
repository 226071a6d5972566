//! The CSV file source: parses a whole file once, then answers range queries from memory.
//!
//! The timestamp column is the one named `ts`, else `datetime`, `date`, `time` or
//! `timestamp` (any case), else a first column whose header is empty (pandas' index
//! column). Its cells may be epoch seconds or ISO-8601 (naive times are UTC). Rows must
//! be in strictly ascending time order: a repeated or backward time is an error naming
//! the line. Other columns are payload: numbers, with an empty cell meaning "missing"
//! (NaN in the cache). `NaN`, `inf` and numbers too large for a double are errors naming
//! the line. A column holding any other text cannot be a payload field; asking for it
//! is an error naming the first such cell. A byte-order mark and CRLF line endings are
//! accepted. Values are parsed as they are read (no copy of the file's text is kept).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};

use crate::interval::Interval;
use crate::loader::{CacheLoader, LoaderError};
use crate::node::NodeId;
use crate::time::{parse_timestamp, Timestamp};

const TS_NAMES: &[&str] = &["ts", "datetime", "date", "time", "timestamp"];

/// One payload column: numbers (NaN where empty) until a text cell makes it unusable.
struct Column {
    name: String,
    values: Vec<f64>,
    /// The first cell that is not a number: (line, text).
    text: Option<(u64, String)>,
}

/// A CSV file held in memory, served by time range.
pub struct CsvLoader {
    path: PathBuf,
    ts: Vec<Timestamp>,
    columns: Vec<Column>,
}

impl std::fmt::Debug for CsvLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsvLoader")
            .field("path", &self.path)
            .field("rows", &self.len())
            .finish()
    }
}

fn ts_column(headers: &[String]) -> Option<usize> {
    for name in TS_NAMES {
        if let Some(i) = headers.iter().position(|h| h.eq_ignore_ascii_case(name)) {
            return Some(i);
        }
    }
    headers.first().filter(|h| h.is_empty()).map(|_| 0)
}

impl CsvLoader {
    /// Reads and checks the whole file.
    ///
    /// # Errors
    /// [`LoaderError`] naming the file and, for bad content, the line.
    pub fn open(path: impl AsRef<Path>) -> Result<CsvLoader, LoaderError> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|source| LoaderError::Open {
            path: path.clone(),
            source,
        })?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(LoaderError::NotAFile { path });
        }
        let mut reader = ::csv::ReaderBuilder::new()
            .flexible(false)
            .from_reader(file);
        let csv_err = |source| LoaderError::Csv {
            path: path.clone(),
            source,
        };

        // Read the header and find the timestamp column.
        let headers: Vec<String> = reader
            .headers()
            .map_err(csv_err)?
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let h = if i == 0 {
                    h.trim_start_matches('\u{feff}')
                } else {
                    h
                };
                h.trim().to_owned()
            })
            .collect();
        if headers.iter().all(String::is_empty) && headers.len() <= 1 {
            return Err(LoaderError::Empty { path });
        }
        for (i, h) in headers.iter().enumerate() {
            if !h.is_empty() && headers[..i].iter().any(|o| o.eq_ignore_ascii_case(h)) {
                return Err(LoaderError::DuplicateColumn {
                    path,
                    column: h.clone(),
                });
            }
        }
        let ts_index = ts_column(&headers).ok_or_else(|| LoaderError::NoTsColumn {
            path: path.clone(),
            found: headers.join(","),
        })?;

        // Parse every row as it is read.
        let mut ts = Vec::new();
        let mut columns: Vec<Column> = headers
            .iter()
            .map(|name| Column {
                name: name.clone(),
                values: Vec::new(),
                text: None,
            })
            .collect();
        let mut record = ::csv::StringRecord::new();
        while reader.read_record(&mut record).map_err(csv_err)? {
            let line = record.position().map_or(0, |p| p.line());
            let cell = record.get(ts_index).unwrap_or("").trim();
            if cell.is_empty() {
                return Err(LoaderError::NullTimestamp { path, line });
            }
            let t = parse_timestamp(cell).map_err(|source| LoaderError::BadTimestamp {
                path: path.clone(),
                line,
                source,
            })?;
            if let Some(&previous) = ts.last() {
                if t <= previous {
                    return Err(LoaderError::Unsorted {
                        path,
                        line,
                        ts: t,
                        previous,
                    });
                }
            }
            ts.push(t);
            for (i, value) in record.iter().enumerate() {
                let column = &mut columns[i];
                if i == ts_index || column.text.is_some() {
                    continue;
                }
                let value = value.trim();
                if value.is_empty() {
                    column.values.push(f64::NAN);
                    continue;
                }
                match value.parse::<f64>() {
                    Ok(v) if v.is_finite() => column.values.push(v),
                    Ok(_) => {
                        return Err(LoaderError::NonFinite {
                            path,
                            line,
                            column: column.name.clone(),
                            value: value.to_owned(),
                        })
                    }
                    Err(_) => {
                        column.text = Some((line, value.to_owned()));
                        column.values = Vec::new();
                    }
                }
            }
        }
        if ts.is_empty() {
            return Err(LoaderError::Empty { path });
        }
        columns.remove(ts_index);
        for column in &mut columns {
            if column.name.is_empty() {
                column.name = "unnamed".to_owned();
            }
        }
        tracing::debug!(path = %path.display(), rows = ts.len(), "csv.loaded");
        Ok(CsvLoader { path, ts, columns })
    }

    /// Number of rows in the file.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// Whether the file has no row (never true for an opened loader).
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// The first and last timestamps.
    pub fn span(&self) -> (Timestamp, Timestamp) {
        (self.ts[0], self.ts[self.ts.len() - 1])
    }

    /// The rows with `start <= ts < end` as a batch of `ts` and every numeric column.
    ///
    /// # Errors
    /// Only if Arrow rejects the batch, which the loader's own checks rule out.
    pub fn range(&self, start: Timestamp, end: Timestamp) -> Result<RecordBatch, LoaderError> {
        let lo = self.ts.partition_point(|t| *t < start);
        let hi = self.ts.partition_point(|t| *t < end).max(lo);
        let mut arrays: Vec<(&str, ArrayRef)> =
            vec![("ts", Arc::new(Int64Array::from(self.ts[lo..hi].to_vec())))];
        for column in self.columns.iter().filter(|c| c.text.is_none()) {
            let values = Float64Array::from(column.values[lo..hi].to_vec());
            arrays.push((column.name.as_str(), Arc::new(values)));
        }
        RecordBatch::try_from_iter(arrays).map_err(LoaderError::permanent)
    }
}

#[async_trait::async_trait]
impl CacheLoader for CsvLoader {
    async fn fetch(
        &self,
        start: Timestamp,
        end: Timestamp,
        _node_id: &NodeId,
        _interval: Interval,
    ) -> Result<RecordBatch, LoaderError> {
        self.range(start, end)
    }

    async fn fetch_last(
        &self,
        start: Timestamp,
        end: Timestamp,
        count: u64,
        _node_id: &NodeId,
        _interval: Interval,
    ) -> Result<Option<RecordBatch>, LoaderError> {
        let lo = self.ts.partition_point(|t| *t < start);
        let hi = self.ts.partition_point(|t| *t < end).max(lo);
        let newest = (hi - lo).min(usize::try_from(count).unwrap_or(usize::MAX));
        let from = self.ts.get(hi - newest).copied().unwrap_or(end);
        self.range(from.max(start), end).map(Some)
    }

    fn describe(&self) -> String {
        format!("csv:{}", self.path.display())
    }

    fn coverage(&self) -> Option<(Timestamp, Timestamp)> {
        Some(self.span())
    }

    fn check_fields(&self, fields: &[String]) -> Result<(), LoaderError> {
        let find = |f: &String| self.columns.iter().find(|c| c.name.eq_ignore_ascii_case(f));
        let missing: Vec<&str> = fields
            .iter()
            .filter(|f| find(f).is_none())
            .map(String::as_str)
            .collect();
        let text: Vec<String> = fields
            .iter()
            .filter_map(find)
            .filter_map(|c| {
                let (line, cell) = c.text.as_ref()?;
                Some(format!("'{}' holds text ('{cell}' at line {line})", c.name))
            })
            .collect();
        if missing.is_empty() && text.is_empty() {
            return Ok(());
        }
        let mut problems = Vec::new();
        if !missing.is_empty() {
            let columns: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
            problems.push(format!(
                "missing {} (columns besides the timestamp: {})",
                missing.join(", "),
                columns.join(", ")
            ));
        }
        problems.extend(text);
        Err(LoaderError::Fields {
            path: self.path.clone(),
            wanted: fields.join(", "),
            problems: problems.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type};

    use super::*;

    fn write(name: &str, content: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("qmtl-csv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn reads_the_pandas_layout_with_an_unnamed_datetime_column() {
        let path = write(
            "pandas.csv",
            "\u{feff},Open,Close\r\n2017-04-19 09:00:00,1.5,1.6\r\n2017-04-19 10:00:00,,1.7\r\n",
        );
        let loader = CsvLoader::open(&path).unwrap();
        assert_eq!(loader.span(), (1_492_592_400, 1_492_596_000));
        let batch = loader.range(0, i64::MAX).unwrap();
        let ts = batch
            .column_by_name("ts")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(ts.values(), &[1_492_592_400, 1_492_596_000]);
        let open = batch
            .column_by_name("Open")
            .unwrap()
            .as_primitive::<Float64Type>();
        assert!(open.value(1).is_nan(), "an empty cell is missing");
        assert_eq!(batch.num_rows(), 2);
    }

    #[tokio::test]
    async fn the_newest_rows_are_the_tail_of_the_range() {
        let path = write("newest.csv", "ts,close\n10,1\n20,2\n30,3\n40,4\n50,5\n");
        let loader = CsvLoader::open(&path).unwrap();
        let (node, interval) = (NodeId::from_hex("n"), Interval::from_secs(10).unwrap());
        for (start, end, count) in [
            (0, 100, 2),
            (0, 45, 3),
            (25, 45, 9),
            (0, 100, 0),
            (60, 90, 1),
        ] {
            let range = loader.range(start, end).unwrap();
            let newest = loader
                .fetch_last(start, end, count, &node, interval)
                .await
                .unwrap()
                .unwrap();
            let tail = range.num_rows().min(count as usize);
            let want = range.slice(range.num_rows() - tail, tail);
            assert_eq!(newest, want, "[{start}, {end}) newest {count}");
        }
    }

    #[test]
    fn range_is_half_open() {
        let path = write("range.csv", "ts,v\n10,1\n20,2\n30,3\n");
        let loader = CsvLoader::open(&path).unwrap();
        assert_eq!(loader.range(10, 30).unwrap().num_rows(), 2);
        assert_eq!(loader.range(31, 40).unwrap().num_rows(), 0);
        assert_eq!(loader.range(40, 10).unwrap().num_rows(), 0);
    }

    #[test]
    fn names_the_line_of_bad_content() {
        let cases = [
            ("nots.csv", "a,b\n1,2\n", "no timestamp column (found: a,b)"),
            (
                "badts.csv",
                "ts,v\n10,1\nnoon,2\n",
                "line 3: timestamp 'noon'",
            ),
            (
                "nullts.csv",
                "ts,v\n10,1\n,2\n",
                "line 3: the timestamp is empty",
            ),
            (
                "dup.csv",
                "ts,v\n10,1\n10,2\n",
                "line 3: timestamp 10 is not after",
            ),
            ("back.csv", "ts,v\n20,1\n10,2\n", "sort the file"),
            (
                "millis.csv",
                "ts,v\n1492592400000,1\n",
                "looks like milliseconds",
            ),
            ("empty.csv", "ts,v\n", "holds no data rows"),
            ("nothing.csv", "", "holds no data rows"),
            (
                "nan.csv",
                "ts,v\n10,NaN\n",
                "line 2, column 'v': 'NaN' is not a finite",
            ),
            (
                "inf.csv",
                "ts,v\n10,1\n11,-inf\n",
                "line 3, column 'v': '-inf'",
            ),
            (
                "huge.csv",
                "ts,v\n10,1e400\n",
                "'1e400' is not a finite number",
            ),
            ("twice.csv", "ts,v,V\n10,1,2\n", "two columns named 'V'"),
            ("ragged.csv", "ts,v\n10,1,3\n", "malformed CSV"),
        ];
        for (name, content, want) in cases {
            let err = CsvLoader::open(write(name, content))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{name}: {err}");
            assert!(err.contains(name), "{name}: {err}");
        }
        let err = CsvLoader::open("/nonexistent/x.csv").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.csv"), "{err}");
    }

    #[test]
    fn fields_are_checked_up_front_naming_every_problem() {
        let path = write(
            "fields.csv",
            "date,symbol,close,open\n2020-01-01,EURUSD,1.1,1\n",
        );
        let loader = CsvLoader::open(&path).unwrap();
        let fields = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(loader.check_fields(&fields(&["CLOSE", "open"])).is_ok());
        let err = loader
            .check_fields(&fields(&["close", "high", "volume", "symbol"]))
            .unwrap_err()
            .to_string();
        for want in [
            "missing high, volume",
            "'symbol' holds text ('EURUSD' at line 2)",
        ] {
            assert!(err.contains(want), "{err}");
        }
        let batch = loader.range(0, i64::MAX).unwrap();
        assert!(
            batch.column_by_name("symbol").is_none(),
            "text is not payload"
        );
        assert_eq!(loader.coverage(), Some((1_577_836_800, 1_577_836_800)));
    }

    #[test]
    fn decimal_epoch_seconds_are_accepted() {
        let path = write("decimal.csv", "ts,v\n1492592400.0,1\n");
        assert_eq!(CsvLoader::open(&path).unwrap().span().0, 1_492_592_400);
    }
}

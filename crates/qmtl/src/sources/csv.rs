//! The CSV file source: parses a whole file once, then answers range queries from memory.
//!
//! The timestamp column is the one named `ts`, else `datetime`, `date`, `time` or
//! `timestamp` (any case), else a first column whose header is empty (pandas' index
//! column). Its cells may be epoch seconds or ISO-8601 (naive times are UTC). Rows must
//! be in strictly ascending time order: a repeated or backward time is an error naming
//! the line. Every other column whose non-empty cells all parse as numbers becomes a
//! Float64 payload column (empty cells are nulls); any other column becomes text.
//! A byte-order mark and CRLF line endings are accepted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};

use crate::interval::Interval;
use crate::loader::{CacheLoader, LoaderError};
use crate::node::NodeId;
use crate::time::{parse_timestamp, Timestamp};

const TS_NAMES: &[&str] = &["ts", "datetime", "date", "time", "timestamp"];

enum Column {
    Numeric(Vec<Option<f64>>),
    Text(Vec<String>),
}

/// A CSV file held in memory, served by time range.
pub struct CsvLoader {
    path: PathBuf,
    ts: Vec<Timestamp>,
    columns: Vec<(String, Column)>,
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
        let mut reader = ::csv::ReaderBuilder::new()
            .flexible(false)
            .from_reader(file);
        let csv_err = |source| LoaderError::Csv {
            path: path.clone(),
            source,
        };

        // Find the timestamp column.
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
        let ts_index = ts_column(&headers).ok_or_else(|| LoaderError::NoTsColumn {
            path: path.clone(),
            found: headers.join(","),
        })?;

        // Read every row, parsing times and keeping payload text for typing below.
        let mut ts = Vec::new();
        let mut cells: Vec<Vec<String>> = vec![Vec::new(); headers.len()];
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
                if i != ts_index {
                    cells[i].push(value.trim().to_owned());
                }
            }
        }
        if ts.is_empty() {
            return Err(LoaderError::Empty { path });
        }

        // Type each payload column.
        let mut columns = Vec::new();
        for (i, (name, values)) in headers.into_iter().zip(cells).enumerate() {
            if i == ts_index {
                continue;
            }
            let parsed: Option<Vec<Option<f64>>> = values
                .iter()
                .map(|v| {
                    if v.is_empty() {
                        Some(None)
                    } else {
                        v.parse().ok().map(Some)
                    }
                })
                .collect();
            let column = match parsed {
                Some(numbers) => Column::Numeric(numbers),
                None => Column::Text(values),
            };
            columns.push((name, column));
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

    /// The rows with `start <= ts < end` as a batch.
    ///
    /// # Errors
    /// Only if Arrow rejects the batch, which the loader's own checks rule out.
    pub fn range(&self, start: Timestamp, end: Timestamp) -> Result<RecordBatch, LoaderError> {
        let lo = self.ts.partition_point(|t| *t < start);
        let hi = self.ts.partition_point(|t| *t < end).max(lo);
        let mut arrays: Vec<(String, ArrayRef)> = vec![(
            "ts".to_owned(),
            Arc::new(Int64Array::from(self.ts[lo..hi].to_vec())),
        )];
        for (name, column) in &self.columns {
            let array: ArrayRef = match column {
                Column::Numeric(v) => Arc::new(Float64Array::from(v[lo..hi].to_vec())),
                Column::Text(v) => Arc::new(StringArray::from(v[lo..hi].to_vec())),
            };
            let name = if name.is_empty() {
                "unnamed".to_owned()
            } else {
                name.clone()
            };
            arrays.push((name, array));
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

    fn describe(&self) -> String {
        format!("csv:{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type};
    use arrow_array::Array;

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
        assert!(open.is_null(1));
        assert_eq!(batch.num_rows(), 2);
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
    fn text_columns_are_kept_as_text() {
        let path = write("text.csv", "date,symbol,close\n2020-01-01,EURUSD,1.1\n");
        let batch = CsvLoader::open(&path).unwrap().range(0, i64::MAX).unwrap();
        assert!(batch
            .column_by_name("symbol")
            .unwrap()
            .as_string_opt::<i32>()
            .is_some());
    }
}

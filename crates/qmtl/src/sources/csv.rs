//! The CSV file source: checks a whole file in one streamed pass, then answers range
//! queries by seeking into the file, so memory follows the rows asked for, not the file.
//!
//! The timestamp column is the one named `ts`, else `datetime`, `date`, `time` or
//! `timestamp` (any case), else a first column whose header is empty (pandas' index
//! column). Its cells may be epoch seconds or ISO-8601 (naive times are UTC). Rows must
//! be in strictly ascending time order: a repeated or backward time is an error naming
//! the line. Other columns are payload: numbers, with an empty cell meaning "missing"
//! (NaN in the cache). `NaN`, `inf` and numbers too large for a double are errors naming
//! the line. A column holding any other text cannot be a payload field; asking for it
//! is an error naming the first such cell. A byte-order mark and CRLF line endings are
//! accepted.
//!
//! Opening reads the file once through a small buffer and keeps only the header, the
//! row count and a sparse index: the timestamp and byte position of every
//! [`INDEX_EVERY`]th row. A fetch seeks to the index entry before its range and parses
//! just the rows it returns (plus at most one index step before them); the newest-rows
//! fetch walks the index backwards from the end of its range. The file must not change
//! while the loader is open: a fetch that finds another length refuses to read it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};

use crate::interval::Interval;
use crate::loader::{CacheLoader, LoaderError};
use crate::node::NodeId;
use crate::time::{parse_timestamp, Timestamp};

const TS_NAMES: &[&str] = &["ts", "datetime", "date", "time", "timestamp"];

/// Rows between two entries of the sparse index: a fetch parses at most this many rows
/// it does not return, and the index costs 32 bytes per this many rows.
const INDEX_EVERY: u64 = 1024;

/// One payload column: numbers (NaN where empty) unless a text cell makes it unusable.
struct Column {
    name: String,
    /// Its position in a record.
    index: usize,
    /// The first cell that is not a number: (line, text).
    text: Option<(u64, String)>,
}

/// Where one indexed row starts in the file.
#[derive(Debug, Clone, Copy)]
struct Mark {
    ts: Timestamp,
    byte: u64,
    line: u64,
    record: u64,
}

impl Mark {
    fn position(self) -> ::csv::Position {
        let mut pos = ::csv::Position::new();
        pos.set_byte(self.byte)
            .set_line(self.line)
            .set_record(self.record);
        pos
    }
}

/// What the checking pass learned about the file; shared with blocking fetch tasks.
struct Layout {
    path: PathBuf,
    /// The file's length when it was checked.
    bytes: u64,
    ts_index: usize,
    columns: Vec<Column>,
    /// Every `step`th row, starting with the first.
    index: Vec<Mark>,
    step: u64,
    rows: u64,
    last: Timestamp,
}

/// A CSV file checked once and served by time range straight from the file.
pub struct CsvLoader {
    layout: Arc<Layout>,
}

impl std::fmt::Debug for CsvLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsvLoader")
            .field("path", &self.layout.path)
            .field("rows", &self.layout.rows)
            .finish()
    }
}

/// A file read with every `\r\n` turned into `\n\r`: the same length, so byte positions
/// stay valid for seeking, but the parser meets each line break before the next record
/// starts. Reading CRLF as is, the `csv` crate counts a line's `\n` only when it reads
/// the next record, so every line number it reports after a CRLF line is one too low.
/// The moved `\r` reads as an empty line, which the parser skips. (Inside a quoted cell
/// the pair swaps too; a cell holding a line break is text either way.)
struct LineBreaks<R> {
    inner: R,
    state: Carry,
}

/// What [`LineBreaks`] owes the next read.
#[derive(Clone, Copy)]
enum Carry {
    Nothing,
    /// A `\r` not yet given out: it moves behind a `\n` that follows it.
    HeldCr,
    /// A byte to give out as it is.
    Byte(u8),
}

impl<R> LineBreaks<R> {
    fn new(inner: R) -> Self {
        LineBreaks {
            inner,
            state: Carry::Nothing,
        }
    }
}

impl<R: Read> Read for LineBreaks<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                Carry::Byte(b) => {
                    buf[0] = b;
                    self.state = Carry::Nothing;
                    return Ok(1);
                }
                Carry::HeldCr => {
                    let mut next = [0u8; 1];
                    let (out, state) = match self.inner.read(&mut next)? {
                        0 => (b'\r', Carry::Nothing),
                        _ if next[0] == b'\n' => (b'\n', Carry::Byte(b'\r')),
                        _ if next[0] == b'\r' => (b'\r', Carry::HeldCr),
                        _ => (b'\r', Carry::Byte(next[0])),
                    };
                    buf[0] = out;
                    self.state = state;
                    return Ok(1);
                }
                Carry::Nothing => {}
            }

            // Swap each CR LF pair read; hold a CR that ends the read.
            let read = self.inner.read(buf)?;
            let mut i = 0;
            while let Some(at) = buf[i..read].iter().position(|&b| b == b'\r') {
                i += at;
                if i + 1 == read {
                    self.state = Carry::HeldCr;
                    break;
                }
                if buf[i + 1] == b'\n' {
                    buf.swap(i, i + 1);
                    i += 2;
                } else {
                    i += 1;
                }
            }
            let given = if matches!(self.state, Carry::HeldCr) {
                read - 1
            } else {
                read
            };
            if given > 0 || read == 0 {
                return Ok(given);
            }
        }
    }
}

impl<R: Seek> Seek for LineBreaks<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.state = Carry::Nothing;
        self.inner.seek(pos)
    }
}

/// A file that changed between the checking pass and a fetch.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path} changed while it was being read ({was} bytes when checked, {now} now); \
     do not edit a source file during a run"
)]
struct Changed {
    path: PathBuf,
    was: u64,
    now: u64,
}

fn ts_column(headers: &[String]) -> Option<usize> {
    for name in TS_NAMES {
        if let Some(i) = headers.iter().position(|h| h.eq_ignore_ascii_case(name)) {
            return Some(i);
        }
    }
    headers.first().filter(|h| h.is_empty()).map(|_| 0)
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// A payload cell: `None` for an empty cell, else the number or the text as written.
fn cell_value(cell: &str) -> Option<Result<f64, &str>> {
    let cell = cell.trim();
    if cell.is_empty() {
        return None;
    }
    Some(cell.parse::<f64>().map_err(|_| cell))
}

impl CsvLoader {
    /// Checks the whole file in one buffered pass and indexes it for range reads.
    ///
    /// # Errors
    /// [`LoaderError`] naming the file and, for bad content, the line.
    pub fn open(path: impl AsRef<Path>) -> Result<CsvLoader, LoaderError> {
        Self::open_indexed(path.as_ref(), INDEX_EVERY)
    }

    fn open_indexed(path: &Path, step: u64) -> Result<CsvLoader, LoaderError> {
        let path = path.to_path_buf();
        let file = match File::open(&path) {
            Ok(file) => file,
            // A link to nothing exists but is no file: say so rather than "not found".
            Err(e) if e.kind() == io::ErrorKind::NotFound && is_symlink(&path) => {
                return Err(LoaderError::NotAFile { path });
            }
            Err(source) => return Err(LoaderError::Open { path, source }),
        };
        let metadata = file.metadata().map_err(|source| LoaderError::Open {
            path: path.clone(),
            source,
        })?;
        if metadata.is_dir() {
            return Err(LoaderError::NotAFile { path });
        }
        let mut reader = ::csv::ReaderBuilder::new()
            .flexible(false)
            .from_reader(LineBreaks::new(file));
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
        let mut columns: Vec<Column> = headers
            .into_iter()
            .enumerate()
            .filter(|(index, _)| *index != ts_index)
            .map(|(index, name)| Column {
                name,
                index,
                text: None,
            })
            .collect();

        // Check every row as it streams past, indexing every `step`th.
        let mut index = Vec::new();
        let mut rows = 0u64;
        let mut previous: Option<Timestamp> = None;
        let mut record = ::csv::StringRecord::new();
        while reader.read_record(&mut record).map_err(csv_err)? {
            let (line, t) = row_ts(&path, &record, ts_index)?;
            if let Some(previous) = previous.filter(|p| t <= *p) {
                return Err(LoaderError::Unsorted {
                    path,
                    line,
                    ts: t,
                    previous,
                });
            }
            previous = Some(t);
            for column in columns.iter_mut().filter(|c| c.text.is_none()) {
                let cell = record.get(column.index).unwrap_or("");
                match cell_value(cell) {
                    None => {}
                    Some(Ok(v)) if v.is_finite() => {}
                    Some(Ok(_)) => {
                        return Err(LoaderError::NonFinite {
                            path,
                            line,
                            column: column.name.clone(),
                            value: cell.trim().to_owned(),
                        })
                    }
                    Some(Err(text)) => column.text = Some((line, text.to_owned())),
                }
            }
            if rows.is_multiple_of(step) {
                let pos = record
                    .position()
                    .cloned()
                    .unwrap_or_else(::csv::Position::new);
                index.push(Mark {
                    ts: t,
                    byte: pos.byte(),
                    line: pos.line(),
                    record: pos.record(),
                });
            }
            rows += 1;
        }
        let Some(last) = previous else {
            return Err(LoaderError::Empty { path });
        };
        for column in &mut columns {
            if column.name.is_empty() {
                column.name = "unnamed".to_owned();
            }
        }
        tracing::debug!(path = %path.display(), rows, marks = index.len(), "csv.indexed");
        let layout = Layout {
            path,
            bytes: metadata.len(),
            ts_index,
            columns,
            index,
            step,
            rows,
            last,
        };
        Ok(CsvLoader {
            layout: Arc::new(layout),
        })
    }

    /// Number of rows in the file.
    pub fn len(&self) -> usize {
        usize::try_from(self.layout.rows).unwrap_or(usize::MAX)
    }

    /// Whether the file has no row (never true for an opened loader).
    pub fn is_empty(&self) -> bool {
        self.layout.rows == 0
    }

    /// The first and last timestamps.
    pub fn span(&self) -> (Timestamp, Timestamp) {
        (self.layout.index[0].ts, self.layout.last)
    }

    /// The rows with `start <= ts < end` as a batch of `ts` and every numeric column,
    /// read from the file.
    ///
    /// # Errors
    /// [`LoaderError`] if the file can no longer be read as it was when checked.
    pub fn range(&self, start: Timestamp, end: Timestamp) -> Result<RecordBatch, LoaderError> {
        self.layout.range(start, end)
    }

    /// The newest `count` rows with `start <= ts < end`, oldest first, read from the
    /// file.
    ///
    /// # Errors
    /// As [`CsvLoader::range`].
    pub fn newest(
        &self,
        start: Timestamp,
        end: Timestamp,
        count: u64,
    ) -> Result<RecordBatch, LoaderError> {
        let from = self.layout.newest_start(start, end, count)?;
        self.layout.range(from, end)
    }
}

/// The line and timestamp of a record, checked.
fn row_ts(
    path: &Path,
    record: &::csv::StringRecord,
    ts_index: usize,
) -> Result<(u64, Timestamp), LoaderError> {
    let line = record.position().map_or(0, |p| p.line());
    let cell = record.get(ts_index).unwrap_or("").trim();
    if cell.is_empty() {
        return Err(LoaderError::NullTimestamp {
            path: path.to_path_buf(),
            line,
        });
    }
    let t = parse_timestamp(cell).map_err(|source| LoaderError::BadTimestamp {
        path: path.to_path_buf(),
        line,
        source,
    })?;
    Ok((line, t))
}

impl Layout {
    /// A reader positioned at the indexed row `mark`.
    fn reader_at(&self, mark: Mark) -> Result<::csv::Reader<LineBreaks<File>>, LoaderError> {
        let open_err = |source| LoaderError::Open {
            path: self.path.clone(),
            source,
        };
        let file = File::open(&self.path).map_err(open_err)?;
        let now = file.metadata().map_err(open_err)?.len();
        if now != self.bytes {
            return Err(LoaderError::permanent(Changed {
                path: self.path.clone(),
                was: self.bytes,
                now,
            }));
        }
        let mut reader = ::csv::ReaderBuilder::new()
            .flexible(false)
            .has_headers(false)
            .from_reader(LineBreaks::new(file));
        reader
            .seek(mark.position())
            .map_err(|source| LoaderError::Csv {
                path: self.path.clone(),
                source,
            })?;
        Ok(reader)
    }

    /// Reads rows from index entry `from` on, handing each `(ts, record)` to `each`
    /// until it returns false or the file ends.
    fn scan(
        &self,
        from: usize,
        mut each: impl FnMut(Timestamp, &::csv::StringRecord) -> Result<bool, LoaderError>,
    ) -> Result<(), LoaderError> {
        let mut reader = self.reader_at(self.index[from])?;
        let mut record = ::csv::StringRecord::new();
        loop {
            let more = reader
                .read_record(&mut record)
                .map_err(|source| LoaderError::Csv {
                    path: self.path.clone(),
                    source,
                })?;
            if !more {
                return Ok(());
            }
            let (_, t) = row_ts(&self.path, &record, self.ts_index)?;
            if !each(t, &record)? {
                return Ok(());
            }
        }
    }

    /// The index entry to start reading at for rows at or after `start`.
    fn entry_before(&self, start: Timestamp) -> usize {
        self.index
            .partition_point(|m| m.ts < start)
            .saturating_sub(1)
    }

    fn range(&self, start: Timestamp, end: Timestamp) -> Result<RecordBatch, LoaderError> {
        let numeric: Vec<&Column> = self.columns.iter().filter(|c| c.text.is_none()).collect();
        let mut ts = Vec::new();
        let mut values: Vec<Vec<f64>> = vec![Vec::new(); numeric.len()];

        // Read from the index entry before `start` up to the first row at `end`.
        if start < end && start <= self.last && end > self.index[0].ts {
            self.scan(self.entry_before(start), |t, record| {
                if t >= end {
                    return Ok(false);
                }
                if t < start {
                    return Ok(true);
                }
                ts.push(t);
                for (column, out) in numeric.iter().zip(&mut values) {
                    out.push(self.number(record, column)?);
                }
                Ok(true)
            })?;
        }

        // Assemble the batch.
        let mut arrays: Vec<(&str, ArrayRef)> = vec![("ts", Arc::new(Int64Array::from(ts)))];
        for (column, out) in numeric.iter().zip(values) {
            arrays.push((column.name.as_str(), Arc::new(Float64Array::from(out))));
        }
        RecordBatch::try_from_iter(arrays).map_err(LoaderError::permanent)
    }

    /// A payload cell of a numeric column, re-read; an error only if the file changed.
    fn number(&self, record: &::csv::StringRecord, column: &Column) -> Result<f64, LoaderError> {
        let cell = record.get(column.index).unwrap_or("");
        match cell_value(cell) {
            None => Ok(f64::NAN),
            Some(Ok(v)) if v.is_finite() => Ok(v),
            _ => Err(LoaderError::NonFinite {
                path: self.path.clone(),
                line: record.position().map_or(0, |p| p.line()),
                column: column.name.clone(),
                value: cell.trim().to_owned(),
            }),
        }
    }

    /// The start of a range holding the newest `count` rows of `[start, end)`: walks
    /// the index backwards one step at a time, keeping only one step's timestamps.
    fn newest_start(
        &self,
        start: Timestamp,
        end: Timestamp,
        count: u64,
    ) -> Result<Timestamp, LoaderError> {
        let holding = self.index.partition_point(|m| m.ts < end);
        if count == 0 || start >= end || holding == 0 {
            return Ok(end);
        }
        let step = usize::try_from(self.step).unwrap_or(usize::MAX);
        let mut wanted = count;
        for entry in (0..holding).rev() {
            let (mut times, mut seen) = (Vec::new(), 0);
            self.scan(entry, |t, _| {
                if t >= end || seen >= step {
                    return Ok(false);
                }
                seen += 1;
                if t >= start {
                    times.push(t);
                }
                Ok(true)
            })?;
            let found = times.len() as u64;
            if found >= wanted {
                return Ok(times[times.len() - wanted as usize]);
            }
            wanted -= found;
            if self.index[entry].ts < start {
                break;
            }
        }
        Ok(start)
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
        let layout = Arc::clone(&self.layout);
        tokio::task::spawn_blocking(move || layout.range(start, end))
            .await
            .map_err(LoaderError::permanent)?
    }

    async fn fetch_last(
        &self,
        start: Timestamp,
        end: Timestamp,
        count: u64,
        _node_id: &NodeId,
        _interval: Interval,
    ) -> Result<Option<RecordBatch>, LoaderError> {
        let layout = Arc::clone(&self.layout);
        let newest = move || {
            let from = layout.newest_start(start, end, count)?;
            layout.range(from, end)
        };
        tokio::task::spawn_blocking(newest)
            .await
            .map_err(LoaderError::permanent)?
            .map(Some)
    }

    fn describe(&self) -> String {
        format!("csv:{}", self.layout.path.display())
    }

    fn coverage(&self) -> Option<(Timestamp, Timestamp)> {
        Some(self.span())
    }

    fn check_fields(&self, fields: &[String]) -> Result<(), LoaderError> {
        let columns = &self.layout.columns;
        let find = |f: &String| columns.iter().find(|c| c.name.eq_ignore_ascii_case(f));
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
            let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
            problems.push(format!(
                "missing {} (columns besides the timestamp: {})",
                missing.join(", "),
                names.join(", ")
            ));
        }
        problems.extend(text);
        Err(LoaderError::Fields {
            path: self.layout.path.clone(),
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
        #[cfg(unix)]
        {
            let dangling = write("target.csv", "").with_file_name("dangling.csv");
            let _ = std::fs::remove_file(&dangling);
            std::os::unix::fs::symlink("/nonexistent/x.csv", &dangling).unwrap();
            let err = CsvLoader::open(&dangling).unwrap_err().to_string();
            assert!(
                err.contains("dangling.csv is not a file; give the path"),
                "{err}"
            );
        }
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

    /// Every range and newest-rows query across index steps of 3 rows gives what
    /// slicing the whole file would.
    #[test]
    fn reads_across_index_steps_match_the_whole_file() {
        for eol in ["\n", "\r\n"] {
            reads_across_index_steps_match_the_whole_file_with(eol);
        }
    }

    fn reads_across_index_steps_match_the_whole_file_with(eol: &str) {
        let mut content = format!("ts,v,note{eol}");
        let times: Vec<i64> = (0..20).map(|i| 10 * i + i % 3).collect();
        for (i, t) in times.iter().enumerate() {
            let note = if i == 17 { "text" } else { "" };
            content.push_str(&format!("{t},{i}.5,{note}{eol}"));
        }
        let name = format!("steps-{}.csv", eol.len());
        let loader = CsvLoader::open_indexed(&write(&name, &content), 3).unwrap();
        assert_eq!(loader.layout.index.len(), 7);
        let whole = loader.range(i64::MIN, i64::MAX).unwrap();
        assert_eq!(whole.num_rows(), 20);
        assert!(
            whole.column_by_name("note").is_none(),
            "a text column is not payload"
        );
        let bounds: Vec<i64> = (-5..=205).step_by(4).collect();
        for &start in &bounds {
            for &end in &bounds {
                let lo = times.partition_point(|t| *t < start);
                let hi = times.partition_point(|t| *t < end).max(lo);
                let got = loader.range(start, end).unwrap();
                assert_eq!(got, whole.slice(lo, hi - lo), "[{start}, {end})");
                for count in [0u64, 1, 2, 3, 4, 7, 50] {
                    let n = (hi - lo).min(count as usize);
                    let newest = loader.newest(start, end, count).unwrap();
                    assert_eq!(newest, whole.slice(hi - n, n), "[{start}, {end}) {count}");
                }
            }
        }
    }

    #[test]
    fn a_file_changed_after_opening_is_refused_not_misread() {
        let path = write("changed.csv", "ts,v\n10,1\n20,2\n");
        let loader = CsvLoader::open(&path).unwrap();
        std::fs::write(&path, "ts,v\n10,1\n20,2\n30,3\n").unwrap();
        let err = loader.range(0, 100).unwrap_err().to_string();
        assert!(err.contains("changed while it was being read"), "{err}");
        assert!(err.contains("changed.csv"), "{err}");
    }

    /// Gives out at most `chunk` bytes per read, as a pipe or a slow disk may.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn crlf_becomes_lf_cr_whatever_the_read_sizes() {
        let cases: [(&[u8], &[u8]); 7] = [
            (b"a,b\r\n1,2\r\n", b"a,b\n\r1,2\n\r"),
            (b"\r\r\n\r", b"\r\n\r\r"),
            (b"\r", b"\r"),
            (b"x\ry\n", b"x\ry\n"),
            (b"\r\n\r\n", b"\n\r\n\r"),
            (b"", b""),
            (b"no breaks", b"no breaks"),
        ];
        for (input, want) in cases {
            for chunk in 1..=5 {
                for size in 1..=4 {
                    let mut reader = LineBreaks::new(Trickle { data: input, chunk });
                    let (mut out, mut buf) = (Vec::new(), vec![0u8; size]);
                    loop {
                        let n = reader.read(&mut buf).unwrap();
                        if n == 0 {
                            break;
                        }
                        out.extend_from_slice(&buf[..n]);
                    }
                    assert_eq!(out, want, "{input:?} chunk {chunk} size {size}");
                }
            }
        }
    }

    /// Regression: with CRLF line endings every line number was one too low, because
    /// the CSV parser counted a line's LF only when it read the next record.
    #[test]
    fn crlf_files_name_the_same_lines_as_lf_files() {
        let cases = [
            ("ts,v\n10,1\n,2\n", "line 3: the timestamp is empty"),
            ("ts,v\n10,1\nnoon,2\n", "line 3: timestamp 'noon'"),
            (
                "ts,v\n10,1\n20,2\n20,3\n",
                "line 4: timestamp 20 is not after",
            ),
            ("ts,v\n10,1\n11,inf\n", "line 3, column 'v'"),
            ("ts,v\n10,1\n20,2,3\n", "line: 3"),
        ];
        for (i, (lf, want)) in cases.into_iter().enumerate() {
            for (eol, text) in [("lf", lf.to_owned()), ("crlf", lf.replace('\n', "\r\n"))] {
                let err = CsvLoader::open(write(&format!("lines{i}-{eol}.csv"), &text))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(want), "{eol}: {err}");
            }
        }
        let path = write("crlf-text.csv", "ts,v,note\r\n10,1,\r\n20,2,hi\r\n");
        let fields = ["note".to_owned()];
        let err = CsvLoader::open(&path)
            .unwrap()
            .check_fields(&fields)
            .unwrap_err();
        assert!(err.to_string().contains("'hi' at line 3"), "{err}");
    }

    #[test]
    fn decimal_epoch_seconds_are_accepted() {
        let path = write("decimal.csv", "ts,v\n1492592400.0,1\n");
        assert_eq!(CsvLoader::open(&path).unwrap().span().0, 1_492_592_400);
    }
}

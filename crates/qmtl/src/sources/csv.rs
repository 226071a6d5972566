//! The CSV file source: checks a whole file in one streamed pass, then answers range
//! queries by seeking into the file, so memory follows the rows asked for, not the file.
//!
//! The timestamp column is the one named `ts`, else `datetime`, `date`, `time` or
//! `timestamp` (any case), else a first column whose header is empty (pandas' index
//! column). Its cells may be whole epoch seconds (`1600000000.0` is whole; a fraction of
//! a second is an error) or ISO-8601 (naive times are UTC). Rows must be in strictly
//! ascending time order: a repeated or backward time is an error naming the line. Other
//! columns are payload: numbers, with an empty cell meaning "missing" (NaN in the cache).
//! `NaN`, `inf` and numbers too large for a double are errors naming the line. A column
//! holding any other text cannot be a payload field; asking for it is an error naming
//! the first such cell. A byte-order mark and CRLF line endings are accepted. Error
//! messages quote at most 80 characters of a cell, with control characters escaped.
//!
//! The path must name a regular file (a device, pipe or directory is refused before
//! anything is read), and a row may hold at most [`CsvLoader::MAX_ROW_BYTES`]: a longer
//! one is refused as it is read, so a file that is not CSV at all (NUL bytes, no line
//! break) costs at most that much memory.
//!
//! Opening reads the file once through a small buffer and keeps only the header, the
//! row count and a sparse index: the timestamp and byte position of every
//! [`INDEX_EVERY`]th row. A fetch seeks to the index entry before its range and parses
//! just the rows it returns (plus at most one index step before them); the newest-rows
//! fetch walks the index backwards from the end of its range. The file must not change
//! while the loader is open: before and after every read the file's length,
//! modification time and (on unix) device and inode must be those of the checking pass,
//! and every row read must fit the index (at an entry's time, between entries, after the
//! row before it), else the read fails saying the file changed.

use crate::quote::{quote, quote_up_to};
use std::fmt;
use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};

use crate::interval::Interval;
use crate::loader::{CacheLoader, LoaderError};
use crate::node::NodeId;
use crate::time::{parse_whole_timestamp, TimeError, Timestamp};

const TS_NAMES: &[&str] = &["ts", "datetime", "date", "time", "timestamp"];

/// Rows between two entries of the sparse index: a fetch parses at most this many rows
/// it does not return, and the index costs 32 bytes per this many rows.
const INDEX_EVERY: u64 = 1024;

/// How many characters of a list of column names an error message shows.
const MAX_LIST_CHARS: usize = 500;

/// One payload column: numbers (NaN where empty) unless a text cell makes it unusable.
struct Column {
    name: String,
    /// Its position in a record.
    index: usize,
    /// The first cell that is not a number: (line, text as quoted in messages).
    text: Option<(u64, String)>,
}

/// Where one indexed row starts in the file.
#[derive(Debug, Clone, Copy)]
struct Mark {
    ts: Timestamp,
    byte: u64,
    line: u64,
}

/// What tells one version of a file from another: taken when the file is checked and
/// compared before and after every read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    bytes: u64,
    modified: Option<SystemTime>,
    /// Device and inode on unix: a file renamed over the path has others.
    id: (u64, u64),
}

impl Stamp {
    fn of(metadata: &Metadata) -> Stamp {
        #[cfg(unix)]
        let id = {
            use std::os::unix::fs::MetadataExt as _;
            (metadata.dev(), metadata.ino())
        };
        #[cfg(not(unix))]
        let id = (0, 0);
        Stamp {
            bytes: metadata.len(),
            modified: metadata.modified().ok(),
            id,
        }
    }

    /// What differs in `now`, if anything.
    fn change_to(self, now: Stamp) -> Option<Change> {
        if now.id != self.id {
            Some(Change::Replaced)
        } else if now.bytes != self.bytes {
            Some(Change::Length {
                was: self.bytes,
                now: now.bytes,
            })
        } else if now.modified != self.modified {
            Some(Change::Modified)
        } else {
            None
        }
    }
}

/// What the checking pass learned about the file; shared with blocking fetch tasks.
struct Layout {
    path: PathBuf,
    /// The file as it was checked.
    stamp: Stamp,
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

/// A file read with every `\r\n` turned into `\n\r`, then held to a row length.
type Source = RowLimit<LineBreaks<File>>;

/// Counts the bytes of each row as the CSV parser will see it and fails the read that
/// takes a row past `limit` bytes, so a file without line breaks is refused after a
/// bounded read instead of being buffered whole. It follows the parser's quoting: `"`
/// opens a quoted cell only at the start of a cell, `""` inside one is a quote, and a
/// line break inside one is text; outside quotes `\r` and `\n` both end a row.
struct RowLimit<R> {
    inner: R,
    limit: u64,
    quoting: Quoting,
    /// The line the next byte is on.
    line: u64,
    /// The line the current row starts on.
    row_line: u64,
    /// The current row's bytes so far, line breaks ending it excluded.
    row_bytes: u64,
}

/// Where [`RowLimit`] is within a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// At the start of a cell, where `"` opens a quoted cell.
    CellStart,
    /// In an unquoted cell, where `"` is text.
    Plain,
    /// In a quoted cell, where line breaks and commas are text.
    Quoted,
    /// Just after a `"` in a quoted cell: another `"` is text, anything else closes it.
    QuoteInQuoted,
}

/// A row longer than [`RowLimit`] allows.
#[derive(Debug)]
struct RowTooLong {
    /// The line the row starts on.
    line: u64,
    /// How many lines it spans so far (more than one only through a quoted cell).
    lines: u64,
    /// The limit in bytes.
    limit: u64,
}

impl fmt::Display for RowTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = if self.limit.is_multiple_of(1 << 20) {
            format!("{} MiB", self.limit >> 20)
        } else {
            format!("{} bytes", self.limit)
        };
        let (line, lines) = (self.line, self.lines);
        if lines > 1 {
            write!(
                f,
                "the row starting at line {line} (a quoted cell spanning {lines} lines) is \
                 longer than {limit}"
            )?;
        } else {
            write!(f, "line {line} is longer than {limit}")?;
        }
        write!(f, "; is this a CSV file?")
    }
}

impl std::error::Error for RowTooLong {}

impl<R> RowLimit<R> {
    /// Reads `inner`, whose first byte is on line `line`.
    fn new(inner: R, limit: u64, line: u64) -> Self {
        RowLimit {
            inner,
            limit,
            quoting: Quoting::CellStart,
            line,
            row_line: line,
            row_bytes: 0,
        }
    }

    fn count(&mut self, bytes: &[u8]) -> io::Result<()> {
        for &b in bytes {
            if b == b'\n' {
                self.line += 1;
            }
            let (quoting, ends_row) = match (self.quoting, b) {
                (Quoting::Quoted, b'"') => (Quoting::QuoteInQuoted, false),
                (Quoting::Quoted, _) => (Quoting::Quoted, false),
                (_, b'\n' | b'\r') => (Quoting::CellStart, true),
                (Quoting::CellStart | Quoting::QuoteInQuoted, b'"') => (Quoting::Quoted, false),
                (_, b',') => (Quoting::CellStart, false),
                _ => (Quoting::Plain, false),
            };
            self.quoting = quoting;
            if ends_row {
                self.row_line = self.line;
                self.row_bytes = 0;
                continue;
            }
            self.row_bytes += 1;
            if self.row_bytes > self.limit {
                let long = RowTooLong {
                    line: self.row_line,
                    lines: self.line - self.row_line + 1,
                    limit: self.limit,
                };
                return Err(io::Error::new(io::ErrorKind::InvalidData, long));
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for RowLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.count(&buf[..read])?;
        Ok(read)
    }
}

/// A file that no longer matches what the checking pass found.
#[derive(Debug)]
struct Changed {
    path: PathBuf,
    what: Change,
}

/// What showed that a file changed.
#[derive(Debug)]
enum Change {
    /// Another file now has the path (another device or inode).
    Replaced,
    /// Another length.
    Length { was: u64, now: u64 },
    /// The same length, another modification time.
    Modified,
    /// A row whose time does not fit the index or the row before it.
    Row { line: u64, ts: Timestamp },
    /// A row that no longer reads as every checked row did.
    Unreadable { line: u64, source: Box<LoaderError> },
    /// The rows end before the checked count.
    Ended { rows: u64, checked: u64 },
}

impl fmt::Display for Changed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} changed while it was being read (",
            self.path.display()
        )?;
        match &self.what {
            Change::Replaced => write!(f, "another file now has its name"),
            Change::Length { was, now } => write!(f, "{was} bytes when checked, {now} now"),
            Change::Modified => write!(f, "modified since it was checked"),
            Change::Row { line, ts } => {
                write!(
                    f,
                    "line {line} now holds timestamp {ts}, out of place among the rows checked"
                )
            }
            Change::Unreadable { line, source } => {
                write!(f, "line {line} no longer reads: {source}")
            }
            Change::Ended { rows, checked } => {
                write!(f, "it now ends after {rows} of its {checked} rows")
            }
        }?;
        write!(f, "); do not edit a source file during a run")
    }
}

impl std::error::Error for Changed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.what {
            Change::Unreadable { source, .. } => Some(source.as_ref()),
            _ => None,
        }
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

/// A CSV reader over `file` from its current position, whose first byte is on `line`.
fn csv_reader(file: File, line: u64, limit: u64, headers: bool) -> ::csv::Reader<Source> {
    ::csv::ReaderBuilder::new()
        .flexible(false)
        .has_headers(headers)
        .from_reader(RowLimit::new(LineBreaks::new(file), limit, line))
}

/// The file a reader reads.
fn file_of(reader: &::csv::Reader<Source>) -> &File {
    &reader.get_ref().inner.inner
}

impl CsvLoader {
    /// The most bytes one row may hold (1 MiB): a stream's row is a time and a few
    /// numbers, so a longer row means the file is not CSV. A row spans one line unless a
    /// quoted cell holds line breaks.
    pub const MAX_ROW_BYTES: u64 = 1 << 20;

    /// Checks the whole file in one buffered pass and indexes it for range reads.
    ///
    /// # Errors
    /// [`LoaderError`] naming the file and, for bad content, the line; a path that is
    /// not a regular file is [`LoaderError::NotAFile`].
    pub fn open(path: impl AsRef<Path>) -> Result<CsvLoader, LoaderError> {
        Self::open_with(path.as_ref(), INDEX_EVERY, Self::MAX_ROW_BYTES)
    }

    fn open_with(path: &Path, step: u64, limit: u64) -> Result<CsvLoader, LoaderError> {
        let path = path.to_path_buf();

        // Only a regular file: a device may never end, and opening a pipe waits for a
        // writer. Asked before opening, and again of what was opened.
        if std::fs::metadata(&path).is_ok_and(|m| !m.is_file()) {
            return Err(LoaderError::NotAFile { path });
        }
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
        if !metadata.is_file() {
            return Err(LoaderError::NotAFile { path });
        }
        let stamp = Stamp::of(&metadata);
        let mut reader = csv_reader(file, 1, limit, true);
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
                    column: quote(h),
                });
            }
        }
        let ts_index = ts_column(&headers).ok_or_else(|| LoaderError::NoTsColumn {
            path: path.clone(),
            found: quote_up_to(
                &headers
                    .iter()
                    .map(|h| quote(h))
                    .collect::<Vec<_>>()
                    .join(","),
                MAX_LIST_CHARS,
            ),
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
            let pos = record
                .position()
                .cloned()
                .unwrap_or_else(::csv::Position::new);
            let line = pos.line();
            let t = row_ts(&path, line, &record, ts_index)?;
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
                            column: quote(&column.name),
                            value: quote(cell.trim()),
                        })
                    }
                    Some(Err(text)) => column.text = Some((line, quote(text))),
                }
            }
            if rows.is_multiple_of(step) {
                index.push(Mark {
                    ts: t,
                    byte: pos.byte(),
                    line,
                });
            }
            rows += 1;
        }
        let Some(last) = previous else {
            return Err(LoaderError::Empty { path });
        };

        // The file must not have changed while it was being checked.
        let now = file_of(&reader)
            .metadata()
            .map_err(|source| LoaderError::Open {
                path: path.clone(),
                source,
            })?;
        if let Some(what) = stamp.change_to(Stamp::of(&now)) {
            return Err(LoaderError::permanent(Changed { path, what }));
        }
        for column in &mut columns {
            if column.name.is_empty() {
                column.name = "unnamed".to_owned();
            }
        }
        tracing::debug!(path = %path.display(), rows, marks = index.len(), "csv.indexed");
        let layout = Layout {
            path,
            stamp,
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

/// The timestamp of a record on `line`, checked.
fn row_ts(
    path: &Path,
    line: u64,
    record: &::csv::StringRecord,
    ts_index: usize,
) -> Result<Timestamp, LoaderError> {
    let cell = record.get(ts_index).unwrap_or("").trim();
    if cell.is_empty() {
        return Err(LoaderError::NullTimestamp {
            path: path.to_path_buf(),
            line,
        });
    }
    parse_whole_timestamp(cell).map_err(|source| LoaderError::BadTimestamp {
        path: path.to_path_buf(),
        line,
        source: match source {
            TimeError::Malformed { input } => TimeError::Malformed {
                input: quote(&input),
            },
            TimeError::Fractional { input } => TimeError::Fractional {
                input: quote(&input),
            },
            other => other,
        },
    })
}

impl Layout {
    fn changed(&self, what: Change) -> LoaderError {
        LoaderError::permanent(Changed {
            path: self.path.clone(),
            what,
        })
    }

    /// Fails if `file` is no longer the file that was checked.
    fn verify(&self, file: &File) -> Result<(), LoaderError> {
        let metadata = file.metadata().map_err(|source| LoaderError::Open {
            path: self.path.clone(),
            source,
        })?;
        match self.stamp.change_to(Stamp::of(&metadata)) {
            Some(what) => Err(self.changed(what)),
            None => Ok(()),
        }
    }

    /// A reader positioned at the indexed row `mark`, of the file as it was checked.
    fn reader_at(&self, mark: Mark) -> Result<::csv::Reader<Source>, LoaderError> {
        let open_err = |source| LoaderError::Open {
            path: self.path.clone(),
            source,
        };
        let mut file = File::open(&self.path).map_err(open_err)?;
        self.verify(&file)?;

        // In a CRLF file a row's position is that of the LF ending the line before it
        // (the parser reads LF CR): step over that LF so the row starts on `mark.line`.
        file.seek(SeekFrom::Start(mark.byte)).map_err(open_err)?;
        let mut first = [0u8; 1];
        if file.read(&mut first).map_err(open_err)? == 1 && first[0] != b'\n' {
            file.seek(SeekFrom::Start(mark.byte)).map_err(open_err)?;
        }
        Ok(csv_reader(file, mark.line, CsvLoader::MAX_ROW_BYTES, false))
    }

    /// Whether row `row` (counted from 0) may hold time `t` after `previous` in the
    /// file as checked: an index entry's row holds the entry's time, any other row a
    /// time between the entries around it, the last row the last time.
    fn fits(&self, row: u64, previous: Option<Timestamp>, t: Timestamp) -> bool {
        let entry = usize::try_from(row / self.step).unwrap_or(usize::MAX);
        let Some(mark) = self.index.get(entry) else {
            return false;
        };
        let after_mark = if row.is_multiple_of(self.step) {
            t == mark.ts
        } else {
            t > mark.ts
        };
        let before_next = match self.index.get(entry + 1) {
            Some(next) => t < next.ts,
            None => t <= self.last,
        };
        row < self.rows
            && after_mark
            && before_next
            && (row + 1 < self.rows || t == self.last)
            && previous.is_none_or(|p| t > p)
    }

    /// Reads rows from index entry `from` on, handing each `(ts, line, record)` to
    /// `each` until it returns false or the file ends. Every row read is checked
    /// against the index, and the file against its stamp before and after.
    fn scan(
        &self,
        from: usize,
        mut each: impl FnMut(Timestamp, u64, &::csv::StringRecord) -> Result<bool, LoaderError>,
    ) -> Result<(), LoaderError> {
        let mark = self.index[from];
        let mut reader = self.reader_at(mark)?;
        let line_at = |pos: &::csv::Position| mark.line + pos.line().saturating_sub(1);
        let mut record = ::csv::StringRecord::new();
        let (mut row, mut previous) = (from as u64 * self.step, None);
        loop {
            let more = reader.read_record(&mut record).map_err(|source| {
                self.changed(Change::Unreadable {
                    line: line_at(reader.position()),
                    source: Box::new(LoaderError::Csv {
                        path: self.path.clone(),
                        source,
                    }),
                })
            })?;
            if !more {
                if row != self.rows {
                    return Err(self.changed(Change::Ended {
                        rows: row,
                        checked: self.rows,
                    }));
                }
                break;
            }
            let line = record.position().map_or(mark.line, line_at);
            let t = row_ts(&self.path, line, &record, self.ts_index).map_err(|e| {
                self.changed(Change::Unreadable {
                    line,
                    source: Box::new(e),
                })
            })?;
            if !self.fits(row, previous, t) {
                return Err(self.changed(Change::Row { line, ts: t }));
            }
            (row, previous) = (row + 1, Some(t));
            if !each(t, line, &record)? {
                break;
            }
        }
        self.verify(file_of(&reader))
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
            self.scan(self.entry_before(start), |t, line, record| {
                if t >= end {
                    return Ok(false);
                }
                if t < start {
                    return Ok(true);
                }
                ts.push(t);
                for (column, out) in numeric.iter().zip(&mut values) {
                    out.push(self.number(record, line, column)?);
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
    fn number(
        &self,
        record: &::csv::StringRecord,
        line: u64,
        column: &Column,
    ) -> Result<f64, LoaderError> {
        let cell = record.get(column.index).unwrap_or("");
        match cell_value(cell) {
            None => Ok(f64::NAN),
            Some(Ok(v)) if v.is_finite() => Ok(v),
            _ => Err(self.changed(Change::Unreadable {
                line,
                source: Box::new(LoaderError::NonFinite {
                    path: self.path.clone(),
                    line,
                    column: quote(&column.name),
                    value: quote(cell.trim()),
                }),
            })),
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
            self.scan(entry, |t, _, _| {
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
                let name = quote(&c.name);
                Some(format!("'{name}' holds text ('{cell}' at line {line})"))
            })
            .collect();
        if missing.is_empty() && text.is_empty() {
            return Ok(());
        }
        let mut problems = Vec::new();
        if !missing.is_empty() {
            let names: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
            problems.push(format!(
                "missing {} (columns besides the timestamp: {})",
                quote_up_to(&missing.join(", "), MAX_LIST_CHARS),
                quote_up_to(&names.join(", "), MAX_LIST_CHARS)
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
        let loader =
            CsvLoader::open_with(&write(&name, &content), 3, CsvLoader::MAX_ROW_BYTES).unwrap();
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

    /// Writes `content` and opens it with index steps of 3 rows and rows of at most
    /// `limit` bytes.
    fn open_small(name: &str, content: &str, limit: u64) -> Result<CsvLoader, LoaderError> {
        CsvLoader::open_with(&write(name, content), 3, limit)
    }

    /// Regression: a file without line breaks (3 GiB of NUL bytes) was read into memory
    /// whole and aborted the process; a row is now cut off at the limit as it is read.
    #[test]
    fn rows_longer_than_the_limit_are_refused_naming_their_line() {
        let x = |n: usize| "x".repeat(n);
        let refused = [
            (
                "long-header.csv",
                format!("ts,{}\n10,1\n", x(14)),
                "line 1 is",
            ),
            (
                "long-row.csv",
                format!("ts,v\n10,1\n11,{}", x(14)),
                "line 3 is",
            ),
            (
                "long-crlf.csv",
                format!("ts,v\r\n10,1\r\n11,{}\r\n", x(14)),
                "line 3 is",
            ),
            (
                "long-quoted.csv",
                "ts,v\n10,\"a\nb\nc\nd\ne\nf\ng\nh\"\n".to_owned(),
                "the row starting at line 2 (a quoted cell spanning",
            ),
        ];
        for (name, content, want) in refused {
            let err = open_small(name, &content, 16).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(want), "{name}: {text}");
            assert!(
                text.contains("longer than 16 bytes; is this a CSV file?"),
                "{text}"
            );
            assert!(text.contains(name), "{name}: {text}");
            assert!(err.is_input_error(), "{name}: {text}");
        }

        // Rows at the limit, many short rows, and quotes that do not open a quoted cell.
        let accepted = [
            ("at-limit.csv", format!("ts,v\n10,1{}\n", " ".repeat(12))),
            (
                "at-limit-crlf.csv",
                format!("ts,v\r\n10,1{}\r\n", " ".repeat(12)),
            ),
            (
                "many.csv",
                format!(
                    "ts,v\n{}",
                    (10..40).map(|t| format!("{t},1\n")).collect::<String>()
                ),
            ),
            ("cr-only.csv", "ts,v\r10,1\r11,2\r12,3\r13,4\r".to_owned()),
            (
                "inch.csv",
                "ts,v,n\n10,1,5\" tv\n11,2,x\n12,3,y\n13,4,z\n".to_owned(),
            ),
            (
                "escaped.csv",
                "ts,v,n\n10,1,\"a\"\"b\"\n11,2,x\n12,3,y\n13,4,z\n".to_owned(),
            ),
            (
                "closed.csv",
                "ts,v,n\n10,1,\"a\"b\n11,2,x\n12,3,y\n13,4,z\n".to_owned(),
            ),
        ];
        for (name, content) in accepted {
            let loader = open_small(name, &content, 16).unwrap_or_else(|e| panic!("{name}: {e}"));
            let rows = loader.range(i64::MIN, i64::MAX).unwrap().num_rows();
            assert_eq!(rows, loader.len(), "{name}");
        }
    }

    /// Regression: as QA ran it, `truncate -s 3G zeros.csv` then a run over it.
    #[test]
    fn a_sparse_file_of_nul_bytes_is_refused_at_its_first_line() {
        let path = write("zeros.csv", "");
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(3 << 30)
            .unwrap();
        let err = CsvLoader::open(&path).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("line 1 is longer than 1 MiB; is this a CSV file?"),
            "{text}"
        );
        assert!(text.contains("zeros.csv"), "{text}");
        assert!(err.is_input_error(), "{text}");
        std::fs::remove_file(&path).unwrap();
    }

    /// Regression: `csv:/dev/zero` was read until memory ran out.
    #[cfg(unix)]
    #[test]
    fn devices_and_directories_are_refused_before_reading() {
        for path in ["/dev/zero", "/dev/null", "/"] {
            let err = CsvLoader::open(path).unwrap_err();
            assert!(matches!(err, LoaderError::NotAFile { .. }), "{path}: {err}");
            assert!(
                err.to_string().contains("give the path of a CSV file"),
                "{err}"
            );
        }
    }

    /// Writes `edited` over `path` in place (same inode) and sets its modification time
    /// to `modified`.
    fn edit_in_place(path: &Path, edited: &str, modified: SystemTime) {
        std::fs::write(path, edited).unwrap();
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
    }

    fn modified(path: &Path) -> SystemTime {
        std::fs::metadata(path).unwrap().modified().unwrap()
    }

    /// Regression: a same-size edit turning a time into a far-future one made a range
    /// read stop early and lose rows with no error. Even with the modification time
    /// put back, every row read is checked against the index.
    #[test]
    fn a_same_size_edit_keeping_the_modified_time_is_caught_by_the_rows() {
        let rows = "ts,v\n10,1\n20,2\n30,3\n40,4\n50,5\n60,6\n";
        // (edit from, to, range, what the error says); rows 10 and 40 are indexed.
        let cases = [
            (
                "30,3",
                "99,3",
                (10, 40),
                "line 4 now holds timestamp 99, out of place among the rows checked",
            ),
            (
                "20,2",
                "05,2",
                (10, 40),
                "line 3 now holds timestamp 5, out of place among the rows checked",
            ),
            ("40,4", "41,4", (40, 100), "line 5 now holds timestamp 41"),
            ("60,6", "59,6", (50, 100), "line 7 now holds timestamp 59"),
            // Blank lines as long as the rows they replace.
            ("50,5\n60,6\n", "", (40, 100), "ends after 4 of its 6 rows"),
            ("20,2", "20,x", (10, 40), "line 3 no longer reads"),
            ("20,2", "2x,2", (10, 40), "line 3 no longer reads: "),
        ];
        for eol in ["\n", "\r\n"] {
            for (i, (from, to, (start, end), want)) in cases.iter().enumerate() {
                let name = format!("edited-{i}-{}.csv", eol.len());
                let content = rows.replace('\n', eol);
                let path = write(&name, &content);
                let loader = CsvLoader::open_with(&path, 3, CsvLoader::MAX_ROW_BYTES).unwrap();
                let was = modified(&path);
                let from = from.replace('\n', eol);
                let to = if to.is_empty() {
                    "\n".repeat(from.len())
                } else {
                    to.replace('\n', eol)
                };
                let edited = content.replace(&from, &to);
                assert_eq!(edited.len(), content.len());
                edit_in_place(&path, &edited, was);

                let err = loader.range(*start, *end).unwrap_err();
                let text = err.to_string();
                assert!(text.contains("changed while it was being read"), "{text}");
                assert!(text.contains(want), "{name}: {text}");
                assert!(!err.is_input_error() && !err.is_retryable(), "{text}");
                let newest = loader.newest(*start, *end, 9).unwrap_err().to_string();
                assert!(
                    newest.contains("changed while it was being read"),
                    "{newest}"
                );
            }
        }
    }

    #[test]
    fn a_same_size_edit_is_caught_by_its_modified_time() {
        let content = "ts,v\n10,1\n20,2\n";
        let path = write("touched.csv", content);
        let loader = CsvLoader::open(&path).unwrap();
        let later = modified(&path) + std::time::Duration::from_secs(1);
        edit_in_place(&path, &content.replace("20,2", "20,7"), later);
        let err = loader.range(0, 100).unwrap_err().to_string();
        assert!(
            err.contains("changed while it was being read (modified since it was checked)"),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn another_file_renamed_over_the_path_is_caught() {
        let content = "ts,v\n10,1\n20,2\n";
        let path = write("renamed.csv", content);
        let loader = CsvLoader::open(&path).unwrap();
        let twin = write("renamed-twin.csv", content);
        File::options()
            .write(true)
            .open(&twin)
            .unwrap()
            .set_modified(modified(&path))
            .unwrap();
        std::fs::rename(&twin, &path).unwrap();
        let err = loader.range(0, 100).unwrap_err().to_string();
        assert!(err.contains("(another file now has its name)"), "{err}");
    }

    /// Regression: a 10 MB cell made a 10 MB error line, and a quoted line break put a
    /// raw line break in the message.
    /// Regression: a header of 12,000 columns without a timestamp gave a 913 kB message.
    #[test]
    fn a_list_of_column_names_in_a_message_is_cut_short() {
        let header: Vec<String> = (0..12_000).map(|i| format!("column{i}")).collect();
        let path = write("wide.csv", &format!("{}\n", header.join(",")));
        let text = CsvLoader::open(&path).unwrap_err().to_string();
        assert!(text.contains("no timestamp column"), "{}", &text[..200]);
        assert!(text.len() < 1_000, "{} bytes", text.len());
    }

    #[test]
    fn messages_quote_at_most_80_characters_of_a_cell_on_one_line() {
        let long = "y".repeat(300);
        let cut = format!("'{}…'", &long[..80]);
        let cases = [
            ("long-ts.csv", format!("ts,v\n10,1\n{long},2\n"), cut),
            (
                "long-nan.csv",
                format!("ts,v\n10,1{}\n", "0".repeat(400)),
                "'1000".to_owned(),
            ),
            (
                "long-head.csv",
                format!("{long},v\n10,1\n"),
                format!("(found: {}…,v)", &long[..80]),
            ),
            (
                "break-ts.csv",
                "ts,v\n\"no\non\",1\n".to_owned(),
                r"'no\non'".to_owned(),
            ),
            (
                "escape-ts.csv",
                "ts,v\n\u{1b}[2J,1\n".to_owned(),
                r"'\u{1b}[2J'".to_owned(),
            ),
        ];
        for (name, content, want) in cases {
            let err = CsvLoader::open(write(name, &content))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&want), "{name}: {err}");
            assert!(err.len() < 400, "{name}: {} bytes: {err}", err.len());
            assert!(
                !err.contains('\n') && !err.contains('\u{1b}'),
                "{name}: {err}"
            );
        }
        let loader =
            CsvLoader::open(write("long-text.csv", &format!("ts,v\n10,1\n11,{long}\n"))).unwrap();
        let err = loader
            .check_fields(&["v".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("('{}…' at line 3)", &long[..80])),
            "{err}"
        );
    }

    /// Regression: `1600000000.5` was read as `1600000000`, losing half a second
    /// silently, while the live source refused it.
    #[test]
    fn fractional_epoch_seconds_are_refused_naming_the_line() {
        let path = write("fraction.csv", "ts,v\n10,1\n11.5,2\n");
        let err = CsvLoader::open(&path).unwrap_err();
        let text = err.to_string();
        for want in [
            "fraction.csv line 3: timestamp '11.5' is not whole epoch seconds",
            "ts must be whole epoch seconds or ISO-8601",
        ] {
            assert!(text.contains(want), "{text}");
        }
        assert!(err.is_input_error(), "{text}");
    }
}

//! Node caches: per (upstream, interval), a ring of the last `period` bucketed values.
//!
//! Storage is columnar and mirrored: each slot is written twice, at `k` and `k + period`,
//! so the window in time order is always one contiguous slice per field. A compute
//! function reads `view.input(0).field("close")` as a `&[f64]` with no allocation.
//!
//! Rules for arriving values, per (upstream, interval):
//! - a value belongs to bucket `ts - ts mod interval`;
//! - a bucket after the last one is appended; if it is not exactly `last + interval` the
//!   pair's gap flag is raised and the gap counted;
//! - a bucket equal to one still in the window replaces that payload in place (so a
//!   duplicate is never stored twice and the last timestamp never moves backwards);
//! - an older bucket that falls inside the window's span (a hole) is inserted in time
//!   order, the oldest value leaving a full window;
//! - a bucket older than every value of a full window is dropped and counted as late.
//!
//! History merged by [`NodeCache::backfill_bulk`] never overrides a value already in the
//! cache on the same bucket: values that arrived live win. Completed history ranges are
//! recorded in a [`BackfillState`]. For concurrent live appends and backfill, share the
//! cache as a [`SharedCache`]; each operation takes the lock once, so none is lost.

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use crate::interval::Interval;
use crate::node::{NodeId, NodeSpec};
use crate::time::Timestamp;

/// What happened to an appended value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// A new latest bucket; `gap` when it is not the previous bucket plus one interval.
    New {
        /// Whether a gap was flagged.
        gap: bool,
    },
    /// The bucket was already in the window; its payload was replaced.
    Replaced,
    /// An older bucket missing from the window was inserted in time order.
    Filled,
    /// The bucket is older than a full window; the value was dropped.
    Late,
}

/// A ring of the last `period` values of one upstream at one interval.
#[derive(Debug, Clone)]
pub struct Ring {
    period: usize,
    interval: Interval,
    nfields: usize,
    ts: Vec<Timestamp>,
    values: Vec<f64>,
    start: usize,
    len: usize,
    next: usize,
    last: Option<Timestamp>,
    gap: bool,
    gaps: u64,
    late: u64,
    history_last: Option<Timestamp>,
}

impl Ring {
    /// An empty ring of `period` slots for values with `nfields` fields.
    ///
    /// # Panics
    /// When `period` is 0 (the DAG builder never allows it).
    #[track_caller]
    pub fn new(period: usize, interval: Interval, nfields: usize) -> Ring {
        assert!(period > 0, "a cache ring needs a positive period");
        Ring {
            period,
            interval,
            nfields,
            ts: vec![0; 2 * period],
            values: vec![0.0; 2 * period * nfields],
            start: 0,
            len: 0,
            next: 0,
            last: None,
            gap: false,
            gaps: 0,
            late: 0,
            history_last: None,
        }
    }

    fn write_slot(&mut self, slot: usize, ts: Timestamp, values: &[f64]) {
        let p = self.period;
        self.ts[slot] = ts;
        self.ts[slot + p] = ts;
        for (f, v) in values.iter().enumerate().take(self.nfields) {
            let base = f * 2 * p;
            self.values[base + slot] = *v;
            self.values[base + slot + p] = *v;
        }
    }

    fn push(&mut self, bucket: Timestamp, values: &[f64]) {
        self.write_slot(self.next, bucket, values);
        self.next += 1;
        if self.next == self.period {
            self.next = 0;
        }
        if self.len < self.period {
            self.len += 1;
        }
        self.start = if self.len < self.period { 0 } else { self.next };
        self.last = Some(bucket);
    }

    fn clear(&mut self) {
        self.start = 0;
        self.len = 0;
        self.next = 0;
    }

    /// Appends a live value at `ts` (bucketed here) following the rules in the module docs.
    pub fn append(&mut self, ts: Timestamp, values: &[f64]) -> Appended {
        // The common case, the bucket right after the last one, needs no division.
        let step = self.interval.secs_i64();
        if let Some(next) = self.last.and_then(|last| last.checked_add(step)) {
            if ts >= next && (ts.wrapping_sub(next) as u64) < step as u64 {
                self.gap = false;
                self.push(next, values);
                return Appended::New { gap: false };
            }
        }
        let bucket = self.interval.bucket(ts);
        let outcome = match self.last {
            None => Appended::New { gap: false },
            Some(last) if bucket > last => Appended::New {
                gap: bucket != last + self.interval.secs_i64(),
            },
            Some(_) => match self.timestamps().binary_search(&bucket) {
                Ok(i) => {
                    let slot = (self.start + i) % self.period;
                    self.write_slot(slot, bucket, values);
                    return Appended::Replaced;
                }
                Err(0) if self.is_full() => {
                    self.late += 1;
                    return Appended::Late;
                }
                Err(i) => {
                    self.insert_at(i, bucket, values);
                    return Appended::Filled;
                }
            },
        };
        if let Appended::New { gap } = outcome {
            self.gap = gap;
            self.gaps += u64::from(gap);
            self.push(bucket, values);
        }
        outcome
    }

    /// Inserts `bucket` at window position `i` (a hole), dropping the oldest value of a
    /// full window. Rare, so it rebuilds the window rather than shifting in place.
    fn insert_at(&mut self, i: usize, bucket: Timestamp, values: &[f64]) {
        let nf = self.nfields;
        let mut rows: Vec<(Timestamp, Vec<f64>)> = (0..self.len)
            .map(|k| {
                (
                    self.timestamps()[k],
                    (0..nf).map(|f| self.field_at(f)[k]).collect(),
                )
            })
            .collect();
        rows.insert(i, (bucket, values.iter().copied().take(nf).collect()));
        let skip = rows.len().saturating_sub(self.period);
        let last = self.last;
        self.clear();
        for (ts, v) in rows.into_iter().skip(skip) {
            self.push(ts, &v);
        }
        self.last = last;
    }

    /// Merges sorted history; existing values win on equal buckets. Returns the number of
    /// gaps found inside the history (continuing from the previous history merge).
    fn merge_history(&mut self, rows: &BulkRows<'_>) -> u64 {
        let iv = self.interval;
        let step = iv.secs_i64();

        // Count gaps across the history, continuing from the last merged row.
        let mut gaps = 0;
        let mut prev = self.history_last;
        for &ts in rows.ts {
            let b = iv.bucket(ts);
            if let Some(p) = prev {
                if b > p + step {
                    gaps += 1;
                }
                if b < p {
                    continue;
                }
            }
            prev = Some(b);
        }
        self.history_last = prev;
        self.gaps += gaps;

        // Take the newest `period` distinct buckets of the union, existing values first.
        let p = self.period;
        let mut picked: Vec<(Timestamp, Source)> = Vec::with_capacity(2 * p);
        let existing = self.timestamps();
        let (mut e, mut h) = (existing.len(), rows.ts.len());
        while picked.len() < p && (e > 0 || h > 0) {
            let eb = if e > 0 { Some(existing[e - 1]) } else { None };
            let hb = if h > 0 {
                Some(iv.bucket(rows.ts[h - 1]))
            } else {
                None
            };
            let (bucket, src) = match (eb, hb) {
                (Some(x), Some(y)) if x == y => {
                    h -= 1;
                    e -= 1;
                    (x, Source::Cache(e))
                }
                (Some(x), Some(y)) if x > y => {
                    e -= 1;
                    (x, Source::Cache(e))
                }
                (Some(_), Some(y)) | (None, Some(y)) => {
                    h -= 1;
                    (y, Source::History(h))
                }
                (Some(x), None) => {
                    e -= 1;
                    (x, Source::Cache(e))
                }
                (None, None) => break,
            };
            // Several history rows in one bucket: the latest row (seen first) is kept.
            if picked.last().is_some_and(|(b, _)| *b == bucket) {
                continue;
            }
            picked.push((bucket, src));
        }

        // Rebuild the window in time order from a copy of the picked values.
        let nf = self.nfields;
        let mut copied = Vec::with_capacity(picked.len() * nf);
        for (_, src) in picked.iter().rev() {
            for f in 0..nf {
                copied.push(match *src {
                    Source::Cache(i) => self.field_at(f)[i],
                    Source::History(i) => rows.columns.get(f).map_or(f64::NAN, |c| c[i]),
                });
            }
        }
        let previous_last = self.last;
        self.clear();
        for (k, (bucket, _)) in picked.iter().rev().enumerate() {
            self.push(*bucket, &copied[k * nf..(k + 1) * nf]);
        }
        self.last = match (previous_last, self.last) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        gaps
    }

    /// The buckets in the window, oldest first.
    pub fn timestamps(&self) -> &[Timestamp] {
        &self.ts[self.start..self.start + self.len]
    }

    /// Field `f` over the window, oldest first.
    ///
    /// # Panics
    /// When `f` is not below the field count.
    #[track_caller]
    pub fn field_at(&self, f: usize) -> &[f64] {
        assert!(
            f < self.nfields,
            "field index {f} out of range ({} fields)",
            self.nfields
        );
        let base = f * 2 * self.period + self.start;
        &self.values[base..base + self.len]
    }

    /// How many values the window holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The interval of the values.
    pub fn interval(&self) -> Interval {
        self.interval
    }

    /// The window length when full.
    pub fn period(&self) -> usize {
        self.period
    }

    /// Whether the window holds `period` values.
    pub fn is_full(&self) -> bool {
        self.len == self.period
    }

    /// The latest bucket ever stored (never moves backwards).
    pub fn last_timestamp(&self) -> Option<Timestamp> {
        self.last
    }

    /// Whether the latest append raised the gap flag.
    pub fn gap_flag(&self) -> bool {
        self.gap
    }

    /// Gaps counted so far (live and history).
    pub fn gaps(&self) -> u64 {
        self.gaps
    }

    /// Late values dropped so far.
    pub fn late(&self) -> u64 {
        self.late
    }
}

#[derive(Debug, Clone, Copy)]
enum Source {
    Cache(usize),
    History(usize),
}

/// Sorted history rows for one upstream, borrowed column by column.
#[derive(Debug, Clone, Copy)]
pub struct BulkRows<'a> {
    /// Timestamps, ascending.
    pub ts: &'a [Timestamp],
    /// One slice per field, each as long as `ts`, in the upstream's field order.
    pub columns: &'a [&'a [f64]],
}

/// Completed history ranges of one (upstream, interval), as inclusive bucket ranges.
///
/// Ranges are of bucket starts. Ranges that overlap or touch at the interval step are
/// merged: `[0, 3600]` and `[7200, 10800]` at one hour become `[0, 10800]`.
#[derive(Debug, Clone)]
pub struct BackfillState {
    interval: Interval,
    ranges: Vec<(Timestamp, Timestamp)>,
}

impl BackfillState {
    /// No completed range yet.
    pub fn new(interval: Interval) -> Self {
        BackfillState {
            interval,
            ranges: Vec::new(),
        }
    }

    /// Records `[start, end]` (inclusive, in seconds) as loaded. Only buckets wholly
    /// inside it are recorded: a bucket loaded in part is not complete.
    pub fn mark(&mut self, start: Timestamp, end: Timestamp) {
        let step = self.interval.secs_i64();
        let a = self.interval.bucket_ceil(start);
        let b = self
            .interval
            .bucket(end.saturating_add(1))
            .saturating_sub(step);
        if a > b {
            return;
        }
        let mut merged = (a, b);
        let mut kept = Vec::with_capacity(self.ranges.len() + 1);
        for &(s, e) in &self.ranges {
            if e.saturating_add(step) < merged.0 || merged.1.saturating_add(step) < s {
                kept.push((s, e));
            } else {
                merged = (merged.0.min(s), merged.1.max(e));
            }
        }
        kept.push(merged);
        kept.sort_unstable();
        self.ranges = kept;
    }

    /// Whether every bucket touching `[start, end]` (inclusive) was wholly loaded.
    pub fn is_complete(&self, start: Timestamp, end: Timestamp) -> bool {
        let (a, b) = (self.interval.bucket(start), self.interval.bucket(end));
        a > b || self.ranges.iter().any(|&(s, e)| s <= a && b <= e)
    }

    /// The merged ranges, ascending.
    pub fn ranges(&self) -> &[(Timestamp, Timestamp)] {
        &self.ranges
    }
}

/// Why a cache operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// The node does not read that upstream at that interval.
    #[error("node {node} has no input {upstream} at interval {interval}")]
    UnknownInput {
        /// The cache's node.
        node: NodeId,
        /// The upstream asked for.
        upstream: NodeId,
        /// The interval asked for.
        interval: Interval,
    },
    /// History rows not in ascending time order.
    #[error("history for node {node} from {upstream} is out of order at row {row}")]
    Unsorted {
        /// The cache's node.
        node: NodeId,
        /// The upstream.
        upstream: NodeId,
        /// The first row out of order.
        row: usize,
    },
}

/// One input of a node: which upstream, its fields, its ring and its backfill state.
#[derive(Debug)]
pub struct InputCache {
    upstream: NodeId,
    fields: Arc<[String]>,
    ring: Ring,
    state: BackfillState,
    reads: Cell<u64>,
    last_read: Cell<Option<Timestamp>>,
}

impl InputCache {
    /// The upstream's id.
    pub fn upstream(&self) -> &NodeId {
        &self.upstream
    }
    /// The ring of recent values.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }
    /// The completed history ranges.
    pub fn state(&self) -> &BackfillState {
        &self.state
    }
    /// How many tracked reads compute functions made of this input.
    pub fn reads(&self) -> u64 {
        self.reads.get()
    }
    /// The latest bucket a tracked read saw.
    pub fn last_read(&self) -> Option<Timestamp> {
        self.last_read.get()
    }
    /// The upstream's field names.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }
}

/// The cache of one node: one [`InputCache`] per declared input.
#[derive(Debug)]
pub struct NodeCache {
    node: NodeId,
    inputs: Vec<InputCache>,
}

/// A cache shared between a live feed and backfill jobs.
pub type SharedCache = Arc<Mutex<NodeCache>>;

impl NodeCache {
    /// A cache for `node` over `inputs` = (upstream id, interval, upstream fields), each
    /// with `period` slots.
    pub fn new(node: NodeId, period: usize, inputs: &[(NodeId, Interval, Arc<[String]>)]) -> Self {
        let inputs = inputs
            .iter()
            .map(|(upstream, interval, fields)| InputCache {
                upstream: upstream.clone(),
                fields: fields.clone(),
                ring: Ring::new(period, *interval, fields.len()),
                state: BackfillState::new(*interval),
                reads: Cell::new(0),
                last_read: Cell::new(None),
            })
            .collect();
        NodeCache { node, inputs }
    }

    /// The cache of a stream input: one input, the stream itself.
    pub fn for_stream(spec: &NodeSpec) -> Self {
        let fields: Arc<[String]> = spec.fields.clone().into();
        NodeCache::new(
            spec.id.clone(),
            spec.period,
            &[(spec.id.clone(), spec.interval, fields)],
        )
    }

    /// The node this cache belongs to.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The inputs, in declaration order.
    pub fn inputs(&self) -> &[InputCache] {
        &self.inputs
    }

    /// The position of the input reading `upstream` at `interval`.
    ///
    /// # Errors
    /// [`CacheError::UnknownInput`] when the node has no such input.
    pub fn input_index(&self, upstream: &NodeId, interval: Interval) -> Result<usize, CacheError> {
        self.inputs
            .iter()
            .position(|i| &i.upstream == upstream && i.ring.interval == interval)
            .ok_or_else(|| CacheError::UnknownInput {
                node: self.node.clone(),
                upstream: upstream.clone(),
                interval,
            })
    }

    /// Appends a live value to input `input` (see the module docs for the rules).
    ///
    /// # Panics
    /// When `input` is not below the number of inputs.
    #[track_caller]
    pub fn append(&mut self, input: usize, ts: Timestamp, values: &[f64]) -> Appended {
        self.inputs[input].ring.append(ts, values)
    }

    /// Appends a live value from `upstream` at `interval`.
    ///
    /// # Errors
    /// [`CacheError::UnknownInput`] when the node does not read that pair.
    pub fn append_from(
        &mut self,
        upstream: &NodeId,
        interval: Interval,
        ts: Timestamp,
        values: &[f64],
    ) -> Result<Appended, CacheError> {
        let i = self.input_index(upstream, interval)?;
        Ok(self.append(i, ts, values))
    }

    /// Merges history for `[start, end)` from `upstream` at `interval`: values already in
    /// the cache win on equal buckets, the newest `period` buckets are kept, and the range
    /// is recorded as complete. Returns the gaps found inside the history.
    ///
    /// # Errors
    /// [`CacheError::UnknownInput`] for a pair the node does not read, and
    /// [`CacheError::Unsorted`] when `rows.ts` is not ascending (nothing is merged).
    pub fn backfill_bulk(
        &mut self,
        upstream: &NodeId,
        interval: Interval,
        rows: BulkRows<'_>,
        range: (Timestamp, Timestamp),
    ) -> Result<u64, CacheError> {
        let i = self.input_index(upstream, interval)?;
        if let Some(row) = rows.ts.windows(2).position(|w| w[1] < w[0]) {
            return Err(CacheError::Unsorted {
                node: self.node.clone(),
                upstream: upstream.clone(),
                row: row + 1,
            });
        }
        let input = &mut self.inputs[i];
        let gaps = input.ring.merge_history(&rows);
        if range.1 > range.0 {
            input.state.mark(range.0, range.1 - 1);
        }
        Ok(gaps)
    }

    /// Whether every declared input holds `period` values. A node with no inputs (an
    /// unresolved tag query) is never ready.
    pub fn ready(&self) -> bool {
        !self.inputs.is_empty() && self.inputs.iter().all(|i| i.ring.is_full())
    }

    /// Whether every input's newest bucket is the bucket of `ts` at that input's interval.
    pub fn all_inputs_at(&self, ts: Timestamp) -> bool {
        self.inputs
            .iter()
            .all(|i| i.ring.last == Some(i.ring.interval.bucket(ts)))
    }

    /// Whether any input's latest append raised the gap flag.
    pub fn gap_flag(&self) -> bool {
        self.inputs.iter().any(|i| i.ring.gap)
    }

    /// Gaps counted over all inputs.
    pub fn gaps(&self) -> u64 {
        self.inputs.iter().map(|i| i.ring.gaps).sum()
    }

    /// A read-only view for compute functions, without access tracking.
    pub fn view(&self) -> CacheView<'_> {
        CacheView {
            cache: self,
            track: false,
        }
    }

    /// A read-only view that counts reads per input (see [`InputCache::reads`]).
    pub fn tracked_view(&self) -> CacheView<'_> {
        CacheView {
            cache: self,
            track: true,
        }
    }
}

/// What a compute function sees: read-only windows of its node's inputs.
#[derive(Clone, Copy)]
pub struct CacheView<'a> {
    cache: &'a NodeCache,
    track: bool,
}

impl<'a> CacheView<'a> {
    /// The window of input `i`, in the order the node declared its inputs.
    ///
    /// # Panics
    /// When the node has fewer than `i + 1` inputs: that is a mistake in the compute
    /// function, not in the data.
    #[track_caller]
    pub fn input(&self, i: usize) -> Window<'a> {
        let n = self.cache.inputs.len();
        assert!(
            i < n,
            "compute read input {i}, but the node declares {n} inputs"
        );
        Window {
            input: &self.cache.inputs[i],
            track: self.track,
        }
    }

    /// The window of `upstream` at `interval`, if the node reads that pair.
    pub fn get(&self, upstream: &NodeId, interval: Interval) -> Option<Window<'a>> {
        let i = self.cache.input_index(upstream, interval).ok()?;
        Some(Window {
            input: &self.cache.inputs[i],
            track: self.track,
        })
    }

    /// How many inputs the node has.
    pub fn input_count(&self) -> usize {
        self.cache.inputs.len()
    }
}

/// The cached values of one input, oldest first.
#[derive(Clone, Copy)]
pub struct Window<'a> {
    input: &'a InputCache,
    track: bool,
}

impl<'a> Window<'a> {
    fn touch(&self) {
        if self.track {
            let i = self.input;
            i.reads.set(i.reads.get() + 1);
            i.last_read.set(i.ring.timestamps().last().copied());
        }
    }

    /// How many values the window holds.
    pub fn len(&self) -> usize {
        self.input.ring.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.input.ring.len == 0
    }

    /// The upstream's interval.
    pub fn interval(&self) -> Interval {
        self.input.ring.interval
    }

    /// The buckets, oldest first.
    pub fn timestamps(&self) -> &'a [Timestamp] {
        self.touch();
        self.input.ring.timestamps()
    }

    /// The values of the field named `name` (case-insensitive), oldest first.
    pub fn field(&self, name: &str) -> Option<&'a [f64]> {
        let f = self.field_index(name)?;
        Some(self.field_at(f))
    }

    /// The sum of the field named `name` (case-insensitive) over the window; see
    /// [`Window::sum_at`].
    pub fn sum(&self, name: &str) -> Option<f64> {
        let f = self.field_index(name)?;
        Some(self.sum_at(f))
    }

    /// The mean of the field named `name` (case-insensitive) over the window: NaN for an
    /// empty window; see [`Window::sum_at`] for how the values are added.
    pub fn mean(&self, name: &str) -> Option<f64> {
        let f = self.field_index(name)?;
        Some(self.sum_at(f) / self.len() as f64)
    }

    /// The sum of field number `f` over the window, 0 for an empty window.
    ///
    /// The values are added in eight interleaved lanes (value `k` into lane `k mod 8`,
    /// oldest first), then the lanes pairwise. The result depends only on the values in
    /// the window, so every run that holds the same window gets the same bits, however
    /// the values arrived; it may differ from a left-to-right sum in the last bits.
    ///
    /// # Panics
    /// When `f` is not below the upstream's field count.
    #[track_caller]
    pub fn sum_at(&self, f: usize) -> f64 {
        lane_sum(self.field_at(f))
    }

    /// The position of field `name` (case-insensitive) in the upstream's schema.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.input
            .fields
            .iter()
            .position(|f| f.eq_ignore_ascii_case(name))
    }

    /// The values of field number `f`, oldest first.
    ///
    /// # Panics
    /// When `f` is not below the upstream's field count.
    #[track_caller]
    pub fn field_at(&self, f: usize) -> &'a [f64] {
        self.touch();
        self.input.ring.field_at(f)
    }

    /// The newest entry.
    pub fn latest(&self) -> Option<Entry<'a>> {
        self.touch();
        self.len().checked_sub(1).map(|index| Entry {
            window: *self,
            index,
        })
    }

    /// The entries, oldest first.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Entry<'a>> + 'a {
        self.touch();
        let window = *self;
        (0..self.len()).map(move |index| Entry { window, index })
    }
}

/// Lanes of [`lane_sum`]: eight independent additions per step keep the adder busy.
const LANES: usize = 8;

/// Sums `values` in [`LANES`] interleaved lanes, then the lanes pairwise.
fn lane_sum(values: &[f64]) -> f64 {
    let mut lanes = [0.0; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    for (lane, v) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane += v;
    }
    let [a, b, c, d, e, f, g, h] = lanes;
    ((a + b) + (c + d)) + ((e + f) + (g + h))
}

/// One cached value: a bucket and its payload.
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    window: Window<'a>,
    index: usize,
}

impl Entry<'_> {
    /// The bucket.
    pub fn ts(&self) -> Timestamp {
        self.window.input.ring.timestamps()[self.index]
    }

    /// The value of field `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<f64> {
        let f = self.window.field_index(name)?;
        Some(self.value(f))
    }

    /// The value of field number `f`.
    ///
    /// # Panics
    /// When `f` is not below the upstream's field count.
    #[track_caller]
    pub fn value(&self, f: usize) -> f64 {
        self.window.input.ring.field_at(f)[self.index]
    }
}

#[cfg(test)]
mod tests;

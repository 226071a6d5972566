//! The CSV source streams: a tracking global allocator shows that opening a large file
//! and fetching a small range or the newest rows keeps a live heap far below the file's
//! size, and that a file with a line far longer than a row may be (NUL bytes, no line
//! break) is refused after reading about one row's limit of it. The tests take turns
//! (see [`one_at_a_time`]) so that no other test allocates while one measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use qmtl::sources::CsvLoader;
use qmtl::{CacheLoader, Interval, NodeId};

struct Tracking;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// The most the heap grows above its level before `f`, while `f` runs.
fn peak_growth_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// Held for the whole of a test that measures the heap.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

const ROWS: i64 = 300_000;
const FIRST_TS: i64 = 1_600_000_000;

/// Writes `ROWS` hourly bars and returns the file's size in bytes.
fn write_bars(path: &std::path::Path) -> u64 {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, "ts,open,high,low,close,volume").unwrap();
    for i in 0..ROWS {
        let close = 1.1 + (i % 1000) as f64 / 10_000.0;
        writeln!(
            out,
            "{},{close:.5},{:.5},{:.5},{close:.5},{}",
            FIRST_TS + 3600 * i,
            close + 0.001,
            close - 0.001,
            1000 + i % 97
        )
        .unwrap();
    }
    out.into_inner().unwrap().sync_all().unwrap();
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn opening_a_large_csv_and_fetching_a_small_range_keeps_memory_far_below_its_size() {
    let _turn = one_at_a_time();
    let dir = std::env::temp_dir().join(format!("qmtl-csv-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bars.csv");
    let file_bytes = write_bars(&path);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (node, interval) = (NodeId::from_hex("n"), Interval::HOUR);
    let ts_at = |row: i64| FIRST_TS + 3600 * row;

    // Open, fetch 500 rows from the middle and the newest 200 before a point near the end.
    let ((rows, middle, newest), peak) = peak_growth_during(|| {
        let loader = CsvLoader::open(&path).unwrap();
        let middle = runtime
            .block_on(loader.fetch(ts_at(150_000), ts_at(150_500), &node, interval))
            .unwrap();
        let newest = runtime
            .block_on(loader.fetch_last(ts_at(0), ts_at(299_000), 200, &node, interval))
            .unwrap()
            .unwrap();
        (loader.len(), middle, newest)
    });

    // The answers are right.
    assert_eq!(rows, ROWS as usize);
    let ts = |b: &arrow_array::RecordBatch| {
        let ts = b.column_by_name("ts").unwrap().as_primitive::<Int64Type>();
        (b.num_rows(), ts.value(0), ts.value(b.num_rows() - 1))
    };
    assert_eq!(ts(&middle), (500, ts_at(150_000), ts_at(150_499)));
    assert_eq!(ts(&newest), (200, ts_at(298_800), ts_at(298_999)));
    assert_eq!(middle.num_columns(), 6);

    // The heap never held more than a small fraction of the file.
    let bound = 1 << 20;
    eprintln!("peak live heap {peak} bytes for a {file_bytes}-byte file");
    assert!(
        file_bytes > 8 * bound as u64,
        "the file is {file_bytes} bytes"
    );
    assert!(
        peak < bound,
        "peak live heap {peak} bytes for a {file_bytes}-byte file (bound {bound})"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Regression: a 1.5 GB line after a valid row took 2.1 GB of memory before its error,
/// and 3 GB of NUL bytes (`truncate -s 3G`) aborted the process on a 4 GiB allocation.
/// Both files are sparse, so they cost no disk.
#[test]
fn a_line_far_longer_than_a_row_is_refused_with_memory_far_below_its_size() {
    let _turn = one_at_a_time();
    let dir = std::env::temp_dir().join(format!("qmtl-csv-long-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bound = 8 << 20;
    for (name, head, size, line) in [
        ("long-line.csv", "ts,v\n1600000000,1\n", 3 << 29, "line 3"),
        ("zeros.csv", "", 3 << 30, "line 1"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, head).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(size)
            .unwrap();

        let (err, peak) = peak_growth_during(|| CsvLoader::open(&path).unwrap_err());

        let want = format!("{line} is longer than 1 MiB; is this a CSV file?");
        assert!(err.to_string().contains(&want), "{name}: {err}");
        assert!(err.is_input_error(), "{name}: {err}");
        eprintln!("peak live heap {peak} bytes refusing a {size}-byte {name}");
        assert!(
            peak < bound,
            "{name}: peak live heap {peak} bytes (bound {bound})"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

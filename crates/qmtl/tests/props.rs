//! Property tests of the parsers at the edge of the library: source specs (`SPEC` and
//! `NAME=SPEC`), intervals, timestamps and CSV files. Each parser is total (any input is
//! a value or an error, never a panic), and what it accepts reads back as written.
//! Case counts are set here so that the whole file runs in seconds under `cargo test`.

use std::path::PathBuf;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::RecordBatch;
use proptest::prelude::*;
use qmtl::sources::{CsvLoader, Flavor, SourceMap, SourceSpec};
use qmtl::time::{format_timestamp, parse_timestamp, parse_whole_timestamp, TimeError};
use qmtl::{CacheLoader, Interval, IntervalError, LoaderError};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A file in this test run's own temporary directory.
fn temp_file(name: &str, content: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qmtl-props-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// A file name unique within this process, so parallel cases never share one.
fn unique(stem: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{stem}-{}.csv", NEXT.fetch_add(1, Ordering::Relaxed))
}

// ---- source specs ----

/// Text that looks like the start of a spec more often than uniform noise would.
fn spec_text() -> impl Strategy<Value = String> {
    let head = prop::sample::select(vec![
        "",
        "csv:",
        "CSV:",
        "questdb:",
        "postgres:",
        "postgresql://",
        "postgres://",
        "ftp:",
        "bars=",
        "=",
        "a=csv:",
        " ",
        "x=postgres:",
    ]);
    (head, "[ -~]{0,40}").prop_map(|(h, t)| format!("{h}{t}"))
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_text_is_a_spec_or_an_error_never_a_panic(text in "\\PC{0,60}") {
        let _ = text.parse::<SourceSpec>().map(|s| s.to_string());
        let _ = SourceMap::parse(&[text.as_str()]);
    }

    #[test]
    fn spec_shaped_text_is_a_spec_or_an_error_that_says_what_to_write(
        args in prop::collection::vec(spec_text(), 1..4),
    ) {
        match SourceMap::parse(&args) {
            Ok(map) => prop_assert!(!map.is_empty()),
            Err(e) => {
                let text = e.to_string();
                prop_assert!(
                    ["write", "known schemes", "give one"].iter().any(|w| text.contains(w)),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn a_csv_spec_reads_back_from_its_display(path in "[A-Za-z0-9_./-][A-Za-z0-9_ ./-]{0,30}") {
        let path = path.trim_end().to_owned();
        let spec: SourceSpec = format!("csv:{path}").parse().unwrap();
        prop_assert_eq!(&spec, &SourceSpec::Csv(PathBuf::from(&path)));
        prop_assert_eq!(spec.to_string().parse::<SourceSpec>().unwrap(), spec);
    }

    #[test]
    fn a_password_never_shows_in_a_spec_or_its_error(
        user in "[a-z]{1,8}",
        secret in "[A-Za-z0-9]{10,16}",
        host in prop::sample::select(vec!["", "db.example", "127.0.0.1"]),
        form in 0usize..5,
    ) {
        let password = format!("Pw{secret}");
        let at = if host.is_empty() { String::new() } else { format!("{host}:5432") };
        let text = match form {
            0 => format!("questdb:postgresql://{user}:{password}@{at}/qdb"),
            1 => format!("postgresql://{user}:{password}@{at}/db"),
            2 => format!("bars=postgres:postgresql://{user}:{password}@{at}/db"),
            3 => format!("=postgres://{user}:{password}@{at}/db"),
            _ => format!("host={host} user={user} password={password} dbname=q"),
        };
        let shown = match SourceMap::parse(&[text.as_str()]) {
            Ok(map) => format!("{map:?} {}", map.for_stream("bars").unwrap()),
            Err(e) => e.to_string(),
        };
        prop_assert!(!shown.contains(&password), "{text} -> {shown}");
    }

    #[test]
    fn a_database_spec_reads_back_from_its_display(
        user in "[a-z]{1,8}",
        host in "[a-z]{1,8}(\\.[a-z]{1,5})?",
        port in 1u16..,
        db in "[a-z]{1,8}",
        questdb in any::<bool>(),
    ) {
        let scheme = if questdb { "questdb:" } else { "" };
        let text = format!("{scheme}postgresql://{user}:pw@{host}:{port}/{db}");
        let Ok(SourceSpec::Postgres(first)) = text.parse::<SourceSpec>() else {
            return Err(TestCaseError::fail(format!("{text} is not a database spec")));
        };
        let flavor = if questdb { Flavor::QuestDb } else { Flavor::Postgres };
        prop_assert_eq!(first.flavor(), flavor);
        prop_assert_eq!(first.user(), user.as_str());
        prop_assert_eq!(first.addr(), format!("{host}:{port}"));
        let Ok(SourceSpec::Postgres(again)) = first.to_string().parse::<SourceSpec>() else {
            return Err(TestCaseError::fail(format!("{first} does not parse back")));
        };
        prop_assert_eq!(again.flavor(), flavor);
        prop_assert_eq!(again.addr(), first.addr());
    }

    #[test]
    fn named_specs_feed_their_stream_and_the_default_feeds_the_rest(
        names in prop::collection::btree_set("[a-z]{1,6}", 0..4),
        default in any::<bool>(),
    ) {
        let mut args: Vec<String> =
            names.iter().map(|n| format!("{n}=csv:{n}.csv")).collect();
        if default {
            args.push("csv:all.csv".to_owned());
        }
        let map = SourceMap::parse(&args).unwrap();
        for name in &names {
            let want = SourceSpec::Csv(format!("{name}.csv").into());
            prop_assert_eq!(map.for_stream(name), Some(&want));
        }
        let other = map.for_stream("OTHER");
        prop_assert_eq!(other.is_some(), default);
    }
}

// ---- intervals ----

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_text_is_an_interval_or_an_error_quoting_it(text in "\\PC{0,24}") {
        match text.parse::<Interval>() {
            Ok(i) => prop_assert!(i.secs() > 0 && i.secs() <= i64::MAX as u64),
            Err(e) => prop_assert!(e.to_string().contains(&text), "{e}"),
        }
    }

    #[test]
    fn an_interval_reads_back_from_display_human_form_and_json(secs in 1u64..=i64::MAX as u64) {
        let interval = Interval::from_secs(secs).unwrap();
        prop_assert_eq!(interval.to_string().parse::<Interval>(), Ok(interval));
        prop_assert_eq!(interval.human().parse::<Interval>(), Ok(interval));
        let json = serde_json::to_string(&interval).unwrap();
        prop_assert_eq!(serde_json::from_str::<Interval>(&json).unwrap(), interval);
    }

    #[test]
    fn a_number_with_a_unit_is_that_many_seconds_or_too_large(
        n in prop_oneof![0u64..100_000, any::<u64>()],
        unit in prop::sample::select(vec![("", 1u64), ("s", 1), ("S", 1), ("m", 60),
            ("M", 60), ("h", 3600), ("H", 3600), ("d", 86_400), ("D", 86_400)]),
        pad in prop::sample::select(vec!["", " ", "\t"]),
    ) {
        let text = format!("{pad}{n}{}{pad}", unit.0);
        let got = text.parse::<Interval>();
        match n.checked_mul(unit.1) {
            Some(0) => prop_assert!(matches!(got, Err(IntervalError::Zero { .. })), "{got:?}"),
            Some(s) if s <= i64::MAX as u64 => prop_assert_eq!(got.map(Interval::secs), Ok(s)),
            _ => prop_assert!(matches!(got, Err(IntervalError::TooLarge { .. })), "{got:?}"),
        }
        let negative = format!("-{}{}", n.max(1), unit.0).parse::<Interval>();
        prop_assert!(matches!(negative, Err(IntervalError::Negative { .. })), "{negative:?}");
    }

    #[test]
    fn a_bucket_is_the_aligned_start_at_or_before_the_timestamp(
        secs in prop_oneof![1u64..100_000, 1u64..=i64::MAX as u64],
        ts in any::<i64>(),
    ) {
        let interval = Interval::from_secs(secs).unwrap();
        let b = interval.bucket(ts);
        prop_assert!(b <= ts);
        if b > i64::MIN {
            prop_assert_eq!(b.rem_euclid(secs as i64), 0);
            prop_assert!((ts - b) < secs as i64);
        }
        let c = interval.bucket_ceil(ts);
        prop_assert!(c >= ts || c == i64::MAX || b == i64::MIN);
    }
}

// ---- timestamps ----

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_text_is_a_timestamp_or_an_error_never_a_panic(text in "\\PC{0,32}") {
        let _ = parse_timestamp(&text);
    }

    #[test]
    fn date_shaped_text_is_a_timestamp_or_an_error_never_a_panic(
        text in "-?[0-9]{1,6}-[0-9]{1,2}-[0-9]{1,2}([ T][0-9]{1,2}:[0-9]{1,2}(:[0-9]{1,2}\
                 (\\.[0-9]{0,12})?)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?",
    ) {
        let _ = parse_timestamp(&text);
    }

    #[test]
    fn epoch_seconds_read_back_as_integers_and_as_iso_8601(
        // Years 0001 to 9999, the range ISO-8601 writes with four digits.
        ts in -62_135_596_800i64..253_402_300_800,
    ) {
        prop_assert_eq!(parse_timestamp(&format_timestamp(ts)), Ok(ts));
        // Integers from 10^11 up read as milliseconds or finer, by design.
        if ts.unsigned_abs() < 100_000_000_000 {
            prop_assert_eq!(parse_timestamp(&ts.to_string()), Ok(ts));
            prop_assert_eq!(parse_timestamp(&format!("{ts}.999")), Ok(ts));
        }
    }

    #[test]
    fn whole_seconds_take_a_zero_fraction_and_refuse_any_other(
        ts in -99_999_999_999i64..100_000_000_000,
        zeros in 1usize..20,
        fraction in "[0-9]{0,8}[1-9][0-9]{0,8}",
    ) {
        let whole = format!("{ts}.{}", "0".repeat(zeros));
        prop_assert_eq!(parse_whole_timestamp(&whole), Ok(ts));
        let text = format!("{ts}.{fraction}");
        let err = parse_whole_timestamp(&text).unwrap_err();
        prop_assert!(matches!(err, TimeError::Fractional { .. }), "{}: {}", text, err);
        prop_assert!(err.to_string().contains("is not whole epoch seconds"), "{}", err);
    }

    #[test]
    fn whole_seconds_parse_as_any_timestamp_but_for_a_fraction(
        text in "[-0-9.:TZ ]{0,24}|\\PC{0,24}",
    ) {
        match (parse_whole_timestamp(&text), parse_timestamp(&text)) {
            (Err(TimeError::Fractional { .. }), lenient) => {
                prop_assert!(lenient.is_ok(), "{}", text)
            }
            (strict, lenient) => prop_assert_eq!(strict, lenient),
        }
    }

    #[test]
    fn integers_too_large_for_seconds_name_their_unit(magnitude in 100_000_000_000i64..) {
        for value in [magnitude, -magnitude] {
            let err = parse_timestamp(&value.to_string()).unwrap_err();
            let TimeError::WrongUnit { unit, div, .. } = err else {
                return Err(TestCaseError::fail(format!("{value}: {err}")));
            };
            prop_assert!(["milliseconds", "microseconds", "nanoseconds"].contains(&unit));
            let hint = format!("divide by {div}");
            prop_assert!(err.to_string().contains(&hint), "{err}");
        }
    }
}

// ---- CSV files ----

/// Lines that stress the row parser: cells near the accepted forms and CSV syntax.
fn csv_line() -> impl Strategy<Value = String> {
    let cell = prop_oneof![
        Just(String::new()),
        (-2_000i64..2_000).prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "NaN",
            "inf",
            "-inf",
            "1e400",
            "x",
            "\"",
            "\"a,b\"",
            "\u{feff}",
            "2020-01-01",
            "1492592400000",
            " 7 ",
            "1.5",
            "\r",
        ])
        .prop_map(str::to_owned),
        "[ -~]{0,6}",
    ];
    prop::collection::vec(cell, 1..4).prop_map(|cells| cells.join(","))
}

/// The line number a refusal names, if any.
fn named_line(err: &LoaderError) -> Option<u64> {
    match err {
        LoaderError::BadTimestamp { line, .. }
        | LoaderError::NullTimestamp { line, .. }
        | LoaderError::Unsorted { line, .. }
        | LoaderError::NonFinite { line, .. } => Some(*line),
        LoaderError::Csv { source, .. } => source.position().map(|p| p.line()),
        _ => None,
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a [f64] {
    batch
        .column_by_name(name)
        .unwrap()
        .as_primitive::<Float64Type>()
        .values()
}

fn ts_of(batch: &RecordBatch) -> Vec<i64> {
    batch
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .to_vec()
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn arbitrary_bytes_are_a_loader_or_an_error_never_a_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let path = temp_file(&unique("bytes"), &bytes);
        if let Ok(loader) = CsvLoader::open(&path) {
            let _ = loader.range(i64::MIN, i64::MAX);
            let _ = loader.newest(i64::MIN, i64::MAX, 3);
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn every_refused_data_row_is_named_by_its_line(
        lines in prop::collection::vec(csv_line(), 1..12),
        crlf in any::<bool>(),
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut content = format!("ts,v,w{eol}");
        for line in &lines {
            content.push_str(line);
            content.push_str(eol);
        }
        let path = temp_file(&unique("lines"), content.as_bytes());
        match CsvLoader::open(&path) {
            Ok(loader) => {
                let all = loader.range(i64::MIN, i64::MAX).unwrap();
                prop_assert_eq!(all.num_rows(), loader.len());
                prop_assert!(ts_of(&all).windows(2).all(|w| w[0] < w[1]));
            }
            Err(LoaderError::Empty { .. }) => {}
            Err(err) => {
                let line = named_line(&err);
                prop_assert!(line.is_some(), "no line in: {err}");
                let line = line.unwrap();
                prop_assert!((2..=lines.len() as u64 + 1).contains(&line), "{err}");
                prop_assert!(err.to_string().contains(&line.to_string()), "{err}");
            }
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn sorted_unique_rows_load_exactly_and_any_range_is_their_slice(
        times in prop::collection::btree_set(-10_000_000_000i64..10_000_000_000, 1..40),
        cells in prop::collection::vec(prop::option::weighted(0.8, -1e9f64..1e9), 40),
        bom in any::<bool>(),
        crlf in any::<bool>(),
        iso in any::<bool>(),
        bounds in (any::<i64>(), any::<i64>(), 0u64..50),
    ) {
        let times: Vec<i64> = times.into_iter().collect();
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut content = if bom { "\u{feff}" } else { "" }.to_owned();
        content.push_str(&format!("ts,Close{eol}"));
        for (t, v) in times.iter().zip(&cells) {
            let ts = if iso && *t > -62_135_596_800 { format_timestamp(*t) } else { t.to_string() };
            let v = v.map(|v| v.to_string()).unwrap_or_default();
            content.push_str(&format!("{ts},{v}{eol}"));
        }
        let path = temp_file(&unique("rows"), content.as_bytes());
        let loader = CsvLoader::open(&path).unwrap();

        // Every row, as written.
        prop_assert_eq!(loader.len(), times.len());
        prop_assert_eq!(loader.span(), (times[0], times[times.len() - 1]));
        let all = loader.range(i64::MIN, i64::MAX).unwrap();
        prop_assert_eq!(ts_of(&all), times.clone());
        for (got, want) in column(&all, "Close").iter().zip(&cells) {
            match want {
                Some(v) => prop_assert_eq!(got, v),
                None => prop_assert!(got.is_nan()),
            }
        }

        // A range is the slice of rows in it; the newest rows are that slice's tail.
        let (a, b, count) = bounds;
        let (start, end) = (a.min(b), a.max(b));
        let lo = times.partition_point(|t| *t < start);
        let hi = times.partition_point(|t| *t < end);
        prop_assert_eq!(loader.range(start, end).unwrap(), all.slice(lo, hi - lo));
        let n = (hi - lo).min(count as usize);
        prop_assert_eq!(loader.newest(start, end, count).unwrap(), all.slice(hi - n, n));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_refusal_quotes_a_cell_on_one_short_line_whatever_it_holds(
        cell in "(\\PC|[\t\n\r\x00\x1b\x7f\u{85}\"])(\\PC|[\t\n\r\x00\x1b\x7f\u{85}\"]){0,299}",
        in_ts in any::<bool>(),
    ) {
        let quoted = format!("\"{}\"", cell.replace('"', "\"\""));
        let row = if in_ts { format!("{quoted},2") } else { format!("11,{quoted}") };
        let path = temp_file(&unique("cell"), format!("ts,v\n10,1\n{row}\n").as_bytes());
        let refusal = match CsvLoader::open(&path) {
            Err(err) => Some(err.to_string()),
            Ok(loader) => loader.check_fields(&["v".to_owned()]).err().map(|e| e.to_string()),
        };
        if let Some(text) = refusal {
            prop_assert!(!text.chars().any(char::is_control), "{:?}", text);
            // The path, the wording and 80 characters, each escaped to at most 10.
            prop_assert!(text.chars().count() < 1200, "{} chars: {:?}", text.len(), text);
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_repeated_or_earlier_time_is_refused_at_its_line(
        times in prop::collection::btree_set(0i64..1_000_000, 2..30),
        at in any::<prop::sample::Index>(),
        back in 0i64..3,
    ) {
        let mut times: Vec<i64> = times.into_iter().collect();
        let i = 1 + at.index(times.len() - 1);
        times[i] = times[i - 1] - back;
        let mut content = "ts,v\n".to_owned();
        for t in &times {
            content.push_str(&format!("{t},1\n"));
        }
        let path = temp_file(&unique("unsorted"), content.as_bytes());
        let err = CsvLoader::open(&path).unwrap_err();
        let LoaderError::Unsorted { line, .. } = err else {
            return Err(TestCaseError::fail(format!("{err}")));
        };
        prop_assert_eq!(line, i as u64 + 2);
        std::fs::remove_file(path).unwrap();
    }
}

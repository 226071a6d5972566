//! Specification tests for rings, node caches, history merging and backfill state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::*;

const H: i64 = 3600;

fn ring(period: usize) -> Ring {
    Ring::new(period, Interval::HOUR, 1)
}

fn id(s: &str) -> NodeId {
    NodeId::from_hex(s)
}

fn cache(period: usize) -> NodeCache {
    NodeCache::new(
        id("n"),
        period,
        &[(id("u"), Interval::HOUR, vec!["v".to_owned()].into())],
    )
}

#[test]
fn values_are_bucketed_to_the_interval() {
    let mut r = ring(3);
    r.append(H + 5, &[1.0]);
    r.append(2 * H + 3599, &[2.0]);
    assert_eq!(r.timestamps(), [H, 2 * H]);
}

#[test]
fn window_keeps_the_last_period_values_in_time_order() {
    let mut r = ring(3);
    for k in 1..=5 {
        r.append(k * H, &[k as f64]);
    }
    assert_eq!(r.timestamps(), [3 * H, 4 * H, 5 * H]);
    assert_eq!(r.field_at(0), [3.0, 4.0, 5.0]);
    assert!(r.is_full());
}

#[test]
fn period_one_keeps_only_the_latest() {
    let mut r = ring(1);
    r.append(H, &[1.0]);
    r.append(2 * H, &[2.0]);
    assert_eq!(r.field_at(0), [2.0]);
}

#[test]
fn gap_flag_is_raised_when_a_bucket_is_skipped() {
    let mut r = ring(5);
    assert_eq!(r.append(H, &[1.0]), Appended::New { gap: false });
    assert_eq!(r.append(2 * H, &[1.0]), Appended::New { gap: false });
    assert_eq!(r.append(5 * H, &[1.0]), Appended::New { gap: true });
    assert!(r.gap_flag());
    assert_eq!(r.append(6 * H, &[1.0]), Appended::New { gap: false });
    assert!(!r.gap_flag());
    assert_eq!(r.gaps(), 1);
}

#[test]
fn duplicate_bucket_replaces_the_payload_and_is_stored_once() {
    let mut r = ring(3);
    r.append(H, &[1.0]);
    r.append(2 * H, &[2.0]);
    assert_eq!(r.append(2 * H + 10, &[20.0]), Appended::Replaced);
    assert_eq!(r.append(H + 1, &[10.0]), Appended::Replaced);
    assert_eq!(r.timestamps(), [H, 2 * H]);
    assert_eq!(r.field_at(0), [10.0, 20.0]);
    assert_eq!(r.last_timestamp(), Some(2 * H));
}

#[test]
fn late_bucket_older_than_a_full_window_is_dropped() {
    let mut r = ring(2);
    for k in 3..=5 {
        r.append(k * H, &[k as f64]);
    }
    assert_eq!(r.append(H, &[0.0]), Appended::Late);
    assert_eq!(r.late(), 1);
    assert_eq!(r.last_timestamp(), Some(5 * H));
    assert_eq!(r.timestamps(), [4 * H, 5 * H]);
}

#[test]
fn late_bucket_filling_a_hole_is_inserted_in_time_order() {
    let mut r = ring(3);
    r.append(0, &[0.0]);
    r.append(2 * H, &[2.0]);
    assert_eq!(r.append(H, &[1.0]), Appended::Filled);
    assert_eq!(r.timestamps(), [0, H, 2 * H]);
    assert_eq!(r.field_at(0), [0.0, 1.0, 2.0]);
    r.append(5 * H, &[5.0]);
    assert_eq!(
        r.append(4 * H, &[4.0]),
        Appended::Filled,
        "full window: oldest leaves"
    );
    assert_eq!(r.timestamps(), [2 * H, 4 * H, 5 * H]);
    assert_eq!(r.last_timestamp(), Some(5 * H));
    let mut short = ring(3);
    short.append(5 * H, &[5.0]);
    assert_eq!(
        short.append(H, &[1.0]),
        Appended::Filled,
        "a window with room takes it"
    );
    assert_eq!(short.timestamps(), [H, 5 * H]);
}

#[test]
fn nan_payloads_are_stored_as_given() {
    let mut r = ring(2);
    r.append(H, &[f64::NAN]);
    assert!(r.field_at(0)[0].is_nan());
}

#[test]
fn ready_requires_every_declared_input_even_one_never_seen() {
    let fields: Arc<[String]> = vec!["v".to_owned()].into();
    let mut c = NodeCache::new(
        id("n"),
        2,
        &[
            (id("a"), Interval::HOUR, fields.clone()),
            (id("b"), Interval::HOUR, fields),
        ],
    );
    c.append(0, H, &[1.0]);
    c.append(0, 2 * H, &[1.0]);
    assert!(!c.ready(), "input b was never seen");
    c.append(1, H, &[1.0]);
    assert!(!c.ready());
    c.append(1, 2 * H, &[1.0]);
    assert!(c.ready());
    assert!(
        !NodeCache::new(id("q"), 1, &[]).ready(),
        "no inputs is never ready"
    );
}

#[test]
fn unknown_input_is_an_error_naming_the_pair() {
    let mut c = cache(2);
    let err = c
        .append_from(&id("zzz"), Interval::HOUR, H, &[1.0])
        .unwrap_err();
    assert!(err.to_string().contains("zzz"), "{err}");
}

#[test]
fn backfill_fills_the_window_and_records_the_range() {
    let mut c = cache(3);
    let ts: Vec<i64> = (1..=10).map(|k| k * H).collect();
    let v: Vec<f64> = (1..=10).map(|k| k as f64).collect();
    let rows = BulkRows {
        ts: &ts,
        columns: &[&v],
    };
    let gaps = c
        .backfill_bulk(&id("u"), Interval::HOUR, rows, (H, 11 * H))
        .unwrap();
    assert_eq!(gaps, 0);
    let w = c.view().input(0);
    assert_eq!(w.field("V").unwrap(), [8.0, 9.0, 10.0]);
    assert!(c.inputs()[0].state().is_complete(H, 10 * H));
    assert!(!c.inputs()[0].state().is_complete(H, 11 * H));
}

#[test]
fn backfill_keeps_live_values_on_equal_buckets() {
    let mut c = cache(4);
    c.append(0, 9 * H, &[-9.0]);
    let ts: Vec<i64> = (6..=9).map(|k| k * H).collect();
    let v: Vec<f64> = (6..=9).map(|k| k as f64).collect();
    c.backfill_bulk(
        &id("u"),
        Interval::HOUR,
        BulkRows {
            ts: &ts,
            columns: &[&v],
        },
        (0, 10 * H),
    )
    .unwrap();
    assert_eq!(c.view().input(0).field_at(0), [6.0, 7.0, 8.0, -9.0]);
}

#[test]
fn backfill_counts_gaps_across_chunks() {
    let mut c = cache(2);
    let chunk = |c: &mut NodeCache, ks: &[i64]| {
        let ts: Vec<i64> = ks.iter().map(|k| k * H).collect();
        let v = vec![0.0; ts.len()];
        c.backfill_bulk(
            &id("u"),
            Interval::HOUR,
            BulkRows {
                ts: &ts,
                columns: &[&v],
            },
            (0, 1),
        )
        .unwrap()
    };
    assert_eq!(chunk(&mut c, &[1, 2, 5]), 1);
    assert_eq!(chunk(&mut c, &[6, 9]), 1);
    assert_eq!(chunk(&mut c, &[12]), 1);
    assert_eq!(c.gaps(), 3);
}

#[test]
fn backfill_rejects_unsorted_history_and_merges_nothing() {
    let mut c = cache(2);
    let ts = [2 * H, H];
    let v = [1.0, 2.0];
    let err = c
        .backfill_bulk(
            &id("u"),
            Interval::HOUR,
            BulkRows {
                ts: &ts,
                columns: &[&v],
            },
            (0, 1),
        )
        .unwrap_err();
    assert!(matches!(err, CacheError::Unsorted { row: 1, .. }));
    assert!(c.view().input(0).is_empty());
}

#[test]
fn a_value_anywhere_in_the_next_bucket_takes_that_bucket_without_a_gap() {
    let mut r = ring(3);
    r.append(-H, &[0.0]);
    for (ts, bucket) in [(0, 0), (H + H - 1, H), (2 * H, 2 * H), (3 * H + 1, 3 * H)] {
        assert_eq!(
            r.append(ts, &[1.0]),
            Appended::New { gap: false },
            "ts {ts}"
        );
        assert_eq!(r.last_timestamp(), Some(bucket), "ts {ts}");
    }
    // Two buckets on is a gap; the same bucket again replaces.
    assert_eq!(r.append(5 * H + 7, &[2.0]), Appended::New { gap: true });
    assert_eq!(r.append(5 * H + 9, &[3.0]), Appended::Replaced);
    assert_eq!(r.timestamps(), [2 * H, 3 * H, 5 * H]);
    assert_eq!(r.field_at(0), [1.0, 1.0, 3.0]);

    // Near the end of time there is no next bucket to take without dividing.
    let mut end = ring(2);
    let last = Interval::HOUR.bucket(i64::MAX);
    end.append(last - H, &[1.0]);
    assert_eq!(end.append(i64::MAX, &[2.0]), Appended::New { gap: false });
    assert_eq!(end.timestamps(), [last - H, last]);
    assert_eq!(end.append(i64::MAX, &[3.0]), Appended::Replaced);
}

#[test]
fn window_sums_depend_only_on_the_values_held() {
    let fields: Arc<[String]> = vec!["close".to_owned()].into();
    let value = |k: i64| 100.0 + (k as f64 * 0.37).sin() * 5.0;

    // One cache fed live for a long time, one backfilled with only the last rows.
    let mut live = NodeCache::new(id("n"), 30, &[(id("u"), Interval::HOUR, fields.clone())]);
    for k in 0..1000 {
        live.append(0, k * H, &[value(k)]);
    }
    let mut merged = NodeCache::new(id("n"), 30, &[(id("u"), Interval::HOUR, fields)]);
    let ts: Vec<i64> = (970..1000).map(|k| k * H).collect();
    let close: Vec<f64> = (970..1000).map(value).collect();
    let rows = BulkRows {
        ts: &ts,
        columns: &[&close],
    };
    merged
        .backfill_bulk(&id("u"), Interval::HOUR, rows, (0, 1000 * H))
        .unwrap();

    let (a, b) = (live.view().input(0), merged.view().input(0));
    assert_eq!(a.sum_at(0).to_bits(), b.sum_at(0).to_bits());
    assert_eq!(a.mean("CLOSE"), b.mean("close"));
    let plain: f64 = close.iter().sum();
    assert!(
        (a.sum_at(0) - plain).abs() < 1e-9,
        "{} vs {plain}",
        a.sum_at(0)
    );
    assert!(a.sum("volume").is_none());
}

#[test]
fn window_sums_are_exact_on_integers_zero_when_empty_and_nan_with_a_nan() {
    for period in [1, 7, 8, 9, 30] {
        let mut r = ring(period);
        let mut c = cache(period);
        assert_eq!(c.view().input(0).sum_at(0), 0.0);
        assert!(c.view().input(0).mean("v").unwrap().is_nan());
        for k in 1..=100 {
            r.append(k * H, &[k as f64]);
            c.append(0, k * H, &[k as f64]);
        }
        let want: f64 = r.field_at(0).iter().sum();
        assert_eq!(c.view().input(0).sum_at(0), want, "period {period}");
        assert_eq!(
            c.view().input(0).mean("v"),
            Some(want / period as f64),
            "period {period}"
        );
        c.append(0, 101 * H, &[f64::NAN]);
        assert!(c.view().input(0).sum_at(0).is_nan(), "period {period}");
    }
}

#[test]
fn view_reads_fields_by_name_latest_and_in_order() {
    let fields: Arc<[String]> = vec!["Open".to_owned(), "close".to_owned()].into();
    let mut c = NodeCache::new(id("n"), 3, &[(id("u"), Interval::HOUR, fields)]);
    for k in 1..=4 {
        c.append(0, k * H, &[k as f64, 10.0 * k as f64]);
    }
    let view = c.tracked_view();
    let w = view.input(0);
    assert_eq!(w.len(), 3);
    assert_eq!(w.field("CLOSE").unwrap(), [20.0, 30.0, 40.0]);
    assert_eq!(w.field("open").unwrap(), [2.0, 3.0, 4.0]);
    assert!(w.field("volume").is_none());
    let latest = w.latest().unwrap();
    assert_eq!((latest.ts(), latest.get("close")), (4 * H, Some(40.0)));
    let order: Vec<i64> = w.iter().map(|e| e.ts()).collect();
    assert_eq!(order, [2 * H, 3 * H, 4 * H]);
    assert!(view.get(&id("u"), Interval::HOUR).is_some());
    assert!(view.get(&id("u"), Interval::MINUTE).is_none());
    assert_eq!(c.inputs()[0].reads(), 4);
    assert_eq!(c.inputs()[0].last_read(), Some(4 * H));
}

#[test]
fn backfill_state_merges_adjacent_and_overlapping_ranges() {
    let mut s = BackfillState::new(Interval::HOUR);
    s.mark(0, 2 * H - 1);
    s.mark(2 * H, 4 * H - 1);
    assert_eq!(s.ranges(), [(0, 3 * H)], "adjacent at the interval step");
    s.mark(10 * H, 13 * H - 1);
    assert_eq!(s.ranges(), [(0, 3 * H), (10 * H, 12 * H)]);
    s.mark(4 * H, 10 * H - 1);
    assert_eq!(s.ranges(), [(0, 12 * H)], "bridging range merges all three");
    assert!(s.is_complete(H, 11 * H));
    assert!(s.is_complete(H, 13 * H - 1));
    assert!(!s.is_complete(H, 13 * H));
    s.mark(100, 200);
    assert_eq!(
        s.ranges(),
        [(0, 12 * H)],
        "no whole bucket, nothing recorded"
    );
}

#[test]
fn backfill_state_does_not_complete_a_partly_loaded_bucket() {
    let mut s = BackfillState::new(Interval::HOUR);
    s.mark(0, 1799);
    assert!(s.ranges().is_empty());
    assert!(!s.is_complete(0, 3599));
    s.mark(1800, 2 * H + 100);
    assert_eq!(s.ranges(), [(H, H)], "only the bucket wholly inside");
    s.mark(0, 1799);
    assert!(
        !s.is_complete(0, 1),
        "marks never combine into a partial bucket"
    );
}

#[derive(Debug, Clone)]
enum Op {
    Live(i64, i32),
    History(Vec<i64>),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        (0i64..40, any::<i32>()).prop_map(|(k, v)| Op::Live(k, v)),
        proptest::collection::btree_set(0i64..40, 0..15)
            .prop_map(|s| Op::History(s.into_iter().collect())),
    ];
    proptest::collection::vec(op, 1..40)
}

/// History values are never integers, live values always are, so origin is visible.
fn history_value(k: i64) -> f64 {
    -(k as f64) - 0.5
}

/// The rules of the module docs, written as plainly as possible.
fn model(period: usize, log: &[Op]) -> Vec<(i64, f64)> {
    let mut window: BTreeMap<i64, f64> = BTreeMap::new();
    let mut last: Option<i64> = None;
    for op in log {
        match op {
            Op::Live(k, v) => {
                let b = k * H;
                let oldest = window.keys().next().copied();
                if last.is_none_or(|l| b > l) {
                    window.insert(b, f64::from(*v));
                    last = Some(b);
                } else if let Some(slot) = window.get_mut(&b) {
                    *slot = f64::from(*v);
                } else if window.len() < period || oldest.is_some_and(|o| b > o) {
                    window.insert(b, f64::from(*v));
                }
            }
            Op::History(ks) => {
                for k in ks {
                    window.entry(k * H).or_insert(history_value(*k));
                }
                last = last.max(window.keys().next_back().copied());
            }
        }
        while window.len() > period {
            window.pop_first();
        }
    }
    window.into_iter().collect()
}

proptest! {
    /// Live values at any second, in any order, end as the plain rules applied to their
    /// buckets say (the next bucket, taken without a division, included).
    #[test]
    fn live_values_at_any_second_follow_the_rules_of_their_buckets(
        steps in proptest::collection::vec((-2i64..4, 0..H, any::<i32>()), 1..60),
        period in 1usize..6,
    ) {
        let mut r = ring(period);
        let mut log = Vec::new();
        let mut k = 0i64;
        for (step, second, v) in steps {
            k += step;
            r.append(k * H + second, &[f64::from(v)]);
            log.push(Op::Live(k, v));
        }
        let got: Vec<(i64, f64)> =
            r.timestamps().iter().copied().zip(r.field_at(0).iter().copied()).collect();
        prop_assert_eq!(got, model(period, &log));
    }

    /// Live appends and history merges racing on two threads: whatever order the lock
    /// gave them, the cache ends exactly as the plain rules applied in that order say, so
    /// no live update is lost and live values win on equal buckets.
    #[test]
    fn backfill_merge_and_live_appends_lose_no_update(ops in ops(), period in 1usize..8) {
        let shared = Arc::new(Mutex::new((cache(period), Vec::<Op>::new())));
        let (live_ops, hist_ops): (Vec<Op>, Vec<Op>) =
            ops.into_iter().partition(|o| matches!(o, Op::Live(..)));
        let live_thread = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for op in live_ops {
                    if let Op::Live(k, v) = op {
                        let mut guard = shared.lock().unwrap();
                        guard.0.append(0, k * H, &[f64::from(v)]);
                        guard.1.push(op);
                    }
                }
            })
        };
        for op in hist_ops {
            if let Op::History(ks) = &op {
                let ts: Vec<i64> = ks.iter().map(|k| k * H).collect();
                let v: Vec<f64> = ks.iter().map(|k| history_value(*k)).collect();
                let mut guard = shared.lock().unwrap();
                let rows = BulkRows { ts: &ts, columns: &[&v] };
                guard.0.backfill_bulk(&id("u"), Interval::HOUR, rows, (0, 1)).unwrap();
                guard.1.push(op.clone());
            }
        }
        live_thread.join().unwrap();

        let guard = shared.lock().unwrap();
        let w = guard.0.view().input(0);
        let got: Vec<(i64, f64)> =
            w.timestamps().iter().copied().zip(w.field_at(0).iter().copied()).collect();
        prop_assert_eq!(got, model(period, &guard.1));
    }
}

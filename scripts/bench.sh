#!/usr/bin/env bash
# The performance suite: starts a throwaway PostgreSQL (scripts/pg.sh, in its own
# directory), generates the data with generate_series, builds the release binaries once,
# times the binary COPY references and every benchmark in one run (one process per
# figure, so each figure's peak memory is its own), prints a table of figures and ratios
# and, with --json FILE, writes {"name": {"value", "unit", "reference", "ratio", "target",
# "met"}}. The server is stopped at the end however the script ends.
#
#   scripts/bench.sh [--json FILE]
#
# Needs PostgreSQL's server binaries (see scripts/pg.sh) and python3 for the table.
# Run nothing else meanwhile: the targets are ratios against COPY on the same machine.
set -euo pipefail
cd "$(dirname "$0")/.."

json=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --json) json="$2"; shift 2 ;;
    *) echo "usage: $0 [--json FILE]" >&2; exit 2 ;;
    esac
done

work=$(mktemp -d "${TMPDIR:-/tmp}/qmtl-bench.XXXXXX")
chmod 755 "$work" # the server runs as the postgres user when root
export QMTL_PG_DIR="$work/pg"
cleanup() {
    scripts/pg.sh stop || true
    rm -rf "$work"
}
trap cleanup EXIT

ONE=1000000       # rows of the one-node figures
TEN=100000        # rows of each of the ten nodes
BIG=$((ONE * 10)) # rows of the 10x warm-up range

echo "starting PostgreSQL" >&2
dsn=$(scripts/pg.sh start)
sql() { scripts/pg.sh psql -X -q -A -t -v ON_ERROR_STOP=1 -c "$1"; }
table_sql="(node_id TEXT NOT NULL, interval INT NOT NULL, ts BIGINT NOT NULL, open FLOAT8, \
high FLOAT8, low FLOAT8, close FLOAT8, volume FLOAT8, PRIMARY KEY (node_id, interval, ts))"
gen() { # table node rows
    sql "INSERT INTO $1 SELECT '$2', 60, i * 60, i, i + 0.5, i - 0.5, i + 0.25, 1000 + i \
         FROM generate_series(0, $3 - 1) AS i"
}

echo "generating data" >&2
sql "CREATE TABLE bench_one $table_sql; CREATE TABLE bench_ten $table_sql; \
     CREATE TABLE bench_big $table_sql"
gen bench_one one "$ONE"
for i in 0 1 2 3 4 5 6 7 8 9; do gen bench_ten "c$i" "$TEN"; done
gen bench_big big "$BIG"
sql "VACUUM ANALYZE"

echo "building (release)" >&2
cargo build --release -q -p qmtl --example bench --example replay_bench --test no_alloc
bench=target/release/examples/bench
replay=target/release/examples/replay_bench

now() { date +%s.%N; }
# Best of 3 of a command's wall time, seconds.
best_of() {
    local best="" t0 t1 t
    for _ in 1 2 3; do
        t0=$(now)
        "$@"
        t1=$(now)
        t=$(echo "$t1 - $t0" | bc -l)
        if [[ -z "$best" ]] || (($(echo "$t < $best" | bc -l))); then best=$t; fi
    done
    echo "$best"
}
copy() { # select
    scripts/pg.sh psql -X -q -c "COPY ($1) TO STDOUT (FORMAT binary)" >/dev/null
}
select_of() { # table where
    echo "SELECT ts, open, high, low, close, volume FROM $1 WHERE $2 AND interval = 60 \
AND ts >= 0 AND ts < $(( ONE * 60 )) ORDER BY ts"
}
half() { # first|second
    local nodes="'c0', 'c1', 'c2', 'c3', 'c4'"
    [[ "$1" == second ]] && nodes="'c5', 'c6', 'c7', 'c8', 'c9'"
    copy "SELECT ts, open, high, low, close, volume FROM bench_ten WHERE node_id IN ($nodes) \
AND interval = 60 ORDER BY node_id, ts"
}
two_copies() { half first & half second & wait; }

echo "timing COPY references" >&2
copy_one=$(best_of copy "$(select_of bench_one "node_id = 'one'")")
copy_two=$(best_of two_copies)

echo "running benchmarks" >&2
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
loader_q=$("$bench" loader questdb "$dsn" bench_one "$ONE")
loader_p=$("$bench" loader postgres "$dsn" bench_one "$ONE")
backfill=$("$bench" backfill "$dsn" bench_one "$ONE")
concurrency=$("$bench" concurrency postgres "$dsn" bench_ten "$TEN")
concurrency_q=$("$bench" concurrency questdb "$dsn" bench_ten "$TEN")
warm_one=$("$bench" warmup "$dsn" bench_one "$ONE" one)
warm_big=$("$bench" warmup "$dsn" bench_big "$BIG" big)
replay_sma=$("$replay" sma "$ONE")
replay_momentum=$("$replay" momentum "$ONE")
if cargo test --release -q -p qmtl --test no_alloc >"$work/no_alloc.log" 2>&1; then
    allocations=0
else
    cat "$work/no_alloc.log" >&2
    allocations=1
fi

python3 - "$json" <<EOF
import json, sys

copy_one, copy_two = $copy_one, $copy_two
lq, lp, bf, cc, ccq = $loader_q, $loader_p, $backfill, $concurrency, $concurrency_q
w1, w10 = $warm_one, $warm_big
rs, rm = $replay_sma, $replay_momentum
raw_mb = $ONE * 6 * 8 / 1e6

def ratio(value, reference):
    return value / reference if reference else None

rows = {}
def add(name, value, unit, reference, target, met, ratio_value):
    rows[name] = {"value": value, "unit": unit, "reference": reference,
                  "ratio": ratio_value, "target": target, "met": met}

r = ratio(lq["seconds"], copy_one)
add("loader_questdb_1m", lq["seconds"], "s", copy_one, "<= 1.2x COPY", r <= 1.2, r)
r = ratio(lp["seconds"], copy_one)
add("loader_postgres_1m", lp["seconds"], "s", copy_one, "report only", None, r)
r = ratio(bf["seconds"], copy_one)
add("backfill_1m", bf["seconds"], "s", copy_one, "<= 1.3x COPY", r <= 1.3, r)
r = ratio(cc["seconds"], copy_two)
add("concurrency_10x100k", cc["seconds"], "s", copy_two, "<= 1.2x two COPYs", r <= 1.2, r)
r = ratio(ccq["seconds"], copy_two)
add("concurrency_questdb_10x100k", ccq["seconds"], "s", copy_two, "report only", None, r)
add("warmup_ready_1m_range", w1["seconds"] * 1e3, "ms", None, "<= 50 ms",
    w1["seconds"] * 1e3 <= 50, None)
r = ratio(w10["seconds"], w1["seconds"])
add("warmup_ready_10m_range", w10["seconds"] * 1e3, "ms", w1["seconds"] * 1e3,
    "flat (<= 1.5x the 1m range)", r <= 1.5, r)
add("replay_sma20_events_per_s", rs["events_per_s"], "events/s", None, ">= 10000000",
    rs["events_per_s"] >= 10e6, None)
add("replay_momentum_events_per_s", rm["events_per_s"], "events/s", None, ">= 5000000",
    rm["events_per_s"] >= 5e6, None)
add("replay_allocations_per_event", $allocations, "allocations", None,
    "0 (tests/no_alloc.rs)", $allocations == 0, None)
r = ratio(bf["peak_rss_mb"], raw_mb)
add("backfill_peak_rss", bf["peak_rss_mb"], "MB", raw_mb, "<= 2x raw (48 MB)", r <= 2.0, r)
r = ratio(bf["peak_rss_all_repeats_mb"], raw_mb)
add("backfill_peak_rss_3_repeats", bf["peak_rss_all_repeats_mb"], "MB", raw_mb, "report only",
    None, r)

def fmt(v):
    if v is None: return "-"
    if isinstance(v, bool): return "yes" if v else "NO"
    if isinstance(v, float): return f"{v:,.3f}" if v < 1000 else f"{v:,.0f}"
    return str(v)

print(f"| {'figure':30} | {'value':>14} | {'unit':11} | {'reference':>10} | {'ratio':>6} "
      f"| {'target':28} | met |")
print(f"|{'-' * 32}|{'-' * 16}|{'-' * 13}|{'-' * 12}|{'-' * 8}|{'-' * 30}|-----|")
for name, r in rows.items():
    print(f"| {name:30} | {fmt(r['value']):>14} | {r['unit']:11} | {fmt(r['reference']):>10} "
          f"| {fmt(r['ratio']):>6} | {r['target']:28} | {fmt(r['met']):3} |")
if sys.argv[1]:
    with open(sys.argv[1], "w") as out:
        json.dump(rows, out, indent=2)
        out.write("\n")
EOF

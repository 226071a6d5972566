#!/usr/bin/env bash
# The main job on the bundled data, no services needed: backtest the `momentum` strategy
# over the EUR/USD hourly bars with a backfill from the CSV file, serve the Prometheus
# metrics while it runs, scrape them once, and print the report.
#
# Usage: bash scripts/demo.sh            (METRICS_PORT=9464 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
port="${METRICS_PORT:-9464}"
report="${REPORT_JSON:-report.json}"

echo "==> building qmtl (release)"
cargo build --release -q -p qmtl-cli

bin="${CARGO_TARGET_DIR:-target}/release/qmtl"
cmd=("$bin" run momentum --mode backtest
  --backfill-source csv:data/eurusd_1h.csv
  --backfill-start 1492592400 --backfill-end 1518019200
  --metrics-port "$port" --metrics-linger 3 --report-json "$report")
echo "==> ${cmd[*]}"
"${cmd[@]}" &
pid=$!

scrape() {
  if command -v curl >/dev/null; then
    curl -fsS "http://127.0.0.1:$port/metrics"
  else
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    sed '1,/^\r$/d' <&3
    exec 3<&-
  fi
}

sleep 1.5
echo "==> curl http://127.0.0.1:$port/metrics | grep ^backfill_"
scrape | grep '^backfill_' || echo "(metrics server not reachable on port $port)"
wait "$pid"
echo "==> $report"
cat "$report"

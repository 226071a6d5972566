#!/usr/bin/env bash
# Runs every test of the workspace. The database tests start their own throwaway
# PostgreSQL server on 127.0.0.1 (as the unprivileged `postgres` user when run as root)
# and stop it afterwards, so nothing needs to be running beforehand; PostgreSQL's server
# binaries (initdb, postgres) must be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_bin=""
for dir in ${QMTL_PG_BINDIR:-} /usr/lib/postgresql/*/bin; do
  if [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ]; then pg_bin="$dir"; break; fi
done
if [ -z "$pg_bin" ] && command -v initdb >/dev/null && command -v postgres >/dev/null; then
  pg_bin="$(dirname "$(command -v initdb)")"
fi
if [ -z "$pg_bin" ]; then
  echo "error: PostgreSQL server binaries (initdb, postgres) not found; the database tests" >&2
  echo "need them. Install with: apt-get install -y postgresql (Debian/Ubuntu), or set" >&2
  echo "QMTL_PG_BINDIR to the directory holding initdb and postgres." >&2
  exit 1
fi
export QMTL_PG_BINDIR="$pg_bin"

cargo test --workspace --all-targets "$@"
cargo test --workspace --doc

#!/usr/bin/env bash
# A throwaway PostgreSQL server for trying the database sources by hand and for
# end-to-end checks, started the same way as the tests' (crates/qmtl/tests/support/pg.rs):
# on 127.0.0.1 only, on a free port, data and unix socket in one directory, a superuser
# `qmtl` with a random password (SCRAM over TCP), run as the `postgres` user when root.
#
#   scripts/pg.sh start   start it (if not running) and print its DSN
#   scripts/pg.sh dsn     print the DSN: postgresql://qmtl:PASSWORD@127.0.0.1:PORT/qmtl
#   scripts/pg.sh psql    open psql on it (extra arguments are passed on)
#   scripts/pg.sh stop    stop it and delete its directory
#
# The directory is $QMTL_PG_DIR (default ${TMPDIR:-/tmp}/qmtl-pg). The binaries are found
# in $QMTL_PG_BINDIR, /usr/lib/postgresql/*/bin or PATH; install them with
# `apt-get install -y postgresql-15` (or `apt-get install -y postgresql`).
set -euo pipefail

dir="${QMTL_PG_DIR:-${TMPDIR:-/tmp}/qmtl-pg}"
user=qmtl
db=qmtl

find_bin() {
    if [[ -n "${QMTL_PG_BINDIR:-}" ]]; then echo "$QMTL_PG_BINDIR"; return; fi
    local best
    best=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$best" && -x "$best/initdb" ]]; then echo "$best"; return; fi
    if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
    echo "PostgreSQL is not installed; install it with: apt-get install -y postgresql-15" \
        "(or: apt-get install -y postgresql)" >&2
    exit 1
}

as_server_user() {
    if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    local port
    for port in $(seq 54329 54429); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "no free port in 54329-54429" >&2
    exit 1
}

dsn() {
    echo "postgresql://$user:$(cat "$dir/pwfile")@127.0.0.1:$(cat "$dir/port")/$db"
}

running() {
    [[ -f "$dir/data/postmaster.pid" ]] && as_server_user "$bin/pg_ctl" -D "$dir/data" status \
        >/dev/null 2>&1
}

bin=$(find_bin)
case "${1:-}" in
start)
    if running; then dsn; exit 0; fi
    rm -rf "$dir"
    mkdir -p "$dir"
    head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/pwfile"
    if [[ "$(id -u)" == 0 ]]; then chown -R postgres:postgres "$dir"; fi
    as_server_user "$bin/initdb" -D "$dir/data" -U "$user" -E UTF8 --no-locale \
        --auth-local=trust --auth-host=scram-sha-256 --pwfile="$dir/pwfile" >"$dir/initdb.log"
    port=$(free_port)
    echo "$port" >"$dir/port"
    as_server_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir" \
        start >/dev/null
    "$bin/psql" -h "$dir" -p "$port" -U "$user" -d postgres -X -q \
        -c "CREATE DATABASE $db" >/dev/null
    dsn
    ;;
dsn)
    running || { echo "not running; run: $0 start" >&2; exit 1; }
    dsn
    ;;
psql)
    shift
    exec "$bin/psql" -h "$dir" -p "$(cat "$dir/port")" -U "$user" -d "$db" "$@"
    ;;
stop)
    if running; then as_server_user "$bin/pg_ctl" -D "$dir/data" stop -m fast >/dev/null; fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start|dsn|psql|stop" >&2
    exit 2
    ;;
esac

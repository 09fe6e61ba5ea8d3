#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and drills, in a directory of its own.
#
#   scripts/pg-cluster.sh start DIR     init (first time) and start; prints the URL of the
#                                       database `outbox_test` (also written to DIR/url)
#   scripts/pg-cluster.sh url DIR       prints that URL
#   scripts/pg-cluster.sh restart DIR   fast restart (drills: Postgres goes away mid-drain)
#   scripts/pg-cluster.sh down DIR      stops the server, keeps the data (`start` resumes it)
#   scripts/pg-cluster.sh stop DIR      stops the server and removes DIR
#
# Port: $PG_PORT, else 55432 or the next free one. Trust authentication, loopback only:
# never use this for anything but tests. PostgreSQL refuses to run as root, so as root the
# server runs as the `postgres` user (DIR and its parents must be reachable by it).
set -euo pipefail

die() {
    echo "pg-cluster: $*" >&2
    exit 1
}

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# The directory holding initdb, pg_ctl and psql; installs PostgreSQL if there is none.
find_bindir() {
    local d
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        # Resolve symlinks (/usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin): psql is there.
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x $d/initdb && -x $d/pg_ctl ]]; then
            echo "$d"
            return
        fi
    done
    echo "pg-cluster: PostgreSQL not found; installing it with apt-get" >&2
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; } >&2 \
        || die "could not install postgresql"
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x $d/initdb && -x $d/pg_ctl ]]; then
            echo "$d"
            return
        fi
    done
    die "postgresql installed, but no initdb/pg_ctl found"
}

# Runs a server-side command as the cluster's owner.
as_owner() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {
    local p=${PG_PORT:-55432}
    if [[ -n ${PG_PORT:-} ]]; then
        port_in_use "$p" && die "port $p (PG_PORT) is in use"
        echo "$p"
        return
    fi
    while port_in_use "$p"; do
        p=$((p + 1))
        ((p < 55532)) || die "no free port in 55432-55531"
    done
    echo "$p"
}

fail_with_log() {
    echo "pg-cluster: $1; last lines of $DIR/log:" >&2
    tail -n 30 "$DIR/log" >&2 || true
    exit 1
}

is_running() {
    [[ -f $DIR/data/postmaster.pid ]] && as_owner "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1
}

start() {
    if [[ ! -f $DIR/data/PG_VERSION ]]; then
        if [[ -e $DIR && -n $(ls -A "$DIR" 2>/dev/null) && ! -f $DIR/.pg-cluster ]]; then
            die "$DIR exists and is not a cluster directory; pick an empty or new one"
        fi
        local port
        port=$(free_port)
        mkdir -p "$DIR/sock"
        touch "$DIR/.pg-cluster"
        if [[ $EUID -eq 0 ]]; then chown -R postgres: "$DIR"; fi
        as_owner test -w "$DIR" || die "the postgres user cannot write $DIR (are its parent directories reachable?)"
        # Byte-order collation, like SQLite's; plain C where C.UTF-8 is missing.
        local locale=C
        if locale -a 2>/dev/null | grep -qiE '^c\.utf-?8$'; then locale=C.UTF-8; fi
        as_owner "$BIN/initdb" -D "$DIR/data" -A trust -U postgres -E UTF8 --locale="$locale" >"$DIR/initdb.log" 2>&1 \
            || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
        echo "$port" >"$DIR/port"
    fi
    local port
    port=$(cat "$DIR/port")
    if ! is_running; then
        port_in_use "$port" && die "port $port (from $DIR/port) is taken by another process"
        if [[ $EUID -eq 0 ]]; then touch "$DIR/log" && chown postgres: "$DIR/log"; fi
        as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w -t 60 \
            -o "-p $port -k $DIR/sock -c listen_addresses=127.0.0.1 -c fsync=on" start >/dev/null \
            || fail_with_log "the server did not start"
    fi
    local psql_bin=$BIN/psql
    [[ -x $psql_bin ]] || psql_bin=$(command -v psql) || die "psql not found"
    local psql=("$psql_bin" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres)
    if [[ -z $("${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'outbox_test'") ]]; then
        "${psql[@]}" -d postgres -c "CREATE DATABASE outbox_test" || fail_with_log "could not create the database outbox_test"
    fi
    echo "postgres://postgres@127.0.0.1:$port/outbox_test" >"$DIR/url"
    cat "$DIR/url"
}

[[ $# -eq 2 ]] || usage
CMD=$1
DIR=$(realpath -m "$2")

case $CMD in
start)
    BIN=$(find_bindir)
    start
    ;;
url)
    [[ -f $DIR/url ]] || die "no cluster in $DIR (run: $0 start $DIR)"
    cat "$DIR/url"
    ;;
restart)
    BIN=$(find_bindir)
    [[ -f $DIR/data/PG_VERSION ]] || die "no cluster in $DIR"
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w -t 60 -m fast restart >/dev/null \
        || fail_with_log "the server did not restart"
    ;;
down)
    BIN=$(find_bindir)
    [[ -f $DIR/data/PG_VERSION ]] || die "no cluster in $DIR"
    if is_running; then
        as_owner "$BIN/pg_ctl" -D "$DIR/data" -w -m fast stop >/dev/null || fail_with_log "the server did not stop"
    fi
    ;;
stop)
    [[ -e $DIR ]] || exit 0
    # Only ever delete a directory this script created.
    [[ -f $DIR/.pg-cluster ]] || die "$DIR was not created by $0; not removing it"
    BIN=$(find_bindir)
    if is_running; then
        as_owner "$BIN/pg_ctl" -D "$DIR/data" -w -m fast stop >/dev/null || fail_with_log "the server did not stop"
    fi
    rm -rf "$DIR"
    ;;
*)
    usage
    ;;
esac

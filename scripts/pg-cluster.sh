#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the test suite (see /work/shared/notes/postgres.md §1).
#
#   scripts/pg-cluster.sh start DIR   creates a cluster in DIR, starts it on 127.0.0.1 on a free
#                                     port and prints exactly one line on stdout:
#                                     postgres://postgres@127.0.0.1:PORT/postgres
#   scripts/pg-cluster.sh stop DIR    fast shutdown of that cluster, then rm -rf DIR
#
# Everything except the URL goes to stderr. Installs Debian's PostgreSQL if it is missing.
# As root, the server runs as the `postgres` user (initdb refuses to run as root); otherwise as
# the calling user. Authentication is `trust`: acceptable only because the server listens on
# 127.0.0.1 and its socket lives in DIR. Never point this at a directory holding real data.
set -euo pipefail

MARKER=.imd-pg-cluster # written by `start`; `stop` refuses to delete a directory without it

log() { echo "pg-cluster: $*" >&2; }
die() { log "$*"; exit 1; }

usage() { die "usage: $0 start DIR | stop DIR"; }

pg_bindir() {
    printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -1 # the newest major version
}

install_postgres() {
    [ "$(id -u)" -eq 0 ] || die "PostgreSQL is not installed and we are not root: install postgresql first"
    log "installing PostgreSQL from Debian's packages"
    {
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            postgresql postgresql-contrib
    } >&2
}

# Run a command as the cluster owner, from a directory that user can read.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    else
        # No python3: a random high port; the retry loop below handles a collision.
        echo $((20000 + RANDOM % 40000))
    fi
}

# True while PID runs. A zombie counts as gone: the postmaster is re-parented to PID 1 when
# pg_ctl exits, and an init that reaps late would otherwise add seconds to every stop.
alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    if [ -r "/proc/$1/stat" ]; then
        state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 1
        [ "$state" != Z ] || return 1
    fi
}

postmaster_pid() { # prints the PID if DIR's postmaster is running
    local pidfile=$1/data/postmaster.pid pid
    [ -f "$pidfile" ] || return 1
    pid=$(head -1 "$pidfile")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    echo "$pid"
}

start() {
    local dir=$1 bin port attempt
    bin=$(pg_bindir)
    if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
        install_postgres
        bin=$(pg_bindir)
        if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
            die "no initdb under /usr/lib/postgresql/*/bin after installing"
        fi
    fi

    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ -z "$(ls -A "$dir")" ] || die "$dir is not empty"
    # The server's socket is $dir/.s.PGSQL.PORT; Unix socket paths are limited to ~107 bytes.
    [ ${#dir} -le 80 ] || die "$dir is too long for a Unix socket directory (use mktemp -d)"
    touch "$dir/$MARKER"
    chmod 700 "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres:postgres "$dir"
        runuser -u postgres -- test -w "$dir" ||
            die "user postgres cannot reach $dir (a parent directory is not searchable); use a directory under /tmp"
    fi

    log "initdb in $dir/data ($bin)"
    # --no-sync: do not fsync the new files (the cluster is thrown away). Output only on failure.
    if ! as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
        --no-sync >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        die "initdb failed"
    fi

    cat >>"$dir/data/postgresql.conf" <<EOF

# ---- added by scripts/pg-cluster.sh: throwaway test cluster ----
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
# Test only: these three trade crash safety for speed (fsync=off and full_page_writes=off can
# corrupt the cluster on an OS crash; synchronous_commit=off loses the last commits). The
# cluster is deleted after the run, so nothing is at risk; never use them in production.
fsync = off
synchronous_commit = off
full_page_writes = off
# The suite starts many imd servers at once, each with its own connection pool, plus one
# database per test: PostgreSQL's default of 100 connections is too few.
max_connections = 300
EOF

    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        : >"$dir/log"
        [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$dir/log"
        log "starting on 127.0.0.1:$port (attempt $attempt)"
        # The port is chosen by binding port 0 and releasing it, so another process can take it
        # before the postmaster binds: retry with a new port when that happens.
        if as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 30 -s -o "-p $port" start >&2; then
            echo "postgres://postgres@127.0.0.1:$port/postgres"
            return 0
        fi
        if grep -q "could not bind" "$dir/log"; then
            log "port $port was taken; retrying"
            continue
        fi
        break
    done
    log "could not start PostgreSQL; server log $dir/log:"
    tail -20 "$dir/log" >&2 || true
    exit 1
}

stop() {
    local dir=$1 pid
    [ -d "$dir" ] || { log "$dir does not exist; nothing to stop"; return 0; }
    if [ -z "$(ls -A "$dir")" ]; then # `start` failed before creating anything
        rmdir "$dir"
        return 0
    fi
    [ -e "$dir/$MARKER" ] || die "$dir was not created by $0 start; not touching it"
    if pid=$(postmaster_pid "$dir"); then
        log "stopping postmaster $pid (fast shutdown)"
        kill -INT "$pid" 2>/dev/null || true # SIGINT = fast shutdown: roll back sessions, exit
        for _ in $(seq 1 300); do           # up to 30 s
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "postmaster $pid still running after 30 s; immediate shutdown (SIGQUIT)"
            kill -QUIT "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do
                alive "$pid" || break
                sleep 0.1
            done
            ! alive "$pid" || die "postmaster $pid does not stop; leaving $dir"
        fi
    fi
    rm -rf "$dir"
}

[ $# -eq 2 ] || usage
case $1 in
    start) start "$2" ;;
    stop) stop "$2" ;;
    *) usage ;;
esac

#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with the Rust toolchain: installs what the
# build needs, checks formatting and lints, starts the test directories (OpenLDAP slapd and a
# Samba AD DC on 127.0.0.1, from Debian's packages: scripts/directories.sh) and one
# chromedriver for the console tests (Debian's chromium and chromium-driver), then runs every
# test (unit, CLI and the HTTP integration tests, which start the real server on random
# loopback ports and real `imd connector` processes) twice: on SQLite, then on PostgreSQL (a
# throwaway cluster from scripts/pg-cluster.sh; the harness creates one database per test in
# it through TEST_PG_URL). Both runs must pass.
#
#   TEST_BACKENDS=sqlite     only the SQLite run
#   TEST_BACKENDS=postgres   only the PostgreSQL run
#   (unset, or sqlite,postgres)  both
set -euo pipefail
cd "$(dirname "$0")/.."

backends=${TEST_BACKENDS:-sqlite,postgres}
run_sqlite=false
run_postgres=false
IFS=', ' read -r -a wanted <<<"$backends"
for b in "${wanted[@]}"; do
    case $b in
        sqlite) run_sqlite=true ;;
        postgres) run_postgres=true ;;
        "") ;;
        *)
            echo "TEST_BACKENDS: unknown backend \"$b\" (use sqlite, postgres or sqlite,postgres)" >&2
            exit 2
            ;;
    esac
done
if ! $run_sqlite && ! $run_postgres; then
    echo "TEST_BACKENDS=\"$backends\" selects no backend (use sqlite, postgres or sqlite,postgres)" >&2
    exit 2
fi

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# The console tests drive real headless Chromium through chromedriver.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not installed: install the Rust toolchain (rustup or Debian's cargo) first" >&2
    exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

failed=()

# One pair of directory servers for the whole suite; stopped by PID on exit.
dir_state=$(mktemp -d)
pg_dir=""
driver_pid=""
cleanup() {
    if [ -n "$driver_pid" ]; then kill "$driver_pid" 2>/dev/null || true; fi
    bash scripts/directories.sh stop "$dir_state" >/dev/null 2>&1 || true
    if [ -n "$pg_dir" ]; then bash scripts/pg-cluster.sh stop "$pg_dir" || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
echo "== starting the test directories (slapd, Samba AD DC) =="
eval "$(bash scripts/directories.sh start "$dir_state")"
# Directory tests fail, rather than skip, when the servers are missing.
export REQUIRE_DIRECTORIES=1

# One chromedriver for the suite (loopback only); every console test opens its own browser
# session in it. Stopped by PID on exit.
echo "== starting chromedriver =="
driver_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
/usr/bin/chromedriver --port="$driver_port" --allowed-ips=127.0.0.1 >"$dir_state/chromedriver.log" 2>&1 &
driver_pid=$!
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$driver_port") 2>/dev/null; then break; fi
    sleep 0.1
done
export TEST_WEBDRIVER_URL="http://127.0.0.1:$driver_port"
# Console tests fail, rather than skip, without a browser.
export REQUIRE_BROWSER=1

if $run_sqlite; then
    echo "== tests on SQLite =="
    # Without TEST_PG_URL the harness uses SQLite; do not inherit one from the caller.
    env -u TEST_PG_URL cargo nextest run --workspace --no-fail-fast || failed+=(SQLite)
fi

if $run_postgres; then
    echo "== tests on PostgreSQL =="
    # Set before the start, so a half-started cluster is cleaned up by the EXIT trap too.
    pg_dir=$(mktemp -d)
    TEST_PG_URL=$(bash scripts/pg-cluster.sh start "$pg_dir")
    export TEST_PG_URL
    echo "PostgreSQL test cluster: $TEST_PG_URL (in $pg_dir)"
    cargo nextest run --workspace --no-fail-fast || failed+=(PostgreSQL)
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "== FAILED: tests on ${failed[*]} ==" >&2
    exit 1
fi
echo "== all tests passed ($backends) =="

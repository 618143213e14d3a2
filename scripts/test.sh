#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with the Rust toolchain: installs what the
# build needs, checks formatting and lints, then runs every test (unit, CLI and the HTTP
# integration tests, which start the real server on random loopback ports) twice: on SQLite,
# then on PostgreSQL (a throwaway cluster from scripts/pg-cluster.sh; the harness creates one
# database per test in it through TEST_PG_URL). Both runs must pass.
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

if $run_sqlite; then
    echo "== tests on SQLite =="
    # Without TEST_PG_URL the harness uses SQLite; do not inherit one from the caller.
    env -u TEST_PG_URL cargo nextest run --workspace --no-fail-fast || failed+=(SQLite)
fi

if $run_postgres; then
    echo "== tests on PostgreSQL =="
    pg_dir=$(mktemp -d)
    # Registered before the start, so a half-started cluster is cleaned up too. INT/TERM exit
    # through the EXIT trap as well.
    trap 'bash scripts/pg-cluster.sh stop "$pg_dir" || true' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
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

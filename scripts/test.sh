#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
# format and lint checks, the packaging checks (systemd unit, reference config, .deb), unit
# tests, the store suite on SQLite and on a throwaway Postgres cluster this script starts and
# stops itself, and the end-to-end tests that run the real binaries against the platform
# simulator on loopback (and render the admin page in headless Chromium, installed with
# apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain checks"
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
command -v python3 >/dev/null || { echo "python3 is required (a producer in the tests uses its sqlite3 module)"; exit 1; }

step "starting a throwaway Postgres cluster"
PGDIR=$(mktemp -d /tmp/outboxd-pg.XXXXXX)
cleanup() { scripts/pg-cluster.sh stop "$PGDIR" >/dev/null 2>&1 || true; }
trap cleanup EXIT
OUTBOX_TEST_PG_URL=$(scripts/pg-cluster.sh start "$PGDIR")
export OUTBOX_TEST_PG_URL
echo "Postgres: $OUTBOX_TEST_PG_URL"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "build the binaries the end-to-end tests run"
cargo build --workspace --bins

step "chromium (the admin page's end-to-end test renders the page in it, headless)"
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "chromium is missing: run as root, or apt-get install chromium fonts-wqy-microhei first"
        exit 1
    fi
    echo "installing Debian's chromium (and a CJK font: the platforms' replies are Chinese)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null
fi
chromium --version

step "packaging: systemd unit, reference config, .deb"
bash scripts/check-packaging.sh

step "cargo test"
cargo test --workspace

#!/usr/bin/env bash
# Installs what the benchmark baselines need, idempotently and without questions:
#   - target/bench-venv: a Python venv with a pinned `duckdb` (the Compute baseline,
#     crates/junction-bench/python/duckdb_baseline.py, run by `junction-bench compute-baseline`)
# Only PyPI is used. Not part of scripts/test: benchmarks are not CI tests.
# Prints the venv's python path on stdout (progress goes to stderr).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DUCKDB_VERSION=2.0.1
VENV="$ROOT/target/bench-venv"

say() { printf '== bench-deps: %s\n' "$*" >&2; }
die() { printf '!! bench-deps: %s\n' "$*" >&2; exit 1; }
trap 'die "failed at line $LINENO (exit $?): $BASH_COMMAND"' ERR

command -v python3 >/dev/null || die "python3 is needed (Debian: apt-get install python3 python3-venv)"
installed() {
    "$VENV/bin/python" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$DUCKDB_VERSION')" 2>/dev/null
}
if [ -x "$VENV/bin/python" ] && installed; then
    say "target/bench-venv has duckdb $DUCKDB_VERSION (pip skipped)"
else
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        say "python3 -m venv target/bench-venv ($(python3 --version))"
        rm -rf "$VENV"
        mkdir -p "$ROOT/target"
        python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    fi
    say "pip install duckdb==$DUCKDB_VERSION"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q "duckdb==$DUCKDB_VERSION" >&2
    installed || die "duckdb $DUCKDB_VERSION is not importable after pip install"
fi
echo "$VENV/bin/python"

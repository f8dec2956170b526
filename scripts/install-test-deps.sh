#!/usr/bin/env bash
# Installs what the real-SDK and real-browser tests need (crates/junction/tests/it/{sdk,browser}.rs),
# idempotently and without questions, on a fresh Debian machine as root:
#   - tests/sdk/node_modules: `npm ci` (skipped when it matches package-lock.json)
#   - tests/sdk/.venv: a Python venv with tests/sdk/requirements.txt (skipped when satisfied)
#   - Debian's `chromium` (apt; `apt-get update` only when it is not installed yet)
#   - tests/sdk/browser/bundle.js: @segment/analytics-next bundled with esbuild
# Only the npm registry, PyPI and Debian's apt repositories are used (no browser downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SDK="$ROOT/tests/sdk"

say() { printf '== install-test-deps: %s\n' "$*"; }
die() { printf '!! install-test-deps: %s\n' "$*" >&2; exit 1; }
trap 'die "failed at line $LINENO (exit $?): $BASH_COMMAND"' ERR

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "need Debian packages ${missing[*]} but apt-get is not available"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        "${sudo[@]}" apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install ${missing[*]}"
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

sha() { sha256sum "$@" | awk '{print $1}' | sha256sum | awk '{print $1}'; }

# --- Node packages -----------------------------------------------------------------------------
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    say "node/npm not found: installing Debian's nodejs and npm"
    apt_install nodejs npm
fi
say "node $(node --version), npm $(npm --version 2>/dev/null)"
LOCK_SUM=$(sha "$SDK/package.json" "$SDK/package-lock.json")
STAMP="$SDK/node_modules/.junction-installed"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$LOCK_SUM" ] \
    && [ -f "$SDK/node_modules/@segment/analytics-next/package.json" ]; then
    say "tests/sdk/node_modules is current (npm ci skipped)"
else
    say "npm ci in tests/sdk"
    # --ignore-scripts: nothing here needs an install script (esbuild's binary comes in its
    # platform package; msgpackr-extract is an optional native speed-up of a dependency).
    (cd "$SDK" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    echo "$LOCK_SUM" > "$STAMP"
fi

# --- Python venv -------------------------------------------------------------------------------
command -v python3 >/dev/null || apt_install python3
VENV="$SDK/.venv"
REQ_SUM=$(sha "$SDK/requirements.txt")
PY_STAMP="$VENV/.junction-installed"
if [ -x "$VENV/bin/python" ] && [ -f "$PY_STAMP" ] && [ "$(cat "$PY_STAMP")" = "$REQ_SUM" ] \
    && "$VENV/bin/python" -c 'import segment.analytics, rudderstack.analytics' 2>/dev/null; then
    say "tests/sdk/.venv is current (pip skipped)"
else
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        say "python3 -m venv tests/sdk/.venv ($(python3 --version))"
        rm -rf "$VENV"
        if ! python3 -m venv "$VENV" 2>/dev/null; then
            rm -rf "$VENV"
            PYV=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
            apt_install "python${PYV}-venv" || apt_install python3-venv
            python3 -m venv "$VENV"
        fi
    fi
    say "pip install -r tests/sdk/requirements.txt"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$SDK/requirements.txt"
    "$VENV/bin/python" -c 'import segment.analytics, rudderstack.analytics'
    echo "$REQ_SUM" > "$PY_STAMP"
fi

# --- Chromium (Debian's; never a downloaded browser build) -------------------------------------
if dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q 'install ok installed'; then
    say "chromium is installed"
else
    apt_install chromium
fi
[ -x /usr/bin/chromium ] || die "/usr/bin/chromium missing after installing Debian's chromium"
say "$(/usr/bin/chromium --version 2>/dev/null | head -1)"

# --- The browser bundle ------------------------------------------------------------------------
BUNDLE="$SDK/browser/bundle.js"
if [ -f "$BUNDLE" ] && [ "$BUNDLE" -nt "$SDK/browser/entry.js" ] && [ "$BUNDLE" -nt "$STAMP" ]; then
    say "tests/sdk/browser/bundle.js is current"
else
    say "esbuild tests/sdk/browser/entry.js -> bundle.js"
    # One IIFE file: dynamic imports are inlined (no code splitting, nothing loaded from a CDN).
    (cd "$SDK" && node_modules/.bin/esbuild browser/entry.js --bundle --format=iife --platform=browser \
        --target=es2020 --minify --log-level=warning --outfile=browser/bundle.js)
fi
if grep -q 'import(' "$BUNDLE"; then die "bundle.js still contains a dynamic import() (chunk loading)"; fi
say "done"

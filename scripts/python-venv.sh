#!/usr/bin/env bash
# Creates (or refreshes) the Python virtualenv used by the SDK conformance tests
# (tests/python, run from crates/redisgate-server/tests/it/python_sdk.rs).
#
#   venv:         ${REDISGATE_VENV:-<repo>/.venv}
#   requirements: tests/python/requirements.txt
#
# Idempotent: an existing, working venv is reused, and pip runs only when the
# requirements file changed since the last successful install.
# All progress goes to stderr; the LAST line of stdout is the venv's python, so
# callers can do:  REDISGATE_TEST_PYTHON="$(scripts/python-venv.sh | tail -n1)"
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${REDISGATE_VENV:-$repo/.venv}"
req="$repo/tests/python/requirements.txt"
py="$venv/bin/python"
stamp="$venv/.redisgate-requirements.sha256"

log() { echo "python-venv: $*" >&2; }

command -v python3 >/dev/null 2>&1 || {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "python3 not found; installing it with apt-get"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >&2
    else
        log "python3 is required"; exit 1
    fi
}

venv_ok() { [ -x "$py" ] && "$py" -c 'import sys' >/dev/null 2>&1 && "$py" -m pip --version >/dev/null 2>&1; }

if ! venv_ok; then
    rm -rf "$venv"
    log "creating venv at $venv"
    if ! python3 -m venv "$venv" >&2; then
        # Debian/Ubuntu ship venv/ensurepip separately (python3-venv).
        rm -rf "$venv"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            log "python3 -m venv failed; installing python3-venv with apt-get"
            apt-get update -qq >&2
            ver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2 \
                || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$ver-venv" >&2
            python3 -m venv "$venv" >&2
        else
            log "python3 -m venv failed; install python3-venv (e.g. apt-get install python3-venv)"
            exit 1
        fi
    fi
    venv_ok || { log "venv at $venv is unusable"; exit 1; }
fi

want="$(sha256sum "$req" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    log "installing $req"
    "$py" -m pip install -q --disable-pip-version-check -r "$req" >&2
    echo "$want" > "$stamp"
fi

echo "$py"

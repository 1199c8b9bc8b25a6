#!/usr/bin/env bash
# The test command (README): installs what the tests need when it is missing, then runs
# every test of the workspace. Tests start their own redis-server processes on free ports;
# they never use a Redis or PostgreSQL the machine may already run.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The official Python SDK (upstash-redis) in a private venv, for the SDK test.
REDISGATE_TEST_PYTHON=$(scripts/python-venv.sh | tail -n 1)
export REDISGATE_TEST_PYTHON

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace "$@"
fi

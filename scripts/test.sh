#!/usr/bin/env bash
# The test command (README): installs what the tests need when it is missing, then runs
# every test of the workspace. Tests start their own redis-server processes on free ports;
# they never use a Redis or PostgreSQL the machine may already run.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v pg_isready >/dev/null 2>&1 || missing+=(postgresql-client)
# deploy/ checks: promtool, amtool, docker-compose (config validation only; no engine needed).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
# @upstash/ratelimit and @upstash/lock (tests/node) run on Node.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# The console's browser test (tests/browser) drives Debian's chromium with playwright-core.
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # Without --no-install-recommends, docker-compose pulls in a whole container engine.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# PostgreSQL for the store conformance suite: use the one on 127.0.0.1:5432 if it answers,
# start an installed cluster if it does not, install one if there is none. A cluster we
# install ourselves gets the password the tests use; an existing one is left as it is.
export REDISGATE_TEST_DATABASE_URL="${REDISGATE_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! pg_up; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  fresh=0
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "installing: postgresql" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
    fresh=1
  fi
  for v in /etc/postgresql/*; do
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$(basename "$v")" main start || true
  done
  for _ in $(seq 50); do pg_up && break; sleep 0.2; done
  pg_up || { echo "PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1; }
  if [ $fresh = 1 ]; then
    $SUDO -u postgres psql -q -c "ALTER USER postgres PASSWORD 'postgres'" 2>/dev/null \
      || su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\""
  fi
fi

# The Upstash libraries' pinned versions (tests/node/package-lock.json), installed again only
# when the lock file changed.
stamp=tests/node/node_modules/.redisgate-lock.sha256
want=$(sha256sum tests/node/package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error >&2
  echo "$want" > "$stamp"
fi

# The console's browser test: playwright-core and axe-core, pinned in tests/browser's lock
# file. With chromium and these installed, the test must run: it may not skip.
stamp=tests/browser/node_modules/.redisgate-lock.sha256
want=$(sha256sum tests/browser/package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error >&2
  echo "$want" > "$stamp"
fi
export REDISGATE_TEST_REQUIRE_BROWSER=1

# The official Python SDK (upstash-redis) in a private venv, for the SDK test.
REDISGATE_TEST_PYTHON=$(scripts/python-venv.sh | tail -n 1)
export REDISGATE_TEST_PYTHON

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace "$@"
fi

#!/usr/bin/env bash
# The run command (README): builds RedisGate and serves the Upstash REST API.
#   - Without REDISGATE_REDIS_URL (and no SRH_MODE or config file), it runs a private
#     redis-server with its data under ./data/redis, installing redis-server if missing.
#   - Without REDISGATE_TOKEN, it generates a random token once, keeps it in ./data/token
#     (mode 600) and prints it.
# Arguments go to `redisgate serve` (e.g. --listen 0.0.0.0:8080, -c redisgate.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data

if [ -z "${REDISGATE_REDIS_URL:-}${SRH_MODE:-}${REDISGATE_CONFIG:-}" ] && [[ " $* " != *" -c "* && " $* " != *" --config"* ]]; then
  if ! command -v redis-server >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  fi
  port=6390
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  mkdir -p data/redis
  redis-server --port "$port" --bind 127.0.0.1 --dir "$PWD/data/redis" --appendonly yes \
    --save "" --logfile "$PWD/data/redis/redis.log" &
  redis_pid=$!
  trap 'kill "$redis_pid" 2>/dev/null || true' EXIT
  export REDISGATE_REDIS_URL="redis://127.0.0.1:$port"
  echo "private redis-server on 127.0.0.1:$port (data in ./data/redis)" >&2
  if [ -z "${REDISGATE_TOKEN:-}" ]; then
    if [ ! -s data/token ]; then
      (umask 077; head -c 32 /dev/urandom | base64 | tr -d '+/=\n' > data/token)
    fi
    REDISGATE_TOKEN=$(cat data/token)
    export REDISGATE_TOKEN
    echo "token (from ./data/token): $REDISGATE_TOKEN" >&2
  fi
fi

cargo build --release -q -p redisgate
bin="${CARGO_TARGET_DIR:-target}/release/redisgate"
"$bin" serve "$@" &
gw_pid=$!
trap 'kill -TERM "$gw_pid" 2>/dev/null; wait "$gw_pid"; kill "${redis_pid:-}" 2>/dev/null || true' INT TERM
wait "$gw_pid"

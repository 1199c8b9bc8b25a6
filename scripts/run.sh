#!/usr/bin/env bash
# The run command (README): builds RedisGate and serves it with the embedded defaults — an
# SQLite metadata store and local redis-server instances, both under ./data — installing
# redis-server first if it is missing. Arguments go to `redisgate serve`
# (e.g. --listen 0.0.0.0:8080, -c redisgate.toml); REDISGATE_* and SRH_* variables work too.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
cargo build --release -q -p redisgate
exec "${CARGO_TARGET_DIR:-target}/release/redisgate" serve "$@"

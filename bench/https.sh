#!/usr/bin/env bash
# bench/https.sh — what TLS costs RedisGate: the same process serves HTTPS on one port and plain
# HTTP on another (tls.plain_listen), and identical wrk runs go to both, back to back.
#
# What it does, in one go:
#   1. uses the release binary (build it with bench/run.sh or `cargo build --release -p
#      redisgate`; this script builds nothing);
#   2. makes a throw-away P-256 certificate for 127.0.0.1 with openssl;
#   3. starts its own redis-server and RedisGate (HTTPS on one port, plain HTTP on another);
#   4. steady state: wrk GET of a 100-byte value over keep-alive connections, HTTP then HTTPS
#      (TLS 1.3, HTTP/1.1: wrk speaks no HTTP/2);
#   5. handshake cost: the same GET with `Connection: close`, so every request is a new TCP
#      connection (and over HTTPS a full TLS handshake: wrk resumes no sessions), HTTP then HTTPS;
#   6. prints req/s, p50/p99 and the server's CPU time per request, with the ratios HTTPS/HTTP,
#      writes results.tsv, results.md and the raw outputs to the output dir, and stops
#      everything it started (by PID).
#
# Usage:  bench/https.sh [options]
#   --binary PATH         the redisgate binary (default $CARGO_TARGET_DIR/release/redisgate,
#                         else <repo>/target/release/redisgate)
#   --duration S          seconds per wrk run (default 8; the whole run then takes ~45 s)
#   --conns N             connections per wrk run (default 50)
#   --pin                 redis and RedisGate on CPU 0, wrk on CPU 1 (taskset)
#   --out DIR             output dir (default /tmp/redisgate-https-bench.<timestamp>)
#   -h, --help            this text
#
# Columns (results.tsv): scheme, test, conns, rps, p50_ms, p99_ms, srv_cpu_us_per_req (CPU time
#   of the RedisGate process divided by requests served), other_cpu_pct (machine CPU used by
#   anything but RedisGate, redis and wrk during the run: > 10 flags NOISY), note.
# Installs nothing. Needs: redis-server, wrk (built with OpenSSL, as Debian's is), openssl, curl,
# util-linux (taskset), iproute2 (ss).

set -u
SELF=$(readlink -f "$0")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)

# shellcheck source=bench/common.sh
. "$REPO/bench/common.sh"
single_run_args "$@"

need redis-server redis-server; need wrk wrk; need openssl openssl; need curl curl
need taskset util-linux; need ss iproute2
needs_met
release_binary
out_dir /tmp/redisgate-https-bench

REDIS_PID=""; GW_PID=""; LOAD_PID=""
cleanup() {
  trap - EXIT INT TERM
  for p in $LOAD_PID $GW_PID $REDIS_PID; do kill -TERM "$p" 2>/dev/null; done
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    alive=0; for p in $LOAD_PID $GW_PID $REDIS_PID; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.2
  done
  for p in $LOAD_PID $GW_PID $REDIS_PID; do kill -KILL "$p" 2>/dev/null; done
}
trap cleanup EXIT INT TERM


# ---------------------------------------------------------------- certificate, redis, RedisGate
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>"$OUT/openssl.log" \
  || { echo "openssl could not make a certificate (see $OUT/openssl.log)" >&2; exit 1; }
RPORT=$(free_port 6392)
"${SRV_PIN[@]}" redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$OUT" > "$OUT/redis.log" 2>&1 &
REDIS_PID=$!
wait_until 5 redis-cli -p "$RPORT" ping || { echo "redis-server did not start" >&2; exit 1; }
KEY=bench:https; redis-cli -p "$RPORT" set "$KEY" "$(head -c 100 /dev/zero | tr '\0' x)" > /dev/null
TOKEN=bench-https-token-$$-$RANDOM
TPORT=$(free_port 7443); PPORT=$(free_port $((TPORT + 1)))
unset_env=(); for v in $(compgen -e | grep -E '^(REDISGATE_|SRH_)'); do unset_env+=(-u "$v"); done
"${SRV_PIN[@]}" env "${unset_env[@]}" REDISGATE_TOKEN="$TOKEN" REDISGATE_REDIS_URL="redis://127.0.0.1:$RPORT" \
  REDISGATE_RATE_LIMIT__PER_SECOND=1000000000 REDISGATE_RATE_LIMIT__BURST=1000000000 \
  REDISGATE_DATA_DIR="$OUT/redisgate-data" \
  REDISGATE_TLS__CERT_FILE="$OUT/cert.pem" REDISGATE_TLS__KEY_FILE="$OUT/key.pem" \
  REDISGATE_TLS__PLAIN_LISTEN="127.0.0.1:$PPORT" \
  "$BIN" serve --listen "127.0.0.1:$TPORT" > "$OUT/redisgate.log" 2>&1 &
GW_PID=$!
HTTPS="https://127.0.0.1:$TPORT"; HTTP="http://127.0.0.1:$PPORT"
ready() { curl -sf --cacert "$OUT/cert.pem" -H "Authorization: Bearer $TOKEN" "$HTTPS/GET/$KEY" && curl -sf -H "Authorization: Bearer $TOKEN" "$HTTP/GET/$KEY"; }
wait_until 15 ready || { echo "RedisGate did not serve both listeners (see $OUT/redisgate.log)" >&2; exit 1; }

# ---------------------------------------------------------------- runs
printf 'scheme\ttest\tconns\trps\tp50_ms\tp99_ms\tsrv_cpu_us_per_req\tother_cpu_pct\tnote\n' > "$OUT/results.tsv"
# run SCHEME TEST BASE [wrk args...]
run() {
  local scheme=$1 test=$2 base=$3; shift 3
  local tag="$scheme-$test" url="$base/GET/$KEY"
  echo "wrk -t2 -c$CONNS -d${DURATION}s --latency -H 'Authorization: Bearer <token>' $* $url" >> "$OUT/commands.txt"
  local c0 m0 c1 m1 w0 w1
  c0=$(cpu_ticks "$GW_PID"); m0=$(machine_busy_ticks); w0=$(( $(cpu_ticks "$REDIS_PID") ))
  "${LOAD_PIN[@]}" wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "$@" "$url" > "$OUT/$tag.wrk" 2>&1 &
  LOAD_PID=$!
  wait "$LOAD_PID"; LOAD_PID=""
  c1=$(cpu_ticks "$GW_PID"); m1=$(machine_busy_ticks); w1=$(cpu_ticks "$REDIS_PID")
  local rps reqs p50 p99 us other note=""
  rps=$(awk '/^Requests\/sec/{printf "%.0f", $2}' "$OUT/$tag.wrk"); rps=${rps:-0}
  reqs=$(awk '/requests in/{print $1; exit}' "$OUT/$tag.wrk"); reqs=${reqs:-0}
  p50=$(to_ms "$(awk '$1=="50%"{print $2}' "$OUT/$tag.wrk")"); p99=$(to_ms "$(awk '$1=="99%"{print $2}' "$OUT/$tag.wrk")")
  us=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v n="$reqs" 'BEGIN{ if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-" }')
  # Whatever else ran: all busy ticks minus RedisGate's, redis' and (roughly) wrk's, which
  # uses about as much CPU as the server it drives.
  other=$(awk -v all=$((m1 - m0)) -v gw=$((c1 - c0)) -v r=$((w1 - w0)) -v hz="$HZ" -v d="$DURATION" -v n="$(nproc)" \
    'BEGIN{ o = (all - 2 * gw - r) / (hz * d * n) * 100; if (o < 0) o = 0; printf "%.0f", o }')
  [ "$other" -gt 10 ] && note="NOISY"
  local err; err=$(awk '/Non-2xx|Socket errors/{gsub(/^ +/,""); printf "%s; ", $0}' "$OUT/$tag.wrk")
  [ -n "$err" ] && note="${note:+$note,}$err"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scheme" "$test" "$CONNS" "$rps" "$p50" "$p99" "$us" "$other" "$note" >> "$OUT/results.tsv"
  printf '  %-6s %-14s %8s req/s  p50 %7s ms  p99 %7s ms  %7s us CPU/req  %s\n' "$scheme" "$test" "$rps" "$p50" "$p99" "$us" "$note"
}
echo "wrk runs (${DURATION}s each, $CONNS connections):"
run http keep-alive "$HTTP"
run https keep-alive "$HTTPS"
run http new-conn "$HTTP" -H "Connection: close"
run https new-conn "$HTTPS" -H "Connection: close"

# ---------------------------------------------------------------- report
col() { awk -F'\t' -v s="$1" -v t="$2" -v c="$3" '$1==s && $2==t {print $c}' "$OUT/results.tsv"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0 > 0 && a != "-") printf "%.2f", a / b; else print "-" }'; }
{
  echo "# RedisGate HTTPS vs plain HTTP"
  echo
  echo "- machine: $(nproc) CPUs, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo); load avg at end: $(cut -d' ' -f1-3 /proc/loadavg); pin: $([ "$PIN" = 1 ] && echo yes || echo no)"
  echo "- versions: RedisGate $("$BIN" --version 2>/dev/null | awk '{print $2}') (git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')), $(wrk -v 2>&1 | awk 'NR==1{print $1, $2}'), $(openssl version | awk '{print $1, $2}')"
  echo "- wrk -t2 -c$CONNS -d${DURATION}s, GET of a 100-byte value; new-conn: \`Connection: close\` (a TCP connection, and a full TLS 1.3 handshake, per request)"
  echo
  echo "| test | HTTP req/s | HTTPS req/s | HTTPS/HTTP | HTTP p99 ms | HTTPS p99 ms | HTTP CPU µs/req | HTTPS CPU µs/req | notes |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for t in keep-alive new-conn; do
    echo "| $t | $(col http $t 4) | $(col https $t 4) | $(ratio "$(col https $t 4)" "$(col http $t 4)") | $(col http $t 6) | $(col https $t 6) | $(col http $t 7) | $(col https $t 7) | $(col http $t 9) $(col https $t 9) |"
  done
  echo
  echo "Handshake cost (server CPU per new HTTPS connection beyond a plain one): $(awk -v a="$(col https new-conn 7)" -v b="$(col http new-conn 7)" 'BEGIN{ if (a != "-" && b != "-") printf "%.0f µs", a - b; else print "-" }')"
} > "$OUT/results.md"
echo
cat "$OUT/results.md"
echo
echo "results: $OUT/results.tsv  $OUT/results.md  (raw wrk outputs and commands.txt alongside)"

#!/usr/bin/env bash
# bench/cluster.sh — what routing through a Redis Cluster costs RedisGate: one RedisGate serves
# two external instances, one a single redis-server, one a 3-primary Redis Cluster (no
# replicas), all on loopback, and identical wrk runs go to both, back to back.
#
# What it does, in one go:
#   1. uses the release binary (build it with bench/run.sh or `cargo build --release -p
#      redisgate`; this script builds nothing);
#   2. starts its own redis-server, three cluster-enabled redis-servers joined with
#      `redis-cli --cluster create … --cluster-replicas 0`, and RedisGate with the control plane
#      (SQLite in the output dir, the egress policy allowing 127.0.0.1 only, rate limits off);
#   3. registers an account, makes an organization, the two instances (`kind: cluster` with the
#      three nodes as seeds) and a read-write API key, and seeds a 100-byte value through each;
#   4. wrk GET and SET of that 100-byte value at --conns connections (path form,
#      /redis/{id}/get/key, /redis/{id}/set/key/value), single then cluster for each command;
#   5. prints req/s, p50/p99 and RedisGate's CPU time per request, with the ratios
#      cluster/single, writes results.tsv, results.md and the raw outputs to the output dir, and
#      stops everything it started (by PID).
# One key per command, as in the other rows: every request goes to the primary of its slot, so
# this measures the routing (slot, map lookup, the node's backend), not a spread over nodes.
#
# Usage:  bench/cluster.sh [options]
#   --binary PATH         the redisgate binary (default $CARGO_TARGET_DIR/release/redisgate,
#                         else <repo>/target/release/redisgate)
#   --duration S          seconds per wrk run (default 8; the whole run then takes ~45 s)
#   --conns N             connections per wrk run (default 50)
#   --pin                 the servers on CPU 0, wrk on CPU 1 (taskset)
#   --out DIR             output dir (default /tmp/redisgate-cluster-bench.<timestamp>)
#   -h, --help            this text
#
# Columns (results.tsv): backend, test, conns, rps, p50_ms, p99_ms, srv_cpu_us_per_req (CPU time
#   of the RedisGate process divided by requests served), other_cpu_pct (machine CPU used by
#   anything but RedisGate, the redis-servers and wrk during the run: > 10 flags NOISY), note.
# Installs nothing. Needs: redis-server, redis-tools (redis-cli), wrk, curl, jq, util-linux
# (taskset), iproute2 (ss).

set -u -o pipefail
SELF=$(readlink -f "$0")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)

# shellcheck source=bench/common.sh
. "$REPO/bench/common.sh"
single_run_args "$@"

need redis-server redis-server; need redis-cli redis-tools; need wrk wrk; need curl curl; need jq jq
need taskset util-linux; need ss iproute2
needs_met
release_binary
out_dir /tmp/redisgate-cluster-bench

REDIS_PID=""; NODE_PIDS=""; GW_PID=""; LOAD_PID=""
cleanup() {
  trap - EXIT INT TERM
  for p in $LOAD_PID $GW_PID $NODE_PIDS $REDIS_PID; do kill -TERM "$p" 2>/dev/null; done
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    alive=0; for p in $LOAD_PID $GW_PID $NODE_PIDS $REDIS_PID; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.2
  done
  for p in $LOAD_PID $GW_PID $NODE_PIDS $REDIS_PID; do kill -KILL "$p" 2>/dev/null; done
}
trap cleanup EXIT INT TERM

# ---------------------------------------------------------------- redis, the cluster, RedisGate
redis_args=(--bind 127.0.0.1 --save '' --appendonly no)
RPORT=$(free_port 6392)
"${SRV_PIN[@]}" redis-server --port "$RPORT" "${redis_args[@]}" --dir "$OUT" > "$OUT/redis.log" 2>&1 &
REDIS_PID=$!
wait_until 5 redis-cli -p "$RPORT" ping || { echo "redis-server did not start" >&2; exit 1; }
SEEDS=(); NODES=(); p=$((RPORT + 1))
for i in 1 2 3; do
  p=$(free_port "$p"); mkdir -p "$OUT/node-$p"
  "${SRV_PIN[@]}" redis-server --port "$p" "${redis_args[@]}" --dir "$OUT/node-$p" --cluster-enabled yes \
    --cluster-config-file nodes.conf > "$OUT/node-$p.log" 2>&1 &
  NODE_PIDS="$NODE_PIDS $!"
  wait_until 5 redis-cli -p "$p" ping || { echo "cluster node $p did not start" >&2; exit 1; }
  NODES+=("127.0.0.1:$p"); SEEDS+=("\"127.0.0.1:$p\""); p=$((p + 1))
done
redis-cli --cluster create "${NODES[@]}" --cluster-replicas 0 --cluster-yes > "$OUT/cluster-create.log" 2>&1 \
  || { echo "redis-cli --cluster create failed (see $OUT/cluster-create.log)" >&2; exit 1; }
cluster_ok() { local n; for n in "${NODES[@]}"; do redis-cli -p "${n##*:}" cluster info | grep -q cluster_state:ok || return 1; done; }
wait_until 30 cluster_ok || { echo "the cluster did not reach cluster_state:ok" >&2; exit 1; }

GPORT=$(free_port 7391)
unset_env=(); for v in $(compgen -e | grep -E '^(REDISGATE_|SRH_)'); do unset_env+=(-u "$v"); done
"${SRV_PIN[@]}" env "${unset_env[@]}" REDISGATE_DATA_DIR="$OUT/redisgate-data" REDISGATE_LOG=warn \
  REDISGATE_RATE_LIMIT__ENABLED=false REDISGATE_INSTANCES__EXTERNAL__ALLOW=127.0.0.1/32 \
  "$BIN" serve --listen "127.0.0.1:$GPORT" > "$OUT/redisgate.log" 2>&1 &
GW_PID=$!
GW="http://127.0.0.1:$GPORT"
wait_until 15 curl -sf "$GW/health/live" || { echo "RedisGate did not start (see $OUT/redisgate.log)" >&2; exit 1; }

# api METHOD PATH [JSON]: the answer's body; stops the run on a non-2xx answer
SESSION=""
api() {
  local out args=(-s -w '\n%{http_code}' -X "$1" "$GW$2" -H 'content-type: application/json')
  [ -n "$SESSION" ] && args+=(-H "authorization: Bearer $SESSION")
  [ $# -ge 3 ] && args+=(-d "$3")
  out=$(curl "${args[@]}")
  case "${out##*$'\n'}" in 2*) echo "${out%$'\n'*}";; *) echo "$1 $2: ${out##*$'\n'} ${out%$'\n'*}" >&2; exit 1;; esac
}
CREDS='{"email":"bench@example.com","password":"a long bench passphrase"}'
api POST /auth/register "$CREDS" > /dev/null || exit 1
SESSION=$(api POST /auth/login "$CREDS" | jq -r .token) || exit 1
ORG=$(api POST /api/organizations '{"name":"Bench"}' | jq -r .id) || exit 1
O="/api/organizations/$ORG"
instance() {  # instance BODY: the new instance's id, which must be running
  local r; r=$(api POST "$O/redis-instances" "$1") || exit 1
  [ "$(jq -r .status <<< "$r")" = running ] || { echo "instance not running: $r" >&2; exit 1; }
  jq -r .id <<< "$r"
}
SINGLE=$(instance "{\"name\":\"single\",\"provisioner\":\"external\",\"url\":\"redis://127.0.0.1:$RPORT\"}") || exit 1
CLUSTER=$(instance "{\"name\":\"cluster\",\"provisioner\":\"external\",\"kind\":\"cluster\",\"cluster\":{\"seeds\":[$(IFS=,; echo "${SEEDS[*]}")]}}") || exit 1
KEY=$(api POST "$O/api-keys" '{"name":"bench","scope":"read-write"}' | jq -r .key) || exit 1
AUTH="Authorization: Bearer $KEY"
K=bench:key; SK=bench:set; VAL=$(head -c 100 /dev/zero | tr '\0' x)
for id in "$SINGLE" "$CLUSTER"; do
  curl -sf -H "$AUTH" "$GW/redis/$id/set/$K/$VAL" > /dev/null || { echo "seeding $id failed" >&2; exit 1; }
  case "$(curl -s -H "$AUTH" "$GW/redis/$id/get/$K")" in *"$VAL"*) ;; *) echo "GET through $id did not return the value" >&2; exit 1;; esac
done
echo "RedisGate $GW (pid $GW_PID): single $SINGLE (redis :$RPORT), cluster $CLUSTER (${NODES[*]})"

# ---------------------------------------------------------------- runs
printf 'backend\ttest\tconns\trps\tp50_ms\tp99_ms\tsrv_cpu_us_per_req\tother_cpu_pct\tnote\n' > "$OUT/results.tsv"
servers_ticks() { local p t=0; for p in $REDIS_PID $NODE_PIDS; do t=$((t + $(cpu_ticks "$p"))); done; echo "$t"; }
# run BACKEND TEST URL
run() {
  local backend=$1 test=$2 url=$3
  local tag="$backend-$test"
  echo "wrk -t2 -c$CONNS -d${DURATION}s --latency -H 'Authorization: Bearer <key>' $url" >> "$OUT/commands.txt"
  local c0 m0 c1 m1 w0 w1
  c0=$(cpu_ticks "$GW_PID"); m0=$(machine_busy_ticks); w0=$(servers_ticks)
  "${LOAD_PIN[@]}" wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -H "$AUTH" "$url" > "$OUT/$tag.wrk" 2>&1 &
  LOAD_PID=$!
  wait "$LOAD_PID"; LOAD_PID=""
  c1=$(cpu_ticks "$GW_PID"); m1=$(machine_busy_ticks); w1=$(servers_ticks)
  local rps reqs p50 p99 us other note=""
  rps=$(awk '/^Requests\/sec/{printf "%.0f", $2}' "$OUT/$tag.wrk"); rps=${rps:-0}
  reqs=$(awk '/requests in/{print $1; exit}' "$OUT/$tag.wrk"); reqs=${reqs:-0}
  p50=$(to_ms "$(awk '$1=="50%"{print $2}' "$OUT/$tag.wrk")"); p99=$(to_ms "$(awk '$1=="99%"{print $2}' "$OUT/$tag.wrk")")
  us=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v n="$reqs" 'BEGIN{ if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-" }')
  # Whatever else ran: all busy ticks minus RedisGate's, the servers' and (roughly) wrk's, which
  # uses about as much CPU as the server it drives.
  other=$(awk -v all=$((m1 - m0)) -v gw=$((c1 - c0)) -v r=$((w1 - w0)) -v hz="$HZ" -v d="$DURATION" -v n="$(nproc)" \
    'BEGIN{ o = (all - 2 * gw - r) / (hz * d * n) * 100; if (o < 0) o = 0; printf "%.0f", o }')
  [ "$other" -gt 10 ] && note="NOISY"
  local err; err=$(awk '/Non-2xx|Socket errors/{gsub(/^ +/,""); printf "%s; ", $0}' "$OUT/$tag.wrk")
  [ -n "$err" ] && note="${note:+$note,}$err"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$backend" "$test" "$CONNS" "$rps" "$p50" "$p99" "$us" "$other" "$note" >> "$OUT/results.tsv"
  printf '  %-7s %-4s %8s req/s  p50 %7s ms  p99 %7s ms  %7s us CPU/req  %s\n' "$backend" "$test" "$rps" "$p50" "$p99" "$us" "$note"
}
echo "wrk runs (${DURATION}s each, $CONNS connections):"
for t in GET SET; do
  for b in single cluster; do
    id=$SINGLE; [ "$b" = cluster ] && id=$CLUSTER
    if [ "$t" = GET ]; then run "$b" GET "$GW/redis/$id/get/$K"; else run "$b" SET "$GW/redis/$id/set/$SK/$VAL"; fi
  done
done

# ---------------------------------------------------------------- report
col() { awk -F'\t' -v s="$1" -v t="$2" -v c="$3" '$1==s && $2==t {print $c}' "$OUT/results.tsv"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0 > 0 && a != "-") printf "%.2f", a / b; else print "-" }'; }
{
  echo "# RedisGate through a Redis Cluster vs a single Redis"
  echo
  echo "- machine: $(nproc) CPUs, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo); load avg at end: $(cut -d' ' -f1-3 /proc/loadavg); pin: $([ "$PIN" = 1 ] && echo yes || echo no)"
  echo "- versions: RedisGate $("$BIN" --version 2>/dev/null | awk '{print $2}') (git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')), $(redis-server --version | awk '{print "redis " substr($3,3)}'), $(wrk -v 2>&1 | awk 'NR==1{print $1, $2}')"
  echo "- wrk -t2 -c$CONNS -d${DURATION}s, 100-byte value, one API key, rate limits off; cluster: 3 primaries, no replicas, loopback"
  echo
  echo "| test | single req/s | cluster req/s | cluster/single req/s | single p99 ms | cluster p99 ms | cluster/single p99 | single CPU µs/req | cluster CPU µs/req | notes |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for t in GET SET; do
    echo "| $t | $(col single $t 4) | $(col cluster $t 4) | $(ratio "$(col cluster $t 4)" "$(col single $t 4)") | $(col single $t 6) | $(col cluster $t 6) | $(ratio "$(col cluster $t 6)" "$(col single $t 6)") | $(col single $t 7) | $(col cluster $t 7) | $(col single $t 9) $(col cluster $t 9) |"
  done
} > "$OUT/results.md"
echo
cat "$OUT/results.md"
echo
echo "results: $OUT/results.tsv  $OUT/results.md  (raw wrk outputs and commands.txt alongside)"

#!/usr/bin/env bash
# bench/run.sh — RedisGate vs webdis vs Redis itself, side by side, in one run on this machine.
#
# What it does, in one go:
#   1. builds the release binary (`cargo build --release -p redisgate`; output in
#      $CARGO_TARGET_DIR if set, else <repo>/target), unless --no-build;
#   2. starts its own redis-server (127.0.0.1, first free port from 6392, no persistence);
#   3. redis-benchmark against it: GET and SET, 100-byte value, at each concurrency (default
#      1 50 256) with -P 1, plus -P 16 (GET/SET) and -P 100 (GET) at 50 connections;
#   4. starts webdis (config written into the output dir) and RedisGate against that redis;
#   5. runs the SAME wrk settings (-t, -c, -d, --latency) against webdis and RedisGate, back
#      to back per test: GET and SET of a 100-byte value at each concurrency, POST of
#      ["GET",key] at 50 connections, and a pipeline of 100 GETs at 50 connections
#      (RedisGate: POST /pipeline with 100 commands, commands/s = req/s x 100;
#       webdis has no multi-command request, its nearest equivalent is HTTP/1.1 pipelining of
#       100 GET requests per round trip, where wrk counts every response, so commands/s = req/s;
#       Redis: redis-benchmark -P 100);
#   6. prints req/s, p50/p99 and RSS side by side with the ratios RedisGate/webdis and
#      RedisGate/redis, checks the targets, writes results.tsv, results.md and the raw outputs
#      to the output dir, and stops everything it started (by PID).
#
# Usage:  bench/run.sh [options]
#   --no-build            use the existing release binary, do not run cargo
#   --binary PATH         use this redisgate binary (implies --no-build)
#   --duration S          seconds per wrk run (default 8; whole run then takes ~3-3.5 min)
#   --conns "LIST"        concurrency sweep for GET/SET (default "1 50 256")
#   --pin                 server side (redis, webdis, RedisGate) on CPU 0, load generators
#                         (wrk, redis-benchmark) on CPU 1, via taskset
#   --webdis-threads N    webdis worker threads (default 2)
#   --out DIR             output dir (default /tmp/redisgate-bench.<timestamp>)
#   --callgrind           instead of the sweep: instructions per request of RedisGate under
#                         valgrind's callgrind (GET, SET, POST-GET, PIPE100; the pipeline also
#                         per command), deterministic where req/s is not; see bench/README.md
#   --rounds N            instead of the sweep: N alternating rounds of GET and SET at 50
#                         connections (and GET at 1), webdis then RedisGate back to back in
#                         each round, and the targets checked per round
#   --ab PATH             with --rounds (default 3): a second redisgate binary ("B") measured
#                         in every round right after the first ("A"), for before/after figures;
#                         with --callgrind: B counted the same way after A
#   --https               afterwards, the HTTPS row: bench/https.sh with the same binary,
#                         --duration and --pin (HTTPS vs plain HTTP of one RedisGate; ~45 s more)
#   --cluster             afterwards, the Cluster row: bench/cluster.sh with the same binary,
#                         --duration and --pin (a 3-primary Cluster instance vs a single-Redis
#                         one through one RedisGate; ~50 s more)
#   -h, --help            this text
#
# Columns (results.tsv): target, test, conns, rps (wrk Requests/sec; redis-benchmark rps),
#   cmd_per_s (commands/s: rps x commands per request), p50_ms/p99_ms (wrk --latency
#   percentiles; per request, i.e. per whole batch for pipelines), srv_cpu_pct (CPU of the
#   server process in % of one core), srv_rss_kb (VmRSS of the server sampled mid-run; for
#   redis-benchmark rows: redis-server right after the run), other_cpu_pct (machine CPU used by
#   anything but the server, redis and wrk during the run: foreign load; > 10 flags NOISY), note.
#
# The measuring part (everything after the build) has a hard time limit derived from
# --duration (~4 min by default); runs that would not fit are marked SKIPPED.
# Installs nothing. Needs: cargo (unless --no-build), redis-server, redis-tools, webdis, wrk,
# curl, util-linux (taskset), iproute2 (ss), time (GNU time).

set -u
SELF=$(readlink -f "$0")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)

BUILD=1; BIN=""; DURATION=8; MODE=sweep; ROUNDS=""; BIN_B=""; CONNS_LIST="1 50 256"; PIN=0; WEBDIS_THREADS=2; OUT=""; HTTPS=0; CLUSTER=0
MAIN_CONNS=50          # concurrency of the POST and pipeline tests and of the target check
PIPE_N=100             # commands per pipeline
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) BUILD=0; shift;;
    --binary) BIN=$2; BUILD=0; shift 2;;
    --duration) DURATION=$2; shift 2;;
    --conns) CONNS_LIST=$2; shift 2;;
    --pin) PIN=1; shift;;
    --webdis-threads) WEBDIS_THREADS=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --callgrind) MODE=callgrind; shift;;
    --rounds) ROUNDS=$2; MODE=rounds; shift 2;;
    --ab) BIN_B=$2; shift 2;;
    --https) HTTPS=1; shift;;
    --cluster) CLUSTER=1; shift;;
    -h|--help) awk 'NR>1 && /^set -u/{exit} NR>1' "$SELF"; exit 0;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2;;
  esac
done
case "$DURATION" in ''|*[!0-9]*|0) echo "--duration needs a whole number of seconds >= 1" >&2; exit 2;; esac
for c in $CONNS_LIST; do case "$c" in ''|*[!0-9]*|0) echo "--conns: bad value '$c'" >&2; exit 2;; esac; done
if [ -n "$BIN_B" ] && [ "$MODE" = sweep ]; then MODE=rounds; ROUNDS=3; fi
case "$ROUNDS" in ''|[1-9]|[1-9][0-9]) ;; *) echo "--rounds needs a whole number from 1 to 99" >&2; exit 2;; esac
if [ -n "$BIN_B" ]; then [ -x "$BIN_B" ] || { echo "--ab: no executable at $BIN_B" >&2; exit 2; }; BIN_B=$(realpath "$BIN_B"); fi

# ---------------------------------------------------------------- tools (install nothing)
# shellcheck source=bench/common.sh
. "$REPO/bench/common.sh"
need redis-server redis-server; need redis-cli redis-tools; need redis-benchmark redis-tools
need webdis webdis; need wrk wrk; need curl curl; need taskset util-linux; need ss iproute2
[ -x /usr/bin/time ] || { echo "missing: /usr/bin/time" >&2; missing_pkgs="$missing_pkgs time"; }
[ "$MODE" = callgrind ] && { need valgrind valgrind; need callgrind_control valgrind; }
needs_met

# ---------------------------------------------------------------- build
if [ -z "$BIN" ]; then
  if [ -n "${CARGO_TARGET_DIR:-}" ]; then TARGET_DIR=$(realpath -m "$CARGO_TARGET_DIR"); else TARGET_DIR="$REPO/target"; fi
  BIN="$TARGET_DIR/release/redisgate"
fi
if [ "$BUILD" = 1 ]; then
  command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (https://rustup.rs) or pass --no-build / --binary PATH" >&2; exit 2; }
  echo "building: (cd $REPO && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p redisgate)"
  (cd "$REPO" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p redisgate) || { echo "build failed" >&2; exit 1; }
fi
[ -x "$BIN" ] || { echo "no RedisGate binary at $BIN (build it, or pass --binary PATH)" >&2; exit 2; }

# ---------------------------------------------------------------- time budget
set -- $CONNS_LIST; NCONNS=$#
NBIN=1; [ -n "$BIN_B" ] && NBIN=2
case "$MODE" in
  sweep)
    N_WRK=$(( 2 * (2 * NCONNS + 2) ))                 # (GET,SET) x conns + POST + pipeline, x 2 targets
    N_RB=$(( NCONNS + 2 ))                             # redis-benchmark invocations
    BUDGET=$(( N_WRK * (DURATION + 4) + N_RB * 4 + 20 ));;  # seconds for the measuring part
  rounds)
    BUDGET=$(( ROUNDS * 3 * (NBIN + 1) * (DURATION + 4) + 30 ));;  # (GET50, SET50, GET1) x targets
  callgrind)
    # per binary: start under valgrind, then per test a 3 s warm-up, the counted run, the dump
    BUDGET=$(( NBIN * (4 * (DURATION + 12) + 40) ));;
esac
CAP=$(( BUDGET + 15 ))                             # hard limit (watchdog)
T_START=$SECONDS

out_dir /tmp/redisgate-bench

REDIS_PID=""; WEBDIS_PID=""; GW_PID=""; GWB_PID=""; LOAD_PID=""; WATCHDOG_PID=""
# kill a process and all its descendants (by PID, depth first)
kill_tree() { local c; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$c"; done; kill -TERM "$1" 2>/dev/null; }
cleanup() {
  trap - EXIT INT TERM
  [ -n "$LOAD_PID" ] && kill_tree "$LOAD_PID"
  for p in $GW_PID $GWB_PID $WEBDIS_PID $REDIS_PID; do kill -TERM "$p" 2>/dev/null; done
  for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
    alive=0; for p in $GW_PID $GWB_PID $WEBDIS_PID $REDIS_PID; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.2
  done
  for p in $GW_PID $GWB_PID $WEBDIS_PID $REDIS_PID; do kill -KILL "$p" 2>/dev/null; done
  [ -n "$WATCHDOG_PID" ] && kill_tree "$WATCHDOG_PID"
}
trap cleanup EXIT
trap 'echo "interrupted / time limit reached; stopping what this run started" >&2; exit 124' INT TERM
# watchdog: hard time limit for the measuring part
( sleep "$CAP" & wait $!; echo "time limit of ${CAP}s reached" >&2; kill -TERM $$ 2>/dev/null ) &
WATCHDOG_PID=$!

hwm_kb() { awk '/^VmHWM/{print $2}' "/proc/$1/status" 2>/dev/null; }
cpu_busy() { local a b c d e f g h t1 i1 t2 i2; read -r _ a b c d e f g h _ < /proc/stat; t1=$((a+b+c+d+e+f+g+h)); i1=$((d+e)); sleep "${1:-0.5}"; read -r _ a b c d e f g h _ < /proc/stat; t2=$((a+b+c+d+e+f+g+h)); i2=$((d+e)); echo $(( 100 - 100*(i2-i1)/(t2-t1+1) )); }
# wait (max 2 s) for the machine to be quiet (< 15% busy) before a run
wait_quiet() { local i; for i in 1 2 3 4; do [ "$(cpu_busy 0.5)" -lt 15 ] && return 0; done; return 1; }

HTTP_PIPELINED=""
RESULTS="$OUT/results.tsv"
printf "target\ttest\tconns\trps\tcmd_per_s\tp50_ms\tp99_ms\tsrv_cpu_pct\tsrv_rss_kb\tother_cpu_pct\tnote\n" > "$RESULTS"
: > "$OUT/commands.txt"

# ---------------------------------------------------------------- redis
RPORT=$(free_port 6392)
"${SRV_PIN[@]}" redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  --logfile "$OUT/redis.log" --dir "$OUT" &
REDIS_PID=$!
wait_until 5 redis-cli -p "$RPORT" ping || { echo "redis did not start on $RPORT" >&2; exit 1; }
KEY="bench:key"; SKEY="bench:set"; VAL=$(printf 'x%.0s' $(seq 100))
redis-cli -p "$RPORT" set "$KEY" "$VAL" >/dev/null

echo "output dir: $OUT"
echo "redis: 127.0.0.1:$RPORT (pid $REDIS_PID)   pin: $PIN   duration: ${DURATION}s   conns: $CONNS_LIST   time limit: ${CAP}s"
echo "machine: $(nproc) cpu ($(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)), load avg $(cut -d' ' -f1-3 /proc/loadavg)"

# rb LABEL_SUFFIX CONNS PIPELINE N TESTS
rb() {
  local c=$1 P=$2 n=$3 tests=$4 f="$OUT/redis-benchmark-c$1-P$2.csv"
  wait_quiet
  local cmd="redis-benchmark -h 127.0.0.1 -p $RPORT -t $tests -d 100 -n $n -c $c -P $P --csv"
  echo "$cmd" >> "$OUT/commands.txt"
  local r0 r1 t0 t1 rcpu
  r0=$(cpu_ticks $REDIS_PID); t0=$(date +%s.%N)
  timeout 60 "${LOAD_PIN[@]}" $cmd > "$f" 2>/dev/null &
  LOAD_PID=$!; wait $LOAD_PID; LOAD_PID=""
  r1=$(cpu_ticks $REDIS_PID); t1=$(date +%s.%N)
  rcpu=$(awk -v a=$r0 -v b=$r1 -v t0=$t0 -v t1=$t1 -v hz=$HZ 'BEGIN{printf "%.0f", 100*(b-a)/hz/(t1-t0)}')
  # CSV: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  awk -v P=$P -v c=$c -v rcpu=$rcpu -v rss="$(rss_kb $REDIS_PID)" 'NR>1{gsub(/"/,""); split($0,f,",");
      printf "redis\t%s-P%s\t%s\t%.0f\t%.0f\t%.3f\t%.3f\t%s\t%s\t-\tredis-benchmark\n", f[1], P, c, f[2], f[2], f[5], f[7], rcpu, rss}' \
    "$f" >> "$RESULTS"
}
if [ "$MODE" = sweep ]; then
  for c in $CONNS_LIST; do
    n=100000; [ "$c" -le 4 ] && n=20000
    rb "$c" 1 "$n" set,get
  done
  rb "$MAIN_CONNS" 16 1000000 set,get
  rb "$MAIN_CONNS" "$PIPE_N" 2000000 get
  redis-cli -p "$RPORT" set "$KEY" "$VAL" >/dev/null     # redis-benchmark used other keys; re-seed anyway
fi

# ---------------------------------------------------------------- webdis
if [ "$MODE" != callgrind ]; then
WPORT=$(free_port 7379)
cat > "$OUT/webdis.json" <<EOF
{ "redis_host": "127.0.0.1", "redis_port": $RPORT, "redis_auth": null,
  "http_host": "127.0.0.1", "http_port": $WPORT, "threads": $WEBDIS_THREADS, "pool_size": 20,
  "daemonize": false, "websockets": false, "database": 0,
  "acl": [ { "disabled": ["DEBUG"] } ],
  "verbosity": 1, "logfile": "$OUT/webdis.log" }
EOF
"${SRV_PIN[@]}" webdis "$OUT/webdis.json" > /dev/null 2>&1 &
WEBDIS_PID=$!
WEB="http://127.0.0.1:$WPORT"
wait_until 5 curl -sf "$WEB/PING" || { echo "webdis did not start on $WPORT" >&2; exit 1; }
case "$(curl -s "$WEB/GET/$KEY")" in *"$VAL"*) ;; *) echo "webdis GET did not return the seeded value" >&2; exit 1;; esac
echo "webdis: $WEB (pid $WEBDIS_PID, threads $WEBDIS_THREADS)"
fi

# ---------------------------------------------------------------- RedisGate
TOKEN="redisgate-bench-token-0123456789"
AUTH=(-H "Authorization: Bearer $TOKEN")
# a clean environment: no REDISGATE_* / SRH_* from the caller's shell leaks into the gateway
unset_env=(); for v in $(compgen -e | grep -E '^(REDISGATE_|SRH_)'); do unset_env+=(-u "$v"); done
# start_gateway NAME BINARY [WRAPPER...]: a standalone RedisGate on the first free port from
# 7391 with every feature of the hot path on: metrics, CORS (default), the sync token, and
# the rate limiter for the token (standalone tokens have no limit by default) at a limit no
# run reaches: 10^9/s with a burst of 1,000 (a burst of 10^9 would make every RateLimit-Remaining
# a ten-digit number, which no real key has); state (the SQLite metadata store) in the output
# dir. Sets GW_PORT and GW_LAST.
start_gateway() {
  local name=$1 bin=$2; shift 2
  GW_PORT=$(free_port 7391)
  "${SRV_PIN[@]}" env "${unset_env[@]}" REDISGATE_TOKEN="$TOKEN" REDISGATE_REDIS_URL="redis://127.0.0.1:$RPORT" \
    REDISGATE_RATE_LIMIT__PER_SECOND=1000000000 REDISGATE_RATE_LIMIT__BURST=1000000000 \
    REDISGATE_RATE_LIMIT__TOKENS__PER_SECOND=1000000000 REDISGATE_RATE_LIMIT__TOKENS__BURST=1000 \
    REDISGATE_DATA_DIR="$OUT/redisgate-data-$name" \
    "$@" "$bin" serve --listen "127.0.0.1:$GW_PORT" > "$OUT/redisgate-$name.log" 2>&1 &
  GW_LAST=$!
  local url="http://127.0.0.1:$GW_PORT"
  # under valgrind start-up takes seconds
  wait_until 60 curl -sf "${AUTH[@]}" "$url/get/$KEY" || { echo "RedisGate $name did not answer on $url (see $OUT/redisgate-$name.log)" >&2; exit 1; }
  case "$(curl -s "${AUTH[@]}" "$url/get/$KEY")" in *"$VAL"*) ;; *) echo "RedisGate $name GET did not return the seeded value" >&2; exit 1;; esac
  echo "RedisGate $name: $url (pid $GW_LAST, $("$bin" --version 2>/dev/null), binary $bin)"
}
GWB_PID=""; GWB=""
if [ "$MODE" != callgrind ]; then
  start_gateway A "$BIN"; GW_PID=$GW_LAST; GW="http://127.0.0.1:$GW_PORT"
  if [ -n "$BIN_B" ]; then start_gateway B "$BIN_B"; GWB_PID=$GW_LAST; GWB="http://127.0.0.1:$GW_PORT"; fi
fi

# ---------------------------------------------------------------- wrk scripts
POST_W="$OUT/webdis-post.lua"; POST_G="$OUT/redisgate-post.lua"
PIPE_W="$OUT/webdis-pipeline.lua"; PIPE_G="$OUT/redisgate-pipeline.lua"
printf 'wrk.method = "POST"\nwrk.body = "GET/%s"\nwrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n' "$KEY" > "$POST_W"
printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n' "'[\"GET\",\"$KEY\"]'" > "$POST_G"
# webdis: HTTP/1.1 pipelining, PIPE_N GET requests written back to back on each connection
cat > "$PIPE_W" <<EOF
init = function(args)
  local r = {}
  for i = 1, $PIPE_N do r[i] = wrk.format("GET", "/GET/$KEY") end
  req = table.concat(r)
end
request = function() return req end
EOF
body="["; for i in $(seq $PIPE_N); do body="$body[\"GET\",\"$KEY\"]"; [ "$i" -lt $PIPE_N ] && body="$body,"; done; body="$body]"
printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n' "'$body'" > "$PIPE_G"
# sanity: the pipeline answers PIPE_N results
check_pipeline() {
  local got; got=$(curl -s "${AUTH[@]}" -H 'Content-Type: application/json' --data "$body" "$1/pipeline" | grep -o '"result"' | wc -l)
  [ "$got" = "$PIPE_N" ] || echo "WARNING: RedisGate /pipeline returned $got results instead of $PIPE_N" >&2
}
if [ "$MODE" != callgrind ]; then
  check_pipeline "$GW"
  echo "idle RSS: webdis $(rss_kb $WEBDIS_PID) KB, RedisGate $(rss_kb $GW_PID) KB${GWB_PID:+, RedisGate B $(rss_kb $GWB_PID) KB}, redis $(rss_kb $REDIS_PID) KB" | tee "$OUT/rss.txt"
fi

# ---------------------------------------------------------------- wrk runs
# run TARGET TEST CONNS CMDS_PER_RESPONSE PID URL [wrk args...]
run() {
  local target=$1 test=$2 c=$3 k=$4 pid=$5 url=$6; shift 6
  local t=2; [ "$c" -lt 2 ] && t=1
  local tag="${target}_${test}_c${c}" note=""
  if [ $(( SECONDS - T_START + DURATION + 6 )) -gt "$BUDGET" ]; then
    printf "%s\t%s\t%s\t-\t-\t-\t-\t-\t-\t-\tSKIPPED(time budget)\n" "$target" "$test" "$c" >> "$RESULTS"; return 0
  fi
  wait_quiet || note="busy-before"
  local shown="$*"; shown=${shown//$TOKEN/***}
  echo "wrk -t$t -c$c -d${DURATION}s --latency $shown $url" >> "$OUT/commands.txt"
  local ck0 ck1 rssmid r0 r1 m0 m1 t0 t1
  ck0=$(cpu_ticks "$pid"); r0=$(cpu_ticks $REDIS_PID); m0=$(machine_busy_ticks); t0=$(date +%s.%N)
  /usr/bin/time -f '%U %S' -o "$OUT/$tag.time" timeout $((DURATION+15)) "${LOAD_PIN[@]}" \
    wrk -t$t -c"$c" -d"${DURATION}s" --latency "$@" "$url" > "$OUT/$tag.wrk" 2>&1 &
  LOAD_PID=$!
  sleep "$(awk -v d="$DURATION" 'BEGIN{print d/2}')"; rssmid=$(rss_kb "$pid")
  wait $LOAD_PID; LOAD_PID=""
  ck1=$(cpu_ticks "$pid"); r1=$(cpu_ticks $REDIS_PID); m1=$(machine_busy_ticks); t1=$(date +%s.%N)
  local w; w=$(awk '{print $1+$2}' "$OUT/$tag.time" 2>/dev/null); w=${w:-0}
  local rps cps p50 p99 srv other err
  rps=$(awk '/^Requests\/sec/{printf "%.0f", $2}' "$OUT/$tag.wrk"); rps=${rps:-0}
  cps=$(( rps * k ))
  p50=$(to_ms "$(awk '$1=="50%"{print $2}' "$OUT/$tag.wrk")"); p99=$(to_ms "$(awk '$1=="99%"{print $2}' "$OUT/$tag.wrk")")
  if [ "$rps" != 0 ] && { [ -n "$HTTP_PIPELINED" ] || [ "$p99" = 0.000 ]; }; then
    # wrk 4.1's percentiles are broken with HTTP pipelining (they come out as 0 or partly 0):
    # report its average and max per batch instead
    p50="-"; p99="-"
    note="${note:+$note,}no valid wrk percentiles with HTTP pipelining; per batch avg $(awk '$1=="Latency"{print $2", max "$4; exit}' "$OUT/$tag.wrk")"
  fi
  srv=$(awk -v a=$ck0 -v b=$ck1 -v t0=$t0 -v t1=$t1 -v hz=$HZ 'BEGIN{printf "%.0f", 100*(b-a)/hz/(t1-t0)}')
  other=$(awk -v c0=$ck0 -v c1=$ck1 -v r0=$r0 -v r1=$r1 -v m0=$m0 -v m1=$m1 -v t0=$t0 -v t1=$t1 -v w=$w -v hz=$HZ \
    'BEGIN{el=t1-t0; o=(m1-m0)/hz-(c1-c0)/hz-(r1-r0)/hz-w; if(o<0)o=0; printf "%.0f", 100*o/el}')
  err=$(awk '/Non-2xx|Socket errors/{gsub(/^ +/,""); printf "%s; ", $0}' "$OUT/$tag.wrk")
  [ "$rps" = 0 ] && err="${err}no result (see $tag.wrk); "
  [ -n "$err" ] && note="${note:+$note,}ERR:$err"
  [ "${other:-0}" -gt 10 ] && note="${note:+$note,}NOISY"
  printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$target" "$test" "$c" "$rps" "$cps" "$p50" "$p99" "$srv" "${rssmid:--}" "$other" "${note:--}" >> "$RESULTS"
  printf "  %-9s %-9s c=%-4s %9s req/s  p50 %8s ms  p99 %8s ms  %s\n" "$target" "$test" "$c" "$rps" "$p50" "$p99" "${note:--}"
}

# ---------------------------------------------------------------- --callgrind
# Instructions per request: RedisGate under callgrind, warmed up by 3 s of wrk, counters zeroed,
# DURATION s of `wrk -t1 -c4`, counters dumped; Ir of the dump over the requests wrk counted.
# Deterministic for a given binary and input, whatever else the machine is doing.
if [ "$MODE" = callgrind ]; then
  CG="$OUT/callgrind.tsv"
  printf "binary\ttest\trequests\tinstructions\tper_request\tper_command\tnote\n" > "$CG"
  cg_test() {  # cg_test NAME PID TEST CMDS_PER_REQUEST URL [wrk args...]
    local name=$1 pid=$2 test=$3 k=$4 url=$5; shift 5
    local tag="cg-$name-$test" note="-"
    local shown="$*"; shown=${shown//$TOKEN/***}
    echo "wrk -t1 -c4 -d${DURATION}s $shown $url   # under callgrind, after 3 s of warm-up" >> "$OUT/commands.txt"
    timeout 60 "${LOAD_PIN[@]}" wrk -t1 -c4 -d3s "$@" "$url" > "$OUT/$tag.warmup.wrk" 2>&1
    callgrind_control -z "$pid" > /dev/null 2>&1
    timeout $((DURATION + 60)) "${LOAD_PIN[@]}" wrk -t1 -c4 -d"${DURATION}s" "$@" "$url" > "$OUT/$tag.wrk" 2>&1
    callgrind_control -d "$tag" "$pid" > /dev/null 2>&1
    local dump; dump=$(ls -t "$OUT/cg-$name.out".* 2>/dev/null | head -1)
    local ir; ir=$(awk '/^(summary|totals):/{print $2; exit}' "$dump" 2>/dev/null)
    local n; n=$(awk '/requests in/{print $1; exit}' "$OUT/$tag.wrk")
    grep -q 'Non-2xx\|Socket errors' "$OUT/$tag.wrk" && note="ERR:$(awk '/Non-2xx|Socket errors/{gsub(/^ +/,""); printf "%s; ", $0}' "$OUT/$tag.wrk")"
    if [ -n "$ir" ] && [ "${n:-0}" -gt 0 ]; then
      printf "%s\t%s\t%s\t%s\t%.0f\t%.0f\t%s\n" "$name" "$test" "$n" "$ir" "$(awk -v a="$ir" -v b="$n" 'BEGIN{print a/b}')" \
        "$(awk -v a="$ir" -v b="$n" -v k="$k" 'BEGIN{print a/b/k}')" "$note" >> "$CG"
    else
      printf "%s\t%s\t-\t-\t-\t-\tno result (see %s.wrk, %s)\n" "$name" "$test" "$tag" "${dump:-no dump}" >> "$CG"
    fi
    tail -1 "$CG" | awk -F'\t' '{printf "  %-2s %-9s %8s requests  %9s instructions/request  %7s /command  %s\n", $1, $2, $3, $5, $6, $7}'
  }
  cg_binary() {  # cg_binary NAME BINARY
    local name=$1 bin=$2
    start_gateway "$name" "$bin" valgrind --tool=callgrind --callgrind-out-file="$OUT/cg-$name.out"
    local pid=$GW_LAST url="http://127.0.0.1:$GW_PORT"
    # the gateway under `env ... valgrind` is the valgrind process itself (env execs)
    check_pipeline "$url"
    cg_test "$name" "$pid" GET 1 "$url/get/$KEY" "${AUTH[@]}"
    cg_test "$name" "$pid" SET 1 "$url/set/$SKEY/$VAL" "${AUTH[@]}"
    cg_test "$name" "$pid" POST-GET 1 "$url/" -s "$POST_G" "${AUTH[@]}"
    cg_test "$name" "$pid" "PIPE$PIPE_N" "$PIPE_N" "$url/pipeline" -s "$PIPE_G" "${AUTH[@]}"
    kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  }
  echo "callgrind: wrk -t1 -c4, ${DURATION}s per test after a 3 s warm-up"
  cg_binary A "$BIN"; GW_PID=""
  [ -n "$BIN_B" ] && { cg_binary B "$BIN_B"; GWB_PID=""; }
  {
    echo "# RedisGate instructions per request: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- A: $BIN ($("$BIN" --version 2>/dev/null); git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo '+dirty'))"
    [ -n "$BIN_B" ] && echo "- B: $BIN_B"
    echo "- valgrind --tool=callgrind; wrk -t1 -c4 -d${DURATION}s after 3 s of warm-up; 100-byte value; standalone token, rate limiter on at 10^9/s (burst 1,000), metrics and CORS on"
    echo
    echo "| test | A instructions / request | A / command |$([ -n "$BIN_B" ] && echo ' B instructions / request | B / command | B / A |')"
    echo "|---|---:|---:|$([ -n "$BIN_B" ] && echo '---:|---:|---:|')"
    awk -F'\t' 'NR>1 { v[$1, $2] = $5; c[$1, $2] = $6; if (!($2 in seen)) { seen[$2] = 1; order[++n] = $2 } }
      END { for (i = 1; i <= n; i++) { t = order[i]; line = "| " t " | " v["A", t] " | " c["A", t] " |"
              if (("B", t) in v) line = line " " v["B", t] " | " c["B", t] " | " ((v["A", t] > 0) ? sprintf("%.3f", v["B", t] / v["A", t]) : "-") " |"
              print line } }' "$CG"
    echo
    echo "Targets (issue: cost per request): GET and SET <= 30,000 instructions, pipeline <= 5,000 per command:"
    awk -F'\t' 'NR>1 && ($2 == "GET" || $2 == "SET") { printf "- %s %s: %s per request: %s\n", $1, $2, $5, ($5 + 0 <= 30000 && $5 != "-") ? "PASS" : "FAIL" }
                NR>1 && $2 ~ /^PIPE/ { printf "- %s %s: %s per command: %s\n", $1, $2, $6, ($6 + 0 <= 5000 && $6 != "-") ? "PASS" : "FAIL" }' "$CG"
  } > "$OUT/results.md"
  echo; cat "$OUT/results.md"
  echo "results: $CG  $OUT/results.md  (callgrind dumps cg-*.out.*: callgrind_annotate them)"
  exit 0
fi

# ---------------------------------------------------------------- --rounds (alternating)
# ROUNDS rounds; in each, per test, webdis then A (then B) back to back, so that drift of the
# machine hits all of them alike. The targets are checked per round.
if [ "$MODE" = rounds ]; then
  echo "alternating rounds (${DURATION}s per run):"
  for r in $(seq "$ROUNDS"); do
    echo " round $r"
    for t in "GET $MAIN_CONNS" "SET $MAIN_CONNS" "GET 1"; do
      set -- $t
      if [ "$1" = GET ]; then wp="$WEB/GET/$KEY"; gp="/get/$KEY"; else wp="$WEB/SET/$SKEY/$VAL"; gp="/set/$SKEY/$VAL"; fi
      run webdis "$1#$r" "$2" 1 "$WEBDIS_PID" "$wp"
      run redisgate "$1#$r" "$2" 1 "$GW_PID" "$GW$gp" "${AUTH[@]}"
      [ -n "$GWB" ] && run redisgate-B "$1#$r" "$2" 1 "$GWB_PID" "$GWB$gp" "${AUTH[@]}"
    done
  done
  echo "peak RSS (VmHWM): webdis $(hwm_kb $WEBDIS_PID) KB, RedisGate $(hwm_kb $GW_PID) KB${GWB_PID:+, RedisGate B $(hwm_kb $GWB_PID) KB}" | tee -a "$OUT/rss.txt"
  {
    echo "# RedisGate alternating rounds: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- A: $BIN (git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo '+dirty'))${BIN_B:+; B: $BIN_B}"
    echo "- wrk ${DURATION}s per run, -t2 (-t1 at 1 connection); pin: $([ "$PIN" = 1 ] && echo 'yes (servers CPU 0, load CPU 1)' || echo no)"
    echo
  } > "$OUT/results.md"
  awk -F'\t' -v MC="$MAIN_CONNS" -v md="$OUT/results.md" '
    function ratio(a, b) { return (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) ? sprintf("%.2f", a / b) : "-" }
    NR == 1 { next }
    { split($2, tr, "#"); k = $1 SUBSEP tr[1] SUBSEP $3 SUBSEP tr[2]; rps[k] = $4; p99[k] = $7
      if (tr[2] > nr) nr = tr[2]; if ($1 == "redisgate-B") hasb = 1 }
    END {
      h = "| round | test | conns | webdis req/s, p99 ms | A req/s, p99 ms | A/webdis req/s | A/webdis p99 |"
      if (hasb) h = h " B req/s, p99 ms | B/webdis req/s | B/webdis p99 | B/A req/s |"
      print h; print h >> md
      s = "|---|---|---:|---:|---:|---:|---:|" (hasb ? "---:|---:|---:|---:|" : ""); print s; print s >> md
      split("GET " MC ",SET " MC ",GET 1", tests, ",")
      for (r = 1; r <= nr; r++) for (i = 1; i <= 3; i++) {
        split(tests[i], tc, " "); t = tc[1]; c = tc[2]
        w = "webdis" SUBSEP t SUBSEP c SUBSEP r; a = "redisgate" SUBSEP t SUBSEP c SUBSEP r; b = "redisgate-B" SUBSEP t SUBSEP c SUBSEP r
        line = sprintf("| %d | %s | %s | %s, %s | %s, %s | %s | %s |", r, t, c, rps[w], p99[w], rps[a], p99[a], ratio(rps[a], rps[w]), ratio(p99[a], p99[w]))
        if (hasb) line = line sprintf(" %s, %s | %s | %s | %s |", rps[b], p99[b], ratio(rps[b], rps[w]), ratio(p99[b], p99[w]), ratio(rps[b], rps[a]))
        print line; print line >> md
        for (x = 0; x <= hasb; x++) {
          g = x ? b : a
          if (c == MC) { tot[x, t]++; if (rps[g] >= 1.5 * rps[w] && p99[g] + 0 <= 0.8 * p99[w] && rps[w] > 0) ok[x, t]++ }
          else { tot[x, "GET1"]++; if (rps[g] >= rps[w] && rps[w] > 0) ok[x, "GET1"]++ }
        }
      }
      out = "\nTargets, rounds that pass (issue: 3 of 3):\n"
      for (x = 0; x <= hasb; x++) {
        n = x ? "B" : "A"
        out = out sprintf("- %s: GET at %s connections >= 1.5x webdis req/s with p99 <= 0.8x: %d of %d\n", n, MC, ok[x, "GET"], tot[x, "GET"])
        out = out sprintf("- %s: SET at %s connections >= 1.5x webdis req/s with p99 <= 0.8x: %d of %d\n", n, MC, ok[x, "SET"], tot[x, "SET"])
        out = out sprintf("- %s: GET at 1 connection >= webdis req/s: %d of %d\n", n, ok[x, "GET1"], tot[x, "GET1"])
      }
      printf "%s", out; printf "%s", out >> md
    }' "$RESULTS"
  echo >> "$OUT/results.md"; sed 's/^/- /' "$OUT/rss.txt" >> "$OUT/results.md"
  echo "results: $RESULTS  $OUT/results.md"
  echo "measuring took $(( SECONDS - T_START ))s"
  exit 0
fi

echo "wrk runs (${DURATION}s each):"
for c in $CONNS_LIST; do
  run webdis    GET "$c" 1 "$WEBDIS_PID" "$WEB/GET/$KEY"
  run redisgate GET "$c" 1 "$GW_PID"     "$GW/get/$KEY" "${AUTH[@]}"
done
for c in $CONNS_LIST; do
  run webdis    SET "$c" 1 "$WEBDIS_PID" "$WEB/SET/$SKEY/$VAL"
  run redisgate SET "$c" 1 "$GW_PID"     "$GW/set/$SKEY/$VAL" "${AUTH[@]}"
done
run webdis    POST-GET "$MAIN_CONNS" 1 "$WEBDIS_PID" "$WEB/" -s "$POST_W"
run redisgate POST-GET "$MAIN_CONNS" 1 "$GW_PID"     "$GW/" -s "$POST_G" "${AUTH[@]}"
HTTP_PIPELINED=1 run webdis PIPE$PIPE_N "$MAIN_CONNS" 1 "$WEBDIS_PID" "$WEB/" -s "$PIPE_W"
run redisgate PIPE$PIPE_N "$MAIN_CONNS" "$PIPE_N" "$GW_PID"     "$GW/pipeline" -s "$PIPE_G" "${AUTH[@]}"
echo "peak RSS (VmHWM): webdis $(hwm_kb $WEBDIS_PID) KB, RedisGate $(hwm_kb $GW_PID) KB, redis $(hwm_kb $REDIS_PID) KB" | tee -a "$OUT/rss.txt"

# ---------------------------------------------------------------- report
# side-by-side rows: TEST CONNS; redis row for the same command at the same concurrency (-P 1),
# for the pipeline: redis-benchmark -P PIPE_N (commands/s)
{
  echo "# RedisGate benchmark: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- machine: $(nproc) vCPU ($(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)), $(awk '/^MemTotal/{printf "%.0f GB RAM", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
  echo "- run: wrk ${DURATION}s per run, -t2 (-t1 at 1 connection), --latency; pin: $([ "$PIN" = 1 ] && echo 'yes (servers CPU 0, load CPU 1)' || echo no); load avg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- versions: RedisGate $("$BIN" --version 2>/dev/null | awk '{print $2}') (git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo '+dirty')), webdis $(dpkg-query -W -f '${Version}' webdis 2>/dev/null), $(redis-server --version | awk '{print "redis " substr($3,3)}'), $(wrk -v 2>&1 | awk 'NR==1{print $1, $2}')"
  echo
}  > "$OUT/results.md"

awk -F'\t' -v PN="$PIPE_N" -v MC="$MAIN_CONNS" -v md="$OUT/results.md" '
  function mb(k) { return (k ~ /^[0-9]+$/) ? sprintf("%.1f", k/1024) : "-" }
  function lat(a, b) { return (a == "" || a == "-") ? "-" : a " / " b }
  function num(x) { return (x ~ /^[0-9]+$/) ? x : "-" }
  function ratio(a, b, f) { return (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) ? sprintf(f, a/b) : "-" }
  NR == 1 { next }
  {
    key = $1 SUBSEP $2 SUBSEP $3
    rps[key] = $4; cps[key] = $5; p50[key] = $6; p99[key] = $7; rss[key] = $9; note[key] = $11
    if ($1 != "redis" && !(($2 SUBSEP $3) in seen)) { seen[$2 SUBSEP $3] = 1; order[++n] = $2 SUBSEP $3 }
  }
  END {
    hdr = "| test | conns | redis req/s | redis p50 / p99 ms | webdis req/s | webdis p50 / p99 ms | webdis RSS MB | RedisGate req/s | RedisGate p50 / p99 ms | RedisGate RSS MB | RG/webdis req/s | RG/webdis p99 | RG/redis req/s |"
    print hdr >> md
    print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" >> md
    printf "%-9s %5s | %10s %17s | %10s %17s %7s | %10s %17s %7s | %6s %9s %8s\n", "test", "conns", "redis/s", "p50/p99 ms", "webdis/s", "p50/p99 ms", "RSS MB", "RGate/s", "p50/p99 ms", "RSS MB", "RG/wd", "p99 RG/wd", "RG/redis"
    for (i = 1; i <= n; i++) {
      split(order[i], a, SUBSEP); t = a[1]; c = a[2]
      w = "webdis" SUBSEP t SUBSEP c; g = "redisgate" SUBSEP t SUBSEP c
      if (t ~ /^PIPE/) { r = "redis" SUBSEP "GET-P" PN SUBSEP c; label = "pipeline " PN "x GET (commands/s)" }
      else { rt = (t == "POST-GET") ? "GET" : t; r = "redis" SUBSEP rt "-P1" SUBSEP c; label = t }
      rr = ratio(cps[g], cps[w], "%.2f"); pr = ratio(p99[g], p99[w], "%.2f"); dr = ratio(cps[g], cps[r], "%.3f")
      printf "%-9s %5s | %10s %17s | %10s %17s %7s | %10s %17s %7s | %6s %9s %8s\n", t, c,
        num(cps[r]), lat(p50[r], p99[r]), num(cps[w]), lat(p50[w], p99[w]), mb(rss[w]),
        num(cps[g]), lat(p50[g], p99[g]), mb(rss[g]), rr, pr, dr
      printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", label, c,
        num(cps[r]), lat(p50[r], p99[r]), num(cps[w]), lat(p50[w], p99[w]), mb(rss[w]),
        num(cps[g]), lat(p50[g], p99[g]), mb(rss[g]), rr, pr, dr >> md
      for (x in note) if (note[x] != "-" && note[x] != "redis-benchmark" && (x == w || x == g)) {
        split(x, b, SUBSEP); notes = notes sprintf("- %s %s c=%s: %s\n", b[1], b[2], b[3], note[x])
      }
    }
    # targets
    out = "\nTargets:\n"
    split("GET SET", tt, " ")
    for (j = 1; j <= 2; j++) {
      w = "webdis" SUBSEP tt[j] SUBSEP MC; g = "redisgate" SUBSEP tt[j] SUBSEP MC
      ok = (cps[w] > 0 && cps[g] >= 1.5 * cps[w] && p99[g] + 0 <= p99[w] + 0)
      out = out sprintf("- %s at %s connections: RedisGate >= 1.5x webdis req/s with p99 no worse: %s (%s x, p99 %s vs %s ms)\n",
        tt[j], MC, (cps[w] > 0 && cps[g] > 0) ? (ok ? "PASS" : "FAIL") : "n/a", ratio(cps[g], cps[w], "%.2f"), p99[g], p99[w])
    }
    g = "redisgate" SUBSEP "PIPE" PN SUBSEP MC
    out = out sprintf("- /pipeline of %s GETs >= 500,000 commands/s: %s (%s req/s x %s = %s commands/s)\n", PN,
      (cps[g] > 0) ? (cps[g] >= 500000 ? "PASS" : "FAIL") : "n/a", num(rps[g]), PN, num(cps[g]))
    printf "%s", out; printf "%s", out >> md
    if (notes != "") { printf "\nNotes:\n%s", notes; printf "\nNotes:\n%s", notes >> md }
  }' "$RESULTS"

cat >> "$OUT/results.md" <<EOF

req/s: wrk Requests/sec (redis: redis-benchmark -P 1, same command, same concurrency; POST-GET is compared
with redis GET). The pipeline row is in commands/s: RedisGate is POST /pipeline with $PIPE_N GETs (req/s x $PIPE_N),
webdis, which has no multi-command request, is HTTP/1.1 pipelining of $PIPE_N GET requests per round trip
(wrk counts each response), redis is redis-benchmark -P $PIPE_N. p50/p99 are per HTTP request (per batch for
pipelines). RSS is VmRSS sampled mid-run. Ratios RG/x > 1 and p99 ratio < 1 mean RedisGate is better.

$(sed 's/^/- /' "$OUT/rss.txt")
EOF
echo
echo "(PIPE$PIPE_N row in commands/s: RedisGate POST /pipeline req/s x $PIPE_N, webdis HTTP/1.1-pipelined GETs, redis -P $PIPE_N;"
echo " RG/wd, RG/redis = RedisGate req/s over theirs, > 1 is better; p99 RG/wd = RedisGate p99 / webdis p99, < 1 is better;"
echo " RSS sampled mid-run; the redis column is redis-benchmark -P 1 of the same command at the same concurrency)"
echo "results: $OUT/results.tsv  $OUT/results.md  (raw wrk/redis-benchmark outputs and commands.txt alongside)"
echo "measuring took $(( SECONDS - T_START ))s"
if [ "$HTTPS" = 1 ] || [ "$CLUSTER" = 1 ]; then
  cleanup  # the comparison's servers are done; the extra rows start their own
fi
if [ "$HTTPS" = 1 ]; then
  echo
  "$REPO/bench/https.sh" --binary "$BIN" --duration "$DURATION" --out "$OUT/https" $([ "$PIN" = 1 ] && echo --pin)
fi
if [ "$CLUSTER" = 1 ]; then
  echo
  "$REPO/bench/cluster.sh" --binary "$BIN" --duration "$DURATION" --out "$OUT/cluster" $([ "$PIN" = 1 ] && echo --pin)
fi

#!/usr/bin/env bash
# bench/scale.sh — what the number of registered instances costs one RedisGate: idle CPU and
# memory, data-plane throughput and management-API latency at 0, 10 and --instances (default
# 1,000 and 10,000) external instances, all registered through the API.
#
# Why: the idle cost of a gateway should not grow with the instances it merely knows about
# (issue "Ten thousand instances per gateway at a constant idle cost"). This script gives that
# cost a number anyone can reproduce, before and after a change.
#
# What it does, in one go:
#   1. uses the release binary (build it with `cargo build --release -p redisgate`; this script
#      builds nothing);
#   2. starts --servers redis-servers (default 4; 127.0.0.1, free ports from 6392, no
#      persistence, maxclients 20000) and RedisGate (config written into the output dir:
#      SQLite in the output dir, the egress policy allowing 127.0.0.1 only, the limiter on at
#      10^9/s so it never interferes);
#   3. registers the deployment's first account (its administrator), an organization whose
#      quota it lifts to 1,000,000 instances, then, per step, external instances through
#      POST /api/organizations/{org}/redis-instances, --parallel (default 16) at once, spread
#      over the servers and their 16 db numbers (bench/scale.py does the HTTP);
#   4. at each instance count (0, 10, 100, then each of --instances): waits until the process has
#      settled (CPU and RSS steady over consecutive 2 s windows, at most 60 s), then over
#      --idle-seconds (default 30) the CPU of RedisGate (% of one core, /proc/PID/stat) and of
#      the redis-servers, VmRSS, open descriptors and the redis-servers' connected clients;
#   5. sends each of those 100 instances a first request (SET: its token is looked up and, with
#      on-demand connections, its connection opened) and a second one (GET), timed, the medians
#      in the notes; then drives them (all when fewer) with wrk, --conns (default 50) connections for
#      --duration (default 10 s), GET of a 100-byte value rotating over the instances, each with
#      its own REST token from its connect route; then times GET of one instance and the list
#      (`?limit=100`, the first page once listings are paged; ignored before) --runs times each;
#   6. prints the table, writes results.tsv, results.md and the raw outputs to the output dir,
#      and stops everything it started (by PID).
#
# Usage:  bench/scale.sh [options]
#   --binary PATH         the redisgate binary (default $CARGO_TARGET_DIR/release/redisgate,
#                         else <repo>/target/release/redisgate)
#   --instances "LIST"    instance counts after the 0, 10 and 100 baselines (default "1000 10000")
#   --idle-seconds S      idle measuring window per count (default 30)
#   --duration S          seconds of the wrk drive per count (default 10)
#   --conns N             wrk connections (default 50)
#   --servers N           redis-servers the instances are spread over (default 4)
#   --parallel N          concurrent creates (default 16)
#   --runs N              timed calls per management route and count (default 50; at most
#                         20 s per route)
#   --pin                 RedisGate and the redis-servers on CPU 0, wrk and the API client on
#                         CPU 1 (taskset)
#   --out DIR             output dir (default /tmp/redisgate-scale-bench.<timestamp>)
#   -h, --help            this text
#
# Columns (results.tsv): instances, reg_per_s (creates/s of the step that reached this count),
#   settle_s, idle_cpu_pct (RedisGate, % of one core), redis_cpu_pct (all redis-servers),
#   rss_kb, rss_per_instance_kb (above the 0-instance row), fds (RedisGate's open descriptors),
#   redis_clients (connected clients of all redis-servers), driven, rps, p50_ms, p99_ms,
#   cpu_us_per_req, get_p50_ms, get_p99_ms, list_p50_ms, list_p99_ms, list_items, list_kb,
#   other_cpu_pct (machine CPU used by anything else during the idle window: > 10 flags NOISY),
#   note.
# The whole run has a hard time limit (~10 min at the defaults); a count that would not fit
# any more is recorded as SKIPPED. Installs nothing. Needs: redis-server, redis-tools
# (redis-cli), wrk, curl, python3, util-linux (taskset), iproute2 (ss).

set -u -o pipefail
SELF=$(readlink -f "$0")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)

BIN=""; INSTANCES="1000 10000"; IDLE=30; DURATION=10; CONNS=50; SERVERS=4; PARALLEL=16; RUNS=50; PIN=0; OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) BIN=$2; shift 2;;
    --instances) INSTANCES=$2; shift 2;;
    --idle-seconds) IDLE=$2; shift 2;;
    --duration) DURATION=$2; shift 2;;
    --conns) CONNS=$2; shift 2;;
    --servers) SERVERS=$2; shift 2;;
    --parallel) PARALLEL=$2; shift 2;;
    --runs) RUNS=$2; shift 2;;
    --pin) PIN=1; shift;;
    --out) OUT=$2; shift 2;;
    -h|--help) awk 'NR>1 && /^set -u/{exit} NR>1' "$SELF"; exit 0;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2;;
  esac
done
for v in "idle-seconds:$IDLE" "duration:$DURATION" "conns:$CONNS" "servers:$SERVERS" "parallel:$PARALLEL" "runs:$RUNS"; do
  case "${v#*:}" in ''|*[!0-9]*|0) echo "--${v%%:*} needs a whole number >= 1" >&2; exit 2;; esac
done
for n in $INSTANCES; do case "$n" in ''|*[!0-9]*) echo "--instances: bad count '$n'" >&2; exit 2;; esac; done
# the counts in ascending order, the baselines first: 0, 10, and 100 (every instance driven: the
# figure the busy 100 of a larger count are compared with)
STEPS=$(printf '%s\n' 0 10 100 $INSTANCES | sort -n -u | tr '\n' ' ')

# shellcheck source=bench/common.sh
. "$REPO/bench/common.sh"
need redis-server redis-server; need redis-cli redis-tools; need wrk wrk; need curl curl; need python3 python3
need taskset util-linux; need ss iproute2
needs_met
release_binary
out_dir /tmp/redisgate-scale-bench
HELPER="$REPO/bench/scale.py"

# Every open Redis connection is a descriptor here and a client there: take the hard limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)

# ---------------------------------------------------------------- time budget
# per count: settling (<= 60 s, usually a few), the idle window, the drive, the management
# routes (<= 2 x 20 s) and the tokens of the driven instances; creates assumed >= 40/s
MAXN=0; for n in $STEPS; do MAXN=$n; done
NSTEPS=$(wc -w <<< "$STEPS")
BUDGET=$(( NSTEPS * (IDLE + DURATION + 25) + MAXN / 40 + 60 ))
CAP=$(( BUDGET + 30 ))
T_START=$SECONDS

REDIS_PIDS=""; GW_PID=""; LOAD_PID=""; WATCHDOG_PID=""
kill_tree() { local c; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$c"; done; kill -TERM "$1" 2>/dev/null; }
cleanup() {
  trap - EXIT INT TERM
  [ -n "$LOAD_PID" ] && kill_tree "$LOAD_PID"
  for p in $GW_PID $REDIS_PIDS; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 25); do
    alive=0; for p in $GW_PID $REDIS_PIDS; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.2
  done
  for p in $GW_PID $REDIS_PIDS; do kill -KILL "$p" 2>/dev/null; done
  [ -n "$WATCHDOG_PID" ] && kill_tree "$WATCHDOG_PID"
}
trap cleanup EXIT
trap 'echo "interrupted / time limit reached; stopping what this run started (results so far: $OUT/results.md)" >&2; exit 124' INT TERM
( sleep "$CAP" & wait $!; echo "time limit of ${CAP}s reached" >&2; kill -TERM $$ 2>/dev/null ) &
WATCHDOG_PID=$!

threads() { awk '/^Threads/{print $2}' "/proc/$1/status" 2>/dev/null; }
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
redis_ticks() { local p t=0; for p in $REDIS_PIDS; do t=$((t + $(cpu_ticks "$p"))); done; echo "$t"; }
redis_clients() { local p t=0 c; for p in $RPORTS; do c=$(redis-cli -p "$p" info clients | awk -F: '/^connected_clients/{print $2+0}'); t=$((t + ${c:-0})); done; echo "$t"; }
pct() { awk -v t="$1" -v hz="$HZ" -v s="$2" 'BEGIN{ printf "%.2f", 100 * t / hz / s }'; }
# helper ARGS...: bench/scale.py in the background (so the time limit can stop it), its answer
helper() {
  "${LOAD_PIN[@]}" python3 "$HELPER" "$@" > "$OUT/helper.out" 2>> "$OUT/helper.err" &
  LOAD_PID=$!; wait "$LOAD_PID"; local rc=$?; LOAD_PID=""
  cat "$OUT/helper.out"; return $rc
}
field() { tr ' ' '\n' <<< "$1" | awk -F= -v k="$2" '$1==k{print $2}'; }

# ---------------------------------------------------------------- redis-servers, RedisGate
RPORTS=""; p=6392
for i in $(seq "$SERVERS"); do
  p=$(free_port "$p")
  "${SRV_PIN[@]}" redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --maxclients 20000 \
    --dir "$OUT" --logfile "$OUT/redis-$p.log" &
  REDIS_PIDS="$REDIS_PIDS $!"
  wait_until 5 redis-cli -p "$p" ping || { echo "redis-server did not start on $p" >&2; exit 1; }
  RPORTS="$RPORTS $p"; p=$((p + 1))
done
RPORTS=${RPORTS# }

GPORT=$(free_port 7391)
cat > "$OUT/redisgate.toml" <<EOF
# written by bench/scale.sh
listen = "127.0.0.1:$GPORT"
data_dir = "$OUT/redisgate-data"

[instances.external]
allow = ["127.0.0.1/32"]

# on, as in production, at a rate no run reaches (API keys and instance tokens alike). The
# burst is a second's worth: GCRA tolerates burst / per_second of clock skew between the
# threads judging one key, and 1,000 at 10^9/s (bench/run.sh) is 1 µs, which refuses about one
# request in 300,000 at 40k/s with a 429.
[rate_limit]
per_second = 1000000
burst = 1000000

[auth.anonymous_rate]
per_second = 1000
burst = 1000
EOF
unset_env=(); for v in $(compgen -e | grep -E '^(REDISGATE_|SRH_|DATABASE_URL$)'); do unset_env+=(-u "$v"); done
"${SRV_PIN[@]}" env "${unset_env[@]}" REDISGATE_LOG=warn "$BIN" serve --config "$OUT/redisgate.toml" > "$OUT/redisgate.log" 2>&1 &
GW_PID=$!
GW="http://127.0.0.1:$GPORT"
wait_until 15 curl -sf "$GW/health/live" || { echo "RedisGate did not start (see $OUT/redisgate.log)" >&2; exit 1; }
WORKERS=$("${SRV_PIN[@]}" nproc)   # tokio's worker threads: one per CPU the process may use
STATE="$OUT/state.json"
setup=$(helper setup --base "$GW" --state "$STATE") || { echo "account setup failed (see $OUT/helper.err)" >&2; exit 1; }
GIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')
echo "output dir: $OUT"
echo "RedisGate $GW (pid $GW_PID, $("$BIN" --version 2>/dev/null), git $GIT), redis-servers :${RPORTS// /, :} (pids$REDIS_PIDS)"
echo "counts: $STEPS  idle ${IDLE}s  drive ${DURATION}s x $CONNS conns  nofile $NOFILE  pin $PIN  time limit ${CAP}s"
echo "machine: $(nproc) cpu, load avg $(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- steps
RESULTS="$OUT/results.tsv"
printf 'instances\treg_per_s\tsettle_s\tidle_cpu_pct\tredis_cpu_pct\trss_kb\trss_per_instance_kb\tfds\tredis_clients\tdriven\trps\tp50_ms\tp99_ms\tcpu_us_per_req\tget_p50_ms\tget_p99_ms\tlist_p50_ms\tlist_p99_ms\tlist_items\tlist_kb\tother_cpu_pct\tnote\n' > "$RESULTS"
: > "$OUT/commands.txt"

# settle: first until tokio's blocking threads have exited (the runtime's threads beyond its
# workers, one per CPU RedisGate may run on: a blocking thread, e.g. of the logins' password
# hashing, keeps its heap, ~20 MB, until it exits 10 s after its last task), then until two
# consecutive 2 s windows agree (CPU within 2 points or a quarter, RSS within 1 %); at most
# 60 s. Prints the seconds it took, "+" if it never settled.
tokio_threads() { cat "/proc/$1"/task/*/comm 2>/dev/null | grep -c '^tokio-rt-worker'; }
settle() {
  local t0=$SECONDS prev="" c0 c1 r0 r1 now
  while [ $((SECONDS - t0)) -lt 30 ] && [ "$(tokio_threads "$GW_PID")" -gt "$WORKERS" ]; do sleep 0.5; done
  while [ $((SECONDS - t0)) -lt 60 ]; do
    c0=$(cpu_ticks "$GW_PID"); r0=$(rss_kb "$GW_PID"); sleep 2; c1=$(cpu_ticks "$GW_PID"); r1=$(rss_kb "$GW_PID")
    now=$(( (c1 - c0) * 100 / HZ / 2 ))
    if [ -n "$prev" ] && awk -v a="$prev" -v b="$now" -v r0="$r0" -v r1="$r1" \
        'BEGIN{ d = a - b; if (d < 0) d = -d; m = (a > b ? a : b) / 4; if (m < 2) m = 2;
                e = r1 - r0; if (e < 0) e = -e; exit !(d <= m && e <= r0 / 100) }'; then
      echo $((SECONDS - t0)); return 0
    fi
    prev=$now
  done
  echo "$((SECONDS - t0))+"
}

# drive: wrk over the driven instances; sets rps p50 p99 us note_drive
drive() {
  local tag="wrk-$1"
  echo "wrk -t2 -c$CONNS -d${DURATION}s --latency -s $OUT/drive.lua $GW" >> "$OUT/commands.txt"
  local c0 c1 reqs err
  c0=$(cpu_ticks "$GW_PID")
  "${LOAD_PIN[@]}" wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s "$OUT/drive.lua" "$GW" > "$OUT/$tag.wrk" 2>&1 &
  LOAD_PID=$!; wait "$LOAD_PID"; LOAD_PID=""
  c1=$(cpu_ticks "$GW_PID")
  rps=$(awk '/^Requests\/sec/{printf "%.0f", $2}' "$OUT/$tag.wrk"); rps=${rps:--}
  reqs=$(awk '/requests in/{print $1; exit}' "$OUT/$tag.wrk"); reqs=${reqs:-0}
  p50=$(to_ms "$(awk '$1=="50%"{print $2}' "$OUT/$tag.wrk")"); p99=$(to_ms "$(awk '$1=="99%"{print $2}' "$OUT/$tag.wrk")")
  us=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v n="$reqs" 'BEGIN{ if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-" }')
  err=$(awk '/Non-2xx|Socket errors/{gsub(/^ +/,""); printf "%s; ", $0}' "$OUT/$tag.wrk")
  note_drive=${err:+wrk: $err}
}

# report: results.md from results.tsv (rewritten after every count, so a stopped run keeps its rows)
report() {
  {
    echo "# RedisGate at scale: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- machine: $(nproc) CPUs, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo), $(awk '/^MemTotal/{printf "%.0f GB RAM", $2/1048576}' /proc/meminfo); load avg now: $(cut -d' ' -f1-3 /proc/loadavg); pin: $([ "$PIN" = 1 ] && echo yes || echo no); nofile $NOFILE"
    echo "- RedisGate $("$BIN" --version 2>/dev/null | awk '{print $2}') (git $GIT$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo '+dirty'), $BIN), $(redis-server --version | awk '{print "redis " substr($3,3)}'), $(wrk -v 2>&1 | awk 'NR==1{print $1, $2}')"
    echo "- external instances on $SERVERS redis-servers (16 db numbers each), created $PARALLEL at a time through the API; SQLite store; idle window ${IDLE}s; wrk -t2 -c$CONNS -d${DURATION}s GET of a 100-byte value rotating over the driven instances, each with its own REST token; management routes $RUNS calls each (at most 20 s)"
    echo
    echo "| instances | creates/s | idle CPU % of a core | redis CPU % | RSS MB | RSS KB / instance | fds | redis clients | driven | req/s | p50 / p99 ms | CPU µs/req | GET instance p50 / p99 ms | list p50 / p99 ms (items, KB) | notes |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    awk -F'\t' 'NR > 1 {
      mb = ($6 ~ /^[0-9]+$/) ? sprintf("%.1f", $6 / 1024) : "-"
      printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s | %s / %s | %s / %s (%s, %s) | %s |\n",
        $1, $2, $4, $5, mb, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, ($22 == "-" ? "" : $22) }' "$RESULTS"
  } > "$OUT/results.md"
}

REG_RATE=""; BASE_RSS=""; HAVE=0
for N in $STEPS; do
  note=""; reg="-"
  # ---- register up to N (skipped when it would not fit the time limit any more)
  if [ "$N" -gt "$HAVE" ]; then
    left=$(( CAP - (SECONDS - T_START) ))
    need_s=$(( IDLE + DURATION + 25 + (N - HAVE) / ${REG_RATE:-40} ))
    if [ "$need_s" -gt "$left" ]; then
      echo "  $N instances: SKIPPED (about ${need_s}s needed, ${left}s left)"
      printf '%s\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\tSKIPPED(time budget: ~%ss needed, %ss left)\n' "$N" "$need_s" "$left" >> "$RESULTS"
      report; continue
    fi
    echo "  registering $((N - HAVE)) instances ($PARALLEL at a time) ..."
    out=$(helper grow --state "$STATE" --to "$N" --redis "$RPORTS" --parallel "$PARALLEL") || { echo "registration failed (see $OUT/helper.err)" >&2; exit 1; }
    echo "    $out"
    HAVE=$(field "$out" total); reg=$(field "$out" per_s)
    [ "${reg:-0}" -gt 0 ] && REG_RATE=$reg
    failed=$(field "$out" failed)
    [ "${failed:-0}" -gt 0 ] && note="$failed creates failed, first: $(field "$out" first_error)"
    [ "$HAVE" -lt "$N" ] && note="${note:+$note; }only $HAVE registered"
  fi
  # ---- settle, then the idle window
  settled=$(settle)
  c0=$(cpu_ticks "$GW_PID"); w0=$(redis_ticks); m0=$(machine_busy_ticks); t0=$(date +%s.%N)
  sleep "$IDLE"
  c1=$(cpu_ticks "$GW_PID"); w1=$(redis_ticks); m1=$(machine_busy_ticks); t1=$(date +%s.%N)
  win=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b - a}')
  idle=$(pct $((c1 - c0)) "$win"); rcpu=$(pct $((w1 - w0)) "$win")
  other=$(awk -v all=$((m1 - m0)) -v g=$((c1 - c0)) -v r=$((w1 - w0)) -v hz="$HZ" -v s="$win" -v n="$(nproc)" \
    'BEGIN{ o = (all - g - r) / (hz * s * n) * 100; if (o < 0) o = 0; printf "%.0f", o }')
  [ "$other" -gt 10 ] && note="${note:+$note; }NOISY"
  rss=$(rss_kb "$GW_PID"); nfd=$(fds "$GW_PID"); rcl=$(redis_clients)
  [ -z "$BASE_RSS" ] && BASE_RSS=$rss
  per="-"; [ "$HAVE" -gt 0 ] && per=$(awk -v a="$rss" -v b="$BASE_RSS" -v n="$HAVE" 'BEGIN{printf "%.1f", (a - b) / n}')
  printf '  %6s instances: settled in %ss; idle CPU %s %% of a core (redis %s %%), RSS %s MB (%s KB/instance), %s fds, %s threads, %s redis clients\n' \
    "$HAVE" "$settled" "$idle" "$rcpu" "$(awk -v k="$rss" 'BEGIN{printf "%.1f", k/1024}')" "$per" "$nfd" "$(threads "$GW_PID")" "$rcl"
  # ---- drive, management routes
  driven="-"; rps="-"; p50="-"; p99="-"; us="-"; note_drive=""; g50="-"; g99="-"; l50="-"; l99="-"; litems="-"; lkb="-"
  if [ "$HAVE" -gt 0 ]; then
    k=$(( HAVE < 100 ? HAVE : 100 ))
    if d=$(helper drive --state "$STATE" --count "$k" --lua "$OUT/drive.lua"); then
      driven=$(field "$d" driven); drive "$N"
      note="${note:+$note; }first request p50 $(field "$d" first_ms) ms, next $(field "$d" warm_ms) ms"
      [ -n "$note_drive" ] && note="${note:+$note; }$note_drive"
      printf '         drive %s instances: %s req/s, p50 %s ms, p99 %s ms, %s µs CPU/req %s\n' "$driven" "$rps" "$p50" "$p99" "$us" "$note_drive"
    else
      note="${note:+$note; }drive setup failed (helper.err)"
    fi
    if m=$(helper mgmt --state "$STATE" --runs "$RUNS"); then
      g50=$(field "$m" get_p50_ms); g99=$(field "$m" get_p99_ms); l50=$(field "$m" list_p50_ms); l99=$(field "$m" list_p99_ms)
      litems=$(field "$m" list_items); lkb=$(awk -v b="$(field "$m" list_bytes)" 'BEGIN{printf "%.0f", b/1024}')
      [ "$(field "$m" runs)" != "$RUNS" ] && note="${note:+$note; }list: $(field "$m" runs) of $RUNS calls within 20 s"
      printf '         GET instance p50 %s / p99 %s ms; list?limit=100 p50 %s / p99 %s ms (%s items, %s KB)\n' "$g50" "$g99" "$l50" "$l99" "$litems" "$lkb"
    else
      note="${note:+$note; }management timing failed (helper.err)"
    fi
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$HAVE" "${reg:--}" "$settled" "$idle" "$rcpu" "$rss" "$per" "$nfd" "$rcl" "$driven" "$rps" "$p50" "$p99" "$us" \
    "$g50" "$g99" "$l50" "$l99" "$litems" "$lkb" "$other" "${note:--}" >> "$RESULTS"
  report
  if ! kill -0 "$GW_PID" 2>/dev/null; then echo "RedisGate exited (see $OUT/redisgate.log)" >&2; break; fi
done

echo
cat "$OUT/results.md"
echo
echo "results: $RESULTS  $OUT/results.md  (raw wrk outputs, redisgate.log, commands.txt alongside)"
echo "took $(( SECONDS - T_START ))s"

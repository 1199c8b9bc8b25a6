# bench/common.sh — sourced by bench/run.sh and bench/https.sh: the output dir, CPU pinning and
# the small helpers both use. Expects OUT (may be empty) and PIN to be set.

# out_dir DEFAULT_PREFIX: makes $OUT (or DEFAULT_PREFIX.<timestamp>) absolute, sets HZ and the
# taskset prefixes SRV_PIN (servers, CPU 0) and LOAD_PIN (load generators, CPU 1) for --pin.
out_dir() {
  OUT=${OUT:-$1.$(date +%Y%m%d-%H%M%S)}
  mkdir -p "$OUT" || exit 1
  OUT=$(cd "$OUT" && pwd)
  HZ=$(getconf CLK_TCK)
  SRV_PIN=(); LOAD_PIN=()
  if [ "$PIN" = 1 ]; then
    [ "$(nproc)" -ge 2 ] || { echo "--pin needs at least 2 CPUs" >&2; exit 2; }
    SRV_PIN=(taskset -c 0); LOAD_PIN=(taskset -c 1)
  fi
}

port_busy() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }
free_port() { local p=$1; while port_busy "$p"; do p=$((p+1)); done; echo "$p"; }
wait_until() { local n=$1; shift; local i=0; until "$@" >/dev/null 2>&1; do i=$((i+1)); [ $i -ge $((n*10)) ] && return 1; sleep 0.1; done; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
machine_busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
to_ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us$/,"",v); printf "%.3f", v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); printf "%.3f", v} else if (v ~ /m$/) {sub(/m$/,"",v); printf "%.3f", v*60000} else if (v ~ /s$/) {sub(/s$/,"",v); printf "%.3f", v*1000} else printf "-" }'; }

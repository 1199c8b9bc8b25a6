# bench/common.sh — sourced by bench/run.sh, bench/https.sh and bench/cluster.sh: the output dir, CPU pinning and
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

# need COMMAND PACKAGE: notes a missing command and the Debian package that has it;
# needs_met then stops with the one apt-get line that installs them all.
missing_pkgs=""
# rss_kb PID: the process' resident memory (VmRSS), in KB.
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null; }
need() { command -v "$1" >/dev/null 2>&1 || { echo "missing: $1" >&2; case " $missing_pkgs " in *" $2 "*) ;; *) missing_pkgs="$missing_pkgs $2";; esac; }; }
needs_met() {
  if [ -n "$missing_pkgs" ]; then echo "install them with:  sudo apt-get install -y$missing_pkgs" >&2; exit 2; fi
}

# single_run_args "$@": the options of the one-comparison scripts (https.sh, cluster.sh), into
# BIN, DURATION, CONNS, PIN and OUT; --help prints the calling script's header.
single_run_args() {
  BIN=""; DURATION=8; CONNS=50; PIN=0; OUT=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --binary) BIN=$2; shift 2;;
      --duration) DURATION=$2; shift 2;;
      --conns) CONNS=$2; shift 2;;
      --pin) PIN=1; shift;;
      --out) OUT=$2; shift 2;;
      -h|--help) awk 'NR>1 && /^set -u/{exit} NR>1' "$SELF"; exit 0;;
      *) echo "unknown argument: $1 (see --help)" >&2; exit 2;;
    esac
  done
  case "$DURATION" in ''|*[!0-9]*|0) echo "--duration needs a whole number of seconds >= 1" >&2; exit 2;; esac
  case "$CONNS" in ''|*[!0-9]*|0) echo "--conns needs a whole number >= 1" >&2; exit 2;; esac
}

# release_binary: BIN, or the release build of this checkout (under CARGO_TARGET_DIR if set).
release_binary() {
  if [ -z "$BIN" ]; then
    if [ -n "${CARGO_TARGET_DIR:-}" ]; then BIN="$(realpath -m "$CARGO_TARGET_DIR")/release/redisgate"; else BIN="$REPO/target/release/redisgate"; fi
  fi
  [ -x "$BIN" ] || { echo "no RedisGate binary at $BIN (cargo build --release -p redisgate, or pass --binary PATH)" >&2; exit 2; }
}

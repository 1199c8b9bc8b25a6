#!/usr/bin/env bash
# Runs each cargo-fuzz target of fuzz/ for a while: request parsing (`parse`), the command
# policy (`policy`) and the reply encoders (`codec`).
#
#   scripts/fuzz.sh                 # every target, 60 s each (FUZZ_SECONDS changes it)
#   FUZZ_SECONDS=600 scripts/fuzz.sh policy
#
# libFuzzer needs nightly compiler flags; only the stable toolchain is assumed here, so they
# are unlocked with RUSTC_BOOTSTRAP=1 for these builds alone. Corpora stay in fuzz/corpus/,
# crashes in fuzz/artifacts/ (both ignored by git). The same invariants run as bounded
# property tests in the normal suite (crates/redisgate-core/tests/properties.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(parse policy codec)

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  echo "== fuzz target $t: ${seconds}s" >&2
  mkdir -p "fuzz/corpus/$t"
  # -rss_limit_mb keeps a runaway input from taking the machine's memory.
  cargo fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048
done

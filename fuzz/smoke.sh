#!/usr/bin/env bash
# Fuzz smoke run: every cargo-fuzz target for FUZZ_SECONDS (default 25) from the committed
# seed corpus (fuzz/seeds/<target>); exits non-zero on the first crash, leak, timeout (an input
# taking over 10 s) or out-of-memory, with libFuzzer's report and the crashing input in
# fuzz/artifacts/<target>/. Five targets at 25 s: about 2 minutes plus the first build.
# A longer run of one target: see the README (Fuzzing).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-25}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz/smoke.sh: installing cargo-fuzz from crates.io"
  cargo install cargo-fuzz --locked
fi
# cargo-fuzz needs nightly flags (-Zsanitizer): the nightly toolchain where rustup has one,
# else the installed toolchain with RUSTC_BOOTSTRAP.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi

"${fuzz[@]}" build
failed=()
for target in $("${fuzz[@]}" list); do
  work="$(mktemp -d)"
  echo "=== fuzz $target for ${seconds}s"
  if ! "${fuzz[@]}" run "$target" "$work" "seeds/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$work.log" 2>&1; then
    tail -n 60 "$work.log"
    failed+=("$target")
  else
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done)' "$work.log" || true
  fi
  rm -rf "$work" "$work.log"
done
if ((${#failed[@]})); then
  echo "fuzz smoke: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
echo "fuzz smoke: all targets ran ${seconds}s without a crash"

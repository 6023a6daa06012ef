#!/bin/bash
# In-guest I/O benchmark: Volt beside Firecracker on the same guest kernel, root image, second
# disk and tap, in one run of the nested real-KVM bed (or directly on a hardware-KVM host).
# Inside the guest, perf/guest/tools/iobench.c measures 4 KiB random O_DIRECT reads on /dev/vdb
# (QD1 latency p50/p99, QD32 throughput) and a UDP ping-pong over virtio-net with perf/udpecho.c
# on the host side of the tap.
#
# usage: perf/io-bench.sh [--reps N] [--cpus N] [--vmms "volt volt-sync firecracker firecracker-async"]
#                         [--sizes QD1_OPS,QD32_SECONDS,UDP_COUNT] [--volt BIN] [--firecracker BIN]
#                         [--mode auto|direct|nested] [--raw FILE] [--markdown]
# volt uses its default engine (io_uring where available), volt-sync forces engine=sync;
# firecracker uses its default (Sync) block engine, firecracker-async its io_uring one.
# In the nested bed absolute figures are meaningless (the outer guest is TCG-emulated); compare
# the ratios. See perf/README.md.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/tests/nested/common.sh"
reps=3 cpus=1 vmms="volt firecracker" sizes=1000,5,500 volt= firecracker= mode=auto raw= markdown=
while [ $# -gt 0 ]; do
  case $1 in
    --reps) reps=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --vmms) vmms=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --volt) volt=$2; shift 2 ;;
    --firecracker) firecracker=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --raw) raw=$2; shift 2 ;;
    --markdown) markdown=--markdown; shift ;;
    *) echo "io-bench: unknown option $1" >&2; exit 2 ;;
  esac
done
mode=$(resolve_mode "$mode") || { echo "SKIP: $mode_skip_reason"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -O2 -static -Wall -o "$work/udpecho" "$repo/perf/udpecho.c"
args=(--binary udpecho "$work/udpecho")
case " $vmms " in
  *" firecracker"*)
    firecracker=$(find_firecracker "$firecracker") || { echo "io-bench: $firecracker" >&2; exit 2; }
    args+=(--binary firecracker "$firecracker") ;;
esac
if [ -z "$volt" ]; then
  # The README's dynamic release build; make-payload brings its libraries, as for Firecracker.
  echo "io-bench: building the release volt" >&2
  (cd "$repo" && cargo build --release --bin volt >&2)
  volt=$repo/target/release/volt
fi
args+=(--volt "$volt")
"$repo/tests/nested/make-payload.sh" "$work/p" "$repo/perf/io-bench-run.sh" "${args[@]}" >/dev/null
printf 'VMMS="%s"\nREPS=%s\nCPUS=%s\nSIZES=%s\n' "$vmms" "$reps" "$cpus" "$sizes" > "$work/p/env.sh"
echo "io-bench: $reps runs each of: $vmms ($cpus vCPU, 256 MiB, sizes $sizes), mode $mode" >&2
start=$(date +%s)
run_payload "$mode" "$work/p" > "$work/out.txt" 2>&1 || true
echo "io-bench: payload finished in $(( $(date +%s) - start )) s" >&2
[ -n "$raw" ] && cp "$work/out.txt" "$raw"
grep -E '^(RUN-FAILED|NESTED-EXIT|NESTED-WEDGED|NESTED-TIMEOUT|FC-SECCOMP-KILLED|HOST-TAP)' "$work/out.txt" >&2 || true
grep -q BENCH-DONE "$work/out.txt" || { echo "io-bench: the payload did not finish:" >&2; tail -40 "$work/out.txt" >&2; exit 1; }
python3 "$repo/perf/io_stats.py" --mode "$mode" $markdown < "$work/out.txt"

#!/bin/bash
# Boot-time and memory benchmark: Volt vs QEMU microvm, same guest kernel + rootfs, on a real KVM.
#
# usage: perf/boot-time.sh [--boots N] [--mem-boots N] [--cpus N] [--vmms "volt qemu volt-elf"]
#                          [--volt BIN] [--mode auto|direct|nested] [--raw FILE]
# --raw FILE keeps the payload's raw output (one RESULT line per boot) for later study.
# Without --volt, builds a static release volt (crt-static, x86_64-unknown-linux-gnu).
# On machines whose /dev/kvm is paravirtual this runs inside ../shared/nested-kvm/run.sh: absolute
# figures there are meaningless (the outer guest is TCG-emulated); only the Volt/QEMU ratios are.
# See perf/README.md for what each figure means.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/tests/nested/common.sh"
boots=20 mem_boots=3 cpus=1 vmms="volt qemu volt-elf" volt= mode=auto raw=
while [ $# -gt 0 ]; do
  case $1 in
    --boots) boots=$2; shift 2 ;;
    --mem-boots) mem_boots=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --vmms) vmms=$2; shift 2 ;;
    --volt) volt=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --raw) raw=$2; shift 2 ;;
    *) echo "boot-time: unknown option $1" >&2; exit 2 ;;
  esac
done
mode=$(resolve_mode "$mode") || { echo "SKIP: $mode_skip_reason"; exit 77; }
args=(--bootmeasure)
case " $vmms " in *" qemu "*) args+=(--qemu) ;; esac
case " $vmms " in
  *" volt"*)
    if [ -z "$volt" ]; then
      echo "boot-time: building a static release volt" >&2
      (cd "$repo" && RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --target x86_64-unknown-linux-gnu --bin volt >&2)
      volt=$repo/target/x86_64-unknown-linux-gnu/release/volt
    fi
    args+=(--volt "$volt") ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$repo/tests/nested/make-payload.sh" "$work/p" "$repo/perf/boot-time-run.sh" "${args[@]}" >/dev/null
printf 'VMMS="%s"\nBOOTS=%s\nMEM_BOOTS=%s\nCPUS=%s\n' "$vmms" "$boots" "$mem_boots" "$cpus" > "$work/p/env.sh"
echo "boot-time: $boots timed + $mem_boots memory boots of: $vmms ($cpus vCPU, 256 MiB), mode $mode" >&2
start=$(date +%s)
run_payload "$mode" "$work/p" > "$work/out.txt" 2>&1 || true
echo "boot-time: payload finished in $(( $(date +%s) - start )) s" >&2
[ -n "$raw" ] && cp "$work/out.txt" "$raw"
grep -E '^(BOOT-FAILED|NESTED-EXIT)' "$work/out.txt" >&2 || true
grep -q BENCH-DONE "$work/out.txt" || { echo "boot-time: the payload did not finish:" >&2; tail -40 "$work/out.txt" >&2; exit 1; }
python3 "$repo/perf/boot_stats.py" --mode "$mode" < "$work/out.txt"

#!/bin/bash
# Free page reporting benchmark: how much memory comes back to the host after the guest frees
# 128 MiB, for Volt, Firecracker and QEMU microvm on the same kernel, rootfs and guest script, on a
# real KVM (inside ../shared/nested-kvm/run.sh on machines whose /dev/kvm is paravirtual).
#
# usage: perf/balloon-rss.sh [--vmms "volt firecracker qemu"] [--rounds N] [--volt BIN]
#                            [--firecracker BIN] [--mode auto|direct|nested] [--raw FILE]
# Prints the VMM's resident memory (KiB, smaps_rollup) before the guest fills its tmpfs, with the
# 128 MiB in use, and the least after the guest freed it (12 s window), per boot, then medians.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/tests/nested/common.sh"
vmms="volt firecracker qemu" rounds=2 volt= fc=/work/shared/anchors/firecracker mode=auto raw=
[ -x "$repo/../shared/anchors/firecracker" ] && fc=$repo/../shared/anchors/firecracker
while [ $# -gt 0 ]; do
  case $1 in
    --vmms) vmms=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --volt) volt=$2; shift 2 ;;
    --firecracker) fc=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --raw) raw=$2; shift 2 ;;
    *) echo "balloon-rss: unknown option $1" >&2; exit 2 ;;
  esac
done
mode=$(resolve_mode "$mode") || { echo "SKIP: $mode_skip_reason"; exit 77; }
args=()
case " $vmms " in *" qemu "*) args+=(--qemu) ;; esac
case " $vmms " in *" firecracker "*) args+=(--binary firecracker "$fc") ;; esac
case " $vmms " in
  *" volt "*)
    if [ -z "$volt" ]; then
      (cd "$repo" && cargo build --release --bin volt >&2)
      volt=$repo/target/release/volt
    fi
    args+=(--volt "$volt") ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$repo/tests/nested/make-payload.sh" "$work/p" "$repo/perf/balloon-rss-run.sh" "${args[@]}" >/dev/null
printf 'VMMS="%s"\nROUNDS=%s\n' "$vmms" "$rounds" > "$work/p/env.sh"
echo "balloon-rss: $rounds rounds of: $vmms (1 vCPU, 256 MiB), mode $mode" >&2
run_payload "$mode" "$work/p" > "$work/out.txt" 2>&1 || true
[ -n "$raw" ] && cp "$work/out.txt" "$raw"
grep -E '^(RESULT|BOOT-FAILED|  |NESTED-)' "$work/out.txt" || true
grep -q BENCH-DONE "$work/out.txt" || { echo "balloon-rss: the payload did not finish:" >&2; tail -40 "$work/out.txt" >&2; exit 1; }
echo
echo "| VMM | RSS before fill | with 128 MiB in use | after the guest freed it | given back |"
echo "| --- | --- | --- | --- | --- |"
for v in $vmms; do
  grep "^RESULT vmm=$v " "$work/out.txt" | sed 's/.*start=\([0-9]*\) filled=\([0-9]*\) freed=\([0-9]*\).*/\1 \2 \3/' |
    grep -E '^[0-9]+ [0-9]+ [0-9]+$' | sort -n -k3 |
    awk -v v="$v" '{ s[NR]=$1; f[NR]=$2; r[NR]=$3 } END {
      if (NR == 0) { print "| " v " | - | - | - | - |"; exit }
      m = int((NR + 1) / 2)
      printf "| %s | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB |\n", v, s[m]/1024, f[m]/1024, r[m]/1024, (f[m]-r[m])/1024 }' || true
done

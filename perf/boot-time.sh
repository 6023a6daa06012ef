#!/bin/bash
# Boot-time and memory benchmark: Volt beside Firecracker (and optionally QEMU microvm), same
# guest kernel + rootfs, on a real KVM, in one run, VMMs alternating boot by boot.
#
# usage: perf/boot-time.sh [--boots N] [--mem-boots N] [--cpus "1 2"] [--consoles "on quiet"]
#                          [--vmms "volt-elf firecracker"] [--volt BIN] [--firecracker BIN]
#                          [--mode auto|direct|nested] [--raw FILE] [--markdown]
# VMM variants: volt-elf and firecracker boot the ELF vmlinux, volt and qemu the bzImage.
# --consoles: "on" is the serial console as is, "quiet" adds `quiet` to the command line.
# --firecracker: default ../shared/anchors/firecracker beside the repository (or
#   /work/shared/anchors/firecracker); its ldd libraries go into the payload.
# --raw FILE keeps the payload's raw output (one RESULT line per boot) for later study.
# Without --volt, builds the release volt (dynamic, like Firecracker; both run through the
# payload's ld.so).
# On machines whose /dev/kvm is paravirtual this runs inside ../shared/nested-kvm/run.sh: absolute
# figures there are meaningless (the outer guest is TCG-emulated); only the ratios are.
# See perf/README.md for what each figure means.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/tests/nested/common.sh"
boots=6 mem_boots=1 cpus="1 2" consoles="on quiet" vmms="volt-elf firecracker" volt= mode=auto raw=
firecracker= markdown=
while [ $# -gt 0 ]; do
  case $1 in
    --boots) boots=$2; shift 2 ;;
    --mem-boots) mem_boots=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --consoles) consoles=$2; shift 2 ;;
    --vmms) vmms=$2; shift 2 ;;
    --volt) volt=$2; shift 2 ;;
    --firecracker) firecracker=$2; shift 2 ;;
    --markdown) markdown=--markdown; shift ;;
    --mode) mode=$2; shift 2 ;;
    --raw) raw=$2; shift 2 ;;
    *) echo "boot-time: unknown option $1" >&2; exit 2 ;;
  esac
done
mode=$(resolve_mode "$mode") || { echo "SKIP: $mode_skip_reason"; exit 77; }
args=(--bootmeasure)
case " $vmms " in *" qemu "*) args+=(--qemu) ;; esac
case " $vmms " in
  *" firecracker"*)
    firecracker=$(find_firecracker "$firecracker") || { echo "boot-time: $firecracker" >&2; exit 2; }
    args+=(--binary firecracker "$firecracker") ;;
esac
case " $vmms " in
  *" volt"*)
    if [ -z "$volt" ]; then
      # The README's dynamic release build; make-payload brings its libraries, as it does
      # for Firecracker, so both VMMs start the same way (through the payload's ld.so).
      echo "boot-time: building the release volt" >&2
      (cd "$repo" && cargo build --release --bin volt >&2)
      volt=$repo/target/release/volt
    fi
    args+=(--volt "$volt") ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$repo/tests/nested/make-payload.sh" "$work/p" "$repo/perf/boot-time-run.sh" "${args[@]}" >/dev/null
printf 'VMMS="%s"\nBOOTS=%s\nMEM_BOOTS=%s\nCPUS_LIST="%s"\nCONSOLES="%s"\n' \
  "$vmms" "$boots" "$mem_boots" "$cpus" "$consoles" > "$work/p/env.sh"
echo "boot-time: $boots timed + $mem_boots memory boots of: $vmms; vCPUs: $cpus; console: $consoles; 256 MiB; mode $mode" >&2
start=$(date +%s)
run_payload "$mode" "$work/p" > "$work/out.txt" 2>&1 || true
echo "boot-time: payload finished in $(( $(date +%s) - start )) s" >&2
[ -n "$raw" ] && cp "$work/out.txt" "$raw"
grep -E '^(BOOT-FAILED|NESTED-EXIT|NESTED-WEDGED|NESTED-TIMEOUT|FC-SECCOMP-KILLED)' "$work/out.txt" >&2 || true
grep -q BENCH-DONE "$work/out.txt" || { echo "boot-time: the payload did not finish:" >&2; tail -40 "$work/out.txt" >&2; exit 1; }
python3 "$repo/perf/boot_stats.py" --mode "$mode" $markdown < "$work/out.txt"

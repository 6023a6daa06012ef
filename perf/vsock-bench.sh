#!/bin/bash
# vsock round-trip latency and throughput, Volt vs Firecracker, same guest kernel, rootfs, guest
# tool (perf/guest/tools/vsock.c, volt.run=vsock) and host agent (perf/vsockhost.c), in one run
# of a real KVM (on the PVM development machines: inside ../shared/nested-kvm/run.sh, where only
# the Volt/Firecracker ratios mean anything).
#
# usage: perf/vsock-bench.sh [--volt BIN] [--firecracker BIN] [--reps N] [--bytes N] [--rounds N]
#                            [--mode auto|direct|nested]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/tests/nested/common.sh"
volt= fc=${VOLT_SHARED_DIR:-$repo/../shared}/anchors/firecracker reps=2 bytes=33554432 rounds=2000 mode=auto
while [ $# -gt 0 ]; do
  case $1 in
    --volt) volt=$2; shift 2 ;;
    --firecracker) fc=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --bytes) bytes=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    *) echo "vsock-bench: unknown option $1" >&2; exit 2 ;;
  esac
done
mode=$(resolve_mode "$mode") || { echo "SKIP: $mode_skip_reason"; exit 77; }
if [ -z "$volt" ]; then
  (cd "$repo" && cargo build --release --bin volt >&2)
  volt=$repo/target/release/volt
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$repo/tests/nested/make-payload.sh" "$work/p" "$repo/perf/vsock-bench-run.sh" --volt "$volt" >/dev/null
vmms=volt
if [ -x "$fc" ]; then
  # Firecracker is dynamic: bring its libraries and start it through the payload's ld.so.
  cp "$fc" "$work/p/lib/firecracker.real"
  ldd "$fc" | { grep -o '/[^ ]*' || true; } | while read -r lib; do cp -L "$lib" "$work/p/lib/"; done
  cat > "$work/p/bin/firecracker" <<'WRAP'
#!/bin/sh
p=$(cd "$(dirname "$0")/.." && pwd)
exec "$p/lib/ld-linux-x86-64.so.2" --library-path "$p/lib" "$p/lib/firecracker.real" "$@"
WRAP
  chmod +x "$work/p/bin/firecracker"
  vmms="volt firecracker"
else
  echo "vsock-bench: no Firecracker at $fc; Volt only" >&2
fi
printf 'VMMS="%s"\nREPS=%s\nBYTES=%s\nROUNDS=%s\n' "$vmms" "$reps" "$bytes" "$rounds" > "$work/p/env.sh"
run_payload "$mode" "$work/p" | tee "$work/out.txt" | grep -E '^(VSOCK-|HOST-VSOCK-BENCH|HOST-VSOCK-(ALL-OK|FAILED)|VMM-STATUS|NESTED-)' || true
grep -q VSOCK-BENCH-DONE "$work/out.txt" || { echo "vsock-bench: the payload did not finish" >&2; tail -30 "$work/out.txt" >&2; exit 1; }

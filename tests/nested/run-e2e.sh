#!/bin/bash
# Host side of the real-Linux end-to-end test: builds the payload (tests/nested/e2e-run.sh + guest
# kernels + rootfs + VMM) and runs it on a real KVM: directly when this host's /dev/kvm is a
# hardware KVM (kvm_intel/kvm_amd), else inside ../shared/nested-kvm/run.sh.
#
# usage: tests/nested/run-e2e.sh [--vmm volt|qemu] [--volt BIN] [--mode auto|direct|nested]
# Prints the payload's delimited output (see lib.sh boot_case). Exit status 77 with a line
# `SKIP: reason` when no real KVM can be had. When the bed's outer guest wedges or stops early
# the run resumes (common.sh run_payload_resuming), and each such failure is a
# `NESTED-WEDGED|NESTED-ENDED N reason (in case C; groups done: ...)` line in the output.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"
vmm=volt volt= mode=auto
while [ $# -gt 0 ]; do
  case $1 in
    --vmm) vmm=$2; shift 2 ;;
    --volt) volt=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    *) echo "run-e2e: unknown option $1" >&2; exit 2 ;;
  esac
done
mode=$(resolve_mode "$mode") || { echo "SKIP: $mode_skip_reason"; exit 77; }
payload=$(mktemp -d)
trap 'rm -rf "$payload"' EXIT
args=()
case $vmm in
  volt) [ -n "$volt" ] || { echo "run-e2e: --volt BIN is required" >&2; exit 2; }; args=(--volt "$volt") ;;
  qemu) args=(--qemu) ;;
  *) echo "run-e2e: unknown VMM $vmm" >&2; exit 2 ;;
esac
"$here/make-payload.sh" "$payload/p" "$here/e2e-run.sh" "${args[@]}" >/dev/null
echo "E2E-MODE $mode"
# One attempt of the whole e2e takes 5-10 min alone in the bed; a bed stuck past NESTED_TIMEOUT
# is ended and reported as NESTED-TIMEOUT (not retried: something other than a wedge is stuck).
export NESTED_TIMEOUT=${NESTED_TIMEOUT:-1200}
if [ "$mode" = direct ]; then
  echo "VMM=$vmm" > "$payload/p/env.sh"
  run_payload direct "$payload/p"
  exit
fi
run_payload_resuming "$payload/p" "$vmm"

# Shared by the host-side scripts: where the nested harness is and how to run a payload.

# The shared dir is ../shared next to the repository (CI clones the repo beside a copy of it).
nested_run_sh() {
  local top
  top=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel 2>/dev/null || true)
  for d in ${VOLT_SHARED_DIR:-} "$top/../shared" /work/shared; do
    [ -n "$d" ] && [ -x "$d/nested-kvm/run.sh" ] && { echo "$d/nested-kvm/run.sh"; return 0; }
    [ -n "$d" ] && [ -f "$d/nested-kvm/run.sh" ] && { echo "$d/nested-kvm/run.sh"; return 0; }
  done
  return 1
}

# A host whose /dev/kvm is hardware KVM (not paravirtual PVM) can boot a stock kernel directly.
host_has_real_kvm() {
  [ -c /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; } && [ ! -d /sys/module/kvm_pvm ]
}

# resolve_mode auto|direct|nested -> direct or nested on stdout; sets mode_skip_reason on failure.
# (VOLT_E2E_MODE overrides auto.)
mode_skip_reason=
resolve_mode() {
  local m=$1
  [ "$m" = auto ] && m=${VOLT_E2E_MODE:-auto}
  if [ "$m" = auto ]; then
    if host_has_real_kvm; then m=direct; elif nested_run_sh >/dev/null; then m=nested; fi
  fi
  case $m in
    direct) echo direct ;;
    nested) nested_run_sh >/dev/null || { mode_skip_reason="nested-kvm/run.sh not found"; return 1; }; echo nested ;;
    *) mode_skip_reason="no hardware KVM here and no ../shared/nested-kvm/run.sh"; return 1 ;;
  esac
}

# run_payload MODE DIR: runs DIR/run on a real KVM and prints its output.
run_payload() {
  local mode=$1 dir=$2
  if [ "$mode" = direct ]; then
    (cd "$dir" && sh ./run; echo "NESTED-EXIT $?")
  else
    bash "$(nested_run_sh)" "$dir" "${NESTED_MEM_MB:-2048}"
  fi
}

# run_payload_resuming DIR VMM: run_payload nested, for a payload made of lib.sh run_group groups.
# The bed's outer guest can wedge (../shared/README.md) or stop early (its kernel crashed: QEMU
# exits without the payload's NESTED-EXIT). run.sh would start the whole payload again after a
# wedge; instead each attempt runs once (NESTED_RETRIES=0, so a wedged attempt's output comes
# back) and the next attempt skips the groups of boots (lib.sh run_group) that had finished: a
# bed failure costs the group it hit, not the run. Each is a `NESTED-WEDGED N reason (in case C;
# groups done: ...)` or `NESTED-ENDED N ...` line, followed by the last lines run.sh printed on
# stderr (`NESTED-BED-CONSOLE ...`: QEMU's and the outer kernel's last words). At most
# E2E_MAX_BED_FAILURES (default 8) per run, and at most 4 in a row in one group; then the output
# so far and the last such line ending in `(no retries left)`, status 125. VMM and
# E2E_SKIP_GROUPS go to DIR/env.sh (lib.sh reads it).
run_payload_resuming() {
  local dir=$1 vmm=$2 max=${E2E_MAX_BED_FAILURES:-8}
  local done_groups= failures=0 stuck=0 kept=$1.kept out=$1.out err=$1.err rc kind why last new in_case line
  : > "$kept"
  while :; do
    { echo "VMM=$vmm"; echo "E2E_SKIP_GROUPS='$done_groups'"; } > "$dir/env.sh"
    rc=0
    NESTED_RETRIES=0 run_payload nested "$dir" > "$out" 2> "$err" || rc=$?
    cat "$err" >&2
    sed -i 's/\r$//' "$out" # the payload's lines come over a serial port, CRLF-terminated
    why=$(sed -n 's/^NESTED-WEDGED [0-9]* \(.*\) (no retries left)$/\1/p' "$out" | tail -n 1)
    if [ "$rc" = 125 ] && [ -n "$why" ]; then
      kind=WEDGED
    elif ! grep -qE '^NESTED-(EXIT|TIMEOUT)' "$out"; then
      kind=ENDED why="the outer guest stopped before the payload did (status $rc, no NESTED-EXIT)"
    else
      cat "$kept" "$out"
      return "$rc"
    fi
    failures=$((failures + 1))
    # Keep what the finished groups printed; the group in flight runs again from its start.
    last=$(grep -n '^E2E-GROUP-DONE ' "$out" | tail -n 1 | cut -d: -f1 || true)
    [ -n "$last" ] && { head -n "$last" "$out" | grep -v '^NESTED-' >> "$kept" || true; }
    new=$(sed -n 's/^E2E-GROUP-DONE //p' "$out" | tr '\n' ' ')
    done_groups=$(echo $done_groups $new)
    if [ -n "$new" ]; then stuck=1; else stuck=$((stuck + 1)); fi
    in_case=$(sed -n 's/^VOLT-CASE-BEGIN //p' "$out" | tail -n 1)
    line="NESTED-$kind $failures $why (in case ${in_case:-none}; groups done: ${done_groups:-none})"
    echo "run-e2e: $line" >&2
    echo "$line" >> "$kept"
    # run.sh's stderr: QEMU's own messages and the outer kernel's warnings (BUG, Oops, panic).
    tail -n 15 "$err" | sed 's/^/NESTED-BED-CONSOLE /' >> "$kept"
    if [ "$failures" -ge "$max" ] || [ "$stuck" -ge 4 ]; then
      cat "$kept"
      tail -n +$((${last:-0} + 1)) "$out" | grep -v '^NESTED-' || true
      echo "NESTED-$kind $failures $why (no retries left)"
      return 125
    fi
  done
}

# find_firecracker [PATH]: the Firecracker binary for side-by-side benchmarks: PATH if given,
# else anchors/firecracker in the shared dir. On failure prints why (stdout) and returns 1.
find_firecracker() {
  local given=${1:-} top d
  if [ -n "$given" ]; then
    [ -x "$given" ] && { echo "$given"; return 0; }
    echo "Firecracker binary $given is missing or not executable"; return 1
  fi
  top=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel 2>/dev/null || true)
  for d in ${VOLT_SHARED_DIR:-} "$top/../shared" /work/shared; do
    [ -n "$d" ] && [ -x "$d/anchors/firecracker" ] && { echo "$d/anchors/firecracker"; return 0; }
  done
  echo "no Firecracker binary: pass --firecracker PATH (looked in ../shared/anchors and /work/shared/anchors)"
  return 1
}

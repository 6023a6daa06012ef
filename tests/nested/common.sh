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

# Shell helpers for payload run scripts (busybox sh in the nested guest, or any POSIX sh on a host
# with a real KVM). Sourced from the payload directory.
P=$(pwd)
export PATH="$P/bin:$PATH"
[ -f "$P/env.sh" ] && . "$P/env.sh"
GUEST_MEM_MB=${GUEST_MEM_MB:-256}
CASE_TIMEOUT=${CASE_TIMEOUT:-60} # a stuck VMM must not eat the CI budget
TMPD=${TMPDIR:-/tmp}

# Create tap0 = 10.0.2.1/24 (the guest uses 10.0.2.15). The outer Debian kernel needs tun.ko.
setup_tap() {
  [ -c /dev/net/tun ] || insmod "$P/tun.ko" 2>/dev/null
  [ -c /dev/net/tun ] || { mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }
  if ip tuntap add dev tap0 mode tap 2>/dev/null || tunctl -t tap0 >/dev/null; then
    ip addr add 10.0.2.1/24 dev tap0 && ip link set tap0 up && echo "HOST-TAP-UP tap0"
  else
    echo "HOST-TAP-FAILED"
  fi
}

# Volt's default command line minus reboot= (QEMU gets the same so that both guests probe the same).
BASE_CMDLINE="console=ttyS0 panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1"

# vmm_command VMM CPUS KERNEL DISK NET APPEND: sets VMM_ARGS (a string; no spaces in paths) for
# VMM volt or qemu. DISK/NET may be empty. APPEND is added to the default kernel command line.
vmm_command() {
  _vmm=$1 _cpus=$2 _kernel=$3 _disk=$4 _net=$5 _append=$6
  case $_vmm in
    volt)
      VMM_ARGS="volt --kernel $_kernel --cpus $_cpus --mem ${GUEST_MEM_MB}M --log-level info"
      [ -n "$_disk" ] && VMM_ARGS="$VMM_ARGS --disk $_disk"
      [ -n "$_net" ] && VMM_ARGS="$VMM_ARGS --net $_net"
      [ -n "${VMM_EXTRA:-}" ] && VMM_ARGS="$VMM_ARGS $VMM_EXTRA" # e.g. --vsock (set by the caller)
      VMM_CMDLINE="$BASE_CMDLINE reboot=k $_append" ;;
    qemu)
      # microvm has no i8042 for reboot=k: a triple fault (reboot=t) + -no-reboot ends QEMU.
      VMM_ARGS="qemu-system-x86_64 -M microvm,acpi=off -accel kvm -cpu host -smp $_cpus -m $GUEST_MEM_MB"
      VMM_ARGS="$VMM_ARGS -nodefaults -no-user-config -nographic -serial stdio -no-reboot -L $P/share"
      VMM_ARGS="$VMM_ARGS -kernel $_kernel"
      [ -n "$_disk" ] && VMM_ARGS="$VMM_ARGS -drive id=d0,file=$_disk,format=raw,if=none -device virtio-blk-device,drive=d0"
      [ -n "$_net" ] && VMM_ARGS="$VMM_ARGS -netdev tap,id=n0,ifname=$_net,script=no,downscript=no -device virtio-net-device,netdev=n0"
      VMM_CMDLINE="$BASE_CMDLINE reboot=t $_append"
      [ -n "$_disk" ] && VMM_CMDLINE="$VMM_CMDLINE root=/dev/vda rw" ;;
    *) echo "lib.sh: unknown VMM $_vmm" >&2; return 1 ;;
  esac
  return 0
}

# run_vmm: runs the VMM_ARGS + VMM_CMDLINE prepared by vmm_command under PREFIX (e.g. bootmeasure).
run_vmm() {
  case $VMM_ARGS in
    volt*) $PREFIX $VMM_ARGS --cmdline "$VMM_CMDLINE" ;;
    *) $PREFIX $VMM_ARGS -append "$VMM_CMDLINE" ;;
  esac
}

# boot_case NAME VMM CPUS KERNEL DISK NET APPEND [PING_ADDR]
# Boots once and prints a delimited block the host-side test parses:
#   VOLT-CASE-BEGIN NAME / <VMM stdout = guest serial> / VOLT-CASE-STDERR / <VMM stderr> /
#   HOST-... lines / VOLT-CASE-END NAME status=S seconds=T
# With PING_ADDR, the host pings it once the guest printed VOLT-NET-UP (HOST-PING-OK/FAILED).
# With CASE_HOOK set, that command runs beside the VMM; its output joins the HOST- lines.
boot_case() {
  _name=$1 _ping=${8:-}
  vmm_command "$2" "$3" "$4" "$5" "$6" "$7" || return 1
  echo "VOLT-CASE-BEGIN $_name"
  echo "VOLT-CASE-COMMAND $VMM_ARGS :: $VMM_CMDLINE"
  : > "$TMPD/case.out"; : > "$TMPD/case.err"; : > "$TMPD/case.host"
  _t0=$(date +%s)
  _hook=
  if [ -n "${CASE_HOOK:-}" ]; then $CASE_HOOK >> "$TMPD/case.hook" 2>&1 & _hook=$!; fi
  PREFIX="timeout $CASE_TIMEOUT" run_vmm > "$TMPD/case.out" 2> "$TMPD/case.err" &
  _pid=$!
  if [ -n "$_ping" ]; then
    _ping_result=HOST-PING-NOT-TRIED
    while kill -0 $_pid 2>/dev/null; do
      if grep -q VOLT-NET-UP "$TMPD/case.out"; then
        _ping_result=HOST-PING-FAILED
        for _i in 1 2 3 4 5; do
          if ping -c 1 -W 2 "$_ping" > "$TMPD/ping.out" 2>&1; then _ping_result=HOST-PING-OK; break; fi
        done
        grep -E 'bytes from|packets' "$TMPD/ping.out" >> "$TMPD/case.host"
        break
      fi
      sleep 0.2
    done
    echo "$_ping_result $_ping" >> "$TMPD/case.host"
  fi
  wait $_pid
  _status=$?
  if [ -n "$_hook" ]; then wait $_hook; cat "$TMPD/case.hook" >> "$TMPD/case.host"; rm -f "$TMPD/case.hook"; fi
  cat "$TMPD/case.out"
  echo
  echo "VOLT-CASE-STDERR"
  cat "$TMPD/case.err"
  cat "$TMPD/case.host"
  echo "VOLT-CASE-END $_name status=$_status seconds=$(( $(date +%s) - _t0 ))"
}

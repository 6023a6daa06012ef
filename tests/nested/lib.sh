# Shell helpers for payload run scripts (busybox sh in the nested guest, or any POSIX sh on a host
# with a real KVM). Sourced from the payload directory.
P=$(pwd)
export PATH="$P/bin:$PATH"
[ -f "$P/env.sh" ] && . "$P/env.sh"
GUEST_MEM_MB=${GUEST_MEM_MB:-256}
CASE_TIMEOUT=${CASE_TIMEOUT:-120} # a stuck VMM must not eat the CI budget (cases take 20-40 s alone)
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
# VMM volt, qemu or firecracker. DISK/NET may be empty. APPEND is added to the default kernel
# command line. Optional: EXTRA_DISK (a second disk, /dev/vdb), VOLT_DISK_OPTS (appended to
# volt's --disk values, e.g. ",engine=sync"), FC_IO_ENGINE (Sync or Async for Firecracker's
# drives), FC_EXTRA_ARGS (e.g. --no-seccomp), FC_APPEND (see below).
vmm_command() {
  _vmm=$1 _cpus=$2 _kernel=$3 _disk=$4 _net=$5 _append=$6
  case $_vmm in
    volt)
      VMM_ARGS="volt --kernel $_kernel --cpus $_cpus --mem ${GUEST_MEM_MB}M --log-level info"
      [ -n "$_disk" ] && VMM_ARGS="$VMM_ARGS --disk $_disk${VOLT_DISK_OPTS:-}"
      [ -n "${EXTRA_DISK:-}" ] && VMM_ARGS="$VMM_ARGS --disk $EXTRA_DISK${VOLT_DISK_OPTS:-}"
      [ -n "$_net" ] && VMM_ARGS="$VMM_ARGS --net $_net"
      VMM_ARGS="$VMM_ARGS ${VOLT_EXTRA_ARGS:-}"
      # CASE_VOLT_ARGS: more volt flags for one case (e.g. --initrd F, --acpi off).
      [ -n "${CASE_VOLT_ARGS:-}" ] && VMM_ARGS="$VMM_ARGS $CASE_VOLT_ARGS"
      VMM_CMDLINE="$BASE_CMDLINE reboot=k $_append" ;;
    qemu)
      # microvm has no i8042 for reboot=k: a triple fault (reboot=t) + -no-reboot ends QEMU.
      VMM_ARGS="qemu-system-x86_64 -M microvm,acpi=off -accel kvm -cpu host -smp $_cpus -m $GUEST_MEM_MB"
      VMM_ARGS="$VMM_ARGS -nodefaults -no-user-config -nographic -serial stdio -no-reboot -L $P/share"
      VMM_ARGS="$VMM_ARGS -kernel $_kernel"
      [ -n "$_disk" ] && VMM_ARGS="$VMM_ARGS -drive id=d0,file=$_disk,format=raw,if=none -device virtio-blk-device,drive=d0"
      [ -n "$_net" ] && VMM_ARGS="$VMM_ARGS -netdev tap,id=n0,ifname=$_net,script=no,downscript=no -device virtio-net-device,netdev=n0"
      VMM_ARGS="$VMM_ARGS ${QEMU_EXTRA_ARGS:-}"
      VMM_CMDLINE="$BASE_CMDLINE reboot=t $_append"
      [ -n "$_disk" ] && VMM_CMDLINE="$VMM_CMDLINE root=/dev/vda rw" ;;
    firecracker)
      # Everything goes in one JSON file (--no-api --config-file); Firecracker adds root= and
      # the virtio-mmio entries to the command line itself, and exits on the i8042 reset.
      # FC_APPEND (default acpi=off): Firecracker also describes its devices in ACPI tables,
      # and with them the project's ACPI=y kernel found no /dev/vda under Firecracker 1.17 in
      # the nested bed (ACPI: Unable to load the System Description Tables; virtio_blk probe
      # -22). acpi=off puts the guest on the MP-table path, with virtio-mmio devices from the
      # command line (Volt's own path before it wrote ACPI tables; Volt's --acpi off now).
      VMM_CMDLINE="$BASE_CMDLINE reboot=k ${FC_APPEND-acpi=off} $_append"
      _engine=${FC_IO_ENGINE:+,\"io_engine\":\"$FC_IO_ENGINE\"}
      _drives=
      [ -n "$_disk" ] && _drives="{\"drive_id\":\"rootfs\",\"path_on_host\":\"$_disk\",\"is_root_device\":true,\"is_read_only\":false$_engine}"
      [ -n "${EXTRA_DISK:-}" ] && _drives="$_drives${_drives:+,}{\"drive_id\":\"data\",\"path_on_host\":\"$EXTRA_DISK\",\"is_root_device\":false,\"is_read_only\":false$_engine}"
      _nics=
      [ -n "$_net" ] && _nics="{\"iface_id\":\"eth0\",\"host_dev_name\":\"$_net\"}"
      printf '{"boot-source":{"kernel_image_path":"%s","boot_args":"%s"},"drives":[%s],"network-interfaces":[%s],"machine-config":{"vcpu_count":%s,"mem_size_mib":%s}}\n' \
        "$_kernel" "$VMM_CMDLINE" "$_drives" "$_nics" "$_cpus" "$GUEST_MEM_MB" > "$TMPD/fc-config.json"
      # Its log goes to a file so that stdout is the guest's serial console only.
      : > "$TMPD/fc.log"
      VMM_ARGS="firecracker --no-api --config-file $TMPD/fc-config.json --log-path $TMPD/fc.log --level Warning ${FC_EXTRA_ARGS:-}" ;;
    *) echo "lib.sh: unknown VMM $_vmm" >&2; return 1 ;;
  esac
  return 0
}

# run_vmm: runs the VMM_ARGS + VMM_CMDLINE prepared by vmm_command under PREFIX (e.g. bootmeasure).
run_vmm() {
  case $VMM_ARGS in
    volt*) $PREFIX $VMM_ARGS --cmdline "$VMM_CMDLINE" ;;
    firecracker*) $PREFIX $VMM_ARGS ;;
    *) $PREFIX $VMM_ARGS -append "$VMM_CMDLINE" ;;
  esac
}

# boot_case NAME VMM CPUS KERNEL DISK NET APPEND [PING_ADDR]
# Boots once and prints a delimited block the host-side test parses:
#   VOLT-CASE-BEGIN NAME / <VMM stdout = guest serial> / VOLT-CASE-STDERR / <VMM stderr> /
#   HOST-... lines / VOLT-CASE-END NAME status=S seconds=T
# With PING_ADDR, the host pings it once the guest printed VOLT-NET-UP (HOST-PING-OK/FAILED).
boot_case() {
  _name=$1 _ping=${8:-}
  vmm_command "$2" "$3" "$4" "$5" "$6" "$7" || return 1
  echo "VOLT-CASE-BEGIN $_name"
  echo "VOLT-CASE-COMMAND $VMM_ARGS :: $VMM_CMDLINE"
  : > "$TMPD/case.out"; : > "$TMPD/case.err"; : > "$TMPD/case.host"
  _t0=$(date +%s)
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
  [ -n "${CASE_WATCH:-}" ] && $CASE_WATCH $_pid # e.g. balloon_rss_watch, below
  wait $_pid
  _status=$?
  cat "$TMPD/case.out"
  echo
  echo "VOLT-CASE-STDERR"
  cat "$TMPD/case.err"
  cat "$TMPD/case.host"
  echo "VOLT-CASE-END $_name status=$_status seconds=$(( $(date +%s) - _t0 ))"
}

# run_group NAME COMMAND...: one group of boots that needs nothing from the boots before it
# (e.g. a chain that shares a disk is one group). Skipped when E2E_SKIP_GROUPS (env.sh) names it:
# run-e2e.sh resumes a payload whose outer guest wedged after the groups that had finished. Prints
# `E2E-GROUP-DONE NAME` once COMMAND returned.
run_group() {
  _group=$1; shift
  case " ${E2E_SKIP_GROUPS:-} " in *" $_group "*) echo "E2E-GROUP-SKIPPED $_group"; return 0 ;; esac
  "$@"
  echo "E2E-GROUP-DONE $_group"
}

# --- virtio-rng / virtio-balloon (issue 10) ---
# Extra VMM flags for a case that runs volt.run=balloon (set them, boot_case, then clear them).
BALLOON_VOLT_ARGS="--balloon"
BALLOON_QEMU_ARGS="-device virtio-balloon-device,free-page-reporting=on"

# vmm_pid: pid of the running VMM (volt, qemu or firecracker; the payload runs one at a time).
vmm_pid() {
  for _f in /proc/[0-9]*/cmdline; do
    set -- $( { tr '\0' ' ' < "$_f"; } 2>/dev/null) # the process may be gone already
    case "$1" in
      */ld-linux-x86-64.so.2) _exe=$4 ;; # a wrapped dynamic binary: ld.so --library-path DIR EXE
      *) _exe=$1 ;;
    esac
    case "$_exe" in
      volt|*/volt|*/volt.real|qemu-system-x86_64|*/qemu-system-x86_64.real|firecracker|*/firecracker|*/firecracker.real)
        _d=${_f%/cmdline}; echo "${_d#/proc/}"; return 0 ;;
    esac
  done
  return 1
}

# rss_kb PID: resident memory in KiB, from smaps_rollup (else status VmRSS).
rss_kb() {
  awk '/^Rss:/ { print $2; exit }' "/proc/$1/smaps_rollup" 2>/dev/null | grep . ||
    awk '/^VmRSS:/ { print $2; exit }' "/proc/$1/status" 2>/dev/null
}

# balloon_rss_watch PID (a boot_case CASE_WATCH): while the case runs, samples the VMM's RSS every
# 0.5 s against the guest's VOLT-BALLOON-* markers in $TMPD/case.out and adds to the case's host
# lines: HOST-RSS-START-KB (at START), HOST-RSS-FILLED-KB (most while 128 MiB was in use) and
# HOST-RSS-FREED-KB (least after the guest freed it, until DONE).
balloon_rss_watch() {
  _wpid=$1 _vp= _start= _filled= _freed=
  while kill -0 "$_wpid" 2>/dev/null; do
    { [ -n "$_vp" ] && [ -d "/proc/$_vp" ]; } || _vp=$(vmm_pid)
    _rss=
    [ -n "$_vp" ] && _rss=$(rss_kb "$_vp")
    if [ -n "$_rss" ]; then
      if grep -q VOLT-BALLOON-FREED "$TMPD/case.out"; then
        { [ -z "$_freed" ] || [ "$_rss" -lt "$_freed" ]; } && _freed=$_rss
      elif grep -q VOLT-BALLOON-FILLED "$TMPD/case.out"; then
        { [ -z "$_filled" ] || [ "$_rss" -gt "$_filled" ]; } && _filled=$_rss
      elif grep -q VOLT-BALLOON-START "$TMPD/case.out"; then
        [ -z "$_start" ] && _start=$_rss
      fi
    fi
    grep -q -E 'VOLT-BALLOON-(DONE|FAILED)' "$TMPD/case.out" && break
    sleep 0.5
  done
  echo "HOST-RSS-START-KB ${_start:-none}" >> "$TMPD/case.host"
  echo "HOST-RSS-FILLED-KB ${_filled:-none}" >> "$TMPD/case.host"
  echo "HOST-RSS-FREED-KB ${_freed:-none}" >> "$TMPD/case.host"
}

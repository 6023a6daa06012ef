#!/bin/sh
# Payload side of perf/boot-time.sh (runs inside the nested real-KVM guest, or directly on a
# hardware-KVM host). Settings come from env.sh: VMMS (e.g. "volt-elf firecracker"), BOOTS,
# MEM_BOOTS, CPUS_LIST (e.g. "1 2"), CONSOLES ("on quiet"). Prints one
# `RESULT kind=time|mem vmm=V cpus=C console=on|quiet i=I uptime_ms=U BOOTMEASURE ...` line per
# boot; the VMMs alternate boot by boot within each case.
. ./lib.sh
BOOTS=${BOOTS:-6}
MEM_BOOTS=${MEM_BOOTS:-1}
CPUS_LIST=${CPUS_LIST:-${CPUS:-1}}
CONSOLES=${CONSOLES:-on}
VMMS=${VMMS:-volt-elf firecracker}
K=$P/kernels
cp "$P/rootfs.ext4" "$TMPD/bench.ext4"
FC_EXTRA_ARGS=

# one_boot KIND VARIANT CPUS CONSOLE I: volt and qemu boot bzImage (same bytes); volt-elf and
# firecracker boot vmlinux.
one_boot() {
  _kind=$1 _variant=$2 _cpus=$3 _console=$4 _i=$5
  case $_variant in
    volt) _vmm=volt _kernel=$K/bzImage ;;
    volt-elf) _vmm=volt _kernel=$K/vmlinux ;;
    qemu) _vmm=qemu _kernel=$K/bzImage ;;
    firecracker) _vmm=firecracker _kernel=$K/vmlinux ;;
  esac
  # The same guest path under every VMM: the MP table and command-line virtio devices
  # (Firecracker's own ACPI tables do not work with this kernel; see tests/nested/lib.sh).
  _append=acpi=off
  [ "$_console" = quiet ] && _append="$_append quiet"
  _sample=
  # Memory runs keep the guest alive 1 s after its marker and sample smaps every 20 ms.
  [ "$_kind" = mem ] && _append="$_append volt.wait=1" && _sample="-s 20"
  vmm_command "$_vmm" "$_cpus" "$_kernel" "$TMPD/bench.ext4" "" "$_append"
  _line=$(PREFIX="bootmeasure -m VOLT-INIT-READY -g $GUEST_MEM_MB -t 60 $_sample -o $TMPD/b.out -e $TMPD/b.err --" run_vmm)
  # Firecracker's own seccomp filters may refuse a call in the nested guest: then go on
  # without them (reported), as its anchors/README says.
  if [ "$_vmm" = firecracker ] && [ -z "$FC_EXTRA_ARGS" ] && echo "$_line" | grep -q 'status=159 '; then
    echo "FC-SECCOMP-KILLED: Firecracker was killed by its own seccomp filter here; the rest runs with --no-seccomp"
    tail -5 "$TMPD/fc.log"
    FC_EXTRA_ARGS=--no-seccomp
    vmm_command "$_vmm" "$_cpus" "$_kernel" "$TMPD/bench.ext4" "" "$_append"
    _line=$(PREFIX="bootmeasure -m VOLT-INIT-READY -g $GUEST_MEM_MB -t 60 $_sample -o $TMPD/b.out -e $TMPD/b.err --" run_vmm)
  fi
  # The guest's own clock at its init marker (seconds with 2 decimals) in ms.
  _uptime=$(sed -n 's/.*VOLT-INIT-READY uptime=\([0-9.]*\).*/\1/p' "$TMPD/b.out" | head -1 | awk '{ printf "%d", $1 * 1000 }')
  # Volt's exit counts (its info log at the end): port and MMIO exits served by the loop, and
  # port reads the vCPU threads answered themselves.
  _exits=$(sed -n 's/.* \([0-9]*\) port exits (+\([0-9]*\) answered on the vCPU threads) and \([0-9]*\) MMIO exits.*/pio_exits=\1 pio_local=\2 mmio_exits=\3/p' "$TMPD/b.err" | head -1)
  echo "RESULT kind=$_kind vmm=$_variant cpus=$_cpus console=$_console i=$_i uptime_ms=${_uptime:--1} $_exits $_line"
  if ! grep -q VOLT-INIT-DONE "$TMPD/b.out"; then
    echo "BOOT-FAILED vmm=$_variant cpus=$_cpus console=$_console i=$_i"; tail -5 "$TMPD/b.out"; tail -5 "$TMPD/b.err"
    [ "$_vmm" = firecracker ] && tail -5 "$TMPD/fc.log"
  fi
}

# One Firecracker boot with its ACPI tables in use (no acpi=off), its console kept for the
# record: what the guest says about ACPI, virtio-mmio and the root device.
case " $VMMS " in
  *" firecracker "*)
    FC_APPEND=
    vmm_command firecracker 1 "$K/vmlinux" "$TMPD/bench.ext4" "" ""
    PREFIX="timeout 60" run_vmm > "$TMPD/diag.out" 2>&1
    echo "FC-ACPI-DIAG status=$? (Firecracker with ACPI; the timed boots add acpi=off)"
    unset FC_APPEND
    grep -aiE 'acpi|virtio|mmio|vda|root|LNRO|IOAPIC|panic|VOLT-INIT' "$TMPD/diag.out" | head -40 | sed 's/^/FC-ACPI-DIAG /'
    ;;
esac

for cpus in $CPUS_LIST; do
  for console in $CONSOLES; do
    i=1
    while [ $i -le "$BOOTS" ]; do
      for v in $VMMS; do one_boot time "$v" "$cpus" "$console" $i; done
      i=$((i + 1))
    done
    i=1
    while [ $i -le "$MEM_BOOTS" ]; do
      for v in $VMMS; do one_boot mem "$v" "$cpus" "$console" $i; done
      i=$((i + 1))
    done
  done
done
echo "BENCH-DONE"

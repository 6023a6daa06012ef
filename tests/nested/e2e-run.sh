#!/bin/sh
# Payload run script for tests/real_linux.rs: every boot of the end-to-end test in one nested run.
# VMM (volt or qemu) and E2E_SKIP_GROUPS come from env.sh, written by run-e2e.sh. The boots run
# in groups (lib.sh run_group) so that a run whose outer guest wedged resumes after the groups
# that had finished.
# Most guests boot with `quiet` and print the kernel lines the tests check from dmesg (the
# initramfs's volt.check, the rootfs's volt.run=klog): every console byte is two port exits, each
# a trip through the bed's emulated SVM, and the bed's triple faults and hangs of the guest come
# around such exits (perf/README.md, "Console exits and the bed"). The stock-mptable boot keeps
# the whole console (it has no init to print from).
. ./lib.sh
VMM=${VMM:-volt}
K=$P/kernels
echo "E2E-VMM $VMM"
[ -c /dev/kvm ] || echo "E2E-NO-KVM"
setup_tap

# a. Debian's packaged kernels, unmodified, with an initramfs of their own virtio modules
#    (perf/guest/build-initramfs.sh): CPUs from the MADT, the disk and NIC from the DSDT, the disk's
#    first line read back, then `poweroff -f` (ACPI S5) ends Volt. The cloud kernel has no MP-table
#    parser at all. Volt only (QEMU would need the same tables and devices).
debian_acpi() { # NAME CPUS KERNEL INITRD
  CASE_VOLT_ARGS="--initrd $4"
  boot_case "$1" "$VMM" "$2" "$3" "$P/acpi-disk.img,ro" tap0 "volt.check quiet"
  CASE_VOLT_ARGS=
}
if [ "$VMM" = volt ]; then
  for n in 1 2 4; do
    run_group "debian-acpi-cpus$n" debian_acpi "debian-acpi-cpus$n" "$n" "$K/debian-vmlinuz" "$K/debian-initramfs.gz"
  done
  run_group debian-cloud-acpi-cpus4 debian_acpi debian-cloud-acpi-cpus4 4 "$K/debian-cloud-vmlinuz" "$K/debian-cloud-initramfs.gz"
fi
# The stock kernel with --acpi off, no disk: SMP through the MP table alone, then the root-mount
# panic (panic=1 reboots).
stock_mptable() {
  [ "$VMM" = volt ] && CASE_VOLT_ARGS="--acpi off"
  boot_case "stock-mptable-cpus4" "$VMM" 4 "$K/debian-vmlinuz" "" "" ""
  CASE_VOLT_ARGS=
}
run_group stock-mptable-cpus4 stock_mptable

# b. Built kernel + rootfs: cpu count marker, persistence across boots, network + ping. One group:
#    the three boots share a disk.
rootfs_boots() {
  cp "$P/rootfs.ext4" "$TMPD/disk.ext4"
  small=$K/vmlinux
  [ "$VMM" = qemu ] && small=$K/bzImage # QEMU needs a PVH note to boot an ELF vmlinux
  # rootfs-cpus1 reads /dev/hwrng (Volt's virtio-rng is on by default).
  # With volt it also has vsock: perf/vsockhost (the host agent, started as the case's watcher) and
  # the guest's volt.run=vsock exchange data both ways, then time round trips and bulk transfers.
  vsock_run=
  if [ "$VMM" = volt ]; then
    rm -f "$TMPD/v.sock"
    vsock_host() { vsockhost "$TMPD/v.sock" 5000 6000 8388608 500 >> "$TMPD/case.host" 2>&1; }
    VOLT_EXTRA_ARGS="--vsock 3,$TMPD/v.sock" CASE_WATCH=vsock_host vsock_run=" volt.run=vsock"
  fi
  QEMU_EXTRA_ARGS="-device virtio-rng-device"
  boot_case "rootfs-cpus1" "$VMM" 1 "$K/bzImage" "$TMPD/disk.ext4" "" "quiet volt.persist=alpha volt.run=hwrng$vsock_run"
  VOLT_EXTRA_ARGS= CASE_WATCH=
  # rootfs-cpus2 also has a balloon: the guest frees 128 MiB, the host watches the VMM's RSS.
  # acpi=off: the project's kernel (built with ACPI) must find its CPUs through the MP table.
  VOLT_EXTRA_ARGS=$BALLOON_VOLT_ARGS QEMU_EXTRA_ARGS=$BALLOON_QEMU_ARGS CASE_WATCH=balloon_rss_watch
  _timeout=$CASE_TIMEOUT CASE_TIMEOUT=180
  boot_case "rootfs-cpus2" "$VMM" 2 "$small" "$TMPD/disk.ext4" "" "quiet volt.persist=beta volt.run=klog volt.run=balloon acpi=off"
  VOLT_EXTRA_ARGS= QEMU_EXTRA_ARGS= CASE_WATCH= CASE_TIMEOUT=$_timeout
  boot_case "rootfs-cpus4-net" "$VMM" 4 "$small" "$TMPD/disk.ext4" tap0 \
    "quiet volt.persist=gamma volt.ip=10.0.2.15/24 volt.run=klog volt.wait=8" 10.0.2.15
}
run_group rootfs rootfs_boots

# c. Snapshot mid-work, restore in a fresh process, disk writes and ping after it (Volt only).
if [ "$VMM" = volt ]; then
  . ./snapshot.sh
  run_group snapshot snapshot_cases
fi
echo "E2E-DONE"

#!/bin/sh
# Payload run script for tests/real_linux.rs: every boot of the end-to-end test in one nested run.
# VMM (volt or qemu) comes from env.sh, written by run-e2e.sh.
. ./lib.sh
VMM=${VMM:-volt}
K=$P/kernels
echo "E2E-VMM $VMM"
[ -c /dev/kvm ] || echo "E2E-NO-KVM"
setup_tap

# a. Debian's stock kernel, no disk: SMP bring-up, then the root-mount panic (panic=1 reboots).
for n in 1 2 4; do
  boot_case "stock-cpus$n" "$VMM" "$n" "$K/debian-vmlinuz" "" "" ""
done

# b. Built kernel + rootfs: cpu count marker, persistence across boots, network + ping.
cp "$P/rootfs.ext4" "$TMPD/disk.ext4"
small=$K/vmlinux
[ "$VMM" = qemu ] && small=$K/bzImage # QEMU needs a PVH note to boot an ELF vmlinux
boot_case "rootfs-cpus1" "$VMM" 1 "$K/bzImage" "$TMPD/disk.ext4" "" "volt.persist=alpha"
# virtio-vsock (volt only), folded into the 2-vCPU boot: perf/vsockhost (host agent) and the
# guest's volt.run=vsock exchange data both ways, then time round trips and bulk transfers.
vsock_append=
if [ "$VMM" = volt ]; then
  rm -f "$TMPD/v.sock"
  vsock_hook() { vsockhost "$TMPD/v.sock" 5000 6000 8388608 500; }
  VMM_EXTRA="--vsock 3,$TMPD/v.sock" CASE_HOOK=vsock_hook vsock_append=" volt.run=vsock"
fi
boot_case "rootfs-cpus2" "$VMM" 2 "$small" "$TMPD/disk.ext4" "" "volt.persist=beta$vsock_append"
VMM_EXTRA= CASE_HOOK=
boot_case "rootfs-cpus4-net" "$VMM" 4 "$small" "$TMPD/disk.ext4" tap0 \
  "volt.persist=gamma volt.ip=10.0.2.15/24 volt.wait=8" 10.0.2.15
echo "E2E-DONE"

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
# rootfs-cpus1 reads /dev/hwrng (Volt's virtio-rng is on by default).
QEMU_EXTRA_ARGS="-device virtio-rng-device"
boot_case "rootfs-cpus1" "$VMM" 1 "$K/bzImage" "$TMPD/disk.ext4" "" "volt.persist=alpha volt.run=hwrng"
# rootfs-cpus2 also has a balloon: the guest frees 128 MiB, the host watches the VMM's RSS.
VOLT_EXTRA_ARGS=$BALLOON_VOLT_ARGS QEMU_EXTRA_ARGS=$BALLOON_QEMU_ARGS CASE_WATCH=balloon_rss_watch
_timeout=$CASE_TIMEOUT CASE_TIMEOUT=120
boot_case "rootfs-cpus2" "$VMM" 2 "$small" "$TMPD/disk.ext4" "" "volt.persist=beta volt.run=balloon"
VOLT_EXTRA_ARGS= QEMU_EXTRA_ARGS= CASE_WATCH= CASE_TIMEOUT=$_timeout
boot_case "rootfs-cpus4-net" "$VMM" 4 "$small" "$TMPD/disk.ext4" tap0 \
  "volt.persist=gamma volt.ip=10.0.2.15/24 volt.wait=8" 10.0.2.15
echo "E2E-DONE"

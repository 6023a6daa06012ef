#!/bin/bash
# Build an initramfs that lets a distribution kernel (whose virtio drivers are modules) boot
# under Volt: Debian's static busybox, the kernel's own modules, and an /init that loads them.
#
# usage: perf/guest/build-initramfs.sh KERNEL_DIR OUT.cpio.gz
#   KERNEL_DIR  a directory with modules/*.ko and modules/load-order, as printed by
#               perf/guest/fetch-debian-kernel.sh (or made by hand: copy your kernel's
#               virtio_mmio, virtio_blk, virtio_net, ext4 modules and their dependencies from
#               /lib/modules/$(uname -r), uncompressed, and list them in load order)
#
# Booting your distribution's kernel with its disk:
#   dir=$(perf/guest/fetch-debian-kernel.sh)      # or cloud-amd64
#   perf/guest/build-initramfs.sh "$dir" /tmp/initramfs.cpio.gz
#   volt --kernel "$dir/vmlinuz" --initrd /tmp/initramfs.cpio.gz --cpus 4 --disk rootfs.ext4
# /init mounts proc, sysfs and devtmpfs, insmods every module (the disks and NICs then appear
# through ACPI's DSDT), prints `VOLT-INIT-READY cpus=N`, mounts root= (default /dev/vda, ext4)
# and switches to its /sbin/init; if that fails it starts a shell on the console.
# With `volt.check` on the kernel command line it runs the end-to-end checks instead
# (tests/nested/e2e-run.sh): it prints the kernel's ACPI, CPU and virtio lines from dmesg (so the
# kernel can boot `quiet`), the virtio-mmio devices bound through ACPI, the first line of /dev/vda
# (dmesg's tail if there is no /dev/vda), whether eth0 exists, then powers off (`poweroff -f`,
# ACPI S5).
set -euo pipefail
dir=${1:?usage: build-initramfs.sh KERNEL_DIR OUT.cpio.gz}
out=${2:?usage: build-initramfs.sh KERNEL_DIR OUT.cpio.gz}
log() { echo "build-initramfs: $*" >&2; }
[ -s "$dir/modules/load-order" ] || { log "$dir/modules/load-order is missing"; exit 1; }
for pair in busybox-static:/bin/busybox cpio:/usr/bin/cpio; do
  if [ ! -x "${pair#*:}" ]; then
    log "installing ${pair%%:*}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pair%%:*}" >&2
  fi
done
busybox=/bin/busybox
file "$busybox" 2>/dev/null | grep -q 'dynamically linked' && { log "$busybox is not static"; exit 1; }

tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree"/{bin,dev,proc,sys,newroot,lib/modules,etc/volt}
# The rootfs's volt.run=klog script: the kernel lines volt.check prints.
cp "$(dirname "$0")/scripts/klog.sh" "$tree/etc/volt/"
ln -s bin "$tree/sbin"
cp "$busybox" "$tree/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$tree/bin/$applet"
done
cp "$dir"/modules/*.ko "$dir/modules/load-order" "$tree/lib/modules/"
cat > "$tree/init" <<'INIT'
#!/bin/busybox sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev 2>/dev/null
# Had the kernel no /dev/console to open before /init, the console is only there now.
[ -t 1 ] || exec 0</dev/console 1>/dev/console 2>&1
for m in $(cat /lib/modules/load-order); do
  insmod "/lib/modules/$m" || echo "VOLT-INSMOD-FAILED $m"
done
echo "VOLT-INIT-READY cpus=$(nproc)"
cmdline=" $(cat /proc/cmdline) "
root=/dev/vda
for arg in $cmdline; do
  case $arg in root=*) root=${arg#root=} ;; esac
done
# The drivers probe asynchronously: give the root device a few seconds to appear.
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b "$root" ] && break; sleep 0.5; done

case $cmdline in
  *" volt.check "*)
    sh /etc/volt/klog.sh # the kernel's lines about its tables, CPUs and devices (booted `quiet`)
    echo "VOLT-VIRTIO-BOUND $(ls /sys/bus/platform/drivers/virtio-mmio 2>/dev/null | grep : | tr '\n' ' ')"
    if [ -b /dev/vda ]; then
      echo "VOLT-DISK-READ $(head -n 1 /dev/vda)"
    else
      dmesg | tail -n 60 # why: the kernel's last words
    fi
    [ -e /sys/class/net/eth0 ] && echo "VOLT-NIC eth0 $(cat /sys/class/net/eth0/address)"
    echo "VOLT-INIT-DONE"
    poweroff -f ;;
esac

mode=rw
case $cmdline in *" ro "*) mode=ro ;; esac
if mount -t ext4 -o "$mode" "$root" /newroot; then
  umount /proc /sys 2>/dev/null
  exec switch_root /newroot /sbin/init
fi
echo "initramfs: cannot mount $root: here is a shell"
exec sh
INIT
chmod 755 "$tree/init"
(cd "$tree" && find . | cpio -o -H newc --quiet | gzip -9) > "$out.tmp"
mv "$out.tmp" "$out"
log "built $out ($(wc -c < "$out") bytes, modules: $(tr '\n' ' ' < "$dir/modules/load-order"))"
echo "$out"

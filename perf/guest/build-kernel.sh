#!/bin/bash
# Build a small microVM guest kernel (vmlinux ELF + bzImage) from Debian's kernel source package.
#
# usage: perf/guest/build-kernel.sh      prints the directory holding vmlinux and bzImage
# The result is cached in ${VOLT_GUEST_CACHE:-$HOME/.cache/volt-guest}/kernel-<version>-<confighash>,
# so the (5-15 min on 2 cores) build happens once per machine. Progress goes to stderr; the output
# directory is the only line on stdout.
set -euo pipefail
cache=${VOLT_GUEST_CACHE:-$HOME/.cache/volt-guest}
src_pkg=${VOLT_KERNEL_SOURCE_PKG:-linux-source-6.1}
log() { echo "build-kernel: $*" >&2; }

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}
apt_install "$src_pkg" build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils

# The config: everything off, then exactly what a virtio-mmio microVM guest needs.
# (KEY=y or KEY=n lines; applied with scripts/config, then resolved by olddefconfig.)
# PCI=y although the guest has no PCI (Volt's command line says pci=off): without it ACPICA has
# no PCI-config region handler and refuses to load the DSDT ("AE_BAD_PARAMETER, During Region
# initialization"), so the kernel would find no device through ACPI.
config_options="
64BIT=y
SMP=y
NR_CPUS=64
X86_MPPARSE=y
HYPERVISOR_GUEST=y
PARAVIRT=y
KVM_GUEST=y
PRINTK=y
EARLY_PRINTK=y
TTY=y
SERIAL_8250=y
SERIAL_8250_CONSOLE=y
BLOCK=y
BLK_DEV=y
VIRTIO_MENU=y
VIRTIO=y
VIRTIO_MMIO=y
VIRTIO_MMIO_CMDLINE_DEVICES=y
VIRTIO_BLK=y
NET=y
INET=y
NETDEVICES=y
NET_CORE=y
VIRTIO_NET=y
PACKET=y
UNIX=y
EXT4_FS=y
DEVTMPFS=y
DEVTMPFS_MOUNT=y
PROC_FS=y
SYSFS=y
BINFMT_ELF=y
BINFMT_SCRIPT=y
BLK_DEV_INITRD=y
RD_GZIP=y
FUTEX=y
EPOLL=y
SHMEM=y
TMPFS=y
MULTIUSER=y
POSIX_TIMERS=y
VIRTIO_CONSOLE=y
HW_RANDOM=y
HW_RANDOM_VIRTIO=y
VIRTIO_BALLOON=y
PAGE_REPORTING=y
VSOCKETS=y
VIRTIO_VSOCKETS=y
PCI=y
ACPI=y
MODULES=n
"
src_tar=$(dpkg -L "$src_pkg" | grep -E '/usr/src/linux-source-.*\.tar\.xz$' | head -1)
[ -n "$src_tar" ] || { log "no source tarball in package $src_pkg"; exit 1; }
src_version=$(dpkg-query -W -f='${Version}' "$src_pkg")
key=$(printf '%s\n%s\n' "$src_version" "$config_options" | sha256sum | cut -c1-12)
out="$cache/kernel-${src_version//[^A-Za-z0-9.]/_}-$key"
if [ -s "$out/vmlinux" ] && [ -s "$out/bzImage" ]; then
  log "cached: $out"
  echo "$out"
  exit 0
fi

start=$(date +%s)
work="$cache/build-$key"
rm -rf "$work" && mkdir -p "$work"
log "unpacking $src_tar ($src_pkg $src_version)"
tar -C "$work" -xf "$src_tar"
cd "$work"/linux-source-*
make -s tinyconfig >&2
args=()
while read -r line; do
  [ -n "$line" ] || continue
  k=${line%%=*} v=${line#*=}
  case $v in
    y) args+=(--enable "$k") ;;
    n) args+=(--disable "$k") ;;
    *) args+=(--set-val "$k" "$v") ;;
  esac
done <<<"$config_options"
scripts/config "${args[@]}"
make -s olddefconfig >&2
# Check that olddefconfig kept what was asked (a dependency we forgot would silently drop it).
while read -r line; do
  [ -n "$line" ] || continue
  k=${line%%=*} v=${line#*=}
  if [ "$v" = y ] && ! grep -qx "CONFIG_$k=y" .config; then log "warning: CONFIG_$k=y did not stick"; fi
done <<<"$config_options"
log "building with $(nproc) jobs"
make -s -j"$(nproc)" vmlinux bzImage >&2
mkdir -p "$out.tmp"
cp vmlinux arch/x86/boot/bzImage .config "$out.tmp/"
rm -rf "$out" && mv "$out.tmp" "$out"
cd / && rm -rf "$work"
log "built in $(( $(date +%s) - start )) s: $out"
echo "$out"

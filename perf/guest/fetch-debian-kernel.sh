#!/bin/bash
# Fetch one of Debian's packaged kernels and keep what Volt's tests and users need from it:
# its vmlinuz, tun.ko (the nested bed's outer guest makes taps with it), and the modules a
# microVM guest needs to find its devices through ACPI: virtio_mmio, virtio_blk, virtio_net, ext4
# (plus crc32c for its checksums) and every module they depend on.
#
# usage: perf/guest/fetch-debian-kernel.sh [FLAVOUR]
#   FLAVOUR  amd64 (default: the package linux-image-amd64 depends on, the same kernel
#            ../shared/nested-kvm/run.sh boots as the outer guest) or cloud-amd64
#            (linux-image-cloud-amd64: no MP-table parser, CPUs only through ACPI's MADT)
# Prints the cache directory: vmlinuz, tun.ko, version, config, modules/*.ko and
# modules/load-order (file names in an order that satisfies every dependency). Modules the
# flavour builds in are left out. perf/guest/build-initramfs.sh turns it into an initramfs.
set -euo pipefail
flavour=${1:-amd64}
cache=${VOLT_GUEST_CACHE:-$HOME/.cache/volt-guest}
modules="virtio_mmio virtio_blk virtio_net crc32c_generic ext4"
log() { echo "fetch-debian-kernel: $*" >&2; }
case $flavour in
  amd64 | cloud-amd64) ;;
  *) log "unknown flavour $flavour (amd64 or cloud-amd64)"; exit 2 ;;
esac
dep() { apt-cache depends "linux-image-$flavour" 2>/dev/null | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -1; }
pkg=$(dep)
[ -n "$pkg" ] || { apt-get update -qq >&2; pkg=$(dep); }
[ -n "$pkg" ] || { log "cannot resolve linux-image-$flavour"; exit 1; }
out="$cache/debian-$pkg"
if [ -s "$out/vmlinuz" ] && [ -s "$out/tun.ko" ] && [ -s "$out/modules/load-order" ]; then
  echo "$out"
  exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
log "downloading $pkg"
(cd "$tmp" && apt-get download "$pkg" >&2 && dpkg -x ./*.deb k)
tree=$(echo "$tmp"/k/lib/modules/*)
mkdir -p "$out.tmp/modules"
cp "$tmp"/k/boot/vmlinuz-* "$out.tmp/vmlinuz"
cp "$tmp"/k/boot/config-* "$out.tmp/config"

# A module file, uncompressed, to stdout (Debian 6.1 ships plain .ko; newer ones compress).
unpack() {
  case $1 in
    *.xz) xz -dc "$1" ;;
    *.zst) zstd -dcq "$1" ;;
    *) cat "$1" ;;
  esac
}
find_module() { find "$tree" \( -name "$1.ko" -o -name "$1.ko.*" \) | head -1; }
unpack "$(find_module tun)" > "$out.tmp/tun.ko"

# Depth-first over the `depends=` field of each module's .modinfo: dependencies first.
declare -A seen=()
add_module() {
  local name=${1//-/_} file deps dep
  [ -n "${seen[$name]:-}" ] && return 0
  seen[$name]=1
  file=$(find_module "$name")
  [ -z "$file" ] && file=$(find_module "${name//_/-}")
  if [ -z "$file" ]; then
    # Built into this kernel: nothing to load.
    grep -q "/$name.ko$\|/${name//_/-}.ko$" "$tree/modules.builtin" && return 0
    log "module $name is neither in $pkg nor built in"
    exit 1
  fi
  unpack "$file" > "$out.tmp/modules/$name.ko"
  deps=$(tr '\0' '\n' < "$out.tmp/modules/$name.ko" | sed -n 's/^depends=//p' | head -1)
  for dep in ${deps//,/ }; do add_module "$dep"; done
  echo "$name.ko" >> "$out.tmp/modules/load-order"
}
for m in $modules; do add_module "$m"; done
echo "$pkg" > "$out.tmp/version"
rm -rf "$out" && mv "$out.tmp" "$out"
log "kept $(wc -l < "$out/modules/load-order") modules: $(tr '\n' ' ' < "$out/modules/load-order")"
echo "$out"

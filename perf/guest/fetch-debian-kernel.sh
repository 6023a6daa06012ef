#!/bin/bash
# Fetch Debian's stock kernel (the package linux-image-amd64 depends on, the same one
# ../shared/nested-kvm/run.sh boots as the outer guest) and keep its vmlinuz and tun.ko.
# usage: perf/guest/fetch-debian-kernel.sh    prints the cache directory (vmlinuz, tun.ko, version)
set -euo pipefail
cache=${VOLT_GUEST_CACHE:-$HOME/.cache/volt-guest}
log() { echo "fetch-debian-kernel: $*" >&2; }
dep() { apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -1; }
pkg=$(dep)
[ -n "$pkg" ] || { apt-get update -qq >&2; pkg=$(dep); }
[ -n "$pkg" ] || { log "cannot resolve linux-image-amd64"; exit 1; }
out="$cache/debian-$pkg"
if [ -s "$out/vmlinuz" ] && [ -s "$out/tun.ko" ]; then echo "$out"; exit 0; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
log "downloading $pkg"
(cd "$tmp" && apt-get download "$pkg" >&2 && dpkg -x ./*.deb k)
mkdir -p "$out.tmp"
cp "$tmp"/k/boot/vmlinuz-* "$out.tmp/vmlinuz"
tun=$(find "$tmp"/k/lib/modules -name 'tun.ko*' | head -1)
case $tun in
  *.xz) xz -dc "$tun" > "$out.tmp/tun.ko" ;;
  *.zst) zstd -dcq "$tun" > "$out.tmp/tun.ko" ;;
  *) cp "$tun" "$out.tmp/tun.ko" ;;
esac
echo "$pkg" > "$out.tmp/version"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out"

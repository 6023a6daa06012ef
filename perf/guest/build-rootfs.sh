#!/bin/bash
# Build a tiny ext4 root file system for the test/benchmark guest, without mounting anything.
#
# usage: perf/guest/build-rootfs.sh     prints the path of the (cached) image on stdout
# Contents: Debian's static busybox (+ applet links) and /init, a busybox sh script that
#   - mounts proc, sysfs, devtmpfs and prints `VOLT-INIT-READY uptime=<s> cpus=<online cpus>`
#   - prints `VOLT-PERSIST <content>` if /persist exists, then writes the value of the kernel
#     cmdline parameter volt.persist=VALUE to /persist, syncs and prints `VOLT-PERSIST-WRITTEN VALUE`
#   - if eth0 exists and volt.ip=ADDR/PREFIX is given: configures it and prints `VOLT-NET-UP <ADDR>`
#   - runs /etc/volt/NAME.sh for each volt.run=NAME on the command line (perf/guest/scripts/*.sh;
#     e.g. a device test or an in-guest benchmark)
#   - sleeps volt.wait=N seconds (so the host can reach it), then `reboot -f` (Volt's poweroff).
# Every perf/guest/tools/*.c is compiled statically into /bin/NAME (guest tools busybox lacks).
# The image is read-write and mutated by guests: callers must use a copy.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${VOLT_GUEST_CACHE:-$HOME/.cache/volt-guest}
size_mb=${VOLT_ROOTFS_MB:-16}
log() { echo "build-rootfs: $*" >&2; }

for pair in busybox-static:/bin/busybox e2fsprogs:/sbin/mkfs.ext4; do
  if [ ! -x "${pair#*:}" ]; then
    log "installing ${pair%%:*}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pair%%:*}" >&2
  fi
done
busybox=/bin/busybox
file "$busybox" 2>/dev/null | grep -q 'dynamically linked' && { log "$busybox is not static"; exit 1; }

init_script=$(cat <<'INIT'
#!/bin/busybox sh
# Volt test guest init. Markers are single lines starting with VOLT- so the host can grep them.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev 2>/dev/null # already there with DEVTMPFS_MOUNT
read -r up _ < /proc/uptime
echo "VOLT-INIT-READY uptime=$up cpus=$(nproc)"

persist= ip= wait=0 run=
for word in $(cat /proc/cmdline); do
  case $word in
    volt.run=*) run="$run ${word#volt.run=}" ;;
    volt.persist=*) persist=${word#volt.persist=} ;;
    volt.ip=*) ip=${word#volt.ip=} ;;
    volt.wait=*) wait=${word#volt.wait=} ;;
  esac
done

if [ -f /persist ]; then echo "VOLT-PERSIST $(cat /persist)"; else echo "VOLT-PERSIST-NONE"; fi
if [ -n "$persist" ]; then
  if echo "$persist" > /persist && sync; then
    echo "VOLT-PERSIST-WRITTEN $persist"
  else
    echo "VOLT-PERSIST-FAILED"
  fi
fi

if [ -d /sys/class/net/eth0 ] && [ -n "$ip" ]; then
  ip link set lo up
  ip addr add "$ip" dev eth0 && ip link set eth0 up && echo "VOLT-NET-UP ${ip%/*}"
fi

for script in $run; do
  if [ -f "/etc/volt/$script.sh" ]; then sh "/etc/volt/$script.sh"; else echo "VOLT-RUN-MISSING $script"; fi
done

[ "$wait" -gt 0 ] 2>/dev/null && sleep "$wait"
echo "VOLT-INIT-DONE"
reboot -f
INIT
)

bb_version=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || sha256sum "$busybox" | cut -c1-16)
extras=$( { cat "$here"/tools/*.c "$here"/tools/*.h "$here"/scripts/*.sh 2>/dev/null || true; } | sha256sum | cut -c1-16)
key=$(printf '%s\n%s\n%s\n%s\n%s\n' "$bb_version" "$size_mb" "$init_script" "$extras" "$(sed -n '/^mkdir -p "$cache"$/,$p' "$0")" | sha256sum | cut -c1-12)
out="$cache/rootfs-$key.ext4"
if [ -s "$out" ]; then
  log "cached: $out"
  echo "$out"
  exit 0
fi

mkdir -p "$cache"
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree"/{bin,dev,proc,sys,tmp,etc}
ln -s bin "$tree/sbin"
mkdir -p "$tree/usr" && ln -s ../bin "$tree/usr/bin" && ln -s ../bin "$tree/usr/sbin"
cp "$busybox" "$tree/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$tree/bin/$applet"
done
printf '%s\n' "$init_script" > "$tree/init"
mkdir -p "$tree/etc/volt"
for script in "$here"/scripts/*.sh; do
  [ -e "$script" ] && cp "$script" "$tree/etc/volt/"
done
for tool in "$here"/tools/*.c; do
  [ -e "$tool" ] || continue
  name=$(basename "$tool" .c)
  gcc -O2 -static -Wall -o "$tree/bin/$name" "$tool" >&2 || { log "cannot build guest tool $name"; exit 1; }
done
chmod 755 "$tree/init"
# A disk root (unlike an initramfs) starts /sbin/init: point it at our script.
ln -sf /init "$tree/bin/init"
rm -f "$out.tmp"
mkfs.ext4 -q -F -L voltroot -E root_owner=0:0 -d "$tree" "$out.tmp" "${size_mb}M" >&2
mv "$out.tmp" "$out"
log "built $out"
echo "$out"

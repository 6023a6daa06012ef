#!/bin/bash
# Assemble a payload directory for ../shared/nested-kvm/run.sh (or for running directly on a host
# with a real KVM): guest kernels, root fs, a VMM or two and the shell helpers in lib.sh.
#
# usage: tests/nested/make-payload.sh OUT_DIR RUN_SCRIPT [--volt BIN] [--qemu] [--bootmeasure]
#   OUT_DIR     created (must not exist or be empty)
#   RUN_SCRIPT  copied to OUT_DIR/run (it sources ./lib.sh)
#   --volt BIN  the volt binary (static, or dynamic: its ldd libraries are copied)
#   --binary NAME BIN  one more binary, as bin/NAME (e.g. a second volt build)
#   --qemu      add qemu-system-x86_64, its libraries and its firmware (microvm's qboot)
#   --bootmeasure  compile perf/bootmeasure.c statically into the payload
# Dynamic binaries get a wrapper in bin/ that starts them through the payload's own ld.so, so the
# outer guest needs no libraries of its own.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:?usage: make-payload.sh OUT_DIR RUN_SCRIPT [--volt BIN] [--qemu] [--bootmeasure]}
run_script=${2:?usage: make-payload.sh OUT_DIR RUN_SCRIPT [--volt BIN] [--qemu] [--bootmeasure]}
shift 2
volt= qemu=0 bootmeasure=0 extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --volt) volt=$2; shift 2 ;;
    --binary) extra+=("$2" "$3"); shift 3 ;;
    --qemu) qemu=1; shift ;;
    --bootmeasure) bootmeasure=1; shift ;;
    *) echo "make-payload: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"/{bin,lib,kernels,share}

# Copy an executable into the payload; if it is dynamic, bring its libraries and wrap it.
add_binary() {
  local src=$1 name=$2
  # A dynamic binary names its program interpreter (static and static-pie ones do not).
  if readelf -l "$src" 2>/dev/null | grep -q 'program interpreter'; then
    cp "$src" "$out/lib/$name.real"
    ldd "$src" | { grep -o '/[^ ]*' || true; } | while read -r lib; do cp -L "$lib" "$out/lib/"; done
    cat > "$out/bin/$name" <<WRAP
#!/bin/sh
p=\$(cd "\$(dirname "\$0")/.." && pwd)
exec "\$p/lib/ld-linux-x86-64.so.2" --library-path "\$p/lib" "\$p/lib/$name.real" "\$@"
WRAP
    chmod +x "$out/bin/$name"
  else
    cp "$src" "$out/bin/$name"
  fi
}

kernel_dir=$("$repo/perf/guest/build-kernel.sh")
rootfs=$("$repo/perf/guest/build-rootfs.sh")
debian_dir=$("$repo/perf/guest/fetch-debian-kernel.sh")
cp "$kernel_dir/vmlinux" "$kernel_dir/bzImage" "$out/kernels/"
cp "$debian_dir/vmlinuz" "$out/kernels/debian-vmlinuz"
cp "$debian_dir/tun.ko" "$out/"
# Debian's kernels unmodified, with initramfses of their own virtio modules (ACPI boots), and a
# small read-only disk whose first line the initramfs reads back.
debian_cloud_dir=$("$repo/perf/guest/fetch-debian-kernel.sh" cloud-amd64)
cp "$debian_cloud_dir/vmlinuz" "$out/kernels/debian-cloud-vmlinuz"
"$repo/perf/guest/build-initramfs.sh" "$debian_dir" "$out/kernels/debian-initramfs.gz" >/dev/null
"$repo/perf/guest/build-initramfs.sh" "$debian_cloud_dir" "$out/kernels/debian-cloud-initramfs.gz" >/dev/null
echo "VOLT-ACPI-DISK-OK" > "$out/acpi-disk.img" && truncate -s 64K "$out/acpi-disk.img"
cp "$rootfs" "$out/rootfs.ext4"
cp "$here/lib.sh" "$out/lib.sh"
cp "$here/snapshot.sh" "$out/snapshot.sh"
# The API client the snapshot cases drive Volt with (the nested guest has no curl).
gcc -O2 -static -o "$out/bin/apicall" "$here/apicall.c"
cp "$run_script" "$out/run"
[ -n "$volt" ] && add_binary "$volt" volt
set -- "${extra[@]}"
while [ $# -gt 0 ]; do add_binary "$2" "$1"; shift 2; done
if [ "$qemu" = 1 ]; then
  command -v qemu-system-x86_64 >/dev/null || {
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 qemu-system-data >&2
  }
  add_binary "$(command -v qemu-system-x86_64)" qemu-system-x86_64
  cp /usr/share/qemu/qboot.rom /usr/share/qemu/bios-microvm.bin "$out/share/" 2>/dev/null || true
  cp -L /usr/share/qemu/linuxboot_dma.bin "$out/share/" 2>/dev/null || true
fi
# The vsock host agent of the e2e vsock case and its benchmark (static, as the payload needs).
gcc -O2 -static -o "$out/bin/vsockhost" "$repo/perf/vsockhost.c"
if [ "$bootmeasure" = 1 ]; then
  gcc -O2 -static -o "$out/bin/bootmeasure" "$repo/perf/bootmeasure.c"
fi
echo "$out"

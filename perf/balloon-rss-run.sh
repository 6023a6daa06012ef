#!/bin/sh
# Payload side of perf/balloon-rss.sh: each VMM in $VMMS boots the guest kernel + rootfs with a
# balloon offering free page reporting (1 vCPU, 256 MiB); the guest runs volt.run=balloon (fills and
# frees 128 MiB of tmpfs) while lib.sh's balloon_rss_watch samples the VMM's RSS. Prints one
# `RESULT vmm=V i=I start=KB filled=KB freed=KB status=S` line per boot.
. ./lib.sh
VMMS=${VMMS:-volt firecracker qemu}
ROUNDS=${ROUNDS:-2}
K=$P/kernels
CASE_TIMEOUT=150

# firecracker_boot DISK: Firecracker with the same kernel, command line, disk and balloon, from a
# config file; output and RSS samples go where boot_case's would.
firecracker_boot() {
  cat > "$TMPD/fc.json" <<JSON
{
  "boot-source": { "kernel_image_path": "$K/vmlinux",
                   "boot_args": "$BASE_CMDLINE reboot=k root=/dev/vda rw volt.run=balloon" },
  "drives": [ { "drive_id": "root", "path_on_host": "$1", "is_root_device": true,
                "is_read_only": false } ],
  "machine-config": { "vcpu_count": 1, "mem_size_mib": $GUEST_MEM_MB },
  "balloon": { "amount_mib": 0, "deflate_on_oom": false, "free_page_reporting": true }
}
JSON
  : > "$TMPD/case.out"; : > "$TMPD/case.err"; : > "$TMPD/case.host"
  timeout $CASE_TIMEOUT firecracker --no-api --config-file "$TMPD/fc.json" > "$TMPD/case.out" 2> "$TMPD/case.err" &
  _pid=$!
  balloon_rss_watch $_pid
  wait $_pid
  echo "$?"
}

i=1
while [ $i -le "$ROUNDS" ]; do
  for v in $VMMS; do
    cp "$P/rootfs.ext4" "$TMPD/bench.ext4"
    case $v in
      firecracker) status=$(firecracker_boot "$TMPD/bench.ext4") ;;
      *)
        VOLT_EXTRA_ARGS=$BALLOON_VOLT_ARGS QEMU_EXTRA_ARGS=$BALLOON_QEMU_ARGS
        vmm_command "$v" 1 "$K/bzImage" "$TMPD/bench.ext4" "" "volt.run=balloon"
        : > "$TMPD/case.out"; : > "$TMPD/case.err"; : > "$TMPD/case.host"
        PREFIX="timeout $CASE_TIMEOUT" run_vmm > "$TMPD/case.out" 2> "$TMPD/case.err" &
        pid=$!
        balloon_rss_watch $pid
        wait $pid
        status=$? ;;
    esac
    value() { awk -v k="$1" '$1 == k { print $2 }' "$TMPD/case.host"; }
    echo "RESULT vmm=$v i=$i start=$(value HOST-RSS-START-KB) filled=$(value HOST-RSS-FILLED-KB) freed=$(value HOST-RSS-FREED-KB) status=$status"
    grep -h -E 'VOLT-BALLOON|virtio-balloon:' "$TMPD/case.out" "$TMPD/case.err" | sed "s/^/  $v: /"
    grep -q VOLT-BALLOON-DONE "$TMPD/case.out" ||
      { echo "BOOT-FAILED vmm=$v i=$i"; tail -15 "$TMPD/case.out" "$TMPD/case.err" | sed "s/^/  $v| /"; }
  done
  i=$((i + 1))
done
echo "BENCH-DONE"

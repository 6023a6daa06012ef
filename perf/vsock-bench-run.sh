#!/bin/sh
# Payload run script of perf/vsock-bench.sh: boots each VMM in $VMMS $REPS times with the same
# kernel, rootfs and volt.run=vsock, with perf/vsockhost as the host agent beside it.
. ./lib.sh
K=$P/kernels
CMD="$BASE_CMDLINE reboot=k volt.run=vsock"
for rep in $(seq 1 "$REPS"); do
  for vmm in $VMMS; do
    cp "$P/rootfs.ext4" "$TMPD/vb.ext4"
    rm -f "$TMPD/vb.sock" "$TMPD/vb.sock_6000"
    echo "VSOCK-BENCH-BEGIN $vmm $rep"
    vsockhost "$TMPD/vb.sock" 5000 6000 "$BYTES" "$ROUNDS" > "$TMPD/vb.host" 2>&1 &
    hp=$!
    case $vmm in
      volt)
        timeout 150 volt --kernel "$K/vmlinux" --cpus 1 --mem 256M --disk "$TMPD/vb.ext4" \
          --vsock "3,$TMPD/vb.sock" --cmdline "$CMD" > "$TMPD/vb.out" 2>&1 ;;
      firecracker)
        cat > "$TMPD/fc.json" <<JSON
{"boot-source": {"kernel_image_path": "$K/vmlinux", "boot_args": "$CMD"},
 "drives": [{"drive_id": "root", "path_on_host": "$TMPD/vb.ext4", "is_root_device": true, "is_read_only": false}],
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
 "vsock": {"guest_cid": 3, "uds_path": "$TMPD/vb.sock"}}
JSON
        timeout 150 firecracker --no-api --config-file "$TMPD/fc.json" < /dev/null > "$TMPD/vb.out" 2>&1 ;;
    esac
    echo "VMM-STATUS $vmm $?"
    wait $hp
    grep -E 'VOLT-VSOCK|Bad system call|panic|rror' "$TMPD/vb.out" | head -20
    cat "$TMPD/vb.host"
    echo "VSOCK-BENCH-END $vmm $rep"
  done
done
echo "VSOCK-BENCH-DONE"

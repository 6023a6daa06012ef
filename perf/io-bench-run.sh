#!/bin/sh
# Payload side of perf/io-bench.sh (inside the nested real-KVM guest, or directly on a hardware
# KVM host). Settings from env.sh: VMMS (volt, volt-sync, firecracker, firecracker-async), REPS,
# CPUS, SIZES (QD1_OPS,QD32_SECONDS,UDP_COUNT). Every VMM boots the same vmlinux and root image
# with a second disk (/dev/vdb, 64 MiB of zeros, written out so no read hits a hole) and tap0;
# the guest runs perf/guest/scripts/iobench.sh. One `RESULT vmm=V i=I IOBENCH-...` line per
# figure line the guest prints; VMMs alternate run by run.
. ./lib.sh
REPS=${REPS:-3}
CPUS=${CPUS:-1}
SIZES=${SIZES:-1000,5,500}
VMMS=${VMMS:-volt firecracker}
setup_tap
udpecho 7777 > "$TMPD/udpecho.log" 2>&1 &
echo_pid=$!
cp "$P/rootfs.ext4" "$TMPD/io.ext4"
dd if=/dev/zero of="$TMPD/data.img" bs=1M count=64 2>/dev/null
EXTRA_DISK=$TMPD/data.img
FC_EXTRA_ARGS=
i=1
while [ "$i" -le "$REPS" ]; do
  for v in $VMMS; do
    VOLT_DISK_OPTS= FC_IO_ENGINE=
    case $v in
      volt) vmm=volt ;;
      volt-sync) vmm=volt VOLT_DISK_OPTS=,engine=sync ;;
      firecracker) vmm=firecracker ;;
      firecracker-async) vmm=firecracker FC_IO_ENGINE=Async ;;
      *) echo "io-bench: unknown VMM variant $v"; continue ;;
    esac
    vmm_command "$vmm" "$CPUS" "$P/kernels/vmlinux" "$TMPD/io.ext4" tap0 \
      "quiet volt.ip=10.0.2.15/24 volt.run=iobench volt.echo=10.0.2.1:7777 volt.iobench=$SIZES"
    PREFIX="timeout 300" run_vmm > "$TMPD/io.out" 2> "$TMPD/io.err"
    status=$?
    if [ "$vmm" = firecracker ] && [ $status = 159 ] && [ -z "$FC_EXTRA_ARGS" ]; then
      echo "FC-SECCOMP-KILLED: Firecracker was killed by its own seccomp filter here; the rest runs with --no-seccomp"
      FC_EXTRA_ARGS=--no-seccomp
      vmm_command "$vmm" "$CPUS" "$P/kernels/vmlinux" "$TMPD/io.ext4" tap0 \
        "quiet volt.ip=10.0.2.15/24 volt.run=iobench volt.echo=10.0.2.1:7777 volt.iobench=$SIZES"
      PREFIX="timeout 300" run_vmm > "$TMPD/io.out" 2> "$TMPD/io.err"
      status=$?
    fi
    grep -a '^IOBENCH-' "$TMPD/io.out" | sed "s/^/RESULT vmm=$v i=$i status=$status /"
    if ! grep -aq '^IOBENCH-DISK ' "$TMPD/io.out" || ! grep -aq '^IOBENCH-UDP ' "$TMPD/io.out"; then
      echo "RUN-FAILED vmm=$v i=$i status=$status"
      tail -15 "$TMPD/io.out"; tail -8 "$TMPD/io.err"
      [ "$vmm" = firecracker ] && tail -5 "$TMPD/fc.log"
    fi
    [ "$vmm" = volt ] && grep -a 'engine' "$TMPD/io.err" | head -2 | sed "s/^/VOLT-LOG vmm=$v /"
  done
  i=$((i + 1))
done
kill "$echo_pid" 2>/dev/null
echo "BENCH-DONE"

# volt.run=iobench: the in-guest part of perf/io-bench.sh (busybox sh, run by /init).
# Disk: 4 KiB random O_DIRECT reads on /dev/vdb (QD1 latency, QD32 throughput).
# Net: UDP ping-pong with the host echo at volt.echo=HOST:PORT (needs eth0 up: volt.ip=).
# Sizes: volt.iobench=QD1_OPS,QD32_SECONDS,UDP_COUNT (default 1000,5,500).
echo_at= sizes=1000,5,500
for word in $(cat /proc/cmdline); do
  case $word in
    volt.echo=*) echo_at=${word#volt.echo=} ;;
    volt.iobench=*) sizes=${word#volt.iobench=} ;;
  esac
done
IFS=, read -r qd1 qd32 udp_count <<SIZES
$sizes
SIZES
if [ -b /dev/vdb ]; then
  iobench disk /dev/vdb "$qd1" "$qd32" || echo "IOBENCH-DISK-FAILED"
else
  echo "IOBENCH-DISK-FAILED no /dev/vdb"
fi
if [ -n "$echo_at" ]; then
  iobench udp "${echo_at%:*}" "${echo_at#*:}" "$udp_count" || echo "IOBENCH-UDP-FAILED"
fi

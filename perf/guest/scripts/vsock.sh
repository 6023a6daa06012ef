#!/bin/sh
# volt.run=vsock: the guest side of the virtio-vsock test (tests/nested/e2e-run.sh, perf/).
# 1. Connects to host port 6000 (the host listens at PATH_6000), sends a message and prints the
#    reply (VOLT-VSOCK-REPLY ...).
# 2. Serves port 5000 for the host agent (echo / sink / source, see perf/guest/tools/vsock.c) until
#    it sends QUIT, or 120 s pass.
# A virtio device with id 19 (0x0013) is vsock.
if ! grep -qx 0x0013 /sys/bus/virtio/devices/*/device 2>/dev/null; then
  echo "VOLT-VSOCK-NO-DEVICE"
  exit 0
fi
echo "VOLT-VSOCK-DEVICE"
vsock connect 2 6000 "hello-from-guest"
timeout 120 vsock serve 5000
echo "VOLT-VSOCK-DONE $?"

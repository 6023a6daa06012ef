# volt.run=balloon: touch 128 MiB in a tmpfs, free it again, and give free page reporting time to
# hand the memory back to the host. The host samples the VMM's resident memory at the markers:
#   VOLT-BALLOON-START, -FILLED (128 MiB in use; held 4 s), -FREED, -DONE (after 12 s), each
#   with the guest's MemFree in KiB; or VOLT-BALLOON-FAILED <step>.
memfree() { awk '/^MemFree:/ { print $2 }' /proc/meminfo; }
dir=/tmp/volt-balloon
mkdir -p "$dir" && mount -t tmpfs -o size=160m tmpfs "$dir" || { echo "VOLT-BALLOON-FAILED mount"; exit 0; }
balloon=$(cat /sys/bus/virtio/drivers/virtio_balloon/virtio*/features 2>/dev/null)
echo "VOLT-BALLOON-START memfree=$(memfree) features=${balloon:-none}"
if ! dd if=/dev/zero of="$dir/fill" bs=1M count=128 2>/dev/null; then
  echo "VOLT-BALLOON-FAILED fill"; umount "$dir"; exit 0
fi
echo "VOLT-BALLOON-FILLED memfree=$(memfree)"
sleep 4
rm -f "$dir/fill"
umount "$dir"
echo "VOLT-BALLOON-FREED memfree=$(memfree)"
sleep 12
echo "VOLT-BALLOON-DONE memfree=$(memfree)"
sleep 2

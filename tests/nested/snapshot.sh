# Snapshot/restore of real Linux (sourced by e2e-run.sh after lib.sh; Volt only).
# 1. snapshot-take: boots with a disk and tap0; the guest's snapwork.sh writes steps 1..10 to
#    the disk a second apart. At step 3 the VM is paused and snapshotted, and Volt is killed.
# 2. snapshot-restore: a fresh Volt loads the snapshot and resumes. The guest finishes its steps
#    (disk writes), the host pings it, and it reboots (status 0).
# 3. snapshot-readback: a normal boot of the same disk reads back the last step written.
# Each prints a boot_case block (lib.sh); the host-side lines include `HOST-API ...` answers.
snapshot_cases() {
  _disk=$TMPD/snap.ext4 _dir=$TMPD/snaps _k=$P/kernels/vmlinux
  cp "$P/rootfs.ext4" "$_disk"
  rm -rf "$_dir"; mkdir -p "$_dir"; rm -f "$TMPD/snap-a.sock" "$TMPD/snap-b.sock"
  _cmd="$BASE_CMDLINE reboot=k quiet volt.ip=10.0.2.15/24 volt.run=snapwork"

  echo "VOLT-CASE-BEGIN snapshot-take"
  : > "$TMPD/case.out"; : > "$TMPD/case.err"; : > "$TMPD/case.host"
  _t0=$(date +%s)
  timeout "$CASE_TIMEOUT" volt --api-sock "$TMPD/snap-a.sock" --snapshot-dir "$_dir" \
    --kernel "$_k" --mem "${GUEST_MEM_MB}M" --disk "$_disk" --net tap0 --log-level info \
    --cmdline "$_cmd" > "$TMPD/case.out" 2> "$TMPD/case.err" &
  _pid=$!
  while kill -0 $_pid 2>/dev/null && ! grep -q "VOLT-SNAPWORK 3" "$TMPD/case.out"; do sleep 0.1; done
  apicall "$TMPD/snap-a.sock" PATCH /vm '{"state":"Paused"}' >> "$TMPD/case.host"
  apicall "$TMPD/snap-a.sock" PUT /snapshot/create \
    '{"snapshot_path":"vm.state","mem_file_path":"vm.mem"}' >> "$TMPD/case.host"
  kill $_pid 2>/dev/null; wait $_pid
  _status=$?
  ls -ls "$_dir" | sed 's/^/HOST-SNAPSHOT-FILE /' >> "$TMPD/case.host"
  cat "$TMPD/case.out"; echo; echo "VOLT-CASE-STDERR"; cat "$TMPD/case.err" "$TMPD/case.host"
  echo "VOLT-CASE-END snapshot-take status=$_status seconds=$(( $(date +%s) - _t0 ))"

  echo "VOLT-CASE-BEGIN snapshot-restore"
  : > "$TMPD/case.out"; : > "$TMPD/case.err"; : > "$TMPD/case.host"
  _t0=$(date +%s)
  timeout "$CASE_TIMEOUT" volt --api-sock "$TMPD/snap-b.sock" --log-level info \
    > "$TMPD/case.out" 2> "$TMPD/case.err" &
  _pid=$!
  apicall "$TMPD/snap-b.sock" PUT /snapshot/load "{\"snapshot_path\":\"$_dir/vm.state\",\"mem_backend\":{\"backend_path\":\"$_dir/vm.mem\",\"backend_type\":\"File\"},\"resume_vm\":true}" >> "$TMPD/case.host"
  _ping_result=HOST-PING-NOT-TRIED
  while kill -0 $_pid 2>/dev/null; do
    if grep -q "VOLT-SNAPWORK" "$TMPD/case.out"; then
      _ping_result=HOST-PING-FAILED
      for _i in 1 2 3 4 5; do
        if ping -c 1 -W 2 10.0.2.15 > "$TMPD/ping.out" 2>&1; then _ping_result=HOST-PING-OK; break; fi
      done
      grep -E 'bytes from|packets' "$TMPD/ping.out" >> "$TMPD/case.host"
      break
    fi
    sleep 0.1
  done
  echo "$_ping_result 10.0.2.15" >> "$TMPD/case.host"
  wait $_pid
  _status=$?
  cat "$TMPD/case.out"; echo; echo "VOLT-CASE-STDERR"; cat "$TMPD/case.err" "$TMPD/case.host"
  echo "VOLT-CASE-END snapshot-restore status=$_status seconds=$(( $(date +%s) - _t0 ))"

  boot_case "snapshot-readback" volt 1 "$_k" "$_disk" "" "quiet volt.run=snapread"
}

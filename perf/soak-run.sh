#!/bin/sh
# Payload side of perf/soak.sh: boots in a row, each watched for a hang (runs inside the nested
# real-KVM guest, or directly on a hardware-KVM host). Settings from env.sh:
#   BUILDS   VMM binaries in bin/ to soak, e.g. "volt-dynamic volt-static firecracker" (Firecracker
#            boots the same kernels through lib.sh's vmm_command, with acpi=off)
#   KERNELS  "stock" (Debian's kernel, no disk: ends at its root-mount panic, panic=1 reboots)
#            and/or "own" (the project's kernel + rootfs: ends with reboot -f after its init)
#   CPUS     vCPU counts, e.g. "1 2 4";  CONSOLES "file pipe" (stdout+stderr to a file, or
#            both into one pipe read by cat);  ROUNDS  how often the whole matrix runs
#   SHOW_ALL non-empty: print every boot's whole output
#   STUCK_S  a boot still running after this many seconds is a hang (default 60)
#   SOAK_APPEND  more kernel command line for every boot (e.g. nokaslr)
# Per boot: `SOAK-BOOT build=B kernel=K cpus=N console=C round=R result=pass|fail|hung seconds=S`.
# A hang first gets SIGUSR1 (Volt's own thread report), then every thread's kernel-side state
# (state, syscall, wchan, stack) and the KVM debugfs counters, then SIGKILL. (Helpers use _-prefixed
# variables: sh has no locals, and the boot loops use b, k, c, con, r.)
. ./lib.sh
K=$P/kernels
STUCK_S=${STUCK_S:-60}
mount -t debugfs none /sys/kernel/debug 2>/dev/null || true
cp "$P/rootfs.ext4" "$TMPD/soak.ext4"
# Where the bed's own KVM enters its guests (kvm_amd's VMRUN): perf/symbolize.py names a guest
# RIP that is really this host address (a hang seen in the bed: the guest resumed there).
grep -E ' (__svm_vcpu_run|__svm_sev_es_vcpu_run|svm_vcpu_run|vmx_vmexit|__vmx_vcpu_run)([[:space:]]|$)' /proc/kallsyms \
  | sed 's/^/SOAK-HOST-SYMBOL /'

dump_threads() {
  for _t in /proc/$1/task/*; do
    echo "SOAK-TASK $(basename "$_t") $(cat "$_t/comm") state=$(cut -d' ' -f3 "$_t/stat") syscall=$(cat "$_t/syscall" 2>/dev/null) wchan=$(cat "$_t/wchan" 2>/dev/null)"
    sed 's/^/SOAK-STACK   /' "$_t/stack" 2>/dev/null | head -8
  done
  # Every KVM counter of the VM (exits, halts, page faults, emulated instructions, ...): printed
  # twice, 3 s apart, by the caller. (No tracepoints: the outer kernel went down twice while they
  # were on, and twice later without them, so they were not the cause; the counters and Volt's
  # RIP samples tell enough and cost the bed nothing.)
  for _d in /sys/kernel/debug/kvm/$1-*; do
    [ -d "$_d" ] || continue
    printf 'SOAK-KVM'
    for _f in "$_d"/*; do
      [ -f "$_f" ] && _v=$(cat "$_f" 2>/dev/null) && [ "$_v" != 0 ] && printf ' %s=%s' "$(basename "$_f")" "$_v"
    done
    echo
  done
}

# soak_exec: runs the boot's command ($_cmd); started with & it execs in the background subshell,
# so $! is the VMM's own pid.
soak_exec() {
  case $_cmd in
    firecracker*) exec $_cmd ;;
    *) exec $_cmd --cmdline "$BASE_CMDLINE reboot=k ${SOAK_APPEND:-}" ;;
  esac
}

# one_boot BUILD KERNEL CPUS CONSOLE ROUND
one_boot() {
  _b=$1 _k=$2 _c=$3 _con=$4 _r=$5
  case $_k in
    stock) _args="--kernel $K/debian-vmlinuz" _done='Unable to mount root' ;;
    own) _args="--kernel $K/bzImage --disk $TMPD/soak.ext4" _done=VOLT-INIT-DONE ;;
  esac
  if [ "$_b" = firecracker ]; then
    case $_k in
      stock) vmm_command firecracker "$_c" "$K/debian-vmlinuz" "" "" "${SOAK_APPEND:-}" ;;
      own) vmm_command firecracker "$_c" "$K/vmlinux" "$TMPD/soak.ext4" "" "${SOAK_APPEND:-}" ;;
    esac
    _cmd="$VMM_ARGS"
  else
    _cmd="$_b $_args --cpus $_c --mem 256M --log-level info"
  fi
  rm -f "$TMPD/soak.out" "$TMPD/soak.fifo"
  _t0=$(date +%s)
  if [ "$_con" = pipe ]; then
    mkfifo "$TMPD/soak.fifo"
    cat "$TMPD/soak.fifo" > "$TMPD/soak.out" &
    _cat=$!
    soak_exec > "$TMPD/soak.fifo" 2>&1 < /dev/null &
  else
    _cat=
    soak_exec > "$TMPD/soak.out" 2>&1 < /dev/null &
  fi
  _pid=$!
  _result=
  while kill -0 $_pid 2>/dev/null; do
    if [ $(( $(date +%s) - _t0 )) -ge "$STUCK_S" ]; then
      _result=hung
      echo "SOAK-HANG build=$_b kernel=$_k cpus=$_c console=$_con round=$_r: last output:"
      tail -c 600 "$TMPD/soak.out" | sed 's/^/SOAK-OUT   /'; echo
      # Volt prints its thread report on SIGUSR1; Firecracker would die of it.
      [ "$_b" = firecracker ] || kill -USR1 $_pid
      sleep 2
      dump_threads $_pid; sleep 3
      echo "SOAK-AGAIN (3 s later)"; dump_threads $_pid
      [ "$_b" = firecracker ] || { kill -USR1 $_pid; sleep 1; }
      kill -9 $_pid
      break
    fi
    sleep 1
  done
  wait $_pid; _status=$?
  [ -n "$_cat" ] && wait $_cat
  if [ "$_result" = hung ]; then
    grep -A6 'thread report' "$TMPD/soak.out" | sed 's/^/SOAK-REPORT /'
  elif [ "$_status" = 0 ] && grep -q "$_done" "$TMPD/soak.out"; then
    _result=pass
  else
    _result=fail
    echo "SOAK-FAIL status=$_status"; tail -c 800 "$TMPD/soak.out" | sed 's/^/SOAK-OUT   /'; echo
  fi
  [ "$_b" = firecracker ] && [ "$_result" != pass ] && sed 's/^/FC-LOG /' "$TMPD/fc.log" | tail -5
  if [ -n "${SHOW_ALL:-}" ]; then sed 's/^/SOAK-OUT   /' "$TMPD/soak.out"; fi
  echo "SOAK-BOOT build=$_b kernel=$_k cpus=$_c console=$_con round=$_r result=$_result seconds=$(( $(date +%s) - _t0 )) warnings=$(grep -c 'XSAVE consistency' "$TMPD/soak.out")"
}

# SOAK_SKIP=N (set by perf/soak.sh when the outer guest ended a run early): start after boot N.
r=1 i=0
while [ $r -le "${ROUNDS:-1}" ]; do
  for k in ${KERNELS:-stock own}; do
    for c in ${CPUS:-1 2 4}; do
      for con in ${CONSOLES:-file pipe}; do
        for b in ${BUILDS:-volt}; do
          i=$((i + 1))
          [ "$i" -le "${SOAK_SKIP:-0}" ] && continue
          echo "SOAK-START $i build=$b kernel=$k cpus=$c console=$con round=$r"
          one_boot "$b" "$k" "$c" "$con" "$r"
        done
      done
    done
  done
  r=$((r + 1))
done
echo "SOAK-DONE"

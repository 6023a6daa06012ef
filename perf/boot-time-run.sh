#!/bin/sh
# Payload side of perf/boot-time.sh (runs inside the nested real-KVM guest, or directly on a
# hardware-KVM host). Settings come from env.sh: VMMS (e.g. "volt qemu volt-elf"), BOOTS, MEM_BOOTS,
# CPUS. Prints one `RESULT kind=time|mem vmm=V i=I BOOTMEASURE ...` line per boot.
. ./lib.sh
BOOTS=${BOOTS:-20}
MEM_BOOTS=${MEM_BOOTS:-3}
CPUS=${CPUS:-1}
VMMS=${VMMS:-volt qemu}
K=$P/kernels
cp "$P/rootfs.ext4" "$TMPD/bench.ext4"

# one_boot KIND VARIANT I: volt and qemu boot bzImage (same bytes); volt-elf boots vmlinux.
one_boot() {
  _kind=$1 _variant=$2 _i=$3
  case $_variant in
    volt) _vmm=volt _kernel=$K/bzImage ;;
    volt-elf) _vmm=volt _kernel=$K/vmlinux ;;
    qemu) _vmm=qemu _kernel=$K/bzImage ;;
  esac
  _append=
  _sample=
  # Memory runs keep the guest alive 1 s after its marker and sample smaps every 20 ms.
  [ "$_kind" = mem ] && _append="volt.wait=1" && _sample="-s 20"
  vmm_command "$_vmm" "$CPUS" "$_kernel" "$TMPD/bench.ext4" "" "$_append"
  _line=$(PREFIX="bootmeasure -m VOLT-INIT-READY -g $GUEST_MEM_MB -t 60 $_sample -o $TMPD/b.out -e $TMPD/b.err --" run_vmm)
  echo "RESULT kind=$_kind vmm=$_variant i=$_i $_line"
  if ! grep -q VOLT-INIT-DONE "$TMPD/b.out"; then
    echo "BOOT-FAILED vmm=$_variant i=$_i"; tail -5 "$TMPD/b.out"; tail -5 "$TMPD/b.err"
  fi
}

i=1
while [ $i -le "$BOOTS" ]; do
  for v in $VMMS; do one_boot time "$v" $i; done
  i=$((i + 1))
done
i=1
while [ $i -le "$MEM_BOOTS" ]; do
  for v in $VMMS; do one_boot mem "$v" $i; done
  i=$((i + 1))
done
echo "BENCH-DONE"

#!/bin/bash
# Soak: many boots in a row of Debian's stock kernel and of the project's own guest, under the
# dynamically linked volt (what `cargo build --release` makes, the README's binary) and the static
# one, 1/2/4 vCPUs, console to a file and to a pipe; reports boots passed / failed / hung, with a
# thread report for each hang. A benchmark, not a test: it prints, it asserts nothing.
#
# usage: perf/soak.sh [--rounds N] [--builds "dynamic static"] [--kernels "stock own"]
#                     [--cpus "1 2 4"] [--consoles "file pipe"] [--stuck SECS] [--raw FILE]
#                     [--mode auto|direct|nested] [--append "KERNEL ARGS"]
# Builds: dynamic, static (Volt) and firecracker (../shared/anchors/firecracker, the anchor: the
# same boots under another VMM tell a fault of the bed or the guest from one of Volt's).
# One round is every combination once (2 kernels x 3 cpu counts x 2 consoles = 12 boots per build).
# Inside the nested bed an outer-guest wedge (NESTED-WEDGED) restarts the payload; wedges are
# counted apart from Volt's own hangs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/tests/nested/common.sh"
rounds=1 builds="dynamic static" kernels="stock own" cpus="1 2 4" consoles="file pipe" stuck=60
mode=auto raw= append=
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --builds) builds=$2; shift 2 ;;
    --kernels) kernels=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --consoles) consoles=$2; shift 2 ;;
    --stuck) stuck=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --raw) raw=$2; shift 2 ;;
    --append) append=$2; shift 2 ;;
    *) echo "soak: unknown option $1" >&2; exit 2 ;;
  esac
done
mode=$(resolve_mode "$mode") || { echo "SKIP: $mode_skip_reason"; exit 77; }
target=x86_64-unknown-linux-gnu
args=() names=
for b in $builds; do
  case $b in
    dynamic) (cd "$repo" && cargo build --release --bin volt >&2); bin=$repo/target/release/volt ;;
    static) (cd "$repo" && RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target $target --bin volt >&2)
            bin=$repo/target/$target/release/volt ;;
    firecracker) bin=$(find_firecracker "${FIRECRACKER:-}") || { echo "soak: $bin" >&2; exit 2; }
                 args+=(--binary firecracker "$bin"); names="$names firecracker"; continue ;;
    *) echo "soak: unknown build $b (dynamic, static or firecracker)" >&2; exit 2 ;;
  esac
  args+=(--binary "volt-$b" "$bin"); names="$names volt-$b"
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$repo/tests/nested/make-payload.sh" "$work/p" "$repo/perf/soak-run.sh" "${args[@]}" >/dev/null
[ -n "${SHOW_ALL:-}" ] && echo "SHOW_ALL=1" > "$work/p/env.sh"
printf 'BUILDS="%s"\nKERNELS="%s"\nCPUS="%s"\nCONSOLES="%s"\nROUNDS=%s\nSTUCK_S=%s\nSOAK_APPEND="%s"\n' \
  "$names" "$kernels" "$cpus" "$consoles" "$rounds" "$stuck" "$append" >> "$work/p/env.sh"
per_boot=$(( stuck + 15 ))
n=$(( rounds * $(wc -w <<<"$builds") * $(wc -w <<<"$kernels") * $(wc -w <<<"$cpus") * $(wc -w <<<"$consoles") ))
echo "soak: $n boots ($builds; $kernels; cpus $cpus; console $consoles; $rounds rounds), mode $mode" >&2
start=$(date +%s)
# The outer guest of the nested bed can end in the middle of a run (QEMU exits: no NESTED-EXIT, no
# wedge message; seen with Volt and Firecracker alike). Then the boot in flight is recorded as
# result=bed-ended and the payload starts again after it, at most 10 times.
: > "$work/out.txt"
for attempt in $(seq 1 10); do
  done_n=$(grep -c '^SOAK-START ' "$work/out.txt" || true)
  left=$(( n - done_n ))
  [ "$attempt" -gt 1 ] && echo "soak: the outer guest ended early; starting again after boot $done_n" >&2
  sed -i '/^SOAK_SKIP=/d' "$work/p/env.sh"; echo "SOAK_SKIP=$done_n" >> "$work/p/env.sh"
  NESTED_CONSOLE=1 NESTED_TIMEOUT=${NESTED_TIMEOUT:-$(( left * per_boot + 300 ))} \
    run_payload "$mode" "$work/p" > "$work/attempt.txt" 2> "$work/console.txt" || true
  cat "$work/attempt.txt" >> "$work/out.txt"
  grep -q '^SOAK-DONE' "$work/attempt.txt" && break
  grep -qE '^NESTED-(EXIT|TIMEOUT)' "$work/attempt.txt" && break
  last=$(grep '^SOAK-START ' "$work/attempt.txt" | tail -1)
  [ -z "$last" ] && break
  id=$(cut -d' ' -f2 <<<"$last")
  if ! sed -n "/^SOAK-START $id /,\$p" "$work/attempt.txt" | grep -q '^SOAK-BOOT '; then
    echo "SOAK-BOOT ${last#SOAK-START $id } result=bed-ended" >> "$work/out.txt"
    echo "SOAK-BED-ENDED during: ${last#SOAK-START } (outer console's last lines below)" >> "$work/out.txt"
    tail -15 "$work/console.txt" | sed 's/^/SOAK-BED-CONSOLE /' >> "$work/out.txt"
  fi
done
echo "soak: payload finished in $(( $(date +%s) - start )) s" >&2
[ -n "$raw" ] && cp "$work/out.txt" "$raw"
# Guest RIPs in thread reports, named from the kernels' symbols (a KASLR offset is taken from the
# IDT base the report gives).
# Debian ships no System.map with its kernel; kallsyms-finder (pip install vmlinux-to-elf) reads
# the symbol table out of the image itself.
maps=("own=$("$repo/perf/guest/build-kernel.sh" 2>/dev/null)/vmlinux")
if command -v kallsyms-finder >/dev/null; then
  kallsyms-finder "$("$repo/perf/guest/fetch-debian-kernel.sh" 2>/dev/null)/vmlinuz" > "$work/stock.map" 2>/dev/null \
    && maps+=("stock=$work/stock.map")
else
  echo "soak: no kallsyms-finder (pip install vmlinux-to-elf): stock-kernel RIPs stay unnamed" >&2
fi
# A hang whose report has a vCPU at the bed host's own VMRUN return address (the nested SVM
# resumed the guest there; see perf/README) becomes result=hung-bed-rip.
python3 "$repo/perf/symbolize.py" "${maps[@]}" < "$work/out.txt" > "$work/named.txt" || cp "$work/out.txt" "$work/named.txt"
grep -E '^(SOAK-HOST-SYMBOL|SOAK-HANG|SOAK-REPORT|SOAK-TASK|SOAK-STACK|SOAK-KVM|SOAK-AGAIN|SOAK-FAIL|SOAK-OUT|SOAK-BED|FC-|NESTED-)' "$work/named.txt" || true
echo
echo "| build | boots | passed | failed | hung | hung, guest at the bed host's RIP | bed ended during it |"
echo "|---|---|---|---|---|---|---|"
for b in $names; do
  grep "^SOAK-BOOT build=$b " "$work/named.txt" | awk -v b="$b" '
    { n++; for (i = 1; i <= NF; i++) if ($i ~ /^result=/) r[substr($i, 8)]++ }
    END { printf "| %s | %d | %d | %d | %d | %d | %d |\n", b, n, r["pass"], r["fail"], r["hung"], r["hung-bed-rip"], r["bed-ended"] }'
done
echo "bed wedges (outer guest, not Volt): $(grep -c '^NESTED-WEDGED' "$work/out.txt" || true)"
grep -q SOAK-DONE "$work/out.txt" || { echo "soak: the payload did not finish (see above)"; exit 1; }

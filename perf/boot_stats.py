#!/usr/bin/env python3
"""Summarise perf/boot-time-run.sh output (RESULT lines from bootmeasure) read on stdin.

Prints min / median / p90 per VMM variant for each figure, the ratio of each Volt variant to QEMU
(medians), and the VMMs' own resident memory.
"""
import argparse
import statistics
import sys
from collections import defaultdict

FIGURES = [
    ("kernel_entry_us", "VMM start -> kernel entry"),
    ("first_byte_us", "VMM start -> first serial byte"),
    ("marker_us", "VMM start -> init marker (VOLT-INIT-READY)"),
    ("exit_us", "VMM start -> VMM exited (wall)"),
]


def parse(lines):
    """Returns {kind: {vmm: [dict of int fields]}} from `RESULT kind=.. vmm=.. i=.. BOOTMEASURE ..`."""
    runs = defaultdict(lambda: defaultdict(list))
    failed = defaultdict(int)
    for line in lines:
        line = line.strip()
        if not line.startswith("RESULT "):
            continue
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
        record = {k: int(v) for k, v in fields.items() if k not in ("kind", "vmm") and v.lstrip("-").isdigit()}
        if record.get("status") != 0:
            failed[fields["vmm"]] += 1
            runs["failed-" + fields["kind"]][fields["vmm"]].append(record)
            continue
        # Kernel entry: volt logs it itself; QEMU does not, so its first serial byte stands in.
        if record.get("entry_log_us", -1) >= 0:
            record["kernel_entry_us"] = record["entry_log_us"]
        else:
            record["kernel_entry_us"] = record["first_byte_us"]
            record["entry_is_fallback"] = 1
        runs[fields["kind"]][fields["vmm"]].append(record)
    return runs, failed


def percentile(values, p):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def ms(us):
    return f"{us / 1000:9.1f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="?")
    args = parser.parse_args()
    runs, failed = parse(sys.stdin)
    for vmm, count in sorted(failed.items()):
        print(f"{vmm}: {count} boot(s) failed (VMM exit status != 0) and are left out")
    timed = runs.get("time", {})
    if not timed:
        print("no successful timed boots", file=sys.stderr)
        return 1
    print(f"Boot times in ms (mode: {args.mode}; nested = inside a TCG-emulated guest: compare ratios only)")
    medians = defaultdict(dict)
    for key, label in FIGURES:
        print(f"\n{label}")
        print(f"  {'vmm':10} {'n':>3} {'min':>9} {'median':>9} {'p90':>9}")
        for vmm, records in sorted(timed.items()):
            values = [r[key] for r in records if r.get(key, -1) >= 0]
            if not values:
                print(f"  {vmm:10} {0:3}   (not seen)")
                continue
            note = ""
            if key == "kernel_entry_us" and any(r.get("entry_is_fallback") for r in records):
                note = "  (no log line: first serial byte used instead)"
            medians[vmm][key] = statistics.median(values)
            print(f"  {vmm:10} {len(values):3} {ms(min(values))} {ms(statistics.median(values))} "
                  f"{ms(percentile(values, 90))}{note}")
    if "qemu" in medians and len(medians) > 1:
        print("\nRatio Volt/QEMU of the medians (< 1 means Volt is faster)")
        for vmm in sorted(v for v in medians if v != "qemu"):
            parts = []
            for key, label in FIGURES:
                if key in medians[vmm] and medians["qemu"].get(key):
                    parts.append(f"{key.replace('_us', '')}={medians[vmm][key] / medians['qemu'][key]:.2f}")
            print(f"  {vmm:10} " + " ".join(parts))
    mem = runs.get("mem", {})
    if mem:
        print("\nVMM's own resident memory in MiB (guest alive 1 s after its marker, smaps sampled every 20 ms;")
        print("own = Rss of all mappings except writable ones >= guest size/2, which are guest RAM;")
        print("hwm = VmHWM/ru_maxrss of the whole process, guest RAM included)")
        print(f"  {'vmm':10} {'n':>3} {'own med':>8} {'own max':>8} {'guest':>8} {'hwm med':>8}")
        own_medians = {}
        for vmm, records in sorted(mem.items()):
            own = [r["own_rss_kb"] / 1024 for r in records if r.get("own_rss_kb", -1) >= 0]
            guest = [r["guest_rss_kb"] / 1024 for r in records if r.get("guest_rss_kb", -1) >= 0]
            hwm = [r["hwm_kb"] / 1024 for r in records]
            if not own:
                continue
            own_medians[vmm] = statistics.median(own)
            print(f"  {vmm:10} {len(own):3} {statistics.median(own):8.1f} {max(own):8.1f} "
                  f"{statistics.median(guest):8.1f} {statistics.median(hwm):8.1f}")
        if "qemu" in own_medians:
            for vmm in sorted(v for v in own_medians if v != "qemu"):
                print(f"  ratio {vmm}/qemu own memory: {own_medians[vmm] / own_medians['qemu']:.2f}")
    broken = runs.get("failed-time", {})
    if broken:
        print("\nFailed boots (the guest never printed its marker): partial figures, information only")
        print(f"  {'vmm':10} {'n':>3} {'entry med':>10} {'1st byte med':>13} {'exit med':>9}  (ms)")
        for vmm, records in sorted(broken.items()):
            entry = [r["entry_log_us"] for r in records if r.get("entry_log_us", -1) >= 0]
            first = [r["first_byte_us"] for r in records if r.get("first_byte_us", -1) >= 0]
            exits = [r["exit_us"] for r in records]
            med = lambda v: ms(statistics.median(v)) if v else "        -"  # noqa: E731
            print(f"  {vmm:10} {len(records):3} {med(entry):>10} {med(first):>13} {med(exits):>9}")
        for vmm, records in sorted(runs.get("failed-mem", {}).items()):
            own = [r["own_rss_kb"] / 1024 for r in records if r.get("own_rss_kb", -1) >= 0]
            if own:
                print(f"  {vmm:10} own resident memory until the failure: median {statistics.median(own):.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

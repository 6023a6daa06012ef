#!/usr/bin/env python3
"""Summarise perf/io-bench-run.sh output (RESULT vmm=V i=I IOBENCH-DISK|IOBENCH-UDP ...) on stdin.

Prints the median over runs of each figure per VMM variant and each Volt variant's ratio to
Firecracker (default engine) -- lower is better for latencies, higher for throughput.
"""
import argparse
import statistics
import sys
from collections import defaultdict

# (line kind, field, label, higher is better)
FIGURES = [
    ("IOBENCH-DISK", "qd1_p50_us", "4 KiB randread QD1 p50 (us)", False),
    ("IOBENCH-DISK", "qd1_p99_us", "4 KiB randread QD1 p99 (us)", False),
    ("IOBENCH-DISK", "qd32_iops", "4 KiB randread QD32 (IOPS)", True),
    ("IOBENCH-DISK", "qd32_mibs", "4 KiB randread QD32 (MiB/s)", True),
    ("IOBENCH-UDP", "p50_us", "UDP round trip p50 (us)", False),
    ("IOBENCH-UDP", "p99_us", "UDP round trip p99 (us)", False),
]


def parse(lines):
    values = defaultdict(lambda: defaultdict(list))
    for line in lines:
        words = line.split()
        if len(words) < 4 or words[0] != "RESULT":
            continue
        kind = next((w for w in words if w.startswith("IOBENCH-")), None)
        if kind is None:
            continue  # not an io-bench line
        fields = dict(w.split("=", 1) for w in words if "=" in w)
        vmm = fields.get("vmm")
        for key, value in fields.items():
            try:
                values[vmm][(kind, key)].append(float(value))
            except ValueError:
                pass
    return values


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="?")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    values = parse(sys.stdin)
    if not values:
        print("no results", file=sys.stderr)
        return 1
    vmms = sorted(values)
    ref = "firecracker" if "firecracker" in values else None
    print(f"In-guest I/O, medians over runs (mode: {args.mode}; nested: compare ratios only)")
    print(f"  {'figure':32}" + "".join(f"{v:>19}" for v in vmms))
    medians = {}
    for kind, key, label, _ in FIGURES:
        row = []
        for vmm in vmms:
            sample = values[vmm].get((kind, key), [])
            medians[(vmm, key)] = statistics.median(sample) if sample else None
            row.append(f"{medians[(vmm, key)]:>12.1f} (n={len(sample)})" if sample else f"{'-':>19}")
        print(f"  {label:32}" + "".join(row))
    if ref:
        print(f"\nRatio to {ref} (its default Sync block engine) of the medians")
        for vmm in (v for v in vmms if v != ref):
            parts = []
            for _, key, label, _ in FIGURES:
                mine, theirs = medians.get((vmm, key)), medians.get((ref, key))
                if mine is not None and theirs:
                    parts.append(f"{key}={mine / theirs:.2f}")
            print(f"  {vmm:18} " + " ".join(parts))
    if args.markdown:
        print("\n| figure | " + " | ".join(vmms) + (" | " + " | ".join(f"{v}/{ref}" for v in vmms if v != ref) if ref else "") + " |")
        print("|" + " --- |" * (1 + len(vmms) + (len(vmms) - 1 if ref else 0)))
        for _, key, label, _ in FIGURES:
            cells = [f"{medians[(v, key)]:.0f}" if medians[(v, key)] is not None else "-" for v in vmms]
            if ref:
                for v in vmms:
                    if v == ref:
                        continue
                    a, b = medians[(v, key)], medians[(ref, key)]
                    cells.append(f"{a / b:.2f}" if a is not None and b else "-")
            print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Summarise perf/boot-time-run.sh output (RESULT lines from bootmeasure) read on stdin.

One table per case (vCPUs, console on or quiet): min / median / p90 per VMM variant for each
figure, the VMMs' own resident memory, and the ratio of each Volt variant to the reference
(Firecracker if it ran, else QEMU) of the medians. --markdown also prints one compact table
of medians and ratios for the README.
"""
import argparse
import statistics
import sys
from collections import defaultdict

FIGURES = [
    ("kernel_entry_us", "VMM start -> kernel entry", 1000),
    ("first_byte_us", "VMM start -> first serial byte", 1000),
    ("marker_us", "VMM start -> init marker (VOLT-INIT-READY)", 1000),
    ("exit_us", "VMM start -> VMM exited (wall)", 1000),
    ("uptime_ms", "guest uptime at the init marker", 1),
    ("pio_exits", "port exits served by the loop (Volt only)", None),
    ("mmio_exits", "MMIO exits served by the loop (Volt only)", None),
]
# The figures of the compact table: (key, label, unit divisor to ms or None for counts).
SUMMARY = [
    ("marker_us", "start -> init marker", 1000),
    ("exit_us", "start -> VMM exit", 1000),
    ("uptime_ms", "guest uptime at init", 1),
]
TEXT_FIELDS = ("kind", "vmm", "console")


def parse(lines):
    """{kind: {case: {vmm: [record]}}} from `RESULT kind=.. vmm=.. cpus=.. console=.. ...`."""
    runs = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    failed = defaultdict(int)
    for line in lines:
        line = line.strip()
        if not line.startswith("RESULT "):
            continue
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
        if "kind" not in fields or "vmm" not in fields:
            continue  # not a boot-time line (e.g. io-bench output in the same log)
        record = {k: int(v) for k, v in fields.items() if k not in TEXT_FIELDS and v.lstrip("-").isdigit()}
        case = (record.get("cpus", 1), fields.get("console", "on"))
        # A boot that exits cleanly without the init marker (e.g. a guest panic with panic=1
        # ends in a reboot) failed too.
        if record.get("status") != 0 or record.get("marker_us", -1) < 0:
            failed[(fields["vmm"], case)] += 1
            runs["failed-" + fields["kind"]][case][fields["vmm"]].append(record)
            continue
        # Kernel entry: volt logs it itself; the others do not, so their first serial byte
        # stands in.
        if record.get("entry_log_us", -1) >= 0:
            record["kernel_entry_us"] = record["entry_log_us"]
        else:
            record["kernel_entry_us"] = record["first_byte_us"]
            record["entry_is_fallback"] = 1
        runs[fields["kind"]][case][fields["vmm"]].append(record)
    return runs, failed


def percentile(values, p):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def fmt(value, divisor):
    if divisor is None:
        return f"{value:9.0f}"
    return f"{value / divisor:9.1f}"


def case_name(case):
    cpus, console = case
    return f"{cpus} vCPU{'s' if cpus > 1 else ''}, console {'on' if console == 'on' else 'quiet'}"


def reference(vmms):
    for ref in ("firecracker", "qemu"):
        if ref in vmms:
            return ref
    return None


def own_memory(records):
    own = [r["own_rss_kb"] / 1024 for r in records if r.get("own_rss_kb", -1) >= 0]
    return statistics.median(own) if own else None


def print_case(case, timed, mem, medians):
    print(f"\n=== {case_name(case)} ===")
    for key, label, divisor in FIGURES:
        rows = []
        for vmm, records in sorted(timed.items()):
            values = [r[key] for r in records if r.get(key, -1) >= 0]
            if not values:
                continue
            note = ""
            if key == "kernel_entry_us" and any(r.get("entry_is_fallback") for r in records):
                note = "  (no log line: first serial byte instead)"
            medians[case][vmm][key] = statistics.median(values)
            rows.append(f"  {vmm:12} {len(values):3} {fmt(min(values), divisor)} "
                        f"{fmt(statistics.median(values), divisor)} {fmt(percentile(values, 90), divisor)}{note}")
        if rows:
            unit = "count" if divisor is None else "ms"
            print(f"{label} ({unit})")
            print(f"  {'vmm':12} {'n':>3} {'min':>9} {'median':>9} {'p90':>9}")
            print("\n".join(rows))
    if mem:
        print("VMM's own resident memory in MiB (guest alive 1 s after its marker, smaps every 20 ms;")
        print("own = Rss of all mappings except writable ones >= guest size/2 (guest RAM); hwm = VmHWM)")
        print(f"  {'vmm':12} {'n':>3} {'own med':>8} {'own max':>8} {'guest':>8} {'hwm med':>8}")
        for vmm, records in sorted(mem.items()):
            own = [r["own_rss_kb"] / 1024 for r in records if r.get("own_rss_kb", -1) >= 0]
            guest = [r["guest_rss_kb"] / 1024 for r in records if r.get("guest_rss_kb", -1) >= 0]
            hwm = [r["hwm_kb"] / 1024 for r in records]
            if not own:
                continue
            medians[case][vmm]["own_rss_mib"] = statistics.median(own)
            print(f"  {vmm:12} {len(own):3} {statistics.median(own):8.1f} {max(own):8.1f} "
                  f"{statistics.median(guest) if guest else 0:8.1f} {statistics.median(hwm):8.1f}")
    ref = reference(medians[case])
    if ref:
        print(f"Ratio to {ref} of the medians (< 1: faster / smaller than {ref})")
        for vmm in sorted(v for v in medians[case] if v != ref):
            parts = []
            for key in ("marker_us", "exit_us", "uptime_ms", "own_rss_mib"):
                mine, theirs = medians[case][vmm].get(key), medians[case][ref].get(key)
                if mine is not None and theirs:
                    parts.append(f"{key.replace('_us', '').replace('_ms', '')}={mine / theirs:.2f}")
            print(f"  {vmm:12} " + " ".join(parts))


def print_markdown(medians):
    cases = sorted(medians)
    if not cases:
        return
    vmms = sorted({v for case in cases for v in medians[case]})
    ref = reference(vmms)
    mine = [v for v in vmms if v != ref]
    print("\nMarkdown (medians; ratio = Volt / reference):\n")
    head = "| case | figure | " + " | ".join(vmms) + (" | " + " | ".join(f"{v}/{ref}" for v in mine) if ref else "") + " |"
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for case in cases:
        rows = [(k, label, d) for k, label, d in SUMMARY] + [("own_rss_mib", "VMM own RSS (MiB)", None)]
        for key, label, divisor in rows:
            values = [medians[case][v].get(key) for v in vmms]
            if all(x is None for x in values):
                continue

            def show(x):
                if x is None:
                    return "-"
                return f"{x:.1f} MiB" if divisor is None else f"{x / divisor / 1000:.2f} s"
            cells = [show(x) for x in values]
            if ref:
                for v in mine:
                    a, b = medians[case][v].get(key), medians[case][ref].get(key)
                    cells.append(f"{a / b:.2f}" if a is not None and b else "-")
            print(f"| {case_name(case)} | {label} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="?")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    runs, failed = parse(sys.stdin)
    for (vmm, case), count in sorted(failed.items()):
        print(f"{vmm} ({case_name(case)}): {count} boot(s) failed (no init marker or exit status != 0) and are left out")
    timed = runs.get("time", {})
    if not timed:
        print("no successful timed boots", file=sys.stderr)
        return 1
    print(f"Boot times (mode: {args.mode}; nested = inside a TCG-emulated guest: compare ratios only)")
    medians = defaultdict(lambda: defaultdict(dict))
    for case in sorted(timed):
        print_case(case, timed[case], runs.get("mem", {}).get(case, {}), medians)
    broken = runs.get("failed-time", {})
    if broken:
        print("\nFailed boots (no clean exit): partial figures, information only")
        for case, by_vmm in sorted(broken.items()):
            for vmm, records in sorted(by_vmm.items()):
                statuses = sorted({r.get("status") for r in records})
                print(f"  {case_name(case)} {vmm}: {len(records)} failed, exit statuses {statuses}")
    if args.markdown:
        print_markdown(medians)
    return 0


if __name__ == "__main__":
    sys.exit(main())

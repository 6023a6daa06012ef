#!/usr/bin/env python3
"""Names the guest RIPs in Volt's thread reports: every `rip=0x..,0x..` list on stdin gets each
address followed by (symbol+offset) from a System.map (a vmlinux also works: its `nm` output is
read). With several NAME=MAP arguments, a line containing `kernel=NAME` (perf/soak.sh's hang
lines) selects the map for the lines after it; the first is the default. A line's `idt=0x..`
(the guest's IDT base) gives a randomized (KASLR) kernel's offset while the IDT is still
`idt_table`, early in boot; later the kernel moves it to the cpu_entry_area, and a KASLR
kernel's RIPs then need `nokaslr` (perf/soak.sh --append nokaslr) to be named.
`SOAK-HOST-SYMBOL ADDR TYPE NAME [MODULE]` lines (the nested bed's own kernel, from
perf/soak-run.sh) name RIPs no guest map covers: a guest found running at its host's address.
A soak hang with such a RIP has its `SOAK-BOOT ... result=hung` line rewritten to
`result=hung-bed-rip`, so that perf/soak.sh counts it apart.

usage: perf/symbolize.py [NAME=]MAP_OR_VMLINUX... < report.txt
"""
import bisect
import re
import subprocess
import sys


def load(path):
    if open(path, "rb").read(4) == b"\x7fELF":
        text = subprocess.run(["nm", "-n", path], capture_output=True, text=True).stdout
    else:
        text = open(path, encoding="ascii", errors="replace").read()
    symbols, idt_table = [], None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            symbols.append((int(parts[0], 16), parts[2]))
        elif len(parts) == 3 and parts[2] == "idt_table":
            idt_table = int(parts[0], 16)
    symbols.sort()
    return symbols, idt_table


def main():
    maps = {}
    for arg in sys.argv[1:]:
        label, _, path = arg.rpartition("=")
        maps[label or path] = load(path)
    current, idt_table = next(iter(maps.values()), ([], None))

    offset = 0

    host = []  # (address, name, module) of the bed's own kernel
    at_host_rip = False  # the current hang's report has a vCPU at a host address

    def name(match):
        nonlocal at_host_rip
        addr = int(match.group(0), 16) - offset
        i = bisect.bisect_right(current, (addr, "\uffff")) - 1
        if i >= 0 and addr - current[i][0] < 0x10000 and i + 1 < len(current):
            start, sym = current[i]
            return f"{match.group(0)}({sym}+{addr - start:#x})"
        raw = int(match.group(0), 16)
        below = [h for h in host if 0 <= raw - h[0] < 0x1000]
        if below:
            start, sym, module = max(below)
            at_host_rip = True
            return f"{match.group(0)}(NOT GUEST CODE: the bed host's {sym}+{raw - start:#x} {module})"
        return match.group(0)

    for line in sys.stdin:
        if line.startswith("SOAK-HANG "):
            at_host_rip = False
        if line.startswith("SOAK-BOOT ") and " result=hung " in line and at_host_rip:
            line = line.replace(" result=hung ", " result=hung-bed-rip ")
            at_host_rip = False
        if line.startswith("SOAK-HOST-SYMBOL "):
            parts = line.split()
            host.append((int(parts[1], 16), parts[3], " ".join(parts[4:])))
        chosen = re.search(r"kernel=(\S+)", line)
        if chosen and chosen.group(1) in maps:
            current, idt_table = maps[chosen.group(1)]
        offset = 0
        idt = re.search(r"idt=(0x[0-9a-f]+)", line)
        if idt and idt_table:
            # Only while the IDT is still idt_table itself: a running kernel moves it to the
            # cpu_entry_area (0xfffffe0000000000), which says nothing of the offset. A KASLR
            # offset is a multiple of 2 MiB below 1 GiB.
            moved = int(idt.group(1), 16) - idt_table
            if 0 < moved < 1 << 30 and moved % (2 << 20) == 0:
                offset = moved
        if "rip=" in line:
            head, _, tail = line.partition("rip=")
            line = head + "rip=" + re.sub(r"0x[0-9a-f]+", name, tail, count=8)
        sys.stdout.write(line)


if __name__ == "__main__":
    main()

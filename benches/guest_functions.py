#!/usr/bin/env python3
"""Where a Wasm filter's own instructions go: the guest functions of one callgrind profile of
Sluice, named through the perf map wasmtime wrote for the run (SLUICE_WASM_PERFMAP=1).

    guest_functions.py CALLGRIND_OUT PERF_MAP REQUESTS [TOP] > table.md

callgrind cannot name code compiled at run time: it reports each such function by its
address (`???:0x...`, object `???`). The perf map lists, per line, the start address, size and
name of every function wasmtime compiled, so each address falls in one of them. Prints a
markdown table of the TOP (default 20) functions by instructions per request, and the total.
"""

import bisect
import re
import subprocess
import sys

# callgrind_annotate's line for a function with no symbol: "  1,234 ( 0.01%)  ???:0x51b2f80 [???]"
UNNAMED = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+\?\?\?:0x([0-9a-f]+) \[\?\?\?\]$")
# What an address that falls in no function of the perf map is counted under.
UNMAPPED = "(code outside the perf map)"
# Rust symbol noise that makes names long and says nothing here: the hash suffix and the crate
# disambiguators (`::h0123456789abcdef`, `core[0123456789abcdef]`).
HASH_SUFFIX = re.compile(r"::h[0-9a-f]{16}$")
CRATE_HASH = re.compile(r"\[[0-9a-f]{16}\]")


def read_perf_map(path):
    """(starts, entries): entries sorted by start, each (start, end, name)."""
    entries = []
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            parts = line.rstrip("\n").split(" ", 2)
            if len(parts) != 3:
                continue
            start, size = int(parts[0], 16), int(parts[1], 16)
            name = CRATE_HASH.sub("", HASH_SUFFIX.sub("", parts[2]))
            entries.append((start, start + size, name))
    entries.sort()
    return [entry[0] for entry in entries], entries


def guest_costs(callgrind_out, perf_map):
    """Instructions per guest function name over the whole profile."""
    starts, entries = read_perf_map(perf_map)
    listing = subprocess.run(
        ["callgrind_annotate", "--threshold=100", callgrind_out],
        capture_output=True, text=True, check=True,
    ).stdout
    costs = {}
    for line in listing.splitlines():
        match = UNNAMED.match(line)
        if not match:
            continue
        address = int(match.group(2), 16)
        index = bisect.bisect_right(starts, address) - 1
        name = UNMAPPED
        if index >= 0 and entries[index][0] <= address < entries[index][1]:
            name = entries[index][2]
        costs[name] = costs.get(name, 0) + int(match.group(1).replace(",", ""))
    return costs


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit("usage: guest_functions.py CALLGRIND_OUT PERF_MAP REQUESTS [TOP]")
    callgrind_out, perf_map, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) == 5 else 20
    if requests <= 0:
        sys.exit("REQUESTS must be positive")
    costs = guest_costs(callgrind_out, perf_map)
    if not costs:
        sys.exit(f"no guest code in {callgrind_out}: did the proxy run with SLUICE_WASM_PERFMAP=1?")
    total = sum(costs.values())
    # Code outside every mapped function is shown on its own line, not ranked, if it counts.
    unmapped = costs.pop(UNMAPPED, 0)
    print("| guest function | instructions per request |")
    print("|---|---:|")
    for name, cost in sorted(costs.items(), key=lambda item: -item[1])[:top]:
        cell = name.replace("|", "\\|")  # a markdown cell cannot hold a bare |
        print(f"| `{cell}` | {cost / requests:,.0f} |")
    if unmapped / requests >= 0.5:
        print(f"| {UNMAPPED} | {unmapped / requests:,.0f} |")
    print(f"| all guest code ({len(costs)} functions and trampolines) | {total / requests:,.0f} |")


if __name__ == "__main__":
    main()

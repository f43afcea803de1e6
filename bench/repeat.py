#!/usr/bin/env python3
"""Run a benchmark several times and print the median of every figure in its SUMMARY lines.

    .venv/bin/python bench/repeat.py --runs 3 -- bench/bench_guards.py --quick
    .venv/bin/python bench/repeat.py --runs 3 -- bench/bench_delivery.py --scenario capacity

Each run's output goes to the terminal as it comes. A SUMMARY line is `SUMMARY key=value ...`; the
runs' lines are matched by position (a script may print several), numeric values are replaced by
their median over the runs (with min and max), the others must agree (else every value is shown).
Exit status: 2 if any run was broken (exit 2), else 0.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys


def parse(line: str) -> dict[str, str]:
    fields = {}
    for part in line.split()[1:]:
        key, _, value = part.partition("=")
        fields[key] = value
    return fields


def number(value: str) -> float | None:
    try:
        return float(value.rstrip("x%"))
    except ValueError:
        return None


def combine(lines: list[dict[str, str]]) -> str:
    keys = list(dict.fromkeys(k for line in lines for k in line))
    out = []
    for key in keys:
        values = [line.get(key, "") for line in lines]
        nums = [number(v) for v in values]
        if all(n is not None for n in nums) and len(set(values)) > 1:
            median = statistics.median(nums)
            out.append(f"{key}={median:g}[{min(nums):g}..{max(nums):g}]")
        elif len(set(values)) == 1:
            out.append(f"{key}={values[0]}")
        else:
            out.append(f"{key}={'|'.join(values)}")
    return "MEDIAN " + " ".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- script and its arguments")
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the benchmark to run after --")
    summaries: list[list[dict[str, str]]] = []
    broken = False
    for run in range(1, args.runs + 1):
        print(f"=== run {run} of {args.runs}: {' '.join(command)}", flush=True)
        proc = subprocess.Popen([sys.executable, *command], stdout=subprocess.PIPE, text=True)
        lines = []
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith("SUMMARY "):
                lines.append(parse(line))
        proc.wait()
        broken |= proc.returncode == 2
        summaries.append(lines)
    print(f"=== {args.runs} runs")
    for position in range(max(len(s) for s in summaries)):
        print(combine([s[position] for s in summaries if len(s) > position]))
    return 2 if broken else 0


if __name__ == "__main__":
    sys.exit(main())

"""Score per module from `mutmut results --all true` (read on stdin), for bench/mutation.sh.

Killed counts what the tests caught; a timeout (the mutant made the tests hang) is shown apart and
counted as caught in the score, as mutmut's own summary does not: both columns are printed.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict


def main(modules: list[str]) -> None:
    counts: dict[str, Counter] = defaultdict(Counter)
    for line in sys.stdin:
        name, sep, status = line.strip().rpartition(": ")
        if sep and name.startswith("clayops."):
            counts[name.split(".")[1]][status] += 1
    header = ("module", "mutants", "killed", "timeout", "survived", "other", "killed %", "caught %")
    print("{:<10} {:>7} {:>6} {:>7} {:>8} {:>5} {:>8} {:>8}".format(*header))
    total: Counter = Counter()
    for module in [*modules, "total"]:
        c = total if module == "total" else counts[module]
        if module != "total":
            total.update(c)
        n = sum(c.values())
        other = n - c["killed"] - c["timeout"] - c["survived"]
        killed_pct = 100 * c["killed"] / max(n, 1)
        caught_pct = 100 * (c["killed"] + c["timeout"]) / max(n, 1)
        print(
            f"{module:<10} {n:>7} {c['killed']:>6} {c['timeout']:>7} {c['survived']:>8} {other:>5}"
            f" {killed_pct:>7.1f}% {caught_pct:>7.1f}%"
        )
    print("statuses:", dict(total))


if __name__ == "__main__":
    main(sys.argv[1:])

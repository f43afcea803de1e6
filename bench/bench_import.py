#!/usr/bin/env python3
"""Benchmark the CSV import: generate a file, run create_import + run_import in this process, report.

    .venv/bin/python bench/bench_import.py --rows 100000
    .venv/bin/python bench/bench_import.py --rows 10000 --tracemalloc

Everything lives in a temporary directory: a throwaway SQLite database (or --database-url), the
media files and a private Redis (clayops.settings_test starts one) that receives the submission
jobs the import enqueues. No worker runs: the submission jobs stay queued and are thrown away.

Memory: ru_maxrss is the process's peak resident size (Django and the migrations included); its
growth during the import is what the import itself needed. --tracemalloc also reports the peak of
Python allocations during the import (exact, but tracing makes the run about twice as slow, so the
rows/s of such a run is not representative).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="data rows in the file (default 100,000)")
    parser.add_argument(
        "--duplicates", type=float, default=0.05, help="share of duplicate rows (default 0.05)"
    )
    parser.add_argument("--bad", type=float, default=0.01, help="share of bad rows (default 0.01)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default="", help="default: SQLite in the temporary directory")
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations (slower)")
    parser.add_argument("--profile", action="store_true", help="print the top functions by cumulative time")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser.parse_args()


def rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def write_csv(path: Path, rows: int, dup_rate: float, bad_rate: float, seed: int) -> dict[str, int]:
    """A realistic lead file, written row by row (never held in memory)."""
    rng = random.Random(seed)
    titles = ["CEO", "CTO", "Head of Growth", "VP Sales", "Founder", "Marketing Manager", "Engineer"]
    expected = {"duplicates": 0, "bad": 0}
    with path.open("wb") as out:
        out.write(b"First Name,Last Name,Work Email,Company,Company Website,Title,City,Notes\r\n")
        for i in range(rows):
            roll = rng.random()
            if roll < bad_rate:
                expected["bad"] += 1
                kind = i % 3
                if kind == 0:
                    line = f"Ann{i},Smith,not-an-email-{i},,,Intern,Paris,".encode()
                elif kind == 1:
                    line = f"Bob{i},Jones,,Lonely Co,,,,".encode()
                else:  # Latin-1 bytes in a UTF-8 file
                    line = f"Ren{i},Dupont,r{i}@caf{i}.fr,Caf".encode() + b"\xe9" + b",,,Lyon,"
            elif roll < bad_rate + dup_rate and i > 0:
                expected["duplicates"] += 1
                j = rng.randrange(i)
                line = f"Dup,Dup,Person{j}@Company{j % 5000}.com,Company {j % 5000},,,,".encode()
            else:
                company = i % 5000
                notes = '"Met at the ""Growth"" summit, follow up\nnext quarter"' if i % 50 == 0 else "note"
                line = (
                    f"First{i},Last{i},person{i}@company{company}.com,Company {company},"
                    f"https://www.company{company}.com/about,{rng.choice(titles)},Berlin,{notes}"
                ).encode()
            out.write(line + b"\r\n")
    return expected


def main() -> None:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="clayops-bench-"))
    os.environ["CLAYOPS_TEST_VAR_DIR"] = str(tmp)
    os.environ["DATABASE_URL"] = args.database_url or f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "clayops.settings_test"  # private Redis, var dir in tmp
    os.environ["MEDIA_ROOT"] = str(tmp / "media")
    os.environ.pop("REDIS_URL", None)
    sys.path.insert(0, str(ROOT))
    try:
        run(args, tmp)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    if args.database_url:
        call_command("flush", interactive=False, verbosity=0)
    call_command("migrate", verbosity=0)

    import django_rq

    from clayops.imports import create_import, run_import
    from clayops.models import CreditBudget, Lead, Webhook, Workspace

    budget = CreditBudget.objects.create(name="bench")
    workspace = Workspace.objects.create(name="bench", budget=budget)
    Webhook.objects.create(
        workspace=workspace, name="bench", url="http://127.0.0.1:9/v3/sources/webhook/bench"
    )

    path = tmp / "leads.csv"
    started = time.perf_counter()
    expected = write_csv(path, args.rows, args.duplicates, args.bad, args.seed)
    size = path.stat().st_size
    print(
        f"generated {args.rows:,} rows, {size / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s ({path})"
    )
    print(
        f"database {connection.vendor}; expected about {expected['duplicates']:,} duplicates, "
        f"{expected['bad']:,} bad"
    )

    rss_before = rss_mb()
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    with path.open("rb") as fh:
        imp = create_import(file=fh, filename=path.name)
    created = time.perf_counter()
    imp = run_import(imp.pk)
    finished = time.perf_counter()
    if profiler:
        import pstats

        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    traced_peak = None
    if args.tracemalloc:
        traced_peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    rss_after = rss_mb()

    seconds = finished - started
    jobs = django_rq.get_queue("submit").count
    print(f"create_import {created - started:.2f} s, run_import {finished - created:.2f} s")
    print(
        f"import {imp.state}: total {imp.total_rows:,}, valid {imp.valid_rows:,}, "
        f"invalid {imp.invalid_rows:,}, duplicates {imp.duplicate_rows:,}; "
        f"leads in db {Lead.objects.count():,}; submit jobs {jobs:,}"
    )
    if imp.error:
        print(f"error: {imp.error}")
    print(f"{args.rows / seconds:,.0f} rows/s ({seconds:.2f} s)")
    print(
        f"ru_maxrss: {rss_before:.1f} MB before the import, {rss_after:.1f} MB after "
        f"(+{rss_after - rss_before:.1f})"
    )
    if traced_peak is not None:
        print(f"tracemalloc peak during the import: {traced_peak:.1f} MB")
    traced = f" tracemalloc_peak_mb={traced_peak:.1f}" if traced_peak is not None else ""
    print(
        f"SUMMARY rows={args.rows} db={connection.vendor} seconds={seconds:.2f} "
        f"rows_per_s={args.rows / seconds:.0f} "
        f"valid={imp.valid_rows} invalid={imp.invalid_rows} duplicates={imp.duplicate_rows} "
        f"rss_peak_mb={rss_after:.1f} rss_growth_mb={rss_after - rss_before:.1f}{traced}"
    )


if __name__ == "__main__":
    main()

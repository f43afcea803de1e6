#!/usr/bin/env python3
"""Benchmark the guards a lead passes, without HTTP: time per lead, 1, 2 and 4 processes at once.

    .venv/bin/python bench/bench_guards.py                      # SQLite in a temp dir
    .venv/bin/python bench/bench_guards.py --quick
    .venv/bin/python bench/bench_guards.py --database-url postgres://postgres@127.0.0.1:5432/clayops_bench

Two modes:
- per-job (the default; what delivery does since the per-job rework): one job of --batch leads
  (50, CLAYOPS_BATCH_SIZE) to one webhook passes breaker.allow_many + budget.reserve_many, then
  breaker.record_successes + health.record(count) + budget.settle_many, each once for the job.
  The per-lead figure is the job's time divided by its leads.
- per-lead (the old path, kept for the before/after comparison): breaker.allow + budget.reserve +
  breaker.record_success + health.record + budget.settle for every lead.
All against one budget, one webhook and one breaker (the hot rows every worker shares). Each
process (a child of this script, its own Django and connections) warms up, waits for a common
start time, then times every unit with perf_counter. Reported: per-lead latency p50/p95 over all
processes, the mean time of each guard call per lead, and the total throughput (leads / wall time
of the slowest). Target: p50 < 2 ms per lead (also reported: p95).

Exit status 0 unless the run is broken (a child failed, or the budget's books do not add up).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Bench, BrokenRun, machine, percentile  # noqa: E402

TARGET_MS = 2.0
OPS = ("allow", "reserve", "record_success", "health", "settle")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="300 leads per process")
    p.add_argument("--leads", type=int, default=None, help="timed leads per process (default 2,000)")
    p.add_argument("--processes", default="1,2,4")
    p.add_argument("--database-url", default="", help="default: $DATABASE_URL, else SQLite in a temp dir")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--mode", default="per-job", choices=["per-job", "per-lead"])
    p.add_argument("--batch", type=int, default=50, help="per-job: leads per job (default 50)")
    # child mode
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--webhook", type=int, help=argparse.SUPPRESS)
    p.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--lead-ids", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.leads = args.leads or (300 if args.quick else 2_000)
    return args


def child(args: argparse.Namespace) -> None:
    import django

    django.setup()
    from decimal import Decimal

    from django.utils import timezone

    from clayops import breaker, budget, health
    from clayops.models import CreditBudget

    credit_budget = CreditBudget.objects.get(pk=args.budget)
    amount = Decimal("6")
    sums = dict.fromkeys(OPS, 0.0)
    latencies = []

    def one(timed: bool) -> None:
        t = time.perf_counter
        a = t()
        now = timezone.now()
        admission = breaker.allow(args.webhook, now=now)
        b = t()
        reservation = budget.reserve(budget=credit_budget, amount=amount, now=now)
        c = t()
        if not admission.allowed or reservation is None:
            raise SystemExit(f"refused: {admission} {reservation}")
        breaker.record_success(args.webhook, probe=admission.probe, now=now)
        d = t()
        health.record(args.webhook, ok=True, latency_ms=50.0, at=now)
        e = t()
        budget.settle(reservation_id=reservation.pk, now=now)
        f = t()
        if timed:
            latencies.append((f - a) * 1000)
            for op, x, y in zip(OPS, (a, b, c, d, e), (b, c, d, e, f), strict=True):
                sums[op] += (y - x) * 1000

    lead_ids = [int(x) for x in args.lead_ids.split(",") if x]

    def job(timed: bool) -> None:
        t = time.perf_counter
        n = len(lead_ids)
        a = t()
        now = timezone.now()
        probes, _ = breaker.allow_many(args.webhook, n, now=now)
        b = t()
        held = budget.reserve_many(budget=credit_budget, amount=amount, lead_ids=lead_ids, now=now)
        c = t()
        if len(probes) != n or len(held) != n:
            raise SystemExit(f"refused: {len(probes)} admitted, {len(held)} held of {n}")
        breaker.record_successes(args.webhook, n, now=now)
        d = t()
        health.record(args.webhook, ok=True, latency_ms=50.0, latency_max_ms=60.0, count=n, at=now)
        e = t()
        budget.settle_many(held.values(), now=now)
        f = t()
        if timed:
            latencies.append((f - a) * 1000 / n)
            for op, x, y in zip(OPS, (a, b, c, d, e), (b, c, d, e, f), strict=True):
                sums[op] += (y - x) * 1000

    unit, per_unit = (job, len(lead_ids)) if args.mode == "per-job" else (one, 1)
    for _ in range(max(2, 30 // per_unit)):  # warm-up: connections, statements, Lua script load
        unit(False)
    delay = args.start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    started = time.time()
    for _ in range(max(1, args.leads // per_unit)):
        unit(True)
    finished = time.time()
    Path(args.out).write_text(
        json.dumps(
            {
                "latencies": latencies,
                "sums": sums,
                "started": started,
                "finished": finished,
                "leads": len(latencies) * per_unit,
                "warmup_leads": max(2, 30 // per_unit) * per_unit,
            }
        )
    )


def run_level(bench: Bench, args, processes: int, webhook_id: int, budget_id: int, lead_ids: str) -> dict:
    start_at = time.time() + 4 + processes  # Django start-up of every child happens before
    outs = [bench.tmp / f"guards-{processes}-{k}.json" for k in range(processes)]
    procs = [
        bench.spawn(
            [
                sys.executable,
                __file__,
                "--child",
                "--leads",
                str(args.leads),
                "--webhook",
                str(webhook_id),
                "--budget",
                str(budget_id),
                "--start-at",
                str(start_at),
                "--out",
                str(out),
                "--mode",
                args.mode,
                "--lead-ids",
                lead_ids,
            ],
            log_name=f"guards-{processes}-{k}.log",
        )
        for k, out in enumerate(outs)
    ]
    for proc in procs:
        try:
            proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            raise BrokenRun(f"a guards child did not finish in 600 s (logs in {bench.tmp})") from None
        bench.stop_process(proc)
        if proc.returncode != 0:
            log = next(iter(sorted(bench.tmp.glob(f"guards-{processes}-*.log"))), None)
            tail = log.read_text()[-1500:] if log else ""
            raise BrokenRun(f"a guards child exited with {proc.returncode}:\n{tail}")
    results = [json.loads(out.read_text()) for out in outs]
    lat = [x for r in results for x in r["latencies"]]
    leads = sum(r["leads"] for r in results)
    wall = max(r["finished"] for r in results) - min(r["started"] for r in results)
    late = max(r["started"] for r in results) - min(r["started"] for r in results)
    sums = {op: sum(r["sums"][op] for r in results) / leads for op in OPS}
    return {
        "processes": processes,
        "leads": leads,
        "warmup_leads": sum(r["warmup_leads"] for r in results),
        "p50": percentile(lat, 50),
        "p95": percentile(lat, 95),
        "p99": percentile(lat, 99),
        "mean": sum(lat) / len(lat),
        "throughput": leads / wall,
        "start_skew": late,
        "ops": sums,
    }


def main() -> int:
    args = parse_args()
    if args.child:
        child(args)
        return 0
    try:
        with Bench(database_url=args.database_url, keep=args.keep) as bench:
            bench.setup_django()
            from decimal import Decimal

            from clayops import breaker
            from clayops.models import CreditBudget, CreditUsage, Lead, Webhook, Workspace

            db = bench.db_description()
            print(f"machine: {machine()}; database {db}")
            credit_budget = CreditBudget.objects.create(name="guards", daily_limit=Decimal("1000000000"))
            workspace = Workspace.objects.create(name="guards", budget=credit_budget, rate_limit=0)
            webhook = Webhook.objects.create(workspace=workspace, name="guards", url="http://127.0.0.1:9/x")
            breaker.get_breaker(webhook.pk)
            batch = args.batch if args.mode == "per-job" else 0
            lead_ids = ",".join(
                str(Lead.objects.create(row={"i": i}, fingerprint=f"guards-{i}", webhook=webhook).pk)
                for i in range(batch)
            )
            print(f"mode {args.mode}" + (f", {batch} leads per job" if batch else ""), flush=True)
            rows = []
            for processes in [int(x) for x in args.processes.split(",")]:
                r = run_level(bench, args, processes, webhook.pk, credit_budget.pk, lead_ids)
                rows.append(r)
                ops = ", ".join(f"{op} {ms:.3f}" for op, ms in r["ops"].items())
                print(
                    f"{processes} process(es): {r['leads']:,} leads, per lead p50 {r['p50']:.2f} ms, "
                    f"p95 {r['p95']:.2f} ms, p99 {r['p99']:.2f} ms, mean {r['mean']:.2f} ms; "
                    f"throughput {r['throughput']:.0f} leads/s; mean ms per call: {ops}",
                    flush=True,
                )
            usage = CreditUsage.objects.get(budget=credit_budget)
            expected = sum((r["leads"] + r["warmup_leads"]) for r in rows) * 6
            if usage.reserved != 0 or usage.spent != expected:
                raise BrokenRun(
                    f"budget books wrong: reserved {usage.reserved}, spent {usage.spent} != {expected}"
                )
            print("\n| processes | leads | p50 ms | p95 ms | throughput leads/s |")
            print("| ---: | ---: | ---: | ---: | ---: |")
            for r in rows:
                print(
                    f"| {r['processes']} | {r['leads']:,} | {r['p50']:.2f} | {r['p95']:.2f} | {r['throughput']:.0f} |"
                )
            single = rows[0]
            met = single["p50"] < TARGET_MS
            per = " ".join(
                f"p{r['processes']}_p50_ms={r['p50']:.2f} p{r['processes']}_p95_ms={r['p95']:.2f} "
                f"p{r['processes']}_per_s={r['throughput']:.0f}"
                for r in rows
            )
            print(
                f"SUMMARY bench=guards mode={args.mode} db={db.split()[0].lower()} "
                f"leads_per_process={args.leads} {per} "
                f"target_2ms={'met' if met else 'missed'}"
            )
    except BrokenRun as exc:
        print(f"BROKEN RUN: {exc}", file=sys.stderr)
        print("SUMMARY bench=guards broken=1")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

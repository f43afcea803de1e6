#!/usr/bin/env python3
"""Benchmark agency-scale pacing and fairness (issue 15): many rate-limited workspaces on few workers.

    .venv/bin/python bench/bench_agency.py --scenario agency                # 25 workspaces x 2,000 leads, 4 workers
    .venv/bin/python bench/bench_agency.py --scenario agency --workspaces 5 --leads 300   # quick
    .venv/bin/python bench/bench_agency.py --scenario fairness              # 100 urgent vs a 50,000 backlog
    .venv/bin/python bench/bench_agency.py --database-url postgres://postgres@127.0.0.1:5432/clayops_bench

Scenarios
- agency: W workspaces (default 25), each at 10 rows/s burst 20 with its own webhook and a backlog of
  N leads (default 2,000), each webhook on its own simulator that enforces that workspace's limit
  both ways at once (a token bucket of 10/s burst 20 and a fixed one-second window of 20: either
  refusing is a 429), 50 ms latency. 4 RQ workers (`RidingWorker`, queues maintenance urgent submit)
  and the cron. The backlogs are handed over one workspace after the other, as W imports hand over
  the batches they write (clayops.delivery.hand_over: to each paced workspace's pump lists).
  Measured from the first hand-over: the aggregate rate (all leads / time to the last acceptance)
  against 95 % of W x 10/s; each workspace's rate (its leads / time to its last acceptance) against
  90 % of 10/s (the minimum is reported); 429s; the busiest sliding one-second window of arrivals at
  each simulator against the burst.
- fairness: one workspace at 10/s burst 20. First a 100-lead urgent import alone (its time: first
  enqueue to last acceptance). Then, on a fresh workspace, a 50,000-lead import is enqueued, and 20 s
  later the same 100-lead urgent import: its time against twice its time alone.

Exit status 0 when the run worked (targets missed are reported, not failed); 2 when it is broken
(a lead sent twice, a worker dying, a timeout).
"""

from __future__ import annotations

import argparse
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_delivery import busiest_sliding_second, make_leads  # noqa: E402
from common import MANAGE, Bench, BrokenRun, machine  # noqa: E402

RATE, BURST = 10.0, 20
AGGREGATE_TARGET, EACH_TARGET, FAIRNESS_BOUND = 0.95, 0.90, 2.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="agency", choices=["agency", "fairness", "all"])
    p.add_argument("--workspaces", type=int, default=25)
    p.add_argument("--leads", type=int, default=2000, help="agency: backlog per workspace")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--latency-ms", type=float, default=50)
    p.add_argument("--bulk", type=int, default=50_000, help="fairness: the running import's leads")
    p.add_argument("--urgent", type=int, default=100, help="fairness: the urgent import's leads")
    p.add_argument("--database-url", default="", help="default: $DATABASE_URL, else SQLite in a temp dir")
    p.add_argument("--keep", action="store_true")
    return p.parse_args()


def hand_over(ids: list[int], urgent: bool = False) -> None:
    """What an import does with each batch it has written (clayops.imports.run): a paced
    workspace's leads to its pump's lists, the pump due now."""
    from django.conf import settings

    from clayops.delivery import hand_over as import_hand_over

    size = settings.CLAYOPS_IMPORT_BATCH_ROWS  # the import's batches
    for start in range(0, len(ids), size):
        import_hand_over(ids[start : start + size], urgent=urgent)


def simulator(latency_ms: float):
    from clayops.devtools.simulator import ClaySimulator

    return ClaySimulator(
        "127.0.0.1",
        0,
        callback_workers=1,
        latency_ms=latency_ms,
        row_cap=10**9,
        rate_limit=RATE,
        burst=BURST,
        window_limit=BURST,
    ).start()


def world(name: str, sim, *, rate: float = RATE, burst: int = BURST):
    from clayops.models import CreditBudget, Webhook, Workspace

    budget = CreditBudget.objects.create(name=name, daily_limit=Decimal("1000000000"))
    workspace = Workspace.objects.create(name=name, budget=budget, rate_limit=rate, burst=burst)
    sim.configure_table("t", token="tok", row_cap=10**9)
    webhook = Webhook.objects.create(
        workspace=workspace, name=name, url=sim.webhook_url("t"), token="tok", row_cap=10**9
    )
    return workspace, webhook


def start(bench, workers: int) -> list:
    from clayops.management.commands.up import WORKER_QUEUES

    procs = bench.start_workers(workers, queues=WORKER_QUEUES)  # as every production worker
    procs.append(bench.spawn([sys.executable, MANAGE, "cron"], log_name="cron.log"))
    return procs


def wait_accepted(sims_and_counts, procs, *, timeout: float, t0: float, label: str) -> None:
    deadline = time.time() + timeout
    last_print = time.time()
    while time.time() < deadline:
        done = all(sim.stats()["rows_accepted"] >= n for sim, n in sims_and_counts)
        if done:
            return
        if any(p.poll() is not None for p in procs):
            raise BrokenRun(f"a worker died during {label}")
        if time.time() - last_print >= 30:
            last_print = time.time()
            total = sum(sim.stats()["rows_accepted"] for sim, _ in sims_and_counts)
            print(f"  {time.time() - t0:.0f} s: {total:,} rows accepted", flush=True)
        time.sleep(0.2)
    raise BrokenRun(f"{label}: not all leads accepted within {timeout:.0f} s")


def run_agency(args, bench) -> tuple[str, bool]:
    w, n = args.workspaces, args.leads
    sims = [simulator(args.latency_ms) for _ in range(w)]
    try:
        ids_by = []
        for k, sim in enumerate(sims):
            _, webhook = world(f"agency{k}", sim)
            ids_by.append(make_leads(webhook, n, f"ag{k}"))
        procs = start(bench, args.workers)
        for sim in sims:
            sim.reset()
        try:
            t0 = time.time()
            for ids in ids_by:  # one workspace after the other, as W imports would be
                hand_over(ids)
            expected = n / RATE + 60
            wait_accepted([(s, n) for s in sims], procs, timeout=expected * 3, t0=t0, label="agency")
        finally:
            bench.stop_all(procs)
        per = []
        for sim in sims:
            stats = sim.stats()
            arrivals = sim.arrival_times()
            if stats["received_by_lead"]["double_charges"] or stats["received_by_lead"]["duplicate_leads"]:
                raise BrokenRun(f"leads sent twice: {stats['received_by_lead']}")
            per.append(
                {
                    "rate": stats["rows_accepted"] / (arrivals[-1] - t0),
                    "sliding": busiest_sliding_second(arrivals),
                    "r429": stats["requests_by_status"].get("429", 0),
                    "last": arrivals[-1],
                }
            )
    finally:
        for sim in sims:
            sim.stop()
    total = w * n / (max(p["last"] for p in per) - t0)
    aggregate_share = total / (w * RATE)
    each_min = min(p["rate"] for p in per) / RATE
    sliding = max(p["sliding"] for p in per)
    r429 = sum(p["r429"] for p in per)
    met = aggregate_share >= AGGREGATE_TARGET and each_min >= EACH_TARGET and r429 == 0 and sliding <= BURST
    print(
        f"agency: {w} workspaces x {n:,} leads, {args.workers} workers: aggregate {total:.1f} rows/s = "
        f"{aggregate_share:.1%} of {w * RATE:g}/s (bound >= {AGGREGATE_TARGET:.0%}); slowest workspace "
        f"{each_min * RATE:.2f}/s = {each_min:.1%} of its limit (bound >= {EACH_TARGET:.0%}); "
        f"busiest sliding second {sliding} (bound {BURST}, ratio {sliding / BURST:.2f}); 429s {r429}: "
        f"{'met' if met else 'MISSED'}"
    )
    summary = (
        f"SUMMARY scenario=agency db={bench.db_kind} workspaces={w} leads={n} workers={args.workers} "
        f"aggregate_per_s={total:.1f} aggregate_share={aggregate_share:.3f} min_share={each_min:.3f} "
        f"sliding_max={sliding} http_429={r429} target={'met' if met else 'missed'}"
    )
    return summary, met


def urgent_time(bench, sim, webhook, n: int, t_start: float, procs) -> float:
    """Enqueue an urgent import of n leads now; seconds until its last lead is accepted."""
    from clayops.models import Lead, LeadImport

    imp = LeadImport.objects.create(filename="urgent.csv", webhook=webhook, urgent=True, state="done")
    before = set(Lead.objects.filter(webhook=webhook).values_list("pk", flat=True))
    make_leads(webhook, n, f"urgent{imp.pk}")
    ids = sorted(set(Lead.objects.filter(webhook=webhook).values_list("pk", flat=True)) - before)
    Lead.objects.filter(pk__in=ids).update(lead_import=imp)
    started = time.time()
    hand_over(ids, urgent=True)
    deadline = started + 600
    while time.time() < deadline:
        if Lead.objects.filter(pk__in=ids, state=Lead.State.ACCEPTED).count() == n:
            from django.db.models import Max

            last = Lead.objects.filter(pk__in=ids).aggregate(m=Max("accepted_at"))["m"].timestamp()
            return last - started
        if any(p.poll() is not None for p in procs):
            raise BrokenRun("a worker died during fairness")
        time.sleep(0.1)
    raise BrokenRun("fairness: the urgent import did not finish in 600 s")


def run_fairness(args, bench) -> tuple[str, bool]:
    from clayops.models import LeadImport

    alone_sim, busy_sim = simulator(args.latency_ms), simulator(args.latency_ms)
    try:
        procs = start(bench, args.workers)
        try:
            _, alone_hook = world("alone", alone_sim)
            alone = urgent_time(bench, alone_sim, alone_hook, args.urgent, time.time(), procs)
            _, busy_hook = world("busy", busy_sim)
            bulk = LeadImport.objects.create(filename="bulk.csv", webhook=busy_hook, state="done")
            ids = make_leads(busy_hook, args.bulk, "bulk")
            from clayops.models import Lead

            Lead.objects.filter(pk__in=ids).update(lead_import=bulk)
            hand_over(ids)
            time.sleep(20)
            busy_before = busy_sim.stats()["rows_accepted"]
            contended = urgent_time(bench, busy_sim, busy_hook, args.urgent, time.time(), procs)
            bulk_during = busy_sim.stats()["rows_accepted"] - busy_before - args.urgent
        finally:
            bench.stop_all(procs)
        r429 = sum(s.stats()["requests_by_status"].get("429", 0) for s in (alone_sim, busy_sim))
    finally:
        alone_sim.stop()
        busy_sim.stop()
    ratio = contended / alone
    met = ratio <= FAIRNESS_BOUND and r429 == 0
    print(
        f"fairness: {args.urgent} urgent leads alone {alone:.1f} s; started 20 s into a {args.bulk:,}-lead "
        f"import {contended:.1f} s (ratio {ratio:.2f}, bound <= {FAIRNESS_BOUND:g}); bulk rows sent meanwhile "
        f"{bulk_during}; 429s {r429}: {'met' if met else 'MISSED'}"
    )
    summary = (
        f"SUMMARY scenario=fairness db={bench.db_kind} urgent={args.urgent} bulk={args.bulk} alone_s={alone:.1f} "
        f"contended_s={contended:.1f} ratio={ratio:.2f} http_429={r429} target={'met' if met else 'missed'}"
    )
    return summary, met


def main() -> int:
    args = parse_args()
    summaries = []
    try:
        with Bench(database_url=args.database_url, keep=args.keep) as bench:
            bench.setup_django()
            bench.db_kind = bench.db_description().split()[0].lower()
            print(f"machine: {machine()}; database {bench.db_description()}; tmp {bench.tmp}")
            if args.scenario in ("agency", "all"):
                summaries.append(run_agency(args, bench)[0])
            if args.scenario in ("fairness", "all"):
                summaries.append(run_fairness(args, bench)[0])
    except BrokenRun as exc:
        print(f"BROKEN RUN: {exc}", file=sys.stderr)
        print(f"SUMMARY scenario={args.scenario} broken=1")
        return 2
    for line in summaries:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""No overspend with racing PROCESSES (not threads): the budget invariant on the real database.

Each racer is a separate Python process with its own database connection, on the same test
database and Redis (child_env()). They wait for one "go" so they really run at once; meanwhile the
test samples reserved + spent and checks it never passes the limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal

import pytest
from django.conf import settings

from clayops import budget as svc
from clayops.models import CreditBudget, CreditReservation, CreditUsage
from tests.conftest import child_env
from tests.factories import make_budget, make_leads

pytestmark = pytest.mark.slow  # every test starts a launcher process that forks eight racers

RACER = """
import json, multiprocessing, sys
from decimal import Decimal
import django
django.setup()
from django.db import connection, connections
from clayops import budget
from clayops.models import CreditBudget

def racer(job, ready, go, results):
    mode, budget_id, attempts, amount, ids = job
    b = CreditBudget.objects.get(pk=budget_id)  # this process' own connection
    ready.wait()
    go.wait()
    won = []
    if mode == "reserve":
        for _ in range(attempts):
            r = budget.reserve(budget=b, amount=Decimal(amount))
            if r is not None:
                won.append(r.pk)
    elif mode == "reserve_many":  # `attempts` is the batch size here; ids are lead ids
        for start in range(0, len(ids), attempts):
            batch = ids[start : start + attempts]
            got = budget.reserve_many(budget=b, amount=Decimal(amount), lead_ids=batch, actions=2)
            won.extend(got.values())
    elif mode.endswith("_many"):
        getattr(budget, mode)(ids)
    else:
        for pk in ids:
            if getattr(budget, mode)(reservation_id=pk):
                won.append(pk)
    connection.close()
    results.put((mode, won))

jobs = json.loads(sys.argv[1])
connections.close_all()  # never share a connection across fork
ctx = multiprocessing.get_context("fork")
ready, go, results = ctx.Barrier(len(jobs) + 1), ctx.Event(), ctx.Queue()
procs = [ctx.Process(target=racer, args=(job, ready, go, results)) for job in jobs]
for p in procs:
    p.start()
ready.wait()
print("ready", flush=True)
sys.stdin.readline()
go.set()
out = [results.get(timeout=60) for _ in procs]
for p in procs:
    p.join(10)
    assert p.exitcode == 0, p.exitcode
print(json.dumps(out), flush=True)
"""


def race(jobs: list[tuple], *, on_tick=None, timeout: float = 60) -> list[tuple[str, list[int]]]:
    """Run one process per job (mode, budget id, attempts, amount, reservation ids), all at once.

    One launcher (a subprocess with child_env(): the test database and Redis) loads Django once and
    forks the racers, each with its own database connection; they start together on "go".
    """
    launcher = subprocess.Popen(
        [sys.executable, "-c", RACER, json.dumps(jobs)],
        cwd=settings.BASE_DIR,
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = launcher.stdout.readline()
        assert line.strip() == "ready", launcher.stderr.read()
        launcher.stdin.write("go\n")
        launcher.stdin.flush()
        deadline = time.monotonic() + timeout
        while launcher.poll() is None:
            assert time.monotonic() < deadline, "racers hung"
            if on_tick:
                on_tick()
            time.sleep(0.01)
        out, err = launcher.communicate()
        assert launcher.returncode == 0, err
        return [(mode, won) for mode, won in json.loads(out.strip().splitlines()[-1])]
    finally:
        if launcher.poll() is None:
            launcher.kill()


@pytest.fixture
def race_budget(transactional_db) -> CreditBudget:
    return make_budget(name="race", daily_limit=Decimal("60"))


def test_it_never_reserves_past_the_limit_with_racing_processes(race_budget):
    limit, amount = Decimal("60"), Decimal("6")
    seen = []

    def sample():
        row = CreditUsage.objects.filter(budget=race_budget).values_list("reserved", "spent").first()
        if row:
            seen.append(row[0] + row[1])
            assert row[0] + row[1] <= limit

    # 8 processes x 10 attempts, racing from a budget with no usage row yet (its creation races too).
    results = race([("reserve", race_budget.pk, 10, str(amount), []) for _ in range(8)], on_tick=sample)

    won = [pk for _, result in results for pk in result]
    assert len(won) == int(limit // amount) == 10
    assert len(set(won)) == len(won)
    usage = CreditUsage.objects.get(budget=race_budget)
    assert usage.reserved == Decimal("60") and usage.spent == Decimal("0")
    assert CreditReservation.objects.filter(usage=usage).count() == len(won)  # every success counted
    assert set(CreditReservation.objects.values_list("pk", flat=True)) == set(won)
    assert seen and max(seen) <= limit


def test_it_settles_or_releases_each_reservation_exactly_once_across_processes(race_budget):
    held = [svc.reserve(budget=race_budget, amount=Decimal(a)) for a in ["1.5", "2", "6", "0.5"] * 5]
    ids = [r.pk for r in held]
    # Eight processes fight over the same twenty reservations: four settle them, four release them.
    results = race([("settle" if i % 2 else "release", race_budget.pk, 0, "0", ids) for i in range(8)])

    settled = [pk for mode, won in results if mode == "settle" for pk in won]
    released = [pk for mode, won in results if mode == "release" for pk in won]
    # Each reservation is released at most once and settled at most once (a release that lost the
    # race to a 2xx is charged: see budget.settle), and every one was decided.
    assert len(set(settled)) == len(settled) and len(set(released)) == len(released)
    assert set(settled) | set(released) == set(ids)
    rows = dict(CreditReservation.objects.values_list("pk", "state"))
    assert {pk for pk, state in rows.items() if state == "settled"} == set(settled)
    assert {pk for pk, state in rows.items() if state == "released"} == set(released) - set(settled)
    usage = CreditUsage.objects.get(budget=race_budget)
    assert usage.reserved == Decimal("0")
    assert usage.spent == sum((r.amount for r in held if r.pk in set(settled)), Decimal("0"))


def test_it_never_reserves_past_the_limit_with_racing_batch_reservations(race_budget):
    ids = [lead.pk for lead in make_leads(80)]
    seen = []

    def sample():
        row = CreditUsage.objects.filter(budget=race_budget).values_list("reserved", "spent").first()
        if row:
            seen.append(row[0] + row[1])
            assert row[0] + row[1] <= Decimal("60")

    # 8 processes, each asking for its 10 leads in batches of 7 (7, then 3): 480 credits wanted, 60 exist.
    jobs = [("reserve_many", race_budget.pk, 7, "6", ids[i * 10 : (i + 1) * 10]) for i in range(8)]
    results = race(jobs, on_tick=sample)

    won = [pk for _, result in results for pk in result]
    assert len(won) == len(set(won)) == 10  # partial batches take exactly what is left
    usage = CreditUsage.objects.get(budget=race_budget)
    assert usage.reserved == Decimal("60") and usage.spent == Decimal("0")
    assert set(CreditReservation.objects.filter(state="held").values_list("pk", flat=True)) == set(won)
    assert seen and max(seen) <= Decimal("60")


def test_it_keeps_the_books_when_batch_settles_race_single_releases(race_budget):
    held = [svc.reserve(budget=race_budget, amount=Decimal(a)) for a in ["1.5", "2", "6", "0.5"] * 5]
    ids = [r.pk for r in held]
    # Four processes settle all twenty in bulk while four release them one by one (the reaper's way).
    race([("settle_many" if i % 2 else "release", race_budget.pk, 0, "0", ids) for i in range(8)])

    rows = list(CreditReservation.objects.filter(pk__in=ids).values_list("state", "charged", "amount"))
    assert {state for state, _, _ in rows} <= {"settled", "released"}
    usage = CreditUsage.objects.get(budget=race_budget)
    assert usage.reserved == Decimal("0")
    # Every reservation counted once: spent is exactly what the settled ones were charged.
    assert usage.spent == sum((charged for state, charged, _ in rows if state == "settled"), Decimal("0"))
    assert all(charged == amount for state, charged, amount in rows if state == "settled")


def test_it_never_reserves_past_the_actions_limit_with_racing_batch_reservations(transactional_db):
    """Credits to spare, Actions short: the Actions limit (2 per row here) is what refuses."""
    b = make_budget(name="actions", daily_limit=Decimal("100000"), actions_daily_limit=25)
    ids = [lead.pk for lead in make_leads(80)]
    seen = []

    def sample():
        row = CreditUsage.objects.filter(budget=b).values_list("actions_reserved", "actions_spent").first()
        if row:
            seen.append(row[0] + row[1])
            assert row[0] + row[1] <= 25

    jobs = [("reserve_many", b.pk, 7, "6", ids[i * 10 : (i + 1) * 10]) for i in range(8)]
    won = [pk for _, result in race(jobs, on_tick=sample) for pk in result]

    assert len(won) == len(set(won)) == 12  # 12 rows x 2 Actions = 24 of 25: a 13th needs 26
    usage = CreditUsage.objects.get(budget=b)
    assert (usage.actions_reserved, usage.actions_spent, usage.reserved) == (24, 0, Decimal("72"))
    assert seen and max(seen) <= 25

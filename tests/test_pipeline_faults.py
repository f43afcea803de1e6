"""End to end with real processes: RQ workers, the Clay simulator over HTTP, callbacks into a live
server, and faults: a worker killed with SIGKILL, Redis losing its data, a Clay outage, the budget.

Every test ends by checking invariants 1 and 3 of docs/ARCHITECTURE.md: every lead is in a final state
(accepted, enriched or in the DLQ) and Clay never received a lead again after it answered 2xx.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.db.models import Count

from clayops import budget, imports, maintenance
from clayops.contract import CALLBACK_HEADER
from clayops.devtools.embedded_redis import EmbeddedRedis
from clayops.enqueue import enqueue_leads
from clayops.models import (
    CircuitEvent,
    DeadLetter,
    Lead,
    LeadImport,
)
from tests.conftest import child_env
from tests.factories import make_budget, make_leads, make_webhook, make_workspace
from tests.fixtures_sim import clay_sim as _clay_sim  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

S = Lead.State
FINAL = {S.ACCEPTED, S.ENRICHED, S.DEAD}
MANAGE = str(Path(settings.BASE_DIR) / "manage.py")

# Fast clocks for the workers (their settings come from the environment) ...
WORKER_ENV = {
    "CLAYOPS_HTTP_READ_TIMEOUT": "2",
    "CLAYOPS_HTTP_CONNECT_TIMEOUT": "2",
    "CLAYOPS_BACKOFF_BASE_SECONDS": "0.2",
    "CLAYOPS_BACKOFF_CAP_SECONDS": "1",
    "CLAYOPS_MAX_ATTEMPTS": "8",
    "CLAYOPS_SEND_CONCURRENCY": "4",
    "CLAYOPS_BATCH_SIZE": "25",
    # Long enough for a callback delayed by a loaded machine: a lead whose answer was lost is resent
    # only when no callback came within the grace (then Clay may see it twice, by design).
    "CLAYOPS_UNCERTAIN_GRACE_SECONDS": "12",
}


@pytest.fixture(autouse=True)
def _fast_maintenance(settings):
    # ... and for the maintenance passes this test process runs (as RQ cron would).
    settings.CLAYOPS_STUCK_SUBMITTING_SECONDS = 3
    settings.CLAYOPS_ORPHAN_SECONDS = 3
    settings.CLAYOPS_UNCERTAIN_GRACE_SECONDS = 12
    settings.CLAYOPS_RESERVATION_TTL_SECONDS = 30
    settings.CLAYOPS_DRAIN_RATE = 200
    settings.CLAYOPS_TICK_SECONDS = 1
    settings.CLAYOPS_DLQ_RETRY_DELAY_SECONDS = 3600  # DLQ entries stay put during a test


class Workers:
    def __init__(self, **env: str) -> None:
        self.env = child_env(**WORKER_ENV, **env)
        self.procs: list[subprocess.Popen] = []

    def start(self, n: int = 1) -> None:
        for _ in range(n):
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        MANAGE,
                        "rqworker",
                        "submit",
                        "default",
                        "--worker-class",
                        "clayops.workers.RidingWorker",
                    ],
                    env=self.env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )

    def revive(self) -> None:
        """Restart any worker that died (what a process supervisor does)."""
        dead = [p for p in self.procs if p.poll() is not None]
        for proc in dead:
            self.procs.remove(proc)
        self.start(len(dead))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def workers():
    w = Workers()
    yield w
    w.stop()


@pytest.fixture
def setup_hook(clay_sim, live_server):
    """A workspace whose webhook is a simulator table, with Clay's callbacks going to the live server."""
    workspace = make_workspace(name="e2e", budget=make_budget(name="e2e", daily_limit=Decimal("1000000")))
    webhook = make_webhook(
        workspace=workspace,
        name="sim",
        url=clay_sim.webhook_url("t_e2e"),
        token="tok",
        breaker={
            "failure_threshold": 5,
            "cooldown_seconds": 2,
            "half_open_max_probes": 1,
            "success_threshold": 1,
            "minimum_calls": 1000,
        },
    )
    clay_sim.configure_table(
        "t_e2e",
        token="tok",
        callback_url=live_server.url + webhook.callback_path,
        callback_headers={CALLBACK_HEADER: webhook.callback_secret},
        callback_delay_s=0.05,
        credits_per_row=6,
    )
    return webhook


def queue_leads(webhook, n: int) -> list[int]:
    """n new leads, queued, and their submit jobs in Redis."""
    ids = [lead.pk for lead in make_leads(n, webhook=webhook)]
    enqueue_leads(ids)
    return ids


def run_until(done, *, timeout: float, workers: Workers | None = None, every=None) -> None:
    """Run maintenance passes (as RQ cron would) until done() or the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if workers is not None:
            workers.revive()
        if every is not None:
            every()
        maintenance.run()
        if done():
            return
        time.sleep(0.5)
    states = dict(Lead.objects.values_list("state").annotate(n=Count("id")))
    raise AssertionError(f"not done within {timeout}s; lead states: {states}")


def all_final() -> bool:
    return not Lead.objects.exclude(state__in=FINAL).exists()


def assert_nothing_lost_or_sent_twice(sim, expected: int) -> None:
    assert Lead.objects.count() == expected
    assert all_final()
    dead = set(Lead.objects.filter(state=S.DEAD).values_list("pk", flat=True))
    assert dead == set(
        DeadLetter.objects.filter(state__in=["pending", "exhausted"]).values_list("lead_id", flat=True)
    )
    stats = sim.stats()
    assert stats["received_by_lead"]["double_charges"] == 0, stats["received_by_lead"]
    # Every lead clayops holds as accepted or enriched really reached Clay.
    for pk in Lead.objects.filter(state__in=[S.ACCEPTED, S.ENRICHED]).values_list("pk", flat=True)[:500]:
        assert sim.received(pk) >= 1


def test_it_finishes_every_lead_of_an_import_when_a_worker_is_killed_mid_run(
    setup_hook, clay_sim, workers, tmp_path
):
    clay_sim.set_faults(latency_ms=20)
    rows = ["email,company"] + [f"user{i}@company{i}.com,Company {i}" for i in range(2000)]
    csv_file = tmp_path / "leads.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    with csv_file.open("rb") as fh:
        lead_import = imports.create_import(file=fh, filename="leads.csv", webhook=setup_hook)
    workers.start(2)

    run_until(lambda: clay_sim.stats()["rows_accepted"] >= 300, timeout=120)
    victim = workers.procs[0]
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    run_until(all_final, timeout=240, workers=workers)

    lead_import.refresh_from_db()
    assert lead_import.state == "done" and lead_import.valid_rows == 2000
    assert_nothing_lost_or_sent_twice(clay_sim, 2000)
    assert Lead.objects.filter(state__in=[S.ACCEPTED, S.ENRICHED]).count() == 2000
    run_until(lambda: budget.usage_for(setup_hook.workspace.budget).reserved == 0, timeout=60)


def test_it_loses_nothing_when_redis_restarts_empty_mid_run(setup_hook, clay_sim, workers):
    clay_sim.set_faults(latency_ms=20)
    queue_leads(setup_hook, 600)
    workers.start(2)
    run_until(lambda: clay_sim.stats()["rows_accepted"] >= 100, timeout=120)

    # Redis goes away and comes back without its data (no persistence): every queued job is lost.
    server = EmbeddedRedis(Path(settings.REDIS_URL.removeprefix("unix://")).parent)
    server.stop(timeout=5)
    for leftover in server.directory.glob("appendonly*"):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    server.start()
    run_until(all_final, timeout=240, workers=workers)

    assert_nothing_lost_or_sent_twice(clay_sim, 600)
    assert Lead.objects.filter(state__in=[S.ACCEPTED, S.ENRICHED]).count() == 600


def test_it_opens_the_breaker_in_an_outage_defers_leads_and_drains_them_after(setup_hook, clay_sim, workers):
    clay_sim.set_faults(latency_ms=10, outage_script=[{"start_after_s": 1.5, "duration_s": 6, "mode": "503"}])
    started = time.monotonic()
    queue_leads(setup_hook, 400)
    workers.start(1)
    deferred_seen = []

    def watch():
        if Lead.objects.filter(state=S.DEFERRED).exists():
            deferred_seen.append(time.monotonic() - started)

    run_until(all_final, timeout=240, workers=workers, every=watch)

    transitions = list(CircuitEvent.objects.order_by("at", "id").values_list("from_state", "to_state"))
    assert ("closed", "open") in transitions and transitions[-1][1] == "closed"
    assert deferred_seen, "no lead was held in the offline queue during the outage"
    stats = clay_sim.stats()
    # Clay saw: the failures that opened the breaker, what was in flight then, and one probe per
    # cooldown (2 s) of the 6 s outage -- not the hundreds of leads waiting.
    concurrency = int(WORKER_ENV["CLAYOPS_SEND_CONCURRENCY"])
    assert stats["requests_during_outage"] <= 5 + concurrency + (6 // 2 + 2) * 1, stats
    assert_nothing_lost_or_sent_twice(clay_sim, 400)
    assert Lead.objects.filter(state__in=[S.ACCEPTED, S.ENRICHED]).count() == 400


def test_it_sends_exactly_what_the_budget_allows_and_resumes_when_it_rises(setup_hook, clay_sim, workers):
    credit_budget = setup_hook.workspace.budget
    budget.set_daily_limit(budget=credit_budget, limit=Decimal("60"))
    queue_leads(setup_hook, 20)
    workers.start(2)

    run_until(
        lambda: (
            Lead.objects.filter(state=S.DEFERRED).count() == 10
            and Lead.objects.filter(state__in=[S.ACCEPTED, S.ENRICHED]).count() == 10
        ),
        timeout=60,
    )
    assert clay_sim.stats()["rows_accepted"] == 10
    usage = budget.usage_for(credit_budget)
    assert usage.reserved + usage.spent <= Decimal("60")

    budget.set_daily_limit(budget=credit_budget, limit=Decimal("120"))
    run_until(all_final, timeout=60)
    assert clay_sim.stats()["rows_accepted"] == 20
    assert_nothing_lost_or_sent_twice(clay_sim, 20)


@pytest.mark.once  # 2-3 minutes: .ci/run runs it on PostgreSQL (its races are PostgreSQL's), else SQLite
def test_it_takes_a_10000_row_csv_with_duplicates_bad_rows_and_faults_to_final_states(
    setup_hook, clay_sim, workers, tmp_path
):
    clay_sim.set_faults(
        latency_ms=5,
        error_rate=0.03,
        reset_rate=0.01,
        accept_and_hang_rate=0.005,
        rate_429=0.003,
        hang_seconds=3,
        seed=7,
    )
    lines = ["email,domain,company"]
    for i in range(10_000):
        if i % 100 == 1:
            lines.append(",,No Contact Inc")  # neither email nor domain: a per-row error
        elif i % 50 == 2:
            lines.append(
                f"user{i - 1}@company{i - 1}.com,company{i - 1}.com,Dup"
            )  # duplicate of the row before
        else:
            lines.append(f"user{i}@company{i}.com,company{i}.com,Company {i}")
    csv_file = tmp_path / "big.csv"
    csv_file.write_text("\n".join(lines) + "\n")
    with csv_file.open("rb") as fh:
        lead_import = imports.create_import(file=fh, filename="big.csv", webhook=setup_hook)
    workers.start(2)

    run_until(
        lambda: LeadImport.objects.filter(pk=lead_import.pk, state="done").exists() and all_final(),
        timeout=600,
        workers=workers,
    )

    lead_import.refresh_from_db()
    assert lead_import.total_rows == 10_000
    # 200 rows repeat the row before; for 100 of them that row was the invalid one, so they count as new.
    assert lead_import.invalid_rows == 100 and lead_import.duplicate_rows == 100
    assert lead_import.valid_rows == 10_000 - lead_import.invalid_rows - lead_import.duplicate_rows
    assert lead_import.row_errors.count() == 100
    assert_nothing_lost_or_sent_twice(clay_sim, lead_import.valid_rows)
    stats = clay_sim.stats()
    assert stats["injected_errors"] > 0 and stats["resets"] > 0  # the faults really happened

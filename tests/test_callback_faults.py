"""Issue 14 end to end, with real processes: RQ workers, the Clay simulator over HTTP, callbacks into
a live server, and the faults of the issue: the callback endpoint down, a connection dropped after
Clay read the body (taken and charged, or not taken), a worker SIGKILLed while sending, and an outage
whose breaker must probe when its cooldown ends, not at a maintenance tick.

Each test checks the final state of every lead, what Clay received twice, and the books against the
simulator's own charges: every send the simulator took (it keeps the rows, each naming its send,
`clayops_send_id`) is booked on that send at the simulator's figure, and `spent` is what the
simulator charged, plus only the sends clayops had to book as possibly charged although the
simulator never took them (`check_books`, `assert_only_doubtful_first_sends`).

The machinery (workers, maintenance passes in this process, fast clocks) is test_pipeline_faults'.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import django_rq
import pytest
from django.conf import settings
from django.db.models import Count
from django.urls import reverse
from django.utils import timezone
from rq.registry import FinishedJobRegistry

from clayops import budget, maintenance, selectors
from clayops.contract import CALLBACK_HEADER, LEAD_ID_FIELD, SEND_ID_FIELD
from clayops.delivery import resolution
from clayops.delivery.recovery import OVERDUE_REASON
from clayops.devtools.simulator import credits_for_domain, domain_of
from clayops.models import (
    Attempt,
    AuditEntry,
    CircuitBreaker,
    CircuitEvent,
    CreditReservation,
    DeadLetter,
    Lead,
    Webhook,
)
from tests.conftest import child_env
from tests.factories import make_budget, make_webhook, make_workspace
from tests.fixtures_sim import clay_sim as _clay_sim  # noqa: F401
from tests.test_pipeline_faults import (  # noqa: F401 - _fast_maintenance: autouse fixture
    MANAGE,
    WORKER_ENV,
    _fast_maintenance,
    queue_leads,
    run_until,
)
from tests.test_pipeline_faults import Workers as _Workers

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

S = Lead.State
R = CreditReservation.State
ESTIMATE = Decimal("6")  # the webhooks' credits per row, and the simulator's flat price per row
# The breaker of test_pipeline_faults' webhook.
BREAKER = {
    "failure_threshold": 5,
    "cooldown_seconds": 2,
    "half_open_max_probes": 1,
    "success_threshold": 1,
    "minimum_calls": 1000,
}


class Workers(_Workers):
    """test_pipeline_faults' workers, with any of WORKER_ENV overridden, a choice of queues, RQ's
    scheduler if asked, and each worker's output kept in `log_dir` (read it when a test fails)."""

    def __init__(
        self,
        *queues: str,
        scheduler: bool = False,
        log_dir: Path | None = None,
        **env: str,
    ) -> None:
        super().__init__()
        self.env = child_env(**{**WORKER_ENV, **env})
        self.queues = queues or ("submit", "default")
        self.scheduler = scheduler
        self.log_dir = log_dir

    def start(self, n: int = 1) -> None:
        options = ["--worker-class", "clayops.workers.RidingWorker"]
        if self.scheduler:
            options.append("--with-scheduler")
        for _ in range(n):
            log = None
            if self.log_dir is not None:
                log = (self.log_dir / f"worker-{len(self.procs)}.log").open("ab")
            try:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, MANAGE, "rqworker", *self.queues, *options],
                        env=self.env,
                        stdout=log or subprocess.DEVNULL,
                        stderr=log or subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
            finally:
                if log is not None:
                    log.close()  # the worker has its own copy

    def kill_one(self) -> None:
        """SIGKILL the first live worker (its process group: no cleanup of any kind)."""
        victim = next(proc for proc in self.procs if proc.poll() is None)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)


@pytest.fixture
def workers(tmp_path):
    """workers(*queues, scheduler=False, **env) → started later with .start(n); all stopped at the end."""
    made: list[Workers] = []

    def make(*queues: str, scheduler: bool = False, **env: str) -> Workers:
        made.append(Workers(*queues, scheduler=scheduler, log_dir=tmp_path, **env))
        return made[-1]

    yield make
    for w in made:
        w.stop()


@pytest.fixture
def sim_hook(clay_sim, live_server):
    """hook(table, ...) → a webhook of one workspace (unlimited rate, large budget) whose URL is the
    simulator's table `table`, which charges ESTIMATE per row (or by domain) and calls back
    `callback_url` (default: the live server's callback endpoint, with the shared secret)."""
    workspace = make_workspace(name="cbf", budget=make_budget(name="cbf", daily_limit=Decimal("1000000")))

    def hook(
        table: str,
        *,
        callback_url: str | None = None,
        callback_delay_s: float = 0.05,
        credits_from_domain: bool = False,
        breaker: dict | None = None,
        **fields,
    ) -> Webhook:
        webhook = make_webhook(
            workspace=workspace,
            name=table,
            url=clay_sim.webhook_url(table),
            token="tok",
            breaker={**BREAKER, **(breaker or {})},
            credits_per_row=ESTIMATE,
            **fields,
        )
        clay_sim.configure_table(
            table,
            token="tok",
            callback_url=callback_url or live_server.url + webhook.callback_path,
            callback_headers={CALLBACK_HEADER: webhook.callback_secret},
            callback_delay_s=callback_delay_s,
            credits_per_row=float(ESTIMATE),
            credits_from_domain=credits_from_domain,
        )
        return webhook

    return hook


# --- what the simulator took and charged, against clayops' books ------------------------------------


def rows_at_clay(sim) -> list[tuple[str, dict]]:
    """Every row the simulator took, accept_and_hang ones included, with its table."""
    stats = sim.stats()
    with sim.lock:
        rows = list(sim.recent_rows)
    assert len(rows) == stats["rows_accepted"], "more rows than the simulator keeps: use fewer leads"
    return rows


def clay_price(sim, table_id: str, row: dict) -> Decimal:
    """What the simulator charged for a row, from its table's settings (not from a callback)."""
    table = sim.table(table_id)
    if table["credits_from_domain"] and domain_of(row):
        return Decimal(credits_for_domain(domain_of(row)))
    return Decimal(str(table["credits_per_row"]))


def check_books(sim, webhook: Webhook) -> set[int]:
    """The books against the simulator. Returns the sends clayops booked although the simulator never
    took them (each an uncertain send that was resent: clayops cannot tell it was not taken).

    - every send the simulator took names its reservation, once, and that reservation is settled at
      the simulator's price for the row (the estimate, corrected by the callback when one came);
    - nothing is held any more; and spent = charged + what those unconfirmed sends were booked at.
    """
    charged_by_send: dict[int, Decimal] = {}
    for table_id, row in rows_at_clay(sim):
        send = row.get(SEND_ID_FIELD)
        assert isinstance(send, int), f"a row reached Clay without its send id: {row}"
        assert send not in charged_by_send, f"send {send} reached Clay twice"
        charged_by_send[send] = clay_price(sim, table_id, row)
        assert CreditReservation.objects.filter(pk=send, lead_id=row[LEAD_ID_FIELD]).exists()
    books = {
        pk: (state, charged)
        for pk, state, charged in CreditReservation.objects.values_list("pk", "state", "charged")
    }
    wrong = {
        send: (price, books[send])
        for send, price in charged_by_send.items()
        if books[send] != (R.SETTLED, price)
    }
    assert not wrong, (
        f"sends Clay charged, booked otherwise (send: (Clay's price, (state, charged))): {wrong}"
    )
    assert not [pk for pk, (state, _) in books.items() if state == R.HELD], "credits still held"
    unconfirmed = {pk for pk, (state, _) in books.items() if state == R.SETTLED and pk not in charged_by_send}
    usage = budget.usage_for(webhook.workspace.budget)
    charged = Decimal(str(sim.stats()["credits_charged"]))
    assert sum(charged_by_send.values(), Decimal("0")) == charged
    assert usage.reserved == 0
    assert usage.spent == charged + sum((books[pk][1] for pk in unconfirmed), Decimal("0")), (
        f"spent {usage.spent}, Clay charged {charged}, booked without Clay taking the row: {unconfirmed}"
    )
    return unconfirmed


def describe_sends(sim, sends) -> list[str]:
    """For a failure message: each send's lead, its state and history, and what Clay received."""
    lines = []
    for send in CreditReservation.objects.filter(pk__in=list(sends)).order_by("pk"):
        lead = Lead.objects.get(pk=send.lead_id)
        lines.append(
            f"send {send.pk} of lead {lead.pk} ({lead.state}, {lead.last_error!r}, received by Clay "
            f"{sim.received(lead.pk)}x): sends "
            + str(
                list(
                    CreditReservation.objects.filter(lead=lead).values_list(
                        "pk", "state", "charged", "actual"
                    )
                )
            )
            + "; attempts "
            + str(list(lead.attempts.order_by("pk").values_list("outcome", "error")))
        )
    return lines


def assert_only_doubtful_first_sends(sim, unconfirmed: set[int]) -> None:
    """Sends on the books that Clay never took may only be a lead's earlier send whose outcome was in
    doubt (no answer, or its worker died after marking it sent) and which was resent since: booked at
    the estimate, no callback ever naming it, and the lead received by Clay once (the resend)."""
    why = describe_sends(sim, unconfirmed)
    for send in CreditReservation.objects.filter(pk__in=list(unconfirmed)):
        assert send.charged == ESTIMATE and send.actual is None, why
        assert CreditReservation.objects.filter(lead_id=send.lead_id, pk__gt=send.pk).exists(), why
        assert sim.received(send.lead_id) == 1, why


def settle_doubtful_sends() -> None:
    """A maintenance pass as it runs once the grace period has passed for every callback."""
    later = timezone.now() + timedelta(seconds=settings.CLAYOPS_UNCERTAIN_GRACE_SECONDS + 1)
    maintenance.run(now=later)


def lead_states(**filters) -> dict[str, int]:
    return dict(Lead.objects.filter(**filters).values_list("state").annotate(n=Count("id")))


def wait_for(done, *, timeout: float) -> bool:
    """Poll done() without running any maintenance pass; whether it came true in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.1)
    return False


# --- 1. the callback endpoint is down ---------------------------------------------------------------


def test_leads_whose_callback_never_comes_become_overdue_alerted_once_per_batch_and_booked(
    sim_hook, clay_sim, workers, monkeypatch
):
    # Clay takes every row, but its callbacks find nothing listening (a closed loopback port) ...
    down = sim_hook("t_down", callback_url="http://127.0.0.1:9/clay/callback/", callback_deadline_seconds=10)
    # ... or come after the deadline (13 s for a 10 s deadline), at Clay's own price.
    late = sim_hook("t_late", callback_delay_s=13, credits_from_domain=True, callback_deadline_seconds=10)
    clay_sim.set_faults(latency_ms=5)
    down_ids = queue_leads(down, 150)
    late_ids = queue_leads(late, 50)
    ticks: list[dict] = []
    real_run = maintenance.run

    def run(**kw):
        ticks.append(real_run(**kw))
        return ticks[-1]

    monkeypatch.setattr(maintenance, "run", run)
    workers().start(2)

    run_until(
        lambda: (
            lead_states(webhook=down) == {S.OVERDUE: 150}
            and lead_states(webhook=late) == {S.ENRICHED: 50}
            and clay_sim.stats()["callbacks_pending"] == 0
        ),
        timeout=60,
    )

    stats = clay_sim.stats()
    assert stats["rows_accepted"] == 200 and stats["received_by_lead"]["duplicate_rows"] == 0
    assert stats["callbacks_sent"] == 50 and stats["callbacks_failed"] == 150
    assert all(clay_sim.received(pk) == 1 for pk in down_ids + late_ids)
    assert set(Lead.objects.filter(webhook=down).values_list("defer_reason", flat=True)) == {OVERDUE_REASON}
    # Alerted once per maintenance pass that found overdue leads, with the count of each webhook; the
    # late ones were overdue too before their callback completed them.
    flipped = [tick["callbacks_overdue"] for tick in ticks if tick["callbacks_overdue"]]
    alerts = list(AuditEntry.objects.filter(action="callbacks_overdue").order_by("pk"))
    assert flipped and [alert.count for alert in alerts] == flipped
    per_webhook: Counter[str] = Counter()
    for alert in alerts:
        assert sum(alert.detail["by_webhook"].values()) == alert.count
        per_webhook.update(alert.detail["by_webhook"])
    assert per_webhook == {str(down.pk): 150, str(late.pk): 50}
    (card,) = selectors.overview_cards(webhook_id=down.pk)
    assert card.overdue == 150
    # No callback corrected the flat estimate of the first table: spent is exactly what Clay charged.
    assert check_books(clay_sim, down) == set()
    assert stats["credits_charged"] > 150 * ESTIMATE  # the late table's prices came from callbacks

    # The operator marks them delivered: final, nothing more booked.
    spent = budget.usage_for(down.workspace.budget).spent
    assert resolution.mark_delivered(lead_ids=down_ids) == 150
    maintenance.run()
    assert lead_states() == {S.DELIVERED: 150, S.ENRICHED: 50}
    assert budget.usage_for(down.workspace.budget).spent == spent


# --- 2. Clay read the body, and the connection gave no answer -----------------------------------------


def test_a_row_clay_took_without_answering_is_resent_after_the_grace_and_both_charges_are_booked(
    sim_hook, clay_sim, workers, client, viewer
):
    # The callbacks come 10 s after Clay takes a row: after the grace (2 s) and the resend.
    hook = sim_hook(
        "t_hang", callback_delay_s=10, credits_from_domain=True, breaker={"failure_threshold": 1000}
    )
    # The first 6 requests: Clay takes the row and charges it, and answers only after the workers'
    # read timeout (2 s).
    clay_sim.set_faults(latency_ms=5, hang_seconds=4, fail_next=6, fail_next_status="accept_and_hang")
    ids = queue_leads(hook, 60)
    workers(CLAYOPS_UNCERTAIN_GRACE_SECONDS="2").start(2)

    run_until(
        lambda: lead_states() == {S.ENRICHED: 60} and clay_sim.stats()["callbacks_pending"] == 0, timeout=60
    )

    stats = clay_sim.stats()
    twice = sorted(pk for pk in ids if clay_sim.received(pk) == 2)
    assert stats["rows_uncertain"] == 6 and len(twice) == 6, stats
    assert stats["rows_accepted"] == 66 and stats["callbacks_sent"] == 66 and stats["callbacks_failed"] == 0
    assert stats["received_by_lead"]["double_charges"] == 0  # nothing resent after a 2xx
    assert all(clay_sim.received(pk) == 1 for pk in set(ids) - set(twice))
    uncertain = Attempt.objects.filter(outcome=Attempt.Outcome.UNCERTAIN)
    assert sorted(uncertain.values_list("lead_id", flat=True)) == twice
    # Each lead sent twice shows both sends, each settled at Clay's price from its own callback.
    client.force_login(viewer)
    for pk in twice:
        lead = Lead.objects.get(pk=pk)
        price = Decimal(credits_for_domain(lead.domain))
        charges = selectors.lead_detail(lead_id=pk).charges
        assert [(c.state, c.amount, c.actual, c.charged) for c in charges] == [
            (R.SETTLED, ESTIMATE, price, price)
        ] * 2
        page = client.get(reverse("dashboard:lead_detail", args=[pk])).content.decode()
        assert all(f"#{charge.pk}<" in page for charge in charges)
    # Every charge on the books: spent is exactly what Clay charged, both sends of those six included.
    assert check_books(clay_sim, hook) == set()


def test_a_row_dropped_unread_after_the_body_is_resent_and_its_first_send_booked_as_possibly_charged(
    sim_hook, clay_sim, workers
):
    hook = sim_hook("t_reset", credits_from_domain=True, breaker={"failure_threshold": 1000})
    # The first 6 requests: Clay reads the body, then resets the connection without taking the row.
    clay_sim.set_faults(latency_ms=5, fail_next=6, fail_next_status="reset")
    ids = queue_leads(hook, 60)
    workers(CLAYOPS_UNCERTAIN_GRACE_SECONDS="2").start(2)

    run_until(
        lambda: lead_states() == {S.ENRICHED: 60} and clay_sim.stats()["callbacks_pending"] == 0, timeout=60
    )

    stats = clay_sim.stats()
    assert stats["resets"] == 6 and stats["rows_accepted"] == 60 and stats["callbacks_failed"] == 0
    assert stats["received_by_lead"]["duplicate_rows"] == 0
    assert all(clay_sim.received(pk) == 1 for pk in ids)
    dropped = set(Attempt.objects.filter(outcome=Attempt.Outcome.UNCERTAIN).values_list("lead_id", flat=True))
    assert len(dropped) == 6
    # clayops cannot know at once that Clay did not take those rows: the first send of each is booked
    # at the estimate when the lead is resent (Clay may have charged it), the resend at Clay's price.
    unconfirmed = check_books(clay_sim, hook)
    assert_only_doubtful_first_sends(clay_sim, unconfirmed)
    assert len(unconfirmed) == 6
    assert (
        set(CreditReservation.objects.filter(pk__in=unconfirmed).values_list("lead_id", flat=True)) == dropped
    )
    # Once the resends' callbacks are older than the grace period and none named the first sends,
    # those come off the books: spent is exactly what Clay charged.
    settle_doubtful_sends()
    assert check_books(clay_sim, hook) == set()


# --- 3. a worker is SIGKILLed while sending ---------------------------------------------------------


def test_every_lead_is_enriched_once_and_booked_when_workers_are_killed_while_sending(
    sim_hook, clay_sim, workers, settings
):
    # Margins a loaded CI machine keeps: a live but CPU-starved worker must not look dead (stuck
    # limit) and its sent rows must not be resent (grace) before their answer and callback land.
    settings.CLAYOPS_STUCK_SUBMITTING_SECONDS = 8
    settings.CLAYOPS_UNCERTAIN_GRACE_SECONDS = 12
    hook = sim_hook("t_kill", credits_from_domain=True)
    clay_sim.set_faults(latency_ms=20)
    ids = queue_leads(hook, 600)
    pool = workers(CLAYOPS_UNCERTAIN_GRACE_SECONDS="12")
    pool.start(2)

    for accepted in (150, 350):
        run_until(lambda n=accepted: clay_sim.stats()["rows_accepted"] >= n, timeout=60)
        pool.kill_one()
    run_until(
        lambda: (
            not Lead.objects.exclude(state__in=[S.ENRICHED, S.DEAD, S.OVERDUE]).exists()
            and clay_sim.stats()["callbacks_pending"] == 0
        ),
        timeout=90,
        workers=pool,
    )

    stats = clay_sim.stats()
    assert stats["received_by_lead"]["double_charges"] == 0, stats["received_by_lead"]
    assert stats["callbacks_failed"] == 0
    dead = set(Lead.objects.filter(state=S.DEAD).values_list("pk", flat=True))
    assert dead == set(DeadLetter.objects.filter(lead_id__in=dead).values_list("lead_id", flat=True))
    assert not Lead.objects.filter(state__in=[S.DEAD, S.OVERDUE], last_error="", defer_reason="").exists()
    assert lead_states(pk__in=ids).get(S.ENRICHED, 0) + len(dead) + lead_states().get(S.OVERDUE, 0) == 600
    # A lead Clay received twice was one whose first send was in doubt (its worker died after sending).
    twice = {pk for pk in ids if clay_sim.received(pk) > 1}
    assert all(CreditReservation.objects.filter(lead_id=pk).count() >= 2 for pk in twice)
    # A send a worker marked as sent and died before Clay took it (about half the runs: one or two)
    # is booked as possibly charged when the lead is resent; once the resend's callback is older than
    # the grace period and none named that send, it comes off the books: spent is what Clay charged.
    assert_only_doubtful_first_sends(clay_sim, check_books(clay_sim, hook))
    settle_doubtful_sends()
    assert check_books(clay_sim, hook) == set()


# --- 4. the breaker's probe goes out when the cooldown ends -------------------------------------------


def probe_jobs() -> list[str]:
    """The probe_webhook jobs RQ's scheduler released, with when they ran and what they did."""
    queue = django_rq.get_queue("maintenance")
    registry = FinishedJobRegistry(queue=queue)
    jobs = [queue.fetch_job(job_id) for job_id in registry.get_job_ids()]
    return [
        f"{job.started_at:%H:%M:%S.%f} → {job.return_value()}"
        for job in sorted((j for j in jobs if j is not None), key=lambda j: j.started_at)
        if job.func_name == "clayops.jobs.probe_webhook"
    ]


def test_the_breaker_probes_when_its_cooldown_ends_without_a_maintenance_tick(sim_hook, clay_sim, workers):
    cooldown = 3
    hook = sim_hook("t_probe", breaker={"cooldown_seconds": cooldown})
    clay_sim.set_faults(latency_ms=20)
    queue_leads(hook, 300)
    workers("submit", "maintenance", "default", scheduler=True).start(1)

    # No maintenance pass from here until the breaker closed again: only the scheduled probe can
    # move it out of open.
    assert wait_for(lambda: clay_sim.stats()["rows_accepted"] >= 20, timeout=30), lead_states()
    clay_sim.set_faults(outage_script=[{"start_after_s": 0, "duration_s": 5, "mode": "503"}])
    breaker_row = CircuitBreaker.objects.get(webhook=hook)

    def transitions() -> list[tuple[str, datetime]]:
        return list(
            CircuitEvent.objects.filter(breaker=breaker_row)
            .order_by("at", "pk")
            .values_list("to_state", "at")
        )

    closed_again = wait_for(
        lambda: (moves := transitions()) and moves[-1][0] == "closed" and len(moves) > 1, timeout=20
    )
    events = transitions()
    story = [f"{at:%H:%M:%S.%f} {to}" for to, at in events] + ["probe jobs:", *probe_jobs()]
    assert closed_again, story
    opens = [i for i, (to, _) in enumerate(events) if to == "open"]
    assert opens, story
    for i in opens:
        assert i + 1 < len(events) and events[i + 1][0] == "half_open", story
        waited = (events[i + 1][1] - events[i][1]).total_seconds()
        assert cooldown - 0.05 <= waited <= cooldown + 1.5, (waited, story)
    assert clay_sim.stats()["outage_active"] is None

    run_until(
        lambda: (
            not Lead.objects.exclude(state__in=[S.ACCEPTED, S.ENRICHED, S.DEAD]).exists()
            and clay_sim.stats()["callbacks_pending"] == 0
        ),
        timeout=60,
    )
    assert clay_sim.stats()["received_by_lead"]["double_charges"] == 0
    assert lead_states() == {S.ENRICHED: 300}
    assert check_books(clay_sim, hook) == set()

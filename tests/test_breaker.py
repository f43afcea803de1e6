"""The circuit breaker: transitions and their events, the sliding failure-rate window, cooldown,
probes (several workers, stuck probes), and the operator's force-open and reset."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import django_rq
import pytest
from django.conf import settings

from clayops import breaker
from clayops.models import AuditEntry, CircuitBreaker, CircuitEvent, Webhook
from tests.conftest import child_env
from tests.factories import make_webhook

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
S = CircuitBreaker.State


def row(webhook) -> CircuitBreaker:
    return CircuitBreaker.objects.get(webhook=webhook)


def events(webhook) -> list[tuple[str, str]]:
    return list(
        CircuitEvent.objects.filter(breaker__webhook=webhook)
        .order_by("id")
        .values_list("from_state", "to_state")
    )


def fail(webhook, n=1, *, at=T0, probe=False, reason="HTTP 503"):
    for _ in range(n):
        breaker.record_failure(webhook.pk, probe=probe, reason=reason, now=at)


def succeed(webhook, n=1, *, at=T0, probe=False):
    for _ in range(n):
        breaker.record_success(webhook.pk, probe=probe, now=at)


def open_breaker(webhook, *, at=T0):
    fail(webhook, row(webhook).failure_threshold, at=at)
    assert row(webhook).state == S.OPEN


def test_it_admits_everything_while_closed(webhook):
    admission = breaker.allow(webhook.pk, now=T0)
    assert (admission.allowed, admission.probe, admission.state) == (True, False, S.CLOSED)


def test_it_creates_a_missing_breaker_closed(workspace):
    hook = make_webhook(workspace=workspace, name="new", breaker=False)
    assert breaker.allow(hook.pk, now=T0).allowed
    assert row(hook).state == S.CLOSED


def test_it_opens_after_five_consecutive_failures_and_records_why(webhook):
    fail(webhook, 4)
    assert row(webhook).state == S.CLOSED
    fail(webhook, 1, reason="HTTP 502: bad gateway")
    assert row(webhook).state == S.OPEN
    assert row(webhook).opened_at == T0
    event = CircuitEvent.objects.get(breaker__webhook=webhook)
    assert (event.from_state, event.to_state, event.at) == (S.CLOSED, S.OPEN, T0)
    assert "5 consecutive failures" in event.reason and "HTTP 502" in event.reason


def test_it_forgets_consecutive_failures_after_a_success(webhook):
    fail(webhook, 4)
    succeed(webhook)
    fail(webhook, 4)
    assert row(webhook).state == S.CLOSED
    assert row(webhook).consecutive_failures == 4


def alternate(webhook, *, failures: int, successes: int, at: datetime) -> None:
    """Failures never two in a row, so only the rate can open the breaker."""
    for i in range(max(failures, successes)):
        if i < successes:
            succeed(webhook, at=at)
        if i < failures:
            fail(webhook, at=at)


def test_it_opens_on_the_failure_rate_only_with_enough_calls(webhook):
    alternate(webhook, failures=9, successes=10, at=T0)  # 19 calls, 47 %
    assert row(webhook).state == S.CLOSED
    fail(webhook, at=T0 + timedelta(seconds=1))  # 20 calls, 50 %: the defaults' threshold
    assert row(webhook).state == S.OPEN
    assert "10 of 20 calls failed in 60s" in CircuitEvent.objects.get().reason


def test_it_needs_the_minimum_calls_before_the_rate_counts(webhook):
    alternate(webhook, failures=4, successes=0, at=T0)  # 100 % of 4 calls, but < 20 calls...
    succeed(webhook)
    alternate(webhook, failures=4, successes=0, at=T0)
    assert row(webhook).state == S.CLOSED  # ... and never 5 in a row


def test_it_slides_the_rate_window(webhook):
    alternate(webhook, failures=9, successes=9, at=T0)  # 18 calls at 50 %
    later = T0 + timedelta(seconds=61)
    succeed(webhook, at=later)
    fail(webhook, at=later)
    assert row(webhook).state == S.CLOSED  # the first 18 calls left the 60 s window
    # Within the window the same pattern opens it.
    other = make_webhook(workspace=webhook.workspace, name="other")
    alternate(other, failures=9, successes=9, at=T0)
    succeed(other, at=T0 + timedelta(seconds=30))
    fail(other, at=T0 + timedelta(seconds=30))
    assert row(other).state == S.OPEN


def test_it_refuses_without_calling_until_the_cooldown_passed(webhook):
    open_breaker(webhook)
    admission = breaker.allow(webhook.pk, now=T0 + timedelta(seconds=20))
    assert (admission.allowed, admission.state, admission.retry_in) == (False, S.OPEN, 10.0)
    assert breaker.cooldown_remaining(row(webhook), now=T0 + timedelta(seconds=20)) == 10.0
    assert not breaker.allow(webhook.pk, now=T0 + timedelta(seconds=29.9)).allowed
    assert row(webhook).state == S.OPEN
    probe = breaker.allow(webhook.pk, now=T0 + timedelta(seconds=30))
    assert (probe.allowed, probe.probe, probe.state) == (True, True, S.HALF_OPEN)
    assert events(webhook)[-1] == (S.OPEN, S.HALF_OPEN)


def test_it_closes_after_enough_probe_successes(webhook):
    open_breaker(webhook)
    t = T0 + timedelta(seconds=30)
    assert breaker.allow(webhook.pk, now=t).probe
    succeed(webhook, at=t, probe=True)
    assert row(webhook).state == S.HALF_OPEN  # 1 of 2
    assert breaker.allow(webhook.pk, now=t).probe
    succeed(webhook, at=t, probe=True)
    assert row(webhook).state == S.CLOSED
    assert events(webhook) == [(S.CLOSED, S.OPEN), (S.OPEN, S.HALF_OPEN), (S.HALF_OPEN, S.CLOSED)]
    assert (row(webhook).consecutive_failures, row(webhook).opened_at) == (0, None)


def test_it_starts_a_clean_window_after_closing(webhook):
    alternate(webhook, failures=9, successes=9, at=T0)  # 50 % over 18 calls...
    fail(webhook, 5, at=T0)  # ...then it opens on consecutive failures
    t = T0 + timedelta(seconds=30)
    for _ in range(2):
        breaker.allow(webhook.pk, now=t)
        succeed(webhook, at=t, probe=True)
    assert row(webhook).state == S.CLOSED
    # The old failures are still within 60 s, but they do not re-open the recovered breaker.
    fail(webhook, 2, at=t)
    succeed(webhook, at=t)
    fail(webhook, 2, at=t)
    assert row(webhook).state == S.CLOSED


def test_it_reopens_when_a_probe_fails_and_restarts_the_cooldown(webhook):
    open_breaker(webhook)
    t = T0 + timedelta(seconds=45)
    assert breaker.allow(webhook.pk, now=t).probe
    fail(webhook, at=t, probe=True, reason="timeout")
    current = row(webhook)
    assert (current.state, current.opened_at, current.half_open_in_flight) == (S.OPEN, t, 0)
    assert not breaker.allow(webhook.pk, now=t + timedelta(seconds=29)).allowed
    assert breaker.allow(webhook.pk, now=t + timedelta(seconds=30)).probe
    assert events(webhook)[-2:] == [(S.HALF_OPEN, S.OPEN), (S.OPEN, S.HALF_OPEN)]
    assert "probe failed: timeout" in CircuitEvent.objects.filter(to_state=S.OPEN).first().reason


def test_it_admits_at_most_the_probe_limit_across_workers(webhook):
    CircuitBreaker.objects.filter(webhook=webhook).update(half_open_max_probes=2)
    open_breaker(webhook)
    t = T0 + timedelta(seconds=31)
    admissions = [breaker.allow(webhook.pk, now=t) for _ in range(5)]  # five workers ask
    assert [a.probe for a in admissions] == [True, True, False, False, False]
    refused = admissions[-1]
    assert (refused.allowed, refused.state, refused.reason) == (
        False,
        S.HALF_OPEN,
        "half-open: probe limit reached",
    )
    assert refused.retry_in and refused.retry_in > 0
    succeed(webhook, at=t, probe=True)  # one probe answers: one slot frees
    assert breaker.allow(webhook.pk, now=t).probe
    assert not breaker.allow(webhook.pk, now=t).allowed


def test_it_gives_a_cancelled_probe_slot_back_without_counting_it(webhook):
    open_breaker(webhook)
    t = T0 + timedelta(seconds=30)
    assert breaker.allow(webhook.pk, now=t).probe
    assert not breaker.allow(webhook.pk, now=t).allowed
    breaker.cancel_probe(webhook.pk)  # e.g. the budget refused the probe's lead
    current = row(webhook)
    assert (current.state, current.half_open_in_flight, current.half_open_successes) == (S.HALF_OPEN, 0, 0)
    assert breaker.allow(webhook.pk, now=t).probe
    breaker.cancel_probe(webhook.pk)
    breaker.cancel_probe(webhook.pk)  # an extra cancel cannot free a slot nobody holds
    assert row(webhook).half_open_in_flight == 0


def test_it_frees_the_slot_of_a_probe_whose_worker_died(webhook):
    open_breaker(webhook)
    t = T0 + timedelta(seconds=30)
    assert breaker.allow(webhook.pk, now=t).probe  # ... and its worker is SIGKILLed
    assert not breaker.allow(webhook.pk, now=t + timedelta(seconds=59)).allowed
    assert breaker.allow(webhook.pk, now=t + timedelta(seconds=61)).probe
    assert row(webhook).half_open_in_flight == 1
    assert events(webhook)[-1] == (S.HALF_OPEN, S.HALF_OPEN)


def test_it_ignores_late_results_of_calls_admitted_before_it_opened(webhook):
    open_breaker(webhook)
    succeed(webhook, 5, at=T0 + timedelta(seconds=1))  # non-probe calls that were already out
    fail(webhook, 5, at=T0 + timedelta(seconds=1))
    current = row(webhook)
    assert (current.state, current.opened_at) == (S.OPEN, T0)  # the cooldown did not restart
    assert len(events(webhook)) == 1


def test_it_still_opens_on_consecutive_failures_when_redis_lost_the_window(webhook):
    fail(webhook, 3)
    django_rq.get_connection("default").flushall()
    fail(webhook, 2)
    assert row(webhook).state == S.OPEN


def test_it_stays_forced_open_until_reset_and_audits_both(webhook, operator):
    breaker.force_open(webhook.pk, by=operator, reason="Clay maintenance window", now=T0)
    assert not breaker.force_open(webhook.pk, by=operator, now=T0)  # already paused: no new event
    much_later = T0 + timedelta(hours=2)
    admission = breaker.allow(webhook.pk, now=much_later)
    assert (admission.allowed, admission.state, admission.retry_in) == (False, S.FORCED_OPEN, None)
    assert row(webhook).state == S.FORCED_OPEN  # no probe, no half-open
    assert breaker.cooldown_remaining(row(webhook), now=T0) == 0.0

    assert breaker.reset(webhook.pk, by=operator, now=much_later)
    assert breaker.allow(webhook.pk, now=much_later).allowed
    assert events(webhook) == [(S.CLOSED, S.FORCED_OPEN), (S.FORCED_OPEN, S.CLOSED)]
    assert set(CircuitEvent.objects.values_list("by", flat=True)) == {operator.pk}
    assert CircuitEvent.objects.filter(to_state=S.FORCED_OPEN).get().reason == "Clay maintenance window"
    actions = list(AuditEntry.objects.order_by("id").values_list("action", "user"))
    assert actions == [
        ("breaker_force_open", operator.pk),
        ("breaker_force_open", operator.pk),
        ("breaker_reset", operator.pk),
    ]
    assert AuditEntry.objects.filter(action="breaker_reset").get().detail["from"] == S.FORCED_OPEN


def test_it_clears_the_counters_on_reset(webhook, operator):
    open_breaker(webhook)
    breaker.reset(webhook.pk, by=operator, now=T0)
    current = row(webhook)
    assert (current.state, current.consecutive_failures, current.opened_at) == (S.CLOSED, 0, None)
    fail(webhook, 4)
    assert row(webhook).state == S.CLOSED


ALLOWER = """
import json, multiprocessing, sys
from datetime import datetime
import django
django.setup()
from django.db import connection, connections
from clayops import breaker
from clayops.models import CircuitBreaker

def worker(webhook_id, now, ready, go, results):
    CircuitBreaker.objects.filter(webhook_id=webhook_id).exists()  # own connection, opened before the race
    ready.wait()
    go.wait()
    results.put(breaker.allow(webhook_id, now=now).probe)
    connection.close()

webhook_id, now, n = int(sys.argv[1]), datetime.fromisoformat(sys.argv[2]), int(sys.argv[3])
connections.close_all()
ctx = multiprocessing.get_context("fork")
ready, go, results = ctx.Barrier(n + 1), ctx.Event(), ctx.Queue()
procs = [ctx.Process(target=worker, args=(webhook_id, now, ready, go, results)) for _ in range(n)]
for p in procs:
    p.start()
ready.wait()
go.set()
out = [results.get(timeout=60) for _ in procs]
for p in procs:
    p.join(10)
print(json.dumps(out))
"""


@pytest.fixture
def shared_webhook(transactional_db) -> Webhook:
    return make_webhook(breaker={"half_open_max_probes": 2})


@pytest.mark.slow  # a launcher process that forks eight workers
def test_it_admits_at_most_the_probe_limit_when_worker_processes_race(shared_webhook):
    open_breaker(shared_webhook)
    t = T0 + timedelta(seconds=30)
    result = subprocess.run(
        [sys.executable, "-c", ALLOWER, str(shared_webhook.pk), t.isoformat(), "8"],
        cwd=settings.BASE_DIR,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    probes = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(probes) == [False] * 6 + [True] * 2  # 8 processes at once: exactly 2 probes
    assert row(shared_webhook).half_open_in_flight == 2
    assert events(shared_webhook) == [(S.CLOSED, S.OPEN), (S.OPEN, S.HALF_OPEN)]  # one transition, one event


def test_it_admits_a_whole_job_while_closed_with_one_admission(webhook):
    probes, admission = breaker.allow_many(webhook.pk, 50, now=T0)
    assert probes == [False] * 50 and admission.state == S.CLOSED


def test_it_admits_at_most_the_probe_limit_of_a_job_when_half_open(webhook):
    CircuitBreaker.objects.filter(webhook=webhook).update(half_open_max_probes=3)
    open_breaker(webhook)
    t = T0 + timedelta(seconds=30)
    probes, refusal = breaker.allow_many(webhook.pk, 10, now=t)
    assert probes == [True, True, True]
    assert (refusal.allowed, refusal.state) == (False, S.HALF_OPEN)
    assert row(webhook).half_open_in_flight == 3
    assert breaker.allow_many(webhook.pk, 10, now=t)[0] == []  # another worker gets none


def test_it_refuses_a_whole_job_while_open(webhook):
    open_breaker(webhook)
    probes, refusal = breaker.allow_many(webhook.pk, 10, now=T0 + timedelta(seconds=5))
    assert probes == [] and (refusal.state, refusal.retry_in) == (S.OPEN, 25.0)


def test_it_counts_a_batch_of_successes_in_the_rate_window_and_resets_failures(webhook):
    fail(webhook, 4, at=T0)
    breaker.record_successes(webhook.pk, 3, now=T0)
    assert row(webhook).consecutive_failures == 0
    breaker.reset(webhook.pk, now=T0)
    CircuitBreaker.objects.filter(webhook=webhook).update(failure_threshold=100)  # only the rate opens it
    breaker.record_successes(webhook.pk, 10, now=T0)  # ten calls, not one
    fail(webhook, 9, at=T0)
    assert row(webhook).state == S.CLOSED  # 9 of 19 calls
    fail(webhook, at=T0)
    assert row(webhook).state == S.OPEN  # 10 of 20: the minimum of calls was reached by the batch
    breaker.record_successes(webhook.pk, 5, now=T0)  # stale news from calls admitted while closed
    assert row(webhook).state == S.OPEN

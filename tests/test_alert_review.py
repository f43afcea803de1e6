# ruff: noqa: F811 (the receivers are fixtures imported from tests/test_alerts.py)
"""Review of the alerting: each test below failed before its fix (or checks what held), named by
what it shows. Real receivers on loopback (the fixtures of tests/test_alerts.py), real Redis."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import django_rq
import pytest
import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from rq import Worker
from rq.exceptions import StopRequested

from clayops import alerts, breaker, enqueue, jobs, liveness
from clayops import budget as budget_svc
from clayops.alert_models import Alert
from clayops.models import Webhook
from clayops.workers import RidingCronScheduler, RidingWorker
from tests.factories import make_webhook
from tests.test_alert_rules import _alert_jobs, _noon, _open_breaker
from tests.test_alerts import channels, http, smtp  # noqa: F401 (fixtures)

T0 = timezone.now().replace(microsecond=0)
DOWN = "redis://127.0.0.1:1/0"  # nothing listens there


# --- reopen ---------------------------------------------------------------------------------------


def test_a_reopened_breaker_alert_is_not_at_once_still_open_for_long(webhook, http, channels):
    """breaker_open_long counts from the alert's opened_at; a reopen kept the first occurrence's, so
    a breaker open again for a minute was reported "still open for more than 10 minutes"."""
    _open_breaker(webhook, T0)
    alerts.evaluate(now=T0)
    breaker.reset(webhook.pk)
    alerts.evaluate(now=T0 + timedelta(minutes=1))
    _open_breaker(webhook, T0 + timedelta(minutes=30))
    alerts.evaluate(now=T0 + timedelta(minutes=30))  # reopens breaker_open
    alerts.evaluate(now=T0 + timedelta(minutes=31))  # open again for one minute
    assert not Alert.objects.filter(rule="breaker_open_long").exists()
    assert not any("still open" in t.lower() for t in http.titles)
    alerts.evaluate(now=T0 + timedelta(minutes=41))  # ten minutes of this occurrence: now it is
    assert Alert.objects.filter(rule="breaker_open_long", state="open").exists()


@pytest.mark.django_db(transaction=True)
def test_many_workers_reopening_at_once_send_one_reopened(smtp, http, channels):
    """Held: the conditional UPDATE under alert_one_open lets one worker reopen; the others neither
    reopen nor open a second alert (SQLite and PostgreSQL)."""
    hook = make_webhook()
    Webhook.objects.filter(pk=hook.pk).update(paused_until=T0 + timedelta(hours=1))
    alerts.evaluate(now=T0, only=["pauses"])
    Webhook.objects.filter(pk=hook.pk).update(paused_until=None)
    alerts.evaluate(now=T0 + timedelta(minutes=1), only=["pauses"])
    Webhook.objects.filter(pk=hook.pk).update(paused_until=T0 + timedelta(hours=3))
    start, errors = threading.Barrier(8), []

    def worker():
        try:
            start.wait()
            alerts.evaluate(now=T0 + timedelta(minutes=2), only=["pauses"])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    reopened = [t for t in http.titles if "REOPENED" in t]
    assert reopened == ["[clayops] REOPENED (1x): Rate limited by Clay: people"]
    assert Alert.objects.count() == 1 and Alert.objects.get().state == "open"


def test_a_reopen_keeps_the_mute_and_clears_the_acknowledgement(webhook, operator, http, channels):
    """Held: muted and acknowledged, resolved, back within the window: reopened quietly (the mute kept),
    the acknowledgement cleared, so reminders resume once the mute is over."""
    _open_breaker(webhook, T0)
    alerts.evaluate(now=T0)
    alert = Alert.objects.get(rule="breaker_open")
    alerts.acknowledge(alert.pk, by=operator, now=T0)
    alerts.mute(alert.pk, minutes=90, by=operator, now=T0)
    breaker.reset(webhook.pk)
    alerts.evaluate(now=T0 + timedelta(minutes=1))
    _open_breaker(webhook, T0 + timedelta(minutes=5))
    alerts.evaluate(now=T0 + timedelta(minutes=5))
    alert.refresh_from_db()
    assert alert.state == "open" and alert.reopened == 1
    assert alert.acknowledged_at is None and alert.muted_until == T0 + timedelta(minutes=90)
    assert http.titles == ["[clayops] OPEN: Breaker open: people"]  # nothing while muted
    _open_breaker(webhook, T0 + timedelta(minutes=95))
    alerts.evaluate(now=T0 + timedelta(minutes=95), only=["breakers"])
    assert any("STILL OPEN" in t and "Breaker open: people" in t for t in http.titles)


# --- budget run-out -------------------------------------------------------------------------------


def test_a_budget_that_ran_out_does_not_resolve_its_run_out_alert(budget, webhook, http, channels):
    """At 100 % the projection stops (budget_100 says it), but the open budget_runout alert was then
    resolved: "RESOLVED: … runs out before the reset" at the moment it ran out."""
    noon = _noon(budget)
    for minutes in (30, 20, 10):
        budget_svc.reserve(budget=budget, amount=Decimal("100"), now=noon - timedelta(minutes=minutes))
    alerts.evaluate(now=noon, only=["budgets"])
    assert Alert.objects.filter(rule="budget_runout", state="open").exists()
    budget_svc.reserve(budget=budget, amount=Decimal("700"), now=noon + timedelta(minutes=1))
    alerts.evaluate(now=noon + timedelta(minutes=2), only=["budgets"])
    assert Alert.objects.filter(rule="budget_runout", state="open").exists()
    assert not any("RESOLVED: Budget test runs out" in t for t in http.titles)
    alerts.evaluate(now=noon + timedelta(days=1), only=["budgets"])  # a new day resolves it
    assert not Alert.objects.filter(rule="budget_runout", state="open").exists()


def test_a_budget_set_to_a_limit_of_0_is_at_every_threshold(budget, webhook, http, channels):
    """A 0 limit (allowed: "nothing may be reserved") was skipped: no budget alert while every lead
    waited, and the open budget_80 was even "RESOLVED" when the limit went down to 0."""
    budget_svc.reserve(budget=budget, amount=Decimal("850"), now=timezone.now())
    alerts.evaluate(only=["budgets"])
    assert Alert.objects.filter(rule="budget_80", state="open").exists()
    budget_svc.set_daily_limit(budget=budget, limit=Decimal("0"))
    alerts.evaluate(only=["budgets"])
    rules = set(Alert.objects.filter(state="open").values_list("rule", flat=True))
    assert {"budget_80", "budget_90", "budget_100"} <= rules
    assert not any("RESOLVED" in t for t in http.titles)
    assert "a limit of 0" in Alert.objects.get(rule="budget_100").message


# --- liveness -------------------------------------------------------------------------------------


def _both_open(http) -> None:
    conn = liveness.redis_connection()
    for key in (liveness.LAST_TICK_KEY, liveness.WATCH_STARTED_KEY, liveness.NO_WORKER_SINCE_KEY):
        conn.delete(key)
    alerts.evaluate_liveness(now=timezone.now() - timedelta(minutes=10))
    alerts.evaluate_liveness(now=timezone.now())
    assert set(Alert.objects.filter(state="open").values_list("rule", flat=True)) == {"no_tick", "no_worker"}


def test_no_tick_and_no_worker_stay_open_when_redis_forgets_its_clocks(db, http, channels):
    """A flushed (or restarted empty) Redis, or the keys' 24 h expiry, restarted both clocks at 0:
    no_tick and no_worker resolved though no tick had finished and no worker was alive."""
    _both_open(http)
    liveness.redis_connection().flushdb()
    alerts.evaluate_liveness(now=timezone.now())
    assert set(Alert.objects.filter(state="open").values_list("rule", flat=True)) == {"no_tick", "no_worker"}
    assert not any("RESOLVED" in t for t in http.titles)

    # A day without ticks: the keys expired (KEEP_SECONDS), the same.
    conn = liveness.redis_connection()
    conn.delete(liveness.WATCH_STARTED_KEY, liveness.NO_WORKER_SINCE_KEY)
    alerts.evaluate_liveness(now=timezone.now())
    assert Alert.objects.filter(state="open").count() == 2

    # What does resolve them: a tick, a worker.
    liveness.record_tick()
    worker = Worker(["maintenance"], connection=django_rq.get_connection("maintenance"))
    worker.register_birth()
    try:
        alerts.evaluate_liveness(now=timezone.now())
    finally:
        worker.register_death()
    assert not Alert.objects.filter(state="open").exists()


# --- the transition checks ------------------------------------------------------------------------


def test_a_transition_after_its_check_started_gets_a_check_of_its_own(
    webhook, http, channels, django_capture_on_commit_callbacks
):
    """Transitions within 2 s shared one check even when that check had already run: a second breaker
    opening a second after the first waited for the next tick."""
    other = make_webhook(name="second", workspace=webhook.workspace)
    queue = django_rq.get_queue("maintenance")
    with django_capture_on_commit_callbacks(execute=True):
        _open_breaker(webhook, timezone.now())
    assert len(_alert_jobs()) == 1
    job = _alert_jobs()[0]
    queue.remove(job)  # a worker takes it and runs it
    jobs.evaluate_alerts(*job.args)
    assert http.titles == ["[clayops] OPEN: Breaker open: people"]
    with django_capture_on_commit_callbacks(execute=True):
        _open_breaker(other, timezone.now())  # within the 2 s
    assert [j.args for j in _alert_jobs()] == [(["breakers"],)]
    with django_capture_on_commit_callbacks(execute=True):
        breaker.record_failure(other.pk, probe=False, reason="x", now=timezone.now())
    assert len(_alert_jobs()) == 1  # still waiting: shared


def test_alert_check_with_redis_down_never_breaks_the_callers_transaction(
    webhook, monkeypatch, django_capture_on_commit_callbacks
):
    """Held: inside a transaction, with Redis unreachable, the check is dropped with a warning; the
    transaction commits and later on-commit callbacks still run."""
    down = redis.Redis.from_url(DOWN, socket_connect_timeout=0.2)
    monkeypatch.setattr(django_rq, "get_connection", lambda *a, **k: down)
    after = []
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        Webhook.objects.filter(pk=webhook.pk).update(rows_sent=7)
        enqueue.alert_check("rows")
        transaction.on_commit(lambda: after.append(1))
    assert after == [1]
    assert Webhook.objects.get(pk=webhook.pk).rows_sent == 7


# --- the riding worker ----------------------------------------------------------------------------


def test_a_worker_forgotten_by_a_flushed_redis_registers_again_at_its_heartbeat(db):
    """FLUSHDB (or eviction) without a dropped connection: RQ's heartbeat only refreshes a partial
    hash, so the worker stayed out of the registry: no_worker fired while it worked."""
    conn = django_rq.get_connection("maintenance")
    worker = RidingWorker(["maintenance"], connection=conn)
    worker.register_birth()
    try:
        conn.flushdb()
        worker.heartbeat()
        assert [w.name for w in Worker.all(connection=conn)] == [worker.name]
        assert liveness.live_workers(conn) == 1
    finally:
        worker.register_death()


def test_a_worker_whose_redis_drops_again_while_it_registers_waits_again(db, monkeypatch):
    """Redis answered the ping and went away again during the re-registration: the ConnectionError
    escaped _recover and RQ's loop quit ("found an unhandled exception")."""
    conn = redis.Redis.from_url(settings.REDIS_URL)  # its own client: the patch stays on it
    worker = RidingWorker(["maintenance"], connection=conn)
    worker.register_birth()
    worker.heartbeat()
    conn.flushdb()  # it comes back empty
    real, calls = conn.exists, []

    def flaky(*keys):
        calls.append(keys)
        if len(calls) == 1:
            raise redis.exceptions.ConnectionError("gone again")
        return real(*keys)

    monkeypatch.setattr(conn, "exists", flaky)
    try:
        worker._recover()
        assert len(calls) == 2
        assert worker.name in [w.name for w in Worker.all(connection=conn)]
    finally:
        worker.register_death()


def test_a_stop_during_the_wait_and_a_teardown_without_redis(db):
    """Held: a stop requested while Redis is away ends the wait (StopRequested); teardown with Redis
    down does not raise."""
    worker = RidingWorker(["maintenance"], connection=django_rq.get_connection("maintenance"))
    worker.connection = redis.Redis.from_url(DOWN, socket_connect_timeout=0.2)
    worker._stop_requested = True
    with pytest.raises(StopRequested):
        worker._recover()
    worker.teardown()


def test_a_stop_signal_during_the_cron_watch_stops_the_cron(db, monkeypatch):
    """RQ's cron stops by raising StopRequested from its signal handler; arriving during the liveness
    check (Apprise sends may take seconds), it was caught by the check's `except Exception` and the
    cron went on as if nothing had been asked."""
    import django.db

    monkeypatch.setattr(django.db, "close_old_connections", lambda: None)  # the test's transaction
    cron = RidingCronScheduler(connection=liveness.redis_connection())

    def signalled(**kwargs):
        cron._request_stop(15, None)  # SIGTERM now

    monkeypatch.setattr(alerts, "evaluate_liveness", signalled)
    with pytest.raises(StopRequested):
        cron._watch()

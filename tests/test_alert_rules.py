# ruff: noqa: F811 (the receivers are fixtures imported from tests/test_alerts.py)
"""Alert rules beyond the basics of tests/test_alerts.py: a problem that comes back reopens its alert,
thresholds edited in the admin, the projected run-out of the budget, no tick / no worker (watched by
`manage.py cron`), and evaluation on the transition itself instead of at the next tick. Real
receivers on loopback (the fixtures of tests/test_alerts.py)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from decimal import Decimal

import django_rq
import pytest
from django.test import Client
from django.utils import timezone
from rq import Worker

from clayops import alerts, breaker, jobs, liveness
from clayops import budget as budget_svc
from clayops.alert_models import Alert, AlertNotification, AlertSettings
from clayops.models import AuditEntry, CreditBudget, LeadImport, Webhook
from clayops.workers import RidingCronScheduler
from tests.factories import make_lead, make_user
from tests.test_alerts import channels, http, smtp  # noqa: F401 (fixtures)

T0 = timezone.now().replace(microsecond=0)


def _open_breaker(hook: Webhook, at: datetime) -> None:
    for _ in range(hook.breaker.failure_threshold):
        breaker.record_failure(hook.pk, probe=False, reason="HTTP 503", now=at)


# --- reopen -------------------------------------------------------------------------------------


def test_a_problem_that_comes_back_within_the_window_reopens_its_alert(webhook, http, channels):
    _open_breaker(webhook, T0)
    alerts.evaluate(now=T0)
    breaker.reset(webhook.pk)
    alerts.evaluate(now=T0 + timedelta(minutes=1))
    _open_breaker(webhook, T0 + timedelta(minutes=5))
    alerts.evaluate(now=T0 + timedelta(minutes=5))

    assert http.titles == [
        "[clayops] OPEN: Breaker open: people",
        "[clayops] RESOLVED: Breaker open: people",
        "[clayops] REOPENED (1x): Breaker open: people",
    ]
    alert = Alert.objects.get(rule="breaker_open")  # one history, not two rows
    assert alert.state == "open" and alert.reopened == 1 and alert.resolved_at is None
    assert AlertNotification.objects.filter(kind="reopened", ok=True).count() == 2  # mail and hook


def test_after_the_reopen_window_it_is_a_new_alert(webhook, http, channels):
    _open_breaker(webhook, T0)
    alerts.evaluate(now=T0)
    breaker.reset(webhook.pk)
    alerts.evaluate(now=T0 + timedelta(minutes=1))
    _open_breaker(webhook, T0 + timedelta(minutes=62))  # the window is 60 minutes
    alerts.evaluate(now=T0 + timedelta(minutes=62))
    assert http.titles[-1] == "[clayops] OPEN: Breaker open: people"
    assert Alert.objects.filter(rule="breaker_open").count() == 2


def test_a_reopen_racing_a_new_open_alert_sends_nothing_twice(webhook, http, channels):
    _open_breaker(webhook, T0)
    alerts.evaluate(now=T0)
    breaker.reset(webhook.pk)
    alerts.evaluate(now=T0 + timedelta(minutes=1))
    target = f"webhook:{webhook.pk}"
    # Another worker opened a fresh alert between our look and our reopen: the one-open constraint
    # refuses the reopen and this call notifies nothing.
    Alert.objects.create(rule="breaker_open", target=target, title="x")
    sent = len(http.titles)
    assert alerts._reopen("breaker_open", target, "t", "m", severity="critical", now=T0) is None
    assert len(http.titles) == sent
    assert Alert.objects.filter(rule="breaker_open", state="open").count() == 1


# --- thresholds in the admin --------------------------------------------------------------------


def test_thresholds_saved_in_the_admin_replace_the_settings(budget, webhook, http, channels):
    budget_svc.reserve(budget=budget, amount=Decimal("850"))
    alerts.evaluate()
    assert Alert.objects.filter(rule="budget_80", state="open").exists()

    AlertSettings(
        budget_thresholds="50,95",
        reminder_minutes=0,
        breaker_open_minutes=3,
        dlq_per_hour=5,
        no_tick_minutes=5,
        no_worker_minutes=5,
        reopen_minutes=0,
    ).save()
    alerts.evaluate()
    assert set(
        Alert.objects.filter(state="open", rule__startswith="budget_").values_list("rule", flat=True)
    ) >= {"budget_50"}
    assert not Alert.objects.filter(state="open", rule="budget_80").exists()  # a threshold removed
    assert "[clayops] OPEN: Budget test at 50 % of today's limit" in http.titles


def test_the_admin_edits_the_alert_settings_and_refuses_nonsense(db):
    admin = make_user("root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    add = client.get("/admin/clayops/alertsettings/add/")
    assert add.status_code == 200 and b'value="80,90,100"' in add.content  # starts from the settings
    form = {
        "budget_thresholds": "70,100",
        "reminder_minutes": "30",
        "breaker_open_minutes": "5",
        "dlq_per_hour": "10",
        "no_tick_minutes": "3",
        "no_worker_minutes": "4",
        "reopen_minutes": "15",
    }
    bad = client.post("/admin/clayops/alertsettings/add/", {**form, "budget_thresholds": "eighty"})
    assert bad.status_code == 200 and b"comma-separated whole percentages" in bad.content
    assert not AlertSettings.objects.exists()
    assert client.post("/admin/clayops/alertsettings/add/", form).status_code == 302
    saved = AlertSettings.current()
    assert saved.thresholds() == [70, 100] and saved.no_tick_minutes == 3
    assert alerts.budget_thresholds() == [70, 100]
    assert AuditEntry.objects.filter(action="admin_create", target__contains="Alert thresholds").exists()
    assert client.get("/admin/clayops/alertsettings/add/").status_code == 403  # one row only


# --- projected run-out --------------------------------------------------------------------------


def _noon(budget: CreditBudget) -> datetime:
    local = timezone.now().astimezone(budget.tz())
    return local.replace(hour=12, minute=0, second=0, microsecond=0)


def test_the_budget_is_projected_to_run_out_before_the_reset(budget, webhook, http, channels):
    noon = _noon(budget)
    # 300 credits in the last hour: the 700 left last 2 h 20 min at that pace, until 14:20.
    for minutes in (30, 20, 10):
        budget_svc.reserve(budget=budget, amount=Decimal("100"), now=noon - timedelta(minutes=minutes))
    alerts.evaluate(now=noon, only=["budgets"])
    alert = Alert.objects.get(rule="budget_runout", state="open")
    assert "300 credits an hour" in alert.message and "14:20" in alert.message
    assert "[clayops] OPEN: Budget test runs out before the reset" in http.titles


def test_a_slow_pace_raises_no_run_out_and_a_faster_one_resolving_later_does(budget, webhook, http, channels):
    noon = _noon(budget)
    budget_svc.reserve(budget=budget, amount=Decimal("20"), now=noon - timedelta(minutes=50))
    alerts.evaluate(now=noon, only=["budgets"])  # 20 an hour: 980 left last past midnight
    assert not Alert.objects.filter(rule="budget_runout").exists()
    budget_svc.reserve(budget=budget, amount=Decimal("500"), now=noon - timedelta(minutes=5))
    alerts.evaluate(now=noon, only=["budgets"])
    assert Alert.objects.filter(rule="budget_runout", state="open").exists()
    # An hour and a half on, nothing more was spent: the pace is 0, the alert resolves.
    alerts.evaluate(now=noon + timedelta(minutes=90), only=["budgets"])
    assert not Alert.objects.filter(rule="budget_runout", state="open").exists()


# --- no tick, no worker -------------------------------------------------------------------------


def test_no_tick_and_no_worker_alert_and_resolve(db, http, channels):
    conn = liveness.redis_connection()
    for key in (liveness.LAST_TICK_KEY, liveness.WATCH_STARTED_KEY, liveness.NO_WORKER_SINCE_KEY):
        conn.delete(key)
    started = timezone.now() - timedelta(minutes=10)
    alerts.evaluate_liveness(now=started)  # first look: nothing yet, the clocks start
    assert not Alert.objects.exists()
    alerts.evaluate_liveness(now=started + timedelta(minutes=4))
    assert not Alert.objects.exists()  # 4 minutes < 5
    alerts.evaluate_liveness(now=timezone.now())
    assert set(Alert.objects.filter(state="open").values_list("rule", flat=True)) == {"no_tick", "no_worker"}
    assert "[clayops] OPEN: No maintenance tick" in http.titles
    assert "[clayops] OPEN: No live RQ worker" in http.titles

    worker = Worker(["maintenance"], connection=django_rq.get_connection("maintenance"))
    worker.register_birth()
    try:
        liveness.record_tick()
        alerts.evaluate_liveness(now=timezone.now())
    finally:
        worker.register_death()
    assert not Alert.objects.filter(state="open").exists()
    assert "[clayops] RESOLVED: No maintenance tick" in http.titles
    assert "[clayops] RESOLVED: No live RQ worker" in http.titles


def test_the_maintenance_tick_leaves_liveness_to_the_cron(db):
    conn = liveness.redis_connection()
    conn.delete(liveness.LAST_TICK_KEY)
    conn.set(liveness.WATCH_STARTED_KEY, f"{time.time() - 3600:.3f}")
    alerts.evaluate()  # the tick's groups
    assert not Alert.objects.filter(rule__in=["no_tick", "no_worker"]).exists()


def test_the_cron_scheduler_watches_liveness_itself(db, http, channels, monkeypatch):
    import django.db

    monkeypatch.setattr(django.db, "close_old_connections", lambda: None)  # the test's transaction
    conn = liveness.redis_connection()
    conn.delete(liveness.LAST_TICK_KEY)
    conn.set(liveness.WATCH_STARTED_KEY, f"{time.time() - 3600:.3f}")
    cron = RidingCronScheduler(connection=conn)
    cron._watch()
    assert Alert.objects.filter(rule="no_tick", state="open").exists()
    cron._watch()  # within WATCH_SECONDS: not evaluated again
    assert len([t for t in http.titles if "No maintenance tick" in t]) == 1


# --- on the transition --------------------------------------------------------------------------


def _alert_jobs() -> list:
    queue = django_rq.get_queue("maintenance")
    return [j for j in queue.get_jobs() if j.func_name == "clayops.jobs.evaluate_alerts"]


def test_a_breaker_opening_enqueues_its_alert_check_at_once(
    webhook, http, channels, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        _open_breaker(webhook, timezone.now())
    queued = _alert_jobs()
    assert [j.args for j in queued] == [(["breakers"],)]  # several transitions, one check
    assert django_rq.get_queue("maintenance").job_ids[0] == queued[0].id  # ahead of the tick's work
    jobs.evaluate_alerts(*queued[0].args)
    assert http.titles == ["[clayops] OPEN: Breaker open: people"]


def test_pauses_filling_up_failed_imports_and_refused_reservations_ask_for_their_checks(
    budget, webhook, django_capture_on_commit_callbacks
):
    from clayops import retry
    from clayops.delivery.guards import mark_full_if_at_cap

    with django_capture_on_commit_callbacks(execute=True):
        retry.pause_webhook(webhook.pk, until=timezone.now() + timedelta(seconds=30))
        Webhook.objects.filter(pk=webhook.pk).update(rows_sent=webhook.row_cap)
        mark_full_if_at_cap(webhook)
        leads = [make_lead(webhook=webhook).pk for _ in range(2)]
        assert budget_svc.reserve_many(budget=budget, amount=Decimal("600"), lead_ids=leads) != {}
    groups = sorted(j.args[0][0] for j in _alert_jobs())
    assert groups == ["budgets", "pauses", "rows"]  # the second lead did not fit: budgets

    imp = LeadImport.objects.create(filename="x.csv", state=LeadImport.State.RUNNING)
    from clayops.imports.run import _ImportRun

    run = _ImportRun(imp, imp.heartbeat_at)
    with django_capture_on_commit_callbacks(execute=True):
        run.fail("boom")
    assert "imports" in [j.args[0][0] for j in _alert_jobs()]


@pytest.mark.parametrize("group", ["nonsense", ""])
def test_an_unknown_group_evaluates_nothing(db, group):
    assert alerts.evaluate(only=[group]) == 0

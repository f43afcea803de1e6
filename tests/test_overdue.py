"""Leads whose outcome clayops cannot know alone: callbacks that never come (overdue) and sends with
no answer (uncertain); the operator's wait / resend / mark delivered; the books of a lead sent twice."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import django_rq
import httpx
import pytest
import respx
from django.urls import reverse
from django.utils import timezone
from rq.registry import ScheduledJobRegistry

from clayops import breaker, budget, delivery, maintenance
from clayops.contract import CALLBACK_HEADER
from clayops.delivery import resolution
from clayops.models import AuditEntry, CircuitBreaker, CreditReservation, Lead
from tests.factories import make_lead, make_leads

S = Lead.State


def usage(webhook):
    return budget.usage_for(webhook.workspace.budget)


def callback(client, webhook, row):
    return client.post(
        reverse("clay-callback", args=[webhook.pk]),
        data=json.dumps(row),
        content_type="application/json",
        headers={CALLBACK_HEADER: webhook.callback_secret},
    )


@respx.mock
def send_ok(webhook, n=1):
    respx.post(webhook.url).mock(return_value=httpx.Response(200, json={"status": "ok"}))
    leads = make_leads(n, webhook=webhook)
    delivery.submit_batch([lead.pk for lead in leads])
    return [Lead.objects.get(pk=lead.pk) for lead in leads]


def test_it_marks_accepted_leads_overdue_after_the_webhooks_deadline_and_alerts_once(webhook):
    webhook.callback_deadline_seconds = 600
    webhook.save()
    leads = send_ok(webhook, 3)
    assert all(lead.state == S.ACCEPTED for lead in leads)

    maintenance.run(now=timezone.now() + timedelta(seconds=590))
    assert Lead.objects.filter(state=S.ACCEPTED).count() == 3  # not before the deadline

    later = timezone.now() + timedelta(seconds=601)
    assert maintenance.run(now=later)["callbacks_overdue"] == 3
    maintenance.run(now=later + timedelta(seconds=10))  # a second tick changes nothing
    assert Lead.objects.filter(state=S.OVERDUE).count() == 3
    alert = AuditEntry.objects.get(action="callbacks_overdue")
    assert alert.count == 3 and alert.detail == {"by_webhook": {str(webhook.pk): 3}}


def test_it_completes_an_overdue_lead_when_its_callback_arrives_late(client, webhook):
    (lead,) = send_ok(webhook)
    maintenance.run(now=timezone.now() + timedelta(seconds=webhook.callback_deadline_seconds + 1))
    lead.refresh_from_db()
    assert lead.state == S.OVERDUE

    response = callback(client, webhook, {"clayops_lead_id": lead.pk, "company": "Acme", "credits_used": 8})
    assert response.status_code == 200 and response.json()["result"] == "enriched"
    lead.refresh_from_db()
    assert lead.state == S.ENRICHED and lead.enriched == {"company": "Acme"}
    assert usage(webhook).spent == Decimal("8")


def test_it_waits_longer_for_an_overdue_lead_when_the_operator_asks(webhook, operator):
    (lead,) = send_ok(webhook)
    Lead.objects.filter(pk=lead.pk).update(state=S.OVERDUE)
    before = timezone.now()

    assert resolution.wait_longer(lead_ids=[lead.pk], by=operator) == 1

    lead.refresh_from_db()
    assert lead.state == S.ACCEPTED
    assert lead.next_attempt_at >= before + timedelta(seconds=webhook.callback_deadline_seconds)
    assert AuditEntry.objects.get(action="overdue_wait").user == operator


@respx.mock
def test_it_resends_an_overdue_lead_through_the_budget_as_a_second_charge(webhook, operator):
    route = respx.post(webhook.url).mock(return_value=httpx.Response(200, json={"status": "ok"}))
    lead = make_lead(0, webhook=webhook)
    delivery.submit_batch([lead.pk])
    Lead.objects.filter(pk=lead.pk).update(state=S.OVERDUE)
    forecast = resolution.resend_forecast([lead.pk])
    assert forecast["count"] == 1 and forecast["credits"] == Decimal("6")

    assert resolution.resend(lead_ids=[lead.pk], by=operator) == 1
    delivery.submit_batch([lead.pk])

    lead.refresh_from_db()
    assert lead.state == S.ACCEPTED and route.call_count == 2
    sends = list(CreditReservation.objects.filter(lead=lead).order_by("id").values_list("state", "amount"))
    assert sends == [("settled", Decimal("6")), ("settled", Decimal("6"))]  # both sends on the books
    assert usage(webhook).spent == Decimal("12")
    assert AuditEntry.objects.get(action="lead_resend").detail == {"credits_forecast": "6.00"}


@respx.mock
def test_it_books_both_charges_when_an_uncertain_send_and_its_resend_both_reached_clay(
    client, webhook, settings
):
    route = respx.post(webhook.url).mock(side_effect=httpx.ReadTimeout("no answer"))
    lead = make_lead(0, webhook=webhook)
    delivery.submit_batch([lead.pk])
    first = CreditReservation.objects.get(lead=lead)
    assert json.loads(route.calls.last.request.content)["clayops_send_id"] == first.pk

    # Grace over, no callback: the first send is booked (Clay may have charged it), then resent.
    maintenance.run(now=timezone.now() + timedelta(seconds=settings.CLAYOPS_UNCERTAIN_GRACE_SECONDS + 1))
    first.refresh_from_db()
    assert first.state == "settled" and usage(webhook).spent == Decimal("6")
    route.side_effect = None
    route.return_value = httpx.Response(200, json={"status": "ok"})
    delivery.submit_batch([lead.pk])
    second = CreditReservation.objects.filter(lead=lead).exclude(pk=first.pk).get()
    assert json.loads(route.calls.last.request.content)["clayops_send_id"] == second.pk

    # Both sends reached Clay: each callback books Clay's figure on its own send.
    row = {"clayops_lead_id": lead.pk, "company": "Acme"}
    assert callback(client, webhook, {**row, "clayops_send_id": second.pk, "credits_used": 7}).json() == {
        "ok": True,
        "result": "enriched",
    }
    late = callback(client, webhook, {**row, "clayops_send_id": first.pk, "credits_used": 9})
    assert late.json()["result"] == "duplicate"
    again = callback(client, webhook, {**row, "clayops_send_id": first.pk, "credits_used": 9})
    assert again.json()["result"] == "duplicate"  # a repeated callback changes nothing

    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.actual, second.actual) == (Decimal("9"), Decimal("7"))
    assert usage(webhook).spent == Decimal("16") and usage(webhook).reserved == 0


def test_it_ignores_a_send_id_of_another_lead(client, webhook):
    (lead, other) = send_ok(webhook, 2)
    other_send = CreditReservation.objects.get(lead=other)
    callback(
        client, webhook, {"clayops_lead_id": lead.pk, "clayops_send_id": other_send.pk, "credits_used": 3}
    )
    other_send.refresh_from_db()
    assert other_send.actual is None  # the other lead's books are untouched


@respx.mock
def test_it_marks_an_uncertain_lead_delivered_and_books_its_send(webhook, operator):
    respx.post(webhook.url).mock(side_effect=httpx.ReadTimeout("no answer"))
    lead = make_lead(0, webhook=webhook)
    delivery.submit_batch([lead.pk])

    assert resolution.mark_delivered(lead_ids=[lead.pk], by=operator) == 1

    lead.refresh_from_db()
    assert lead.state == S.DELIVERED
    assert CreditReservation.objects.get(lead=lead).state == "settled"
    assert usage(webhook).spent == Decimal("6") and usage(webhook).reserved == 0


def test_it_schedules_the_first_probe_for_the_end_of_the_cooldown(webhook):
    row = breaker.get_breaker(webhook.pk)
    row.cooldown_seconds = 30
    row.save()
    before = timezone.now()
    for _ in range(row.failure_threshold):
        breaker.record_failure(webhook.pk, probe=False, reason="503")

    registry = ScheduledJobRegistry(queue=django_rq.get_queue("maintenance"))
    (job_id,) = registry.get_job_ids()
    when = registry.get_scheduled_time(job_id)
    job = django_rq.get_queue("maintenance").fetch_job(job_id)
    assert job.func_name == "clayops.jobs.probe_webhook" and list(job.args) == [webhook.pk]
    assert before + timedelta(seconds=29) <= when <= timezone.now() + timedelta(seconds=31)


def test_it_releases_deferred_leads_at_the_workspaces_rate_when_the_probe_runs(webhook, settings):
    budget.set_daily_limit(budget=webhook.workspace.budget, limit=Decimal("100000"))
    settings.CLAYOPS_TICK_SECONDS = 10
    settings.CLAYOPS_DRAIN_RATE = 0
    webhook.workspace.rate_limit = 10
    webhook.workspace.save()
    make_leads(300, webhook=webhook, state=S.DEFERRED)

    moved = delivery.resume_webhook(webhook.pk)["offline_drained"]

    assert moved == 200  # two ticks at 10 leads/s: sending never runs dry between ticks
    oldest = list(Lead.objects.order_by("pk").values_list("state", flat=True)[:200])
    assert set(oldest) == {S.QUEUED}  # oldest first


def test_it_caps_the_offline_drain_at_the_operators_drain_rate(webhook, settings):
    budget.set_daily_limit(budget=webhook.workspace.budget, limit=Decimal("100000"))
    settings.CLAYOPS_TICK_SECONDS = 10
    settings.CLAYOPS_DRAIN_RATE = 2
    webhook.workspace.rate_limit = 10
    webhook.workspace.save()
    make_leads(300, webhook=webhook, state=S.DEFERRED)

    assert delivery.drain_offline_step(now=timezone.now()) == 40


def test_it_leaves_room_for_leads_already_waiting_in_the_queue(webhook, settings):
    budget.set_daily_limit(budget=webhook.workspace.budget, limit=Decimal("100000"))
    settings.CLAYOPS_TICK_SECONDS = 10
    settings.CLAYOPS_DRAIN_RATE = 0
    webhook.workspace.rate_limit = 10
    webhook.workspace.save()
    make_leads(120, webhook=webhook, state=S.QUEUED)  # a new import waiting to go out
    make_leads(300, webhook=webhook, state=S.DEFERRED)

    assert delivery.drain_offline_step(now=timezone.now()) == 80


@pytest.mark.parametrize("action", ["wait", "resend", "deliver"])
def test_it_lets_only_operators_resolve_leads(client, webhook, viewer, action):
    lead = make_lead(0, webhook=webhook, state=S.OVERDUE)
    client.force_login(viewer)
    response = client.post(reverse("dashboard:leads_resolve"), {"action": action, "state": "overdue"})
    assert response.status_code == 403
    lead.refresh_from_db()
    assert lead.state == S.OVERDUE


def test_it_resolves_overdue_leads_in_bulk_from_the_leads_page(client, webhook, operator):
    leads = make_leads(3, webhook=webhook, state=S.OVERDUE)
    other = make_lead(9, webhook=webhook, state=S.ACCEPTED)
    client.force_login(operator)

    page = client.get(reverse("dashboard:leads"), {"state": "overdue"})
    assert page.status_code == 200
    assert b"Callbacks overdue" in page.content and b"Resend 3 (18 credits)" in page.content

    response = client.post(reverse("dashboard:leads_resolve"), {"action": "deliver", "state": "overdue"})
    assert response.status_code == 302
    assert set(Lead.objects.filter(pk__in=[x.pk for x in leads]).values_list("state", flat=True)) == {
        S.DELIVERED
    }
    other.refresh_from_db()
    assert other.state == S.ACCEPTED


def test_it_resolves_one_lead_from_its_page(client, webhook, operator):
    lead, sibling = make_leads(2, webhook=webhook, state=S.OVERDUE)
    client.force_login(operator)
    detail = client.get(reverse("dashboard:lead_detail", args=[lead.pk]))
    assert b"Callback overdue" in detail.content

    client.post(
        reverse("dashboard:leads_resolve"), {"action": "resend", "state": "overdue", "ids": [lead.pk]}
    )

    lead.refresh_from_db()
    sibling.refresh_from_db()
    assert (lead.state, sibling.state) == (S.QUEUED, S.OVERDUE)


def test_it_refuses_an_unknown_action_with_400(client, operator):
    client.force_login(operator)
    response = client.post(reverse("dashboard:leads_resolve"), {"action": "explode", "state": "overdue"})
    assert response.status_code == 400


def test_it_counts_overdue_and_uncertain_leads_on_the_overview(client, webhook, viewer):
    make_leads(2, webhook=webhook, state=S.OVERDUE)
    soon = timezone.now() + timedelta(minutes=5)
    make_lead(5, webhook=webhook, state=S.UNCERTAIN, next_attempt_at=soon)
    client.force_login(viewer)

    page = client.get(reverse("dashboard:overview")).content.decode()

    assert "<strong>2</strong> callbacks overdue" in page
    assert "<strong>1</strong> uncertain</a>: next automatic resend" in page
    assert soon.isoformat(timespec="seconds")[:19] in page


def test_it_shows_half_open_once_the_cooldown_is_over(client, webhook, viewer):
    breaker.force_open(webhook.pk, reason="t")
    CircuitBreaker.objects.filter(webhook=webhook).update(
        state="open", opened_at=timezone.now() - timedelta(seconds=3600)
    )
    client.force_login(viewer)
    page = client.get(reverse("dashboard:overview")).content.decode()
    assert "Cooldown over: the next request is a probe" in page and "Half-open" in page


def test_it_reschedules_a_probe_that_runs_before_the_cooldown_ends(webhook):
    """RQ's scheduler may release a job up to a second early: the probe comes back, not lost."""
    row = breaker.get_breaker(webhook.pk)
    row.cooldown_seconds = 30
    row.save()
    for _ in range(row.failure_threshold):
        breaker.record_failure(webhook.pk, probe=False, reason="503")
    registry = ScheduledJobRegistry(queue=django_rq.get_queue("maintenance"))
    for job_id in registry.get_job_ids():
        registry.remove(job_id)
    make_leads(3, webhook=webhook, state=S.DEFERRED)

    assert delivery.resume_webhook(webhook.pk) == {"rescheduled": 1}

    assert Lead.objects.filter(state=S.DEFERRED).count() == 3  # nothing released while cooling down
    (job_id,) = registry.get_job_ids()
    assert registry.get_scheduled_time(job_id) >= timezone.now() + timedelta(seconds=28)


@respx.mock
def test_it_takes_a_doubtful_first_send_off_the_books_when_its_callback_never_comes(
    client, webhook, settings
):
    route = respx.post(webhook.url).mock(side_effect=httpx.ReadTimeout("no answer"))
    lead = make_lead(0, webhook=webhook)
    delivery.submit_batch([lead.pk])
    grace = timedelta(seconds=settings.CLAYOPS_UNCERTAIN_GRACE_SECONDS + 1)
    maintenance.run(now=timezone.now() + grace)  # resent: the first send booked as possibly charged
    first = CreditReservation.objects.get(lead=lead)
    assert first.doubtful and usage(webhook).spent == Decimal("6")
    route.side_effect = None
    route.return_value = httpx.Response(200, json={"status": "ok"})
    delivery.submit_batch([lead.pk])
    second = CreditReservation.objects.exclude(pk=first.pk).get(lead=lead)
    callback(client, webhook, {"clayops_lead_id": lead.pk, "clayops_send_id": second.pk, "credits_used": 7})
    assert usage(webhook).spent == Decimal("13")

    maintenance.run(now=timezone.now() + grace / 2)
    assert usage(webhook).spent == Decimal("13")  # not before the grace period
    maintenance.run(now=timezone.now() + grace)
    first.refresh_from_db()
    assert first.state == "released" and usage(webhook).spent == Decimal("7")  # what Clay charged

    # Clay did take it after all: its callback books it again.
    callback(client, webhook, {"clayops_lead_id": lead.pk, "clayops_send_id": first.pk, "credits_used": 5})
    assert usage(webhook).spent == Decimal("12")

"""Submission through the guards, with Clay mocked at the HTTP layer by respx (httpx's `responses`)."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
import respx
from django.utils import timezone

from clayops import breaker, budget, delivery, maintenance
from clayops.models import (
    Attempt,
    AuditEntry,
    CircuitBreaker,
    CreditReservation,
    DeadLetter,
    HealthSample,
    Lead,
    Webhook,
)
from tests.factories import make_lead, make_leads, make_webhook

S = Lead.State


@pytest.fixture(autouse=True)
def _inline(settings):
    # Unit tests run inside one transaction: keep every chunk on this thread's connection.
    settings.CLAYOPS_SEND_CONCURRENCY = 1
    settings.CLAYOPS_MAX_ATTEMPTS = 3


def usage(webhook):
    return budget.usage_for(webhook.workspace.budget)


@respx.mock
def test_it_sends_the_row_with_lead_id_and_token_then_settles_credits(webhook):
    route = respx.post(webhook.url).mock(return_value=httpx.Response(200, json={"status": "ok"}))
    lead = make_lead(0, webhook=webhook)

    assert delivery.submit_batch([lead.pk]) == {"accepted": 1}

    request = route.calls.last.request
    assert request.headers["x-clay-webhook-auth"] == "tok-123"
    send = CreditReservation.objects.get(lead=lead)  # the send's id travels with the row
    assert json.loads(request.content) == {**lead.row, "clayops_lead_id": lead.pk, "clayops_send_id": send.pk}
    lead.refresh_from_db()
    assert lead.state == S.ACCEPTED and lead.accepted_at is not None
    # The callback is due within the webhook's deadline; past it the lead becomes overdue.
    assert lead.next_attempt_at == lead.accepted_at + timedelta(seconds=webhook.callback_deadline_seconds)
    assert usage(webhook).spent == Decimal("6") and usage(webhook).reserved == 0
    attempt = Attempt.objects.get(lead=lead)
    assert attempt.status_code == 200 and attempt.outcome == "accepted"
    assert HealthSample.objects.get(webhook=webhook).successes == 1
    webhook.refresh_from_db()
    assert webhook.rows_sent == 1


@respx.mock
def test_it_never_sends_a_lead_twice_when_the_job_runs_again(webhook):
    route = respx.post(webhook.url).mock(return_value=httpx.Response(200))
    leads = make_leads(3, webhook=webhook)
    ids = [lead.pk for lead in leads]

    delivery.submit_batch(ids)
    assert delivery.submit_batch(ids) == {}

    assert route.call_count == 3
    assert usage(webhook).spent == Decimal("18")


@respx.mock
def test_it_schedules_a_retry_with_backoff_on_5xx_and_releases_credits(webhook):
    respx.post(webhook.url).mock(return_value=httpx.Response(503))
    lead = make_lead(0, webhook=webhook)

    delivery.submit_batch([lead.pk])

    lead.refresh_from_db()
    assert lead.state == S.RETRY_WAIT and lead.attempt_count == 1
    assert lead.error_class == "server_error"
    assert lead.next_attempt_at > timezone.now() - timedelta(seconds=1)
    assert usage(webhook).reserved == 0 and usage(webhook).spent == 0
    webhook.refresh_from_db()
    assert webhook.rows_sent == 0
    assert HealthSample.objects.get(webhook=webhook).failures == 1


@respx.mock
def test_it_moves_a_lead_to_the_dlq_when_transient_retries_end(webhook, settings):
    settings.CLAYOPS_DLQ_RETRY_DELAY_SECONDS = 90
    respx.post(webhook.url).mock(return_value=httpx.Response(500))
    lead = make_lead(0, webhook=webhook)
    for _ in range(3):
        Lead.objects.filter(pk=lead.pk).update(state=S.QUEUED)  # as the maintenance tick would
        before = timezone.now()
        delivery.submit_batch([lead.pk])
    after = timezone.now()

    lead.refresh_from_db()
    assert lead.state == S.DEAD and lead.attempt_count == 3
    entry = DeadLetter.objects.get(lead=lead)
    assert entry.state == "pending" and entry.error_class == "server_error" and entry.status_code == 500
    assert entry.max_retries == 3 and entry.retry_count == 0
    # The first automatic retry waits the configured delay (doubling with each later retry).
    assert before + timedelta(seconds=90) <= entry.next_retry_at <= after + timedelta(seconds=90)
    assert Attempt.objects.filter(lead=lead).count() == 3


@respx.mock
def test_it_sends_permanent_errors_straight_to_the_dlq_without_retry(webhook):
    respx.post(webhook.url).mock(return_value=httpx.Response(422, text="bad json"))
    lead = make_lead(0, webhook=webhook)

    delivery.submit_batch([lead.pk])

    lead.refresh_from_db()
    assert lead.state == S.DEAD and lead.attempt_count == 1
    entry = DeadLetter.objects.get(lead=lead)
    assert entry.error_class == "invalid_payload" and entry.next_retry_at is None and entry.max_retries == 0
    assert CircuitBreaker.objects.get(webhook=webhook).consecutive_failures == 0


@respx.mock
def test_it_pauses_every_webhook_of_the_workspace_on_429_retry_after(webhook):
    other = make_webhook(workspace=webhook.workspace, name="other")
    respx.post(webhook.url).mock(return_value=httpx.Response(429, headers={"Retry-After": "7"}))
    lead = make_lead(0, webhook=webhook)
    before = timezone.now()

    delivery.submit_batch([lead.pk])

    lead.refresh_from_db()
    assert lead.state == S.RETRY_WAIT and lead.error_class == "rate_limited"
    for hook in (webhook, other):
        hook.refresh_from_db()
        assert before + timedelta(seconds=6) < hook.paused_until < before + timedelta(seconds=9)
    assert CircuitBreaker.objects.get(webhook=webhook).consecutive_failures == 0
    assert not HealthSample.objects.filter(webhook=webhook, failures__gt=0).exists()
    # While paused, the next lead waits without a request.
    second = make_lead(1, webhook=webhook)
    assert delivery.submit_batch([second.pk]) == {"deferred": 1}
    assert respx.calls.call_count == 1


@pytest.mark.parametrize(("header", "low", "high"), [("0", 0.5, 1.5), ("soon", 4, 6)])
@respx.mock
def test_it_pauses_one_second_for_retry_after_zero_and_five_for_garbage(webhook, header, low, high):
    respx.post(webhook.url).mock(return_value=httpx.Response(429, headers={"Retry-After": header}))
    lead = make_lead(0, webhook=webhook)
    before = timezone.now()

    delivery.submit_batch([lead.pk])

    webhook.refresh_from_db()
    assert before + timedelta(seconds=low) < webhook.paused_until < before + timedelta(seconds=high)


@respx.mock
def test_it_keeps_an_uncertain_send_until_the_grace_period_passes(webhook, settings):
    respx.post(webhook.url).mock(side_effect=httpx.ReadTimeout("no answer"))
    lead = make_lead(0, webhook=webhook)

    delivery.submit_batch([lead.pk])

    lead.refresh_from_db()
    assert lead.state == S.UNCERTAIN
    reservation = CreditReservation.objects.get(lead=lead)
    assert reservation.state == "held"  # the row may be at Clay: credits stay reserved
    maintenance.run()
    lead.refresh_from_db()
    assert lead.state == S.UNCERTAIN  # not resent before the grace period
    maintenance.run(now=timezone.now() + timedelta(seconds=settings.CLAYOPS_UNCERTAIN_GRACE_SECONDS + 1))
    lead.refresh_from_db()
    reservation.refresh_from_db()
    # Resent: the first send may have been charged by Clay, so it stays on the books as spent.
    assert lead.state == S.QUEUED and reservation.state == "settled"
    assert usage(webhook).spent == Decimal("6") and usage(webhook).reserved == 0


@respx.mock
def test_it_defers_without_calling_clay_while_the_breaker_is_open(webhook):
    route = respx.post(webhook.url).mock(return_value=httpx.Response(200))
    breaker.force_open(webhook.pk, reason="test")
    leads = make_leads(2, webhook=webhook)

    delivery.submit_batch([lead.pk for lead in leads])

    assert route.call_count == 0
    assert set(Lead.objects.values_list("state", flat=True)) == {S.DEFERRED}
    assert usage(webhook).reserved == 0


@respx.mock
def test_it_defers_leads_past_the_budget_and_resumes_them_when_the_limit_rises(webhook):
    route = respx.post(webhook.url).mock(return_value=httpx.Response(200))
    credit_budget = webhook.workspace.budget
    credit_budget.daily_limit = Decimal("60")
    credit_budget.save()
    leads = make_leads(12, webhook=webhook)

    delivery.submit_batch([lead.pk for lead in leads])

    assert route.call_count == 10
    assert Lead.objects.filter(state=S.DEFERRED).count() == 2
    assert usage(webhook).spent == Decimal("60")
    budget.set_daily_limit(budget=credit_budget, limit=Decimal("120"))
    assert delivery.drain_offline_step(now=timezone.now()) == 2
    delivery.submit_batch([lead.pk for lead in leads])
    assert route.call_count == 12
    assert Lead.objects.filter(state=S.ACCEPTED).count() == 12


@respx.mock
def test_it_fails_over_when_clay_says_the_webhook_is_gone(webhook):
    backup = make_webhook(workspace=webhook.workspace, name="backup", priority=200)
    respx.post(webhook.url).mock(return_value=httpx.Response(404, text="not found"))
    ok = respx.post(backup.url).mock(return_value=httpx.Response(200))
    lead = make_lead(0, webhook=webhook)

    delivery.submit_batch([lead.pk])
    webhook.refresh_from_db()
    assert not webhook.is_active and "404" in webhook.broken_reason
    delivery.submit_batch([lead.pk])

    lead.refresh_from_db()
    assert lead.state == S.ACCEPTED and lead.webhook == backup
    assert ok.call_count == 1


@respx.mock
def test_it_marks_a_webhook_full_at_its_row_cap_and_uses_the_next(webhook):
    Webhook.objects.filter(pk=webhook.pk).update(row_cap=1)
    backup = make_webhook(workspace=webhook.workspace, name="backup", priority=200)
    first = respx.post(webhook.url).mock(return_value=httpx.Response(200))
    second = respx.post(backup.url).mock(return_value=httpx.Response(200))
    leads = make_leads(2, webhook=webhook)

    delivery.submit_batch([lead.pk for lead in leads])
    delivery.submit_batch([lead.pk for lead in leads])

    webhook.refresh_from_db()
    assert webhook.is_full and webhook.rows_sent == 1
    assert first.call_count == 1 and second.call_count == 1
    assert Lead.objects.filter(state=S.ACCEPTED).count() == 2


@respx.mock
def test_it_pauses_spending_for_the_workspace_on_402(webhook):
    respx.post(webhook.url).mock(return_value=httpx.Response(402, text="out of credits"))
    lead = make_lead(0, webhook=webhook)

    delivery.submit_batch([lead.pk])

    lead.refresh_from_db()
    webhook.workspace.refresh_from_db()
    assert lead.state == S.DEFERRED and "402" in lead.defer_reason
    assert webhook.workspace.paused_until > timezone.now()
    assert not DeadLetter.objects.exists()


@respx.mock
def test_it_sends_batches_as_one_json_array_in_batch_mode(webhook):
    Webhook.objects.filter(pk=webhook.pk).update(batch_size=3)
    route = respx.post(webhook.url).mock(return_value=httpx.Response(200))
    leads = make_leads(5, webhook=webhook)

    delivery.submit_batch([lead.pk for lead in leads])

    assert route.call_count == 2
    bodies = [json.loads(call.request.content) for call in route.calls]
    assert [len(body) for body in bodies] == [3, 2]
    assert sorted(row["clayops_lead_id"] for body in bodies for row in body) == sorted(
        lead.pk for lead in leads
    )


def test_it_recovers_leads_a_dead_worker_left_in_submitting(webhook, settings):
    never_sent, sent = make_leads(2, webhook=webhook)
    old = timezone.now() - timedelta(seconds=settings.CLAYOPS_STUCK_SUBMITTING_SECONDS + 5)
    Lead.objects.filter(pk=never_sent.pk).update(state=S.SUBMITTING, state_changed_at=old, claim_token="t1")
    Lead.objects.filter(pk=sent.pk).update(
        state=S.SUBMITTING, state_changed_at=old, submitted_at=old, claim_token="t2"
    )

    assert delivery.recover_stuck(now=timezone.now()) == 2

    never_sent.refresh_from_db()
    sent.refresh_from_db()
    assert never_sent.state == S.QUEUED
    assert sent.state == S.UNCERTAIN  # may have reached Clay: not resent before the grace period
    assert sent.next_attempt_at > timezone.now()


@respx.mock
def test_it_sends_a_job_concurrently_and_books_every_lead_once(webhook, settings):
    settings.CLAYOPS_SEND_CONCURRENCY = 8
    lock, active, peak = threading.Lock(), [0], [0]

    def clay(request):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        return httpx.Response(200)

    route = respx.post(webhook.url).mock(side_effect=clay)
    leads = make_leads(30, webhook=webhook)

    assert delivery.submit_batch([lead.pk for lead in leads]) == {"accepted": 30}

    assert route.call_count == 30 and 1 < peak[0] <= 8
    sent = sorted(json.loads(call.request.content)["clayops_lead_id"] for call in route.calls)
    assert sent == sorted(lead.pk for lead in leads)  # each lead exactly once
    assert set(Lead.objects.values_list("state", flat=True)) == {S.ACCEPTED}
    assert usage(webhook).spent == Decimal("180") and usage(webhook).reserved == 0
    assert set(CreditReservation.objects.values_list("state", flat=True)) == {"settled"}
    assert Attempt.objects.filter(outcome="accepted").count() == 30
    # Per-minute samples: a run that crosses a minute boundary writes two.
    assert sum(HealthSample.objects.filter(webhook=webhook).values_list("successes", flat=True)) == 30
    webhook.refresh_from_db()
    assert webhook.rows_sent == 30


@respx.mock
def test_it_stops_sending_the_rest_of_a_job_once_the_breaker_opens(webhook):
    route = respx.post(webhook.url).mock(return_value=httpx.Response(503))
    leads = make_leads(10, webhook=webhook)
    ids = [lead.pk for lead in leads]

    counts = delivery.submit_batch(ids)

    threshold = CircuitBreaker.objects.get(webhook=webhook).failure_threshold
    assert route.call_count == threshold == 5  # then the circuit opened: no more calls to Clay
    assert counts == {"retry": 5, "requeued": 5}
    assert Lead.objects.filter(state=S.RETRY_WAIT).count() == 5
    assert Lead.objects.filter(state=S.QUEUED, submitted_at__isnull=True).count() == 5
    assert usage(webhook).reserved == 0 and usage(webhook).spent == 0
    webhook.refresh_from_db()
    assert webhook.rows_sent == 0
    # The requeued leads' next job defers them while the circuit cools down.
    assert delivery.submit_batch(ids) == {"deferred": 5}
    assert route.call_count == 5


@respx.mock
def test_it_takes_a_rate_token_for_each_request_just_before_sending(webhook, settings):
    settings.CLAYOPS_SEND_CONCURRENCY = 8
    webhook.workspace.rate_limit = 10
    webhook.workspace.burst = 1
    webhook.workspace.save()
    seen = []
    route = respx.post(webhook.url).mock(
        side_effect=lambda request: seen.append(time.monotonic()) or httpx.Response(200)
    )
    leads = make_leads(6, webhook=webhook)

    # The Sender's own path (a job's leads go to the workspace's pump instead, test_pacing_pump): used
    # when no pump took the tokens beforehand, e.g. a limit set while the job was planning.
    from clayops.delivery.pump import deliver_now

    assert deliver_now([lead.pk for lead in leads]) == {"accepted": 6}

    # Eight threads could send all six at once; the bucket (10/s, burst 1) spaces them ~0.1 s apart.
    assert route.call_count == 6
    assert seen[-1] - seen[0] >= 0.4


@respx.mock
def test_it_never_sends_leads_the_stuck_lead_reaper_took_back_while_the_job_was_slow(webhook):
    leads = make_leads(4, webhook=webhook)
    later = timezone.now() + timedelta(hours=1)

    def clay(request):
        # The job is so slow that the maintenance tick (an hour later) takes its leads back.
        delivery.recover_stuck(now=later)
        return httpx.Response(200)

    route = respx.post(webhook.url).mock(side_effect=clay)

    counts = delivery.submit_batch([lead.pk for lead in leads])

    assert route.call_count == 1 and counts == {"accepted": 1}
    sent = json.loads(route.calls.last.request.content)["clayops_lead_id"]
    states = dict(Lead.objects.values_list("pk", "state"))
    assert states.pop(sent) == S.ACCEPTED  # the 2xx wins over the reaper's "uncertain": never resent
    assert set(states.values()) == {S.QUEUED}  # never sent; queued again for a new job
    assert usage(webhook).reserved == 0 and usage(webhook).spent == Decimal("6")


@respx.mock
def test_it_fills_a_webhook_to_its_row_cap_exactly_and_fails_the_rest_of_the_job_over(webhook):
    Webhook.objects.filter(pk=webhook.pk).update(row_cap=3)
    backup = make_webhook(workspace=webhook.workspace, name="backup", priority=200)
    first = respx.post(webhook.url).mock(return_value=httpx.Response(200))
    second = respx.post(backup.url).mock(return_value=httpx.Response(200))
    ids = [lead.pk for lead in make_leads(5, webhook=webhook)]

    assert delivery.submit_batch(ids) == {"accepted": 3, "failover": 2}
    assert delivery.submit_batch(ids) == {"accepted": 2}

    webhook.refresh_from_db()
    assert (webhook.rows_sent, webhook.is_full) == (3, True)
    assert first.call_count == 3 and second.call_count == 2
    assert AuditEntry.objects.filter(action="webhook_full").count() == 1
    assert usage(webhook).spent == Decimal("30") and usage(webhook).reserved == 0

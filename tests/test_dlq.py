"""Dead letter queue services: retry, discard, drain and automatic retries, never around the guards."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import django_rq
import httpx
import pytest
import respx
from django.utils import timezone

from clayops import breaker, delivery, dlq
from clayops.models import AuditEntry, DeadLetter, Lead
from tests.factories import make_dead_letter, make_dead_letters

S = Lead.State


@pytest.fixture(autouse=True)
def _inline(settings):
    settings.CLAYOPS_SEND_CONCURRENCY = 1


def submit_queue_lead_ids():
    queue = django_rq.get_queue("submit")
    return sorted(pk for job in queue.jobs for pk in job.args[0])


def test_it_retries_entries_by_queueing_their_leads_and_audits(
    webhook, operator, django_capture_on_commit_callbacks
):
    entries = make_dead_letters(2, webhook=webhook, attempt_count=5)

    with django_capture_on_commit_callbacks(execute=True):
        assert dlq.retry_entries(entry_ids=[e.pk for e in entries], by=operator) == 2

    for entry in entries:
        entry.refresh_from_db()
        assert entry.state == "retrying" and entry.retry_count == 1
        assert Lead.objects.get(pk=entry.lead_id).state == S.QUEUED
    assert submit_queue_lead_ids() == sorted(e.lead_id for e in entries)
    audit = AuditEntry.objects.get(action="dlq_retry")
    assert audit.user == operator and audit.count == 2


@respx.mock
def test_it_sends_a_retried_entry_through_the_breaker_not_around_it(webhook, operator):
    route = respx.post(webhook.url).mock(return_value=httpx.Response(200))
    entry = make_dead_letter(webhook=webhook, attempt_count=5)
    breaker.force_open(webhook.pk, reason="Clay is down")

    dlq.retry_entries(entry_ids=[entry.pk], by=operator)
    delivery.submit_batch([entry.lead_id])

    assert route.call_count == 0
    assert Lead.objects.get(pk=entry.lead_id).state == S.DEFERRED


@respx.mock
def test_it_sends_a_retried_entry_through_the_budget_not_around_it(webhook, operator):
    route = respx.post(webhook.url).mock(return_value=httpx.Response(200))
    credit_budget = webhook.workspace.budget
    credit_budget.daily_limit = Decimal("6")
    credit_budget.save()
    entries = make_dead_letters(2, webhook=webhook, attempt_count=5)

    dlq.retry_entries(entry_ids=[e.pk for e in entries], by=operator)
    delivery.submit_batch([e.lead_id for e in entries])

    assert route.call_count == 1
    states = sorted(Lead.objects.filter(pk__in=[e.lead_id for e in entries]).values_list("state", flat=True))
    assert states == [S.ACCEPTED, S.DEFERRED]
    accepted = Lead.objects.get(state=S.ACCEPTED)
    assert DeadLetter.objects.get(lead=accepted).state == "resolved"


def test_it_discards_entries_and_their_leads(webhook, operator):
    entries = make_dead_letters(2, webhook=webhook, attempt_count=5)

    assert dlq.discard_entries(entry_ids=[entries[0].pk], by=operator) == 1

    entries[0].refresh_from_db()
    assert entries[0].state == "discarded"
    assert Lead.objects.get(pk=entries[0].lead_id).state == S.DISCARDED
    assert Lead.objects.get(pk=entries[1].lead_id).state == S.DEAD
    assert AuditEntry.objects.get(action="dlq_discard").count == 1


def test_it_drains_at_a_bounded_rate(webhook, operator, settings):
    settings.CLAYOPS_DRAIN_RATE = 1.0
    settings.CLAYOPS_TICK_SECONDS = 5
    make_dead_letters(12, webhook=webhook, attempt_count=5, max_retries=0)

    preview = dlq.drain_preview()
    assert preview["count"] == 12 and preview["credits"] == Decimal("72") and preview["eta_seconds"] == 12

    assert dlq.drain(by=operator) == 12
    assert Lead.objects.filter(state=S.QUEUED).count() == 5  # one tick's worth at once
    dlq.retry_due()
    assert Lead.objects.filter(state=S.QUEUED).count() == 10
    dlq.retry_due()
    assert Lead.objects.filter(state=S.QUEUED).count() == 12
    assert AuditEntry.objects.get(action="dlq_drain").count == 12


def test_it_retries_due_entries_automatically_until_exhausted(webhook):
    entry = make_dead_letter(
        webhook=webhook, attempt_count=5, max_retries=1, next_retry_at=timezone.now() - timedelta(seconds=1)
    )

    assert dlq.retry_due() == 1
    entry.refresh_from_db()
    assert entry.state == "retrying"
    # The retry fails again: retries are used up, the entry is exhausted (an operator may still act).
    Lead.objects.filter(pk=entry.lead_id).update(state=S.DEAD)
    dlq.record_dead(
        [entry.lead_id],
        webhook=webhook,
        error="HTTP 502",
        error_class="server_error",
        status_code=502,
        transient=True,
    )
    entry.refresh_from_db()
    assert entry.state == "exhausted" and entry.retry_count == 1
    assert DeadLetter.objects.count() == 1
    assert dlq.retry_due(now=timezone.now() + timedelta(days=1)) == 0
    assert dlq.retry_entries(entry_ids=[entry.pk]) == 1


def test_it_does_not_retry_permanent_failures_automatically(webhook):
    entry = make_dead_letter(webhook=webhook, attempt_count=5, error_class="invalid_payload")
    assert dlq.retry_due(now=timezone.now() + timedelta(days=30)) == 0
    entry.refresh_from_db()
    assert entry.state == "pending"


def test_it_doubles_the_automatic_retry_delay_after_each_failed_retry(webhook, settings):
    settings.CLAYOPS_DLQ_RETRY_DELAY_SECONDS = 60
    settings.CLAYOPS_DLQ_MAX_RETRIES = 3
    entry = make_dead_letter(webhook=webhook, attempt_count=5)
    entry.delete()  # the lead died but is not in the DLQ yet
    now = timezone.now()

    delays = []
    for _ in range(3):
        dlq.record_dead(
            [entry.lead_id],
            webhook=webhook,
            error="HTTP 503",
            error_class="server_error",
            status_code=503,
            transient=True,
            now=now,
        )
        retried = DeadLetter.objects.get(lead_id=entry.lead_id)
        assert retried.state == "pending"
        delays.append((retried.next_retry_at - now).total_seconds())
        now = retried.next_retry_at
        assert dlq.retry_due(now=now) == 1  # due exactly then, and the retry fails again
        Lead.objects.filter(pk=entry.lead_id).update(state=S.DEAD)

    assert delays == [60, 120, 240]
    dlq.record_dead(
        [entry.lead_id],
        webhook=webhook,
        error="HTTP 503",
        error_class="server_error",
        status_code=503,
        transient=True,
        now=now,
    )
    retried = DeadLetter.objects.get(lead_id=entry.lead_id)
    assert retried.state == "exhausted" and retried.retry_count == 3 and retried.next_retry_at is None

"""The DLQ, pinned where mutation testing (bench/mutation.sh) found it unasserted: which entries and
leads each operation touches, the fields it clears, its counts, its audit entries and the cached
generation the dashboard's counts depend on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.utils import timezone

from clayops import dlq
from clayops.models import AuditEntry, DeadLetter, Lead
from tests.factories import make_dead_letter, make_dead_letters, make_lead, make_webhook, make_workspace

D = DeadLetter.State
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def fresh(obj):
    obj.refresh_from_db()
    return obj


def test_it_counts_generations_up_from_one():
    dlq.changed()
    assert cache.get(dlq.GENERATION_KEY) == 1
    dlq.changed()
    assert cache.get(dlq.GENERATION_KEY) == 2


def test_it_writes_one_entry_per_lead_with_the_failure(webhook, settings):
    settings.CLAYOPS_DLQ_MAX_RETRIES = 3
    a, b = make_lead(1, webhook=webhook, state=Lead.State.DEAD), make_lead(2, webhook=webhook)
    written = dlq.record_dead(
        [a.pk, b.pk],
        webhook=webhook,
        error="x" * 6000,
        error_class="server_error",
        status_code=503,
        transient=True,
        now=NOW,
    )
    assert written == 2
    entry = DeadLetter.objects.get(lead=a)
    assert (entry.webhook, len(entry.error), entry.created_at, entry.retry_count) == (webhook, 5000, NOW, 0)


def test_it_reopens_only_the_retrying_entry_of_that_lead(webhook):
    a, b = make_lead(1, webhook=webhook), make_lead(2, webhook=webhook)
    others_retry = make_dead_letter(lead=a, webhook=webhook, state=D.RETRYING, retry_count=1)
    resolved = make_dead_letter(lead=b, webhook=webhook, state=D.RESOLVED)
    dlq.record_dead(
        [b.pk], webhook=webhook, error="HTTP 500", error_class="server_error", status_code=500, transient=True
    )
    assert fresh(others_retry).state == D.RETRYING
    assert fresh(resolved).state == D.RESOLVED
    assert DeadLetter.objects.filter(lead=b).count() == 2


def test_it_resolves_only_the_entries_of_those_leads_in_those_states(webhook):
    mine = make_dead_letter(1, webhook=webhook, state=D.RETRYING, next_retry_at=NOW)
    DeadLetter.objects.filter(pk=mine.pk).update(updated_at=LONG_AGO)
    other = make_dead_letter(2, webhook=webhook, state=D.RETRYING)
    discarded = make_dead_letter(lead=mine.lead, webhook=webhook, state=D.DISCARDED)
    assert dlq.resolve_for_leads([mine.lead_id]) == 1
    mine = fresh(mine)
    assert (mine.state, mine.next_retry_at) == (D.RESOLVED, None)
    assert mine.updated_at > LONG_AGO
    assert (fresh(other).state, fresh(discarded).state) == (D.RETRYING, D.DISCARDED)


def test_it_resubmits_only_open_entries_of_dead_leads_and_resets_them(webhook, operator):
    entry = make_dead_letter(1, webhook=webhook, attempt_count=4, next_retry_at=NOW)
    DeadLetter.objects.filter(pk=entry.pk).update(updated_at=LONG_AGO)
    Lead.objects.filter(pk=entry.lead_id).update(state_changed_at=LONG_AGO, next_attempt_at=NOW)
    resolved = make_dead_letter(2, webhook=webhook, state=D.RESOLVED)
    assert dlq.retry_entries(entry_ids=[entry.pk, resolved.pk], by=operator) == 1
    entry, lead = fresh(entry), fresh(entry.lead)
    assert (entry.state, entry.retry_count, entry.next_retry_at) == (D.RETRYING, 1, None)
    assert entry.updated_at > LONG_AGO
    assert (lead.state, lead.attempt_count, lead.next_attempt_at) == (Lead.State.QUEUED, 0, None)
    assert lead.state_changed_at > LONG_AGO
    assert (fresh(resolved).state, fresh(resolved).retry_count, fresh(resolved.lead).state) == (
        D.RESOLVED,
        0,
        Lead.State.DEAD,
    )


def test_it_counts_only_the_dead_leads_it_moved_back(webhook, operator):
    lead = make_lead(1, webhook=webhook, state=Lead.State.QUEUED)  # already back in the queue
    entry = make_dead_letter(lead=lead, webhook=webhook)
    assert dlq.retry_entries(entry_ids=[entry.pk], by=operator) == 0
    assert fresh(lead).state == Lead.State.QUEUED


def test_it_audits_a_retry_with_its_target_and_the_first_hundred_ids(webhook, operator):
    (entry,) = make_dead_letters(1, webhook=webhook)
    dlq.retry_entries(entry_ids=[entry.pk], by=operator)
    one = AuditEntry.objects.get(action="dlq_retry")
    assert (one.user, one.target, one.count, one.detail) == (
        operator,
        f"dead_letter:{entry.pk}",
        1,
        {"entry_ids": [entry.pk]},
    )
    ids = list(range(10**6, 10**6 + 101))  # unknown ids: nothing moves, the audit still names them
    dlq.retry_entries(entry_ids=ids, by=operator)
    many = AuditEntry.objects.filter(action="dlq_retry").exclude(pk=one.pk).get()
    assert (many.target, many.count, many.detail) == ("101 dead letters", 0, {"entry_ids": ids[:100]})


def test_it_discards_only_open_entries_and_their_dead_leads_and_audits(webhook, operator):
    entry = make_dead_letter(1, webhook=webhook, next_retry_at=NOW)
    Lead.objects.filter(pk=entry.lead_id).update(state_changed_at=LONG_AGO)
    resolved = make_dead_letter(2, webhook=webhook, state=D.RESOLVED)
    sent = make_lead(3, webhook=webhook, state=Lead.State.ENRICHED)
    on_sent = make_dead_letter(lead=sent, webhook=webhook)
    assert dlq.discard_entries(entry_ids=[entry.pk, resolved.pk, on_sent.pk], by=operator) == 2
    entry, lead = fresh(entry), fresh(entry.lead)
    assert (entry.state, entry.next_retry_at) == (D.DISCARDED, None)
    assert (lead.state, lead.state_changed_at > LONG_AGO) == (Lead.State.DISCARDED, True)
    assert (fresh(resolved).state, fresh(resolved.lead).state) == (D.RESOLVED, Lead.State.DEAD)
    assert fresh(sent).state == Lead.State.ENRICHED
    audit = AuditEntry.objects.get(action="dlq_discard")
    assert (audit.user, audit.target, audit.count, audit.detail) == (
        operator,
        "3 dead letters",
        2,
        {"entry_ids": [entry.pk, resolved.pk, on_sent.pk]},
    )
    ids = list(range(10**6, 10**6 + 101))
    dlq.discard_entries(entry_ids=ids, by=operator)
    assert AuditEntry.objects.filter(action="dlq_discard").first().detail == {"entry_ids": ids[:100]}


def test_it_marks_the_discard_time(webhook, operator):
    entry = make_dead_letter(1, webhook=webhook)
    DeadLetter.objects.filter(pk=entry.pk).update(updated_at=LONG_AGO)
    dlq.discard_entries(entry_ids=[entry.pk], by=operator)
    assert fresh(entry).updated_at > LONG_AGO


def test_it_previews_a_drain_per_webhook_at_each_webhooks_estimate(db, settings):
    settings.CLAYOPS_DRAIN_RATE = 2.0
    cheap = make_webhook(name="cheap", credits_per_row=Decimal("2"))
    dear = make_webhook(workspace=cheap.workspace, name="dear", credits_per_row=Decimal("10"))
    make_dead_letters(3, webhook=cheap)
    make_dead_letter(9, webhook=dear)
    make_dead_letter(10, webhook=None)  # its webhook was deleted: the default estimate (6)
    preview = dlq.drain_preview()
    assert {k: preview[k] for k in ("count", "credits", "rate", "eta_seconds")} == {
        "count": 5,
        "credits": Decimal("22"),
        "rate": 2.0,
        "eta_seconds": 2,
    }
    assert (preview["from_cache"], preview["within_budget"], preview["parked"]) == (0, 5, 0)
    assert dlq.drain_preview(webhook_id=dear.pk)["count"] == 1


def test_it_drains_only_the_entries_matching_both_filters_and_audits_them(settings, operator):
    settings.CLAYOPS_DRAIN_RATE = 0.01  # nothing resubmitted beyond the first in this tick
    hook = make_webhook(workspace=make_workspace(name="w"), name="a")
    other = make_webhook(workspace=hook.workspace, name="b")
    match = make_dead_letter(1, webhook=hook, error_class="server_error", max_retries=0, retry_count=2)
    DeadLetter.objects.filter(pk=match.pk).update(updated_at=LONG_AGO)
    wrong_class = make_dead_letter(2, webhook=hook, error_class="timeout")
    wrong_hook = make_dead_letter(3, webhook=other, error_class="server_error")
    assert dlq.drain(by=operator, webhook_id=hook.pk, error_class="server_error", rate=3.0) == 1
    match = fresh(match)
    assert (match.max_retries, match.updated_at > LONG_AGO) == (3, True)
    assert (fresh(wrong_class).next_retry_at, fresh(wrong_hook).next_retry_at) == (None, None)
    audit = AuditEntry.objects.get(action="dlq_drain")
    assert (audit.user, audit.target, audit.count, audit.detail) == (
        operator,
        f"webhook:{hook.pk}",
        1,
        {"error_class": "server_error", "rate_per_second": 3.0},
    )


def test_it_audits_a_drain_of_everything_with_the_configured_rate(settings, webhook):
    settings.CLAYOPS_DRAIN_RATE = 4.0
    dlq.drain()
    audit = AuditEntry.objects.get(action="dlq_drain")
    assert (audit.target, audit.detail) == ("all", {"error_class": "", "rate_per_second": 4.0})


@pytest.mark.parametrize(("rate", "tick", "per_tick"), [(0.05, 10, 1), (1.0, 3, 3)])
def test_it_resubmits_at_most_rate_times_tick_and_at_least_one(settings, webhook, rate, tick, per_tick):
    settings.CLAYOPS_DRAIN_RATE, settings.CLAYOPS_TICK_SECONDS = rate, tick
    past = timezone.now() - timedelta(minutes=1)
    make_dead_letters(5, webhook=webhook, next_retry_at=past)
    assert dlq.retry_due() == per_tick


def test_it_resubmits_at_most_the_limit_given(webhook):
    past = timezone.now() - timedelta(minutes=1)
    make_dead_letters(3, webhook=webhook, next_retry_at=past)
    assert dlq.retry_due(limit=1) == 1
    assert DeadLetter.objects.filter(state=D.RETRYING).count() == 1

"""Overview page: cards per webhook, live partial with a version token, breaker actions."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from clayops import breaker, budget, health
from clayops.models import (
    Attempt,
    AuditEntry,
    CircuitBreaker,
    CircuitEvent,
    CreditReservation,
    Lead,
)
from tests.factories import make_lead

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()  # queue depths are cached a few seconds


@pytest.fixture
def url():
    return reverse("dashboard:overview")


def test_it_redirects_anonymous_to_login(client, url, webhook):
    r = client.get(url)
    assert r.status_code == 302 and r["Location"].startswith(reverse("login"))


def test_it_forbids_a_user_without_a_role(client, url, outsider):
    client.force_login(outsider)
    assert client.get(url).status_code == 403


def test_it_shows_a_card_per_webhook_with_circuit_words(client, url, viewer, webhook):
    client.force_login(viewer)
    r = client.get(url)
    assert r.status_code == 200
    html = r.content.decode()
    assert "<html" in html and 'id="cards"' in html
    assert "people" in html and 'Circuit <strong class="circuit-word">Closed</strong>' in html
    assert "Sending normally" in html


def test_it_shows_open_state_with_countdown(client, url, viewer, webhook):
    CircuitBreaker.objects.filter(webhook=webhook).update(
        state="open", opened_at=timezone.now(), cooldown_seconds=30
    )
    client.force_login(viewer)
    html = client.get(url).content.decode()
    assert '<strong class="circuit-word">Open</strong>' in html
    assert 'class="countdown" data-deadline="' in html
    assert "tone-bad" in html


def test_it_shows_health_sparkline_budget_depths_and_throughput(client, url, viewer, webhook):
    now = timezone.now()
    health.record(webhook.pk, ok=True, latency_ms=100, at=now - timedelta(minutes=1))
    health.record(webhook.pk, ok=True, latency_ms=120, at=now)
    health.record(webhook.pk, ok=False, latency_ms=300, at=now)
    make_lead(1, webhook=webhook, state=Lead.State.QUEUED)
    make_lead(2, webhook=webhook, state=Lead.State.QUEUED)
    lead = make_lead(3, webhook=webhook, state=Lead.State.DEAD)
    Attempt.objects.create(lead=lead, webhook=webhook, outcome="accepted", started_at=now)
    usage = budget.usage_for(webhook.workspace.budget, now=now)
    usage.spent = Decimal("300")
    usage.reserved = Decimal("12")
    usage.save()
    CreditReservation.objects.create(
        usage=usage, amount=Decimal("150"), expires_at=now + timedelta(minutes=5)
    )
    client.force_login(viewer)
    html = client.get(url).content.decode()
    assert '<svg class="spark"' in html and "<polyline" in html
    assert "unhealthy" in html  # 2 of 3 succeeded in the window
    assert "Spent 300, reserved 12 of 1,000 credits" in html
    assert "runs out" in html  # 150 credits in 15 min = 10/min → projected exhaustion time
    assert "<span>queued</span> <strong>2</strong>" in html
    assert "<strong>1</strong> sent/min" in html


def test_it_returns_only_the_cards_partial_for_htmx(client, url, viewer, webhook):
    client.force_login(viewer)
    r = client.get(url, **HX)
    html = r.content.decode()
    assert r.status_code == 200
    assert "<html" not in html and html.strip().startswith('<div id="cards"')
    assert "HX-Request" in r["Vary"]


def test_it_answers_204_when_nothing_changed_and_the_partial_when_something_did(client, url, viewer, webhook):
    client.force_login(viewer)
    first = client.get(url, **HX)
    version = first.content.decode().split('data-version="')[1].split('"')[0]
    assert client.get(url, {"v": version}, **HX).status_code == 204
    breaker.force_open(webhook.pk, reason="test")
    changed = client.get(url, {"v": version}, **HX)
    assert changed.status_code == 200 and "Paused" in changed.content.decode()


def test_it_shows_recent_circuit_events(client, url, viewer, webhook):
    breaker.force_open(webhook.pk, reason="maintenance window")
    client.force_login(viewer)
    html = client.get(url).content.decode()
    assert "maintenance window" in html and "Closed → <strong>Paused</strong>" in html


def test_it_hides_action_buttons_from_viewers(client, url, viewer, webhook):
    client.force_login(viewer)
    html = client.get(url).content.decode()
    assert "force-open" not in html and "Pause (force open)" not in html


def test_it_shows_action_buttons_to_operators(client, url, operator, webhook):
    client.force_login(operator)
    html = client.get(url).content.decode()
    assert reverse("dashboard:breaker_force_open", args=[webhook.pk]) in html


def test_it_force_opens_the_breaker_and_returns_the_card(client, operator, webhook):
    client.force_login(operator)
    r = client.post(reverse("dashboard:breaker_force_open", args=[webhook.pk]), **HX)
    assert r.status_code == 200
    html = r.content.decode()
    assert html.strip().startswith("<article") and "Paused" in html
    assert "breaker-changed" in r["HX-Trigger"]
    webhook.breaker.refresh_from_db()
    assert webhook.breaker.state == "forced_open"
    audit = AuditEntry.objects.get(action="breaker_force_open")
    assert audit.user == operator
    assert CircuitEvent.objects.filter(breaker=webhook.breaker, to_state="forced_open", by=operator).exists()


def test_it_resets_the_breaker(client, operator, webhook):
    breaker.force_open(webhook.pk)
    client.force_login(operator)
    r = client.post(reverse("dashboard:breaker_reset", args=[webhook.pk]))
    assert r.status_code == 302 and r["Location"] == reverse("dashboard:overview")
    webhook.breaker.refresh_from_db()
    assert webhook.breaker.state == "closed"
    assert AuditEntry.objects.filter(action="breaker_reset", user=operator).exists()


def test_it_drains_the_offline_queue_of_a_webhook(client, operator, webhook):
    lead = make_lead(1, webhook=webhook, state=Lead.State.DEFERRED)
    Lead.objects.filter(pk=lead.pk).update(next_attempt_at=timezone.now() + timedelta(hours=1))
    client.force_login(operator)
    r = client.post(reverse("dashboard:offline_drain", args=[webhook.pk]), **HX)
    assert r.status_code == 200
    lead.refresh_from_db()
    # Released at once: one lead is well within a tick's drain rate and today's budget.
    assert (lead.state, lead.next_attempt_at) == (Lead.State.QUEUED, None)
    audit = AuditEntry.objects.get(action="offline_drain")
    assert audit.user == operator and audit.count == 1

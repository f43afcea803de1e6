"""Cache-aware sending (Webhook.reuse_cached): a lead whose domain has a fresh enrichment in the cache
is enriched from it instead of being sent to Clay, spending no credits (counted as saved today); the
overview shows the credits saved and the lead's page where its data came from."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
import respx
from django.test import Client
from django.utils import timezone

from clayops import budget, degrade, delivery
from clayops.models import AuditEntry, CreditReservation, EnrichmentCache, Lead, Webhook
from tests.factories import make_lead

S = Lead.State
ACME = {"company_name": "Acme", "employees": 120}


@pytest.fixture(autouse=True)
def _inline(settings):
    settings.CLAYOPS_SEND_CONCURRENCY = 1


def cache(domain: str, *, fresh: bool = True) -> EnrichmentCache:
    now = timezone.now()
    return EnrichmentCache.objects.create(
        domain=domain,
        data=ACME,
        fetched_at=now - timedelta(hours=1),
        expires_at=now + (timedelta(days=1) if fresh else -timedelta(minutes=1)),
    )


def reuse(webhook: Webhook, on: bool = True) -> None:
    Webhook.objects.filter(pk=webhook.pk).update(reuse_cached=on)


@respx.mock
def test_a_lead_whose_domain_is_fresh_in_the_cache_is_enriched_from_it_without_a_send(webhook):
    route = respx.post(webhook.url).mock(return_value=httpx.Response(200))
    reuse(webhook)
    entry = cache("acme.com")
    cached = make_lead(domain="acme.com", email="a@acme.com", fingerprint="c1", row={"email": "a@acme.com"})
    other = make_lead(
        domain="globex.com", email="b@globex.com", fingerprint="c2", row={"email": "b@globex.com"}
    )

    counts = delivery.submit_batch([cached.pk, other.pk])

    assert counts == {"served_from_cache": 1, "accepted": 1}
    assert route.call_count == 1  # only the lead the cache could not answer
    cached.refresh_from_db()
    assert cached.state == S.ENRICHED and cached.enriched == ACME
    assert cached.served["source"] == "cache" and cached.served["instead_of_send"] is True
    assert not CreditReservation.objects.filter(lead=cached).exists()  # no credits held or spent
    usage = budget.usage_for(webhook.workspace.budget)
    assert usage.saved == Decimal("6") and usage.spent == Decimal("6")  # the other lead's send
    webhook.refresh_from_db()
    assert webhook.rows_sent == 1  # the cached lead took no row of the 50,000
    entry.refresh_from_db()
    assert entry.hits == 1
    assert degrade.best_answer(cached)[0]["source"] == "cache"  # the lead data API says so too


@respx.mock
def test_without_the_setting_or_with_a_stale_entry_the_lead_is_sent(webhook):
    route = respx.post(webhook.url).mock(return_value=httpx.Response(200))
    cache("acme.com")
    cache("stale.com", fresh=False)
    off = make_lead(domain="acme.com", fingerprint="d1", row={"email": "x@acme.com"})
    assert delivery.submit_batch([off.pk]) == {"accepted": 1}  # reuse_cached is off by default
    reuse(webhook)
    stale = make_lead(domain="stale.com", fingerprint="d2", row={"email": "x@stale.com"})
    assert delivery.submit_batch([stale.pk]) == {"accepted": 1}
    assert route.call_count == 2
    assert budget.usage_for(webhook.workspace.budget).saved == 0


@respx.mock
def test_it_saves_credits_even_when_the_budget_is_used_up(webhook):
    """Serving from the cache costs nothing, so an exhausted budget does not defer it."""
    respx.post(webhook.url).mock(return_value=httpx.Response(200))
    reuse(webhook)
    cache("acme.com")
    webhook.workspace.budget.__class__.objects.filter(pk=webhook.workspace.budget_id).update(daily_limit=0)
    lead = make_lead(domain="acme.com", fingerprint="e1", row={"email": "x@acme.com"})
    assert delivery.submit_batch([lead.pk]) == {"served_from_cache": 1}
    assert Lead.objects.get(pk=lead.pk).state == S.ENRICHED


def test_the_overview_and_the_lead_page_show_it(webhook, viewer):
    reuse(webhook)
    cache("acme.com")
    lead = make_lead(domain="acme.com", fingerprint="f1", row={"email": "x@acme.com"})
    with respx.mock:
        delivery.submit_batch([lead.pk])
    client = Client()
    client.force_login(viewer)
    overview = client.get("/").content.decode()
    assert 'data-testid="credits-saved"' in overview and "Saved" in overview
    page = client.get(f"/leads/{lead.pk}/").content.decode()
    assert "from the cache" in page and "no credits spent" in page


def test_the_drain_forecast_counts_cache_hits_credits_against_today_and_what_is_parked(webhook, operator):
    """Before a drain: 4 dead leads, one served from the cache for free; the other 3 need 18 credits
    with 12 left today, so 2 fit and 1 would be parked until the reset. "Within today's budget"
    drains the 3 that fit (cache hit included), "all" drains the 4."""
    from clayops import dlq
    from clayops.models import CreditBudget
    from tests.factories import make_dead_letter

    reuse(webhook)
    cache("acme.com")
    entries = [make_dead_letter(i, webhook=webhook) for i in range(4)]
    Lead.objects.filter(pk=entries[0].lead_id).update(domain="acme.com")
    CreditBudget.objects.filter(pk=webhook.workspace.budget_id).update(daily_limit=Decimal("12"))

    preview = dlq.drain_preview()
    assert (preview["count"], preview["from_cache"], preview["credits"]) == (4, 1, Decimal("18"))
    (only,) = preview["budgets"]
    assert (only["needed"], only["remaining"], only["fits"], only["parked"]) == (
        Decimal("18"),
        Decimal("12"),
        2,
        1,
    )
    assert only["resets_at"].hour == 0 and (preview["within_budget"], preview["parked"]) == (3, 1)

    client = Client()
    client.force_login(operator)
    page = client.get("/dlq/drain/preview").content.decode()
    assert "served from a fresh cache entry" in page and "would be parked" in page
    assert "within today&#x27;s budget" in page or "within today's budget" in page
    client.post("/dlq/drain", {"scope": "budget"})
    audit = AuditEntry.objects.get(action="dlq_drain")
    assert audit.count == 3 and audit.detail["limit"] == 3  # the oldest 3, not the 4th
    client.post("/dlq/drain", {"scope": "all"})
    assert AuditEntry.objects.filter(action="dlq_drain").first().detail.get("limit") is None

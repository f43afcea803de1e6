"""Why deferred leads wait, in Chromium: the banner on the overview's webhook card (live), the
"why / until" column of the leads list, and the lead's page."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

from django.core.cache import cache
from django.utils import timezone
from playwright.sync_api import expect

from clayops import counts, deferral
from clayops.models import CircuitBreaker, CreditUsage, Lead
from tests.factories import make_budget, make_lead, make_leads, make_webhook, make_workspace

from .conftest import assert_not_reloaded, mark_page

RESUMES = "budget used up: resumes at 00:00 America/Los_Angeles (in "


def _exhausted_webhook():
    budget = make_budget(name="west", daily_limit=Decimal("60"), timezone="America/Los_Angeles")
    CreditUsage.objects.create(budget=budget, day=budget.day_for(timezone.now()), spent=Decimal("60"))
    return make_webhook(workspace=make_workspace(name="west", budget=budget), name="people")


def test_it_shows_why_deferred_leads_wait_on_the_card_the_list_and_the_lead(page, login_as, viewer):
    hook = _exhausted_webhook()
    leads = make_leads(3, webhook=hook, state=Lead.State.DEFERRED, defer_reason=deferral.REASON_BUDGET)
    make_lead(7, webhook=hook, state=Lead.State.ENRICHED)
    login_as(viewer)

    page.goto("/")
    banner = page.locator(f"#webhook-{hook.pk} [data-testid=deferral-banner]")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text(
        re.compile(
            r"3 leads deferred: budget used up — resumes at 00:00 America/Los_Angeles \(in \d+ h( \d+ min)?\)"
        )
    )
    mark_page(page)

    # More leads deferred: the live overview updates the count without a reload.
    make_leads(2, webhook=hook, state=Lead.State.DEFERRED, defer_reason=deferral.REASON_BUDGET)
    cache.set(counts.SNAPSHOT_KEY, counts.count(), None)  # what a worker's counting thread does next
    expect(banner).to_contain_text("5 leads deferred: budget used up", timeout=8000)
    assert_not_reloaded(page)

    page.goto(f"/leads/?webhook={hook.pk}")
    expect(page.get_by_role("columnheader", name="Why / until")).to_be_visible()
    reasons = page.locator("#results [data-testid=deferral]")
    expect(reasons).to_have_count(5)  # the enriched lead has none
    for i in range(5):
        expect(reasons.nth(i)).to_contain_text(RESUMES)

    page.locator(f'#results a[href="/leads/{leads[0].pk}/"]').first.click()
    expect(page).to_have_url(re.compile(rf"/leads/{leads[0].pk}/$"))
    expect(page.get_by_text("Why it waits")).to_be_visible()
    expect(page.locator("[data-testid=deferral]")).to_contain_text(RESUMES)


def test_it_counts_down_to_the_next_probe_of_an_open_circuit(page, login_as, viewer, webhook):
    CircuitBreaker.objects.filter(webhook=webhook).update(
        state=CircuitBreaker.State.OPEN, opened_at=timezone.now() - timedelta(seconds=5), cooldown_seconds=120
    )
    make_leads(2, webhook=webhook, state=Lead.State.DEFERRED, defer_reason="circuit open")
    login_as(viewer)

    page.goto("/")
    line = page.locator(f"#webhook-{webhook.pk} [data-testid=deferral-banner] li")
    expect(line).to_contain_text(
        re.compile(r"2 leads deferred: circuit open — next probe at \d\d:\d\d:\d\d UTC")
    )
    countdown = line.locator(".countdown")
    first = countdown.inner_text()
    assert re.fullmatch(r"1 min \d+ s", first), first
    expect(countdown).not_to_have_text(first, timeout=4000)  # app.js counts it down every second
    expect(countdown).to_have_text(re.compile(r"^1 min \d+ s$"))

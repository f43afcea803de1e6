"""Both of Clay's meters and re-enrichment in a real browser: the overview's Actions gauge, an import's
group retry forecast with its "within today's budget" choice, the drain forecast's Actions, and an
operator re-enriching leads served during an outage."""

from __future__ import annotations

import re
from decimal import Decimal

from playwright.sync_api import expect

from clayops import budget
from clayops.models import CreditBudget, DeadLetter, Lead, Webhook
from tests.factories import make_dead_letter, make_lead, make_lead_import

S = Lead.State
FALLBACK = {"source": "fallback", "data": {"company_name": "Acme"}, "at": "2026-11-30T10:00:00+00:00"}


def limit_actions(webhook: Webhook, limit: int, per_row: int = 1) -> None:
    CreditBudget.objects.filter(pk=webhook.workspace.budget_id).update(actions_daily_limit=limit)
    Webhook.objects.filter(pk=webhook.pk).update(actions_per_row=per_row)


def test_a_viewer_sees_the_actions_gauge_beside_the_credits(page, login_as, viewer, webhook):
    limit_actions(webhook, 10)
    budget.reserve(
        budget=CreditBudget.objects.get(pk=webhook.workspace.budget_id), amount=Decimal("6"), actions=9
    )
    login_as(viewer)

    page.goto("/")

    meter = page.get_by_test_id("actions-meter")
    expect(meter).to_contain_text("Clay Actions today")
    expect(meter.get_by_role("img")).to_have_attribute("aria-label", re.compile(r"reserved 9 of 10 \(90%\)"))
    expect(meter.locator(".gauge-spent")).to_have_class(re.compile("tone-warn"))  # past the 80 % alert


def test_an_operator_retries_an_imports_failures_within_todays_actions(page, login_as, operator, webhook):
    limit_actions(webhook, 4, per_row=2)  # Actions for 2 rows; credits for all
    imp = make_lead_import(filename="april.csv", webhook=webhook)
    entries = [
        make_dead_letter(
            i, webhook=webhook, lead=make_lead(i, webhook=webhook, lead_import=imp, state=S.DEAD)
        )
        for i in range(5)
    ]
    login_as(operator)

    page.goto(f"/imports/{imp.pk}/")

    forecast = page.get_by_test_id("import-retry-forecast")
    expect(forecast).to_contain_text("10 Clay Actions, 4 left today")
    expect(forecast).to_contain_text("3 would be parked")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Retry 2 within today's budget").click()

    expect(page.locator(".flash")).to_contain_text("2 retried.")
    expect(page.get_by_test_id("dlq-open")).to_contain_text("3 leads of this import are in the DLQ")
    states = [DeadLetter.objects.get(pk=e.pk).state for e in entries]
    assert states == ["retrying", "retrying", "pending", "pending", "pending"]


def test_the_drain_forecast_names_the_actions_left(page, login_as, operator, webhook):
    limit_actions(webhook, 3)
    for i in range(5):
        make_dead_letter(i, webhook=webhook)
    login_as(operator)

    page.goto("/dlq/")
    page.get_by_role("link", name=re.compile("Drain")).first.click()

    forecast = page.get_by_test_id("drain-forecast")
    expect(forecast).to_contain_text("5 Clay Actions, 3 left today")
    expect(page.get_by_role("button", name="Drain 3 within today's budget")).to_be_visible()


def test_an_operator_reenriches_leads_served_during_an_outage(page, login_as, operator, webhook):
    Webhook.objects.filter(pk=webhook.pk).update(reenrich_served=False)
    leads = [
        make_lead(i, webhook=webhook, state=S.SERVED_FALLBACK, served=FALLBACK, defer_reason="circuit open")
        for i in range(3)
    ]
    login_as(operator)

    page.goto(f"/leads/{leads[0].pk}/")
    expect(page.get_by_test_id("data-source")).to_have_text(
        "none from Clay yet; served a local fallback (a guess from the domain) meanwhile"
    )
    expect(page.get_by_text("Its webhook re-enriches only on request.")).to_be_visible()

    page.goto("/leads/?state=served_fallback")
    page.get_by_role("button", name=re.compile(r"Re-enrich 3")).click()

    expect(page.locator(".flash")).to_contain_text("Re-enriching 3 leads.")
    assert set(Lead.objects.filter(pk__in=[lead.pk for lead in leads]).values_list("state", flat=True)) == {
        S.QUEUED
    }

"""Screenshots of the main pages with realistic data, at 1280x800 (and the overview on a phone).

They are written to docs/screenshots/ when CLAYOPS_SCREENSHOTS=1, else to a temporary directory, so a
normal test run still renders every page in a browser without touching the work tree:

    CLAYOPS_SCREENSHOTS=1 python3 manage.py runtests tests/browser/test_screenshots.py
"""

from __future__ import annotations

import os
import random
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from clayops import budget, health
from clayops.models import (
    Attempt,
    CircuitBreaker,
    CircuitEvent,
    CreditBudget,
    CreditReservation,
    DeadLetter,
    HealthSample,
    ImportRowError,
    Lead,
    LeadImport,
    Webhook,
    Workspace,
)

from .conftest import SCREENSHOTS


@pytest.fixture
def out_dir(tmp_path):
    if os.environ.get("CLAYOPS_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path


def seed(operator):
    rnd = random.Random(7)
    now = timezone.now()
    credit_budget = CreditBudget.objects.create(name="default", daily_limit=Decimal("5000"), alert_percent=80)
    ws = Workspace.objects.create(name="acme-growth", budget=credit_budget)
    people = Webhook.objects.create(
        workspace=ws,
        name="people-enrichment",
        url="https://api.clay.com/v3/sources/webhook/pull-in-data-abc123",
        rows_sent=18234,
        priority=10,
    )
    companies = Webhook.objects.create(
        workspace=ws,
        name="company-firmographics",
        url="https://api.clay.com/v3/sources/webhook/pull-in-data-def456",
        rows_sent=7310,
        priority=20,
    )
    spare = Webhook.objects.create(
        workspace=ws,
        name="spare-table",
        url="https://api.clay.com/v3/sources/webhook/pull-in-data-ghi789",
        priority=30,
    )
    CircuitBreaker.objects.create(webhook=people)
    b2 = CircuitBreaker.objects.create(
        webhook=companies,
        state="open",
        opened_at=now - timedelta(seconds=12),
        consecutive_failures=5,
        cooldown_seconds=30,
    )
    b3 = CircuitBreaker.objects.create(
        webhook=spare, state="forced_open", opened_at=now - timedelta(minutes=40)
    )
    CircuitEvent.objects.create(
        breaker=b2,
        from_state="closed",
        to_state="open",
        reason="5 consecutive failures (HTTP 503)",
        at=now - timedelta(seconds=12),
    )
    CircuitEvent.objects.create(
        breaker=b2,
        from_state="half_open",
        to_state="closed",
        reason="2 probe successes",
        at=now - timedelta(minutes=9),
    )
    CircuitEvent.objects.create(
        breaker=b2,
        from_state="open",
        to_state="half_open",
        reason="cooldown passed",
        at=now - timedelta(minutes=10),
    )
    CircuitEvent.objects.create(
        breaker=b3,
        from_state="closed",
        to_state="forced_open",
        reason="table being rebuilt",
        at=now - timedelta(minutes=40),
        by=operator,
    )

    start = health.minute_of(now) - timedelta(minutes=59)
    samples = []
    for i in range(60):
        minute = start + timedelta(minutes=i)
        ok = rnd.randint(280, 320)
        samples.append(
            HealthSample(
                webhook=people,
                minute=minute,
                successes=ok,
                failures=rnd.choice([0, 0, 1, 3]),
                latency_sum_ms=ok * 240.0,
                latency_max_ms=900,
            )
        )
        if i < 50:
            bad = 2 if i < 40 else (i - 38) * 12
            samples.append(
                HealthSample(
                    webhook=companies,
                    minute=minute,
                    successes=200 - bad,
                    failures=bad,
                    latency_sum_ms=200 * 410.0,
                    latency_max_ms=4100,
                )
            )
        elif i >= 57:
            samples.append(
                HealthSample(
                    webhook=companies,
                    minute=minute,
                    successes=4,
                    failures=26,
                    latency_sum_ms=30 * 5200.0,
                    latency_max_ms=15000,
                )
            )
    HealthSample.objects.bulk_create(samples)

    usage = budget.usage_for(credit_budget, now=now)
    usage.spent, usage.reserved = Decimal("3120.5"), Decimal("84")
    usage.save()
    CreditReservation.objects.bulk_create(
        CreditReservation(
            usage=usage,
            amount=Decimal("6"),
            created_at=now - timedelta(seconds=9 * i),
            expires_at=now + timedelta(minutes=5),
            state="settled",
        )
        for i in range(90)
    )

    imp_done = LeadImport.objects.create(
        filename="q3-webinar-attendees.csv",
        uploaded_by=operator,
        webhook=people,
        state="done",
        size_bytes=412_330,
        bytes_read=412_330,
        total_rows=2412,
        valid_rows=2301,
        invalid_rows=37,
        duplicate_rows=74,
        started_at=now - timedelta(minutes=31),
        finished_at=now - timedelta(minutes=30, seconds=52),
    )
    LeadImport.objects.create(
        filename="tradeshow-badge-scans.csv",
        uploaded_by=operator,
        webhook=people,
        state="running",
        size_bytes=9_800_000,
        bytes_read=4_400_000,
        total_rows=21870,
        valid_rows=21002,
        invalid_rows=121,
        duplicate_rows=747,
        started_at=now - timedelta(minutes=2),
    )
    for line, err in [
        (14, "no valid email or domain"),
        (88, "bad encoding"),
        (131, "no valid email or domain"),
    ]:
        ImportRowError.objects.create(lead_import=imp_done, line=line, error=err, raw="jane doe,,")

    names = [
        "northwind",
        "globex",
        "initech",
        "umbrella",
        "hooli",
        "stark",
        "wayne",
        "acme",
        "vandelay",
        "soylent",
    ]
    states = ["enriched"] * 6 + ["accepted", "queued", "queued", "deferred", "dead", "served_cache"]
    leads = []
    for i in range(180):
        company = names[i % len(names)]
        leads.append(
            Lead(
                row={
                    "email": f"person{i}@{company}.com",
                    "first_name": f"Person{i}",
                    "company": company.title(),
                },
                fingerprint=f"seed-{i}",
                email=f"person{i}@{company}.com",
                domain=f"{company}.com",
                company=company.title(),
                state=rnd.choice(states),
                lead_import=imp_done,
                line=i + 2,
                webhook=people if i % 3 else companies,
            )
        )
    Lead.objects.bulk_create(leads)
    attempts = [
        Attempt(
            lead=lead,
            webhook=lead.webhook,
            started_at=now - timedelta(seconds=rnd.randint(1, 55)),
            status_code=200,
            latency_ms=rnd.randint(150, 400),
            outcome="accepted",
        )
        for lead in Lead.objects.filter(state__in=["accepted", "enriched"])[:70]
    ]
    Attempt.objects.bulk_create(attempts)

    classes = [
        ("server_error", 503, "HTTP 503 Service Unavailable"),
        ("timeout", None, "read timeout after 15 s"),
        ("payload_too_large", 413, "HTTP 413: row is 131 KB, Clay accepts < 100 KB"),
        ("bad_request", 422, "HTTP 422: invalid JSON body"),
    ]
    transient = ("server_error", "timeout")
    for i, lead in enumerate(Lead.objects.filter(state="dead")):
        cls, code, err = classes[min(i % 7, 3)] if i % 7 < 4 else classes[0]
        DeadLetter.objects.create(
            lead=lead,
            webhook=lead.webhook,
            error=err,
            error_class=cls,
            status_code=code,
            retry_count=i % 3 if cls in transient else 0,
            max_retries=3 if cls in transient else 0,
            created_at=now - timedelta(minutes=3 * i),
        )

    detail = Lead.objects.filter(state="enriched").first()
    detail.enriched = {
        "full_name": "Dana Scully",
        "title": "VP Engineering",
        "employees": 1200,
        "industry": "Software",
        "linkedin": "linkedin.com/in/dscully",
        "credits_used": 8,
    }
    detail.enriched_at = now - timedelta(minutes=20)
    detail.credits_actual = Decimal("8")
    detail.attempt_count = 2
    detail.save()
    Attempt.objects.create(
        lead=detail,
        webhook=detail.webhook,
        started_at=now - timedelta(minutes=24),
        status_code=503,
        latency_ms=1320,
        error_class="server_error",
        error="HTTP 503",
        outcome="retry",
    )
    Attempt.objects.create(
        lead=detail,
        webhook=detail.webhook,
        started_at=now - timedelta(minutes=22),
        status_code=200,
        latency_ms=212,
        outcome="accepted",
    )
    return detail


def test_it_screenshots_the_main_pages(page, login_as, operator, out_dir):
    detail = seed(operator)
    login_as(operator)

    page.goto("/")
    expect(page.locator(".webhook")).to_have_count(3)
    page.screenshot(path=str(out_dir / "overview.png"))

    page.goto("/imports/")
    expect(page.locator("#import-list")).to_contain_text("tradeshow-badge-scans.csv")
    page.screenshot(path=str(out_dir / "imports.png"))

    page.goto("/dlq/")
    expect(page.locator("#dlq-table")).to_be_visible()
    page.locator("input[name=ids]").nth(0).check()
    page.locator("input[name=ids]").nth(2).check()
    page.get_by_role("link", name="Drain…").click()
    expect(page.get_by_test_id("drain-summary")).to_be_visible()
    page.screenshot(path=str(out_dir / "dlq.png"))

    page.goto("/leads/")
    expect(page.locator("#results tbody tr")).to_have_count(50)
    page.screenshot(path=str(out_dir / "leads.png"))

    page.goto(f"/leads/{detail.pk}/")
    expect(page.get_by_role("heading", name="Attempts")).to_be_visible()
    page.screenshot(path=str(out_dir / "lead-detail.png"))

    page.goto("/timeline/")
    expect(page.locator(".uplot canvas").first).to_be_visible()
    page.screenshot(path=str(out_dir / "timeline.png"), full_page=True)

    page.goto("/connect/")
    expect(page.get_by_role("heading", name="Connect Clay")).to_be_visible()
    page.screenshot(path=str(out_dir / "connect.png"), full_page=True)

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/")
    expect(page.locator(".webhook").first).to_be_visible()
    page.screenshot(path=str(out_dir / "overview-phone.png"))

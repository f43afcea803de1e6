"""Issue 12: dashboard presentation defects (DLQ retries, audit detail, circuit events, drain ETA,
sparkline of the first minutes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.admin.sites import site
from django.forms.models import model_to_dict
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from clayops import health
from clayops.models import AuditEntry, CircuitBreaker, CircuitEvent, Workspace
from tests.factories import make_budget, make_dead_letter, make_user

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def _fresh_cache():
    from django.core.cache import cache

    cache.clear()


# 1. DLQ retries of a permanent error


def test_dlq_says_a_permanent_entry_is_retried_only_by_an_operator(client, viewer, webhook):
    permanent = make_dead_letter(1, webhook=webhook, error_class="client_error", max_retries=0)
    make_dead_letter(2, webhook=webhook, error_class="server_error", max_retries=3)
    client.force_login(viewer)
    html = client.get(reverse("dashboard:dlq")).content.decode()
    row = re.search(rf'id="dlq-row-{permanent.pk}">(.*?)</tr>', html, re.S).group(1)
    assert "permanent: retried only by an operator" in row and "0 / 0" not in row
    assert "0 / 3" in html  # transient entries keep their count
    detail = client.get(reverse("dashboard:dlq_entry", args=[permanent.pk])).content.decode()
    assert "permanent: retried only by an operator" in detail and "0 of 0" not in detail


# 2. Audit detail: no empty values; a budget change names both sides


def test_audit_leaves_empty_values_out_of_the_detail(client, viewer):
    AuditEntry.objects.create(
        action="dlq_drain", target="all", count=2, detail={"error_class": "", "rate_per_second": 5.0}
    )
    client.force_login(viewer)
    html = client.get(reverse("dashboard:audit")).content.decode()
    assert "rate_per_second=5.0" in html
    assert "error_class=" not in html


def test_admin_change_of_a_workspace_budget_records_names_on_both_sides(client, viewer, workspace):
    admin_user = make_user("root", is_staff=True, is_superuser=True)
    old_budget = workspace.budget
    new_budget = make_budget(name="race")
    model_admin = site._registry[Workspace]
    request = RequestFactory().post("/admin/")
    request.user = admin_user
    data = {k: v for k, v in model_to_dict(workspace).items() if v is not None}
    data["budget"] = new_budget.pk
    form = model_admin.get_form(request, workspace, change=True)(data, instance=workspace)
    assert form.is_valid(), form.errors
    model_admin.save_model(request, form.save(commit=False), form, change=True)

    entry = AuditEntry.objects.get(action="admin_change")
    assert entry.detail["budget"] == {"from": str(old_budget), "to": "race"}
    client.force_login(viewer)
    html = client.get(reverse("dashboard:audit")).content.decode()
    assert f"budget={old_budget} → race" in html


# 3. Recent circuit events stay inside their card


def test_overview_shows_circuit_events_compactly(client, viewer, webhook):
    row, _ = CircuitBreaker.objects.get_or_create(webhook=webhook)
    reason = "3 consecutive failures (last: " + '{"error":"' + "x" * 250 + '"})'
    CircuitEvent.objects.create(breaker=row, from_state="closed", to_state="open", reason=reason)
    client.force_login(viewer)
    html = client.get(reverse("dashboard:overview")).content.decode()
    events = html[html.index('aria-label="Recent circuit events"') :]
    events = events[: events.index("</section>")]
    assert "<strong>" in events and "→" in events and "<time" in events
    text = re.sub(r'title="[^"]*"', "", events)  # the full reason is only in the tooltip
    assert "x" * 100 not in text and "…" in text
    css = (Path(django_settings.BASE_DIR) / "static/clayops/app.css").read_text()
    assert re.search(r"\.events li \{[^}]*overflow-wrap: anywhere", css)


# 4. A fast drain is "under a second", not "about 0 s"


def test_drain_preview_says_under_a_second_when_fast(client, operator, webhook, settings):
    settings.CLAYOPS_DRAIN_RATE = 5.0
    make_dead_letter(1, webhook=webhook)
    make_dead_letter(2, webhook=webhook)
    client.force_login(operator)
    html = client.get(reverse("dashboard:dlq_drain_preview"), **HX).content.decode()
    assert "under a second" in html and "0 s<" not in html


def test_drain_preview_keeps_the_estimate_when_slower(client, operator, webhook, settings):
    settings.CLAYOPS_DRAIN_RATE = 1.0
    for i in range(3):
        make_dead_letter(i, webhook=webhook)
    client.force_login(operator)
    html = client.get(reverse("dashboard:dlq_drain_preview"), **HX).content.decode()
    assert "about <strong>3 s</strong>" in html and "under a second" not in html


# 5. The sparkline of the first minutes is never an empty box


def test_sparkline_with_one_point_shows_a_dot_and_says_it_is_collecting(client, viewer, webhook):
    health.record(webhook.pk, ok=True, latency_ms=100, at=timezone.now())
    client.force_login(viewer)
    html = client.get(reverse("dashboard:overview")).content.decode()
    svg = re.search(r'<svg class="spark".*?</svg>', html, re.S).group(0)
    assert "collecting data" in svg and "<text" in svg
    cx = float(re.search(r'<circle cx="([\d.]+)"', svg).group(1))
    assert 0 < cx < 240  # inside the box, not half cut off at its right edge


def test_sparkline_with_enough_points_does_not_say_collecting():
    from dashboard.templatetags.dash import sparkline

    svg = sparkline([None] * 50 + [100.0, 90.0, 80.0, 100.0])
    assert "<polyline" in svg and "collecting data" not in svg


def test_the_default_budget_pays_for_the_readmes_sample(db):
    """docs/sample-leads.csv: 200 leads plus one bad row and one duplicate, at the simulator webhook's
    credits per row: every valid row is funded today, none waits for midnight."""
    import csv
    from decimal import Decimal

    from django.conf import settings

    from clayops import budget as budget_svc
    from clayops import provisioning

    hook = provisioning.ensure_simulator_webhook("http://127.0.0.1:8765")
    with open(f"{settings.BASE_DIR}/docs/sample-leads.csv", newline="") as fh:
        rows = sum(1 for _ in csv.DictReader(fh))
    assert rows == 202
    needed = Decimal(rows - 2) * hook.credits_per_row
    assert budget_svc.reserve(budget=hook.workspace.budget, amount=needed) is not None

"""The Timeline page in Chromium: uPlot draws the seeded series under the strict CSP (the `page`
fixture fails the test on any console CSP violation, 404 or JavaScript error)."""

from __future__ import annotations

import re
from datetime import timedelta

from django.utils import timezone
from playwright.sync_api import expect

from clayops.models import Attempt, AuditEntry, CircuitEvent, Lead
from tests.factories import make_dead_letter, make_lead

# Okabe-Ito colours timeline.js draws these series in (an RGB triple each).
ACCEPTED = (0, 158, 115)
DEAD = (213, 94, 0)

COUNT_COLOUR = """([r, g, b]) => {
    const canvas = document.querySelector('#timeline-chart canvas');
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0;
    for (let i = 0; i < data.length; i += 4) {
        const near = Math.abs(data[i] - r) < 12 && Math.abs(data[i + 1] - g) < 12;
        if (near && Math.abs(data[i + 2] - b) < 12) n++;
    }
    return n;
}"""


def seed(webhook, operator):
    now = timezone.now()
    for minutes, outcome, error_class in [
        (20, "accepted", ""),
        (10, "accepted", ""),
        (10, "dead", "client_error"),
    ]:
        lead = make_lead(webhook=webhook, state=Lead.State.ACCEPTED)
        Attempt.objects.create(
            lead=lead,
            webhook=webhook,
            started_at=now - timedelta(minutes=minutes),
            outcome=outcome,
            error_class=error_class,
        )
    make_dead_letter(0, webhook=webhook, created_at=now - timedelta(minutes=10))
    CircuitEvent.objects.create(
        breaker=webhook.breaker,
        from_state="closed",
        to_state="open",
        reason="5 failures",
        at=now - timedelta(minutes=15),
    )
    AuditEntry.objects.create(
        user=operator, action="breaker_reset", target="webhook", at=now - timedelta(minutes=5)
    )


def test_it_draws_the_seeded_series_with_labelled_legend_and_marks(page, login_as, viewer, operator, webhook):
    seed(webhook, operator)
    login_as(viewer)
    page.goto("/")
    page.get_by_role("link", name="Timeline").click()
    expect(page).to_have_url(re.compile(r"/timeline/$"))
    chart = page.locator("#timeline-chart")
    expect(chart).to_have_attribute("data-ready", "true")
    expect(chart.locator("canvas")).to_have_count(1)
    expect(page.get_by_role("img", name=re.compile("^Chart of sends by outcome"))).to_have_count(1)
    legend = chart.locator(".u-legend")
    for label in [
        "Sends (grey bars)",
        "Accepted (solid, circles)",
        "Retry later (dashed, squares)",
        "Rate-limited 429 (dotted, triangles)",
        "Uncertain (dash-dot, diamonds)",
        "Dead (long dashes, crosses)",
        "DLQ inflow (short dashes, plus signs)",
        "Credits spent, right axis (thick steps, hollow squares)",
    ]:
        expect(legend).to_contain_text(label)
    # The legend's markers show each line's dash style (uPlot sets it through the CSSOM: no CSP error).
    retry_marker = legend.locator("tr", has_text="Retry later").locator(".u-marker")
    assert retry_marker.evaluate("el => getComputedStyle(el).borderTopStyle") == "dashed"
    # The seeded accepted and dead sends are on the canvas in their colours.
    assert page.evaluate(COUNT_COLOUR, list(ACCEPTED)) > 20
    assert page.evaluate(COUNT_COLOUR, list(DEAD)) > 10
    # Hovering shows the bucket's figures in the legend, dated like the tables (ISO date, 24-hour clock).
    over = chart.locator(".u-over")
    box = over.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    expect(legend.locator("tr").first).to_contain_text(re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}(?![ap]m)"))
    marks = page.get_by_test_id("timeline-marks")
    expect(marks).to_contain_text("B1")
    expect(marks).to_contain_text("people: closed → open: 5 failures")
    expect(marks).to_contain_text("olga: breaker reset webhook")
    expect(page.get_by_test_id("timeline-summary")).to_contain_text("3 sends")
    expect(page.get_by_test_id("timeline-empty")).to_have_count(0)
    page.get_by_text("Table of the buckets with activity").click()
    expect(page.get_by_test_id("timeline-buckets").locator("tbody tr")).to_have_count(2)


def test_it_switches_the_range_and_redraws(page, login_as, viewer, operator, webhook):
    seed(webhook, operator)
    login_as(viewer)
    page.goto("/timeline/")
    expect(page.locator("#timeline-chart")).to_have_attribute("data-ready", "true")
    page.get_by_role("navigation", name="Time range").get_by_role("link", name="Last week").click()
    expect(page).to_have_url(re.compile(r"/timeline/\?range=week$"))
    expect(page.get_by_role("heading", name="Last week, in 2-hour buckets")).to_be_visible()
    expect(page.get_by_role("link", name="Last week")).to_have_attribute("aria-current", "page")
    chart = page.locator("#timeline-chart")
    expect(chart).to_have_attribute("data-ready", "true")
    expect(chart.locator("canvas")).to_have_count(1)
    assert page.evaluate(COUNT_COLOUR, list(ACCEPTED)) > 20
    page.get_by_role("link", name="Last day").click()
    expect(page).to_have_url(re.compile(r"/timeline/\?range=day$"))
    expect(page.get_by_role("heading", name="Last day, in 15-minute buckets")).to_be_visible()
    expect(chart).to_have_attribute("data-ready", "true")


def test_it_says_there_were_no_sends_and_still_draws_the_axes(page, login_as, viewer, webhook):
    login_as(viewer)
    page.goto("/timeline/?range=day")
    expect(page.get_by_test_id("timeline-empty")).to_have_text("No sends in this range.")
    chart = page.locator("#timeline-chart")
    expect(chart).to_have_attribute("data-ready", "true")
    expect(chart.locator("canvas")).to_have_count(1)
    assert page.evaluate(COUNT_COLOUR, list(ACCEPTED)) == 0
    expect(page.get_by_test_id("timeline-marks")).to_contain_text("No breaker transitions")

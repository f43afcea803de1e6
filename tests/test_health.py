"""Health score over a sliding 5-minute window of per-minute samples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from clayops import health
from clayops.models import HealthSample
from tests.factories import make_webhook

T0 = datetime(2026, 3, 1, 12, 10, 30, tzinfo=UTC)


def at(minutes_ago: float) -> datetime:
    return T0 - timedelta(minutes=minutes_ago)


def record(webhook, *, ok: int = 0, bad: int = 0, when: datetime, latency: float = 100.0) -> None:
    for _ in range(ok):
        health.record(webhook.pk, ok=True, latency_ms=latency, at=when)
    for _ in range(bad):
        health.record(webhook.pk, ok=False, latency_ms=latency, at=when)


def test_it_reports_no_traffic_as_healthy(webhook):
    report = health.report(webhook.pk, now=T0)
    assert (report.score, report.status, report.no_traffic) == (100.0, "healthy", True)
    assert report.avg_latency_ms is None and report.max_latency_ms is None


def test_it_adds_calls_of_one_minute_into_one_sample(webhook):
    record(webhook, ok=3, bad=1, when=T0)
    record(webhook, ok=1, when=T0 + timedelta(seconds=20), latency=400.0)
    sample = HealthSample.objects.get()
    assert sample.minute == datetime(2026, 3, 1, 12, 10, tzinfo=UTC)
    assert (sample.successes, sample.failures) == (4, 1)
    assert sample.latency_sum_ms == 800.0
    assert sample.latency_max_ms == 400.0


def test_it_keeps_the_slowest_latency_of_the_minute(webhook):
    record(webhook, ok=1, when=T0, latency=900.0)
    record(webhook, ok=1, when=T0 + timedelta(seconds=10), latency=100.0)
    health.record(webhook.pk, ok=True, latency_ms=50.0, count=4, latency_max_ms=200.0, at=T0)

    sample = HealthSample.objects.get()
    assert sample.latency_max_ms == 900.0
    assert sample.latency_sum_ms == 900.0 + 100.0 + 4 * 50.0
    assert health.report(webhook.pk, now=T0).max_latency_ms == 900.0


def test_it_forgets_a_failure_older_than_the_window(webhook):
    record(webhook, bad=5, when=at(6))  # 12:04:30: wholly before the window [12:05:30, 12:10:30]
    record(webhook, ok=10, when=at(1))
    report = health.report(webhook.pk, now=T0)
    assert (report.score, report.status, report.failures) == (100.0, "healthy", 0)


def test_it_weights_the_bucket_the_window_start_cuts(webhook):
    record(webhook, bad=10, when=datetime(2026, 3, 1, 12, 5, 10, tzinfo=UTC))
    record(webhook, ok=45, when=at(1))
    # Window starts 12:05:30: half of the 12:05 bucket is inside, so its 10 failures count as 5.
    report = health.report(webhook.pk, now=T0)
    assert report.score == 90.0
    assert report.status == "degraded"
    # 24 s later only a tenth of that bucket is inside: the window slides, it does not reset.
    later = health.report(webhook.pk, now=T0 + timedelta(seconds=24))
    assert later.score == pytest.approx(100 * 45 / 46, abs=0.01)
    assert later.status == "healthy"
    # And once the window has passed the bucket, it no longer counts at all.
    assert health.report(webhook.pk, now=T0 + timedelta(seconds=31)).score == 100.0


@pytest.mark.parametrize(
    ("ok", "bad", "score", "status"),
    [
        (96, 4, 96.0, "healthy"),
        (95, 5, 95.0, "degraded"),  # "healthy" means above 95
        (90, 10, 90.0, "degraded"),
        (81, 19, 81.0, "degraded"),
        (80, 20, 80.0, "unhealthy"),  # 80 is not above 80
        (0, 3, 0.0, "unhealthy"),
    ],
)
def test_it_maps_the_score_to_a_status(webhook, ok, bad, score, status):
    record(webhook, ok=ok, bad=bad, when=at(2))
    report = health.report(webhook.pk, now=T0)
    assert (report.score, report.status, report.no_traffic) == (score, status, False)
    assert (report.successes, report.failures) == (ok, bad)


def test_it_reports_latency_over_the_window(webhook):
    record(webhook, ok=1, when=at(1), latency=100.0)
    record(webhook, ok=1, when=at(2), latency=300.0)
    record(webhook, ok=1, when=at(8), latency=5000.0)  # outside the window
    report = health.report(webhook.pk, now=T0)
    assert report.avg_latency_ms == 200.0
    assert report.max_latency_ms == 300.0


def test_it_draws_a_sparkline_oldest_first_with_gaps(webhook):
    record(webhook, ok=1, bad=1, when=at(2))
    record(webhook, ok=4, when=at(0))
    points = health.sparkline(webhook.pk, now=T0, minutes=5)
    assert points == [None, None, 50.0, None, 100.0]
    assert len(health.sparkline(webhook.pk, now=T0)) == 60


def test_it_reports_many_webhooks_in_one_query(webhook, django_assert_num_queries):
    other = make_webhook(workspace=webhook.workspace, name="companies")
    quiet = make_webhook(workspace=webhook.workspace, name="quiet")
    record(webhook, ok=9, bad=1, when=at(1))
    record(other, bad=2, when=at(1))
    with django_assert_num_queries(1):
        reports = health.reports([webhook.pk, other.pk, quiet.pk], now=T0)
    assert reports[webhook.pk].score == 90.0
    assert reports[other.pk].status == "unhealthy"
    assert reports[quiet.pk].no_traffic
    assert health.report(webhook.pk, now=T0) == reports[webhook.pk]

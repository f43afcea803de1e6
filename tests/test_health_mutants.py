"""Health, pinned where mutation testing (bench/mutation.sh) found it unasserted: minutes in UTC
whatever the machine's zone, latency sums and peaks of a batch, the cut bucket's weight, the window's
end, rounding, and samples of other webhooks."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from clayops import health
from clayops.health import HealthReport
from clayops.models import HealthSample
from tests.factories import make_webhook

T0 = datetime(2026, 3, 1, 12, 10, 30, tzinfo=UTC)


@pytest.fixture
def kolkata(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_it_buckets_minutes_in_utc_whatever_the_machines_zone(kolkata):
    minute = health.minute_of(datetime(2026, 3, 1, 14, 10, 45, tzinfo=timezone(timedelta(hours=2))))
    assert minute == datetime(2026, 3, 1, 12, 10, tzinfo=UTC)
    assert minute.utcoffset() == timedelta(0)


def test_it_keeps_the_mean_as_the_peak_and_the_sum_of_a_new_batch(webhook):
    health.record(webhook.pk, ok=True, latency_ms=100.0, at=T0, count=4)
    health.record(webhook.pk, ok=True, latency_ms=80.0, at=T0)
    sample = HealthSample.objects.get(webhook=webhook)
    assert (sample.successes, sample.latency_sum_ms, sample.latency_max_ms) == (5, 480.0, 100.0)


def test_it_reports_no_traffic_with_zero_counts():
    assert health._report([], now=T0, window_seconds=300) == HealthReport(
        100.0, "healthy", True, 0, 0, None, None
    )


def test_it_counts_a_single_answer(webhook):
    health.record(webhook.pk, ok=True, latency_ms=50.0, at=T0)
    report = health.report(webhook.pk, now=T0)
    assert (report.no_traffic, report.successes, report.score) == (False, 1, 100.0)


def test_it_weighs_the_cut_bucket_by_the_share_still_inside(webhook):
    # Window [12:05:30, 12:10:30]: the 12:05 bucket is half inside.
    health.record(webhook.pk, ok=True, latency_ms=100.0, at=datetime(2026, 3, 1, 12, 5, tzinfo=UTC), count=10)
    health.record(
        webhook.pk, ok=False, latency_ms=100.0, at=datetime(2026, 3, 1, 12, 8, tzinfo=UTC), count=10
    )
    report = health.report(webhook.pk, now=T0)
    assert (report.successes, report.failures, report.score) == (5, 10, 33.33)
    assert report.avg_latency_ms == 100.0


def test_it_counts_the_bucket_of_the_windows_last_minute(webhook):
    now = datetime(2026, 3, 1, 12, 10, tzinfo=UTC)
    health.record(webhook.pk, ok=False, latency_ms=10.0, at=now)
    health.record(webhook.pk, ok=True, latency_ms=10.0, at=now - timedelta(minutes=1), count=2)
    report = health.report(webhook.pk, now=now)
    assert (report.successes, report.failures, report.score) == (2, 1, 66.67)


def test_it_draws_each_webhooks_own_sparkline_to_a_tenth(webhook):
    other = make_webhook(workspace=webhook.workspace, name="companies")
    minute = datetime(2026, 3, 1, 12, 10, tzinfo=UTC)
    health.record(webhook.pk, ok=True, latency_ms=10.0, at=minute, count=2)
    health.record(webhook.pk, ok=False, latency_ms=10.0, at=minute)
    health.record(other.pk, ok=False, latency_ms=10.0, at=minute, count=5)
    assert health.sparkline(webhook.pk, now=T0, minutes=2) == [None, 66.7]

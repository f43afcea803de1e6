"""Retry policy, pinned where mutation testing (bench/mutation.sh) found it unasserted: the 2xx range's
upper end, the backoff's defaults and bounds, naive HTTP dates, and what a pause records and logs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from clayops import retry
from clayops.models import Workspace
from clayops.retry import ErrorClass as E

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Highest:
    """A random source that always draws the top of the range: the backoff's ceiling."""

    def uniform(self, low: float, high: float) -> float:
        return high


def test_it_treats_300_as_a_client_error_not_a_success():
    assert retry.classify_status(299) is None
    assert retry.classify_status(300) == E.CLIENT


def test_it_caps_the_backoff_at_five_minutes_from_two_seconds_doubling():
    top = Highest()
    assert [retry.backoff_seconds(a, rng=top) for a in (1, 2, 8, 9, 50)] == [2.0, 4.0, 256.0, 300.0, 300.0]
    assert retry.backoff_seconds(10**6, base=1.0, cap=1e30, rng=top) == 2.0**64
    assert retry.backoff_seconds(1, cap=0.5, rng=top) == 0.5
    assert retry.backoff_seconds(1, base=0.0, rng=top) == 0.0


def test_it_reads_an_http_date_without_a_zone_as_utc():
    assert retry.parse_retry_after("Sun, 01 Mar 2026 12:02:00 -0000", now=NOW) == 120.0


def test_it_logs_a_webhook_pause_with_its_reason_or_says_there_was_none(webhook, caplog):
    until = NOW + timedelta(minutes=2)
    with caplog.at_level(logging.INFO, logger="clayops.retry"):
        retry.pause_webhook(webhook.pk, until=until)
        retry.pause_webhook(webhook.pk, until=until + timedelta(minutes=1), reason="HTTP 429")
    assert [r.getMessage() for r in caplog.records if r.name == "clayops.retry"] == [
        f"webhook {webhook.pk} paused until 2026-03-01T12:02:00+00:00: no reason given",
        f"webhook {webhook.pk} paused until 2026-03-01T12:03:00+00:00: HTTP 429",
    ]


def test_it_keeps_200_characters_of_a_workspace_pause_reason_and_logs_it(workspace, caplog):
    with caplog.at_level(logging.WARNING, logger="clayops.retry"):
        retry.pause_workspace(workspace.pk, until=NOW, reason="HTTP 402 " + "x" * 300)
    assert Workspace.objects.get(pk=workspace.pk).pause_reason == ("HTTP 402 " + "x" * 300)[:200]
    assert [r.getMessage() for r in caplog.records if r.name == "clayops.retry"] == [
        f"workspace {workspace.pk} paused until 2026-03-01T12:00:00+00:00: HTTP 402 " + "x" * 300
    ]

"""Classification of Clay's answers, backoff with full jitter, Retry-After, pauses that only extend."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from clayops import retry
from clayops.models import Workspace
from clayops.retry import ErrorClass as E


@pytest.mark.parametrize(
    ("status", "expected", "transient"),
    [
        (200, None, None),
        (202, None, None),
        (204, None, None),
        (400, E.CLIENT, False),
        (401, E.CLIENT, False),
        (403, E.CLIENT, False),
        (402, E.PAYMENT, False),
        (404, E.NOT_FOUND, False),
        (408, E.SERVER, True),
        (409, E.CONFLICT, True),
        (413, E.INVALID_PAYLOAD, False),
        (422, E.INVALID_PAYLOAD, False),
        (429, E.RATE_LIMITED, True),
        (500, E.SERVER, True),
        (502, E.SERVER, True),
        (503, E.SERVER, True),
        (504, E.SERVER, True),
        (301, E.CLIENT, False),
    ],
)
def test_it_classifies_each_status_once(status, expected, transient):
    got = retry.classify_status(status)
    assert got == expected
    if expected is not None:
        assert retry.is_transient(got) is transient
        assert retry.is_permanent(got) is (not transient)


def test_it_treats_transport_errors_as_transient():
    assert retry.is_transient(E.TIMEOUT) and retry.is_transient(E.CONNECTION)
    assert not retry.is_permanent(E.TIMEOUT) and not retry.is_permanent(E.CONNECTION)
    assert not retry.is_transient(None) and not retry.is_permanent(None)


def test_it_accepts_stored_error_class_strings():
    # Lead.error_class and DeadLetter.error_class hold the plain string.
    assert retry.is_transient("server_error")
    assert retry.is_permanent("invalid_payload")


def test_it_jitters_fully_between_zero_and_the_exponential_ceiling():
    rng = random.Random(7)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (5, 32.0)]:
        samples = [retry.backoff_seconds(attempt, base=2.0, cap=300.0, rng=rng) for _ in range(400)]
        assert all(0.0 <= s <= ceiling for s in samples)
        # Full jitter spreads over the whole range, not just near the ceiling.
        assert min(samples) < ceiling * 0.1
        assert max(samples) > ceiling * 0.9


def test_it_caps_the_backoff_even_for_absurd_attempt_counts():
    rng = random.Random(1)
    samples = [retry.backoff_seconds(attempt, cap=300.0, rng=rng) for attempt in (9, 10, 50, 5000)]
    assert all(0.0 <= s <= 300.0 for s in samples)
    assert max(retry.backoff_seconds(12, cap=300.0, rng=rng) for _ in range(200)) > 250


def test_it_reads_retry_after_as_seconds():
    assert retry.parse_retry_after("120") == 120.0
    assert retry.parse_retry_after(" 5 ") == 5.0
    assert retry.parse_retry_after("0") == 0.0
    assert retry.parse_retry_after("-3") == 0.0


def test_it_reads_retry_after_as_an_http_date():
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert retry.parse_retry_after("Sun, 01 Mar 2026 12:01:30 GMT", now=now) == 90.0
    # A date in the past means "now", never a negative wait.
    assert retry.parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "12abc", "Mon, 99 Foo 2026", "nan", "inf"])
def test_it_ignores_garbage_retry_after(value):
    assert retry.parse_retry_after(value) is None


def test_it_pauses_a_webhook_for_every_worker_and_only_extends(webhook):
    hook = webhook
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert retry.pause_webhook(hook.pk, until=now + timedelta(seconds=60), reason="429")
    # A shorter Retry-After seen by another worker does not shorten the pause.
    assert not retry.pause_webhook(hook.pk, until=now + timedelta(seconds=10), reason="429")
    hook.refresh_from_db()
    assert hook.paused_until == now + timedelta(seconds=60)
    assert retry.webhook_paused_for(hook, now=now) == 60.0
    assert retry.pause_webhook(hook.pk, until=now + timedelta(seconds=120))
    hook.refresh_from_db()
    assert hook.paused_until == now + timedelta(seconds=120)
    assert retry.webhook_paused_for(hook, now=now + timedelta(seconds=200)) == 0.0


def test_it_says_an_unpaused_webhook_waits_nothing(webhook):
    assert retry.webhook_paused_for(webhook) == 0.0


def test_it_pauses_the_workspace_on_402_and_only_extends(workspace):
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert retry.pause_workspace(workspace.pk, until=now + timedelta(hours=1), reason="402 from Clay")
    assert not retry.pause_workspace(workspace.pk, until=now + timedelta(minutes=5), reason="later, shorter")
    workspace = Workspace.objects.get(pk=workspace.pk)
    assert workspace.paused_until == now + timedelta(hours=1)
    assert workspace.pause_reason == "402 from Clay"
    assert retry.workspace_paused_for(workspace, now=now) == 3600.0

"""The circuit breaker, pinned where mutation testing (bench/mutation.sh) found it unasserted: the exact
admission each state answers, that every UPDATE touches this webhook's breaker only, the fields a
transition resets, races a worker can lose, and the operator's audit entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db.models import QuerySet

from clayops import breaker
from clayops.breaker import Admission
from clayops.models import AuditEntry, CircuitBreaker, CircuitEvent
from tests.factories import make_webhook

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)
S = CircuitBreaker.State


def row(hook) -> CircuitBreaker:
    return CircuitBreaker.objects.get(webhook=hook)


def put(hook, **fields) -> None:
    CircuitBreaker.objects.filter(webhook=hook).update(**fields)


def reasons(hook) -> list[str]:
    return list(
        CircuitEvent.objects.filter(breaker__webhook=hook).order_by("id").values_list("reason", flat=True)
    )


@pytest.fixture
def other(webhook):
    """A second webhook of the same workspace: what happens to one breaker must not touch it."""
    return make_webhook(workspace=webhook.workspace, name="companies")


def test_it_answers_each_state_with_its_exact_admission(webhook):
    assert breaker.allow(webhook.pk, now=T0) == Admission(True, False, S.CLOSED, "closed")
    put(webhook, state=S.OPEN, opened_at=T0)
    assert breaker.allow(webhook.pk, now=T0 + timedelta(seconds=10)) == Admission(
        False, False, S.OPEN, "open: cooling down", 20.0
    )
    assert breaker.allow(webhook.pk, now=T0 + timedelta(seconds=30)) == Admission(
        True, True, S.HALF_OPEN, "half-open: probe"
    )
    assert breaker.allow(webhook.pk, now=T0 + timedelta(seconds=31)) == Admission(
        False, False, S.HALF_OPEN, "half-open: probe limit reached", breaker.HALF_OPEN_RETRY_SECONDS
    )
    put(webhook, state=S.FORCED_OPEN)
    assert breaker.allow(webhook.pk, now=T0) == Admission(
        False, False, S.FORCED_OPEN, "paused by operator", None
    )


@pytest.mark.parametrize(
    ("meanwhile", "expected"),
    [
        ({"state": S.CLOSED, "opened_at": None}, Admission(True, False, S.CLOSED, "closed")),
        ({"state": S.FORCED_OPEN}, Admission(False, False, S.FORCED_OPEN, "paused by operator", None)),
        (
            {"state": S.OPEN, "opened_at": T0 - timedelta(seconds=10)},
            Admission(False, False, S.OPEN, "open: cooling down", 20.0),
        ),
        (
            {"state": S.OPEN, "opened_at": T0 - timedelta(hours=1)},
            Admission(False, False, S.OPEN, "open: cooling down", 30.0),
        ),
    ],
)
def test_it_answers_from_the_state_another_worker_left_when_no_probe_slot_was_taken(
    webhook, monkeypatch, meanwhile, expected
):
    put(webhook, state=S.HALF_OPEN, updated_at=T0)
    monkeypatch.setattr(breaker, "_free_stale_probes", lambda b, now: put(webhook, **meanwhile))
    assert breaker.allow(webhook.pk, now=T0) == expected
    assert row(webhook).half_open_in_flight == 0


def test_it_starts_half_open_with_clean_probe_counters_and_touches_no_other_breaker(webhook, other):
    for hook in (webhook, other):
        put(
            hook,
            state=S.OPEN,
            opened_at=T0,
            half_open_in_flight=3,
            half_open_successes=2,
            updated_at=LONG_AGO,
        )
    t = T0 + timedelta(seconds=30)
    assert breaker.allow(webhook.pk, now=t).probe
    mine = row(webhook)
    assert (mine.state, mine.half_open_in_flight, mine.half_open_successes, mine.updated_at) == (
        S.HALF_OPEN,
        1,
        0,
        t,
    )
    theirs = row(other)
    assert (theirs.state, theirs.half_open_in_flight, theirs.updated_at) == (S.OPEN, 3, LONG_AGO)


def stale_read(monkeypatch, hook) -> None:
    """The worker read the breaker just before another worker (or the operator) changed it."""
    stale = row(hook)
    real = breaker.get_breaker
    calls = []

    def get_breaker(webhook_id):
        calls.append(webhook_id)
        return stale if len(calls) == 1 else real(webhook_id)

    monkeypatch.setattr(breaker, "get_breaker", get_breaker)


def test_it_lets_no_probe_through_when_the_operator_paused_it_after_the_worker_read_it(webhook, monkeypatch):
    put(webhook, state=S.OPEN, opened_at=T0)
    stale_read(monkeypatch, webhook)
    put(webhook, state=S.FORCED_OPEN)
    admission = breaker.allow(webhook.pk, now=T0 + timedelta(minutes=5))
    assert (admission.allowed, admission.state) == (False, S.FORCED_OPEN)
    assert (row(webhook).state, row(webhook).half_open_in_flight) == (S.FORCED_OPEN, 0)


def test_it_keeps_the_cooldown_of_a_newer_open_period_a_worker_did_not_see(webhook, monkeypatch):
    put(webhook, state=S.OPEN, opened_at=T0)
    stale_read(monkeypatch, webhook)
    t = T0 + timedelta(seconds=40)
    put(webhook, opened_at=t - timedelta(seconds=5))  # a probe failed and re-opened it meanwhile
    admission = breaker.allow(webhook.pk, now=t)
    assert (admission.allowed, admission.state, admission.retry_in) == (False, S.OPEN, 25.0)
    assert row(webhook).state == S.OPEN


def test_it_dates_a_probe_admission_and_frees_only_this_breakers_stale_slots(webhook, other):
    for hook in (webhook, other):
        put(hook, state=S.HALF_OPEN, half_open_in_flight=1, updated_at=LONG_AGO)
    assert breaker.allow(webhook.pk, now=T0).probe
    mine = row(webhook)
    assert (mine.half_open_in_flight, mine.updated_at) == (1, T0)
    assert reasons(webhook) == ["probe slots freed: no probe result for 60s"]
    assert (row(other).half_open_in_flight, row(other).updated_at) == (1, LONG_AGO)


def test_it_frees_no_slot_and_writes_no_event_when_none_is_taken(webhook):
    put(webhook, state=S.HALF_OPEN, half_open_in_flight=0, updated_at=LONG_AGO)
    assert breaker.allow(webhook.pk, now=T0).probe
    assert reasons(webhook) == []


def test_it_admits_exactly_n_probes_for_a_job_of_n_when_more_slots_are_free(webhook):
    put(webhook, state=S.HALF_OPEN, half_open_max_probes=5, updated_at=T0)
    probes, first = breaker.allow_many(webhook.pk, 3, now=T0)
    assert (probes, first.probe) == ([True, True, True], True)
    assert row(webhook).half_open_in_flight == 3


def test_it_sends_the_rest_of_a_job_as_ordinary_calls_once_a_probe_closed_the_breaker(webhook, monkeypatch):
    answers = iter(
        [Admission(True, True, S.HALF_OPEN, "half-open: probe"), Admission(True, False, S.CLOSED, "closed")]
    )
    monkeypatch.setattr(breaker, "allow", lambda webhook_id, now=None: next(answers))
    probes, first = breaker.allow_many(webhook.pk, 4, now=T0)
    assert (probes, first.state) == ([True, False, False, False], S.HALF_OPEN)


def test_it_resets_the_failures_of_this_breaker_on_a_batch_of_one_success_or_more(webhook, other):
    for hook in (webhook, other):
        breaker.record_failure(hook.pk, probe=False, reason="HTTP 503", now=T0)
    breaker.record_successes(webhook.pk, 0, now=T0)
    assert row(webhook).consecutive_failures == 1
    breaker.record_successes(webhook.pk, 1, now=T0 + timedelta(seconds=1))
    assert (row(webhook).consecutive_failures, row(webhook).updated_at) == (0, T0 + timedelta(seconds=1))
    assert row(other).consecutive_failures == 1


def test_it_counts_batch_successes_as_successes_in_the_rate_window(webhook):
    put(webhook, minimum_calls=10, failure_rate_threshold=50, failure_threshold=100)
    breaker.record_successes(webhook.pk, 10, now=T0)
    for _ in range(4):
        breaker.record_failure(webhook.pk, probe=False, reason="HTTP 503", now=T0)
    assert row(webhook).state == S.CLOSED  # 4 of 14 failed


def test_it_resets_this_breakers_failures_on_one_success(webhook, other):
    for hook in (webhook, other):
        breaker.record_failure(hook.pk, probe=False, reason="HTTP 503", now=T0)
    t = T0 + timedelta(seconds=1)
    breaker.record_success(webhook.pk, probe=False, now=t)
    assert (row(webhook).consecutive_failures, row(webhook).updated_at) == (0, t)
    assert row(other).consecutive_failures == 1
    breaker.record_success(webhook.pk, probe=False, now=t + timedelta(seconds=1))
    assert row(webhook).updated_at == t  # nothing to reset: the row is not written


def test_it_closes_only_this_breaker_after_its_probes_succeed(webhook, other):
    for hook in (webhook, other):
        put(
            hook,
            state=S.HALF_OPEN,
            half_open_in_flight=1,
            half_open_successes=5,
            success_threshold=1,
            updated_at=LONG_AGO,
        )
    breaker.record_success(webhook.pk, probe=True, now=T0)
    mine = row(webhook)
    assert (mine.state, mine.updated_at) == (S.CLOSED, T0)
    theirs = row(other)
    assert (theirs.state, theirs.half_open_in_flight, theirs.half_open_successes) == (S.HALF_OPEN, 1, 5)


def test_it_reopens_only_this_breaker_when_its_probe_fails(webhook, other):
    for hook in (webhook, other):
        put(hook, state=S.HALF_OPEN, half_open_in_flight=1, updated_at=LONG_AGO)
    breaker.record_failure(webhook.pk, probe=True, reason="HTTP 503", now=T0)
    assert (row(webhook).state, row(webhook).updated_at) == (S.OPEN, T0)
    assert (row(other).state, row(other).half_open_in_flight) == (S.HALF_OPEN, 1)


def test_it_counts_and_opens_this_breaker_only(webhook, other):
    put(webhook, failure_threshold=2, half_open_in_flight=2, half_open_successes=1)
    breaker.record_failure(webhook.pk, probe=False, reason="HTTP 503", now=T0)
    assert (row(webhook).consecutive_failures, row(webhook).updated_at) == (1, T0)
    put(other, consecutive_failures=1, failure_threshold=2)
    t = T0 + timedelta(seconds=1)
    breaker.record_failure(webhook.pk, probe=False, reason="HTTP 503", now=t)
    mine = row(webhook)
    assert (mine.state, mine.half_open_in_flight, mine.half_open_successes, mine.updated_at) == (
        S.OPEN,
        0,
        0,
        t,
    )
    assert (row(other).state, row(other).consecutive_failures) == (S.CLOSED, 1)


def test_it_opens_on_the_failure_rate_at_the_threshold_and_not_below(webhook):
    put(webhook, minimum_calls=10, failure_rate_threshold=50, failure_threshold=1000)
    breaker.record_successes(webhook.pk, 51, now=T0)
    for _ in range(50):
        breaker.record_failure(webhook.pk, probe=False, reason="HTTP 503", now=T0)
    assert row(webhook).state == S.CLOSED  # 50 of 101: just under half
    breaker.record_failure(webhook.pk, probe=False, reason="HTTP 503", now=T0)
    assert row(webhook).state == S.OPEN  # 51 of 102: half
    assert reasons(webhook) == ["51 of 102 calls failed in 60s (last: HTTP 503)"]


def test_it_stays_closed_on_a_low_failure_rate(webhook):
    put(webhook, minimum_calls=4, failure_rate_threshold=50, failure_threshold=100)
    breaker.record_successes(webhook.pk, 9, now=T0)
    breaker.record_failure(webhook.pk, probe=False, reason="HTTP 503", now=T0)
    assert row(webhook).state == S.CLOSED


def test_it_cancels_a_probe_of_this_breaker_only(webhook, other):
    for hook in (webhook, other):
        put(hook, state=S.HALF_OPEN, half_open_in_flight=1)
    breaker.cancel_probe(webhook.pk)
    assert (row(webhook).half_open_in_flight, row(other).half_open_in_flight) == (0, 1)


def test_it_clears_a_closed_breakers_counters_on_reset_and_touches_no_other(webhook, other, operator):
    for hook in (webhook, other):
        put(hook, consecutive_failures=3, updated_at=LONG_AGO)
    assert breaker.reset(webhook.pk, by=operator, now=T0) is False
    assert (row(webhook).consecutive_failures, row(webhook).updated_at) == (0, T0)
    assert row(other).consecutive_failures == 3
    entry = AuditEntry.objects.get(action="breaker_reset")
    assert (entry.user, entry.target, entry.at, entry.detail) == (
        operator,
        f"webhook:{webhook.pk} {webhook}",
        T0,
        {"from": S.CLOSED, "changed": False},
    )


def test_it_moves_only_this_breaker_and_dates_the_move(webhook, other, operator):
    for hook in (webhook, other):
        put(hook, state=S.OPEN, opened_at=LONG_AGO, updated_at=LONG_AGO)
    assert breaker.reset(webhook.pk, by=operator, now=T0) is True
    assert (row(webhook).state, row(webhook).updated_at) == (S.CLOSED, T0)
    assert row(other).state == S.OPEN
    assert reasons(webhook) == ["reset by operator"]
    assert AuditEntry.objects.get(action="breaker_reset").detail == {"from": S.OPEN, "changed": True}
    put(webhook, state=S.OPEN)
    breaker.reset(webhook.pk, now=T0)  # a reset by the system, not an operator
    assert reasons(webhook) == ["reset by operator", "reset"]


def test_it_audits_a_pause_with_its_default_reason(webhook, operator):
    assert breaker.force_open(webhook.pk, by=operator, now=T0) is True
    assert reasons(webhook) == ["paused by operator"]
    entry = AuditEntry.objects.get(action="breaker_force_open")
    assert (entry.user, entry.at, entry.detail) == (
        operator,
        T0,
        {"from": S.CLOSED, "reason": "paused by operator", "changed": True},
    )
    assert breaker.force_open(webhook.pk, by=operator, now=T0) is False
    again = AuditEntry.objects.filter(action="breaker_force_open").first()
    assert again.detail == {"from": S.FORCED_OPEN, "reason": "paused by operator", "changed": False}


def test_it_keeps_the_first_300_characters_of_an_event_reason(webhook):
    breaker.force_open(webhook.pk, reason="x" * 400, now=T0)
    assert reasons(webhook) == ["x" * 300]


def test_it_dates_each_probe_admission_and_each_probe_success_that_does_not_close_it(webhook):
    # updated_at is what tells a live probe from a dead worker's slot (probe_timeout).
    put(
        webhook,
        state=S.HALF_OPEN,
        half_open_max_probes=3,
        success_threshold=3,
        updated_at=T0 - timedelta(seconds=10),
    )
    assert breaker.allow(webhook.pk, now=T0).probe
    assert row(webhook).updated_at == T0
    t = T0 + timedelta(seconds=1)
    breaker.record_success(webhook.pk, probe=True, now=t)
    assert (row(webhook).state, row(webhook).half_open_successes, row(webhook).updated_at) == (
        S.HALF_OPEN,
        1,
        t,
    )


def test_it_reads_the_breaker_another_worker_created_first(webhook, monkeypatch):
    monkeypatch.setattr(QuerySet, "first", lambda self: None)  # the read missed: the insert then fails
    assert breaker.get_breaker(webhook.pk).pk == row(webhook).pk

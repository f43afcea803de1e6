"""Circuit breaker per webhook, shared by every worker through the database.

closed ──(N consecutive failures, or failure rate ≥ R % over the sliding window with ≥ M calls)──▶ open
open ──(cooldown passed; first allow() wins the transition)──▶ half_open
half_open: at most K probes in flight at once; S probe successes ──▶ closed; a probe failure ──▶ open
(cooldown restarts). forced_open (operator's pause) admits nothing until reset().

State lives in the CircuitBreaker row and changes only by conditional UPDATEs (filter on the
expected state, check the row count), so two workers racing for one transition produce one event,
and the half-open probe count can never pass K. The failure-rate window is a per-second counter in
Redis, updated and summed by one Lua script; it is statistics, not state: if Redis loses it, the
breaker simply starts counting again (consecutive failures, in the database, still open it).

Accepted races: a request admitted while closed may finish after the breaker opened; its success
or failure then only feeds the window (it is not a probe), which is the truth about Clay anyway.
Budget and breaker refusals are not failures: callers report only answers (or silence) from Clay.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import django_rq
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from .models import AuditEntry, CircuitBreaker, CircuitEvent

State = CircuitBreaker.State

WINDOW_SCRIPT = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local field = ARGV[3]
if field ~= '' then
  redis.call('HINCRBY', key, field, 1)
  redis.call('EXPIRE', key, window + 60)
end
local all = redis.call('HGETALL', key)
local ok, bad = 0, 0
for i = 1, #all, 2 do
  local name = all[i]
  local sec = tonumber(string.sub(name, 1, -3))
  if sec <= now - window then
    redis.call('HDEL', key, name)
  elseif sec <= now then
    if string.sub(name, -1) == 's' then ok = ok + tonumber(all[i + 1]) else bad = bad + tonumber(all[i + 1]) end
  end
end
return {ok, bad}
"""


@dataclass(frozen=True)
class Admission:
    allowed: bool
    probe: bool
    state: str
    reason: str
    retry_in: float | None = None


def get_breaker(webhook_id: int) -> CircuitBreaker:
    breaker = CircuitBreaker.objects.filter(webhook_id=webhook_id).first()
    if breaker is not None:
        return breaker
    try:
        with transaction.atomic():
            return CircuitBreaker.objects.create(webhook_id=webhook_id)
    except IntegrityError:
        return CircuitBreaker.objects.get(webhook_id=webhook_id)


def cooldown_remaining(breaker: CircuitBreaker, *, now: datetime | None = None) -> float:
    if breaker.state != State.OPEN or breaker.opened_at is None:
        return 0.0
    now = now or timezone.now()
    return max(0.0, breaker.cooldown_seconds - (now - breaker.opened_at).total_seconds())


def _event(
    breaker: CircuitBreaker, from_state: str, to_state: str, reason: str, *, now: datetime, by=None
) -> None:
    CircuitEvent.objects.create(
        breaker=breaker, from_state=from_state, to_state=to_state, reason=reason[:300], at=now, by=by
    )


def _window(breaker: CircuitBreaker, *, now: datetime, outcome: str) -> tuple[int, int]:
    """Count this call ('s' success, 'f' failure, '' none) and return (successes, failures) in the window."""
    conn = django_rq.get_connection("default")
    script = conn.register_script(WINDOW_SCRIPT)
    second = int(now.timestamp())
    field = f"{second}:{outcome}" if outcome else ""
    ok, bad = script(
        keys=[f"clayops:breaker:{breaker.pk}:window"], args=[second, breaker.window_seconds, field]
    )
    return int(ok), int(bad)


def _clear_window(breaker: CircuitBreaker) -> None:
    django_rq.get_connection("default").delete(f"clayops:breaker:{breaker.pk}:window")


def _probe_timeout(breaker: CircuitBreaker) -> float:
    # A probe's worker may die holding its slot; after this long the slots are given back.
    return max(breaker.cooldown_seconds, 60)


def allow(webhook_id: int, *, now: datetime | None = None) -> Admission:
    """May a call to this webhook go out now? Open and forced-open breakers never call Clay."""
    now = now or timezone.now()
    breaker = get_breaker(webhook_id)
    if breaker.state == State.CLOSED:
        return Admission(True, False, State.CLOSED, "")
    if breaker.state == State.FORCED_OPEN:
        return Admission(False, False, State.FORCED_OPEN, "paused by operator", None)
    if breaker.state == State.OPEN:
        remaining = cooldown_remaining(breaker, now=now)
        if remaining > 0:
            return Admission(False, False, State.OPEN, "cooling down", remaining)
        moved = CircuitBreaker.objects.filter(
            pk=breaker.pk, state=State.OPEN, opened_at=breaker.opened_at
        ).update(state=State.HALF_OPEN, half_open_in_flight=0, half_open_successes=0, updated_at=now)
        if moved:
            _event(
                breaker,
                State.OPEN,
                State.HALF_OPEN,
                f"cooldown of {breaker.cooldown_seconds}s passed",
                now=now,
            )
    else:  # half-open: free the slots of probes whose worker died
        stale = now - timedelta(seconds=_probe_timeout(breaker))
        CircuitBreaker.objects.filter(
            pk=breaker.pk, state=State.HALF_OPEN, updated_at__lt=stale, half_open_in_flight__gt=0
        ).update(half_open_in_flight=0, updated_at=now)
    took = CircuitBreaker.objects.filter(
        pk=breaker.pk, state=State.HALF_OPEN, half_open_in_flight__lt=F("half_open_max_probes")
    ).update(half_open_in_flight=F("half_open_in_flight") + 1, updated_at=now)
    if took:
        return Admission(True, True, State.HALF_OPEN, "probe")
    current = get_breaker(webhook_id)
    if current.state == State.CLOSED:  # closed meanwhile by another worker's probe
        return Admission(True, False, State.CLOSED, "")
    retry_in = cooldown_remaining(current, now=now) or float(min(current.cooldown_seconds, 5))
    return Admission(
        False,
        False,
        current.state,
        "probe limit reached" if current.state == State.HALF_OPEN else "cooling down",
        retry_in,
    )


def record_success(webhook_id: int, *, probe: bool, now: datetime | None = None) -> None:
    now = now or timezone.now()
    breaker = get_breaker(webhook_id)
    _window(breaker, now=now, outcome="s")
    if not probe:
        if breaker.consecutive_failures:
            CircuitBreaker.objects.filter(pk=breaker.pk, state=State.CLOSED).update(consecutive_failures=0)
        return
    counted = CircuitBreaker.objects.filter(
        pk=breaker.pk, state=State.HALF_OPEN, half_open_in_flight__gt=0
    ).update(
        half_open_in_flight=F("half_open_in_flight") - 1,
        half_open_successes=F("half_open_successes") + 1,
        updated_at=now,
    )
    if not counted:
        return
    closed = CircuitBreaker.objects.filter(
        pk=breaker.pk, state=State.HALF_OPEN, half_open_successes__gte=F("success_threshold")
    ).update(
        state=State.CLOSED,
        opened_at=None,
        consecutive_failures=0,
        half_open_in_flight=0,
        half_open_successes=0,
        updated_at=now,
    )
    if closed:
        _clear_window(breaker)
        _event(
            breaker, State.HALF_OPEN, State.CLOSED, f"{breaker.success_threshold} probe(s) succeeded", now=now
        )


def record_failure(webhook_id: int, *, probe: bool, reason: str, now: datetime | None = None) -> None:
    now = now or timezone.now()
    breaker = get_breaker(webhook_id)
    ok, bad = _window(breaker, now=now, outcome="f")
    if probe:
        reopened = CircuitBreaker.objects.filter(pk=breaker.pk, state=State.HALF_OPEN).update(
            state=State.OPEN, opened_at=now, half_open_in_flight=0, half_open_successes=0, updated_at=now
        )
        if reopened:
            _event(breaker, State.HALF_OPEN, State.OPEN, f"probe failed: {reason}", now=now)
        return
    if not CircuitBreaker.objects.filter(pk=breaker.pk, state=State.CLOSED).update(
        consecutive_failures=F("consecutive_failures") + 1, updated_at=now
    ):
        return  # not closed: only probes change an open or half-open breaker
    breaker.refresh_from_db()
    calls = ok + bad
    why = ""
    if breaker.consecutive_failures >= breaker.failure_threshold:
        why = f"{breaker.consecutive_failures} consecutive failures (last: {reason})"
    elif calls >= breaker.minimum_calls and bad * 100 >= breaker.failure_rate_threshold * calls:
        why = f"{round(100 * bad / calls)}% of {calls} calls failed in {breaker.window_seconds}s (last: {reason})"
    if why and CircuitBreaker.objects.filter(pk=breaker.pk, state=State.CLOSED).update(
        state=State.OPEN, opened_at=now, half_open_in_flight=0, half_open_successes=0, updated_at=now
    ):
        _event(breaker, State.CLOSED, State.OPEN, why, now=now)


def cancel_probe(webhook_id: int) -> None:
    """An admitted probe never called Clay (e.g. the budget refused): give its slot back."""
    CircuitBreaker.objects.filter(
        webhook_id=webhook_id, state=State.HALF_OPEN, half_open_in_flight__gt=0
    ).update(half_open_in_flight=F("half_open_in_flight") - 1)


def force_open(
    webhook_id: int, *, by=None, reason: str = "paused by operator", now: datetime | None = None
) -> None:
    now = now or timezone.now()
    breaker = get_breaker(webhook_id)
    if breaker.state == State.FORCED_OPEN:
        return
    CircuitBreaker.objects.filter(pk=breaker.pk).update(
        state=State.FORCED_OPEN, opened_at=now, updated_at=now, half_open_in_flight=0, half_open_successes=0
    )
    _event(breaker, breaker.state, State.FORCED_OPEN, reason, now=now, by=by)
    AuditEntry.objects.create(
        user=by,
        action="breaker_force_open",
        target=f"webhook:{webhook_id} {breaker.webhook}",
        detail={"from": breaker.state, "reason": reason},
    )


def reset(webhook_id: int, *, by=None, now: datetime | None = None) -> None:
    now = now or timezone.now()
    breaker = get_breaker(webhook_id)
    CircuitBreaker.objects.filter(pk=breaker.pk).update(
        state=State.CLOSED,
        opened_at=None,
        consecutive_failures=0,
        half_open_in_flight=0,
        half_open_successes=0,
        updated_at=now,
    )
    _clear_window(breaker)
    _event(breaker, breaker.state, State.CLOSED, "reset by operator" if by else "reset", now=now, by=by)
    AuditEntry.objects.create(
        user=by,
        action="breaker_reset",
        target=f"webhook:{webhook_id} {breaker.webhook}",
        detail={"from": breaker.state},
    )

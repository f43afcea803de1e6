"""Circuit breaker per webhook, shared by every worker through the database.

closed ──(N consecutive failures, or failure rate ≥ R % over the sliding window with ≥ M calls)──▶ open
open ──(cooldown passed; the first allow() wins the transition and is the first probe)──▶ half_open
half_open: at most K probes in flight at once; S probe successes ──▶ closed; a probe failure ──▶ open
(the cooldown restarts). forced_open (an operator's pause) admits nothing until reset().

State lives in the CircuitBreaker row and changes only by conditional UPDATEs (filter on the
expected state, check the row count), so two workers racing for one transition produce one event,
and the half-open probe count never passes K. Works the same on SQLite (where select_for_update
does nothing) and PostgreSQL.

The failure-rate window is a per-second counter in Redis, updated and summed by one Lua script. It
is statistics, not state: if Redis loses it, the breaker starts counting again (consecutive
failures, in the database, still open it). It counts only calls made while closed; it is emptied
whenever the breaker closes, so failures from before an outage cannot re-open it at once.

What counts: only answers (or silence) from Clay. Callers report record_success/record_failure for
a request that went out; a call refused by the budget, the rate limit, a pause or the breaker
itself is a deferral, never a failure, and an admitted probe that did not call Clay must be given
back with cancel_probe() (else the slot stays taken until the stuck-probe timeout).

Accepted races (each harmless):
- A call admitted while closed may finish after the breaker opened: its result does not move the
  open or half-open breaker (only probes do). It is stale news about Clay; the probes are current.
- A probe admitted in one half-open period may report after the breaker re-opened, closed or was
  reset: in a non-half-open state it counts as an ordinary call of that state (closed) or nothing.
- Stuck probes: if no probe was admitted or finished for max(cooldown, 60 s) while slots are taken,
  the worker holding them is presumed dead and the slots are freed. If it was only slow, one extra
  probe may be in flight for a moment; that is the price of never wedging half-open forever.
- The rate check sums the window, then opens by a conditional UPDATE: a success landing between
  the two may leave the breaker opened at a rate that just fell below the threshold.
- `now` comes from each worker's clock (assumed NTP-synchronised; the cooldown is in seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from .enqueue import alert_check, schedule_probe
from .models import AuditEntry, CircuitBreaker, CircuitEvent
from .ratelimit import redis_connection, run_script

State = CircuitBreaker.State
PROBE_TIMEOUT_MIN_SECONDS = 60
HALF_OPEN_RETRY_SECONDS = 5.0

WINDOW_SCRIPT = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local field = ARGV[3]
local count = tonumber(ARGV[4] or '1')
if field ~= '' then
  redis.call('HINCRBY', key, field, count)
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
    local count = tonumber(all[i + 1])
    if string.sub(name, -1) == 's' then ok = ok + count else bad = bad + count end
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
    retry_in: float | None = None  # seconds until it may admit again, when refused (None: unknown)


def get_breaker(webhook_id: int) -> CircuitBreaker:
    """The webhook's breaker row, created (closed, default thresholds) on first use, race-safe."""
    breaker = CircuitBreaker.objects.filter(webhook_id=webhook_id).first()
    if breaker is not None:
        return breaker
    try:
        with transaction.atomic():
            return CircuitBreaker.objects.create(webhook_id=webhook_id)
    except IntegrityError:  # another worker created it first
        return CircuitBreaker.objects.get(webhook_id=webhook_id)


def cooldown_remaining(breaker: CircuitBreaker, *, now: datetime | None = None) -> float:
    """Seconds until an open breaker lets a probe through; 0 when not open (or the cooldown is over)."""
    if breaker.state != State.OPEN or breaker.opened_at is None:
        return 0.0
    now = now or timezone.now()
    return max(0.0, breaker.cooldown_seconds - (now - breaker.opened_at).total_seconds())


def probe_timeout(breaker: CircuitBreaker) -> float:
    """After this long without probe activity, taken half-open slots are presumed held by a dead worker."""
    return float(max(breaker.cooldown_seconds, PROBE_TIMEOUT_MIN_SECONDS))


def _event(
    breaker: CircuitBreaker, from_state: str, to_state: str, reason: str, *, now: datetime, by=None
) -> None:
    CircuitEvent.objects.create(
        breaker=breaker, from_state=from_state, to_state=to_state, reason=reason[:300], at=now, by=by
    )
    alert_check("breakers")
    if to_state == State.OPEN:
        # The first probe goes out when the cooldown ends, not at the next maintenance tick.
        schedule_probe(breaker.webhook_id, delay_seconds=float(breaker.cooldown_seconds))


def _window(breaker: CircuitBreaker, *, now: datetime, outcome: str, count: int = 1) -> tuple[int, int]:
    """Count `count` calls ('s' success, 'f' failure) and return (successes, failures) in the window."""
    second = int(now.timestamp())
    ok, bad = run_script(
        WINDOW_SCRIPT,
        keys=[f"clayops:breaker:{breaker.pk}:window"],
        args=[second, breaker.window_seconds, f"{second}:{outcome}", count],
    )
    return int(ok), int(bad)


def _clear_window(breaker: CircuitBreaker) -> None:
    redis_connection().delete(f"clayops:breaker:{breaker.pk}:window")


def allow(webhook_id: int, *, now: datetime | None = None) -> Admission:
    """May a call to this webhook go out now? Open and forced-open breakers never call Clay.

    Half-open admissions are probes: report their outcome with probe=True, or cancel_probe().
    """
    now = now or timezone.now()
    breaker = get_breaker(webhook_id)
    if breaker.state == State.CLOSED:
        return Admission(True, False, State.CLOSED, "closed")
    if breaker.state == State.FORCED_OPEN:
        return Admission(False, False, State.FORCED_OPEN, "paused by operator", None)
    if breaker.state == State.OPEN:
        remaining = cooldown_remaining(breaker, now=now)
        if remaining > 0:
            return Admission(False, False, State.OPEN, "open: cooling down", remaining)
        # opened_at in the filter: a worker that read an earlier open period must not skip the
        # cooldown of a newer one (a probe failed and re-opened it meanwhile).
        if CircuitBreaker.objects.filter(pk=breaker.pk, state=State.OPEN, opened_at=breaker.opened_at).update(
            state=State.HALF_OPEN, half_open_in_flight=0, half_open_successes=0, updated_at=now
        ):
            _event(
                breaker,
                State.OPEN,
                State.HALF_OPEN,
                f"cooldown of {breaker.cooldown_seconds}s passed",
                now=now,
            )
    else:
        _free_stale_probes(breaker, now=now)
    took = CircuitBreaker.objects.filter(
        pk=breaker.pk,
        state=State.HALF_OPEN,
        half_open_in_flight__lt=Greatest(F("half_open_max_probes"), 1),
    ).update(half_open_in_flight=F("half_open_in_flight") + 1, updated_at=now)
    if took:
        return Admission(True, True, State.HALF_OPEN, "half-open: probe")
    return _no_probe_slot(webhook_id, now=now)


def _free_stale_probes(breaker: CircuitBreaker, *, now: datetime) -> None:
    """Half-open: free the slots of probes whose worker died (no result within probe_timeout)."""
    stale = now - timedelta(seconds=probe_timeout(breaker))
    if CircuitBreaker.objects.filter(
        pk=breaker.pk, state=State.HALF_OPEN, updated_at__lt=stale, half_open_in_flight__gt=0
    ).update(half_open_in_flight=0, updated_at=now):
        _event(
            breaker,
            State.HALF_OPEN,
            State.HALF_OPEN,
            f"probe slots freed: no probe result for {probe_timeout(breaker):.0f}s",
            now=now,
        )


def _no_probe_slot(webhook_id: int, *, now: datetime) -> Admission:
    """No probe slot was taken: answer from the breaker's state as it is now."""
    current = get_breaker(webhook_id)
    if current.state == State.CLOSED:  # closed meanwhile by another worker's probe
        return Admission(True, False, State.CLOSED, "closed")
    if current.state == State.HALF_OPEN:
        return Admission(
            False, False, State.HALF_OPEN, "half-open: probe limit reached", HALF_OPEN_RETRY_SECONDS
        )
    if current.state == State.FORCED_OPEN:
        return Admission(False, False, State.FORCED_OPEN, "paused by operator", None)
    return Admission(
        False,
        False,
        State.OPEN,
        "open: cooling down",
        cooldown_remaining(current, now=now) or float(current.cooldown_seconds),
    )


def allow_many(webhook_id: int, n: int, *, now: datetime | None = None) -> tuple[list[bool], Admission]:
    """Admit up to n calls at once (one job's requests). Returns (probe flag of each admitted call,
    the first admission, or the refusal that stopped the admissions).

    Closed: all n, as ordinary calls, for one read of the row. Half-open: one probe slot per call,
    taken by allow() while slots are free, so the number of probes in flight never passes K.
    """
    first = allow(webhook_id, now=now)
    if not first.allowed:
        return [], first
    if not first.probe:
        return [False] * n, first
    flags = [True]
    while len(flags) < n:
        more = allow(webhook_id, now=now)
        if not more.allowed:
            return flags, more
        if not more.probe:  # closed meanwhile: the rest are ordinary calls
            return flags + [False] * (n - len(flags)), first
        flags.append(True)
    return flags, first


def record_successes(webhook_id: int, count: int, *, now: datetime | None = None) -> None:
    """record_success() for `count` ordinary (non-probe) calls at once: one window update, one UPDATE."""
    if count <= 0:
        return
    now = now or timezone.now()
    breaker = get_breaker(webhook_id)
    if breaker.state != State.CLOSED:
        return  # only probes move an open or half-open breaker
    _window(breaker, now=now, outcome="s", count=count)
    if breaker.consecutive_failures:
        CircuitBreaker.objects.filter(pk=breaker.pk, state=State.CLOSED, consecutive_failures__gt=0).update(
            consecutive_failures=0, updated_at=now
        )


def record_success(webhook_id: int, *, probe: bool, now: datetime | None = None) -> None:
    """Clay answered sanely. Closed: resets the consecutive failures. Half-open probe: may close."""
    now = now or timezone.now()
    breaker = get_breaker(webhook_id)
    if probe and CircuitBreaker.objects.filter(pk=breaker.pk, state=State.HALF_OPEN).update(
        half_open_in_flight=Greatest(F("half_open_in_flight") - 1, 0),
        half_open_successes=F("half_open_successes") + 1,
        updated_at=now,
    ):
        if CircuitBreaker.objects.filter(
            pk=breaker.pk, state=State.HALF_OPEN, half_open_successes__gte=F("success_threshold")
        ).update(
            state=State.CLOSED,
            opened_at=None,
            consecutive_failures=0,
            half_open_in_flight=0,
            half_open_successes=0,
            updated_at=now,
        ):
            _clear_window(breaker)
            _event(
                breaker,
                State.HALF_OPEN,
                State.CLOSED,
                f"{breaker.success_threshold} probe(s) succeeded",
                now=now,
            )
        return
    if breaker.state != State.CLOSED:
        return  # stale news from a call admitted before the breaker opened: only probes move it
    _window(breaker, now=now, outcome="s")
    CircuitBreaker.objects.filter(pk=breaker.pk, state=State.CLOSED, consecutive_failures__gt=0).update(
        consecutive_failures=0, updated_at=now
    )


def record_failure(webhook_id: int, *, probe: bool, reason: str, now: datetime | None = None) -> None:
    """Clay failed (5xx, 408, timeout, connection error, 404). Never call this for deferrals.

    Closed: counts; opens on the consecutive threshold or the windowed rate. Half-open probe: re-opens
    and restarts the cooldown. Each transition writes a CircuitEvent.
    """
    now = now or timezone.now()
    breaker = get_breaker(webhook_id)
    if probe and CircuitBreaker.objects.filter(pk=breaker.pk, state=State.HALF_OPEN).update(
        state=State.OPEN, opened_at=now, half_open_in_flight=0, half_open_successes=0, updated_at=now
    ):
        _event(breaker, State.HALF_OPEN, State.OPEN, f"probe failed: {reason}", now=now)
        return
    if not CircuitBreaker.objects.filter(pk=breaker.pk, state=State.CLOSED).update(
        consecutive_failures=F("consecutive_failures") + 1, updated_at=now
    ):
        return  # not closed: only probes change an open or half-open breaker
    ok, bad = _window(breaker, now=now, outcome="f")
    breaker.refresh_from_db()
    calls = ok + bad
    why = ""
    if breaker.consecutive_failures >= breaker.failure_threshold:
        why = f"{breaker.consecutive_failures} consecutive failures (last: {reason})"
    elif calls >= breaker.minimum_calls and bad * 100 >= breaker.failure_rate_threshold * calls:
        why = f"{bad} of {calls} calls failed in {breaker.window_seconds}s (last: {reason})"
    if why and CircuitBreaker.objects.filter(pk=breaker.pk, state=State.CLOSED).update(
        state=State.OPEN, opened_at=now, half_open_in_flight=0, half_open_successes=0, updated_at=now
    ):
        _event(breaker, State.CLOSED, State.OPEN, why, now=now)


def cancel_probe(webhook_id: int) -> None:
    """An admitted probe never called Clay (e.g. the budget refused): give its slot back, count nothing."""
    CircuitBreaker.objects.filter(
        webhook_id=webhook_id, state=State.HALF_OPEN, half_open_in_flight__gt=0
    ).update(half_open_in_flight=F("half_open_in_flight") - 1)


def _move(breaker: CircuitBreaker, to_state: str, fields: dict, *, now: datetime, keep: dict) -> str | None:
    """Compare-and-swap from whatever state the row is in to `to_state`, setting `fields`.

    Returns the state it left, or None when it was already there (then only `keep` is applied).
    """
    for _ in range(10):
        current = CircuitBreaker.objects.values_list("state", flat=True).get(pk=breaker.pk)
        if current == to_state:
            if keep:
                CircuitBreaker.objects.filter(pk=breaker.pk, state=to_state).update(**keep, updated_at=now)
            return None
        if CircuitBreaker.objects.filter(pk=breaker.pk, state=current).update(
            state=to_state, **fields, updated_at=now
        ):
            return current
    raise RuntimeError(f"breaker {breaker.pk}: state kept changing")  # pragma: no cover


def force_open(
    webhook_id: int, *, by=None, reason: str = "paused by operator", now: datetime | None = None
) -> bool:
    """An operator's pause: forced_open admits nothing (no probes) until reset(). Audited.

    Returns True when the state changed (False: it was already forced open).
    """
    now = now or timezone.now()
    breaker = get_breaker(webhook_id)
    left = _move(
        breaker,
        State.FORCED_OPEN,
        {"opened_at": now, "half_open_in_flight": 0, "half_open_successes": 0},
        now=now,
        keep={},
    )
    if left is not None:
        _event(breaker, left, State.FORCED_OPEN, reason, now=now, by=by)
    AuditEntry.objects.create(
        user=by,
        action="breaker_force_open",
        target=f"webhook:{webhook_id} {breaker.webhook}",
        detail={"from": left or State.FORCED_OPEN, "reason": reason, "changed": left is not None},
        at=now,
    )
    return left is not None


def reset(webhook_id: int, *, by=None, now: datetime | None = None) -> bool:
    """Close the breaker and clear its counters and window (an operator's reset). Audited.

    Returns True when the state changed (False: it was closed; counters are cleared anyway).
    """
    now = now or timezone.now()
    breaker = get_breaker(webhook_id)
    cleared = {
        "opened_at": None,
        "consecutive_failures": 0,
        "half_open_in_flight": 0,
        "half_open_successes": 0,
    }
    left = _move(breaker, State.CLOSED, cleared, now=now, keep=cleared)
    _clear_window(breaker)
    if left is not None:
        _event(breaker, left, State.CLOSED, "reset by operator" if by else "reset", now=now, by=by)
    AuditEntry.objects.create(
        user=by,
        action="breaker_reset",
        target=f"webhook:{webhook_id} {breaker.webhook}",
        detail={"from": left or State.CLOSED, "changed": left is not None},
        at=now,
    )
    return left is not None

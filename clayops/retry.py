"""Retry policy: one classification of Clay's answers, backoff with full jitter, Retry-After, pauses.

Permanent (the same request cannot succeed later): 4xx other than 408, 409 and 429.
Transient (try again later): 408, 409, 429, 5xx, timeouts and connection errors.
Two permanent classes are not the row's fault and are handled before the DLQ: 402 pauses spending
for the workspace (credits or actions exhausted at Clay), 404 means the webhook is gone (fail over).
Unexpected answers (1xx, 3xx: redirects are not followed) are client errors: the URL is wrong.
"""

from __future__ import annotations

import logging
import math
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

from django.db.models import Q
from django.utils import timezone

from .enqueue import alert_check
from .models import Webhook, Workspace

log = logging.getLogger("clayops.retry")


class ErrorClass(StrEnum):
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    RATE_LIMITED = "rate_limited"
    SERVER = "server_error"
    CLIENT = "client_error"
    INVALID_PAYLOAD = "invalid_payload"
    NOT_FOUND = "not_found"
    PAYMENT = "payment_required"
    CONFLICT = "conflict"
    # Never sent: the URL or the address it resolves to is outside the destination policy.
    DESTINATION_REFUSED = "destination_refused"


TRANSIENT = frozenset(
    {
        ErrorClass.TIMEOUT,
        ErrorClass.CONNECTION,
        ErrorClass.RATE_LIMITED,
        ErrorClass.SERVER,
        ErrorClass.CONFLICT,
    }
)


def classify_status(status_code: int) -> ErrorClass | None:
    """None for 2xx; otherwise the class of the failure."""
    if 200 <= status_code < 300:
        return None
    if status_code == 429:
        return ErrorClass.RATE_LIMITED
    if status_code == 408 or status_code >= 500:
        return ErrorClass.SERVER
    if status_code == 409:
        return ErrorClass.CONFLICT
    if status_code == 402:
        return ErrorClass.PAYMENT
    if status_code == 404:
        return ErrorClass.NOT_FOUND
    if status_code in (413, 422):
        return ErrorClass.INVALID_PAYLOAD
    return ErrorClass.CLIENT  # other 4xx, and 1xx/3xx (redirects are not followed)


PERMANENT = frozenset(ErrorClass) - TRANSIENT


def is_transient(error_class: str | None) -> bool:
    """Worth trying again later: 408, 409, 429, 5xx, timeouts, connection errors."""
    return error_class in TRANSIENT


def is_permanent(error_class: str | None) -> bool:
    """The same request cannot succeed later: 4xx other than 408/409/429 (incl. 402 and 404)."""
    return error_class in PERMANENT


def backoff_seconds(
    attempt: int, *, base: float = 2.0, cap: float = 300.0, rng: random.Random | None = None
) -> float:
    """Full jitter (AWS architecture blog): uniform(0, min(cap, base * 2^(attempt-1))).

    Spreads retries of many leads that failed together, so a recovering Clay is not hit by a wave.
    """
    exponent = min(max(0, attempt - 1), 64)  # 2**64 passes any sane cap; avoids float overflow
    ceiling = max(0.0, min(cap, base * (2**exponent)))
    return (rng or random).uniform(0, ceiling)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as delta-seconds ("120") or an HTTP-date, in seconds from now.

    Negative seconds and past dates give 0 (retry now); garbage gives None (the caller's default).
    Fractional seconds ("1.5") are accepted although RFC 9110 says integers: some proxies send them.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or timezone.now())).total_seconds())


def pause_webhook(webhook_id: int, *, until: datetime, reason: str = "") -> bool:
    """Pause a webhook for every worker (a 429's Retry-After). Only ever extends a pause.

    One conditional UPDATE (paused_until IS NULL OR < until): two workers told different waits end
    with the later one, whatever order they write in. True when this call moved paused_until.
    """
    extended = bool(
        Webhook.objects.filter(pk=webhook_id)
        .filter(Q(paused_until__isnull=True) | Q(paused_until__lt=until))
        .update(paused_until=until)
    )
    if extended:
        log.info("webhook %s paused until %s: %s", webhook_id, until.isoformat(), reason or "no reason given")
        alert_check("pauses")
    return extended


def _remaining(until: datetime | None, now: datetime | None) -> float:
    if until is None:
        return 0.0
    return max(0.0, (until - (now or timezone.now())).total_seconds())


def webhook_paused_for(webhook: Webhook, *, now: datetime | None = None) -> float:
    """Seconds the webhook stays paused (0 if not paused)."""
    return _remaining(webhook.paused_until, now)


def pause_workspace(workspace_id: int, *, until: datetime, reason: str) -> bool:
    """Pause every webhook of a workspace (a 402: credits or actions exhausted at Clay). Only extends."""
    extended = bool(
        Workspace.objects.filter(pk=workspace_id)
        .filter(Q(paused_until__isnull=True) | Q(paused_until__lt=until))
        .update(paused_until=until, pause_reason=reason[:200])
    )
    if extended:
        log.warning("workspace %s paused until %s: %s", workspace_id, until.isoformat(), reason)
        alert_check("pauses")
    return extended


def workspace_paused_for(workspace: Workspace, *, now: datetime | None = None) -> float:
    """Seconds the workspace stays paused (0 if not paused)."""
    return _remaining(workspace.paused_until, now)

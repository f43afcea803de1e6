"""Retry policy: one classification of Clay's answers, backoff with full jitter, Retry-After, pauses.

Permanent (the row itself is wrong; retrying cannot help): 4xx other than 408, 409 and 429.
Transient (try again later): 408, 409, 429, 5xx, timeouts and connection errors.
Special: 402 pauses spending for the workspace; 404 means the webhook is gone (fail over).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

from django.db.models import Q
from django.utils import timezone

from .models import Webhook, Workspace


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


def is_transient(error_class: str) -> bool:
    return error_class in TRANSIENT


def is_permanent(error_class: str) -> bool:
    return error_class in (ErrorClass.CLIENT, ErrorClass.INVALID_PAYLOAD)


def backoff_seconds(
    attempt: int, *, base: float = 2.0, cap: float = 300.0, rng: random.Random | None = None
) -> float:
    """Full jitter (AWS architecture blog): uniform(0, min(cap, base * 2^(attempt-1))).

    Spreads retries of many leads that failed together, so a recovering Clay is not hit by a wave.
    """
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(0, ceiling)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as delta-seconds ("120") or an HTTP-date; past dates give 0; garbage gives None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
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
    """Pause a webhook for every worker; only ever extends an existing pause (one conditional UPDATE)."""
    return bool(
        Webhook.objects.filter(pk=webhook_id)
        .filter(Q(paused_until__isnull=True) | Q(paused_until__lt=until))
        .update(paused_until=until)
    )


def webhook_paused_for(webhook: Webhook, *, now: datetime | None = None) -> float:
    if webhook.paused_until is None:
        return 0.0
    return max(0.0, (webhook.paused_until - (now or timezone.now())).total_seconds())


def pause_workspace(workspace_id: int, *, until: datetime, reason: str) -> bool:
    return bool(
        Workspace.objects.filter(pk=workspace_id)
        .filter(Q(paused_until__isnull=True) | Q(paused_until__lt=until))
        .update(paused_until=until, pause_reason=reason[:200])
    )

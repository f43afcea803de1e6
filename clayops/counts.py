"""The totals the dashboard shows, counted in the background, never by a page view.

A snapshot holds: leads per (webhook, state) (the overview's queue depths and the metrics), the
waiting leads per (webhook, state, reason, error class) with their earliest due time (the
overview's deferral banners), when each webhook's first uncertain lead is resent, and DLQ entries
per (state, error class, webhook) (the DLQ page's groups and state counts). It lives in the default
cache (Redis) with no expiry; pages read it with one GET, whatever the size of the tables.

Who counts: every worker runs `run_refresher` in a thread; `refresh_due` recounts when the snapshot
is older than its interval, CLAYOPS_COUNTS_SECONDS (3 s), stretched to ten times the last count's
duration so that counting a big database never takes more than a tenth of one database
connection's time. A Redis lock lets one process of the cluster count at a time. An operator's own
DLQ action recounts the DLQ part at once (`refresh_dlq`), so the page answering it shows its effect.

Before the first snapshot exists (a fresh start, or Redis emptied) a page counts once itself, and
stores what it counted. Without Redis a page counts every time (degraded, logged by the cache).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, connection
from django.db.models import Count, Min
from django.utils import timezone

from .models import DeadLetter, Lead

log = logging.getLogger("clayops.counts")
SNAPSHOT_KEY = "clayops:counts:snapshot"
LOCK_KEY = "clayops:counts:lock"
LOCK_SECONDS = 300  # a count that dies holding the lock lets the next one in after this
STRETCH = 10  # interval ≥ STRETCH × the last count's duration
LOOP_SECONDS = 1.0

# The waiting states of clayops.deferral (not imported: deferral reads this module).
WAITING = (Lead.State.DEFERRED, Lead.State.SERVED_CACHE, Lead.State.SERVED_FALLBACK, Lead.State.RETRY_WAIT)


def _depths() -> dict[int | None, dict[str, int]]:
    depths: dict[int | None, dict[str, int]] = {}
    rows = Lead.objects.order_by().values_list("webhook_id", "state").annotate(n=Count("*"))
    for webhook_id, state, n in rows:
        depths.setdefault(webhook_id, {})[state] = n
    return depths


def _waiting() -> list[tuple]:
    return list(
        Lead.objects.filter(state__in=WAITING)
        .order_by()
        .values_list("webhook_id", "state", "defer_reason", "error_class")
        .annotate(n=Count("*"), first=Min("next_attempt_at"))
    )


def _resend() -> dict[int | None, Any]:
    """When each webhook's first uncertain lead is resent automatically (the overview's cards)."""
    rows = (
        Lead.objects.filter(state=Lead.State.UNCERTAIN)
        .order_by()
        .values_list("webhook_id")
        .annotate(first=Min("next_attempt_at"))
    )
    return dict(rows)


def _dlq() -> list[tuple]:
    return list(
        DeadLetter.objects.order_by().values_list("state", "error_class", "webhook_id").annotate(n=Count("*"))
    )


def count(
    parts: tuple[str, ...] = ("depths", "waiting", "resend", "dlq"), base: dict | None = None
) -> dict[str, Any]:
    """Count now (the scans): the parts asked for, the others kept from `base`."""
    started = time.monotonic()
    snap = dict(base or {})
    compute = {"depths": _depths, "waiting": _waiting, "resend": _resend, "dlq": _dlq}
    for part in parts:
        snap[part] = compute[part]()
    snap["at"] = timezone.now()
    if len(parts) == len(compute):
        snap["took"] = time.monotonic() - started
    return snap


def _locked(action) -> dict | None:
    if not cache.add(LOCK_KEY, 1, LOCK_SECONDS):
        return None
    try:
        snap = action()
        cache.set(SNAPSHOT_KEY, snap, None)
        return snap
    finally:
        cache.delete(LOCK_KEY)


def snapshot() -> dict[str, Any]:
    """The latest snapshot; counted here only if there is none yet."""
    snap = cache.get(SNAPSHOT_KEY)
    if snap is None:
        snap = _locked(count) or count()  # another process counts too: do not wait for it
    return snap


def interval(snap: dict | None) -> float:
    took = float((snap or {}).get("took") or 0.0)
    return max(float(settings.CLAYOPS_COUNTS_SECONDS), STRETCH * took)


def refresh_due() -> bool:
    """Recount if the snapshot is older than its interval (and no other process counts). True if it did."""
    snap = cache.get(SNAPSHOT_KEY)
    if snap is not None and (timezone.now() - snap["at"]).total_seconds() < interval(snap):
        return False
    return _locked(count) is not None


def refresh_dlq() -> None:
    """Recount the DLQ part now (an operator's action, answered with the page that shows its effect)."""

    def recount() -> dict[str, Any]:
        snap = cache.get(SNAPSHOT_KEY)
        return count() if snap is None else count(("dlq",), base=snap)

    _locked(recount)


def run_refresher(stop: threading.Event, *, who: str = "") -> None:
    """The loop of a worker's counting thread: refresh_due() every LOOP_SECONDS until `stop`."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    try:
        while not stop.wait(LOOP_SECONDS):
            try:
                close_old_connections()
                refresh_due()
            except (RedisConnectionError, RedisTimeoutError):
                stop.wait(1.0)
            except Exception:  # the thread must go on; the pages count once themselves without it
                log.exception("%s: counting the dashboard's totals failed", who or "counts")
                stop.wait(5.0)
    finally:
        connection.close()

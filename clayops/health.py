"""Webhook health: per-minute samples, scored over a sliding 5-minute window.

Samples are minute buckets (successes, failures, latency sum and max) written with atomic F()
updates. The score is the success rate over the window [now - 5 min, now]: buckets wholly inside
count fully; the oldest bucket, which the window's start cuts, counts by the share of it that is
still inside (the sliding-window counter). So a failure stops counting gradually as the window
moves past it, not all at once when a tumbling window resets.

Status: healthy above 95 %, degraded above 80 %, unhealthy at 80 % or below. No traffic in the
window: healthy, score 100, flagged `no_traffic`.
Only answers from Clay count: budget and breaker deferrals and 429s are not health events.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from .models import HealthSample

WINDOW_SECONDS = 300
HEALTHY_ABOVE = 95.0
DEGRADED_ABOVE = 80.0


def minute_of(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(second=0, microsecond=0)


def record(
    webhook_id: int,
    *,
    ok: bool,
    latency_ms: float,
    at: datetime | None = None,
    count: int = 1,
    latency_max_ms: float | None = None,
) -> None:
    """Count `count` answers of mean latency `latency_ms` (and the slowest, default the mean)."""
    minute = minute_of(at or timezone.now())
    peak = latency_ms if latency_max_ms is None else latency_max_ms
    fields = {
        "successes": F("successes") + (count if ok else 0),
        "failures": F("failures") + (0 if ok else count),
        "latency_sum_ms": F("latency_sum_ms") + latency_ms * count,
        "latency_max_ms": Greatest(F("latency_max_ms"), peak),
    }
    qs = HealthSample.objects.filter(webhook_id=webhook_id, minute=minute)
    if qs.update(**fields):
        return
    try:
        with transaction.atomic():
            HealthSample.objects.create(
                webhook_id=webhook_id,
                minute=minute,
                successes=count if ok else 0,
                failures=0 if ok else count,
                latency_sum_ms=latency_ms * count,
                latency_max_ms=peak,
            )
    except IntegrityError:  # another worker created this minute's row first
        qs.update(**fields)


@dataclass(frozen=True)
class HealthReport:
    score: float
    status: str
    no_traffic: bool
    successes: int
    failures: int
    avg_latency_ms: float | None
    max_latency_ms: float | None


def status_for(score: float) -> str:
    if score > HEALTHY_ABOVE:
        return "healthy"
    if score > DEGRADED_ABOVE:
        return "degraded"
    return "unhealthy"


def _report(samples: Iterable[HealthSample], *, now: datetime, window_seconds: int) -> HealthReport:
    start = now - timedelta(seconds=window_seconds)
    ok = bad = 0.0
    latency_sum = 0.0
    latency_max = None
    for sample in samples:
        bucket_end = sample.minute + timedelta(minutes=1)
        if bucket_end <= start or sample.minute > now:
            continue
        weight = 1.0
        if sample.minute < start:  # the bucket the window's start cuts
            weight = (bucket_end - start).total_seconds() / 60.0
        ok += sample.successes * weight
        bad += sample.failures * weight
        latency_sum += sample.latency_sum_ms * weight
        latency_max = (
            sample.latency_max_ms if latency_max is None else max(latency_max, sample.latency_max_ms)
        )
    total = ok + bad
    if total <= 0:
        return HealthReport(100.0, "healthy", True, 0, 0, None, None)
    score = round(100.0 * ok / total, 2)
    return HealthReport(
        score, status_for(score), False, round(ok), round(bad), latency_sum / total, latency_max
    )


def _window_samples(webhook_ids, *, now: datetime, window_seconds: int):
    start = minute_of(now - timedelta(seconds=window_seconds))
    return HealthSample.objects.filter(webhook_id__in=list(webhook_ids), minute__gte=start, minute__lte=now)


def report(
    webhook_id: int, *, now: datetime | None = None, window_seconds: int = WINDOW_SECONDS
) -> HealthReport:
    now = now or timezone.now()
    return _report(
        _window_samples([webhook_id], now=now, window_seconds=window_seconds),
        now=now,
        window_seconds=window_seconds,
    )


def reports(
    webhook_ids: Iterable[int], *, now: datetime | None = None, window_seconds: int = WINDOW_SECONDS
) -> dict[int, HealthReport]:
    """One query for many webhooks (the dashboard's overview)."""
    now = now or timezone.now()
    ids = list(webhook_ids)
    grouped: dict[int, list[HealthSample]] = defaultdict(list)
    for sample in _window_samples(ids, now=now, window_seconds=window_seconds):
        grouped[sample.webhook_id].append(sample)
    return {pk: _report(grouped[pk], now=now, window_seconds=window_seconds) for pk in ids}


def sparkline(webhook_id: int, *, now: datetime | None = None, minutes: int = 60) -> list[float | None]:
    """Per-minute success rate for the last `minutes` minutes, oldest first; None without traffic."""
    return sparklines([webhook_id], now=now, minutes=minutes)[webhook_id]


def sparklines(
    webhook_ids: Iterable[int], *, now: datetime | None = None, minutes: int = 60
) -> dict[int, list[float | None]]:
    """sparkline() for many webhooks in one query (the dashboard's overview)."""
    now = now or timezone.now()
    ids = list(webhook_ids)
    last = minute_of(now)
    first = last - timedelta(minutes=minutes - 1)
    rows: dict[int, dict[datetime, tuple[int, int]]] = {pk: {} for pk in ids}
    samples = HealthSample.objects.filter(webhook_id__in=ids, minute__gte=first, minute__lte=last)
    for webhook_id, minute, ok, bad in samples.values_list("webhook_id", "minute", "successes", "failures"):
        rows[webhook_id][minute] = (ok, bad)
    out: dict[int, list[float | None]] = {}
    for pk in ids:
        points: list[float | None] = []
        for i in range(minutes):
            ok, bad = rows[pk].get(first + timedelta(minutes=i), (0, 0))
            points.append(round(100.0 * ok / (ok + bad), 1) if ok + bad else None)
        out[pk] = points
    return out

"""Dead letter queue: where retries end, and the operator's retry / discard / drain.

A lead enters the DLQ at one place (`record_dead`, called by delivery when retries end). Every way
out that resubmits (retry, drain, automatic retry) only moves the lead back to `queued`: the
submission job then takes it through the same pauses, rate limit, breaker and budget as a first
submission (invariant 5). Drains and automatic retries move at most drain_rate() leads per
second, one maintenance tick at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Count, F, Q
from django.db.models.functions import Greatest
from django.utils import timezone

from .budget import room as budget_room
from .enqueue import enqueue_leads
from .models import AuditEntry, CreditBudget, DeadLetter, EnrichmentCache, Lead, Webhook

D = DeadLetter.State
OPEN_STATES = (D.PENDING, D.EXHAUSTED)  # entries an operator can still retry or discard
GENERATION_KEY = "clayops:dlq:generation"
# Pace of DLQ drains and automatic retries when CLAYOPS_DRAIN_RATE sets no cap: Clay's published
# 10 records/s per workspace.
DLQ_DRAIN_RATE_DEFAULT = 10.0


def drain_rate() -> float:
    """Leads per second that DLQ drains and automatic retries resubmit."""
    return float(settings.CLAYOPS_DRAIN_RATE or DLQ_DRAIN_RATE_DEFAULT)


def changed() -> None:
    """Entries changed: the dashboard's cached DLQ counts (selectors) of this process are stale now.

    The cache is per process: counts changed by a worker show within selectors.DLQ_CACHE_SECONDS;
    an operator's own action in the web process shows at once.
    """
    try:
        cache.incr(GENERATION_KEY)
    except ValueError:  # not set yet (or evicted)
        cache.set(GENERATION_KEY, 1, None)


def record_dead(
    lead_ids: Sequence[int],
    *,
    webhook: Webhook | None,
    error: str,
    error_class: str,
    status_code: int | None,
    transient: bool,
    now: datetime | None = None,
) -> int:
    """Write the DLQ entry for each lead whose retries ended.

    A lead that was already in the DLQ and came back from a retry reopens its entry (its retry count
    kept) instead of getting a second one. Transient failures are retried automatically after
    CLAYOPS_DLQ_RETRY_DELAY_SECONDS (doubling) up to max_retries, then the entry is exhausted;
    permanent ones (4xx) wait for an operator.
    """
    now = now or timezone.now()
    max_retries = settings.CLAYOPS_DLQ_MAX_RETRIES if transient else 0
    written = 0
    for lead_id in lead_ids:
        with transaction.atomic():
            entry = DeadLetter.objects.filter(lead_id=lead_id, state=D.RETRYING).order_by("-id").first()
            if entry is None:
                entry = DeadLetter(lead_id=lead_id, retry_count=0, max_retries=max_retries, created_at=now)
            entry.webhook = webhook
            entry.error = error[:5000]
            entry.error_class = error_class
            entry.status_code = status_code
            if transient and entry.retry_count < entry.max_retries:
                delay = settings.CLAYOPS_DLQ_RETRY_DELAY_SECONDS * (2**entry.retry_count)
                entry.state, entry.next_retry_at = D.PENDING, now + timedelta(seconds=delay)
            elif transient:
                entry.state, entry.next_retry_at = D.EXHAUSTED, None
            else:
                entry.state, entry.next_retry_at = D.PENDING, None
            entry.save()
            written += 1
    if written:
        changed()
    return written


def resolve_for_leads(lead_ids: Sequence[int], *, states: Sequence[str] = (D.RETRYING,)) -> int:
    """Clay took these leads: their entries (by default those being retried) are resolved."""
    resolved = DeadLetter.objects.filter(lead_id__in=lead_ids, state__in=states).update(
        state=D.RESOLVED, next_retry_at=None, updated_at=timezone.now()
    )
    if resolved:
        changed()
    return resolved


def _resubmit(entry_ids: Sequence[int], *, states: Sequence[str]) -> list[int]:
    """Entries → retrying, their dead leads → queued, then enqueue. Returns the lead ids moved."""
    now = timezone.now()
    with transaction.atomic():
        entries = list(
            DeadLetter.objects.filter(pk__in=entry_ids, state__in=states).values_list("pk", "lead_id")
        )
        if not entries:
            return []
        pks = [pk for pk, _ in entries]
        lead_ids = [lead_id for _, lead_id in entries]
        DeadLetter.objects.filter(pk__in=pks, state__in=states).update(
            state=D.RETRYING, retry_count=F("retry_count") + 1, next_retry_at=None, updated_at=now
        )
        moved = list(Lead.objects.filter(pk__in=lead_ids, state=Lead.State.DEAD).values_list("pk", flat=True))
        Lead.objects.filter(pk__in=moved, state=Lead.State.DEAD).update(
            state=Lead.State.QUEUED, state_changed_at=now, next_attempt_at=None, attempt_count=0
        )
    changed()
    if moved:
        enqueue_leads(moved)
    return moved


def retry_entries(*, entry_ids: Sequence[int], by=None) -> int:
    """Operator's retry of one or many entries (pending or exhausted). Returns how many."""
    moved = _resubmit(entry_ids, states=OPEN_STATES)
    AuditEntry.objects.create(
        user=by,
        action="dlq_retry",
        target=_target(entry_ids),
        count=len(moved),
        detail={"entry_ids": list(entry_ids)[:100]},
    )
    return len(moved)


def discard_entries(*, entry_ids: Sequence[int], by=None) -> int:
    """Operator gives up on these leads: entry discarded, lead discarded (a known final state)."""
    now = timezone.now()
    with transaction.atomic():
        entries = list(
            DeadLetter.objects.filter(pk__in=entry_ids, state__in=OPEN_STATES).values_list("pk", "lead_id")
        )
        count = DeadLetter.objects.filter(pk__in=[pk for pk, _ in entries], state__in=OPEN_STATES).update(
            state=D.DISCARDED, next_retry_at=None, updated_at=now
        )
        Lead.objects.filter(pk__in=[lead_id for _, lead_id in entries], state=Lead.State.DEAD).update(
            state=Lead.State.DISCARDED, state_changed_at=now
        )
    changed()
    AuditEntry.objects.create(
        user=by,
        action="dlq_discard",
        target=_target(entry_ids),
        count=count,
        detail={"entry_ids": list(entry_ids)[:100]},
    )
    return count


def _target(entry_ids: Sequence[int]) -> str:
    ids = list(entry_ids)
    return f"dead_letter:{ids[0]}" if len(ids) == 1 else f"{len(ids)} dead letters"


def _filtered(*, webhook_id: int | None = None, error_class: str | None = None, states=(D.PENDING,)):
    qs = DeadLetter.objects.filter(state__in=states)
    if webhook_id:
        qs = qs.filter(webhook_id=webhook_id)
    if error_class:
        qs = qs.filter(error_class=error_class)
    return qs


def drain_preview(
    *, webhook_id: int | None = None, error_class: str | None = None, now: datetime | None = None
) -> dict:
    """The forecast before a drain of the pending entries that match the filters (see forecast)."""
    return forecast(_filtered(webhook_id=webhook_id, error_class=error_class), now=now)


def forecast(entries, *, now: datetime | None = None) -> dict:
    """The forecast before resubmitting these entries (a drain, an import's group retry): how many;
    how many a fresh cache entry will serve without spending credits (webhooks with reuse_cached);
    the credits and Clay Actions the rest need against what each budget has left today; how many fit
    today and how many would be parked (deferred) until the budget's reset, and when that is; how
    long at the drain rate. Reads only."""
    now = now or timezone.now()
    count = entries.count()
    cached = entries.filter(
        webhook__reuse_cached=True,
        lead__domain__in=EnrichmentCache.objects.filter(expires_at__gt=now).values("domain"),
    )
    from_cache = cached.count()
    paid = entries.exclude(pk__in=cached.values("pk"))
    rows = paid.values(
        "webhook__workspace__budget", "webhook__credits_per_row", "webhook__actions_per_row"
    ).annotate(n=Count("id"))
    budgets, fits_today, credits, actions = _budget_lines(rows, now=now)
    rate = drain_rate()
    return {
        "count": count,
        "from_cache": from_cache,
        "credits": credits,
        "actions": actions,
        "budgets": budgets,
        "within_budget": from_cache + fits_today,
        "parked": count - from_cache - fits_today,
        "rate": rate,
        "eta_seconds": int(count / rate) if rate else None,
    }


def _budget_lines(rows, *, now: datetime) -> tuple[list[dict], int, Decimal, int]:
    """Per budget: credits and Actions needed against what is left today, how many rows fit and how
    many are parked until the reset. Rows without a webhook are routed at send time: counted as fitting."""
    per_budget: dict[int | None, dict] = {}
    for row in rows:
        per_row = Webhook.estimate(row["webhook__credits_per_row"])
        per_action = row["webhook__actions_per_row"] or 0
        entry = per_budget.setdefault(
            row["webhook__workspace__budget"],
            {"credits": Decimal("0"), "actions": 0, "n": 0, "per_row": per_row, "per_action": per_action},
        )
        entry["credits"] += per_row * row["n"]
        entry["actions"] += per_action * row["n"]
        entry["n"] += row["n"]
        entry["per_row"] = max(entry["per_row"], per_row)
        entry["per_action"] = max(entry["per_action"], per_action)
    lines = []
    fits_today = per_budget.get(None, {"n": 0})["n"]
    for b in CreditBudget.objects.filter(pk__in=[pk for pk in per_budget if pk is not None]):
        need = per_budget[b.pk]
        left, actions_left = b.remaining(now), b.actions_remaining(now)
        if need["credits"] <= left and (actions_left is None or need["actions"] <= actions_left):
            fits = need["n"]
        else:
            room = budget_room(b, need["per_row"], need["per_action"], now=now)
            fits = need["n"] if room is None else min(need["n"], room)
        fits_today += fits
        local = now.astimezone(b.tz())
        lines.append(
            {
                "name": b.name,
                "needed": need["credits"],
                "remaining": left,
                "actions_needed": need["actions"],
                "actions_remaining": actions_left,
                "fits": fits,
                "parked": need["n"] - fits,
                "resets_at": datetime.combine(
                    local.date() + timedelta(days=1), datetime.min.time(), tzinfo=b.tz()
                ),
                "timezone": b.timezone,
            }
        )
    credits = sum((e["credits"] for e in per_budget.values()), Decimal("0"))
    actions = sum(e["actions"] for e in per_budget.values())
    return lines, fits_today, credits, actions


def _per_webhook_counts(qs):
    rows = qs.values("webhook__credits_per_row").annotate(n=Count("id"))
    return [(Webhook.estimate(row["webhook__credits_per_row"]), row["n"]) for row in rows]


def drain(
    *,
    by=None,
    webhook_id: int | None = None,
    error_class: str | None = None,
    rate: float | None = None,
    limit: int | None = None,
) -> int:
    """Resubmit every pending entry (matching the filters) at a bounded rate; with `limit`, only the
    oldest `limit` of them (the forecast's "within today's budget").

    Marks them due now with one more retry allowed; the maintenance tick resubmits at most
    drain_rate() per second of them, and each resubmission passes budget and breaker.
    """
    now = timezone.now()
    qs = _filtered(webhook_id=webhook_id, error_class=error_class)
    if limit is not None:
        oldest = list(qs.order_by("created_at", "pk").values_list("pk", flat=True)[: max(0, limit)])
        qs = DeadLetter.objects.filter(pk__in=oldest, state=D.PENDING)
    # One statement: due now, with at least one more retry allowed than already used.
    count = qs.update(
        next_retry_at=now, max_retries=Greatest(F("max_retries"), F("retry_count") + 1), updated_at=now
    )
    changed()
    AuditEntry.objects.create(
        user=by,
        action="dlq_drain",
        target=f"webhook:{webhook_id}" if webhook_id else "all",
        count=count,
        detail={
            "error_class": error_class or "",
            "rate_per_second": rate or drain_rate(),
            **({"limit": limit} if limit is not None else {}),
        },
    )
    retry_due(now=now)
    return count


def retry_due(*, now: datetime | None = None, limit: int | None = None) -> int:
    """Automatic retries of due entries (and drains), at most drain_rate() per second."""
    now = now or timezone.now()
    per_tick = limit if limit is not None else max(1, int(drain_rate() * settings.CLAYOPS_TICK_SECONDS))
    due = list(
        DeadLetter.objects.filter(state=D.PENDING, next_retry_at__lte=now)
        .filter(Q(retry_count__lt=F("max_retries")))
        .order_by("next_retry_at")
        .values_list("pk", flat=True)[:per_tick]
    )
    return len(_resubmit(due, states=(D.PENDING,)))

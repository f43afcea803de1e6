"""What the maintenance tick does for leads: recover those a dead worker left, resend uncertain ones
after the grace period, requeue due retries and orphans, and drain the offline queue through the guards."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import Decimal

import django_rq
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from .. import breaker, budget, pacequeue, retry
from ..enqueue import enqueue_leads, schedule_probe
from ..models import AuditEntry, CircuitBreaker, Lead, Webhook
from .guards import breaker_blocked_for
from .outcomes import UNCERTAIN_HOLD_MARGIN
from .routing import choose_webhook
from .transitions import OFFLINE_STATES, S, requeue, set_claimed

log = logging.getLogger("clayops.delivery")
# Deferred leads released per tick for a workspace with no rate limit (and no drain cap).
OFFLINE_BATCH_UNPACED = 1000
OVERDUE_REASON = "no callback from Clay by its deadline"


def recover_stuck(*, now: datetime, limit: int = 1000) -> int:
    """Leads left in `submitting` by a worker that died (SIGKILL, OOM, machine loss).

    Never sent (no submitted_at): back to queued at once. Sent: uncertain, resent only after the
    grace period unless Clay's callback arrives first.
    """
    cutoff = now - timedelta(seconds=settings.CLAYOPS_STUCK_SUBMITTING_SECONDS)
    stuck = list(
        Lead.objects.filter(state=S.SUBMITTING, state_changed_at__lt=cutoff).values_list(
            "pk", "submitted_at", "claim_token"
        )[:limit]
    )
    recovered = 0
    grace = timedelta(seconds=settings.CLAYOPS_UNCERTAIN_GRACE_SECONDS)
    for pk, submitted_at, token in stuck:
        if submitted_at is None:
            if set_claimed([pk], token, state=S.QUEUED, next_attempt_at=None):
                budget.release_for_leads([pk])
                enqueue_leads([pk])
                recovered += 1
        else:
            recovered += set_claimed(
                [pk],
                token,
                state=S.UNCERTAIN,
                next_attempt_at=submitted_at + grace,
                last_error="worker died after sending; waiting for Clay's callback",
                error_class=retry.ErrorClass.TIMEOUT,
            )
            budget.extend_holds_for_leads([pk], until=submitted_at + grace + UNCERTAIN_HOLD_MARGIN)
    return recovered


def _due(state: str, now: datetime, limit: int, webhook_id: int | None = None) -> list[int]:
    due = Lead.objects.filter(state=state, next_attempt_at__lte=now)
    if webhook_id is not None:
        due = due.filter(webhook_id=webhook_id)
    return list(due.order_by("next_attempt_at").values_list("pk", flat=True)[:limit])


def requeue_uncertain(*, now: datetime, limit: int = 1000) -> int:
    """Grace period over and still no callback: resend.

    The first send may have reached Clay and been charged, so its credit hold is booked as spent (at
    the estimate; a late callback corrects it to Clay's figure) and the resend reserves its own.
    """
    ids = list(
        Lead.objects.filter(
            state=S.UNCERTAIN, next_attempt_at__lte=now, enriched_at__isnull=True
        ).values_list("pk", flat=True)[:limit]
    )
    return len(resend_uncertain(ids, now=now))


def resend_uncertain(lead_ids, *, now: datetime | None = None) -> list[int]:
    """Uncertain leads back to the queue, their first send booked as one Clay may have charged.

    Settled before the requeue: once queued, a new job may hold fresh credits for the same lead.
    """
    ids = list(Lead.objects.filter(pk__in=list(lead_ids), state=S.UNCERTAIN).values_list("pk", flat=True))
    budget.settle_held_for_leads(ids, doubtful=True, now=now)
    return requeue(ids, from_states=[S.UNCERTAIN])


def requeue_due_retries(*, now: datetime, limit: int = 1000, webhook_id: int | None = None) -> int:
    return len(requeue(_due(S.RETRY_WAIT, now, limit, webhook_id), from_states=[S.RETRY_WAIT]))


def resume_webhook(webhook_id: int, *, now: datetime | None = None) -> dict[str, int]:
    """The webhook's breaker cooled down: send its due deferred leads and retries now (the first
    ones become the half-open probes; every guard still applies)."""
    now = now or timezone.now()
    row = breaker.get_breaker(webhook_id)
    cooling = breaker_blocked_for(row, now=now)
    if cooling:
        # Early: RQ's scheduler keeps due times to the whole second and may run a job up to a
        # second before it. Come back when the cooldown really ends (a forced-open breaker, 0,
        # waits for an operator's reset instead).
        schedule_probe(webhook_id, delay_seconds=cooling + 0.05)
        return {"rescheduled": 1}
    return {
        "offline_drained": drain_offline_step(now=now, webhook_id=webhook_id),
        "retries_due": requeue_due_retries(now=now, webhook_id=webhook_id),
    }


def mark_overdue(*, now: datetime, limit: int = 5000) -> int:
    """Accepted leads whose callback did not come by its deadline become `overdue`: counted, listed
    and alerted (one audit entry and one warning per batch), for an operator to resolve."""
    due = Lead.objects.filter(state=S.ACCEPTED, next_attempt_at__lte=now)
    rows = list(due.values_list("pk", "webhook_id")[:limit])
    if not rows:
        return 0
    moved = Lead.objects.filter(pk__in=[pk for pk, _ in rows], state=S.ACCEPTED, next_attempt_at__lte=now)
    n = moved.update(state=S.OVERDUE, state_changed_at=now, defer_reason=OVERDUE_REASON)
    if n:
        per_webhook: dict[str, int] = {}
        for _, hook in rows:
            per_webhook[str(hook)] = per_webhook.get(str(hook), 0) + 1
        AuditEntry.objects.create(
            action="callbacks_overdue", target="leads", count=n, detail={"by_webhook": per_webhook}
        )
        log.warning("%s accepted leads got no callback from Clay by their deadline: now overdue", n)
    return n


def drain_offline_step(*, now: datetime, webhook_id: int | None = None, limit: int | None = None) -> int:
    """Resubmit deferred leads whose blocker has cleared, oldest first, at the workspace's pace.

    Per webhook: nothing while the circuit is open (or forced open) and cooling down, or while the
    webhook or workspace is paused; only the allowed number of probes when half-open; never more
    leads than today's remaining budget pays for. The leads still pass every guard when sent.
    """
    offline = (
        Lead.objects.filter(state__in=OFFLINE_STATES)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        # Served leads only where the webhook re-enriches them by itself (see _offline_ids).
        .filter(Q(state=S.DEFERRED) | Q(webhook__reenrich_served=True) | Q(webhook__isnull=True))
    )
    if webhook_id is not None:
        offline = offline.filter(webhook_id=webhook_id)
    drained = 0
    hook_ids = set(offline.values_list("webhook_id", flat=True).distinct()[:100])
    for hook_id in hook_ids:
        room = 10**9 if limit is None else limit - drained
        if room <= 0:
            break
        target = choose_webhook(
            Webhook.objects.select_related("workspace", "workspace__budget").filter(pk=hook_id).first()
            if hook_id
            else None
        )
        if target is None:
            continue
        room = min(room, _capacity(target, now=now), _pace_room(target))
        if room <= 0:
            continue
        ids = _offline_ids(offline.filter(webhook_id=hook_id), target, room)
        drained += len(requeue(ids, from_states=OFFLINE_STATES))
    return drained


def _offline_ids(offline, target: Webhook, room: int) -> list[int]:
    """Up to `room` offline leads to release, oldest first: deferred leads (new work) before leads
    already served from the cache or the fallback, which are re-enriched only once nothing else of
    their workspace waits to be sent."""
    ids = list(offline.filter(state=S.DEFERRED).order_by("pk").values_list("pk", flat=True)[:room])
    if len(ids) >= room:
        return ids
    waiting = Lead.objects.filter(
        webhook__workspace_id=target.workspace_id, state__in=(S.QUEUED, S.SUBMITTING, S.RETRY_WAIT)
    )
    if ids or waiting.exists():
        return ids
    served = offline.filter(state__in=(S.SERVED_CACHE, S.SERVED_FALLBACK)).order_by("pk")
    return list(served.values_list("pk", flat=True)[:room])


def _capacity(webhook: Webhook, *, now: datetime) -> int:
    """How many leads this webhook could take right now without a guard refusing them."""
    workspace = webhook.workspace
    if retry.workspace_paused_for(workspace, now=now) or retry.webhook_paused_for(webhook, now=now):
        return 0
    row = breaker.get_breaker(webhook.pk)
    if breaker_blocked_for(row, now=now) is not None:
        return 0
    cap = 10**9 if row.state == CircuitBreaker.State.CLOSED else row.half_open_max_probes
    per_row = webhook.credits_per_row or Decimal("0")
    fits = budget.room(workspace.budget, per_row, webhook.actions_per_row, now=now)
    if fits is not None:
        cap = min(cap, fits)
    return max(0, cap)


def _pace_room(webhook: Webhook) -> int:
    """How many deferred leads to release for this webhook's workspace in one tick.

    The pace is the workspace's own rate limit (two ticks' worth, so sending never runs dry between
    ticks), capped by CLAYOPS_DRAIN_RATE when an operator set one. Leads already waiting in the queue
    for the workspace count against it, so new imports are not starved; a quarter of the pace is
    always released, so the oldest deferred leads are not starved by a large import either.
    """
    tick = settings.CLAYOPS_TICK_SECONDS
    rate = float(webhook.workspace.rate_limit or 0)
    cap = float(settings.CLAYOPS_DRAIN_RATE or 0)
    if cap > 0:
        rate = min(rate, cap) if rate > 0 else cap
    if rate <= 0:
        return OFFLINE_BATCH_UNPACED
    pace = max(1, int(rate * tick * 2))
    waiting = Lead.objects.filter(
        webhook__workspace_id=webhook.workspace_id, state__in=(S.QUEUED, S.SUBMITTING)
    ).count()
    return max(pace - waiting, max(1, pace // 4))


def requeue_orphans(*, now: datetime, limit: int = 5000) -> int:
    """Queued leads whose job was lost (Redis restarted without persistence, job crashed).

    Only when no submission job is waiting: then a lead still `queued` for a while has no job.
    """
    # A job that was started but died (SIGKILL) stays in RQ's started registry for up to ~11 minutes,
    # so only waiting jobs are looked at; a lead a live job is about to claim may get a second job,
    # which finds it claimed and does nothing.
    if any(django_rq.get_queue(name).count for name in ("submit", "urgent")):
        return 0
    cutoff = now - timedelta(seconds=settings.CLAYOPS_ORPHAN_SECONDS)
    # A paced workspace's leads wait in its lists (clayops.pacequeue) for as long as its rate needs:
    # they have a pump, not a job. Once its lists are empty, any still queued are orphans.
    waiting = pacequeue.active_workspaces()
    ids = list(
        Lead.objects.filter(state=S.QUEUED, state_changed_at__lt=cutoff)
        .exclude(webhook__workspace_id__in=waiting)
        .values_list("pk", flat=True)[:limit]
    )
    if ids:
        enqueue_leads(ids)
    return len(ids)


def drain_offline(*, by=None, webhook_id: int | None = None, now: datetime | None = None) -> int:
    """Operator's "drain" of the offline queue: make every deferred lead eligible now; the
    maintenance tick moves them at the bounded rate, through every guard. Returns how many."""
    now = now or timezone.now()
    qs = Lead.objects.filter(state__in=OFFLINE_STATES)
    if webhook_id is not None:
        qs = qs.filter(webhook_id=webhook_id)
    count = qs.update(next_attempt_at=None)
    AuditEntry.objects.create(
        user=by,
        action="offline_drain",
        target=f"webhook:{webhook_id}" if webhook_id else "all",
        count=count,
        detail={"rate_cap_per_second": settings.CLAYOPS_DRAIN_RATE or None},
    )
    drain_offline_step(now=now, webhook_id=webhook_id)
    return count

"""What the maintenance tick does for leads: recover those a dead worker left, resend uncertain ones
after the grace period, requeue due retries and orphans, and drain the offline queue through the guards."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import django_rq
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from .. import breaker, budget, retry
from ..enqueue import enqueue_leads
from ..models import AuditEntry, CircuitBreaker, Lead, Webhook
from .guards import breaker_blocked_for
from .routing import choose_webhook
from .transitions import OFFLINE_STATES, S, requeue, set_claimed


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
            budget.extend_holds_for_leads([pk], until=submitted_at + grace + timedelta(seconds=60))
    return recovered


def _due(state: str, now: datetime, limit: int) -> list[int]:
    return list(
        Lead.objects.filter(state=state, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )


def requeue_uncertain(*, now: datetime, limit: int = 1000) -> int:
    """Grace period over and still no callback: Clay did not take the row; release and resend."""
    ids = list(
        Lead.objects.filter(
            state=S.UNCERTAIN, next_attempt_at__lte=now, enriched_at__isnull=True
        ).values_list("pk", flat=True)[:limit]
    )
    budget.release_for_leads(ids)
    return len(requeue(ids, from_states=[S.UNCERTAIN]))


def requeue_due_retries(*, now: datetime, limit: int = 1000) -> int:
    return len(requeue(_due(S.RETRY_WAIT, now, limit), from_states=[S.RETRY_WAIT]))


def drain_offline_step(*, now: datetime, webhook_id: int | None = None, limit: int | None = None) -> int:
    """Resubmit deferred leads whose blocker has cleared, at a bounded rate (CLAYOPS_DRAIN_RATE).

    Per webhook: nothing while the circuit is open (or forced open) and cooling down, or while the
    webhook or workspace is paused; only the allowed number of probes when half-open; never more
    leads than today's remaining budget pays for. The leads still pass every guard when sent.
    """
    per_tick = (
        limit
        if limit is not None
        else max(1, int(settings.CLAYOPS_DRAIN_RATE * settings.CLAYOPS_TICK_SECONDS))
    )
    offline = Lead.objects.filter(state__in=OFFLINE_STATES).filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    )
    if webhook_id is not None:
        offline = offline.filter(webhook_id=webhook_id)
    drained = 0
    hook_ids = set(offline.values_list("webhook_id", flat=True).distinct()[:100])
    for hook_id in hook_ids:
        room = per_tick - drained
        if room <= 0:
            break
        target = choose_webhook(
            Webhook.objects.select_related("workspace", "workspace__budget").filter(pk=hook_id).first()
            if hook_id
            else None
        )
        if target is None:
            continue
        room = min(room, _capacity(target, now=now))
        if room <= 0:
            continue
        ids = list(
            offline.filter(webhook_id=hook_id)
            .order_by("state_changed_at")
            .values_list("pk", flat=True)[:room]
        )
        drained += len(requeue(ids, from_states=OFFLINE_STATES))
    return drained


def _capacity(webhook: Webhook, *, now: datetime) -> int:
    """How many leads this webhook could take right now without a guard refusing them."""
    workspace = webhook.workspace
    if retry.workspace_paused_for(workspace, now=now) or retry.webhook_paused_for(webhook, now=now):
        return 0
    row = breaker.get_breaker(webhook.pk)
    if breaker_blocked_for(row, now=now) is not None:
        return 0
    cap = 10**9 if row.state == CircuitBreaker.State.CLOSED else row.half_open_max_probes
    remaining = budget.remaining(workspace.budget, now=now)
    per_row = webhook.credits_per_row or Decimal("0")
    if per_row > 0:
        cap = min(cap, int(remaining // per_row))
    return max(0, cap)


def requeue_orphans(*, now: datetime, limit: int = 5000) -> int:
    """Queued leads whose job was lost (Redis restarted without persistence, job crashed).

    Only when no submission job is waiting: then a lead still `queued` for a while has no job.
    """
    # A job that was started but died (SIGKILL) stays in RQ's started registry for up to ~11 minutes,
    # so only waiting jobs are looked at; a lead a live job is about to claim may get a second job,
    # which finds it claimed and does nothing.
    if django_rq.get_queue("submit").count:
        return 0
    cutoff = now - timedelta(seconds=settings.CLAYOPS_ORPHAN_SECONDS)
    ids = list(
        Lead.objects.filter(state=S.QUEUED, state_changed_at__lt=cutoff).values_list("pk", flat=True)[:limit]
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
        detail={"rate_per_second": settings.CLAYOPS_DRAIN_RATE},
    )
    drain_offline_step(now=now, webhook_id=webhook_id)
    return count

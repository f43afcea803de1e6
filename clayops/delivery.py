"""The path a lead travels: claim, guards (pause, rate, breaker, budget, row cap), send, record, classify.

Every state change of a lead is a conditional UPDATE on (state, claim_token), so two workers can
never both send one lead, and a job that runs twice (RQ is at-least-once) finds nothing to do.
The order of the guards matters:
  1. pauses (429 / 402 / operator) and the workspace rate limit: nothing is claimed or reserved yet;
  2. claim the leads (queued → submitting);
  3. the breaker: refused → deferred (not a failure);
  4. the budget: refused → deferred (not a failure), the probe slot is given back;
  5. the webhook's lifetime row cap: full → fail over to the next webhook of the workspace;
  6. send; classify the answer once; record the attempt, health and the breaker; settle or release.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import django_rq
from django.conf import settings
from django.db import connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from . import breaker, budget, health, ratelimit, retry
from .client import SendResult, encode, get_client
from .models import Attempt, AuditEntry, CircuitBreaker, CreditReservation, Lead, Webhook

log = logging.getLogger("clayops.delivery")

S = Lead.State
OFFLINE_STATES = (S.DEFERRED, S.SERVED_CACHE, S.SERVED_FALLBACK)
LEAD_ID_FIELD = "clayops_lead_id"


# --- enqueueing ----------------------------------------------------------------------------------


def enqueue_leads(lead_ids: Iterable[int]) -> int:
    """Enqueue submission jobs for these leads in batches of CLAYOPS_BATCH_SIZE (after commit).

    Returns the number of jobs enqueued. Safe to call for leads already queued or sent: the job
    claims each lead with a conditional UPDATE and skips those not in the queued state.
    """
    ids = list(lead_ids)
    size = settings.CLAYOPS_BATCH_SIZE
    queue = django_rq.get_queue("submit")
    jobs = 0
    for start in range(0, len(ids), size):
        queue.enqueue("clayops.jobs.submit_leads", ids[start : start + size])
        jobs += 1
    return jobs


def requeue(lead_ids: Sequence[int], *, from_states: Sequence[str]) -> list[int]:
    """Move leads from `from_states` back to queued and enqueue them. Returns the ids moved."""
    if not lead_ids:
        return []
    now = timezone.now()
    fields = {"state": S.QUEUED, "state_changed_at": now, "next_attempt_at": None, "defer_reason": ""}
    moved = []
    with transaction.atomic():
        candidates = list(
            Lead.objects.filter(pk__in=lead_ids, state__in=from_states).values_list("pk", flat=True)
        )
        if candidates:
            Lead.objects.filter(pk__in=candidates, state__in=from_states).update(**fields)
            moved = candidates
    if moved:
        enqueue_leads(moved)
    return moved


# --- choosing a webhook --------------------------------------------------------------------------


def usable_webhooks(workspace_id: int | None = None):
    qs = Webhook.objects.filter(is_active=True, is_full=False, broken_reason="").select_related(
        "workspace", "workspace__budget"
    )
    if workspace_id is not None:
        qs = qs.filter(workspace_id=workspace_id)
    return qs.order_by("priority", "id")


def choose_webhook(current: Webhook | None) -> Webhook | None:
    """The lead's webhook if it can take rows, else the next one of the same workspace (fail over)."""
    if current is not None and current.is_active and not current.is_full and not current.broken_reason:
        return current
    workspace_id = current.workspace_id if current is not None else None
    return usable_webhooks(workspace_id).first()


# --- submission ----------------------------------------------------------------------------------


@dataclass
class Chunk:
    webhook: Webhook
    lead_ids: list[int]


def submit_batch(lead_ids: list[int]) -> dict[str, int]:
    """The job body: deliver the queued leads among `lead_ids`; return counts by outcome."""
    chunks = plan_chunks(lead_ids)
    totals: dict[str, int] = {}
    if not chunks:
        return totals
    workers = min(settings.CLAYOPS_SEND_CONCURRENCY, len(chunks))
    if workers <= 1:
        results = [deliver_chunk(chunk) for chunk in chunks]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clayops-send") as pool:
            results = list(pool.map(_deliver_in_thread, chunks))
    for result in results:
        for key, value in result.items():
            totals[key] = totals.get(key, 0) + value
    return totals


def _deliver_in_thread(chunk: Chunk) -> dict[str, int]:
    try:
        return deliver_chunk(chunk)
    finally:
        connections.close_all()  # this thread's own connections


def plan_chunks(lead_ids: Sequence[int]) -> list[Chunk]:
    """Group queued leads by the webhook they will go to, in requests of the webhook's batch size
    (kept under Clay's payload limit). Leads with no usable webhook are deferred."""
    leads = list(
        Lead.objects.filter(pk__in=lead_ids, state=S.QUEUED)
        .select_related("webhook")
        .only("pk", "row", "webhook")
    )
    by_webhook: dict[int, tuple[Webhook, list[Lead]]] = {}
    cache: dict[int | None, Webhook | None] = {}
    orphans = []
    for lead in leads:
        key = lead.webhook_id
        if key not in cache:
            cache[key] = choose_webhook(lead.webhook)
        webhook = cache[key]
        if webhook is None:
            orphans.append(lead.pk)
            continue
        by_webhook.setdefault(webhook.pk, (webhook, []))[1].append(lead)
    if orphans:
        Lead.objects.filter(pk__in=orphans, state=S.QUEUED).update(
            state=S.DEFERRED,
            defer_reason="no active webhook with room",
            state_changed_at=timezone.now(),
            next_attempt_at=None,
        )
    chunks = []
    limit = settings.CLAYOPS_MAX_PAYLOAD_BYTES
    for webhook, group in by_webhook.values():
        current: list[int] = []
        size = 2
        for lead in group:
            row_size = len(encode(lead.row)) + 40
            if current and (len(current) >= webhook.batch_size or size + row_size > limit):
                chunks.append(Chunk(webhook, current))
                current, size = [], 2
            current.append(lead.pk)
            size += row_size
        if current:
            chunks.append(Chunk(webhook, current))
    return chunks


def _set(ids: Sequence[int], token: str, **fields) -> int:
    """Conditional transition of leads this chunk claimed (state submitting, our token)."""
    fields.setdefault("state_changed_at", timezone.now())
    return Lead.objects.filter(pk__in=ids, state=S.SUBMITTING, claim_token=token).update(**fields)


def _defer_unclaimed(ids: Sequence[int], reason: str, until: datetime | None) -> int:
    return Lead.objects.filter(pk__in=ids, state=S.QUEUED).update(
        state=S.DEFERRED, defer_reason=reason[:200], next_attempt_at=until, state_changed_at=timezone.now()
    )


def deliver_chunk(chunk: Chunk) -> dict[str, int]:
    webhook = Webhook.objects.select_related("workspace", "workspace__budget").get(pk=chunk.webhook.pk)
    workspace = webhook.workspace
    ids = chunk.lead_ids
    n = len(ids)
    now = timezone.now()

    # 1. Pauses and pacing: nothing claimed or reserved yet.
    if workspace.paused_until and workspace.paused_until > now:
        return {
            "deferred": _defer_unclaimed(
                ids, f"workspace paused: {workspace.pause_reason}", workspace.paused_until
            )
        }
    if webhook.paused_until and webhook.paused_until > now:
        return {"deferred": _defer_unclaimed(ids, "webhook paused by Clay (429)", webhook.paused_until)}
    blocked_for = _breaker_blocked_for(breaker.get_breaker(webhook.pk), now=now)
    if blocked_for is not None:
        # Cheap pre-check so a backlog spends no rate tokens while the circuit is open; allow()
        # below stays the authority.
        until = now + timedelta(seconds=blocked_for) if blocked_for else None
        return {"deferred": _defer_unclaimed(ids, "circuit open", until)}
    wait = ratelimit.hourly_allow(workspace.pk, cap=workspace.hourly_cap, n=n)
    if wait > 0:
        return {"deferred": _defer_unclaimed(ids, "hourly record cap reached", now + timedelta(seconds=wait))}
    if not ratelimit.acquire_blocking(
        workspace.pk,
        rate=workspace.rate_limit,
        burst=workspace.burst,
        n=n,
        max_wait=settings.CLAYOPS_RATE_WAIT_SECONDS,
    ):
        enqueue_leads(ids)  # still queued: try again later
        return {"rate_wait": n}

    # 2. Claim.
    token = uuid.uuid4().hex
    now = timezone.now()
    Lead.objects.filter(pk__in=ids, state=S.QUEUED).update(
        state=S.SUBMITTING, claim_token=token, state_changed_at=now, submitted_at=None, webhook=webhook
    )
    leads = list(Lead.objects.filter(pk__in=ids, state=S.SUBMITTING, claim_token=token).only("pk", "row"))
    if not leads:
        return {}
    ids = [lead.pk for lead in leads]

    # 3. Breaker.
    admission = breaker.allow(webhook.pk, now=now)
    if not admission.allowed:
        until = now + timedelta(seconds=admission.retry_in) if admission.retry_in else None
        return {
            "deferred": _set(
                ids, token, state=S.DEFERRED, defer_reason=f"circuit {admission.state}", next_attempt_at=until
            )
        }

    # 4. Budget: one reservation per lead.
    reservations: dict[int, CreditReservation] = {}
    refused = []
    for lead in leads:
        reservation = budget.reserve(
            budget=workspace.budget, amount=webhook.credits_per_row, lead=lead, now=now
        )
        if reservation is None:
            refused.append(lead.pk)
        else:
            reservations[lead.pk] = reservation
    counts: dict[str, int] = {}
    if refused:
        counts["deferred"] = _set(
            refused,
            token,
            state=S.DEFERRED,
            defer_reason="daily credit budget exhausted",
            next_attempt_at=None,
        )
    if not reservations:
        if admission.probe:
            breaker.cancel_probe(webhook.pk)
        return counts
    leads = [lead for lead in leads if lead.pk in reservations]
    ids = [lead.pk for lead in leads]
    n = len(ids)

    # 5. Lifetime row cap of the webhook (Clay: 50,000 submissions per webhook).
    took = Webhook.objects.filter(pk=webhook.pk, rows_sent__lte=F("row_cap") - n).update(
        rows_sent=F("rows_sent") + n
    )
    if not took:
        Webhook.objects.filter(pk=webhook.pk).update(is_full=True)
        AuditEntry.objects.create(
            action="webhook_full",
            target=f"webhook:{webhook.pk} {webhook}",
            detail={"row_cap": webhook.row_cap},
        )
        _release(reservations)
        if admission.probe:
            breaker.cancel_probe(webhook.pk)
        _set(ids, token, state=S.QUEUED)  # choose_webhook() fails over
        enqueue_leads(ids)
        counts["failover"] = n
        return counts

    # 6. Send.
    rows = [{**lead.row, LEAD_ID_FIELD: lead.pk} for lead in leads]
    body = encode(rows if webhook.batch_size > 1 else rows[0])
    started = timezone.now()
    _set(ids, token, submitted_at=started, state_changed_at=now)
    result = get_client().send(webhook.url, webhook.headers(), body)
    finished = timezone.now()
    outcome = apply_result(webhook, ids, token, reservations, admission.probe, result, now=finished)
    Attempt.objects.bulk_create(
        [
            Attempt(
                lead_id=pk,
                webhook=webhook,
                started_at=started,
                finished_at=finished,
                status_code=result.status_code,
                latency_ms=result.latency_ms,
                error_class=result.error_class or "",
                error=result.error,
                outcome=outcome,
            )
            for pk in ids
        ]
    )
    counts[outcome] = counts.get(outcome, 0) + n
    return counts


def _breaker_blocked_for(row: CircuitBreaker, *, now: datetime) -> float | None:
    """None if the breaker may admit calls; else seconds until it might (0: until an operator resets)."""
    if row.state == CircuitBreaker.State.FORCED_OPEN:
        return 0.0
    if row.state == CircuitBreaker.State.OPEN:
        remaining = breaker.cooldown_remaining(row, now=now)
        if remaining > 0:
            return remaining
    return None


def _release(reservations: dict[int, CreditReservation]) -> None:
    for reservation in reservations.values():
        budget.release(reservation_id=reservation.pk)


def _unsend(webhook: Webhook, n: int) -> None:
    """Clay did not take the rows: they do not count toward the webhook's lifetime cap."""
    Webhook.objects.filter(pk=webhook.pk, rows_sent__gte=n).update(rows_sent=F("rows_sent") - n)


def apply_result(
    webhook: Webhook,
    ids: list[int],
    token: str,
    reservations: dict[int, CreditReservation],
    probe: bool,
    result: SendResult,
    *,
    now: datetime,
) -> str:
    """Classify once and apply: lead states, budget, breaker, health, DLQ. Returns the Attempt outcome."""
    E = retry.ErrorClass
    Out = Attempt.Outcome
    error_class = result.error_class

    if error_class is None:
        breaker.record_success(webhook.pk, probe=probe, now=now)
        health.record(webhook.pk, ok=True, latency_ms=result.latency_ms, at=now)
        for reservation in reservations.values():
            budget.settle(reservation_id=reservation.pk, now=now)
        _set(
            ids,
            token,
            state=S.ACCEPTED,
            accepted_at=now,
            attempt_count=F("attempt_count") + 1,
            last_error="",
            error_class="",
            next_attempt_at=None,
            defer_reason="",
        )
        from .dlq import resolve_for_leads

        resolve_for_leads(ids)
        return Out.ACCEPTED

    if result.uncertain:
        # The row may be at Clay: keep the reservation, wait for the callback for a grace period.
        breaker.record_failure(webhook.pk, probe=probe, reason=result.error[:200], now=now)
        health.record(webhook.pk, ok=False, latency_ms=result.latency_ms, at=now)
        grace = timedelta(seconds=settings.CLAYOPS_UNCERTAIN_GRACE_SECONDS)
        CreditReservation.objects.filter(pk__in=[r.pk for r in reservations.values()], state="held").update(
            expires_at=now + grace + timedelta(seconds=60)
        )
        _set(
            ids,
            token,
            state=S.UNCERTAIN,
            next_attempt_at=now + grace,
            attempt_count=F("attempt_count") + 1,
            last_error=result.error,
            error_class=error_class,
        )
        return Out.UNCERTAIN

    # Clay did not take the rows: give the credits and the row-cap slots back.
    _release(reservations)
    _unsend(webhook, len(ids))

    if error_class == E.RATE_LIMITED:
        # Not a failure of Clay: pause the whole workspace's webhooks for Retry-After, for every worker.
        if probe:
            breaker.cancel_probe(webhook.pk)
        until = now + timedelta(seconds=max(1.0, result.retry_after or 5.0))
        for hook_id in Webhook.objects.filter(workspace_id=webhook.workspace_id).values_list("pk", flat=True):
            retry.pause_webhook(hook_id, until=until, reason="429 Too Many Requests")
        _set(
            ids,
            token,
            state=S.RETRY_WAIT,
            next_attempt_at=until,
            last_error=result.error,
            error_class=error_class,
        )
        return Out.RATE_LIMITED

    if error_class == E.PAYMENT:
        if probe:
            breaker.cancel_probe(webhook.pk)
        until = now + timedelta(seconds=settings.CLAYOPS_PAYMENT_PAUSE_SECONDS)
        retry.pause_workspace(
            webhook.workspace_id, until=until, reason="Clay answered 402: credits or actions exhausted"
        )
        _set(
            ids,
            token,
            state=S.DEFERRED,
            defer_reason="Clay credits exhausted (402)",
            next_attempt_at=until,
            last_error=result.error,
            error_class=error_class,
        )
        return Out.RETRY

    if error_class == E.NOT_FOUND:
        # Table deleted or webhook replaced: stop using it, tell the operator, fail over.
        breaker.record_failure(webhook.pk, probe=probe, reason="404: webhook gone", now=now)
        health.record(webhook.pk, ok=False, latency_ms=result.latency_ms, at=now)
        Webhook.objects.filter(pk=webhook.pk).update(is_active=False, broken_reason=result.error[:200])
        AuditEntry.objects.create(
            action="webhook_broken",
            target=f"webhook:{webhook.pk} {webhook}",
            detail={"error": result.error[:300]},
        )
        _set(ids, token, state=S.QUEUED, last_error=result.error, error_class=error_class)
        enqueue_leads(ids)
        return Out.RETRY

    if retry.is_permanent(error_class):
        # Clay answered sanely (it is up): the row itself is wrong. Straight to the DLQ.
        breaker.record_success(webhook.pk, probe=probe, now=now)
        health.record(webhook.pk, ok=True, latency_ms=result.latency_ms, at=now)
        _dead(ids, token, webhook, result, transient=False, now=now)
        return Out.DEAD

    # Transient: 5xx, 408, 409, timeouts and connection errors before the row was sent.
    breaker.record_failure(webhook.pk, probe=probe, reason=result.error[:200], now=now)
    health.record(webhook.pk, ok=False, latency_ms=result.latency_ms, at=now)
    attempts = dict(Lead.objects.filter(pk__in=ids).values_list("pk", "attempt_count"))
    exhausted = [pk for pk in ids if attempts.get(pk, 0) + 1 >= settings.CLAYOPS_MAX_ATTEMPTS]
    if exhausted:
        _dead(exhausted, token, webhook, result, transient=True, now=now)
    for pk in ids:
        if pk in exhausted:
            continue
        delay = retry.backoff_seconds(
            attempts.get(pk, 0) + 1,
            base=settings.CLAYOPS_BACKOFF_BASE_SECONDS,
            cap=settings.CLAYOPS_BACKOFF_CAP_SECONDS,
        )
        _set(
            [pk],
            token,
            state=S.RETRY_WAIT,
            next_attempt_at=now + timedelta(seconds=delay),
            attempt_count=F("attempt_count") + 1,
            last_error=result.error,
            error_class=error_class,
        )
    return Out.DEAD if len(exhausted) == len(ids) else Out.RETRY


def _dead(
    ids: list[int], token: str, webhook: Webhook, result: SendResult, *, transient: bool, now: datetime
) -> None:
    from .dlq import record_dead

    moved = list(
        Lead.objects.filter(pk__in=ids, state=S.SUBMITTING, claim_token=token).values_list("pk", flat=True)
    )
    _set(
        moved,
        token,
        state=S.DEAD,
        attempt_count=F("attempt_count") + 1,
        last_error=result.error,
        error_class=result.error_class or "",
        next_attempt_at=None,
    )
    record_dead(
        moved,
        webhook=webhook,
        error=result.error,
        error_class=result.error_class or "",
        status_code=result.status_code,
        transient=transient,
        now=now,
    )


# --- maintenance ---------------------------------------------------------------------------------


def maintenance(*, now: datetime | None = None) -> dict[str, int]:
    """One maintenance pass (RQ cron every CLAYOPS_TICK_SECONDS). Safe to run concurrently."""
    from . import dlq, imports

    now = now or timezone.now()
    return {
        "imports_requeued": imports.requeue_stale_imports(),
        "reservations_reaped": budget.reap_expired(now=now),
        "stuck_recovered": recover_stuck(now=now),
        "uncertain_requeued": requeue_uncertain(now=now),
        "retries_due": requeue_due_retries(now=now),
        "dlq_retried": dlq.retry_due(now=now),
        "offline_drained": drain_offline_step(now=now),
        "orphans_requeued": requeue_orphans(now=now),
    }


def _release_held_for(lead_ids: Sequence[int]) -> None:
    for pk in CreditReservation.objects.filter(lead_id__in=lead_ids, state="held").values_list(
        "pk", flat=True
    ):
        budget.release(reservation_id=pk)


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
            if _set([pk], token, state=S.QUEUED, next_attempt_at=None):
                _release_held_for([pk])
                enqueue_leads([pk])
                recovered += 1
        else:
            recovered += _set(
                [pk],
                token,
                state=S.UNCERTAIN,
                next_attempt_at=submitted_at + grace,
                last_error="worker died after sending; waiting for Clay's callback",
                error_class=retry.ErrorClass.TIMEOUT,
            )
            CreditReservation.objects.filter(lead_id=pk, state="held").update(
                expires_at=submitted_at + grace + timedelta(seconds=60)
            )
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
    _release_held_for(ids)
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
    if _breaker_blocked_for(row, now=now) is not None:
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

"""The path a lead travels: claim, guards (pause, breaker, budget, row cap, rate), send, record, classify.

Every state change of a lead is a conditional UPDATE on (state, claim_token), so two workers can
never both send one lead, and a job that runs twice (RQ is at-least-once) finds nothing to do.
A job's leads for one webhook pass the guards together, each guard one statement for all of them.
The order of the guards matters:
  1. pauses (429 / 402 / operator), an open breaker, the hourly cap: nothing is claimed or reserved;
  2. claim the leads (queued → submitting);
  3. the breaker admits each request (half-open: at most K probes); refused → deferred (not a failure);
  4. the budget holds credits for as many leads as it pays for; the rest → deferred (not a failure);
  5. the webhook's lifetime row cap: full → fail over to the next webhook of the workspace;
  6. per request, the workspace's rate-limit token, taken just before the request goes out;
  7. send; classify the answer once; record the attempt, health and the breaker; settle or release.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import django_rq
from django.conf import settings
from django.db import transaction
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
    """One request: the leads of one webhook that go in one POST (one row, or an array in batch mode)."""

    webhook: Webhook
    lead_ids: list[int]


def submit_batch(lead_ids: list[int]) -> dict[str, int]:
    """The job body: deliver the queued leads among `lead_ids`; return counts by outcome."""
    groups: dict[int, list[Chunk]] = {}
    for chunk in plan_chunks(lead_ids):
        groups.setdefault(chunk.webhook.pk, []).append(chunk)
    totals: dict[str, int] = {}
    for chunks in groups.values():
        _add(totals, deliver_group(chunks))
    return totals


def _add(totals: dict[str, int], more: dict[str, int]) -> None:
    for key, value in more.items():
        if value:
            totals[key] = totals.get(key, 0) + value


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


def deliver_group(chunks: list[Chunk]) -> dict[str, int]:
    """Deliver one job's requests to one webhook. The guards run once for the group, each as one
    statement for all its leads (claim, breaker admissions, budget hold, row cap); then the
    requests go out CLAYOPS_SEND_CONCURRENCY at a time, each taking its rate-limit token just
    before it is sent, and their results are applied in bulk as they come back."""
    webhook = Webhook.objects.select_related("workspace", "workspace__budget").get(pk=chunks[0].webhook.pk)
    workspace = webhook.workspace
    ids = [pk for chunk in chunks for pk in chunk.lead_ids]
    n = len(ids)
    now = timezone.now()

    # 1. Pauses, the breaker (a cheap pre-check, so a backlog costs nothing while the circuit is
    #    open; allow_many() below stays the authority) and the hourly cap: nothing claimed yet.
    blocked = _blocked(webhook, now=now)
    if blocked is not None:
        return {"deferred": _defer_unclaimed(ids, *blocked)}
    wait = ratelimit.hourly_allow(workspace.pk, cap=workspace.hourly_cap, n=n)
    if wait > 0:
        return {"deferred": _defer_unclaimed(ids, "hourly record cap reached", now + timedelta(seconds=wait))}

    # 2. Claim every lead of the group in one UPDATE.
    token = uuid.uuid4().hex
    Lead.objects.filter(pk__in=ids, state=S.QUEUED).update(
        state=S.SUBMITTING, claim_token=token, state_changed_at=now, submitted_at=None, webhook=webhook
    )
    rows = dict(
        Lead.objects.filter(pk__in=ids, state=S.SUBMITTING, claim_token=token).values_list("pk", "row")
    )
    chunks = [Chunk(webhook, [pk for pk in c.lead_ids if pk in rows]) for c in chunks]
    chunks = [c for c in chunks if c.lead_ids]
    if not chunks:
        return {}
    counts: dict[str, int] = {}

    # 3. Breaker: one admission per request (probes when half-open, at most K in flight).
    probes, admission = breaker.allow_many(webhook.pk, len(chunks), now=now)
    refused = [pk for chunk in chunks[len(probes) :] for pk in chunk.lead_ids]
    if refused:
        until = now + timedelta(seconds=admission.retry_in) if admission.retry_in else None
        reason = f"circuit {admission.state}"
        _add(
            counts,
            {"deferred": _set(refused, token, state=S.DEFERRED, defer_reason=reason, next_attempt_at=until)},
        )
    sends = [_Send(chunk, probe) for chunk, probe in zip(chunks, probes, strict=False)]

    # 4. Budget: one hold for every lead the budget pays for, in order; the rest are deferred.
    wanted = [pk for send in sends for pk in send.chunk.lead_ids]
    reservations = budget.reserve_many(
        budget=workspace.budget, amount=webhook.credits_per_row, lead_ids=wanted, now=now
    )
    unfunded = [pk for pk in wanted if pk not in reservations]
    if unfunded:
        deferred = _set(
            unfunded,
            token,
            state=S.DEFERRED,
            defer_reason="daily credit budget exhausted",
            next_attempt_at=None,
        )
        _add(counts, {"deferred": deferred})
        sends = _trim(webhook, sends, keep=set(reservations))

    # 5. Lifetime row cap of the webhook (Clay: 50,000 submissions per webhook): take what is left.
    wanted = [pk for send in sends for pk in send.chunk.lead_ids]
    took = _take_rows(webhook, len(wanted))
    if took < len(wanted):
        # Full (or, rarely, lost five races for the counter): either way these leads go back to
        # the queue; only a webhook really at its cap is marked full, so choose_webhook() fails over.
        if Webhook.objects.filter(pk=webhook.pk, is_full=False, rows_sent__gte=F("row_cap")).update(
            is_full=True
        ):
            AuditEntry.objects.create(
                action="webhook_full",
                target=f"webhook:{webhook.pk} {webhook}",
                detail={"row_cap": webhook.row_cap},
            )
        over = wanted[took:]
        budget.release_many([reservations.pop(pk) for pk in over], now=now)
        _set(over, token, state=S.QUEUED)
        enqueue_leads(over)
        _add(counts, {"failover": len(over)})
        sends = _trim(webhook, sends, keep=set(wanted[:took]))

    # 6. Send, classify, record.
    if sends:
        _add(counts, _Sender(webhook, token, rows, reservations).run(sends))
    return counts


@dataclass
class _Send:
    chunk: Chunk
    probe: bool
    started: datetime | None = None
    result: SendResult | None = None


def _trim(webhook: Webhook, sends: list[_Send], *, keep: set[int]) -> list[_Send]:
    """Keep only the leads in `keep`; a request left empty gives its probe slot back."""
    kept = []
    for send in sends:
        send.chunk.lead_ids = [pk for pk in send.chunk.lead_ids if pk in keep]
        if send.chunk.lead_ids:
            kept.append(send)
        elif send.probe:
            breaker.cancel_probe(webhook.pk)
    return kept


def _take_rows(webhook: Webhook, n: int) -> int:
    """Count n rows toward the webhook's lifetime cap, or as many as still fit. Returns how many."""
    for _ in range(5):
        if n <= 0:
            return 0
        if Webhook.objects.filter(pk=webhook.pk, rows_sent__lte=F("row_cap") - n).update(
            rows_sent=F("rows_sent") + n
        ):
            return n
        sent, cap = Webhook.objects.values_list("rows_sent", "row_cap").get(pk=webhook.pk)
        n = min(n - 1, max(0, cap - sent))
    return 0


def _blocked(webhook: Webhook, *, now: datetime) -> tuple[str, datetime | None] | None:
    """Why nothing may go to this webhook now (reason, until), or None. No side effects."""
    workspace = webhook.workspace
    if workspace.paused_until and workspace.paused_until > now:
        return f"workspace paused: {workspace.pause_reason}", workspace.paused_until
    if webhook.paused_until and webhook.paused_until > now:
        return "webhook paused by Clay (429)", webhook.paused_until
    blocked_for = _breaker_blocked_for(breaker.get_breaker(webhook.pk), now=now)
    if blocked_for is not None:
        return "circuit open", (now + timedelta(seconds=blocked_for) if blocked_for else None)
    return None


class _Sender:
    """Sends a group's requests, at most CLAYOPS_SEND_CONCURRENCY in flight, on worker threads that
    only do HTTP (every database write stays on the job's thread and connection).

    Before each launch it takes the workspace's rate-limit token (so the spacing Clay sees is the
    spacing of the tokens) and marks the leads as sent (submitted_at: after this, a dead worker's
    leads are uncertain, not resent blindly). Results are applied in bulk as they arrive. It stops
    launching when the rate limit cannot be had in time, or when the webhook stops taking rows
    (breaker no longer closed, a pause, a 404): the requests not sent go back to the queue, where
    the next job's guards defer or fail them over.
    """

    RECHECK_SECONDS = 0.5

    def __init__(self, webhook: Webhook, token: str, rows: dict[int, dict], reservations: dict[int, int]):
        self.webhook = webhook
        self.workspace = webhook.workspace
        self.token = token
        self.rows = rows
        self.reservations = reservations
        self.counts: dict[str, int] = {}
        self.checked = time.monotonic()
        # Leads claimed but not yet sent must be launched well before the stuck-lead reaper
        # (CLAYOPS_STUCK_SUBMITTING_SECONDS) or the reservation reaper (its TTL) would take them
        # back; past half of the shorter one, the rest go back to the queue.
        window = min(settings.CLAYOPS_STUCK_SUBMITTING_SECONDS, settings.CLAYOPS_RESERVATION_TTL_SECONDS)
        self.deadline = time.monotonic() + window / 2

    def run(self, sends: list[_Send]) -> dict[str, int]:
        self.concurrency = max(1, settings.CLAYOPS_SEND_CONCURRENCY)
        # Paced (a rate limit is set): one launch per token, so the tokens' spacing is the sends'.
        paced = self.workspace.rate_limit and self.workspace.rate_limit > 0
        self.per_launch = 1 if paced else self.concurrency
        self.pending = list(reversed(sends))
        self.stop: str | None = None
        self.in_flight: dict[Future, _Send] = {}
        if self.concurrency == 1:
            self._run_inline()
        else:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="clayops-send") as pool:
                self._run_pooled(pool)
        if self.pending:
            self._give_back(self.pending, self.stop or "stopped")
        return self.counts

    def _next_launch(self) -> list[_Send]:
        """The requests that may go now (each having taken its rate token), marked as sent."""
        launch: list[_Send] = []
        while (
            self.stop is None
            and self.pending
            and len(launch) < self.per_launch
            and len(self.in_flight) + len(launch) < self.concurrency
        ):
            self.stop = self._may_launch(probe=self.pending[-1].probe)
            if self.stop is None:
                launch.append(self.pending.pop())
        return self._mark_sent(launch) if launch else []

    def _finish(self, finished: list[_Send]) -> None:
        self._apply(finished)
        if self.stop is None and any(not send.result.accepted for send in finished):
            self.stop = self._stopped()

    def _run_inline(self) -> None:
        while self.pending and self.stop is None:
            launch = self._next_launch()
            for send in launch:
                send.result = self._post(send)
            self._finish(launch)

    def _run_pooled(self, pool: ThreadPoolExecutor) -> None:
        def top_up() -> None:
            for send in self._next_launch():
                self.in_flight[pool.submit(self._post, send)] = send

        while True:
            top_up()
            if not self.in_flight:
                if self.stop is not None or not self.pending:
                    return
                continue
            more = self.stop is None and self.pending and len(self.in_flight) < self.concurrency
            done, _ = wait_for(self.in_flight, timeout=0 if more else None, return_when=FIRST_COMPLETED)
            finished = []
            for future in done:
                send = self.in_flight.pop(future)
                send.result = future.result()
                finished.append(send)
            if all(send.result.accepted for send in finished):
                top_up()  # all went well: the next requests go out while this batch is written
            self._finish(finished)

    def _may_launch(self, *, probe: bool) -> str | None:
        """None when the next request may go now; else why not (after waiting for a rate token)."""
        if time.monotonic() - self.checked >= self.RECHECK_SECONDS:
            reason = self._stopped()
            if reason is not None and not probe:
                return reason
        left = self.deadline - time.monotonic()
        if left <= 0:
            return "rate"
        workspace = self.workspace
        # The bucket keeps CLAYOPS_RATE_HEADROOM tokens of Clay's burst unused: a request reaches
        # Clay a little after its token was taken, and network jitter must not turn two requests
        # spaced exactly at the limit into a burst that Clay's own bucket answers with 429.
        burst = max(1, workspace.burst - settings.CLAYOPS_RATE_HEADROOM)
        if not ratelimit.acquire_blocking(  # no Redis call when no rate limit is set
            workspace.pk,
            rate=workspace.rate_limit,
            burst=burst,
            n=1,
            max_wait=min(settings.CLAYOPS_RATE_WAIT_SECONDS, left),
        ):
            return "rate"
        return None

    def _stopped(self) -> str | None:
        """Re-read whether the webhook still takes ordinary calls (one query)."""
        self.checked = time.monotonic()
        row = (
            Webhook.objects.filter(pk=self.webhook.pk)
            .values_list(
                "is_active", "broken_reason", "paused_until", "workspace__paused_until", "breaker__state"
            )
            .first()
        )
        if row is None:
            return "webhook deleted"
        active, broken, paused, workspace_paused, state = row
        now = timezone.now()
        if not active or broken:
            return "webhook not active"
        if (paused and paused > now) or (workspace_paused and workspace_paused > now):
            return "paused"
        if state not in (None, CircuitBreaker.State.CLOSED):
            return f"circuit {state}"
        return None

    def _mark_sent(self, launch: list[_Send]) -> list[_Send]:
        """Mark the leads as sent, by claim token; returns the requests still ours to send.

        A lead the stuck-lead reaper took back (the job was slower than it allows) is no longer ours:
        it is dropped from its request here, so it can never be sent twice.
        """
        now = timezone.now()
        ids = [pk for send in launch for pk in send.chunk.lead_ids]
        if _set(ids, self.token, submitted_at=now, state_changed_at=now) < len(ids):
            ours = set(
                Lead.objects.filter(pk__in=ids, state=S.SUBMITTING, claim_token=self.token).values_list(
                    "pk", flat=True
                )
            )
            launch = _trim(self.webhook, launch, keep=ours)
        for send in launch:
            send.started = now
        return launch

    def _post(self, send: _Send) -> SendResult:
        rows = [{**self.rows[pk], LEAD_ID_FIELD: pk} for pk in send.chunk.lead_ids]
        body = encode(rows if self.webhook.batch_size > 1 else rows[0])
        return get_client().send(self.webhook.url, self.webhook.headers(), body)

    def _apply(self, finished: list[_Send]) -> None:
        """Apply results: the accepted ones in bulk, the others one request at a time.

        Deliberately not one transaction: the batch touches several hot rows (credit usage, health
        sample, webhook, breaker) in an order that depends on the outcomes, and holding them all
        until one commit deadlocked two workers on PostgreSQL (seen in the 10,000-row fault test).
        Each statement commits alone; the writes are idempotent and guarded by the claim token.
        """
        if not finished:
            return
        now = timezone.now()
        accepted = [send for send in finished if send.result.accepted]
        outcomes: dict[int, str] = {}
        if accepted:
            self._accept(accepted, now=now)
            for send in accepted:
                outcomes[id(send)] = Attempt.Outcome.ACCEPTED
        for send in finished:
            if send.result.accepted:
                continue
            ids = send.chunk.lead_ids
            held = {pk: self.reservations[pk] for pk in ids if pk in self.reservations}
            outcomes[id(send)] = apply_result(
                self.webhook, ids, self.token, held, send.probe, send.result, now=now
            )
        Attempt.objects.bulk_create(
            Attempt(
                lead_id=pk,
                webhook=self.webhook,
                started_at=send.started,
                finished_at=now,
                status_code=send.result.status_code,
                latency_ms=send.result.latency_ms,
                error_class=send.result.error_class or "",
                error=send.result.error,
                outcome=outcomes[id(send)],
            )
            for send in finished
            for pk in send.chunk.lead_ids
        )
        for send in finished:
            outcome = outcomes[id(send)]
            self.counts[outcome] = self.counts.get(outcome, 0) + len(send.chunk.lead_ids)

    def _accept(self, accepted: list[_Send], *, now: datetime) -> None:
        """Clay took these requests (2xx): one statement per table for all of them."""
        from .dlq import resolve_for_leads

        hook = self.webhook.pk
        for send in accepted:
            if send.probe:
                breaker.record_success(hook, probe=True, now=now)
        breaker.record_successes(hook, sum(1 for send in accepted if not send.probe), now=now)
        latencies = [send.result.latency_ms for send in accepted]
        health.record(
            hook,
            ok=True,
            latency_ms=sum(latencies) / len(latencies),
            latency_max_ms=max(latencies),
            count=len(latencies),
            at=now,
        )
        ids = [pk for send in accepted for pk in send.chunk.lead_ids]
        budget.settle_many([self.reservations[pk] for pk in ids if pk in self.reservations], now=now)
        fields = {
            "state": S.ACCEPTED,
            "state_changed_at": now,
            "accepted_at": now,
            "attempt_count": F("attempt_count") + 1,
            "last_error": "",
            "error_class": "",
            "next_attempt_at": None,
            "defer_reason": "",
        }
        if _set(ids, self.token, **fields) < len(ids):
            # The stuck-lead reaper marked some uncertain while the request was out (a slow job):
            # the 2xx settles it, so they are not resent after the grace period.
            Lead.objects.filter(pk__in=ids, state=S.UNCERTAIN, claim_token=self.token).update(**fields)
        resolve_for_leads(ids)

    def _give_back(self, pending: list[_Send], reason: str) -> None:
        """Requests never launched: credits, row-cap slots and probe slots back; leads back to the queue."""
        ids = [pk for send in pending for pk in send.chunk.lead_ids]
        budget.release_many([self.reservations[pk] for pk in ids if pk in self.reservations])
        _unsend(self.webhook, len(ids))
        for send in pending:
            if send.probe:
                breaker.cancel_probe(self.webhook.pk)
        _set(ids, self.token, state=S.QUEUED, submitted_at=None)
        enqueue_leads(ids)
        key = "rate_wait" if reason == "rate" else "requeued"
        self.counts[key] = self.counts.get(key, 0) + len(ids)


def _breaker_blocked_for(row: CircuitBreaker, *, now: datetime) -> float | None:
    """None if the breaker may admit calls; else seconds until it might (0: until an operator resets)."""
    if row.state == CircuitBreaker.State.FORCED_OPEN:
        return 0.0
    if row.state == CircuitBreaker.State.OPEN:
        remaining = breaker.cooldown_remaining(row, now=now)
        if remaining > 0:
            return remaining
    return None


def _release(reservations: dict[int, int]) -> None:
    budget.release_many(reservations.values())


def _unsend(webhook: Webhook, n: int) -> None:
    """Clay did not take the rows: they do not count toward the webhook's lifetime cap."""
    Webhook.objects.filter(pk=webhook.pk, rows_sent__gte=n).update(rows_sent=F("rows_sent") - n)


def apply_result(
    webhook: Webhook,
    ids: list[int],
    token: str,
    reservations: dict[int, int],
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
        CreditReservation.objects.filter(pk__in=list(reservations.values()), state="held").update(
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
        wait = 5.0 if result.retry_after is None else result.retry_after  # "Retry-After: 0" is 0, not 5
        until = now + timedelta(seconds=max(1.0, wait))
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

"""Applying Clay's answers to a group's requests: classified once (clayops.retry), then one small
handler per error class writes the lead states, the budget, the breaker, health and the DLQ.

Deliberately not one transaction per batch: a batch touches several hot rows (credit usage, health
sample, webhook, breaker) in an order that depends on the outcomes, and holding them all until one
commit deadlocked two workers on PostgreSQL (seen in the 10,000-row fault test). Each statement
commits alone; the writes are idempotent and guarded by the claim token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from .. import breaker, budget, dlq, health, retry
from ..client import SendResult
from ..enqueue import enqueue_leads
from ..models import Attempt, AuditEntry, Lead, Webhook
from .transitions import S, set_claimed, unsend

E = retry.ErrorClass
Out = Attempt.Outcome
# An uncertain send keeps its credit hold past the grace period, so that requeue_uncertain (which
# books it as a send Clay may have charged) always comes before the reservation reaper.
UNCERTAIN_HOLD_MARGIN = timedelta(hours=1)


@dataclass
class Group:
    """What a job holds while its requests are out: the webhook, its claim token, the credit holds."""

    webhook: Webhook
    token: str
    reservations: dict[int, int]  # lead id → reservation id


def apply_results(group: Group, finished: list, *, now: datetime | None = None) -> dict[str, int]:
    """Apply finished requests (routing.Send): the accepted ones in bulk, the others one request at
    a time; one Attempt per lead. Returns lead counts by outcome."""
    if not finished:
        return {}
    now = now or timezone.now()
    accepted = [send for send in finished if send.result.accepted]
    if accepted:
        accept(group, [pk for send in accepted for pk in send.chunk.lead_ids], accepted, now=now)
    outcomes: dict[int, str] = {id(send): Out.ACCEPTED for send in accepted}
    for send in finished:
        if not send.result.accepted:
            outcomes[id(send)] = apply_failure(group, send.chunk.lead_ids, send.probe, send.result, now=now)
    Attempt.objects.bulk_create(
        Attempt(
            lead_id=pk,
            webhook=group.webhook,
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
    counts: dict[str, int] = {}
    for send in finished:
        outcome = outcomes[id(send)]
        counts[outcome] = counts.get(outcome, 0) + len(send.chunk.lead_ids)
    return counts


def accept(group: Group, ids: list[int], accepted: list, *, now: datetime) -> None:
    """Clay took these requests (2xx): one statement per table for all of them."""
    hook = group.webhook.pk
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
    budget.settle_many([group.reservations[pk] for pk in ids if pk in group.reservations], now=now)
    fields = {
        "state": S.ACCEPTED,
        "state_changed_at": now,
        "accepted_at": now,
        "attempt_count": F("attempt_count") + 1,
        "last_error": "",
        "error_class": "",
        # For an accepted lead, the time its callback is due: past it, the lead is overdue.
        "next_attempt_at": now + timedelta(seconds=group.webhook.callback_deadline_seconds),
        "defer_reason": "",
    }
    if set_claimed(ids, group.token, **fields) < len(ids):
        # The stuck-lead reaper marked some uncertain while the request was out (a slow job):
        # the 2xx settles it, so they are not resent after the grace period.
        Lead.objects.filter(pk__in=ids, state=S.UNCERTAIN, claim_token=group.token).update(**fields)
    dlq.resolve_for_leads(ids)


@dataclass
class Failure:
    """One request Clay did not accept, with everything its handler needs."""

    group: Group
    ids: list[int]
    probe: bool
    result: SendResult
    now: datetime

    @property
    def webhook(self) -> Webhook:
        return self.group.webhook

    def held(self) -> list[int]:
        return [self.group.reservations[pk] for pk in self.ids if pk in self.group.reservations]

    def set(self, ids: list[int] | None = None, **fields) -> int:
        return set_claimed(self.ids if ids is None else ids, self.group.token, **fields)

    def failed(self, reason: str | None = None) -> None:
        """Count a failure of Clay against the breaker and health."""
        reason = (reason or self.result.error)[:200]
        breaker.record_failure(self.webhook.pk, probe=self.probe, reason=reason, now=self.now)
        health.record(self.webhook.pk, ok=False, latency_ms=self.result.latency_ms, at=self.now)

    def not_a_failure(self) -> None:
        """Not Clay's fault (a pause): a probe slot goes back, the breaker and health are untouched."""
        if self.probe:
            breaker.cancel_probe(self.webhook.pk)


def apply_failure(group: Group, ids: list[int], probe: bool, result: SendResult, *, now: datetime) -> str:
    """Apply one request's non-2xx answer; returns the Attempt outcome."""
    failure = Failure(group, ids, probe, result, now)
    if result.uncertain:
        return _uncertain(failure)
    # Clay did not take the rows: give the credits and the row-cap slots back.
    budget.release_many(failure.held(), now=now)
    unsend(group.webhook, len(ids))
    handler = HANDLERS.get(result.error_class)
    if handler is None:
        handler = _permanent if retry.is_permanent(result.error_class) else _transient
    return handler(failure)


def _uncertain(f: Failure) -> str:
    """The row may be at Clay: keep the reservation, wait for the callback for a grace period."""
    f.failed()
    grace = timedelta(seconds=settings.CLAYOPS_UNCERTAIN_GRACE_SECONDS)
    budget.extend_holds(f.held(), until=f.now + grace + UNCERTAIN_HOLD_MARGIN)
    f.set(
        state=S.UNCERTAIN,
        next_attempt_at=f.now + grace,
        attempt_count=F("attempt_count") + 1,
        last_error=f.result.error,
        error_class=f.result.error_class,
    )
    return Out.UNCERTAIN


def _rate_limited(f: Failure) -> str:
    """429: not a failure of Clay. Pause the whole workspace's webhooks for Retry-After, for every worker."""
    f.not_a_failure()
    wait = 5.0 if f.result.retry_after is None else f.result.retry_after  # "Retry-After: 0" is 0, not 5
    until = f.now + timedelta(seconds=max(1.0, wait))
    for hook_id in Webhook.objects.filter(workspace_id=f.webhook.workspace_id).values_list("pk", flat=True):
        retry.pause_webhook(hook_id, until=until, reason="429 Too Many Requests")
    f.set(
        state=S.RETRY_WAIT, next_attempt_at=until, last_error=f.result.error, error_class=f.result.error_class
    )
    return Out.RATE_LIMITED


def _payment(f: Failure) -> str:
    """402: Clay's credits or actions ran out. Pause spending for the workspace; not a failure."""
    f.not_a_failure()
    until = f.now + timedelta(seconds=settings.CLAYOPS_PAYMENT_PAUSE_SECONDS)
    retry.pause_workspace(
        f.webhook.workspace_id, until=until, reason="Clay answered 402: credits or actions exhausted"
    )
    f.set(
        state=S.DEFERRED,
        defer_reason="Clay credits exhausted (402)",
        next_attempt_at=until,
        last_error=f.result.error,
        error_class=f.result.error_class,
    )
    return Out.RETRY


def _not_found(f: Failure) -> str:
    """404: table deleted or webhook replaced. Stop using it, tell the operator, fail over."""
    f.failed("404: webhook gone")
    return _retire(f, "webhook_broken")


def _refused(f: Failure) -> str:
    """The destination policy refused the webhook's URL or address: nothing reached Clay, so the
    breaker and health are untouched; like a 404, the webhook is taken out of use."""
    f.not_a_failure()
    return _retire(f, "webhook_refused")


def _retire(f: Failure, action: str) -> str:
    """Take the webhook out of use (audited) and send its leads back to the queue: they fail over to
    the workspace's next webhook, or are deferred when it has none."""
    Webhook.objects.filter(pk=f.webhook.pk).update(is_active=False, broken_reason=f.result.error[:200])
    AuditEntry.objects.create(
        action=action, target=f"webhook:{f.webhook.pk} {f.webhook}", detail={"error": f.result.error[:300]}
    )
    f.set(state=S.QUEUED, last_error=f.result.error, error_class=f.result.error_class)
    enqueue_leads(f.ids)
    return Out.RETRY


def _permanent(f: Failure) -> str:
    """Other 4xx: Clay answered sanely (it is up), the row itself is wrong. Straight to the DLQ."""
    breaker.record_success(f.webhook.pk, probe=f.probe, now=f.now)
    health.record(f.webhook.pk, ok=True, latency_ms=f.result.latency_ms, at=f.now)
    _dead(f, f.ids, transient=False)
    return Out.DEAD


def _transient(f: Failure) -> str:
    """5xx, 408, 409, timeouts and connection errors before the row was sent: retry with backoff,
    or the DLQ when the lead's attempts are used up."""
    f.failed()
    attempts = dict(Lead.objects.filter(pk__in=f.ids).values_list("pk", "attempt_count"))
    exhausted = [pk for pk in f.ids if attempts.get(pk, 0) + 1 >= settings.CLAYOPS_MAX_ATTEMPTS]
    if exhausted:
        _dead(f, exhausted, transient=True)
    for pk in f.ids:
        if pk in exhausted:
            continue
        delay = retry.backoff_seconds(
            attempts.get(pk, 0) + 1,
            base=settings.CLAYOPS_BACKOFF_BASE_SECONDS,
            cap=settings.CLAYOPS_BACKOFF_CAP_SECONDS,
        )
        f.set(
            [pk],
            state=S.RETRY_WAIT,
            next_attempt_at=f.now + timedelta(seconds=delay),
            attempt_count=F("attempt_count") + 1,
            last_error=f.result.error,
            error_class=f.result.error_class,
        )
    return Out.DEAD if len(exhausted) == len(f.ids) else Out.RETRY


def _dead(f: Failure, ids: list[int], *, transient: bool) -> None:
    """Retries end here: the lead is dead and its DLQ entry written (the one place that writes it)."""
    moved = list(
        Lead.objects.filter(pk__in=ids, state=S.SUBMITTING, claim_token=f.group.token).values_list(
            "pk", flat=True
        )
    )
    f.set(
        moved,
        state=S.DEAD,
        attempt_count=F("attempt_count") + 1,
        last_error=f.result.error,
        error_class=f.result.error_class or "",
        next_attempt_at=None,
    )
    dlq.record_dead(
        moved,
        webhook=f.webhook,
        error=f.result.error,
        error_class=f.result.error_class or "",
        status_code=f.result.status_code,
        transient=transient,
        now=f.now,
    )


HANDLERS: dict[str | None, Callable[[Failure], str]] = {
    E.RATE_LIMITED: _rate_limited,
    E.PAYMENT: _payment,
    E.NOT_FOUND: _not_found,
    E.DESTINATION_REFUSED: _refused,
}

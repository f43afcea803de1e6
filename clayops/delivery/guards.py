"""The submission job's body: a job's leads for one webhook pass each guard together, each guard one
statement for all of them (the order is in the package docstring), then go to the Sender."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from .. import breaker, budget, ratelimit
from ..enqueue import alert_check, enqueue_leads
from ..models import AuditEntry, CircuitBreaker, EnrichmentCache, Lead, Webhook
from .outcomes import Group
from .routing import Chunk, Send, trim
from .sender import Prepaid, Sender
from .transitions import S, defer_unclaimed, set_claimed


def _add(totals: dict[str, int], more: dict[str, int]) -> None:
    for key, value in more.items():
        if value:
            totals[key] = totals.get(key, 0) + value


def deliver_group(chunks: list[Chunk], prepaid: Prepaid | None = None) -> dict[str, int]:
    """Deliver one job's requests to one webhook: guards once for the group, then the Sender.

    `prepaid`: rate-limit tokens a pump already took (one per request); what the guards or the
    Sender leave unused stays in `prepaid.left` for the pump to give back."""
    webhook = Webhook.objects.select_related("workspace", "workspace__budget").get(pk=chunks[0].webhook.pk)
    ids = [pk for chunk in chunks for pk in chunk.lead_ids]
    now = timezone.now()
    refused = _refuse_before_claim(webhook, ids, now=now)
    if refused is not None:
        return refused
    token = uuid.uuid4().hex
    rows, chunks = _claim(webhook, chunks, ids, token, now=now)
    if not chunks:
        return {}
    counts: dict[str, int] = {}
    group = Group(webhook, token, {})
    chunks = _serve_cached(group, chunks, counts, now=now)
    if not chunks:
        return counts
    sends = _admit(group, chunks, counts, now=now)
    sends = _fund(group, sends, counts, now=now)
    sends = _take_row_cap(group, sends, counts, now=now)
    if sends:
        _add(counts, Sender(group, rows, prepaid).run(sends))
    return counts


def _refuse_before_claim(webhook: Webhook, ids: list[int], *, now: datetime) -> dict[str, int] | None:
    """Step 1: pauses, the breaker (a cheap pre-check, so a backlog costs nothing while the circuit
    is open; allow_many() stays the authority) and the hourly cap. Nothing is claimed yet."""
    blocked = blocked_reason(webhook, now=now)
    if blocked is not None:
        return {"deferred": defer_unclaimed(ids, *blocked)}
    workspace = webhook.workspace
    wait = ratelimit.hourly_allow(workspace.pk, cap=workspace.hourly_cap, n=len(ids))
    if wait > 0:
        return {"deferred": defer_unclaimed(ids, "hourly record cap reached", now + timedelta(seconds=wait))}
    return None


def _claim(
    webhook: Webhook, chunks: list[Chunk], ids: list[int], token: str, *, now: datetime
) -> tuple[dict[int, dict], list[Chunk]]:
    """Step 2: claim every lead of the group in one UPDATE; the rows and the chunks still ours."""
    Lead.objects.filter(pk__in=ids, state=S.QUEUED).update(
        state=S.SUBMITTING, claim_token=token, state_changed_at=now, submitted_at=None, webhook=webhook
    )
    rows = dict(
        Lead.objects.filter(pk__in=ids, state=S.SUBMITTING, claim_token=token).values_list("pk", "row")
    )
    chunks = [Chunk(webhook, [pk for pk in c.lead_ids if pk in rows]) for c in chunks]
    return rows, [c for c in chunks if c.lead_ids]


def _serve_cached(group: Group, chunks: list[Chunk], counts: dict[str, int], *, now: datetime) -> list[Chunk]:
    """Step 2b, cache-aware sending (Webhook.reuse_cached): a claimed lead whose domain has a fresh
    enrichment in the cache is enriched from it instead of being sent. No request, no credits held
    or spent (they are counted as saved today), no row of the webhook's cap. The lead records that
    its data came from the cache (`served`, source "cache", instead_of_send)."""
    webhook = group.webhook
    if not webhook.reuse_cached:
        return chunks
    ids = [pk for chunk in chunks for pk in chunk.lead_ids]
    domains = dict(Lead.objects.filter(pk__in=ids).exclude(domain="").values_list("pk", "domain"))
    fresh = {
        entry.domain: entry
        for entry in EnrichmentCache.objects.filter(domain__in=set(domains.values()), expires_at__gt=now)
    }
    by_domain: dict[str, list[int]] = {}
    for pk, domain in domains.items():
        if domain in fresh:
            by_domain.setdefault(domain, []).append(pk)
    if not by_domain:
        return chunks
    served: set[int] = set()
    with transaction.atomic():
        for domain, pks in by_domain.items():
            entry = fresh[domain]
            answer = {
                "source": "cache",
                "data": entry.data,
                "at": entry.fetched_at.isoformat(),
                "instead_of_send": True,
            }
            changed = set_claimed(
                pks, group.token, state=S.ENRICHED, enriched=entry.data, enriched_at=now, served=answer
            )
            if changed:
                # The claim token stays on the lead: it tells ours from one the reaper took back.
                mine = Lead.objects.filter(pk__in=pks, state=S.ENRICHED, claim_token=group.token)
                served |= set(mine.values_list("pk", flat=True))
                EnrichmentCache.objects.filter(pk=entry.pk).update(hits=F("hits") + changed)
        budget.record_saved(webhook.workspace.budget, webhook.credits_per_row * len(served), now=now)
    _add(counts, {"served_from_cache": len(served)})
    left = [Chunk(webhook, [pk for pk in chunk.lead_ids if pk not in served]) for chunk in chunks]
    return [chunk for chunk in left if chunk.lead_ids]


def _admit(group: Group, chunks: list[Chunk], counts: dict[str, int], *, now: datetime) -> list[Send]:
    """Step 3: one breaker admission per request (probes when half-open, at most K in flight)."""
    probes, admission = breaker.allow_many(group.webhook.pk, len(chunks), now=now)
    refused = [pk for chunk in chunks[len(probes) :] for pk in chunk.lead_ids]
    if refused:
        until = now + timedelta(seconds=admission.retry_in) if admission.retry_in else None
        deferred = set_claimed(
            refused,
            group.token,
            state=S.DEFERRED,
            defer_reason=f"circuit {admission.state}",
            next_attempt_at=until,
        )
        _add(counts, {"deferred": deferred})
    return [Send(chunk, probe) for chunk, probe in zip(chunks, probes, strict=False)]


def _fund(group: Group, sends: list[Send], counts: dict[str, int], *, now: datetime) -> list[Send]:
    """Step 4: one budget hold for every lead the budget pays for, in order; the rest are deferred."""
    webhook = group.webhook
    wanted = [pk for send in sends for pk in send.chunk.lead_ids]
    group.reservations.update(
        budget.reserve_many(
            budget=webhook.workspace.budget,
            amount=webhook.credits_per_row,
            actions=webhook.actions_per_row,
            lead_ids=wanted,
            now=now,
        )
    )
    unfunded = [pk for pk in wanted if pk not in group.reservations]
    if not unfunded:
        return sends
    deferred = set_claimed(
        unfunded,
        group.token,
        state=S.DEFERRED,
        defer_reason="daily credit budget exhausted",
        next_attempt_at=None,
    )
    _add(counts, {"deferred": deferred})
    return trim(webhook, sends, keep=set(group.reservations))


def _take_row_cap(group: Group, sends: list[Send], counts: dict[str, int], *, now: datetime) -> list[Send]:
    """Step 5: the webhook's lifetime row cap (Clay: 50,000 submissions per webhook); take what is left.

    Full (or, rarely, lost five races for the counter): either way the leads that did not fit go
    back to the queue; only a webhook really at its cap is marked full, so choose_webhook() fails over.
    """
    webhook = group.webhook
    wanted = [pk for send in sends for pk in send.chunk.lead_ids]
    took = take_rows(webhook, len(wanted))
    if took == len(wanted):
        return sends
    mark_full_if_at_cap(webhook)
    over = wanted[took:]
    budget.release_many([group.reservations.pop(pk) for pk in over], now=now)
    set_claimed(over, group.token, state=S.QUEUED)
    enqueue_leads(over)
    _add(counts, {"failover": len(over)})
    return trim(webhook, sends, keep=set(wanted[:took]))


def take_rows(webhook: Webhook, n: int) -> int:
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


def mark_full_if_at_cap(webhook: Webhook) -> bool:
    """Mark the webhook full (audited once) when it really is at its lifetime row cap."""
    if Webhook.objects.filter(pk=webhook.pk, is_full=False, rows_sent__gte=F("row_cap")).update(is_full=True):
        AuditEntry.objects.create(
            action="webhook_full",
            target=f"webhook:{webhook.pk} {webhook}",
            detail={"row_cap": webhook.row_cap},
        )
        alert_check("rows")
        return True
    return False


def blocked_reason(webhook: Webhook, *, now: datetime) -> tuple[str, datetime | None] | None:
    """Why nothing may go to this webhook now (reason, until), or None. No side effects."""
    workspace = webhook.workspace
    if workspace.paused_until and workspace.paused_until > now:
        return f"workspace paused: {workspace.pause_reason}", workspace.paused_until
    if webhook.paused_until and webhook.paused_until > now:
        return "webhook paused by Clay (429)", webhook.paused_until
    blocked_for = breaker_blocked_for(breaker.get_breaker(webhook.pk), now=now)
    if blocked_for is not None:
        return "circuit open", (now + timedelta(seconds=blocked_for) if blocked_for else None)
    return None


def breaker_blocked_for(row: CircuitBreaker, *, now: datetime) -> float | None:
    """None if the breaker may admit calls; else seconds until it might (0: until an operator resets)."""
    if row.state == CircuitBreaker.State.FORCED_OPEN:
        return 0.0
    if row.state == CircuitBreaker.State.OPEN:
        remaining = breaker.cooldown_remaining(row, now=now)
        if remaining > 0:
            return remaining
    return None

"""Conditional state changes of leads, shared by the delivery modules.

A job claims its leads with a random token (state submitting, claim_token); every later change of
those leads is filtered by (state, token), so a lead another worker or the reaper took back is left
alone and a second run of a job changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ..enqueue import enqueue_leads
from ..models import Lead, Webhook

S = Lead.State
OFFLINE_STATES = (S.DEFERRED, S.SERVED_CACHE, S.SERVED_FALLBACK)


def set_claimed(ids: Sequence[int], token: str, **fields) -> int:
    """Conditional transition of leads this job claimed (state submitting, our token)."""
    fields.setdefault("state_changed_at", timezone.now())
    return Lead.objects.filter(pk__in=ids, state=S.SUBMITTING, claim_token=token).update(**fields)


def defer_unclaimed(ids: Sequence[int], reason: str, until: datetime | None) -> int:
    """Queued leads a guard refused before they were claimed: deferred (offline queue), with why."""
    return Lead.objects.filter(pk__in=ids, state=S.QUEUED).update(
        state=S.DEFERRED, defer_reason=reason[:200], next_attempt_at=until, state_changed_at=timezone.now()
    )


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


def unsend(webhook: Webhook, n: int) -> None:
    """Clay did not take the rows: they do not count toward the webhook's lifetime cap."""
    Webhook.objects.filter(pk=webhook.pk, rows_sent__gte=n).update(rows_sent=F("rows_sent") - n)

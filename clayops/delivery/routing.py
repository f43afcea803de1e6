"""Where a lead goes: its webhook, or the next usable one of the same workspace (fail over), and
how a job's leads are cut into requests (one row, or arrays in batch mode, under Clay's payload limit)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings

from .. import breaker
from ..client import SendResult, encode
from ..models import Lead, Webhook
from .transitions import S, defer_unclaimed


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


@dataclass
class Chunk:
    """One request: the leads of one webhook that go in one POST (one row, or an array in batch mode)."""

    webhook: Webhook
    lead_ids: list[int]


def plan_chunks(lead_ids: Sequence[int]) -> list[Chunk]:
    """Group queued leads by the webhook they will go to, in requests of the webhook's batch size
    (kept under Clay's payload limit), in the order given. Leads with no usable webhook are deferred."""
    leads = list(
        Lead.objects.filter(pk__in=lead_ids, state=S.QUEUED)
        .select_related("webhook")
        .only("pk", "row", "webhook")
    )
    position = {pk: i for i, pk in enumerate(lead_ids)}
    leads.sort(key=lambda lead: position[lead.pk])  # in the order given (an import's: file order)
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
        defer_unclaimed(orphans, "no active webhook with room", None)
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


@dataclass
class Send:
    """A request on its way: its chunk, whether it is a half-open probe, when it left, Clay's answer."""

    chunk: Chunk
    probe: bool
    started: datetime | None = None
    result: SendResult | None = None


def trim(webhook: Webhook, sends: list[Send], *, keep: set[int]) -> list[Send]:
    """Keep only the leads in `keep`; a request left empty gives its probe slot back."""
    kept = []
    for send in sends:
        send.chunk.lead_ids = [pk for pk in send.chunk.lead_ids if pk in keep]
        if send.chunk.lead_ids:
            kept.append(send)
        elif send.probe:
            breaker.cancel_probe(webhook.pk)
    return kept

"""Clay's HTTP API column posts each enriched row back here.

Authenticated by the webhook's shared secret in a header (Clay signs nothing: the operator types the
header into the column), compared in constant time. Matched by the clayops_lead_id clayops put in
the row. Idempotent: the first callback for a lead stores the data; a repeat changes nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
from datetime import timedelta
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from . import budget
from .contract import CALLBACK_HEADER, LEAD_ID_FIELD, SEND_ID_FIELD
from .dlq import resolve_for_leads
from .models import DeadLetter, EnrichmentCache, Lead, Webhook

log = logging.getLogger("clayops.callbacks")
MAX_CALLBACK_BYTES = 1_000_000
# Fields of a callback that describe the call, not the company.
META_FIELDS = {LEAD_ID_FIELD, SEND_ID_FIELD, "credits_used", "enrichment_status"}


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"ok": False, "error": message}, status=status)


def handle_callback(request: HttpRequest, webhook_id: int) -> HttpResponse:
    webhook = Webhook.objects.filter(pk=webhook_id).only("pk", "callback_secret").first()
    if webhook is None:
        return _error(404, f"unknown webhook {webhook_id}")
    given = request.headers.get(CALLBACK_HEADER, "")
    if not hmac.compare_digest(given.encode(), webhook.callback_secret.encode()):
        log.warning(
            "callback for webhook %s rejected: bad or missing %s header from %s",
            webhook_id,
            CALLBACK_HEADER,
            request.META.get("REMOTE_ADDR"),
        )
        return _error(401, f"missing or wrong {CALLBACK_HEADER} header")
    if len(request.body) > MAX_CALLBACK_BYTES:
        return _error(413, "callback body too large")
    try:
        payload = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        return _error(400, "body is not valid JSON")
    rows = payload if isinstance(payload, list) else [payload]
    if not rows or not all(isinstance(row, dict) for row in rows):
        return _error(400, "body must be a JSON object (or an array of objects)")
    results = []
    for row in rows:
        try:
            lead_id = int(row.get(LEAD_ID_FIELD))
        except (TypeError, ValueError):
            return _error(400, f"each row needs an integer {LEAD_ID_FIELD}")
        results.append(apply_enrichment(lead_id, row))
    if len(rows) == 1:
        status = {"unknown": 404}.get(results[0], 200)
        if status == 404:
            return _error(404, f"unknown lead {rows[0].get(LEAD_ID_FIELD)}")
        return JsonResponse({"ok": True, "result": results[0]}, status=status)
    return JsonResponse({"ok": True, "results": results})


def _credits(row: dict) -> Decimal | None:
    value = row.get("credits_used")
    if value is None:
        return None
    try:
        credits = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return credits if credits >= 0 else None


def _send_id(row: dict) -> int | None:
    """The send a callback reports on (SEND_ID_FIELD), when the row carries a usable one."""
    value = row.get(SEND_ID_FIELD)
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if 0 < number < 2**63 else None


def apply_enrichment(lead_id: int, row: dict) -> str:
    """Store Clay's result for a lead once. Returns "enriched", "duplicate" or "unknown"."""
    now = timezone.now()
    data = {key: value for key, value in row.items() if key not in META_FIELDS}
    failed = str(row.get("enrichment_status", "ok")).lower() in ("failed", "error")
    with transaction.atomic():
        updated = Lead.objects.filter(pk=lead_id, enriched_at__isnull=True).update(
            state=Lead.State.ENRICHED,
            enriched=data,
            enriched_at=now,
            state_changed_at=now,
            credits_actual=_credits(row),
            next_attempt_at=None,
            defer_reason="",
            last_error="enrichment failed at Clay" if failed else "",
        )
    send_id = _send_id(row)
    if not updated:
        if not Lead.objects.filter(pk=lead_id).exists():
            return "unknown"
        if send_id is not None:
            # Another send of a lead already enriched (an uncertain send and its resend both reached
            # Clay): its charge goes on the books too. A repeat of the same callback changes nothing.
            budget.settle_for_lead(lead_id, actual=_credits(row), send_id=send_id, now=now)
        return "duplicate"
    # Clay enriched it, whatever the lead went through meanwhile: nothing is left to retry.
    resolve_for_leads(
        [lead_id], states=(DeadLetter.State.PENDING, DeadLetter.State.RETRYING, DeadLetter.State.EXHAUSTED)
    )
    budget.settle_for_lead(lead_id, actual=_credits(row), send_id=send_id, now=now)
    lead = Lead.objects.only("domain").get(pk=lead_id)
    if lead.domain and not failed:
        cache_put(lead.domain, data, now=now)
    return "enriched"


def cache_put(domain: str, data: dict, *, now=None) -> None:
    now = now or timezone.now()
    expires = now + timedelta(seconds=settings.CLAYOPS_CACHE_TTL_SECONDS)
    updated = EnrichmentCache.objects.filter(domain=domain).update(
        data=data, fetched_at=now, expires_at=expires
    )
    if not updated:
        try:
            with transaction.atomic():
                EnrichmentCache.objects.create(domain=domain, data=data, fetched_at=now, expires_at=expires)
        except IntegrityError:  # another callback for the same domain won the insert
            EnrichmentCache.objects.filter(domain=domain).update(
                data=data, fetched_at=now, expires_at=expires
            )

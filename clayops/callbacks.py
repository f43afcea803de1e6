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
from .converters import parse_id
from .dlq import resolve_for_leads
from .models import AuditEntry, CreditReservation, DeadLetter, EnrichmentCache, Lead, Webhook

log = logging.getLogger("clayops.callbacks")
MAX_CALLBACK_BYTES = 1_000_000
MAX_DEPTH = 20  # nesting of a callback's JSON (Clay's rows are flat; enrichment columns nest a little)
MAX_ROWS = 100  # rows in one callback (batch mode sends up to 10)
# Leads Clay has (or may have) taken: a callback for any other lead is refused.
SENT_STATES = {
    Lead.State.SUBMITTING,
    Lead.State.ACCEPTED,
    Lead.State.UNCERTAIN,
    Lead.State.OVERDUE,
    Lead.State.DELIVERED,
    Lead.State.ENRICHED,
    Lead.State.RETRY_WAIT,  # a failed send may still have reached Clay
    Lead.State.DEAD,
}
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
    rows, problem = _parse(request.body)
    if problem is not None:
        return _error(400, problem)
    checked = []
    for row in rows:
        lead_id, refusal = _check_row(row, webhook_id)
        if refusal is not None:
            return _refuse(webhook_id, row, *refusal)
        checked.append((lead_id, row))
    results = [apply_enrichment(lead_id, row) for lead_id, row in checked]
    if len(rows) == 1:
        return JsonResponse({"ok": True, "result": results[0]})
    return JsonResponse({"ok": True, "results": results})


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _parse(body: bytes) -> tuple[list[dict], str | None]:
    """The rows of a callback body, or a problem: not JSON (NaN and Infinity refused), nested
    deeper than MAX_DEPTH, not an object or an array of at most MAX_ROWS objects."""
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return [], "body is not valid JSON"
    if _depth(payload) > MAX_DEPTH:
        return [], f"body is nested deeper than {MAX_DEPTH} levels"
    if _bad_text(payload):
        return [], "body holds a NUL character or a lone surrogate (not storable text)"
    rows = payload if isinstance(payload, list) else [payload]
    if not rows or not all(isinstance(row, dict) for row in rows):
        return [], "body must be a JSON object (or an array of objects)"
    if len(rows) > MAX_ROWS:
        return [], f"at most {MAX_ROWS} rows per callback"
    return rows, None


def _bad_text(value) -> bool:
    """True when a key or string holds text no database stores: NUL, or a lone UTF-16 surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return True
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def _depth(value) -> int:
    """How deeply containers nest in a parsed JSON value (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                stack.extend(
                    (child, level + 1) for child in (item.values() if isinstance(item, dict) else item)
                )
    return deepest


def _check_row(row: dict, webhook_id: int) -> tuple[int, tuple[int, str] | None]:
    """The row's lead id, or (status, reason) why the callback is refused: an id out of range, credits
    that are not a finite number between 0 and CLAYOPS_MAX_CREDITS_PER_ROW, an unknown lead, a lead
    of another webhook than the one whose secret authenticated the call, a lead never sent."""
    lead_id = parse_id(row.get(LEAD_ID_FIELD))
    if lead_id is None:
        return 0, (400, f"each row needs a positive integer {LEAD_ID_FIELD}")
    if "credits_used" in row and row["credits_used"] is not None and _credits(row) is None:
        limit = settings.CLAYOPS_MAX_CREDITS_PER_ROW
        return lead_id, (400, f"credits_used must be a number from 0 to {limit}")
    lead = Lead.objects.filter(pk=lead_id).values("webhook_id", "state").first()
    if lead is None:
        return lead_id, (404, f"unknown lead {lead_id}")
    if lead["webhook_id"] != webhook_id:
        return lead_id, (403, f"lead {lead_id} was not sent to this webhook")
    sent = lead["state"] in SENT_STATES or CreditReservation.objects.filter(lead_id=lead_id).exists()
    if not sent:
        return lead_id, (409, f"lead {lead_id} was never sent to Clay")
    return lead_id, None


def _refuse(webhook_id: int, row: dict, status: int, reason: str) -> JsonResponse:
    """Refuse the whole callback (nothing is applied), audited and logged."""
    AuditEntry.objects.create(
        action="callback_refused",
        target=f"webhook:{webhook_id}",
        detail={"status": status, "reason": reason[:200], "lead": str(row.get(LEAD_ID_FIELD))[:40]},
    )
    log.warning("callback for webhook %s refused (%s): %s", webhook_id, status, reason)
    return _error(status, reason)


def _credits(row: dict) -> Decimal | None:
    """Clay's figure for the row, when it is a finite number from 0 to CLAYOPS_MAX_CREDITS_PER_ROW."""
    value = row.get("credits_used")
    if value is None or isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        credits = Decimal(str(value))
        if not credits.is_finite() or not 0 <= credits <= settings.CLAYOPS_MAX_CREDITS_PER_ROW:
            return None
        # Stored to the cent, like every credit figure ("1e-1000000" is 0.00, not a numeric overflow).
        return credits.quantize(Decimal("0.01"))
    except (InvalidOperation, ValueError):
        return None


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
    send_id = parse_id(row.get(SEND_ID_FIELD))
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

"""Graceful degradation: what clayops answers for a lead while Clay cannot.

Order: Clay's own enrichment when the lead has it; else the enrichment cache by domain (filled by
Clay's callbacks for other leads of the same company); else a local fallback guessed from the
domain. Degraded answers are marked with their source and recorded on the lead; a deferred lead
that was served moves to served_cache / served_fallback. Once Clay is back the offline queue sends
it to Clay for real data after new work (webhooks with reenrich_served, the default), or an
operator re-enriches it on request (clayops.delivery.resolution.reenrich).
"""

from __future__ import annotations

import re

from django.db.models import F
from django.utils import timezone

from .models import EnrichmentCache, Lead

# Second-level labels under which public suffixes hide the company name (acme.co.uk).
_SECOND_LEVEL = {"co", "com", "org", "net", "ac", "gov", "edu", "ltd", "plc"}


def company_from_domain(domain: str) -> str:
    """acme-widgets.co.uk → "Acme Widgets"; a guess, labelled as one."""
    labels = [label for label in domain.lower().strip(".").split(".") if label]
    if labels and labels[0] == "www":
        labels = labels[1:]
    if not labels:
        return ""
    if len(labels) >= 3 and labels[-2] in _SECOND_LEVEL:
        name = labels[-3]
    elif len(labels) >= 2:
        name = labels[-2]
    else:
        name = labels[0]
    return " ".join(part.capitalize() for part in re.split(r"[-_]+", name) if part)


def fallback_for(lead: Lead) -> dict:
    data = {"company_name": lead.company or company_from_domain(lead.domain)}
    if lead.domain:
        data["domain"] = lead.domain
        data["website"] = f"https://{lead.domain}"
    return data


def best_answer(lead: Lead, *, now=None) -> tuple[dict, EnrichmentCache | None]:
    """The best data clayops has for a lead now, without recording anything (a read):
    ({"source": "clay"|"cache"|"fallback", "data": {...}, "at": ...}, the cache row used, if any)."""
    now = now or timezone.now()
    if lead.enriched is not None:
        if isinstance(lead.served, dict) and lead.served.get("instead_of_send"):
            return {key: lead.served[key] for key in ("source", "data", "at") if key in lead.served}, None
        at = lead.enriched_at.isoformat() if lead.enriched_at else None
        return {"source": "clay", "data": lead.enriched, "at": at}, None
    cached = None
    if lead.domain:
        cached = EnrichmentCache.objects.filter(domain=lead.domain, expires_at__gt=now).first()
    if cached is not None:
        return {"source": "cache", "data": cached.data, "at": cached.fetched_at.isoformat()}, cached
    return {"source": "fallback", "data": fallback_for(lead), "at": now.isoformat()}, None


def lead_data(lead: Lead, *, now=None) -> dict:
    """Serve the best data for a lead and record it (a write): the cache hit is counted, the answer
    stored on the lead, and a deferred lead moves to served_cache / served_fallback (still in the
    offline queue)."""
    answer, cached = best_answer(lead, now=now)
    if answer["source"] == "clay":
        return answer
    if cached is not None:
        EnrichmentCache.objects.filter(pk=cached.pk).update(hits=F("hits") + 1)
    new_state = Lead.State.SERVED_CACHE if cached is not None else Lead.State.SERVED_FALLBACK
    Lead.objects.filter(pk=lead.pk).update(served=answer)
    Lead.objects.filter(
        pk=lead.pk, state__in=[Lead.State.DEFERRED, Lead.State.SERVED_CACHE, Lead.State.SERVED_FALLBACK]
    ).update(state=new_state)
    return answer

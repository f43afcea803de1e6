"""The Timeline page (GET): sends by outcome, credits spent, DLQ inflow and marks on one time axis.

The page renders the marks and a table of the buckets itself (readable without the chart or
JavaScript); static/clayops/timeline.js draws the chart from `timeline_data`'s JSON with uPlot.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_safe

from clayops import timeline as timeline_selectors

from .access import HtmxHttpRequest, viewer_required


def _ranges(current: str) -> list[dict]:
    url = reverse("dashboard:timeline")
    return [
        {"name": r.name, "label": r.label, "url": f"{url}?range={r.name}", "current": r.name == current}
        for r in timeline_selectors.RANGES.values()
    ]


@require_safe
@viewer_required
def timeline(request: HtmxHttpRequest) -> HttpResponse:
    try:
        rng = timeline_selectors.parse_range(request.GET.get("range"))
    except timeline_selectors.UnknownRange as exc:
        context: dict[str, Any] = {"error": str(exc), "ranges": _ranges(""), "data": None}
        return render(request, "dashboard/timeline.html", context, status=400)
    data = timeline_selectors.timeline(range_name=rng.name)
    context = {
        "data": data,
        "ranges": _ranges(rng.name),
        "data_url": f"{reverse('dashboard:timeline_data')}?range={rng.name}",
        "active": [b for b in data["buckets"] if b["sends"] or b["credits"] or b["dlq"]],
    }
    return render(request, "dashboard/timeline.html", context)


@require_safe
@viewer_required
def timeline_data(request: HtmxHttpRequest) -> JsonResponse:
    try:
        rng = timeline_selectors.parse_range(request.GET.get("range"))
    except timeline_selectors.UnknownRange as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    data = timeline_selectors.timeline(range_name=rng.name)
    response = JsonResponse(timeline_selectors.as_json(data))
    response["Cache-Control"] = "private, no-store"
    return response

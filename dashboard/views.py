"""Pages (GET). Each renders its whole template, or only its partial for an htmx request."""

from __future__ import annotations

import csv
from collections.abc import Iterator

from django.http import Http404, HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_safe
from django_htmx.http import HttpResponseStopPolling

from clayops import deferral, selectors
from clayops import dlq as dlq_service
from clayops.imports.normalize import neutralise

from .access import HtmxHttpRequest, viewer_required
from .forms import AuditFilterForm, DlqFilterForm, LeadFilterForm, UploadForm, clean_filters


def render_page(request: HtmxHttpRequest, template: str, partial: str, context: dict, status: int = 200):
    """The whole page, or `template#partial` when htmx asks (not when it restores history)."""
    htmx = getattr(request, "htmx", None)
    if htmx and not htmx.history_restore_request:
        template = f"{template}#{partial}"
    response = render(request, template, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


@require_safe
@viewer_required
def overview(request: HtmxHttpRequest) -> HttpResponse:
    cards = selectors.overview_cards()
    nodes = selectors.process_nodes()
    # Each card's banner: why its waiting leads wait, one line per cause (clayops.deferral).
    banners = deferral.banners([card.webhook.pk for card in cards])
    for card in cards:
        card.deferrals = banners.get(card.webhook.pk, [])  # type: ignore[attr-defined]
    version = selectors.cards_version(cards, nodes) + deferral.banners_version(banners)
    if request.htmx and request.GET.get("v") == version:
        return HttpResponse(status=204)  # nothing changed: htmx keeps what it shows
    context = {"cards": cards, "nodes": nodes, "version": version, "counted_at": selectors.counted_at()}
    return render_page(request, "dashboard/overview.html", "cards", context)


@require_safe
@viewer_required
def leads(request: HtmxHttpRequest) -> HttpResponse:
    form = LeadFilterForm(request.GET)
    size = selectors.page_size(request.GET.get("size"))
    filters = clean_filters(form)
    page = selectors.leads_page(filters=filters, cursor=request.GET.get("cursor"), size=size)
    resolve = selectors.resolve_summary(state=filters.get("state") or "", webhook_id=filters.get("webhook"))
    deferrals = deferral.explain_many(page.items)  # why / until for the waiting leads of the page
    for lead in page.items:
        lead.deferral = deferrals.get(lead.pk)
    context = {"form": form, "page": page, "resolve": resolve}
    return render_page(request, "dashboard/leads.html", "results", context)


@require_safe
@viewer_required
def lead_detail(request: HtmxHttpRequest, lead_id: int) -> HttpResponse:
    detail = selectors.lead_detail(lead_id=lead_id)
    if detail is None:
        raise Http404("No such lead")
    context = {"detail": detail, "lead": detail.lead, "deferral": deferral.explain(detail.lead)}
    return render(request, "dashboard/lead_detail.html", context)


@require_safe
@viewer_required
def imports(request: HtmxHttpRequest) -> HttpResponse:
    page = selectors.imports_page(
        cursor=request.GET.get("cursor"), size=selectors.page_size(request.GET.get("size"))
    )
    return render_page(
        request, "dashboard/imports.html", "list", imports_context(page=page, form=UploadForm())
    )


def imports_context(*, page=None, form=None, summary=None) -> dict:
    page = page or selectors.imports_page()
    running = any(imp.state in ("pending", "running") for imp in page.items)
    return {"page": page, "form": form or UploadForm(), "summary": summary, "running": running}


@require_safe
@viewer_required
def import_detail(request: HtmxHttpRequest, import_id: int) -> HttpResponse:
    """The import's page; for htmx its status partial (polled), with 286 once the import is finished."""
    summary = selectors.import_summary(import_id=import_id)
    if summary is None:
        raise Http404("No such import")
    response = render_page(request, "dashboard/import_detail.html", "status", {"summary": summary})
    if request.htmx and summary.finished:
        stop = HttpResponseStopPolling(response.content)  # 286: htmx swaps this, then stops polling
        patch_vary_headers(stop, ["HX-Request"])
        return stop
    return response


class _Echo:
    """csv.writer's file: each row written is returned, for a streamed response."""

    def write(self, value: str) -> str:
        return value


@require_safe
@viewer_required
def import_errors_csv(request: HtmxHttpRequest, import_id: int) -> StreamingHttpResponse:
    """Every invalid row the import stored, as CSV (line, reason, row as read), streamed; every cell
    neutralised against spreadsheet formula injection."""
    if not selectors.import_exists(import_id):
        raise Http404("No such import")
    writer = csv.writer(_Echo())

    def rows() -> Iterator[str]:
        yield writer.writerow(["line", "reason", "row_as_read"])
        for line, error, raw in selectors.import_row_errors(import_id):
            yield writer.writerow([line, neutralise(error), neutralise(raw)])

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="import-{import_id}-invalid-rows.csv"'
    return response


def dlq_context(data, *, message: str = "") -> dict:
    form = DlqFilterForm(data)
    filters = clean_filters(form)
    page = selectors.dlq_page(
        filters=filters, cursor=data.get("cursor"), size=selectors.page_size(data.get("size"))
    )
    kept = [
        (name, value.isoformat() if hasattr(value, "isoformat") else str(value))
        for name, value in filters.items()
    ]
    query = QueryDict(mutable=True)
    for name, value in kept:
        query[name] = value
    # Entries whose lead waits again (a retry that was deferred): why, and until when.
    waiting = [e.lead_id for e in page.items if e.lead.state in deferral.WAITING_STATES]
    deferrals = deferral.explain_lead_ids(waiting)
    for entry in page.items:
        entry.lead_deferral = deferrals.get(entry.lead_id)
    return {
        "query": query,
        "form": form,
        "filters": filters,
        "filter_items": kept,
        "page": page,
        "groups": selectors.dlq_groups(filters=filters),
        "state_counts": selectors.dlq_state_counts(),
        "message": message,
    }


@require_safe
@viewer_required
def dlq(request: HtmxHttpRequest) -> HttpResponse:
    return render_page(request, "dashboard/dlq.html", "results", dlq_context(request.GET))


@require_safe
@viewer_required
def dlq_entry(request: HtmxHttpRequest, entry_id: int) -> HttpResponse:
    detail = selectors.dlq_entry(entry_id=entry_id)
    if detail is None:
        raise Http404("No such DLQ entry")
    context = {"detail": detail, "entry": detail.entry, "deferral": deferral.explain(detail.lead)}
    return render(request, "dashboard/dlq_entry.html", context)


@require_safe
@viewer_required
def dlq_drain_preview(request: HtmxHttpRequest) -> HttpResponse:
    """The confirmation before a drain: how many, how fast, what it costs. Acting is a POST."""
    form = DlqFilterForm(request.GET)
    filters = clean_filters(form)
    webhook_id, error_class = filters.get("webhook"), filters.get("error_class")
    preview = dlq_service.drain_preview(webhook_id=webhook_id, error_class=error_class)
    # How long it really takes: the drain rate, or a workspace's rate limit when that is slower.
    estimate = deferral.dlq_drain_estimate(
        webhook_id=webhook_id, error_class=error_class, drain_rate=dlq_service.drain_rate()
    )
    context = {
        "form": form,
        "preview": preview,
        "estimate": estimate,
        "webhook_id": webhook_id,
        "error_class": error_class,
    }
    context["webhook"] = next((w for w in selectors.webhook_choices() if w.pk == webhook_id), None)
    return render_page(request, "dashboard/dlq_drain.html", "confirm", context)


@require_safe
@viewer_required
def audit(request: HtmxHttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET)
    size = selectors.page_size(request.GET.get("size"))
    page = selectors.audit_page(filters=clean_filters(form), cursor=request.GET.get("cursor"), size=size)
    return render_page(request, "dashboard/audit.html", "results", {"form": form, "page": page})


@require_safe
@viewer_required
def alerts(request: HtmxHttpRequest) -> HttpResponse:
    """Open alerts first (newest first), then the last resolved ones."""
    from django.utils import timezone

    from clayops.models import Alert

    rows = Alert.objects.select_related("acknowledged_by")
    context = {
        "open": list(rows.filter(state=Alert.State.OPEN)),
        "history": list(rows.filter(state=Alert.State.RESOLVED)[:100]),
        "now": timezone.now(),
        "mute_choices": [(60, "1 hour"), (240, "4 hours"), (1440, "1 day"), (0, "unmute")],
    }
    return render(request, "dashboard/alerts.html", context)

"""An import's report and the operator's actions on it.

Pages (GET, viewers): the duplicates fragment (`/imports/<id>/report`, the import page's duplicates
list, a page at a time) and the duplicates CSV. Actions (POST, CSRF, operators): cancel the import,
retry or discard its leads' DLQ entries as a group. Each action calls one service of
clayops.imports.manage (which writes the AuditEntry) and sends the operator back to the import's
page with a message: a redirect, or for htmx an HX-Redirect. Cancelling an import that is no longer
pending or running answers 409 with the reason (and, for htmx, the same redirect to show it).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator

from django.contrib import messages
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST, require_safe

from clayops import counts, selectors
from clayops.imports import manage, report
from clayops.imports.normalize import neutralise

from .access import HtmxHttpRequest, operator_required, viewer_required


def _cell(value) -> object:
    """A CSV cell: text neutralised against spreadsheet formulas, numbers and blanks as they are."""
    if value is None:
        return ""
    return neutralise(value) if isinstance(value, str) else value


class _Echo:
    """csv.writer's file: each row written is returned, for a streamed response."""

    def write(self, value: str) -> str:
        return value


@require_safe
@viewer_required
def import_report(request: HtmxHttpRequest, import_id: int) -> HttpResponse:
    """The import page's duplicates section, one page (`after`: the last line of the previous page),
    for htmx's pager; without JavaScript the pager links go to the import page (`?dup_after=`)."""
    found = report.import_report(import_id, after=request.GET.get("after"))
    if found is None:
        raise Http404("No such import")
    return render(request, "dashboard/import_detail.html#duplicates", {"report": found})


@require_safe
@viewer_required
def import_duplicates_csv(request: HtmxHttpRequest, import_id: int) -> StreamingHttpResponse:
    """Every duplicate row the import recorded, with the lead it duplicates, as CSV (streamed); every
    text cell neutralised against spreadsheet formula injection."""
    if not selectors.import_exists(import_id):
        raise Http404("No such import")
    writer = csv.writer(_Echo())

    def lead_url(lead_id: int | None) -> str:
        return request.build_absolute_uri(reverse("dashboard:lead_detail", args=[lead_id])) if lead_id else ""

    def rows() -> Iterator[str]:
        yield writer.writerow(
            [
                "line",
                "email",
                "domain",
                "duplicate_of_lead",
                "lead_email",
                "lead_domain",
                "lead_state",
                "lead_import",
                "lead_import_file",
                "lead_line",
                "lead_url",
            ]
        )
        for row in report.iter_duplicates(import_id):
            original = row["original_id"]
            yield writer.writerow(
                [
                    _cell(row["line"]),
                    _cell(row["email"]),
                    _cell(row["domain"]),
                    _cell(original),
                    _cell(row["original__email"]),
                    _cell(row["original__domain"]),
                    _cell(row["original__state"]),
                    _cell(row["original__lead_import_id"]),
                    _cell(row["original__lead_import__filename"]),
                    _cell(row["original__line"]),
                    lead_url(original),
                ]
            )

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="import-{import_id}-duplicates.csv"'
    return response


def _back(request: HtmxHttpRequest, import_id: int, status: int = 200) -> HttpResponse:
    """To the import's page (where the message shows): HX-Redirect for htmx, else a redirect (or, for a
    refused action, the status with a link)."""
    url = reverse("dashboard:import_detail", args=[import_id])
    if request.htmx:
        response = HttpResponse(status=status)
        response["HX-Redirect"] = url
        return response
    if status >= 400:  # the import's page, with the message saying why, under the error status
        summary = selectors.import_summary(import_id=import_id)
        return render(request, "dashboard/import_detail.html", {"summary": summary}, status=status)
    return redirect(url)


@require_POST
@operator_required
def import_cancel(request: HtmxHttpRequest, import_id: int) -> HttpResponse:
    result = manage.cancel_import(import_id, by=request.user)
    if result.state is None:
        raise Http404("No such import")
    if result.cancelled:
        messages.success(request, result.message)
        return _back(request, import_id)
    messages.error(request, result.message)
    return _back(request, import_id, status=409)


def _group_message(verb: str, result: manage.GroupResult) -> str:
    if not result.asked:
        return "No lead of this import is in the DLQ: nothing to do."
    skipped = result.asked - result.done
    note = f" ({skipped} had left the DLQ meanwhile)" if skipped > 0 else ""
    return f"{result.done} {verb}{note}."


@require_POST
@operator_required
def import_dlq_retry(request: HtmxHttpRequest, import_id: int) -> HttpResponse:
    """Retry the import's open DLQ entries through the DLQ's retry service (budget and breaker apply)."""
    if not selectors.import_exists(import_id):
        raise Http404("No such import")
    limit = None
    if request.POST.get("scope") == "budget":  # the forecast's "within today's budget"
        limit = manage.retry_forecast(import_id)["within_budget"]
    if limit == 0 and manage.open_dlq_count(import_id):
        messages.success(request, "None of the failed leads fits today's budget: nothing retried.")
        return _back(request, import_id)
    result = manage.retry_import_dlq(import_id, by=request.user, limit=limit)
    counts.refresh_dlq()
    messages.success(request, _group_message("retried", result))
    return _back(request, import_id)


@require_POST
@operator_required
def import_dlq_discard(request: HtmxHttpRequest, import_id: int) -> HttpResponse:
    """Discard the import's open DLQ entries (their leads end as discarded)."""
    if not selectors.import_exists(import_id):
        raise Http404("No such import")
    result = manage.discard_import_dlq(import_id, by=request.user)
    counts.refresh_dlq()
    messages.success(request, _group_message("discarded", result))
    return _back(request, import_id)

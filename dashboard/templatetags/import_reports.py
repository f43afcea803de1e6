"""The import page's report (duplicates with the lead each one duplicates, the leads' DLQ entries):
`{% import_report imp as report %}` reads it for the page the import_detail view renders, so the
view needs no new context. `?dup_after=<line>` pages the duplicates without JavaScript."""

from __future__ import annotations

from django import template

from clayops.imports import report as reports

register = template.Library()


@register.simple_tag(takes_context=True)
def import_report(context, lead_import) -> reports.ImportReport | None:
    request = context.get("request")
    after = request.GET.get("dup_after") if request is not None else None
    return reports.import_report(lead_import.pk, after=after)

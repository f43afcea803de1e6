"""Reads for an import's report page: its duplicate rows (with the lead each one duplicates) and its
leads' open DLQ entries. Reads only: nothing here writes a row."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count

from .. import dlq
from ..models import DeadLetter, ImportDuplicate, LeadImport
from .run import MAX_STORED_DUPLICATES

DUPLICATES_PAGE_SIZE = 50
_DUPLICATE_FIELDS = (
    "line",
    "email",
    "domain",
    "original_id",
    "original__email",
    "original__domain",
    "original__line",
    "original__state",
    "original__lead_import_id",
    "original__lead_import__filename",
)


@dataclass
class DuplicatesPage:
    items: list[dict[str, Any]]
    next_after: int | None  # the last line shown, when more follow
    is_first: bool


@dataclass
class ImportReport:
    lead_import: LeadImport
    duplicates: DuplicatesPage
    dlq_open: int
    dlq_by_state: dict[str, int] = field(default_factory=dict)
    dlq_forecast: dict | None = None  # dlq.forecast of the open entries, before a group retry
    max_stored_duplicates: int = MAX_STORED_DUPLICATES

    @property
    def stored_duplicates_capped(self) -> bool:
        return self.lead_import.duplicate_rows > self.max_stored_duplicates


def _int(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number < 2**31 else None  # a line number (an integer column)


def duplicates_page(import_id: int, *, after: Any = None, size: int = DUPLICATES_PAGE_SIZE) -> DuplicatesPage:
    """The import's duplicate rows in file order, `size` at a time after line `after` (keyset)."""
    qs = ImportDuplicate.objects.filter(lead_import_id=import_id)
    start = _int(after)
    if start is not None:
        qs = qs.filter(line__gt=start)
    rows = list(qs.order_by("line", "pk").values(*_DUPLICATE_FIELDS)[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    for row in rows:
        row["same_import"] = row["original__lead_import_id"] == import_id
    return DuplicatesPage(rows, rows[-1]["line"] if more and rows else None, start is None)


def iter_duplicates(import_id: int) -> Iterator[dict[str, Any]]:
    """Every duplicate row the import stored, in file order, streamed."""
    qs = ImportDuplicate.objects.filter(lead_import_id=import_id).order_by("line", "pk")
    return qs.values(*_DUPLICATE_FIELDS).iterator(chunk_size=2000)


def import_report(import_id: int, *, after: Any = None) -> ImportReport | None:
    imp = LeadImport.objects.select_related("cancelled_by").filter(pk=import_id).first()
    if imp is None:
        return None
    open_entries = DeadLetter.objects.filter(lead__lead_import_id=import_id, state__in=dlq.OPEN_STATES)
    by_state = {
        row["state"]: row["n"] for row in open_entries.order_by().values("state").annotate(n=Count("id"))
    }
    return ImportReport(
        lead_import=imp,
        duplicates=duplicates_page(import_id, after=after),
        dlq_open=sum(by_state.values()),
        dlq_by_state=by_state,
        dlq_forecast=dlq.forecast(open_entries) if by_state else None,  # before a group retry
    )

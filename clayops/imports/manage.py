"""Operators' actions on one import: cancel it; retry or discard its leads' DLQ entries as a group.

Cancel
    `cancel_import` moves a pending or running import to `cancelled` with one conditional UPDATE
    (WHERE state IN (pending, running)): of two cancels at once, or a cancel racing the import's last
    batch, exactly one UPDATE wins. The job checks between batches: every batch starts with the fence
    UPDATE ... WHERE state = running AND heartbeat_at = <its claim> (clayops.imports.run), which a
    cancelled import fails, so the job stops and the batch it was writing is rolled back. A batch that
    committed before the cancel is seen by the cancel's lead UPDATE (same transaction, after the
    import's row was updated), so nothing slips between the two.

    The rule for the leads the import already created: every lead of the import that Clay has not
    taken and that no submission job holds is discarded (a known final state), namely those in
    UNSENT_STATES: queued, deferred, retry_wait and the offline states served_cache / served_fallback.
    None of them holds credits. Leads already claimed or sent (submitting, uncertain, accepted,
    overdue, delivered, enriched) are left to finish: discarding them could lose track of a row Clay
    took or of credits held for it. Dead leads keep their DLQ entries (retry or discard them as a
    group below). Each move is a conditional UPDATE on the lead's state, so a submission job that
    claimed a lead first keeps it, and a lead discarded first is skipped by the job.

    Cancelling a finished (done, failed or already cancelled) import changes nothing and says why.

Group retry and discard
    `retry_import_dlq` and `discard_import_dlq` take the import's open DLQ entries (pending or
    exhausted) and hand them to clayops.dlq's own services, `retry_entries` and `discard_entries`:
    a retried lead only goes back to `queued`, and its submission passes the pauses, breaker, budget,
    row cap and rate limit like any other (invariant 5). Each service writes its own audit entry;
    the group action adds one naming the import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from .. import dlq
from ..models import AuditEntry, DeadLetter, Lead, LeadImport

CANCELLABLE = (LeadImport.State.PENDING, LeadImport.State.RUNNING)
# Leads of a cancelled import that are discarded: never taken by Clay, held by no job, no credits held.
UNSENT_STATES = (
    Lead.State.QUEUED,
    Lead.State.DEFERRED,
    Lead.State.RETRY_WAIT,
    Lead.State.SERVED_CACHE,
    Lead.State.SERVED_FALLBACK,
)
# Entries handed to the DLQ service per call (keeps `pk IN (...)` well under SQLite's variable limit).
DLQ_CHUNK = 500


@dataclass(frozen=True)
class CancelResult:
    cancelled: bool  # this call cancelled the import
    state: str | None  # the import's state after the call; None: no such import
    discarded: int = 0  # leads discarded by this call

    @property
    def message(self) -> str:
        if self.cancelled:
            n = self.discarded
            return f"Import cancelled: {n} unsent lead{'' if n == 1 else 's'} discarded."
        if self.state is None:
            return "No such import."
        if self.state == LeadImport.State.CANCELLED:
            return "This import was cancelled already: nothing to do."
        return f"This import is {self.state}: only a pending or running import can be cancelled."


def cancel_import(import_id: int, *, by: Any = None) -> CancelResult:
    """Cancel a pending or running import and discard its unsent leads (see the module docstring)."""
    now = timezone.now()
    with transaction.atomic():
        won = LeadImport.objects.filter(pk=import_id, state__in=CANCELLABLE).update(
            state=LeadImport.State.CANCELLED, cancelled_at=now, cancelled_by=by, finished_at=now
        )
        if not won:
            state = LeadImport.objects.filter(pk=import_id).values_list("state", flat=True).first()
            return CancelResult(cancelled=False, state=state)
        discarded = Lead.objects.filter(lead_import_id=import_id, state__in=UNSENT_STATES).update(
            state=Lead.State.DISCARDED, state_changed_at=now, next_attempt_at=None
        )
        AuditEntry.objects.create(
            user=by,
            action="import_cancel",
            target=f"import:{import_id}",
            count=discarded,
            detail={"discarded_leads": discarded, "discarded_states": [str(s) for s in UNSENT_STATES]},
        )
    return CancelResult(cancelled=True, state=LeadImport.State.CANCELLED, discarded=discarded)


def dlq_entry_ids(import_id: int) -> list[int]:
    """The import's open DLQ entries (pending or exhausted: those an operator may retry or discard)."""
    return list(_open_entries(import_id).order_by("pk").values_list("pk", flat=True))


def _open_entries(import_id: int):
    return DeadLetter.objects.filter(lead__lead_import_id=import_id, state__in=dlq.OPEN_STATES)


def open_dlq_count(import_id: int) -> int:
    return _open_entries(import_id).count()


def retry_forecast(import_id: int) -> dict:
    """dlq.forecast of the import's open DLQ entries: what a group retry would cost and park."""
    return dlq.forecast(_open_entries(import_id))


@dataclass(frozen=True)
class GroupResult:
    asked: int  # open entries found when the action ran
    done: int  # entries the DLQ service moved (fewer if some left the DLQ meanwhile)


def retry_import_dlq(import_id: int, *, by: Any = None, limit: int | None = None) -> GroupResult:
    """Retry every open DLQ entry of the import's leads through dlq.retry_entries (budget and breaker
    apply to each resubmission); with `limit`, only the oldest `limit` (the forecast's "within today's
    budget")."""
    return _group(import_id, by=by, action="import_dlq_retry", service=dlq.retry_entries, limit=limit)


def discard_import_dlq(import_id: int, *, by: Any = None) -> GroupResult:
    """Discard every open DLQ entry of the import's leads through dlq.discard_entries."""
    return _group(import_id, by=by, action="import_dlq_discard", service=dlq.discard_entries)


def _group(import_id: int, *, by: Any, action: str, service, limit: int | None = None) -> GroupResult:
    ids = dlq_entry_ids(import_id)
    if limit is not None:
        ids = ids[: max(0, limit)]
    done = 0
    for start in range(0, len(ids), DLQ_CHUNK):
        chunk: Sequence[int] = ids[start : start + DLQ_CHUNK]
        done += service(entry_ids=chunk, by=by)
    if ids:
        AuditEntry.objects.create(
            user=by,
            action=action,
            target=f"import:{import_id}",
            count=done,
            detail={"entries": len(ids), "entry_ids": ids[:100]},
        )
    return GroupResult(asked=len(ids), done=done)

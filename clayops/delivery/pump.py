"""The submission job, and the pump that paces a rate-limited workspace without holding a worker.

A job's leads of a workspace without a rate limit go through the guards and out at once. Those of a
paced workspace go to its lists (clayops.pacequeue: urgent first, then imports in turn) and the job
runs the workspace's pump, if no other runs it: the pump takes the tokens there are (all of them,
once at least ratelimit.pace_goal() are there), sends that many requests through the guards with
the tokens prepaid, gives back what it could not pay for, and asks to run again when the next
tokens will be there. No worker ever sleeps waiting for one workspace's tokens while another
workspace could send.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from redis.exceptions import RedisError

from .. import pacequeue, ratelimit
from ..enqueue import enqueue_leads
from ..models import Lead, Workspace
from .guards import _add, deliver_group
from .routing import Chunk, plan_chunks
from .sender import Prepaid, pace_shape
from .transitions import S

SLICE_SECONDS = 1.0  # a pump that still has tokens after this goes to the back of the queue

log = logging.getLogger("clayops.delivery")


def hand_over(lead_ids: Iterable[int], *, urgent: bool = False) -> int:
    """Queue these leads for sending (an import's batch): a paced workspace's go straight to its
    lists, its pump due now; the rest as submission jobs (on the urgent queue if `urgent`).

    No job hop for the paced ones: 25 imports queued one after the other would otherwise be handed
    to their pumps one job of CLAYOPS_BATCH_SIZE at a time, behind the pumps on the workers' queues,
    and the last workspace would start seconds after the first. After the surrounding transaction
    commits. Returns how many went to the pumps; if Redis refuses them they stay queued in the
    database and the orphan reaper gives them a job."""
    lists, direct = _split_paced(list(lead_ids), size=max(1, settings.CLAYOPS_BATCH_SIZE))

    def push() -> None:
        for workspace_id, batches in lists.items():
            try:
                pacequeue.push(workspace_id, batches)
                pacequeue.schedule(workspace_id, 0)
            except RedisError:
                log.warning(
                    "could not hand leads to the pump of workspace %s; the orphan reaper will", workspace_id
                )

    if lists:
        transaction.on_commit(push)
    if direct:
        enqueue_leads(direct, urgent=urgent)
    return sum(len(ids) for batches in lists.values() for items in batches.values() for ids in items)


def submit_batch(lead_ids: list[int]) -> dict[str, int]:
    """The job body: deliver the queued leads among `lead_ids`; return counts by outcome."""
    paced, direct = _split_paced(lead_ids)
    totals = deliver_now(direct)
    for workspace_id, batches in paced.items():
        pacequeue.push(workspace_id, batches)
        _add(totals, {"paced": sum(len(ids) for lists in batches.values() for ids in lists)})
        _add(totals, run_pump(workspace_id))
    return totals


def deliver_now(lead_ids: list[int], prepaid: Prepaid | None = None) -> dict[str, int]:
    """Through the guards and out, one group per webhook."""
    groups: dict[int, list[Chunk]] = {}
    for chunk in plan_chunks(lead_ids):
        groups.setdefault(chunk.webhook.pk, []).append(chunk)
    totals: dict[str, int] = {}
    for chunks in groups.values():
        _add(totals, deliver_group(chunks, prepaid))
    return totals


def _split_paced(
    lead_ids: list[int], *, size: int = 0
) -> tuple[dict[int, dict[str, list[list[int]]]], list[int]]:
    """The queued leads of rate-limited workspaces, by workspace and list ("u", or the import id),
    in batches of `size` (0: one batch per list); and the rest (no rate limit, or no webhook: the
    guards defer those)."""
    info = {
        pk: (ws, rate, imp, urgent)
        for pk, ws, rate, imp, urgent in Lead.objects.filter(pk__in=lead_ids, state=S.QUEUED).values_list(
            "pk",
            "webhook__workspace_id",
            "webhook__workspace__rate_limit",
            "lead_import_id",
            "lead_import__urgent",
        )
    }
    paced: dict[int, dict[str, list[int]]] = {}
    direct: list[int] = []
    for pk in lead_ids:  # in the job's order (an import's: file order)
        if pk not in info:
            continue
        ws, rate, imp, urgent = info[pk]
        if ws is None or not rate or rate <= 0:
            direct.append(pk)
            continue
        kind = pacequeue.URGENT if urgent else str(imp or 0)
        paced.setdefault(ws, {}).setdefault(kind, []).append(pk)
    size = size or len(lead_ids) or 1  # one item per list unless asked for batches of `size`
    batched = {
        ws: {kind: [ids[i : i + size] for i in range(0, len(ids), size)] for kind, ids in lists.items()}
        for ws, lists in paced.items()
    }
    return batched, direct


def run_pump(workspace_id: int) -> dict[str, int]:
    """Send what the workspace's tokens allow now, if no other pump of it runs; return counts."""
    token = pacequeue.lock(workspace_id)
    if token is None:
        return {}  # the running pump looks at the lists again before it lets go
    try:
        pacequeue.restore(workspace_id)  # what a pump that died had taken goes first
        return _pump(workspace_id)
    finally:
        pacequeue.unlock(workspace_id, token)
        # Leads handed over while this pump held the lock, after it had found the lists empty:
        # their job could not run the pump, so this one sees that it runs again.
        if workspace_id in pacequeue.active_workspaces() and not pacequeue.scheduled(workspace_id):
            pacequeue.schedule(workspace_id, 0)


def _pump(workspace_id: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    workspace = Workspace.objects.filter(pk=workspace_id).first()
    rate = workspace.rate_limit if workspace is not None else 0
    burst, window = pace_shape(workspace) if workspace is not None else (1, 1.0)
    goal = ratelimit.pace_goal(rate=rate, burst=burst, window=window)
    started = time.monotonic()
    while time.monotonic() - started < SLICE_SECONDS:
        item = pacequeue.pop(workspace_id)
        if item is None:
            return counts
        source, ids = item
        if workspace is None or rate <= 0:  # deleted, or its limit lifted: no pacing any more
            _add(counts, deliver_now(ids))
            pacequeue.done(workspace_id)
            continue
        # A look only: the Sender takes the tokens just before the requests go out. With more
        # waiting than this batch, wait for the goal and fill the grant from the next batches.
        want = burst if pacequeue.has_more(workspace_id) else len(ids)
        granted, wait = ratelimit.take_up_to(
            workspace_id, rate=rate, burst=burst, want=want, goal=goal, window=window, dry=True
        )
        if granted == 0:
            pacequeue.give_back(workspace_id, source, ids)
            pacequeue.done(workspace_id)
            pacequeue.schedule(workspace_id, wait)
            ratelimit.record_wait(workspace_id, wait)
            return counts
        _add(counts, _send_paid(workspace_id, _fill(workspace_id, source, ids, granted), burst))
        pacequeue.done(workspace_id)
    pacequeue.schedule(workspace_id, 0)  # tokens left, but others go first
    return counts


def _fill(workspace_id: int, source: str, ids: list[int], granted: int) -> list[int]:
    """`granted` lead ids: this batch's, then the next batches' in turn; what is over goes back to
    the head of the list it came from (one request per lead: in batch mode a grant may be partly
    unused, and the unused tokens go back)."""
    chosen = list(ids)
    while len(chosen) < granted:
        item = pacequeue.pop(workspace_id)
        if item is None:
            break
        source, more = item
        chosen += more
    if len(chosen) > granted:
        pacequeue.give_back(workspace_id, source, chosen[granted:])
    return chosen[:granted]


def _send_paid(workspace_id: int, ids: list[int], burst: int) -> dict[str, int]:
    """Send these leads' requests, the Sender taking one of the free tokens per request just before
    it launches; tokens it took and did not use go back to the bucket."""
    counts: dict[str, int] = {}
    groups: dict[int, list[Chunk]] = {}
    for chunk in plan_chunks(ids):  # queued leads only; a lead with no usable webhook is deferred here
        groups.setdefault(chunk.webhook.pk, []).append(chunk)
    for group in groups.values():
        prepaid = Prepaid(allowance=len(group))
        try:
            _add(counts, deliver_group(group, prepaid))
        finally:
            ratelimit.refund(workspace_id, prepaid.left, burst=burst)
    return counts

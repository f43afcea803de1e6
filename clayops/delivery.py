"""The path a lead travels: claim, guards (breaker, budget, rate), send, record, classify."""

from __future__ import annotations

from collections.abc import Iterable

import django_rq
from django.conf import settings


def enqueue_leads(lead_ids: Iterable[int]) -> int:
    """Enqueue submission jobs for these leads in batches of CLAYOPS_BATCH_SIZE (after commit).

    Returns the number of jobs enqueued. Safe to call for leads already queued or sent: the job
    claims each lead with a conditional UPDATE and skips those not in a sendable state.
    """
    ids = list(lead_ids)
    size = settings.CLAYOPS_BATCH_SIZE
    queue = django_rq.get_queue("submit")
    jobs = 0
    for start in range(0, len(ids), size):
        queue.enqueue("clayops.jobs.submit_leads", ids[start : start + size])
        jobs += 1
    return jobs


def submit_batch(lead_ids: list[int]) -> dict:
    raise NotImplementedError("delivery pipeline lands with issue 4")


def maintenance() -> dict:
    return {}

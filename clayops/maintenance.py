"""One maintenance pass (RQ cron every CLAYOPS_TICK_SECONDS). It sits above delivery, dlq and
imports, so none of them needs to know about the others' recovery work. Safe to run concurrently:
every step claims its work with conditional UPDATEs."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from . import alerts, budget, delivery, dlq, imports, liveness, pacequeue
from .liveness import LAST_TICK_KEY  # noqa: F401 (tests and older callers name it here)


def run(*, now: datetime | None = None) -> dict[str, int]:
    now = now or timezone.now()
    counts = {
        "imports_requeued": imports.requeue_stale_imports(),
        "reservations_reaped": budget.reap_expired(now=now),
        "doubtful_sends_released": budget.release_doubtful(now=now),
        "stuck_recovered": delivery.recover_stuck(now=now),
        "uncertain_requeued": delivery.requeue_uncertain(now=now),
        "callbacks_overdue": delivery.mark_overdue(now=now),
        "retries_due": delivery.requeue_due_retries(now=now),
        "dlq_retried": dlq.retry_due(now=now),
        "offline_drained": delivery.drain_offline_step(now=now),
        "orphans_requeued": delivery.requeue_orphans(now=now),
        "pumps_restarted": pacequeue.ensure_pumps(),
        "pumps_dispatched": pacequeue.dispatch_due(),
        "alerts_evaluated": alerts.evaluate(now=now),  # last: sees what the steps above changed
    }
    liveness.record_tick()
    return counts

"""Putting work on RQ's queues. Depends only on RQ and settings, so every service may use it.

Jobs are named by their dotted path (clayops.jobs.*), never imported here: a job takes ids and
re-reads the database, and enqueueing never reaches up into the layers that run the work.
django-rq enqueues after the surrounding transaction commits (inside `atomic()` `enqueue()` returns None).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

import django_rq
from django.conf import settings
from django.db import transaction
from redis.exceptions import RedisError

log = logging.getLogger("clayops.enqueue")

# The RQ timeout of an import job (the default queue's 600 s is too short for a million rows).
IMPORT_JOB_TIMEOUT = 6 * 3600


def enqueue_leads(lead_ids: Iterable[int], *, urgent: bool = False) -> int:
    """Enqueue submission jobs for these leads in batches of CLAYOPS_BATCH_SIZE (after commit), on
    the `urgent` queue (workers serve it before `submit`) for an urgent import's leads.

    Returns the number of jobs enqueued. Safe to call for leads already queued or sent: the job
    claims each lead with a conditional UPDATE and skips those not in the queued state.
    """
    ids = list(lead_ids)
    size = settings.CLAYOPS_BATCH_SIZE
    queue = django_rq.get_queue("urgent" if urgent else "submit")
    jobs = 0
    for start in range(0, len(ids), size):
        queue.enqueue("clayops.jobs.submit_leads", ids[start : start + size])
        jobs += 1
    return jobs


def import_job_id(import_id: int) -> str:
    """The RQ job id of an import: one job per import, so a waiting one is not enqueued twice."""
    return f"clayops-import-{import_id}"


def enqueue_import(import_id: int) -> None:
    django_rq.get_queue("default").enqueue(
        "clayops.jobs.import_leads",
        import_id,
        job_id=import_job_id(import_id),
        job_timeout=IMPORT_JOB_TIMEOUT,
    )


ALERT_CHECK_KEY = "clayops:alert-check:{}"
ALERT_CHECK_COALESCE_SECONDS = 2


def alert_check(group: str) -> None:
    """Evaluate one group of alert rules (clayops.alerts.GROUPS) now, not at the next maintenance
    tick: called by the transition itself (a breaker moving, a pause, a webhook filling up, a failed
    import, a refused reservation). After commit; transitions of one group while its evaluation
    still waits in the queue (at most ALERT_CHECK_COALESCE_SECONDS) share it: it looks at the state
    once it starts, so none is missed (alerts.evaluate clears the mark as it starts). Best effort."""

    def send() -> None:
        try:
            conn = django_rq.get_connection("maintenance")
            if conn.set(ALERT_CHECK_KEY.format(group), "1", nx=True, ex=ALERT_CHECK_COALESCE_SECONDS):
                django_rq.get_queue("maintenance").enqueue(
                    "clayops.jobs.evaluate_alerts", [group], at_front=True, result_ttl=60
                )
        except RedisError:
            log.warning("could not enqueue the %s alert check; the maintenance tick will do it", group)

    transaction.on_commit(send)


def alert_check_started(groups: Iterable[str]) -> None:
    """An evaluation of these groups starts: transitions after this point must enqueue their own
    (sharing this one, they would wait for the next tick). Best effort."""
    keys = [ALERT_CHECK_KEY.format(g) for g in groups]
    if not keys:
        return
    try:
        django_rq.get_connection("maintenance").delete(*keys)
    except RedisError:
        log.warning("could not clear the pending alert checks")


def schedule_probe(webhook_id: int, *, delay_seconds: float) -> None:
    """Run clayops.jobs.probe_webhook when a breaker's cooldown ends (RQ's scheduler, which `up`
    starts with the first worker). Best effort: the maintenance tick probes as well, a little later."""
    try:
        django_rq.get_queue("maintenance").enqueue_in(
            timedelta(seconds=max(0.0, delay_seconds)), "clayops.jobs.probe_webhook", webhook_id
        )
    except RedisError:
        log.warning("could not schedule the probe of webhook %s; the maintenance tick will", webhook_id)

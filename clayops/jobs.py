"""RQ jobs, enqueued by dotted name (clayops.enqueue). Each takes ids, re-reads the database and
claims work with a conditional UPDATE, so a second run of the same job (RQ is at-least-once) is
harmless. Logic lives in the services; this is the top layer."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import connections

from . import alerts, delivery, imports, maintenance

F = TypeVar("F", bound=Callable[..., Any])


def job(func: F) -> F:
    """Django replaces a dropped or expired database connection only around HTTP requests; a
    worker's jobs get the same: before and after each job, connections that died (a PostgreSQL
    restart, a failover) or outlived CONN_MAX_AGE are closed, so the next query reconnects."""

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        _close_dead_connections()
        try:
            return func(*args, **kwargs)
        finally:
            _close_dead_connections()

    return run  # type: ignore[return-value]


def _close_dead_connections() -> None:
    # Django's close_old_connections, except inside a transaction (a test calling a job inline):
    # there the connection is the caller's and must stay open.
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()


@job
def import_leads(import_id: int) -> None:
    """Parse an uploaded CSV into leads (clayops.imports.run_import)."""
    imports.run_import(import_id)


@job
def submit_leads(lead_ids: list[int]) -> dict:
    """Submit a batch of leads to Clay through the guards (clayops.delivery.submit_batch)."""
    return delivery.submit_batch(lead_ids)


@job
def pump_workspace(workspace_id: int) -> dict:
    """A paced workspace's tokens are there again: send what they pay for (clayops.delivery.pump)."""
    return delivery.run_pump(workspace_id)


@job
def maintenance_tick() -> dict:
    """Periodic work (RQ cron): reap stale reservations and stuck leads, retry due DLQ entries,
    drain the offline queue, requeue leads whose backoff has passed (clayops.maintenance)."""
    return maintenance.run()


@job
def evaluate_alerts(groups: list[str]) -> int:
    """A transition asked for its alert rules to be evaluated now (clayops.enqueue.alert_check)."""
    return alerts.evaluate(only=groups)


@job
def probe_webhook(webhook_id: int) -> dict:
    """A breaker's cooldown ended: release the webhook's due deferred leads and retries now, so its
    half-open probe goes out at once (they still pass every guard)."""
    return delivery.resume_webhook(webhook_id)

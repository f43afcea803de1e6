"""RQ jobs. Each takes ids, re-reads the database and claims work with a conditional UPDATE,
so a second run of the same job (RQ is at-least-once) is harmless."""

from __future__ import annotations

import logging

log = logging.getLogger("clayops.jobs")


def maintenance_tick() -> dict:
    """Periodic work: reap stale reservations and stuck leads, retry due DLQ entries, drain the
    offline queue. Filled in as the services land."""
    return {}

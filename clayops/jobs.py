"""RQ jobs, enqueued by dotted name (clayops.enqueue). Each takes ids, re-reads the database and
claims work with a conditional UPDATE, so a second run of the same job (RQ is at-least-once) is
harmless. Logic lives in the services; this is the top layer."""

from __future__ import annotations

from . import delivery, imports, maintenance


def import_leads(import_id: int) -> None:
    """Parse an uploaded CSV into leads (clayops.imports.run_import)."""
    imports.run_import(import_id)


def submit_leads(lead_ids: list[int]) -> dict:
    """Submit a batch of leads to Clay through the guards (clayops.delivery.submit_batch)."""
    return delivery.submit_batch(lead_ids)


def maintenance_tick() -> dict:
    """Periodic work (RQ cron): reap stale reservations and stuck leads, retry due DLQ entries,
    drain the offline queue, requeue leads whose backoff has passed (clayops.maintenance)."""
    return maintenance.run()


def probe_webhook(webhook_id: int) -> dict:
    """A breaker's cooldown ended: release the webhook's due deferred leads and retries now, so its
    half-open probe goes out at once (they still pass every guard)."""
    return delivery.resume_webhook(webhook_id)

"""Is the background machinery alive? The maintenance tick records itself in Redis; RQ registers its
workers there. /readyz, the metrics and the no-tick / no-worker alert rules read these.

A missing tick cannot report its own absence, so the alert rules that use this module are evaluated
by `manage.py cron` (clayops.workers.RidingCronScheduler) as well as by the tick."""

from __future__ import annotations

import time

from redis import Redis
from rq import Worker

from .ratelimit import redis_connection

LAST_TICK_KEY = "clayops:last-tick"  # epoch seconds of the last finished tick
WATCH_STARTED_KEY = "clayops:liveness:watch-started"  # first look, when no tick was ever recorded
NO_WORKER_SINCE_KEY = "clayops:liveness:no-worker-since"
KEEP_SECONDS = 24 * 3600


def record_tick(connection: Redis | None = None) -> None:
    (connection or redis_connection()).set(LAST_TICK_KEY, f"{time.time():.3f}", ex=KEEP_SECONDS)


def last_tick(connection: Redis | None = None) -> float | None:
    value = (connection or redis_connection()).get(LAST_TICK_KEY)
    return float(value) if value is not None else None


def seconds_without_tick(connection: Redis | None = None, *, now: float | None = None) -> float:
    """Seconds since the last tick finished; with none on record, since this was first asked."""
    conn = connection or redis_connection()
    now = time.time() if now is None else now
    tick = last_tick(conn)
    if tick is None:
        conn.set(WATCH_STARTED_KEY, f"{now:.3f}", nx=True, ex=KEEP_SECONDS)
        tick = float(conn.get(WATCH_STARTED_KEY) or now)
    return max(0.0, now - tick)


def live_workers(connection: Redis | None = None) -> int:
    """RQ workers registered and not expired (a SIGKILLed worker's entry lapses after its TTL)."""
    return len(Worker.all(connection=connection or redis_connection()))


def seconds_without_worker(connection: Redis | None = None, *, now: float | None = None) -> float:
    """0 while a worker is alive; otherwise seconds since this was first asked and found none."""
    conn = connection or redis_connection()
    now = time.time() if now is None else now
    if live_workers(conn):
        conn.delete(NO_WORKER_SINCE_KEY)
        return 0.0
    conn.set(NO_WORKER_SINCE_KEY, f"{now:.3f}", nx=True, ex=KEEP_SECONDS)
    return max(0.0, now - float(conn.get(NO_WORKER_SINCE_KEY) or now))

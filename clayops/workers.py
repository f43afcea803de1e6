"""RQ worker and cron scheduler that ride out a Redis outage instead of quitting.

RQ's own work loop retries a lost connection only while it waits for a job; a ConnectionError
anywhere else (a heartbeat, the job's bookkeeping after it ran, the suspension check, the
maintenance tasks) ends the process with "found an unhandled exception, quitting". Under `up`
the supervisor would restart it, but a deployment without one (systemd without Restart=, a
Procfile runner) would be left with no workers. These classes wait for Redis with backoff,
register themselves again when it comes back empty (a restarted Redis without persistence), and
go on.

Nothing is lost meanwhile: a lead's state lives in the database. A job whose bookkeeping failed
half-way is not run again by the worker; a lead it left claimed is taken back by the maintenance
tick's reapers (see docs/ARCHITECTURE.md, "Recovery").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis.exceptions
from django_rq.cron import DjangoCronScheduler
from rq import worker_registration
from rq.cron import CronJob
from rq.exceptions import StopRequested
from rq.worker import SimpleWorker, WorkerStatus

log = logging.getLogger("clayops.workers")

REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
FIRST_WAIT = 0.5
LONGEST_WAIT = 10.0
WATCH_SECONDS = 30.0

T = TypeVar("T")


def wait_for_redis(connection, who: str, stopping: Callable[[], bool], sleep=time.sleep) -> bool:
    """Ping until Redis answers, backing off from FIRST_WAIT to LONGEST_WAIT seconds.
    False if a stop was requested meanwhile."""
    delay = FIRST_WAIT
    started = time.monotonic()
    while not stopping():
        try:
            connection.ping()
        except REDIS_DOWN as exc:
            log.warning("%s: Redis unreachable (%s); retrying in %.1f s", who, exc, delay)
            sleep(delay)
            delay = min(delay * 2, LONGEST_WAIT)
            continue
        log.warning("%s: Redis is back after %.1f s", who, time.monotonic() - started)
        return True
    return False


class RidingWorker(SimpleWorker):
    """A SimpleWorker (jobs run in the worker process) that survives Redis going away.

    Beside its work loop a thread enqueues the paced workspaces' pumps as they fall due
    (clayops.pacequeue.dispatch_due, every DISPATCH_SECONDS): RQ's scheduler keeps whole seconds.
    Another recounts the dashboard's totals when they are due (clayops.counts.run_refresher)."""

    def work(self, *args, **kwargs):
        from clayops import counts

        stop = threading.Event()
        threads = [
            threading.Thread(target=self._dispatch_pumps, args=(stop,), name="clayops-pace", daemon=True),
            threading.Thread(
                target=counts.run_refresher,
                args=(stop,),
                kwargs={"who": self.name},
                name="clayops-counts",
                daemon=True,
            ),
        ]
        for thread in threads:
            thread.start()
        try:
            return super().work(*args, **kwargs)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=2)

    def _dispatch_pumps(self, stop: threading.Event) -> None:
        from clayops import pacequeue

        while not stop.wait(pacequeue.DISPATCH_SECONDS):
            try:
                pacequeue.dispatch_due()
            except REDIS_DOWN:
                stop.wait(1.0)  # the work loop rides the outage out and says so
            except Exception:  # the dispatcher must never stop; the maintenance tick dispatches too
                log.exception("Worker %s: dispatching the due pumps failed", self.name)
                stop.wait(1.0)

    def _ride(self, call: Callable[[], T], *, again: bool) -> T | None:
        """Run call; on a lost Redis wait for it to return, then run call again (again=True: the call
        is idempotent) or give up on it (again=False)."""
        while True:
            try:
                return call()
            except REDIS_DOWN as exc:
                log.warning("Worker %s: lost Redis (%s)", self.name, exc)
                self._recover()
                if not again:
                    return None

    def _recover(self) -> None:
        while True:
            if not wait_for_redis(self.connection, f"Worker {self.name}", lambda: self._stop_requested):
                raise StopRequested()
            try:
                self._register_again()
            except REDIS_DOWN as exc:  # gone again before we were done: wait again, do not quit
                log.warning("Worker %s: lost Redis again (%s)", self.name, exc)
                continue
            return

    def _register_again(self) -> None:
        # A Redis restarted without its data has forgotten this worker: register it again so
        # `rq info`, /readyz and the dashboard see it.
        if not self.connection.exists(self.key):
            with self.connection.pipeline() as pipeline:
                pipeline.hset(self.key, mapping=self.serialize())
                worker_registration.register(self, pipeline)
                pipeline.expire(self.key, self.worker_ttl + 60)
                pipeline.execute()
            log.warning("Worker %s: registered again", self.name)
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None and (scheduler._process is None or not scheduler._process.is_alive()):
            # The scheduler process beside this worker died with the connection; RQ would only
            # restart it at the next maintenance run (10 minutes).
            scheduler.acquire_locks(auto_start=True)

    def check_for_suspension(self, burst: bool) -> None:
        self._ride(lambda: super(RidingWorker, self).check_for_suspension(burst), again=True)

    def run_maintenance_tasks(self) -> None:
        self._ride(lambda: super(RidingWorker, self).run_maintenance_tasks(), again=False)

    def heartbeat(self, timeout=None, pipeline=None) -> None:
        if pipeline is not None:  # queued on a pipeline: no round trip here
            return super().heartbeat(timeout, pipeline)
        self._ride(lambda: super(RidingWorker, self).heartbeat(timeout), again=True)
        # A Redis flushed (or its keys evicted) without dropping the connection forgot this worker
        # too, and the heartbeat alone does not bring it back (no_worker, /readyz, `rq info`).
        self._ride(self._registered, again=True)

    def _registered(self) -> None:
        if not self.connection.sismember(self.redis_workers_keys, self.key):
            self.connection.delete(self.key)  # the heartbeat's partial hash: write it whole
            self._register_again()

    def execute_job(self, job, queue) -> None:
        # Not run again: the job may have sent already. Its lead stays claimed in the database
        # until the reapers take it back.
        self._ride(lambda: super(RidingWorker, self).execute_job(job, queue), again=False)
        self._state = WorkerStatus.IDLE

    def _shutdown(self) -> None:
        try:
            super()._shutdown()
        except REDIS_DOWN:
            # The warm-shutdown bookkeeping needs Redis; stopping does not.
            self._stop_requested = True
            if self.get_state() != WorkerStatus.BUSY:
                raise StopRequested() from None

    def teardown(self) -> None:
        try:
            super().teardown()
        except REDIS_DOWN as exc:
            log.warning("Worker %s: stopped without unregistering (Redis unreachable: %s)", self.name, exc)


class RidingCronScheduler(DjangoCronScheduler):
    """RQ's cron scheduler (enqueues the maintenance tick) that survives Redis going away."""

    _stopping = False

    def _request_stop(self, signum, frame):
        self._stopping = True
        super()._request_stop(signum, frame)

    def _ride(self, call: Callable[[], T], default: T) -> T:
        try:
            return call()
        except REDIS_DOWN as exc:
            log.warning("CronScheduler %s: lost Redis (%s)", self.name, exc)
            if not wait_for_redis(self.connection, f"CronScheduler {self.name}", lambda: self._stopping):
                raise StopRequested() from None
            super().register_birth()
            return default

    def register_birth(self) -> None:
        # At start too: a cron started while Redis is still coming up waits instead of exiting.
        wait_for_redis(self.connection, f"CronScheduler {self.name}", lambda: self._stopping)
        self._ride(super().register_birth, None)

    def enqueue_jobs(self) -> list[CronJob]:
        nothing: list[CronJob] = []
        return self._ride(super().enqueue_jobs, nothing)

    def save(self, pipeline=None):
        return self._ride(lambda: super(RidingCronScheduler, self).save(pipeline), None)

    def heartbeat(self) -> None:
        self._ride(super().heartbeat, None)
        self._watch()

    _watched_at = 0.0

    def _watch(self) -> None:
        """Evaluate the no-tick and no-worker alert rules here, every WATCH_SECONDS: when no worker
        runs, no tick runs either, and a missing tick cannot report itself."""
        if time.monotonic() - self._watched_at < WATCH_SECONDS:
            return
        self._watched_at = time.monotonic()
        from django.db import close_old_connections

        from clayops import alerts

        close_old_connections()
        try:
            alerts.evaluate_liveness()
        except Exception:  # the watch must never stop the scheduler
            if not self._stopping:
                log.exception("CronScheduler %s: the liveness alert check failed", self.name)
        finally:
            close_old_connections()
        if self._stopping:
            # A stop signal arrived meanwhile: its StopRequested (an Exception) was caught above, or
            # by a channel's send; the scheduler must still stop.
            raise StopRequested()

    def register_death(self, pipeline=None) -> None:
        try:
            super().register_death(pipeline)
        except REDIS_DOWN as exc:
            log.warning("CronScheduler %s: stopped without unregistering (%s)", self.name, exc)

"""Workers and the cron scheduler ride out a Redis outage longer than redis-py's own retries (about
7 s): they wait, find Redis again, and go on in the same process (clayops/workers.py). RQ's plain
SimpleWorker quits with "found an unhandled exception" when its job's bookkeeping meets the
outage, and `rqcron` dies on its next enqueue."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings
from rq import Queue
from rq.job import Job

from clayops.devtools.embedded_redis import EmbeddedRedis
from tests.conftest import child_env

pytestmark = [pytest.mark.slow, pytest.mark.own_database]  # the jobs touch no database

MANAGE = str(Path(settings.BASE_DIR) / "manage.py")
OUTAGE_S = 12  # longer than redis-py's default retries (3, backing off 1, 2, 4 s)


def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := check():
                return value
        except redis.RedisError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


@pytest.fixture
def server(tmp_path):
    embedded = EmbeddedRedis(Path("/tmp") / f"ride-{tmp_path.name[-20:]}")
    embedded.start()
    yield embedded
    embedded.stop()


def _start(argv: list[str], server: EmbeddedRedis, log: Path, **extra: str) -> subprocess.Popen:
    env = child_env(REDIS_URL=server.url, PYTHONUNBUFFERED="1", **extra)
    return subprocess.Popen(
        [sys.executable, MANAGE, *argv], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def _outage(server: EmbeddedRedis) -> None:
    pid = server.pid()
    assert pid is not None
    server.stop(timeout=5)
    time.sleep(OUTAGE_S)
    server.start()


def _stop(proc: subprocess.Popen, log: Path) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return log.read_text()


def test_a_worker_busy_when_redis_goes_away_waits_for_it_and_works_on(server, tmp_path):
    log = tmp_path / "worker.log"
    worker = _start(["rqworker", "default", "--worker-class", "clayops.workers.RidingWorker"], server, log)
    try:
        queue = Queue("default", connection=server.client())
        _until(lambda: "Listening on" in log.read_text(), 60, "worker up")
        first = queue.enqueue(time.sleep, 4)
        _until(lambda: first.get_status(refresh=True) == "started", 30, "job started")
        _outage(server)  # the job ends during the outage: its bookkeeping meets a dead Redis
        assert worker.poll() is None, log.read_text()[-3000:]

        client = server.client()
        _until(lambda: client.ping(), 10, "Redis back")
        second = Queue("default", connection=client).enqueue(time.sleep, 0.1)
        _until(lambda: second.get_status(refresh=True) == "finished", 60, "a job after the outage")
        assert worker.poll() is None, log.read_text()[-3000:]
        assert Job.fetch(second.id, connection=client).worker_name  # served by the same worker
    finally:
        text = _stop(worker, log)
    assert worker.returncode == 0, text[-3000:]
    assert "Redis unreachable" in text and "Redis is back" in text, text[-3000:]
    assert "quitting" not in text, text[-3000:]


def test_the_cron_scheduler_rides_out_an_outage_and_enqueues_ticks_again(server, tmp_path):
    log = tmp_path / "cron.log"
    cron = _start(["cron"], server, log, CLAYOPS_TICK_SECONDS="1")
    try:
        maintenance = Queue("maintenance", connection=server.client())
        _until(lambda: maintenance.count >= 1, 60, "a first tick enqueued")
        _outage(server)
        assert cron.poll() is None, log.read_text()[-3000:]
        client = server.client()
        _until(lambda: client.ping(), 10, "Redis back")
        before = Queue("maintenance", connection=client).count
        _until(lambda: Queue("maintenance", connection=client).count > before, 30, "ticks again")
        assert cron.poll() is None, log.read_text()[-3000:]
    finally:
        text = _stop(cron, log)
    assert cron.returncode == 0, text[-3000:]
    assert "Redis is back" in text, text[-3000:]

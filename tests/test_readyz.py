"""/readyz (issue 11): ready means a live RQ worker and a recent maintenance tick, not only a database
and Redis that answer (/healthz)."""

from __future__ import annotations

import time

import django_rq
import pytest
from rq import Worker

from clayops import maintenance


@pytest.fixture
def conn():
    conn = django_rq.get_connection("default")
    conn.delete(maintenance.LAST_TICK_KEY)
    yield conn
    conn.delete(maintenance.LAST_TICK_KEY)


def test_it_names_what_is_missing(client, db, conn):
    answer = client.get("/readyz")
    assert answer.status_code == 503
    problems = answer.json()["problems"]
    assert "no live RQ worker" in problems
    assert any(p.startswith("no maintenance tick") for p in problems)


def test_a_tick_records_itself_and_a_registered_worker_makes_it_ready(client, db, conn, settings):
    maintenance.run()
    assert float(conn.get(maintenance.LAST_TICK_KEY)) == pytest.approx(time.time(), abs=30)
    worker = Worker(["default"], connection=conn, name=f"readyz-test-{time.time_ns()}")
    worker.register_birth()
    try:
        answer = client.get("/readyz")
        assert answer.status_code == 200 and answer.json()["ok"] is True, answer.content
        # A tick older than three intervals is not recent.
        conn.set(maintenance.LAST_TICK_KEY, f"{time.time() - 3 * settings.CLAYOPS_TICK_SECONDS - 5:.3f}")
        problems = client.get("/readyz").json()["problems"]
        assert any(p.startswith("no maintenance tick") for p in problems)
    finally:
        worker.register_death()

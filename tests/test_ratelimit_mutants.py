"""Rate limits, pinned where mutation testing (bench/mutation.sh) found it unasserted: the connection a
caller passes, the per-process client and script caches, a burst of one, the default of one token,
the jitter of a wait, and an hourly cap of one."""

from __future__ import annotations

import django_rq
import pytest
import redis
from django.conf import settings

from clayops import ratelimit


@pytest.fixture
def db1():
    """Another database of the same Redis: whatever lands there came through the connection given."""
    other = redis.Redis.from_url(settings.REDIS_URL, db=1)
    other.flushdb()
    yield other
    other.flushdb()


def test_it_runs_every_script_on_the_connection_given(db1):
    default = django_rq.get_connection("default")
    ratelimit.acquire(7, rate=10, burst=5, connection=db1)
    assert ratelimit.acquire_blocking(7, rate=10, burst=5, max_wait=1, connection=db1)
    ratelimit.hourly_allow(7, cap=10, connection=db1)
    # The bucket and its one-second window ("rate:7" and "rate:7:w"), and the hourly counter.
    assert sorted({k.decode().split(":")[1] for k in db1.keys("clayops:*")}) == ["hourly", "rate"]
    assert default.keys("clayops:*") == []


def test_it_keeps_one_client_per_process_and_makes_one_after_a_fork(monkeypatch):
    monkeypatch.setattr(ratelimit, "_client", None)
    first = ratelimit.redis_connection()
    assert ratelimit.redis_connection() is first
    monkeypatch.setattr(ratelimit, "_client", (-1, object()))  # inherited from a parent process
    assert ratelimit.redis_connection().ping()


def test_it_loads_a_script_on_first_use_and_caches_it(monkeypatch):
    monkeypatch.setattr(ratelimit, "_scripts", {})
    assert ratelimit.acquire(8, rate=10, burst=5) == 0.0
    assert ratelimit.hourly_allow(8, cap=10) == 0.0
    assert set(ratelimit._scripts) == {ratelimit.TOKEN_BUCKET, ratelimit.HOURLY}


def test_it_holds_a_burst_of_one():
    assert ratelimit.acquire(9, rate=1, burst=1) == 0.0
    assert ratelimit.acquire(9, rate=1, burst=1) > 0.5


def test_it_takes_one_token_by_default_when_blocking():
    assert ratelimit.acquire_blocking(10, rate=1, burst=1, max_wait=0)
    assert 0.5 < ratelimit.acquire(10, rate=1, burst=1) <= 1.0


def test_it_waits_what_the_bucket_says_plus_a_little_jitter(monkeypatch):
    waits = iter([0.5, 0.0])
    slept = []
    monkeypatch.setattr(ratelimit, "acquire", lambda *a, **kw: next(waits))
    monkeypatch.setattr(ratelimit.time, "sleep", slept.append)
    monkeypatch.setattr(ratelimit.random, "uniform", lambda low, high: (low + high) / 2)
    assert ratelimit.acquire_blocking(11, rate=2, burst=1, max_wait=10)
    assert slept == [pytest.approx(0.505)]


def test_it_counts_one_record_by_default_against_the_hourly_cap():
    assert ratelimit.hourly_allow(12, cap=2) == 0.0
    assert ratelimit.hourly_allow(12, cap=2) == 0.0
    assert ratelimit.hourly_allow(12, cap=2) > 0


def test_it_enforces_an_hourly_cap_of_one():
    assert ratelimit.hourly_allow(13, cap=1) == 0.0
    assert ratelimit.hourly_allow(13, cap=1) > 0


def test_it_leaves_no_state_in_redis_for_a_request_of_nothing():
    conn = django_rq.get_connection("default")
    assert ratelimit.acquire(14, rate=10, burst=5, n=0) == 0.0
    assert ratelimit.hourly_allow(14, cap=5, n=0) == 0.0
    assert conn.keys("clayops:*") == []

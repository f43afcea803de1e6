"""The workspace's token bucket in Redis: burst then rate, shared by processes; the hourly cap."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import django_rq
import pytest
from django.conf import settings

from clayops import ratelimit
from tests.conftest import child_env


@pytest.fixture
def redis():
    return django_rq.get_connection("default")


def test_it_grants_the_burst_at_once_then_waits_for_the_window_then_paces_at_the_rate(redis):
    waits = [ratelimit.acquire(1, rate=10, burst=20, connection=redis) for _ in range(20)]
    assert waits == [0.0] * 20
    # The bucket would give a token back in 0.1 s, but 20 went in this second: the 21st waits until
    # the first of them is a second old, so no one-second window ever holds more than the burst.
    wait = ratelimit.acquire(1, rate=10, burst=20, connection=redis)
    assert 0.9 < wait <= 1.0
    time.sleep(wait)
    # A second later the bucket holds about 10 tokens (the rate): they go, then the rate paces.
    granted = 0
    while ratelimit.acquire(1, rate=10, burst=20, connection=redis) == 0.0:
        granted += 1
    assert 9 <= granted <= 11


def test_no_sliding_second_ever_holds_more_than_the_burst(redis):
    """Taken as fast as they come for 3 s from a full bucket (a start, a resume after a pause):
    every sliding one-second window of grants holds at most the burst (a bucket alone: burst + rate),
    and the run as a whole keeps the rate. Grant times are the script's own (Redis' clock), read
    from the window it keeps."""
    grants: dict[bytes, float] = {}
    started = time.monotonic()
    while time.monotonic() - started < 3.0:
        wait = ratelimit.acquire(11, rate=10, burst=20, connection=redis)
        if wait == 0.0:
            grants.update(dict(redis.zrange("clayops:rate:11:w", 0, -1, withscores=True)))
        else:
            time.sleep(min(wait, 0.02))
    times = sorted(grants.values())
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest == 20  # the burst at once, never more
    assert 20 + 10 * 2 - 2 <= len(times) <= 20 + 10 * 3  # then the rate


def test_it_takes_nothing_when_it_refuses(redis):
    for _ in range(15):
        ratelimit.acquire(1, rate=10, burst=20, connection=redis)
    for _ in range(5):
        assert ratelimit.acquire(1, rate=10, burst=20, connection=redis) == 0.0
    # The bucket is empty (5 tokens are 0.5 s away) and the window full (the first 5 grants leave
    # it in a second): the longer of the two.
    first = ratelimit.acquire(1, rate=10, burst=20, n=5, connection=redis)
    assert 0.9 < first <= 1.0
    # Asking again right away is told about the same wait: the refused request took no tokens.
    assert ratelimit.acquire(1, rate=10, burst=20, n=5, connection=redis) == pytest.approx(first, abs=0.02)


def test_it_keeps_one_bucket_per_workspace(redis):
    for _ in range(3):
        ratelimit.acquire(1, rate=1, burst=3, connection=redis)
    assert ratelimit.acquire(1, rate=1, burst=3, connection=redis) > 0
    assert ratelimit.acquire(2, rate=1, burst=3, connection=redis) == 0.0


def test_it_lets_a_request_larger_than_the_burst_through_when_full(redis):
    assert ratelimit.acquire(1, rate=10, burst=5, n=8, connection=redis) == 0.0
    # ...and the bucket is in debt (the next token 0.4 s away) and the window over the burst: the
    # next grant waits until those 8 are a second old, so the long-run rate holds.
    assert ratelimit.acquire(1, rate=10, burst=5, connection=redis) == pytest.approx(1.0, abs=0.03)


def test_it_is_unlimited_when_the_rate_is_zero(redis):
    assert all(ratelimit.acquire(1, rate=0, burst=1, connection=redis) == 0.0 for _ in range(100))
    assert not redis.keys("clayops:rate:*")


def test_it_uses_the_default_redis_without_a_connection():
    for _ in range(2):
        assert ratelimit.acquire(7, rate=1, burst=2) == 0.0
    assert ratelimit.acquire(7, rate=1, burst=2) > 0
    assert ratelimit.redis_connection() is ratelimit.redis_connection()  # one client per process


def test_it_blocks_until_granted_or_gives_up_before_max_wait(redis):
    for _ in range(2):
        ratelimit.acquire(1, rate=5, burst=2, connection=redis)
    started = time.monotonic()
    assert ratelimit.acquire_blocking(1, rate=5, burst=2, max_wait=1.5, connection=redis)
    assert 0.9 < time.monotonic() - started < 1.4  # the window: the first grant a second old
    started = time.monotonic()
    # 10 tokens at 5/s is 2 s away: refused at once rather than sleeping past max_wait.
    assert not ratelimit.acquire_blocking(1, rate=5, burst=20, n=10, max_wait=0.5, connection=redis)
    assert time.monotonic() - started < 0.1


def redis_clock(redis) -> float:
    seconds, micros = redis.time()
    return seconds + micros / 1_000_000


def test_it_caps_records_per_hour(redis):
    if 3600 - redis_clock(redis) % 3600 < 5:  # keep the whole test inside one Redis-clock hour
        time.sleep(5)
    assert ratelimit.hourly_allow(1, cap=5, n=3, connection=redis) == 0.0
    assert ratelimit.hourly_allow(1, cap=5, n=2, connection=redis) == 0.0
    before = redis_clock(redis)
    wait = ratelimit.hourly_allow(1, cap=5, n=1, connection=redis)
    after = redis_clock(redis)
    # The wait is what is left of the current hour on Redis' clock, not a fixed hour.
    hour_end = (before // 3600 + 1) * 3600
    assert hour_end - after - 1e-5 <= wait <= hour_end - before + 1e-5
    assert ratelimit.hourly_allow(2, cap=5, n=1, connection=redis) == 0.0  # another workspace
    assert ratelimit.hourly_allow(1, cap=None, n=100, connection=redis) == 0.0  # no cap
    (key,) = redis.keys("clayops:hourly:1:*")
    assert int(redis.get(key)) == 5  # refused requests are not counted
    assert 3600 < redis.ttl(key) <= 3700


SPENDER = """
import json, sys, time
import django
django.setup()
from clayops import ratelimit

ratelimit.redis_connection().ping()
print("ready", flush=True)
deadline = float(sys.stdin.readline())
start = time.time()
granted = 0
while time.time() < deadline:
    if ratelimit.acquire(99, rate=10, burst=20) == 0.0:
        granted += 1
    else:
        time.sleep(0.005)
print(json.dumps({"granted": granted, "elapsed": time.time() - start}))
"""


@pytest.mark.slow  # two spender processes
def test_it_shares_one_bucket_between_processes():
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SPENDER],
            cwd=settings.BASE_DIR,
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    deadline = time.time() + 1.5
    results = []
    for p in procs:
        p.stdin.write(f"{deadline}\n")
        p.stdin.flush()
    for p in procs:
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    elapsed = max(r["elapsed"] for r in results)
    total = sum(r["granted"] for r in results)
    # Two greedy processes together get what ONE bucket allows (burst + rate x time), not twice that.
    assert total <= 20 + 10 * elapsed + 2
    assert total >= 20 + 10 * (elapsed - 0.3)
    assert all(r["granted"] > 0 for r in results)

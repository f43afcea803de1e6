"""Clay's rate limit belongs to the workspace: one token bucket per workspace in Redis, shared by all
of its webhooks and every worker on every machine.

The bucket is one Lua script (atomic in Redis) that reads Redis' own clock (TIME), so workers on
machines with skewed clocks still share one notion of time. It takes the tokens only when they are
there; otherwise it takes nothing and says how long to wait. A request for more tokens than the
bucket holds (n > burst) would never pass: it passes when the bucket is full and leaves the bucket
in debt, so the long-run rate still holds.

Beside the bucket, the script keeps the grants of the last second (a sorted set) and never lets it
hold more than the burst: Clay has not said whether its limit is a token bucket or a fixed window,
and a bucket alone hands out burst + rate in the second after an idle spell (a start, a resume, a
budget raise). With both, no sliding one-second window of grants exceeds the burst, and the
sustained rate is still the bucket's.

The hourly cap (some plans limit records per hour) is a fixed counter per clock hour, also keyed by
Redis' clock.

The scripts run on one Redis client per process (`redis_connection()`): django_rq's
`get_connection()` builds a new client with its own connection pool on every call.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Any

import django_rq
from redis.exceptions import RedisError

log = logging.getLogger("clayops.ratelimit")

# Shared by both bucket scripts: KEYS[1] the bucket, ARGV[1] the rate, ARGV[2] the burst; reads
# Redis' clock and refills the bucket to now.
_BUCKET_NOW = """
local key = KEYS[1]
local window_key = KEYS[1] .. ':w'
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
"""
_REFILL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', key, 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
"""

TOKEN_BUCKET = (
    _BUCKET_NOW
    + """
local n = tonumber(ARGV[3])
local span = tonumber(ARGV[4])
"""
    + _REFILL
    + """local need = math.min(n, burst)
local wait = 0
if tokens < need then
  wait = (need - tokens) / rate
end
-- The sliding one-second window: the grants of the last second, never more than the burst
-- (a bucket alone lets burst + rate through in the second after an idle spell).
redis.call('ZREMRANGEBYSCORE', window_key, '-inf', now - span)
local recent = redis.call('ZCARD', window_key)
local over = recent + n - burst
if recent > 0 and over > 0 then
  local k = math.min(over, recent)
  local oldest = redis.call('ZRANGE', window_key, k - 1, k - 1, 'WITHSCORES')
  wait = math.max(wait, tonumber(oldest[2]) + span - now)
end
if wait <= 0 then
  wait = 0
  tokens = tokens - n
  local seq = redis.call('HINCRBY', key, 'seq', n)
  for i = seq - n + 1, seq do
    redis.call('ZADD', window_key, now, i)
  end
  redis.call('PEXPIRE', window_key, math.ceil(span * 1000) + 1000)
end
redis.call('HSET', key, 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.6f', ts))
-- Once the bucket would be full again its state carries no information: let it expire.
redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""
)

HOURLY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local key = KEYS[1] .. ':' .. math.floor(now / 3600)
local n = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local used = tonumber(redis.call('GET', key) or '0')
-- A batch larger than the whole cap may go alone in an empty hour (it could never pass otherwise).
if used + n > cap and used > 0 then
  return string.format('%.6f', 3600 - (now % 3600))
end
redis.call('INCRBY', key, n)
redis.call('EXPIRE', key, 3700)
return '0'
"""

_lock = threading.Lock()
_client: tuple[int, object] | None = None
_scripts: dict[str, Any] = {}


def redis_connection():
    """This process' client for the default queue's Redis (created once; again after a fork)."""
    global _client
    pid = os.getpid()
    client = _client
    if client is None or client[0] != pid:
        with _lock:
            if _client is None or _client[0] != pid:
                _client = (pid, django_rq.get_connection("default"))
            client = _client
    return client[1]


def run_script(source: str, *, keys: list[str], args: list, connection=None):
    """Run a Lua script by its SHA (loaded on first use, and again after a Redis restart)."""
    conn = connection if connection is not None else redis_connection()
    script = _scripts.get(source)
    if script is None:
        script = _scripts.setdefault(source, conn.register_script(source))
    return script(keys=keys, args=args, client=conn)


def acquire(
    workspace_id: int, *, rate: float, burst: int, n: int = 1, window: float = 1.0, connection=None
) -> float:
    """Take n tokens: 0.0 if granted, else the seconds to wait (and nothing is taken).

    rate <= 0 means no limit. burst is how many may go at once (at least 1), and at most in any
    `window` seconds of grants (1 s, or a little more so that requests delayed on their way to Clay
    still arrive with no one-second window above the burst).
    """
    if rate <= 0 or n <= 0:
        return 0.0
    burst = max(1, int(burst))
    wait = run_script(
        TOKEN_BUCKET,
        keys=[f"clayops:rate:{workspace_id}"],
        args=[rate, burst, int(n), max(1.0, float(window))],
        connection=connection,
    )
    return float(wait)


def acquire_blocking(
    workspace_id: int,
    *,
    rate: float,
    burst: int,
    n: int = 1,
    max_wait: float,
    window: float = 1.0,
    connection=None,
) -> bool:
    """Wait for n tokens, at most max_wait seconds. True when granted; False (nothing taken) otherwise.

    Gives up at once when the wait the bucket announces would pass max_wait, rather than sleeping
    for nothing. A few milliseconds of jitter keep waiting workers from retrying in lockstep.
    """
    started = time.monotonic()
    deadline = started + max_wait
    waited = False
    try:
        while True:
            wait = acquire(workspace_id, rate=rate, burst=burst, n=n, window=window, connection=connection)
            if wait <= 0:
                return True
            left = deadline - time.monotonic()
            if wait > left:
                return False
            waited = True
            time.sleep(min(left, wait + random.uniform(0, min(0.01, wait))))
    finally:
        if waited:
            record_wait(workspace_id, time.monotonic() - started, connection=connection)


WAITS_KEY = "clayops:metrics:rate-waits"  # hash: "<workspace>:n" waits, "<workspace>:s" seconds


def record_wait(workspace_id: int, seconds: float, *, connection=None) -> None:
    """Count one wait for the workspace's rate limit and its length (Prometheus counters read at
    scrape time: clayops_rate_limit_waits_total, clayops_rate_limit_wait_seconds_total). Best effort."""
    try:
        pipe = (connection or redis_connection()).pipeline(transaction=False)
        pipe.hincrby(WAITS_KEY, f"{workspace_id}:n", 1)
        pipe.hincrbyfloat(WAITS_KEY, f"{workspace_id}:s", round(seconds, 6))
        pipe.execute()
    except RedisError:
        log.debug("could not record a rate-limit wait of workspace %s", workspace_id)


def waits(connection=None) -> dict[int, tuple[int, float]]:
    """{workspace id: (waits, seconds waited)} since Redis last lost its data."""
    raw = (connection or redis_connection()).hgetall(WAITS_KEY)
    out: dict[int, tuple[int, float]] = {}
    for field, value in raw.items():
        ws, _, kind = (field.decode() if isinstance(field, bytes) else field).partition(":")
        if not ws.isdigit():
            continue
        n, s = out.get(int(ws), (0, 0.0))
        out[int(ws)] = (int(value), s) if kind == "n" else (n, float(value))
    return out


def hourly_allow(workspace_id: int, *, cap: int | None, n: int = 1, connection=None) -> float:
    """Records-per-hour cap of some plans: 0.0 if allowed (and counted), else seconds to the next hour.

    cap None (or 0) means no hourly cap. Hours are Redis' clock hours (UTC), shared by all workers.
    """
    if not cap or cap <= 0 or n <= 0:
        return 0.0
    wait = run_script(
        HOURLY, keys=[f"clayops:hourly:{workspace_id}"], args=[int(n), int(cap)], connection=connection
    )
    return float(wait)


# Taking tokens in bulk for a pump (clayops.pacequeue): grant every token there is, up to `want`, but
# only once at least `goal` are there; otherwise grant nothing and say when `goal` will be. Grants
# enter the same sliding window as above, so no window of grants ever holds more than the burst.
TAKE_UP_TO = (
    _BUCKET_NOW
    + """
local want = tonumber(ARGV[3])
local goal = math.min(tonumber(ARGV[4]), want, burst)
local span = tonumber(ARGV[5])
local dry = ARGV[6] == '1'
"""
    + _REFILL
    + """redis.call('ZREMRANGEBYSCORE', window_key, '-inf', now - span)
local recent = redis.call('ZCARD', window_key)
local avail = math.min(math.floor(tokens + 0.000001), burst - recent, want)
local granted = 0
local wait = 0
if avail >= goal and avail >= 1 and dry then
  return {avail, '0'}
end
if avail >= goal and avail >= 1 then
  granted = avail
  tokens = tokens - avail
  local seq = redis.call('HINCRBY', key, 'seq', avail)
  for i = seq - avail + 1, seq do
    redis.call('ZADD', window_key, now, i)
  end
  redis.call('PEXPIRE', window_key, math.ceil(span * 1000) + 1000)
else
  if tokens < goal then
    wait = (goal - tokens) / rate
  end
  local over = recent + goal - burst
  if over > 0 then
    local oldest = redis.call('ZRANGE', window_key, over - 1, over - 1, 'WITHSCORES')
    if oldest[2] then
      wait = math.max(wait, tonumber(oldest[2]) + span - now)
    end
  end
end
redis.call('HSET', key, 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.6f', ts))
redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate * 1000) + 1000)
return {granted, string.format('%.6f', wait)}
"""
)

REFUND = """
local key = KEYS[1]
local n = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tokens = tonumber(redis.call('HGET', key, 'tokens'))
if tokens ~= nil then
  redis.call('HSET', key, 'tokens', string.format('%.6f', math.min(burst, tokens + n)))
end
redis.call('ZPOPMAX', KEYS[1] .. ':w', n)
return n
"""


def pace_goal(*, rate: float, burst: int, window: float) -> int:
    """How many tokens a pump waits for before it takes them (clayops.pacequeue).

    A pump takes all the tokens there are in one grant, then the window (`window` seconds, no more
    than `burst` grants in it) must empty before the next grant. Waiting for a full bucket would
    leave tokens unused while the pump is late (a busy worker, the dispatcher's tick); taking one
    at a time would run a pump for each request. So the pump comes back when the bucket holds what
    half-way between the window's end and a full bucket brings: at 10/s, a bucket of 16 and a
    1.25 s window, 14 tokens every 1.4 s, with 0.2 s of slack before a token is lost.
    """
    burst = max(1, int(burst))
    if rate <= 0:
        return burst
    holds = burst / rate  # seconds a full bucket takes to fill
    if holds <= window:
        return burst  # the window binds: take everything each time it empties
    return max(1, min(burst, int(rate * (window + holds) / 2)))


def take_up_to(
    workspace_id: int,
    *,
    rate: float,
    burst: int,
    want: int,
    goal: int,
    window: float = 1.0,
    dry: bool = False,
    connection=None,
) -> tuple[int, float]:
    """Take between `goal` and `want` tokens now, as many as there are: (granted, 0.0); or none, and
    the seconds until `goal` will be there: (0, wait). rate <= 0 (no limit) grants `want` at once.

    dry=True takes nothing and says what would be granted: a pump looks first, does its database
    work for that many requests, then takes the tokens just before they go out (the bucket only
    fills meanwhile), so the time from a grant to Clay is the network's, not the database's."""
    if rate <= 0 or want <= 0:
        return max(0, want), 0.0
    granted, wait = run_script(
        TAKE_UP_TO,
        keys=[f"clayops:rate:{workspace_id}"],
        args=[rate, max(1, int(burst)), int(want), max(1, int(goal)), max(1.0, float(window)), int(dry)],
        connection=connection,
    )
    return int(granted), float(wait)


def refund(workspace_id: int, n: int, *, burst: int, connection=None) -> None:
    """Give back n tokens taken but not used (their requests were deferred or served from the cache):
    the bucket gets them back and the window forgets the n newest grants."""
    if n <= 0:
        return
    run_script(
        REFUND,
        keys=[f"clayops:rate:{workspace_id}"],
        args=[int(n), max(1, int(burst))],
        connection=connection,
    )

"""Clay's rate limit belongs to the workspace: one token bucket per workspace in Redis, shared by all
of its webhooks and every worker on every machine.

The bucket is one Lua script (atomic in Redis) that reads Redis' own clock (TIME), so workers on
machines with skewed clocks still share one notion of time. It takes the tokens only when all of
them are there; otherwise it takes nothing and says how long to wait.
"""

from __future__ import annotations

import time

import django_rq

TOKEN_BUCKET = """
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', key, 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= n then
  tokens = tokens - n
else
  wait = (n - tokens) / rate
end
redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', key, math.ceil((burst / rate) * 1000) + 1000)
return tostring(wait)
"""

HOURLY = """
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
if count == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], 3700) end
if count > tonumber(ARGV[2]) then
  redis.call('DECRBY', KEYS[1], ARGV[1])
  local t = redis.call('TIME')
  return 3600 - (tonumber(t[1]) % 3600)
end
return 0
"""

_scripts: dict[tuple[int, str], object] = {}


def _script(connection, source: str):
    key = (id(connection), source)
    if key not in _scripts:
        _scripts[key] = connection.register_script(source)
    return _scripts[key]


def _conn(connection):
    return connection if connection is not None else django_rq.get_connection("default")


def acquire(workspace_id: int, *, rate: float, burst: int, n: int = 1, connection=None) -> float:
    """Take n tokens: 0.0 if granted, else the seconds to wait (and nothing taken).

    rate <= 0 means no limit. A request for more tokens than the burst can ever hold is granted
    when the bucket is full (it would otherwise never pass).
    """
    if rate <= 0:
        return 0.0
    burst = max(1, int(burst))
    n = min(n, burst)
    conn = _conn(connection)
    wait = _script(conn, TOKEN_BUCKET)(keys=[f"clayops:rate:{workspace_id}"], args=[rate, burst, n])
    return float(wait)


def acquire_blocking(
    workspace_id: int, *, rate: float, burst: int, n: int = 1, max_wait: float, connection=None
) -> bool:
    """Wait for n tokens up to max_wait seconds. True when granted."""
    deadline = time.monotonic() + max_wait
    while True:
        wait = acquire(workspace_id, rate=rate, burst=burst, n=n, connection=connection)
        if wait <= 0:
            return True
        if time.monotonic() + wait > deadline:
            return False
        time.sleep(wait)


def hourly_allow(workspace_id: int, *, cap: int | None, n: int = 1, connection=None) -> float:
    """Records-per-hour cap of some plans: 0.0 if allowed (and counted), else seconds to the next hour."""
    if not cap:
        return 0.0
    conn = _conn(connection)
    hour = int(time.time() // 3600)
    wait = _script(conn, HOURLY)(keys=[f"clayops:hourly:{workspace_id}:{hour}"], args=[n, cap])
    return float(wait)

"""Where a rate-limited workspace's leads wait for its tokens: lists in Redis, and when to look again.

A submission job never waits on a worker for a workspace's rate-limit tokens (with 4 workers, only
4 workspaces could send at once). A job hands a paced workspace's queued leads to that workspace's
lists here; one pump at a time per workspace (clayops.delivery.pump) takes what the tokens allow,
sends it, and asks to run again when the next tokens are there. Between runs the workspace costs
no worker at all.

Per workspace, in Redis:
  clayops:pace:<ws>:u          urgent leads (an import marked urgent), before any other
  clayops:pace:<ws>:b:<import> one list per import (0: leads of no import), taken in turn
  clayops:pace:<ws>:rr         the imports with leads waiting, in the order of their turns
  clayops:pace:<ws>:lock       held by the workspace's running pump
  clayops:pace:<ws>:taken      the items the running pump took, until it is done with them
and for all workspaces:
  clayops:pace:active          the workspaces with leads waiting
  clayops:pace:due             when each workspace's pump must run next (Redis' clock)

Every item is a comma-separated batch of lead ids, still `queued` in the database: the database
stays the truth. If Redis loses the lists, the maintenance tick's orphan reaper requeues the leads
(it leaves alone the workspaces that still have leads waiting here).

Due pumps are enqueued by `dispatch_due()`, which every worker runs in a thread every
DISPATCH_SECONDS (clayops.workers) and the maintenance tick runs too: RQ's own scheduler keeps
whole seconds only, too coarse for a pump that must come back within half a second.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence

import django_rq
from redis.exceptions import RedisError

from .ratelimit import redis_connection, run_script

log = logging.getLogger("clayops.pacequeue")

ACTIVE = "clayops:pace:active"
DUE = "clayops:pace:due"
# A pump that died (SIGKILL) stops holding its workspace after this. A live pump may outlast it
# (a slow answer from Clay): another pump may then run beside it, which stays within the rate (the
# Sender takes its tokens atomically and gives back what it cannot pay for); the lock only saves work.
LOCK_SECONDS = 10
DISPATCH_SECONDS = 0.05
URGENT = "u"


def base(workspace_id: int) -> str:
    return f"clayops:pace:{workspace_id}"


PUSH = """
local base = KEYS[1]
local kind = ARGV[1]
if kind == 'u' then
  for i = 3, #ARGV do redis.call('RPUSH', base .. ':u', ARGV[i]) end
else
  local list = base .. ':b:' .. kind
  if redis.call('LPOS', base .. ':rr', kind) == false then
    redis.call('RPUSH', base .. ':rr', kind)
  end
  for i = 3, #ARGV do redis.call('RPUSH', list, ARGV[i]) end
end
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""

# Urgent first; then one item from the next import in turn. Nothing left: the workspace is no
# longer active. The item is also kept in `…:taken` until the pump is done with it (done()), so a
# pump that dies with it (SIGKILL) leaves it for the next one (restore()).
POP = """
local base = KEYS[1]
local item = redis.call('LPOP', base .. ':u')
if item then
  redis.call('RPUSH', base .. ':taken', base .. ':u|' .. item)
  return {base .. ':u', item}
end
local n = redis.call('LLEN', base .. ':rr')
for i = 1, n do
  local kind = redis.call('LMOVE', base .. ':rr', base .. ':rr', 'LEFT', 'RIGHT')
  local list = base .. ':b:' .. kind
  item = redis.call('LPOP', list)
  if redis.call('LLEN', list) == 0 then redis.call('LREM', base .. ':rr', 0, kind) end
  if item then
    redis.call('RPUSH', base .. ':taken', list .. '|' .. item)
    return {list, item}
  end
end
redis.call('SREM', KEYS[2], ARGV[1])
return false
"""

# A pump that died while it held items: each goes back to the head of its list.
RESTORE = """
local base = KEYS[1]
local taken = redis.call('LRANGE', base .. ':taken', 0, -1)
redis.call('DEL', base .. ':taken')
local prefix = base .. ':b:'
for i = #taken, 1, -1 do
  local sep = string.find(taken[i], '|', 1, true)
  local list = string.sub(taken[i], 1, sep - 1)
  redis.call('LPUSH', list, string.sub(taken[i], sep + 1))
  if string.sub(list, 1, #prefix) == prefix then
    local kind = string.sub(list, #prefix + 1)
    if redis.call('LPOS', base .. ':rr', kind) == false then redis.call('LPUSH', base .. ':rr', kind) end
  end
end
if #taken > 0 then redis.call('SADD', KEYS[2], ARGV[1]) end
return #taken
"""

# Put an item back at the head of the list it came from (the part of a batch the tokens did not pay
# for): it goes first next time. A bulk list is back in the turns if it had left them.
GIVE_BACK = """
redis.call('LPUSH', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and redis.call('LPOS', KEYS[2], ARGV[2]) == false then
  redis.call('LPUSH', KEYS[2], ARGV[2])
end
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""

SCHEDULE = """
local t = redis.call('TIME')
local due = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[2])
local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
if current == false or tonumber(current) > due then
  redis.call('ZADD', KEYS[1], due, ARGV[1])
end
return 1
"""

TAKE_DUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def encode(ids: Iterable[int]) -> str:
    return ",".join(str(int(pk)) for pk in ids)


def decode(item: bytes | str) -> list[int]:
    text = item.decode() if isinstance(item, bytes) else item
    return [int(part) for part in text.split(",") if part.strip().isdigit()]


def push(workspace_id: int, batches: dict[str, list[list[int]]], *, connection=None) -> None:
    """Add batches of lead ids: {"u": [...]} urgent, {"<import id>": [...]} bulk, per import."""
    conn = connection or redis_connection()
    for kind, items in batches.items():
        encoded = [encode(ids) for ids in items if ids]
        if encoded:
            run_script(
                PUSH, keys=[base(workspace_id), ACTIVE], args=[kind, workspace_id, *encoded], connection=conn
            )


def pop(workspace_id: int, *, connection=None) -> tuple[str, list[int]] | None:
    """The next batch (urgent first, then imports in turn) and the list it came from; None if none."""
    found = run_script(POP, keys=[base(workspace_id), ACTIVE], args=[workspace_id], connection=connection)
    if not found:
        return None
    source, item = found
    return (source.decode() if isinstance(source, bytes) else source), decode(item)


def done(workspace_id: int, *, connection=None) -> None:
    """The pump is done with the items it popped (sent, or given back)."""
    (connection or redis_connection()).delete(base(workspace_id) + ":taken")


def restore(workspace_id: int, *, connection=None) -> bool:
    """Put back the items a dead pump had popped and not finished (call holding the lock)."""
    return bool(
        run_script(RESTORE, keys=[base(workspace_id), ACTIVE], args=[workspace_id], connection=connection)
    )


def give_back(workspace_id: int, source: str, ids: Sequence[int], *, connection=None) -> None:
    """Put lead ids back at the head of the list they were taken from."""
    if not ids:
        return
    prefix = base(workspace_id) + ":b:"
    kind = source[len(prefix) :] if source.startswith(prefix) else ""
    run_script(
        GIVE_BACK,
        keys=[source, base(workspace_id) + ":rr", ACTIVE],
        args=[encode(ids), kind, workspace_id],
        connection=connection,
    )


def has_more(workspace_id: int, *, connection=None) -> bool:
    """Whether any batch waits in the workspace's lists (a bulk list is in the turns while not empty)."""
    conn = connection or redis_connection()
    return bool(conn.llen(base(workspace_id) + ":u") or conn.llen(base(workspace_id) + ":rr"))


def waiting(workspace_id: int, *, connection=None) -> int:
    """How many lead ids wait in the workspace's lists (for tests, metrics and the dashboard)."""
    conn = connection or redis_connection()
    lists = [base(workspace_id) + ":u"] + [
        base(workspace_id) + ":b:" + (k.decode() if isinstance(k, bytes) else k)
        for k in conn.lrange(base(workspace_id) + ":rr", 0, -1)
    ]
    return sum(len(decode(item)) for key in lists for item in conn.lrange(key, 0, -1))


def active_workspaces(*, connection=None) -> set[int]:
    """Workspaces with leads waiting here."""
    conn = connection or redis_connection()
    return {int(x) for x in conn.smembers(ACTIVE)}


def schedule(workspace_id: int, delay: float, *, connection=None) -> None:
    """Run the workspace's pump in `delay` seconds (or sooner, if it is already due sooner)."""
    run_script(SCHEDULE, keys=[DUE], args=[workspace_id, max(0.0, float(delay))], connection=connection)


def scheduled(workspace_id: int, *, connection=None) -> bool:
    return (connection or redis_connection()).zscore(DUE, workspace_id) is not None


def lock(workspace_id: int, *, connection=None) -> str | None:
    """Hold the workspace's pump lock: a token to release it with, or None if another pump runs.
    Then this workspace's pump is due again when that lock expires: if its holder died, no pump
    would otherwise run until the maintenance tick noticed."""
    token = uuid.uuid4().hex
    conn = connection or redis_connection()
    key = base(workspace_id) + ":lock"
    if conn.set(key, token, nx=True, ex=LOCK_SECONDS):
        return token
    left = conn.pttl(key)
    schedule(workspace_id, max(0.05, left / 1000 if left and left > 0 else 0.05), connection=conn)
    return None


def unlock(workspace_id: int, token: str, *, connection=None) -> None:
    run_script(RELEASE, keys=[base(workspace_id) + ":lock"], args=[token], connection=connection)


def take_due(*, connection=None) -> list[int]:
    """The workspaces whose pump is due, taken off the schedule (atomic: each is taken once)."""
    return [int(ws) for ws in run_script(TAKE_DUE, keys=[DUE], args=[], connection=connection) or []]


def dispatch_due(*, connection=None) -> int:
    """Enqueue the pumps that are due (on the `urgent` queue: a pump's run is short and paced).
    Returns how many. Any process may call it at any time: taking the due entries is atomic."""
    due = take_due(connection=connection)
    if not due:
        return 0
    queue = django_rq.get_queue("urgent")
    for workspace_id in due:
        try:
            queue.enqueue("clayops.jobs.pump_workspace", workspace_id, result_ttl=0)
        except RedisError:
            log.warning("could not enqueue the pump of workspace %s; the next tick will", workspace_id)
    return len(due)


def ensure_pumps(*, connection=None) -> int:
    """The maintenance tick's safety net: a workspace with leads waiting and neither a pump running
    nor one due (its pump died with its worker) gets one now. Returns how many."""
    conn = connection or redis_connection()
    started = 0
    for workspace_id in active_workspaces(connection=conn):
        if scheduled(workspace_id, connection=conn) or conn.exists(base(workspace_id) + ":lock"):
            continue
        schedule(workspace_id, 0, connection=conn)
        started += 1
    return started

"""Which processes `up` runs on each node, for the dashboard: each node's supervisor publishes its
children (name, pid, running, restarts, last exit code) to Redis with a short time to live, so the
overview of any node shows every node, and a node that stopped publishing drops out."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from .ratelimit import redis_connection

log = logging.getLogger("clayops.nodes")

KEY_PREFIX = "clayops:node:"
TTL_SECONDS = 30  # several publications (every 5 s): a live node never blinks out


def node_name() -> str:
    """This node: its host name and a short digest of its var directory (two nodes on one host differ)."""
    digest = hashlib.blake2b(str(settings.VAR_DIR).encode(), digest_size=3).hexdigest()
    return f"{socket.gethostname()}/{digest}"


def publish(status: dict[str, Any]) -> None:
    """Store this node's supervisor status (a Redis outage only means the dashboard shows it late)."""
    name = node_name()
    value = json.dumps({"node": name, "at": status.get("at", time.time()), "children": status["children"]})
    try:
        redis_connection().set(KEY_PREFIX + name, value, ex=TTL_SECONDS)
    except Exception as exc:  # Redis down: `up` keeps supervising, it just cannot tell
        log.debug("node status not published: %s", exc)


@dataclass(frozen=True)
class Child:
    name: str
    pid: int | None
    running: bool
    restarts: int
    last_exit: int | None


@dataclass(frozen=True)
class Node:
    name: str
    at: float
    children: tuple[Child, ...]

    @property
    def restarts(self) -> int:
        return sum(child.restarts for child in self.children)

    @property
    def all_running(self) -> bool:
        return all(child.running for child in self.children)


def _child(raw: dict[str, Any]) -> Child:
    return Child(
        name=str(raw.get("name", "?")),
        pid=raw.get("pid") if isinstance(raw.get("pid"), int) else None,
        running=bool(raw.get("running")),
        restarts=int(raw.get("restarts") or 0),
        last_exit=raw.get("last_exit") if isinstance(raw.get("last_exit"), int) else None,
    )


def read_all() -> list[Node]:
    """Every node that published in the last TTL_SECONDS, by name; [] when Redis cannot be read."""
    try:
        conn = redis_connection()
        keys = sorted(conn.scan_iter(match=KEY_PREFIX + "*", count=100))
        values = conn.mget(keys) if keys else []
    except Exception as exc:  # the overview must render while Redis is down
        log.debug("node status unreadable: %s", exc)
        return []
    nodes = []
    for value in values:
        try:
            raw = json.loads(value)
            nodes.append(
                Node(str(raw["node"]), float(raw["at"]), tuple(_child(c) for c in raw.get("children", ())))
            )
        except (TypeError, ValueError, KeyError):
            continue
    return nodes

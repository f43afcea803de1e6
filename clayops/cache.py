"""Django's Redis cache, shared by every web process and worker, that never takes a page down.

The dashboard caches counts for a few seconds; every process must see the same ones (a per-process
cache showed each web process its own numbers for seconds). A cache is an optimisation: while Redis
is unreachable, reads miss and writes are dropped (logged once a minute), and pages are computed
from the database, which is the system of record.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.cache.backends.redis import RedisCache
from redis.exceptions import RedisError

log = logging.getLogger("clayops.cache")
_last_warning = [0.0]


def _warn(exc: Exception) -> None:
    if time.monotonic() - _last_warning[0] > 60:
        _last_warning[0] = time.monotonic()
        log.warning("cache unavailable (%s): computing from the database", exc)


class ResilientRedisCache(RedisCache):
    def get(self, key, default=None, version=None) -> Any:
        try:
            return super().get(key, default, version)
        except RedisError as exc:
            _warn(exc)
            return default

    def set(self, key, value, timeout=Any, version=None) -> None:
        try:
            if timeout is Any:
                super().set(key, value, version=version)
            else:
                super().set(key, value, timeout, version)
        except RedisError as exc:
            _warn(exc)

    def add(self, key, value, timeout=Any, version=None) -> bool:
        """False (not added) while Redis is unreachable: whoever wanted the key does without."""
        try:
            if timeout is Any:
                return super().add(key, value, version=version)
            return super().add(key, value, timeout, version)
        except RedisError as exc:
            _warn(exc)
            return False

    def incr(self, key, delta=1, version=None) -> int:
        try:
            return super().incr(key, delta, version)
        except RedisError as exc:
            _warn(exc)
            raise ValueError("cache unavailable") from exc  # callers treat it as a missing key

    def delete(self, key, version=None) -> bool:
        try:
            return super().delete(key, version)
        except RedisError as exc:
            _warn(exc)
            return False

    def clear(self) -> None:
        try:
            super().clear()
        except RedisError as exc:
            _warn(exc)

"""The only module that talks HTTP to Clay (and the only one importing httpx).

One pooled httpx.Client per process, created lazily after any fork (the forking RQ worker would
otherwise share a pool across children). Timeouts are explicit; redirects are not followed; every
URL and every address connected to passes the destination policy (destinations.py) first.
Exceptions are turned into a SendResult once, here, so the rest of clayops never sees httpx.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass

import httpx
from django.conf import settings

from .destinations import DestinationRefused, GuardedTransport, url_problem
from .retry import ErrorClass, classify_status, parse_retry_after


@dataclass(frozen=True)
class SendResult:
    status_code: int | None
    error_class: ErrorClass | None  # None: Clay accepted the row(s)
    error: str
    latency_ms: float
    retry_after: float | None = None
    # True when the request may have reached Clay although we got no answer (read timeout,
    # connection dropped after the body was sent): resending blindly could spend credits twice.
    uncertain: bool = False

    @property
    def accepted(self) -> bool:
        return self.error_class is None


def encode(payload: dict | list) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def printable(text: str) -> str:
    """An error body as plain text: control characters (escape sequences, NULs) become spaces."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


class ClayClient:
    def __init__(self, *, connect_timeout: float, read_timeout: float, max_connections: int = 32) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.Client(
            transport=GuardedTransport(limits=limits),
            trust_env=False,  # no proxy from the environment: the policy checks the address connected to
            timeout=httpx.Timeout(
                connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
            ),
            follow_redirects=False,
            headers={"user-agent": "clayops/0.1"},
        )

    def close(self) -> None:
        self._http.close()

    def send(self, url: str, headers: dict[str, str], body: bytes) -> SendResult:
        started = time.perf_counter()

        def elapsed() -> float:
            return (time.perf_counter() - started) * 1000

        def refused(problem: object) -> SendResult:
            error = f"destination refused: {problem}"
            return SendResult(None, ErrorClass.DESTINATION_REFUSED, error, elapsed())

        problem = url_problem(url)
        if problem is not None:
            return refused(problem)
        try:
            response = self._http.post(url, content=body, headers=headers)
        except DestinationRefused as exc:
            return refused(exc)
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            return SendResult(
                None, ErrorClass.TIMEOUT, f"{type(exc).__name__}: could not connect in time", elapsed()
            )
        except httpx.ConnectError as exc:
            return SendResult(None, ErrorClass.CONNECTION, f"ConnectError: {exc}", elapsed())
        except httpx.WriteTimeout as exc:
            # The body was not fully written: Clay cannot have parsed the row.
            return SendResult(None, ErrorClass.TIMEOUT, f"WriteTimeout: {exc}", elapsed())
        except httpx.ReadTimeout:
            return SendResult(
                None,
                ErrorClass.TIMEOUT,
                "ReadTimeout: no answer after the row was sent",
                elapsed(),
                uncertain=True,
            )
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            # Connection dropped: the row may or may not have been taken.
            return SendResult(
                None,
                ErrorClass.CONNECTION,
                f"{type(exc).__name__}: {exc or 'connection reset'}",
                elapsed(),
                uncertain=True,
            )
        except httpx.HTTPError as exc:  # anything else from the transport
            return SendResult(
                None, ErrorClass.CONNECTION, f"{type(exc).__name__}: {exc}", elapsed(), uncertain=True
            )
        latency = elapsed()
        error_class = classify_status(response.status_code)
        if error_class is None:
            return SendResult(response.status_code, None, "", latency)
        return SendResult(
            response.status_code,
            error_class,
            f"HTTP {response.status_code}: {printable(response.text[:300])}",
            latency,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )


_lock = threading.Lock()
_shared: tuple[int, ClayClient] | None = None


def get_client() -> ClayClient:
    """The process's client (one connection pool shared by the threads of a worker)."""
    global _shared
    pid = os.getpid()
    with _lock:
        if _shared is None or _shared[0] != pid:
            _shared = (
                pid,
                ClayClient(
                    connect_timeout=settings.CLAYOPS_HTTP_CONNECT_TIMEOUT,
                    read_timeout=settings.CLAYOPS_HTTP_READ_TIMEOUT,
                    max_connections=max(8, settings.CLAYOPS_SEND_CONCURRENCY * 2),
                ),
            )
        return _shared[1]

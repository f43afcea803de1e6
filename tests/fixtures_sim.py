"""Fixtures around the Clay simulator: import them where needed.

    from tests.fixtures_sim import callback_sink, clay_sim  # noqa: F401

The fixtures carry explicit names, so they may also be imported under other names, which keeps ruff's
F811 (a test argument redefining the imported name) quiet without a noqa on every test:

    from tests.fixtures_sim import clay_sim as _clay_sim  # noqa: F401

`clay_sim`: a started ClaySimulator on a free loopback port, no faults, stopped after the test.
Callbacks go out at once (callback_delay_s=0) so tests need not wait; set it per table if a test needs
Clay's delay. `callback_sink`: a tiny HTTP server that records what Clay's HTTP API column posts.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clayops.devtools.simulator import ClaySimulator


@pytest.fixture(name="clay_sim")
def clay_sim() -> Iterator[ClaySimulator]:
    sim = ClaySimulator("127.0.0.1", 0, callback_delay_s=0.0).start()
    try:
        yield sim
    finally:
        sim.stop()


@dataclass
class Callback:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict | list


class CallbackSink:
    """Records POSTs; answers `fail_status` to the first `fail_first` of them, then `status`."""

    def __init__(self) -> None:
        self.received: list[Callback] = []
        self.status = 200
        self.fail_first = 0
        self.fail_status = 503
        self._lock = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with sink._lock:
                    sink.received.append(
                        Callback(self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(body))
                    )
                    failing = len(sink.received) <= sink.fail_first
                    sink._lock.notify_all()
                self.send_response(sink.fail_status if failing else sink.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "11")
                self.end_headers()
                self.wfile.write(b'{"ok":true}')

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1})
        self._thread.daemon = True
        self._thread.start()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Callback]:
        """The callbacks once at least n arrived (AssertionError after `timeout`)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.received) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {n} callbacks, got {len(self.received)}")
                self._lock.wait(left)
            return list(self.received)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(name="callback_sink")
def callback_sink() -> Iterator[CallbackSink]:
    sink = CallbackSink()
    try:
        yield sink
    finally:
        sink.stop()

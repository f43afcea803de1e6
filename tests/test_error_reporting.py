"""Unhandled errors are never silent (issue 10): a request that fails is answered 500 and logged by
django.request with its traceback; with SENTRY_DSN set, the error also reaches Sentry (here a
loopback receiver standing in for it) without the lead's personal data."""

from __future__ import annotations

import gzip
import logging
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.conf import settings
from django.test import Client

from clayops import selectors


def test_an_unhandled_error_in_a_page_is_logged_with_its_traceback(operator, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("selector exploded")

    monkeypatch.setattr(selectors, "overview_cards", broken)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    try:
        client = Client(raise_request_exception=False)
        client.force_login(operator)
        assert client.get("/").status_code == 500
    finally:
        logger.removeHandler(handler)
    [record] = [r for r in records if r.levelno >= logging.ERROR]
    assert record.exc_info and record.exc_info[0] is RuntimeError
    formatted = logging.Formatter().format(record)
    assert "Traceback" in formatted and "selector exploded" in formatted


def test_errors_are_logged_to_the_console_by_the_configured_handlers():
    for name in ("django.request", "rq.worker", "clayops"):
        assert "console" in settings.LOGGING["loggers"][name]["handlers"]
    assert settings.LOGGING["loggers"]["django.request"]["level"] == "ERROR"


class Receiver:
    """Plays Sentry's ingestion endpoint on loopback: keeps every envelope posted to it."""

    def __init__(self):
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.bodies.append(body)
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.server.server_address[1]}/42"


SCRIPT = """
import django
django.setup()
from django.test import Client
from django.test.utils import setup_test_environment
import sentry_sdk
import clayops.api

setup_test_environment()

def boom(*args, **kwargs):
    secret = "ann@acme.example"  # a local variable that must not travel
    raise RuntimeError("healthz exploded")

clayops.api.JsonResponse = boom
status = Client(raise_request_exception=False).get("/healthz").status_code
sentry_sdk.flush(timeout=10)
print(status)
"""


@pytest.mark.slow
def test_with_sentry_dsn_an_unhandled_error_reaches_sentry():
    receiver = Receiver()
    try:
        env = dict(os.environ, SENTRY_DSN=receiver.dsn, DJANGO_SETTINGS_MODULE="clayops.settings_test")
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            env=env,
            cwd=settings.BASE_DIR,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.stdout.strip().endswith("500"), out.stderr[-3000:]
        assert "Traceback" in out.stderr and "healthz exploded" in out.stderr  # logged too
    finally:
        receiver.server.shutdown()
    events = b"\n".join(receiver.bodies)
    assert b"healthz exploded" in events and b"RuntimeError" in events
    assert b"ann@acme.example" not in events  # no local variables sent

"""A fault-injecting Clay simulator: a real HTTP server on loopback that plays Clay.

It plays two parts of Clay (see "Clay facts the code relies on" in docs/ARCHITECTURE.md):

- the table's **webhook source**: `POST /v3/sources/webhook/<table_id>` with one JSON row (an object) or
  a batch (an array of up to `max_batch` rows), the `x-clay-webhook-auth` token, the payload limit,
  the lifetime row cap, the workspace's token-bucket rate limit and a workspace credit pool;
- the table's **HTTP API column**: for each accepted row, after `callback_delay_s`, it POSTs the row
  plus enrichment fields derived from the row's domain to the table's `callback_url` with the table's
  `callback_headers` (clayops' shared secret), from a small pool of background threads, with retries.

Faults can be set at start (constructor, `manage.py clay_simulator` options) and at run time
(`set_faults()`, `POST /_sim/faults`): latency and jitter, a random share of 5xx answers, of 429s, of
requests that hang (client timeouts), of connections reset without an answer, of rows that are
recorded and then left hanging (the "uncertain" case: Clay got the row, the client saw a timeout), a
standing outage, scripted outage windows, and `fail_next` (the next N requests fail a given way).

`GET /_sim/stats` (or `stats()`) counts what a test or a benchmark needs to prove clayops' invariants:
answers by status, rows accepted per table, rows received again for the same `clayops_lead_id`
(`double_charges`: after a 2xx for that lead), rows accepted per wall-clock second, requests seen
during an outage, peak concurrency, credits charged and callbacks sent/failed/pending.

Standard library only; no Django import, so tests, benchmarks and scripts can use it directly:

    sim = ClaySimulator(latency_ms=50, rate_limit=10, burst=20).start()
    sim.configure_table("t_people", token="tok", callback_url="http://127.0.0.1:8000/...")
    ... POST rows to sim.webhook_url("t_people") ...
    sim.stats()["rows_accepted"]
    sim.stop()

Design notes: one `ThreadingHTTPServer` thread per connection, HTTP/1.1 keep-alive, Nagle off, each
response written with a single send, no per-request logging. All shared state sits behind one lock
held only for counter updates and decisions (never across sleeps or I/O). Sleeps (latency, hangs)
wait on the stop event, so `stop()` ends them; `stop()` also shuts the sockets of open keep-alive
connections so no handler thread outlives the server for long.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import heapq
import hmac
import http.client
import ipaddress
import json
import logging
import math
import random
import re
import socket
import socketserver
import struct
import sys
import threading
import time
import zlib
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from clayops.contract import LEAD_ID_FIELD  # plain constants, no Django

log = logging.getLogger("clayops.simulator")
AUTH_HEADER = "x-clay-webhook-auth"
WEBHOOK_PREFIX = "/v3/sources/webhook/"
CONTROL_PREFIX = "/_sim/"
MAX_CONTROL_BODY = 1_000_000
# An oversized body is read and thrown away (so the 413 reaches the client and the connection stays
# usable) up to this size; beyond it the simulator answers and closes the connection.
MAX_DRAIN_BYTES = 16 * 1024 * 1024
HISTORY_SECONDS = 3600  # per-second counts kept in stats
RECENT_ROWS = 1000  # last rows kept for tests to inspect (`recent_rows`)
DUPLICATE_IDS_SHOWN = 1000
RATE_FIELDS = ("reset_rate", "hang_rate", "error_rate", "rate_429", "accept_and_hang_rate")
FAIL_MODES = ("reset", "hang", "accept_and_hang")
OUTAGE_MODES = ("503", "reset", "hang")  # or any other status 400-599 as a string ("502")
TABLE_FIELDS = (
    "token",
    "callback_url",
    "callback_headers",
    "credits_per_row",
    "credits_from_domain",
    "row_cap",
    "callback_delay_s",
    "active",
)


def loopback_host(host: str) -> str:
    """The address to bind for `host`; ValueError unless it is a loopback address."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address; the simulator binds to loopback only") from None
    if not address.is_loopback:
        raise ValueError(f"{host} is not a loopback address; the simulator binds to 127.0.0.1 or ::1 only")
    return str(address)


# --- enrichment: deterministic in the domain --------------------------------------------------------

_INDUSTRIES = (
    "Computer Software",
    "Financial Services",
    "Hospital & Health Care",
    "Retail",
    "Manufacturing",
    "Marketing & Advertising",
    "Education",
    "Logistics & Supply Chain",
    "Real Estate",
    "Biotechnology",
)
_EMPLOYEES = (4, 12, 35, 80, 160, 420, 900, 2500, 7000, 25000)
_FREE_MAIL = frozenset({"gmail.com", "yahoo.com", "hotmail.com", "outlook.com", "icloud.com", "aol.com"})


def domain_of(row: dict) -> str:
    """The company domain a row is about: its `domain`/`website` field, else its email's domain."""
    for key in ("domain", "company_domain", "website"):
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            host = value.strip().lower().split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
            return host.removeprefix("www.")
    email = row.get("email")
    if isinstance(email, str) and "@" in email:
        host = email.rsplit("@", 1)[1].strip().lower()
        return "" if host in _FREE_MAIL else host
    return ""


def credits_for_domain(domain: str) -> int:
    """Credits a fully enriched lead costs when a table sets `credits_from_domain` (6 to 20)."""
    return 6 + zlib.crc32(domain.encode()) % 15


def enrichment_for(domain: str) -> dict[str, Any]:
    """The fields the simulated enrichment adds for a domain (always the same for the same domain)."""
    if not domain:
        return {
            "company_name": None,
            "company_domain": None,
            "employee_count": None,
            "industry": None,
            "linkedin_url": None,
            "founded_year": None,
        }
    digest = zlib.crc32(domain.encode())
    words = [w for w in re.split(r"[-_]+", domain.split(".", 1)[0]) if w]
    return {
        "company_name": " ".join(w.capitalize() for w in words) or domain,
        "company_domain": domain,
        "employee_count": _EMPLOYEES[digest % len(_EMPLOYEES)],
        "industry": _INDUSTRIES[(digest >> 8) % len(_INDUSTRIES)],
        "linkedin_url": "https://www.linkedin.com/company/" + ("-".join(words).lower() or domain),
        "founded_year": 1950 + (digest >> 16) % 74,
    }


# --- settings (faults and workspace limits) and tables -----------------------------------------------


@dataclasses.dataclass
class Settings:
    """Everything `set_faults()` / `POST /_sim/faults` can change, with the constructor's defaults."""

    # Defaults for tables that do not set their own.
    row_cap: int = 50_000  # lifetime submissions (rows) per webhook
    credits_per_row: float = 6
    callback_delay_s: float = 1.0
    auto_create: bool = True  # unknown table ids are created with defaults (else 404)
    payload_limit: int = 100_000  # bytes; a larger Content-Length gets 413
    max_batch: int = 10  # rows per JSON array
    # Workspace (shared by every table).
    rate_limit: float = 0  # records/s of the token bucket; 0 = unlimited
    burst: int = 20
    # A fixed one-second window: at most this many rows per wall-clock second (0 = off). Clay has not
    # said whether its limit is a token bucket or a fixed window; with both set, both must hold.
    window_limit: int = 0
    credit_pool: float | None = None  # credits left in the workspace; None = unlimited; 402 when short
    # Faults.
    latency_ms: float = 0
    jitter_ms: float = 0
    error_rate: float = 0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    rate_429: float = 0
    retry_after: int = 1  # Retry-After of injected 429s
    hang_rate: float = 0
    hang_seconds: float = 30
    reset_rate: float = 0
    accept_and_hang_rate: float = 0
    outage: str | None = None  # "503" | "reset" | "hang" (or another status) for every request
    outage_script: tuple[dict, ...] = ()  # ({"start_after_s", "duration_s", "mode"}, ...)
    fail_next: int = 0  # the next N webhook requests fail as fail_next_status says
    fail_next_status: int | str = 503  # a status, or "reset" | "hang" | "accept_and_hang"
    # The HTTP API column.
    callback_fail_rate: float = 0  # rows whose enrichment fails (credits_used 0)
    duplicate_callback_rate: float = 0  # rows whose callback is sent twice

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["error_statuses"] = list(self.error_statuses)
        data["outage_script"] = [dict(window) for window in self.outage_script]
        return data


def _number(name: str, value: Any, *, low: float = 0, high: float | None = None, integer: bool = False):
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if integer and value != int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be between {low} and {high if high is not None else 'inf'}")
    return int(value) if integer else float(value)


def _mode(name: str, value: Any, extra: tuple[str, ...]) -> str:
    text = str(value).strip().lower() if value is not None else ""
    if text in extra or (text.isdigit() and 400 <= int(text) <= 599):
        return text
    raise ValueError(f"{name} must be one of {', '.join(extra)} or an HTTP status 400-599, got {value!r}")


def _coerce(name: str, value: Any) -> Any:
    if name in RATE_FIELDS or name in ("callback_fail_rate", "duplicate_callback_rate"):
        return _number(name, value, high=1)
    if name in ("row_cap", "payload_limit", "burst", "fail_next", "window_limit"):
        return _number(name, value, integer=True)
    if name in ("max_batch", "retry_after"):
        return _number(name, value, low=1, integer=True)
    if name in (
        "credits_per_row",
        "callback_delay_s",
        "rate_limit",
        "latency_ms",
        "jitter_ms",
        "hang_seconds",
    ):
        return _number(name, value)
    if name == "credit_pool":
        return None if value is None else _number(name, value)
    if name == "auto_create":
        if not isinstance(value, bool):
            raise ValueError(f"auto_create must be true or false, got {value!r}")
        return value
    if name == "error_statuses":
        statuses = [value] if isinstance(value, int) else list(value or ())
        if not statuses:
            raise ValueError("error_statuses must name at least one status")
        return tuple(_number(name, s, low=400, high=599, integer=True) for s in statuses)
    if name == "outage":
        return None if value is None or value == "" else _mode(name, value, OUTAGE_MODES)
    if name == "fail_next_status":
        mode = _mode(name, value, FAIL_MODES)
        return int(mode) if mode.isdigit() else mode
    if name == "outage_script":
        windows = []
        for window in value or ():
            if not isinstance(window, dict):
                raise ValueError("outage_script must be a list of {start_after_s, duration_s, mode}")
            windows.append(
                {
                    "start_after_s": _number("start_after_s", window.get("start_after_s", 0)),
                    "duration_s": _number("duration_s", window.get("duration_s")),
                    "mode": _mode("mode", window.get("mode", "503"), OUTAGE_MODES),
                }
            )
        return tuple(windows)
    raise ValueError(f"unknown setting {name!r}")


SETTING_NAMES = frozenset(field.name for field in dataclasses.fields(Settings))


@dataclasses.dataclass
class Table:
    token: str | None = None  # when set, x-clay-webhook-auth must equal it (else 401)
    callback_url: str | None = None
    callback_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    credits_per_row: float | None = None  # None: the simulator's default
    credits_from_domain: bool = False  # charge credits_for_domain(domain) instead
    row_cap: int | None = None  # None: the simulator's default
    callback_delay_s: float | None = None  # None: the simulator's default
    active: bool = True  # False: the webhook was deleted/replaced (404), even with auto_create
    rows: int = 0  # lifetime submissions counted against the row cap

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _table_value(name: str, value: Any) -> Any:
    if name == "token":
        return None if value in (None, "") else str(value)
    if name == "callback_url":
        if value in (None, ""):
            return None
        parts = urlsplit(str(value))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"callback_url must be an http(s) URL, got {value!r}")
        return str(value)
    if name == "callback_headers":
        if not isinstance(value or {}, dict):
            raise ValueError("callback_headers must be an object of header names to values")
        return {str(k): str(v) for k, v in (value or {}).items()}
    if name in ("credits_per_row", "callback_delay_s"):
        return None if value is None else _number(name, value)
    if name == "row_cap":
        return None if value is None else _number(name, value, integer=True)
    if name in ("credits_from_domain", "active"):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    raise ValueError(f"unknown table setting {name!r}; known: {', '.join(TABLE_FIELDS)}")


# --- counters -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Counters:
    """Thread-safe only under `ClaySimulator.lock`; `stats()` returns a JSON-ready copy."""

    started: float = dataclasses.field(default_factory=time.monotonic)
    requests_total: int = 0  # webhook requests (the control API is counted apart)
    control_requests: int = 0
    by_status: dict[str, int] = dataclasses.field(default_factory=dict)  # "200", "429", "reset", ...
    resets: int = 0
    hangs: int = 0
    injected_errors: int = 0
    injected_429: int = 0
    rate_limited: int = 0  # 429s of the workspace token bucket
    payment_required: int = 0  # 402s of the credit pool
    requests_during_outage: int = 0
    inflight: int = 0
    inflight_max: int = 0
    rows_accepted: int = 0  # rows Clay took, accept_and_hang ones included
    rows_uncertain: int = 0  # rows taken under accept_and_hang (the client saw no answer in time)
    rows_without_lead_id: int = 0
    rows_by_table: dict[str, int] = dataclasses.field(default_factory=dict)
    lead_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    ok_leads: set[str] = dataclasses.field(default_factory=set)  # leads answered 2xx
    duplicate_rows: int = 0  # rows for a lead id received before
    double_charges: int = 0  # rows for a lead id already answered 2xx
    per_second: dict[int, int] = dataclasses.field(default_factory=dict)  # epoch second -> rows
    # When each accepted row arrived (epoch seconds), for sliding-window pacing checks (last 200k).
    arrivals: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=200_000))
    max_per_second: int = 0
    credits_charged: float = 0
    callbacks_sent: int = 0
    callbacks_failed: int = 0
    callbacks_retried: int = 0
    callbacks_duplicated: int = 0
    callbacks_dropped: int = 0  # the callback queue was full
    callbacks_inflight: int = 0


@dataclasses.dataclass
class _Callback:
    generation: int
    url: str
    headers: dict[str, str]
    row: dict
    credits: float
    failed: bool
    attempt: int = 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # listen backlog: many clients connect at once in benchmarks

    def __init__(self, address: tuple[str, int], sim: ClaySimulator) -> None:
        self.sim = sim
        self.connections: set[socket.socket] = set()
        self.resets: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() resolves the host's FQDN (a DNS lookup); loopback needs none.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def shutdown_request(self, request) -> None:
        with self.sim.lock:
            reset = request in self.resets
            self.resets.discard(request)
        if reset:
            # SO_LINGER 0 is set: close() sends RST at once. No shutdown(SHUT_WR), which would send FIN.
            request.close()
        else:
            super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the client went away (timeouts, resets): expected here
        log.exception("Clay simulator: error while handling a request from %s", client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ClaySimulator/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 120  # an idle keep-alive connection is closed after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.sim.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.server.sim.lock:
            self.server.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a log line per request would cost more than the request

    def do_GET(self) -> None:
        self.server.sim._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.sim._handle(self, "POST")

    def do_DELETE(self) -> None:
        self.server.sim._handle(self, "DELETE")


def _response_bytes(status: int, payload: Any, headers: tuple[tuple[str, str], ...], close: bool) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    head = f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    for name, value in headers:
        head += f"{name}: {value}\r\n"
    if close:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode("latin-1") + body


def _plain(number: float | None) -> float | int | None:
    """6.0 -> 6 in JSON; other numbers unchanged."""
    return int(number) if isinstance(number, float) and number.is_integer() else number


def _error(error: str, **extra: Any) -> dict[str, Any]:
    return {"status": "error", "error": error, **extra}


# --- the simulator ------------------------------------------------------------------------------------


class ClaySimulator:
    """A Clay webhook source + HTTP API column on loopback, with fault injection. See the module doc."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        seed: int | None = None,
        callback_workers: int = 4,
        callback_retries: int = 3,
        callback_backoff_s: float = 0.2,
        callback_timeout_s: float = 10.0,
        callback_queue_max: int = 100_000,
        **settings: Any,
    ) -> None:
        self.host = loopback_host(host)
        self.port = port
        self.lock = threading.Lock()  # the one lock: counters, settings, tables, callback queue
        self._wakeup = threading.Condition(self.lock)  # callback workers wait on it
        self._stopping = threading.Event()
        self._settings = self._updated(Settings(), settings)
        self._initial = (dataclasses.replace(self._settings), seed)
        self._seed = seed
        self._rng = random.Random(seed)
        self.tables: dict[str, Table] = {}
        self.counters = Counters()
        self.recent_rows: deque[tuple[str, dict]] = deque(maxlen=RECENT_ROWS)
        self._tokens = float(self._settings.burst)
        self._bucket_at = time.monotonic()
        self._window_second, self._window_rows = 0, 0
        self._pool_left = self._settings.credit_pool
        self._script_started = time.monotonic()
        self._generation = 0
        self._callbacks: list[tuple[float, int, _Callback]] = []  # heap by due time
        self._seq = 0
        self._callback_workers = max(1, callback_workers)
        self._callback_retries = callback_retries
        self._callback_backoff_s = callback_backoff_s
        self._callback_timeout_s = callback_timeout_s
        self._callback_queue_max = callback_queue_max
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    # -- life cycle

    def start(self) -> ClaySimulator:
        if self._server is not None:
            return self
        server_class = _Server6 if ":" in self.host else _Server
        self._server = server_class((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._stopping.clear()
        serve = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="clay-sim", daemon=True
        )
        self._threads = [serve] + [
            threading.Thread(target=self._callback_worker, name=f"clay-sim-callback-{i}", daemon=True)
            for i in range(self._callback_workers)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; end hangs and sleeps, drop pending callbacks, close open connections."""
        server = self._server
        if server is None:
            return
        self._stopping.set()
        with self._wakeup:
            self._wakeup.notify_all()
        server.shutdown()
        server.server_close()
        with self.lock:
            connections = list(server.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 3  # a callback POST in flight may take its timeout; do not wait for it
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        self._server = None
        self._threads = []

    def __enter__(self) -> ClaySimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def webhook_url(self, table_id: str) -> str:
        return f"{self.url}{WEBHOOK_PREFIX}{table_id}"

    # -- configuration

    def _updated(self, current: Settings, changes: dict[str, Any]) -> Settings:
        values = {}
        for name, value in changes.items():
            if name not in SETTING_NAMES:
                raise ValueError(f"unknown setting {name!r}; known: seed, {', '.join(sorted(SETTING_NAMES))}")
            values[name] = _coerce(name, value)
        new = dataclasses.replace(current, **values)
        if sum(getattr(new, name) for name in RATE_FIELDS) > 1:
            raise ValueError(f"{' + '.join(RATE_FIELDS)} must not exceed 1")
        return new

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        """Partial update of faults and workspace limits (`outage=None` clears an outage).

        `seed` re-seeds the random generator; `outage_script` starts counting now; a new
        `rate_limit`/`burst` refills the bucket; a new `credit_pool` is the credits left from now.
        """
        seed_given = "seed" in changes
        seed = changes.pop("seed", None)
        with self.lock:
            new = self._updated(self._settings, changes)
            if seed_given:
                self._seed = seed
                self._rng.seed(seed)
            if "outage_script" in changes:
                self._script_started = time.monotonic()
            if "rate_limit" in changes or "burst" in changes:
                self._tokens, self._bucket_at = float(new.burst), time.monotonic()
            if "credit_pool" in changes:
                self._pool_left = new.credit_pool
            self._settings = new
            return self._settings_dict()

    def faults(self) -> dict[str, Any]:
        with self.lock:
            return self._settings_dict()

    def _settings_dict(self) -> dict[str, Any]:
        return {**self._settings.as_dict(), "seed": self._seed}

    def configure_table(self, table_id: str, **config: Any) -> dict[str, Any]:
        """Create or update a table (partial): token, callback_url, callback_headers, credits_per_row,
        credits_from_domain, row_cap, callback_delay_s, active."""
        values = {name: _table_value(name, value) for name, value in config.items()}
        with self.lock:
            table = self.tables.setdefault(table_id, Table())
            for name, value in values.items():
                setattr(table, name, value)
            return table.as_dict()

    def delete_table(self, table_id: str) -> dict[str, Any]:
        """The webhook is gone: 404 from now on, auto-create or not (like a replaced webhook)."""
        return self.configure_table(table_id, active=False)

    def table(self, table_id: str) -> dict[str, Any] | None:
        with self.lock:
            table = self.tables.get(table_id)
            return None if table is None else table.as_dict()

    def reset(self, *, config: bool = False) -> None:
        """Clear counters, row-cap counts, the bucket and pending callbacks; with config=True also go
        back to the constructor's settings and forget every table."""
        with self.lock:
            if config:
                settings, seed = self._initial
                self._settings = dataclasses.replace(settings)
                self._seed = seed
                self._rng.seed(seed)
                self.tables.clear()
                self._script_started = time.monotonic()
            for table in self.tables.values():
                table.rows = 0
            self.counters = Counters()
            self.recent_rows.clear()
            self._tokens, self._bucket_at = float(self._settings.burst), time.monotonic()
            self._window_second, self._window_rows = 0, 0
            self._pool_left = self._settings.credit_pool
            self._generation += 1
            self._callbacks.clear()

    # -- reading counters

    def received(self, lead_id: Any) -> int:
        """How many rows carrying this clayops_lead_id Clay took."""
        with self.lock:
            return self.counters.lead_counts.get(str(lead_id), 0)

    def arrival_times(self) -> list[float]:
        """Epoch times at which accepted rows arrived, oldest first (the last 200,000)."""
        with self.lock:
            return list(self.counters.arrivals)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            c = self.counters
            duplicate_ids = [lead for lead, n in c.lead_counts.items() if n > 1]
            return {
                "uptime_s": round(time.monotonic() - c.started, 3),
                "requests_total": c.requests_total,
                "requests_by_status": dict(c.by_status),
                "control_requests": c.control_requests,
                "resets": c.resets,
                "hangs": c.hangs,
                "injected_errors": c.injected_errors,
                "injected_429": c.injected_429,
                "rate_limited": c.rate_limited,
                "payment_required": c.payment_required,
                "requests_during_outage": c.requests_during_outage,
                "outage_active": self._outage_mode_locked(time.monotonic()),
                "concurrent_requests": c.inflight,
                "concurrent_requests_max": c.inflight_max,
                "rows_accepted": c.rows_accepted,
                "rows_uncertain": c.rows_uncertain,
                "rows_without_lead_id": c.rows_without_lead_id,
                "rows_received_by_table": dict(c.rows_by_table),
                "received_by_lead": {
                    "leads": len(c.lead_counts),
                    "duplicate_leads": len(duplicate_ids),
                    "duplicate_lead_ids": duplicate_ids[:DUPLICATE_IDS_SHOWN],
                    "duplicate_rows": c.duplicate_rows,
                    "double_charges": c.double_charges,
                },
                "max_rows_per_second": c.max_per_second,
                "rows_per_second": {str(second): n for second, n in c.per_second.items()},
                "credits_charged": _plain(c.credits_charged),
                "credit_pool_remaining": _plain(self._pool_left),
                "callbacks_sent": c.callbacks_sent,
                "callbacks_failed": c.callbacks_failed,
                "callbacks_pending": len(self._callbacks) + c.callbacks_inflight,
                "callbacks_retried": c.callbacks_retried,
                "callbacks_duplicated": c.callbacks_duplicated,
                "callbacks_dropped": c.callbacks_dropped,
            }

    # -- HTTP

    def _handle(self, h: _Handler, method: str) -> None:
        path = h.path.split("?", 1)[0]
        if path.startswith(WEBHOOK_PREFIX):
            if method != "POST":
                self._send(h, 405, _error("use POST"), control=True)
            else:
                self._webhook(h, unquote(path[len(WEBHOOK_PREFIX) :]))
        elif path.startswith(CONTROL_PREFIX):
            self._control(h, method, path[len(CONTROL_PREFIX) :].strip("/"))
        else:
            self._send(h, 404, _error(f"no route for {path}"), control=True)

    def _send(
        self,
        h: _Handler,
        status: int,
        payload: Any,
        headers: tuple[tuple[str, str], ...] = (),
        *,
        control: bool = False,
    ) -> None:
        with self.lock:
            if control:
                self.counters.control_requests += 1
            else:
                by_status = self.counters.by_status
                by_status[str(status)] = by_status.get(str(status), 0) + 1
        try:
            h.wfile.write(_response_bytes(status, payload, headers, h.close_connection))
        except OSError:
            h.close_connection = True

    def _count(self, key: str) -> None:
        with self.lock:
            by_status = self.counters.by_status
            by_status[key] = by_status.get(key, 0) + 1

    def _read_body(self, h: _Handler, limit: int) -> tuple[bytes | None, int | None]:
        """(body, None), or (None, status) when the length is missing, bad or over `limit`."""
        if "chunked" in h.headers.get("Transfer-Encoding", "").lower():
            h.close_connection = True  # the chunked body is not read: the connection cannot be reused
            return None, 411
        try:
            length = int(h.headers.get("Content-Length", "0"))
            if length < 0:
                raise ValueError
        except ValueError:
            h.close_connection = True
            return None, 400
        if length > limit:
            if length > MAX_DRAIN_BYTES:
                h.close_connection = True
                return None, 413
            left = length
            while left > 0:
                chunk = h.rfile.read(min(left, 65536))
                if not chunk:
                    h.close_connection = True
                    break
                left -= len(chunk)
            return None, 413
        body = h.rfile.read(length) if length else b""
        if len(body) != length:
            h.close_connection = True
            return None, 400
        return body, None

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the simulator stops meanwhile; False when it stopped."""
        return seconds <= 0 or not self._stopping.wait(seconds)

    def _reset_connection(self, h: _Handler) -> None:
        with contextlib.suppress(OSError):
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.close_connection = True
        with self.lock:
            self._server.resets.add(h.connection)  # type: ignore[union-attr]

    def _webhook(self, h: _Handler, table_id: str) -> None:
        with self.lock:
            c = self.counters
            c.requests_total += 1
            c.inflight += 1
            c.inflight_max = max(c.inflight_max, c.inflight)
            generation = self._generation
        try:
            self._webhook_request(h, table_id)
        finally:
            with self.lock:
                if generation == self._generation:
                    self.counters.inflight -= 1

    def _webhook_request(self, h: _Handler, table_id: str) -> None:
        s = self._settings
        body, status = self._read_body(h, s.payload_limit)
        rows, problem = self._parse(h, body, s.max_batch) if status is None else (None, None)
        delay = s.latency_ms + (self._rng.uniform(0, s.jitter_ms) if s.jitter_ms else 0)
        if not self._sleep(delay / 1000):
            return self._abort(h)
        answer = None
        with self.lock:
            fault = self._pick_fault_locked()
            if fault is None or fault == "accept_and_hang":
                answer = self._process_locked(table_id, h, rows, status, problem, fault is not None)
        if fault == "reset":
            return self._reset_connection(h)
        if fault == "hang":
            if not self._sleep(s.hang_seconds):
                return self._abort(h)
            return self._send(h, 504, _error("gateway timeout"))
        if isinstance(fault, int):
            if fault == 429:
                headers: tuple[tuple[str, str], ...] = (("Retry-After", str(s.retry_after)),)
                return self._send(h, 429, _error("rate limit exceeded", retry_after=s.retry_after), headers)
            return self._send(h, fault, _error(f"simulated {fault}"))
        assert answer is not None
        code, payload, headers = answer
        if fault == "accept_and_hang" and code == 200 and not self._sleep(s.hang_seconds):
            return self._abort(h)  # recorded, never answered: the simulator stopped meanwhile
        self._send(h, code, payload, headers)

    def _abort(self, h: _Handler) -> None:
        """The simulator stopped mid-request: close without an answer."""
        self._count("no_response")
        h.close_connection = True

    def _parse(self, h: _Handler, body: bytes | None, max_batch: int) -> tuple[list[dict] | None, str | None]:
        content_type = h.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            return None, f"content type must be application/json, got {content_type or 'none'!r}"
        try:
            data = json.loads(body or b"")
        except (ValueError, UnicodeDecodeError) as exc:
            return None, f"body is not valid JSON: {exc}"
        rows = data if isinstance(data, list) else [data]
        if not rows or not all(isinstance(row, dict) for row in rows):
            return None, "body must be a JSON object (one row) or an array of objects"
        if len(rows) > max_batch:
            return None, f"at most {max_batch} rows per request, got {len(rows)}"
        return rows, None

    def _outage_mode_locked(self, now: float) -> str | None:
        s = self._settings
        if s.outage is not None:
            return s.outage
        elapsed = now - self._script_started
        for window in s.outage_script:
            if window["start_after_s"] <= elapsed < window["start_after_s"] + window["duration_s"]:
                return window["mode"]
        return None

    def _pick_fault_locked(self) -> int | str | None:
        """What goes wrong with this request: a status, "reset", "hang", "accept_and_hang" or None."""
        fault = self._choose_fault_locked()
        c = self.counters
        if fault == "reset":
            c.resets += 1
            c.by_status["reset"] = c.by_status.get("reset", 0) + 1
        elif fault == "hang":
            c.hangs += 1
        elif fault == 429:
            c.injected_429 += 1
        elif isinstance(fault, int):
            c.injected_errors += 1
        return fault

    def _choose_fault_locked(self) -> int | str | None:
        s = self._settings
        outage = self._outage_mode_locked(time.monotonic())
        if outage is not None:
            self.counters.requests_during_outage += 1
            return int(outage) if outage.isdigit() else outage
        if s.fail_next > 0:
            s.fail_next -= 1
            return s.fail_next_status
        if not (s.reset_rate or s.hang_rate or s.error_rate or s.rate_429 or s.accept_and_hang_rate):
            return None
        draw = self._rng.random()
        for name, fault in (
            ("reset_rate", "reset"),
            ("hang_rate", "hang"),
            ("error_rate", "error"),
            ("rate_429", 429),
            ("accept_and_hang_rate", "accept_and_hang"),
        ):
            share = getattr(s, name)
            if draw < share:
                return self._rng.choice(s.error_statuses) if fault == "error" else fault
            draw -= share
        return None

    def _process_locked(
        self,
        table_id: str,
        h: _Handler,
        rows: list[dict] | None,
        status: int | None,
        problem: str | None,
        uncertain: bool,
    ) -> tuple[int, dict, tuple[tuple[str, str], ...]]:
        """Clay's own answer to a request that no fault took over. Runs under the lock: keep it short."""
        s, c = self._settings, self.counters
        table = self.tables.get(table_id)
        if table is None and s.auto_create and table_id and "/" not in table_id:
            table = self.tables[table_id] = Table()
        refused = self._refusal_locked(table_id, table, h, rows, status, problem)
        if refused is not None:
            return refused
        assert table is not None and rows is not None
        n = len(rows)
        if s.rate_limit > 0:
            now = time.monotonic()
            self._tokens = min(float(s.burst), self._tokens + (now - self._bucket_at) * s.rate_limit)
            self._bucket_at = now
            if n > self._tokens:
                wait = max(1, math.ceil((n - self._tokens) / s.rate_limit))
                c.rate_limited += 1
                return 429, _error("rate limit exceeded", retry_after=wait), (("Retry-After", str(wait)),)
        if s.window_limit > 0:
            second = int(time.time())
            if second != self._window_second:
                self._window_second, self._window_rows = second, 0
            if self._window_rows + n > s.window_limit:
                c.rate_limited += 1
                return 429, _error("rate limit exceeded (window)", retry_after=1), (("Retry-After", "1"),)
        failed = [bool(s.callback_fail_rate) and self._rng.random() < s.callback_fail_rate for _ in rows]
        credits = [
            0.0 if bad else self._row_credits(table, row, s) for row, bad in zip(rows, failed, strict=True)
        ]
        needed = sum(credits)
        if self._pool_left is not None and needed > self._pool_left:
            c.payment_required += 1
            return 402, _error("workspace is out of credits", credits_left=_plain(self._pool_left)), ()
        if s.rate_limit > 0:
            self._tokens -= n
        if s.window_limit > 0:
            self._window_rows += n
        if self._pool_left is not None:
            self._pool_left -= needed
        self._accept_locked(table_id, table, rows, credits, failed, uncertain)
        return 200, {"status": "ok", "accepted": n}, ()

    def _refusal_locked(
        self,
        table_id: str,
        table: Table | None,
        h: _Handler,
        rows: list[dict] | None,
        status: int | None,
        problem: str | None,
    ) -> tuple[int, dict, tuple[tuple[str, str], ...]] | None:
        """Clay's refusals that do not depend on the rate or the credits: 404, 401, 413, 411, 422."""
        s = self._settings
        if table is None or not table.active:
            return 404, _error(f"webhook {table_id} not found"), ()
        if table.token is not None and not hmac.compare_digest(
            h.headers.get(AUTH_HEADER, "").encode(), table.token.encode()
        ):
            return 401, _error(f"missing or wrong {AUTH_HEADER} header"), ()
        if status == 413:
            return 413, _error(f"payload too large: the limit is {s.payload_limit} bytes"), ()
        if status is not None:
            return status, _error("a Content-Length body is required"), ()
        if problem is not None or rows is None:
            return 422, _error(problem or "bad request"), ()
        cap = s.row_cap if table.row_cap is None else table.row_cap
        if table.rows + len(rows) > cap:
            message = f"This webhook has reached its submission limit of {cap} rows; create a new webhook"
            return 404, _error("webhook submission limit reached", message=message), ()
        return None

    def _accept_locked(
        self,
        table_id: str,
        table: Table,
        rows: list[dict],
        credits: list[float],
        failed: list[bool],
        uncertain: bool,
    ) -> None:
        """Count accepted rows (charges, duplicates, the busiest second) and queue their callbacks."""
        s, c = self._settings, self.counters
        n = len(rows)
        table.rows += n
        c.rows_accepted += n
        c.rows_by_table[table_id] = c.rows_by_table.get(table_id, 0) + n
        if uncertain:
            c.rows_uncertain += n
        c.credits_charged += sum(credits)
        second = int(time.time())
        count = c.per_second.get(second)
        if count is None and len(c.per_second) >= HISTORY_SECONDS:
            del c.per_second[next(iter(c.per_second))]
        c.per_second[second] = count = (count or 0) + n
        c.max_per_second = max(c.max_per_second, count)
        c.arrivals.extend([time.time()] * n)
        leads = []
        delay = s.callback_delay_s if table.callback_delay_s is None else table.callback_delay_s
        due = time.monotonic() + delay
        for row, row_credits, bad in zip(rows, credits, failed, strict=True):
            self.recent_rows.append((table_id, row))
            lead = row.get(LEAD_ID_FIELD)
            if lead is None:
                c.rows_without_lead_id += 1
                continue
            lead = str(lead)
            leads.append(lead)
            seen = c.lead_counts.get(lead, 0)
            if seen:
                c.duplicate_rows += 1
                if lead in c.ok_leads:
                    c.double_charges += 1
            c.lead_counts[lead] = seen + 1
            if table.callback_url:
                job = _Callback(
                    self._generation, table.callback_url, table.callback_headers, row, row_credits, bad
                )
                self._queue_callback_locked(due, job)
                if s.duplicate_callback_rate and self._rng.random() < s.duplicate_callback_rate:
                    c.callbacks_duplicated += 1
                    self._queue_callback_locked(due + 0.05, dataclasses.replace(job))
        if not uncertain:
            c.ok_leads.update(leads)

    @staticmethod
    def _row_credits(table: Table, row: dict, s: Settings) -> float:
        if table.credits_from_domain:
            domain = domain_of(row)
            if domain:
                return float(credits_for_domain(domain))
        return s.credits_per_row if table.credits_per_row is None else table.credits_per_row

    # -- the control API

    def _control(self, h: _Handler, method: str, route: str) -> None:
        body, status = self._read_body(h, MAX_CONTROL_BODY)
        if status is not None:
            return self._send(h, status, _error("bad or too large body"), control=True)
        try:
            data = json.loads(body) if body and body.strip() else {}
        except (ValueError, UnicodeDecodeError):
            return self._send(h, 400, _error("body is not valid JSON"), control=True)
        if method == "POST" and not isinstance(data, dict):
            return self._send(h, 400, _error("body must be a JSON object"), control=True)
        try:
            code, payload = self._control_route(method, route, data)
        except ValueError as exc:
            code, payload = 400, _error(str(exc))
        self._send(h, code, payload, control=True)

    def _control_route(self, method: str, route: str, data: dict) -> tuple[int, Any]:
        parts = route.split("/", 1)
        if (method, route) == ("GET", "health"):
            return 200, {"ok": True}
        if (method, route) == ("GET", "stats"):
            return 200, self.stats()
        if route == "faults":
            if method == "GET":
                return 200, self.faults()
            if method == "POST":
                return 200, self.set_faults(**data)
        if (method, route) == ("POST", "reset"):
            self.reset(config=bool(data.get("config", False)))
            return 200, {"ok": True}
        if (method, route) == ("GET", "tables"):
            with self.lock:
                return 200, {tid: table.as_dict() for tid, table in self.tables.items()}
        if parts[0] == "tables" and len(parts) == 2 and parts[1]:
            table_id = unquote(parts[1])
            if method == "POST":
                return 200, self.configure_table(table_id, **data)
            if method == "DELETE":
                return 200, self.delete_table(table_id)
            if method == "GET":
                table = self.table(table_id)
                return (200, table) if table is not None else (404, _error(f"no table {table_id}"))
        return 404, _error(f"no control route {method} /_sim/{route}")

    # -- the HTTP API column (callbacks)

    def _queue_callback_locked(self, due: float, job: _Callback) -> None:
        if len(self._callbacks) >= self._callback_queue_max:
            self.counters.callbacks_dropped += 1
            return
        self._seq += 1
        heapq.heappush(self._callbacks, (due, self._seq, job))
        self._wakeup.notify()

    def _callback_worker(self) -> None:
        connections: dict[tuple[str, str], http.client.HTTPConnection] = {}
        try:
            while True:
                with self._wakeup:
                    while not self._stopping.is_set():
                        now = time.monotonic()
                        if self._callbacks and self._callbacks[0][0] <= now:
                            break
                        self._wakeup.wait(self._callbacks[0][0] - now if self._callbacks else None)
                    if self._stopping.is_set():
                        return
                    _, _, job = heapq.heappop(self._callbacks)
                    self.counters.callbacks_inflight += 1
                delivered, retry = self._post_callback(connections, job)
                with self._wakeup:
                    if job.generation != self._generation:
                        continue
                    c = self.counters
                    c.callbacks_inflight -= 1
                    if delivered:
                        c.callbacks_sent += 1
                    elif retry and job.attempt < self._callback_retries and not self._stopping.is_set():
                        job.attempt += 1
                        c.callbacks_retried += 1
                        backoff = self._callback_backoff_s * 2 ** (job.attempt - 1)
                        self._queue_callback_locked(time.monotonic() + backoff, job)
                    else:
                        c.callbacks_failed += 1
        finally:
            for conn in connections.values():
                conn.close()

    def _post_callback(
        self, connections: dict[tuple[str, str], http.client.HTTPConnection], job: _Callback
    ) -> tuple[bool, bool]:
        """(delivered, worth retrying). One keep-alive connection per worker and callback host."""
        payload = dict(job.row)
        if job.failed:
            payload.update(enrichment_status="failed", credits_used=0)
        else:
            payload.update(enrichment_for(domain_of(job.row)))
            payload.update(enrichment_status="ok", credits_used=_plain(job.credits))
        payload[LEAD_ID_FIELD] = job.row.get(LEAD_ID_FIELD)
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        parts = urlsplit(job.url)
        key = (parts.scheme, parts.netloc)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"Content-Type": "application/json", "User-Agent": "ClaySimulator/1.0", **job.headers}
        for _ in range(2):  # a kept-alive connection the other side closed: once more on a fresh one
            conn = connections.get(key)
            reused = conn is not None
            if conn is None:
                factory = (
                    http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
                )
                conn = connections[key] = factory(
                    parts.hostname or "", parts.port, timeout=self._callback_timeout_s
                )
            try:
                conn.request("POST", target, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                del connections[key]
                if reused:
                    continue
                return False, True
            if 200 <= response.status < 300:
                return True, False
            return False, response.status in (408, 429) or response.status >= 500
        return False, True

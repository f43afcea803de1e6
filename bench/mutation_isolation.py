"""pytest plugin for mutation testing (bench/mutation.sh): one test database and one Redis per worker slot.

mutmut forks one process per mutant and runs pytest in it, up to --max-children at once. The test
settings give every process of one run the same SQLite file and the same private valkey-server, so
two mutants tested at the same moment would flush each other's Redis (`flushdb`, and one breaker
test calls `flushall`) and share a database file. Each pytest process therefore takes a free slot
(an flock on var/mutslots/<k>.lock, held until it exits) and uses that slot's own valkey-server (started
on first use, kept for the next process of the slot) and its own test database (kept with --reuse-db).

Loaded only by the mutation job (`-p bench.mutation_isolation` in [tool.mutmut] pytest_add_cli_args).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

MAX_SLOTS = 16
_slot: tuple[int, int, object] | None = None  # (pid, slot, open lock file)


def _slots_dir() -> Path:
    return Path(os.environ.get("CLAYOPS_MUTATION_SLOTS", Path.cwd() / "var" / "mutslots"))


def _take_slot() -> int:
    """This process' slot: the first whose lock is free, held until the process exits."""
    global _slot
    pid = os.getpid()
    if _slot is not None and _slot[0] == pid:
        return _slot[1]
    directory = _slots_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for k in range(MAX_SLOTS):
        handle = open(directory / f"{k}.lock", "w")  # noqa: SIM115 (kept open: the lock lives with it)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _slot = (pid, k, handle)
        return k
    raise RuntimeError(f"no free mutation slot among {MAX_SLOTS} in {directory}")


def _start_detached(server) -> None:
    """Start the slot's server, which outlives this process, without our stdout and stderr: it must not
    keep the pipe of whoever reads mutmut's output open after mutmut has exited."""
    saved = os.dup(1), os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        server.start()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    from django.conf import settings
    from django.db import connections

    from clayops.devtools.embedded_redis import EmbeddedRedis

    slot = _take_slot()
    server = EmbeddedRedis(_slots_dir() / str(slot))
    if not server.is_running():
        _start_detached(server)
    settings.REDIS_URL = server.url
    for queue in settings.RQ_QUEUES.values():
        queue["URL"] = server.url
    os.environ["REDIS_URL"] = server.url
    test_db = settings.DATABASES["default"].setdefault("TEST", {})
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        test_db["NAME"] = str(_slots_dir() / f"test-{slot}.sqlite3")
    else:
        test_db["NAME"] = f"test_clayops_mutation_{slot}"
    connections.close_all()  # a forked process must not reuse its parent's connection
    connections["default"].settings_dict["TEST"] = test_db

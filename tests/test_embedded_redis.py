"""Without REDIS_URL clayops runs and talks to a real, private Redis-compatible server process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings

from clayops.devtools.embedded_redis import EmbeddedRedis, server_binary

ROOT = Path(settings.BASE_DIR)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exe_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/exe")


def test_it_runs_the_test_suite_against_a_started_server_process():
    client = redis.Redis.from_url(settings.REDIS_URL)
    info = client.info("server")
    assert _exe_of(info["process_id"]) == str(server_binary())
    assert info["tcp_port"] == 0  # unix socket only: never the machine's port 6379
    client.set("clayops:probe", "1")
    assert client.get("clayops:probe") == b"1"


@pytest.mark.slow  # starts a valkey-server process of its own
def test_it_starts_and_stops_a_private_server(tmp_path):
    server = EmbeddedRedis(tmp_path / "r")
    assert server.start() is True
    try:
        assert server.start() is False  # second start finds it running
        pid = server.client().info("server")["process_id"]
        assert _exe_of(pid) == str(server_binary())
    finally:
        server.stop()
    assert not server.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.slow  # `manage.py up`: web server, workers, simulator and valkey processes
@pytest.mark.own_database  # its own SQLite in tmp_path
def test_it_brings_up_the_app_without_redis_url_and_stops_it_on_ctrl_c(tmp_path):
    """`manage.py up` without REDIS_URL: a private server starts, the app uses it, Ctrl-C ends all."""
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE")
    }
    env.update(CLAYOPS_VAR_DIR=str(tmp_path), CLAYOPS_NO_VENV="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "up",
            "--port",
            str(port),
            "--sim-port",
            str(_free_port()),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    try:
        deadline = time.monotonic() + 90
        for line in proc.stdout:
            output.append(line)
            if "Press Ctrl-C" in line or time.monotonic() > deadline:
                break
        text = "".join(output)
        assert "operator login: operator / " in text, text
        pid = int((tmp_path / "redis" / "redis.pid").read_text())
        assert _exe_of(pid) == str(server_binary())
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.json() == {"ok": True}
        # The web process talks to that very server: its clients show up in the server's list.
        client = redis.Redis(unix_socket_path=str(tmp_path / "redis" / "redis.sock"))
        assert client.info("server")["process_id"] == pid
        assert client.client_list(), "no client connected to the private server"
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(output) + rest
    assert "clayops stopped." in rest
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

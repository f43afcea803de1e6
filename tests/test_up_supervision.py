"""`manage.py up` as systemd, Docker or a closing terminal treat it: every stop signal ends every
process it started, and any single child's death (a worker, the web server, the embedded Redis) is
repaired without anyone's help while leads keep flowing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from tests.test_embedded_redis import _free_port

pytestmark = [pytest.mark.slow, pytest.mark.own_database]  # each `up` has its own SQLite

ROOT = Path(settings.BASE_DIR)


class Up:
    """One `manage.py up` in a var directory of its own (its own SQLite, Redis, password)."""

    def __init__(self, var: Path) -> None:
        self.var = var
        self.port, self.sim_port = _free_port(), _free_port()
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("REDIS_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE")
            and not k.startswith("CLAYOPS_TEST")
        }
        self.env.update(CLAYOPS_VAR_DIR=str(var), CLAYOPS_NO_VENV="1", PYTHONUNBUFFERED="1")
        self.env.update(CLAYOPS_TICK_SECONDS="2", STATIC_ROOT=str(var / "static"))
        self.proc: subprocess.Popen | None = None
        self.output: list[str] = []

    def start(self, *extra: str) -> str:
        argv = [sys.executable, str(ROOT / "manage.py"), "up", "--workers", "2"]
        argv += ["--port", str(self.port), "--sim-port", str(self.sim_port), *extra]
        self.proc = subprocess.Popen(
            argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 120
        for line in self.proc.stdout:
            self.output.append(line)
            if "Press Ctrl-C" in line or time.monotonic() > deadline:
                break
        text = "".join(self.output)
        assert "clayops is up" in text, text
        # Keep reading: every child writes to this pipe, and a full pipe (64 KiB) would block them all.
        self.rest: list[str] = []
        self.reader = threading.Thread(target=lambda: self.rest.extend(self.proc.stdout), daemon=True)
        self.reader.start()
        return text

    def children(self) -> dict[str, dict]:
        status = json.loads((self.var / "supervisor.json").read_text())
        return {child["name"]: child for child in status["children"]}

    def stop(self, sig: int = signal.SIGTERM) -> str:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=90)
        self.reader.join(timeout=10)
        return "".join(self.rest)

    def manage(self, code: str) -> str:
        argv = [sys.executable, str(ROOT / "manage.py"), "shell", "-c", code]
        return subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=60, check=True
        ).stdout


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[3])


def sessions_of(root: int) -> set[int]:
    """The sessions of every process below `root` (each child of `up` has its own), not counting
    the session `root` shares with whoever started it (pytest)."""
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
    return {sessions[pid] for pid in below if pid in sessions} - {sessions.get(root)}


def alive_in(sessions: set[int]) -> list[int]:
    """Processes still alive in those sessions (orphans re-parented to init keep their session)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None and stat[1] in sessions:
            alive.append(int(entry.name))
    return alive


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, OSError, ValueError):  # not answering yet, or a file half written
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout}s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_it_stops_every_process_it_started_on_each_stop_signal(tmp_path, sig):
    up = Up(tmp_path)
    try:
        up.start()
        sessions = sessions_of(up.proc.pid)
        # valkey, simulator, 2 workers, cron, web: each in a session of its own
        assert len(sessions) >= 6, sessions
    finally:
        rest = up.stop(sig)

    assert up.proc.returncode == 0, rest
    assert "clayops stopped." in rest
    wait_for(lambda: not alive_in(sessions), 10, "every process gone")


def test_it_keeps_the_operators_password_across_restarts(tmp_path):
    up = Up(tmp_path)
    try:
        first = up.start()
    finally:
        up.stop()
    password_file = tmp_path / "operator_password"
    assert oct(password_file.stat().st_mode & 0o777) == "0o600"
    password = password_file.read_text().strip()
    assert f"operator / {password}" in first

    again = Up(tmp_path)
    second = again.start()
    try:
        assert f"operator / {password}  (kept in" in second
        login = httpx.Client(base_url=f"http://127.0.0.1:{again.port}")
        page = login.get("/login/")
        token = login.cookies["csrftoken"]
        answer = login.post(
            "/login/",
            data={"username": "operator", "password": password, "csrfmiddlewaretoken": token},
            headers={"Referer": f"http://127.0.0.1:{again.port}/login/"},
        )
        assert page.status_code == 200 and answer.status_code == 302, answer.text[:500]
    finally:
        again.stop()


def _states(up: Up, prefix: str) -> list[str]:
    out = up.manage(
        "import json; from clayops.models import Lead; "
        f"mine = Lead.objects.filter(fingerprint__startswith='{prefix}'); "
        "print(json.dumps(list(mine.values_list('state', flat=True))))"
    )
    return json.loads(out.strip().splitlines()[-1])


def _accepted_twice(up: Up, prefix: str) -> int:
    """Leads Clay accepted (2xx) more than once: none may be sent again after a 2xx."""
    out = up.manage(
        "from django.db.models import Count; from clayops.models import Attempt; "
        f"print(Attempt.objects.filter(lead__fingerprint__startswith='{prefix}', status_code__gte=200, "
        "status_code__lt=300).values('lead').annotate(n=Count('*')).filter(n__gt=1).count())"
    )
    return int(out.strip().splitlines()[-1])


def test_it_restarts_each_kind_of_child_in_turn_while_leads_flow(tmp_path):
    """A worker, the web server, cron, the simulator, the other worker and the embedded Redis are
    SIGKILLed one after the other while 150 leads go out: each comes back by itself, every lead
    ends in a known state (enriched, accepted, or uncertain when its request died with a process),
    none is accepted twice, and a lead sent after the simulator's restart is called back (the
    restarted simulator still knows its callback)."""
    up = Up(tmp_path)
    up.start()
    sessions = sessions_of(up.proc.pid)
    sim = f"http://127.0.0.1:{up.sim_port}/_sim"
    try:
        wait_for(up.children, 10, "the supervisor's status file")
        up.manage(
            "from clayops.models import Lead, Webhook; from clayops.enqueue import enqueue_leads; "
            "hook = Webhook.objects.get(name='simulator'); "
            "Lead.objects.bulk_create([Lead(row={'email': f'u{i}@c{i}.com'}, "
            "fingerprint=f'turn-{i}', email=f'u{i}@c{i}.com', domain=f'c{i}.com', state='queued', "
            "webhook=hook) for i in range(150)]); "
            "enqueue_leads([lead.pk for lead in Lead.objects.filter(fingerprint__startswith='turn-')])"
        )
        wait_for(lambda: httpx.get(f"{sim}/stats", timeout=2).json()["rows_accepted"] >= 5, 60, "sending")
        for name in ("worker-1", "web", "cron", "simulator", "worker-2", "redis"):
            before = up.children()
            if name == "redis":
                pid = int((tmp_path / "redis" / "redis.pid").read_text())
                os.kill(pid, signal.SIGKILL)
                wait_for(
                    lambda pid=pid: (tmp_path / "redis" / "redis.pid").read_text().strip() != str(pid),
                    30,
                    "a new embedded Redis",
                )
                continue
            os.killpg(before[name]["pid"], signal.SIGKILL)
            wait_for(
                lambda name=name, old=before[name]["pid"]: (
                    (now := up.children()[name])["running"] and now["pid"] != old and now["restarts"] >= 1
                ),
                60,
                f"{name} restarted",
            )
            time.sleep(1)  # leads keep flowing between the kills
        assert up.proc.poll() is None  # up itself kept running
        try:
            # Every lead in a known state: enriched, accepted (its callback on its way, or lost with
            # the killed simulator: overdue later), or uncertain (its request died with a killed
            # process; resent automatically after the grace period, never blindly).
            wait_for(
                lambda: set(_states(up, "turn-")) <= {"accepted", "enriched", "uncertain"},
                240,
                "every lead sent",
            )
        except AssertionError:
            queues = up.manage(
                "import django_rq; from rq.registry import StartedJobRegistry, ScheduledJobRegistry; "
                "print({q: (django_rq.get_queue(q).count, len(StartedJobRegistry(q, connection="
                "django_rq.get_connection(q))), len(ScheduledJobRegistry(q, connection="
                "django_rq.get_connection(q)))) for q in ('submit', 'maintenance', 'default')}); "
                "from clayops.models import Lead; "
                "print(list(Lead.objects.filter(fingerprint__startswith='turn-', state='queued')"
                ".values_list('state_changed_at', 'defer_reason', 'claim_token')[:3]))"
            )
            raise AssertionError(
                f"leads not sent: {Counter(_states(up, 'turn-'))}; queues {queues}; "
                f"output {''.join(up.rest)[-4000:]}"
            ) from None
        assert _accepted_twice(up, "turn-") == 0

        # A lead sent now goes through the restarted simulator and is called back.
        up.manage(
            "from clayops.models import Lead, Webhook; from clayops.enqueue import enqueue_leads; "
            "hook = Webhook.objects.get(name='simulator'); "
            "lead = Lead.objects.create(row={'email': 'late@late.com'}, fingerprint='late-1', "
            "email='late@late.com', domain='late.com', state='queued', webhook=hook); "
            "enqueue_leads([lead.pk])"
        )
        wait_for(lambda: _states(up, "late-") == ["enriched"], 90, "the late lead enriched")
    finally:
        rest = up.stop()
    assert "restarting" in "".join(up.output) + rest
    wait_for(lambda: not alive_in(sessions | sessions_of(up.proc.pid)), 10, "every process gone")

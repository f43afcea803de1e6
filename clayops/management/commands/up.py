"""Start the whole application with embedded defaults; Ctrl-C stops all of it.

Redis (private, unless REDIS_URL is set), migrations, roles, an operator login, the local Clay
simulator wired up as the default webhook, RQ worker(s) with the scheduler, RQ cron for periodic
maintenance, and the web server.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from clayops import provisioning
from clayops.contract import CALLBACK_HEADER


class Command(BaseCommand):
    help = "Start web, worker(s), scheduler, Redis and the Clay simulator; print an operator login."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
        parser.add_argument("--sim-port", type=int, default=8765, help="Port of the local Clay simulator.")
        parser.add_argument("--no-simulator", action="store_true", help="Do not start the Clay simulator.")
        parser.add_argument("--workers", type=int, default=2, help="RQ worker processes to start.")
        parser.add_argument("--username", default="operator")

    def handle(self, *args, **opts):
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        env = self._child_env(opts)
        redis_server = self._start_redis()
        env["REDIS_URL"] = settings.REDIS_URL
        children: list[tuple[str, subprocess.Popen]] = []

        def spawn(name: str, argv: list[str]) -> None:
            proc = subprocess.Popen([sys.executable, *argv], env=env, start_new_session=True)
            children.append((name, proc))

        try:
            call_command("migrate", interactive=False, verbosity=0)
            provisioning.ensure_roles()
            password = secrets.token_urlsafe(12)
            provisioning.ensure_operator(opts["username"], password)
            if not opts["no_simulator"]:
                self._start_simulator(spawn, manage, opts, env)
            queues = ["submit", "maintenance", "default"]
            for i in range(max(1, opts["workers"])):
                argv = [manage, "rqworker", *queues, "--worker-class", "rq.worker.SimpleWorker"]
                if i == 0:
                    argv.append("--with-scheduler")
                spawn(f"worker-{i + 1}", argv)
            spawn("cron", [manage, "rqcron", "clayops.cron"])
            spawn("web", [manage, "runserver", "--noreload", "--insecure", f"{opts['host']}:{opts['port']}"])
            self._wait_http(f"http://{opts['host']}:{opts['port']}/healthz", "web server")
            self._banner(opts, password)
            self._supervise(children)
        except KeyboardInterrupt:
            self.stdout.write("\nStopping ...")
        finally:
            # A second Ctrl-C must not leave processes behind: finish stopping first.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self._stop(children)
            if redis_server is not None:
                redis_server.stop()
            self.stdout.write("clayops stopped.")

    def _child_env(self, opts) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PYTHONUNBUFFERED="1", CLAYOPS_NO_VENV="1")
        # Plain http on loopback: no https redirect or secure-only cookies for the embedded default.
        for name in ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"):
            env.setdefault(name, "0")
        env.setdefault("SECURE_HSTS_SECONDS", "0")
        env.setdefault("CLAYOPS_PUBLIC_URL", f"http://{opts['host']}:{opts['port']}")
        return env

    def _start_redis(self):
        """The private valkey-server when REDIS_URL is unset; None when an external Redis is used."""
        if not settings.REDIS_IS_EMBEDDED:
            return None
        from clayops.devtools.embedded_redis import EmbeddedRedis

        redis_server = EmbeddedRedis(settings.EMBEDDED_REDIS_DIR)
        started = redis_server.start()
        self.stdout.write(
            f"Redis: private valkey-server on {redis_server.url}" + ("" if started else " (already running)")
        )
        return redis_server

    def _start_simulator(self, spawn, manage: str, opts, env: dict[str, str]) -> None:
        """Start the Clay simulator, wire it up as the default webhook and tell it where to call back."""
        sim_url = f"http://127.0.0.1:{opts['sim_port']}"
        spawn("simulator", [manage, "clay_simulator", "--host", "127.0.0.1", "--port", str(opts["sim_port"])])
        self._wait_http(f"{sim_url}/_sim/health", "Clay simulator")
        webhook = provisioning.ensure_simulator_webhook(sim_url)
        callback = env["CLAYOPS_PUBLIC_URL"] + webhook.callback_path
        httpx.post(
            f"{sim_url}/_sim/tables/{provisioning.SIMULATOR_TABLE}",
            json={"callback_url": callback, "callback_headers": {CALLBACK_HEADER: webhook.callback_secret}},
            timeout=5,
        ).raise_for_status()

    def _banner(self, opts, password: str) -> None:
        bar = "=" * 64
        simulator = (
            f" Clay simulator: http://127.0.0.1:{opts['sim_port']}/ (default webhook)\n"
            if not opts["no_simulator"]
            else ""
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"\n{bar}\n clayops is up: http://{opts['host']}:{opts['port']}/\n"
                f" operator login: {opts['username']} / {password}\n"
                + simulator
                + f" Press Ctrl-C to stop everything.\n{bar}\n"
            )
        )

    def _wait_http(self, url: str, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise CommandError(f"{what} did not answer on {url} within {timeout:.0f}s")

    def _supervise(self, children) -> None:
        while True:
            for name, proc in children:
                code = proc.poll()
                if code is not None:
                    raise CommandError(f"{name} exited with code {code}; stopping the rest")
            time.sleep(0.5)

    def _stop(self, children) -> None:
        for _name, proc in children:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _name, proc in children:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

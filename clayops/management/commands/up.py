"""Start the whole application with embedded defaults; Ctrl-C, SIGTERM or SIGHUP stops all of it.

Redis (private, unless REDIS_URL is set), migrations, roles, an operator login, the local Clay
simulator wired up as the default webhook, RQ worker(s) with the scheduler, RQ cron for periodic
maintenance, and the web server, each supervised: a child that dies is restarted with backoff, and
so is the embedded Redis (clayops.devtools.supervisor).
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path

import httpx
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from clayops import nodes, provisioning
from clayops.contract import CALLBACK_HEADER
from clayops.devtools.supervisor import Stop, Supervisor, ignore_stop_signals, install_stop_handlers

# gunicorn processes for the web: two, so the page stays up while one is busy or restarting.
WEB_PROCESSES = 2
WEB_THREADS = 4
# What every worker serves, in order: the maintenance tick and alert checks, urgent imports and the
# paced workspaces' pumps, submissions, imports.
WORKER_QUEUES = ("maintenance", "urgent", "submit", "default")


class Command(BaseCommand):
    help = "Start web, worker(s), scheduler, Redis and the Clay simulator; print an operator login."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
        parser.add_argument("--sim-port", type=int, default=8765, help="Port of the local Clay simulator.")
        parser.add_argument("--no-simulator", action="store_true", help="Do not start the Clay simulator.")
        parser.add_argument("--workers", type=int, default=2, help="RQ worker processes to start.")
        parser.add_argument("--username", default="operator")
        parser.add_argument(
            "--reset-password", action="store_true", help="Give the operator a new password (printed once)."
        )

    def handle(self, *args, **opts):
        install_stop_handlers()
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        env = self._child_env(opts)
        redis_server = self._start_redis()
        env["REDIS_URL"] = settings.REDIS_URL
        supervisor = Supervisor(
            env=env,
            say=self._say,
            status_file=str(Path(settings.VAR_DIR) / "supervisor.json"),
            publish=nodes.publish,
        )
        if redis_server is not None:
            supervisor.watchdogs.append(lambda: _revive(redis_server))
        try:
            call_command("migrate", interactive=False, verbosity=0)
            login = self._operator_login(opts)
            if not opts["no_simulator"]:
                self._start_simulator(supervisor, manage, opts, env)
            # maintenance first: RQ serves the first non-empty queue, and the reapers and drains must
            # not wait behind a backlog of send jobs.
            queues = list(WORKER_QUEUES)
            for i in range(max(1, opts["workers"])):
                argv = [manage, "rqworker", *queues, "--worker-class", "clayops.workers.RidingWorker"]
                if i == 0:
                    argv.append("--with-scheduler")
                supervisor.add(f"worker-{i + 1}", [sys.executable, *argv])
            supervisor.add("cron", [sys.executable, manage, "cron"])
            supervisor.add("web", [sys.executable, *self._web_argv(manage, opts)])
            self._wait_http(f"http://{opts['host']}:{opts['port']}/healthz", "web server")
            self._banner(opts, login)
            supervisor.run()
        except Stop as stop:
            self._say(f"{stop}: stopping ...")
        except KeyboardInterrupt:
            self._say("Stopping ...")
        finally:
            ignore_stop_signals()
            supervisor.stop()
            if redis_server is not None:
                redis_server.stop()
            self._say("clayops stopped.")

    def _say(self, message: str) -> None:
        self.stdout.write(message)
        self.stdout.flush()

    def _web_argv(self, manage: str, opts) -> list[str]:
        """The production web server (gunicorn, static files by whitenoise): what runs is what is tested."""
        call_command("collectstatic", interactive=False, verbosity=0)
        return [
            "-m",
            "gunicorn",
            "clayops.wsgi:application",
            "--chdir",
            str(settings.BASE_DIR),
            "--no-control-socket",  # one per node, not ~/.gunicorn/gunicorn.ctl shared by every `up`
            "--bind",
            f"{opts['host']}:{opts['port']}",
            "--workers",
            str(WEB_PROCESSES),
            "--threads",
            str(WEB_THREADS),
            "--graceful-timeout",
            "20",
        ]

    def _operator_login(self, opts) -> str:
        """The operator's login line. The password is made once and kept in var/operator_password
        (0600), so restarts keep the operator's sessions; --reset-password makes a new one. A node
        joining a shared database where the operator already has another password leaves it alone
        (another node, or a person, set it)."""
        provisioning.ensure_roles()
        username = opts["username"]
        path = Path(settings.VAR_DIR) / "operator_password"
        kept = None if opts["reset_password"] else _read_secret(path)
        existing = provisioning.find_user(username)
        password = secrets.token_urlsafe(12)
        if opts["reset_password"]:
            provisioning.ensure_operator(username, password)
            _write_secret(path, password)
            return f"{username} / {password}"
        if existing is None:
            if provisioning.create_operator(username, password):
                _write_secret(path, password)
                return f"{username} / {password}"
            existing = provisioning.find_user(username)  # another node created it a moment ago
            assert existing is not None
        provisioning.ensure_operator(username, None)  # roles and staff, the password untouched
        if kept is not None and existing.check_password(kept):
            return f"{username} / {kept}  (kept in {path}; `up --reset-password` for a new one)"
        return (
            f"{username} (its password was set elsewhere: another node or by hand; "
            "`up --reset-password` sets a new one and prints it)"
        )

    def _child_env(self, opts) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PYTHONUNBUFFERED="1", CLAYOPS_NO_VENV="1")
        # Plain http on loopback: no https redirect or secure-only cookies for the embedded default.
        for name in ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"):
            env.setdefault(name, "0")
        env.setdefault("SECURE_HSTS_SECONDS", "0")
        env.setdefault("CLAYOPS_PUBLIC_URL", f"http://{opts['host']}:{opts['port']}")
        if not opts["no_simulator"]:
            # The destination policy lets webhooks reach the local simulator (http on 127.0.0.1) only.
            env["CLAYOPS_DESTINATION_HOSTS"] = ",".join([*settings.CLAYOPS_DESTINATION_HOSTS, "127.0.0.1"])
            networks = [*settings.CLAYOPS_DESTINATION_PRIVATE_NETWORKS, "127.0.0.1/32"]
            env["CLAYOPS_DESTINATION_PRIVATE_NETWORKS"] = ",".join(networks)
            env["CLAYOPS_DESTINATION_ALLOW_HTTP"] = "1"
        return env

    def _start_redis(self):
        """The private valkey-server when REDIS_URL is unset; None when an external Redis is used."""
        if not settings.REDIS_IS_EMBEDDED:
            return None
        from clayops.devtools.embedded_redis import EmbeddedRedis

        redis_server = EmbeddedRedis(settings.EMBEDDED_REDIS_DIR)
        started = redis_server.start()
        self._say(
            f"Redis: private valkey-server on {redis_server.url}" + ("" if started else " (already running)")
        )
        return redis_server

    def _start_simulator(self, supervisor: Supervisor, manage: str, opts, env: dict[str, str]) -> None:
        """Start the Clay simulator, wire it up as the default webhook and tell it where to call back."""
        sim_url = f"http://127.0.0.1:{opts['sim_port']}"
        webhook = provisioning.ensure_simulator_webhook(sim_url)
        # The callback is given in the simulator's environment, not posted to it once: a simulator
        # the supervisor restarts configures its table again and keeps calling back.
        own = {
            "CLAYOPS_SIM_TABLE": provisioning.SIMULATOR_TABLE,
            "CLAYOPS_SIM_CALLBACK_URL": env["CLAYOPS_PUBLIC_URL"] + webhook.callback_path,
            "CLAYOPS_SIM_CALLBACK_HEADER": CALLBACK_HEADER,
            "CLAYOPS_SIM_CALLBACK_SECRET": webhook.callback_secret,
        }
        argv = [manage, "clay_simulator", "--host", "127.0.0.1", "--port", str(opts["sim_port"])]
        supervisor.add("simulator", [sys.executable, *argv], env=own)
        self._wait_http(f"{sim_url}/_sim/health", "Clay simulator")

    def _banner(self, opts, login: str) -> None:
        bar = "=" * 64
        simulator = (
            f" Clay simulator: http://127.0.0.1:{opts['sim_port']}/ (default webhook)\n"
            if not opts["no_simulator"]
            else ""
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"\n{bar}\n clayops is up: http://{opts['host']}:{opts['port']}/\n"
                f" operator login: {login}\n" + simulator + f" Press Ctrl-C to stop everything.\n{bar}\n"
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


def _revive(redis_server) -> str | None:
    """Watchdog: the embedded Redis died (killed, crashed): start it again (its append-only file
    keeps the queued jobs; the database rebuilds whatever was lost)."""
    if redis_server.is_running():
        return None
    redis_server.start()
    return f"embedded Redis was down: restarted on {redis_server.url}"


def _read_secret(path: Path) -> str | None:
    try:
        value = path.read_text().strip()
    except OSError:
        return None
    return value or None


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    os.chmod(path, 0o600)

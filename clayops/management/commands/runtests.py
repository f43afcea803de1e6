"""The test command: `python3 manage.py runtests [pytest args]`.

manage.py has already installed the test dependencies into .venv. This installs Debian's Chromium
for the browser tests where it is missing (never `playwright install`), then runs pytest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

CHROMIUM = "/usr/bin/chromium"


def ensure_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise CommandError(
            f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium) and rerun"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], check=True, env=env
    )


class Command(BaseCommand):
    help = "Install what the tests need (Chromium for browser tests) and run the test suite with pytest."

    def run_from_argv(self, argv):
        # Every argument after `runtests` goes to pytest unchanged (-x, -k expr, paths ...).
        self.pytest_args = argv[2:]
        from django.conf import settings as _settings  # noqa: F401 - settings load as for any command

        self.handle()

    def handle(self, *args, **opts):
        pytest_args = getattr(self, "pytest_args", [])
        ensure_chromium()
        env = dict(os.environ)
        env.pop("DJANGO_SETTINGS_MODULE", None)  # pytest.ini names the test settings
        code = subprocess.call([sys.executable, "-m", "pytest", *pytest_args], cwd=settings.BASE_DIR, env=env)
        if code == 5:
            raise CommandError("pytest ran no test")
        if code:
            sys.exit(code)

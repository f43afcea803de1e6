from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from clayops.settings import envbool, envint


def test_it_fails_loudly_on_bad_values(monkeypatch):
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_FLAG must be a boolean"):
        envbool("X_FLAG", False)
    monkeypatch.setenv("X_NUM", "ten")
    with pytest.raises(ImproperlyConfigured, match="X_NUM must be an integer"):
        envint("X_NUM", 1)
    monkeypatch.setenv("X_NUM", "12")
    assert envint("X_NUM", 1) == 12


def _manage(*args: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(CLAYOPS_NO_VENV="1", **env_extra)
    return subprocess.run(
        [sys.executable, str(settings.BASE_DIR / "manage.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # a manage.py process
def test_it_passes_the_deploy_check_with_production_env(tmp_path):
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        SECRET_KEY="k" * 20 + "-production-secret-key-that-is-long-and-random-0123456789",
        DEBUG="0",
        ALLOWED_HOSTS="clayops.example.com",
        CLAYOPS_VAR_DIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.slow  # a manage.py process
def test_it_rejects_a_broken_database_url(tmp_path):
    result = _manage("check", DATABASE_URL="nosuchdb://x", CLAYOPS_VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr


def test_it_configures_the_database_for_concurrent_workers(db):
    from django.db import connection

    if connection.vendor == "sqlite":
        # WAL: readers beside the writer; IMMEDIATE: no lock-upgrade deadlocks between workers.
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode")
            assert cursor.fetchone()[0] == "wal"
        assert connection.settings_dict["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
        assert connection.settings_dict["OPTIONS"]["timeout"] >= 5
    else:
        assert connection.vendor == "postgresql"
        assert connection.settings_dict["CONN_MAX_AGE"] == 60  # persistent connections per worker


def test_the_web_process_compiles_every_template_as_it_starts():
    # The first page each gunicorn process serves costs what every later one does; and a template
    # that does not compile is found here, not by the first operator to open its page.
    import gc
    from pathlib import Path

    from django.conf import settings

    from clayops import wsgi

    templates = list(Path(settings.TEMPLATES[0]["DIRS"][0]).rglob("*.html"))
    try:
        assert wsgi.warm() == len(templates) > 20
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()

"""Shared fixtures: personas, a default workspace/webhook (built by tests/factories.py), and the
environment for worker processes."""

from __future__ import annotations

import os

import pytest
from django.db import connection

from clayops import provisioning
from clayops.models import CreditBudget, Webhook, Workspace
from tests.factories import make_budget, make_user, make_webhook, make_workspace


@pytest.fixture(autouse=True)
def _no_dead_connection(django_db_blocker):
    """A database connection the server closed between tests (seen on PostgreSQL before the first
    transactional test) is dropped, so the test opens a new one instead of failing at setup."""
    from django.db import connections

    with django_db_blocker.unblock():
        for conn in connections.all(initialized_only=True):
            if conn.connection is not None and not conn.in_atomic_block and not conn.is_usable():
                conn.close()
    yield


@pytest.fixture(autouse=True)
def _flush_redis():
    """Each test starts with an empty private Redis (never the machine's own server)."""
    import django_rq

    django_rq.get_connection("default").flushdb()
    yield


@pytest.fixture(autouse=True)
def _clear_cache():
    """Each test starts with an empty cache: cached counts of one test's rows never show in the next."""
    from django.core.cache import cache

    cache.clear()
    yield


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a process a test starts (worker, racer): same test database and Redis."""
    from django.conf import settings

    env = dict(os.environ)
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    else:
        user = db.get("USER") or ""
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        host = db.get("HOST") or "127.0.0.1"
        port = db.get("PORT") or 5432
        env["DATABASE_URL"] = f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"
    env["REDIS_URL"] = settings.REDIS_URL
    env["DJANGO_SETTINGS_MODULE"] = "clayops.settings_test"
    env["CLAYOPS_NO_VENV"] = "1"
    env.update(extra)
    return env


@pytest.fixture
def budget(db) -> CreditBudget:
    return make_budget()


@pytest.fixture
def workspace(budget) -> Workspace:
    return make_workspace(budget=budget)


@pytest.fixture
def webhook(workspace) -> Webhook:
    return make_webhook(workspace=workspace)


@pytest.fixture
def viewer(db):
    return make_user("victor", password="pw-viewer-1", role=provisioning.VIEWERS)


@pytest.fixture
def operator(db):
    return make_user("olga", password="pw-operator-1", role=provisioning.OPERATORS)


@pytest.fixture
def outsider(db):
    return make_user("oscar", password="pw-outsider-1")

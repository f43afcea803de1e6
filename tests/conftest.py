"""Shared fixtures: personas, a default workspace/webhook, and the environment for worker processes."""

from __future__ import annotations

import os
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection

from clayops import provisioning
from clayops.models import CircuitBreaker, CreditBudget, Webhook, Workspace


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
    return CreditBudget.objects.create(name="test", daily_limit=Decimal("1000"))


@pytest.fixture
def workspace(budget) -> Workspace:
    return Workspace.objects.create(name="acme", budget=budget, rate_limit=0)


@pytest.fixture
def webhook(workspace) -> Webhook:
    hook = Webhook.objects.create(
        workspace=workspace,
        name="people",
        url="http://127.0.0.1:9/v3/sources/webhook/t_people",
        token="tok-123",
    )
    CircuitBreaker.objects.create(webhook=hook)
    return hook


@pytest.fixture
def viewer(db):
    provisioning.ensure_roles()
    user = get_user_model().objects.create_user("victor", password="pw-viewer-1")
    user.groups.add(Group.objects.get(name=provisioning.VIEWERS))
    return user


@pytest.fixture
def operator(db):
    provisioning.ensure_roles()
    user = get_user_model().objects.create_user("olga", password="pw-operator-1")
    user.groups.add(Group.objects.get(name=provisioning.OPERATORS))
    return user


@pytest.fixture
def outsider(db):
    return get_user_model().objects.create_user("oscar", password="pw-outsider-1")

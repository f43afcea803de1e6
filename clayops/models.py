"""clayops' system of record. Redis holds queues; every state that matters lives here.

Behaviour of one row lives on its model; writes that span models live in the service modules
(budget, breaker, health, delivery, dlq, imports, degrade).
"""

from __future__ import annotations

import secrets
import zoneinfo
from datetime import date, datetime
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from .blobstore import DatabaseStorage
from .destinations import validate_destination


def credits_field(**kwargs) -> models.DecimalField:
    """Credits may be fractional (0.5 per enrichment is common): exact decimals, never floats."""
    kwargs.setdefault("max_digits", 14)
    kwargs.setdefault("decimal_places", 2)
    kwargs.setdefault("default", Decimal("0"))
    return models.DecimalField(**kwargs)


def validate_timezone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder ("Europe")
        raise ValidationError(f"{value!r} is not a known time zone (e.g. UTC, Europe/Berlin)") from None


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def mask_secret(value: str, keep: int = 4) -> str:
    """`https://api.clay.com/v3/sources/webhook/abcd…` → show only the start and the last characters."""
    if not value:
        return ""
    if len(value) <= keep * 2:
        return "•" * len(value)
    return f"{value[:keep]}…{value[-keep:]}"


def mask_url(url: str) -> str:
    """Keep scheme, host and the first path segments; hide the secret tail of a webhook URL."""
    if "://" not in url:
        return mask_secret(url)
    scheme, rest = url.split("://", 1)
    host, _, path = rest.partition("/")
    if not path:
        return url
    return f"{scheme}://{host}/{mask_secret(path, keep=6)}"


class CreditBudget(models.Model):
    name = models.CharField(max_length=100, unique=True)
    daily_limit = credits_field(
        default=Decimal("1000"),
        validators=[MinValueValidator(Decimal("0"))],
        help_text="Credits that may be reserved and spent per day. Takes effect at once for every worker.",
    )
    timezone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[validate_timezone],
        help_text="Time zone whose midnight starts a new budget day (use your Clay billing zone).",
    )
    actions_daily_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Clay Actions that may be reserved and used per day (each HTTP API call Clay makes for "
        "a row, such as the callback column, is one Action; webhook imports cost none). Empty: no "
        "Actions limit. Checked in the same statement as the credit limit.",
    )
    alert_percent = models.PositiveSmallIntegerField(
        default=80,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Soft alert (event and log line) once today's spend passes this share of the limit.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def day_for(self, at: datetime | None = None) -> date:
        """The budget day `at` falls in, in the budget's own time zone."""
        return (at or timezone.now()).astimezone(self.tz()).date()

    def remaining(self, now: datetime | None = None) -> Decimal:
        """Credits that may still be reserved today: limit - reserved - spent, never below 0.

        A read: it does not create today's usage row (clayops.budget.usage_for does, on first use).
        """
        usage = CreditUsage.objects.filter(budget=self, day=self.day_for(now)).first()
        used = (usage.reserved + usage.spent) if usage is not None else Decimal("0")
        return max(Decimal("0"), self.daily_limit - used)

    def actions_remaining(self, now: datetime | None = None) -> int | None:
        """Actions that may still be reserved today (never below 0); None without an Actions limit."""
        if self.actions_daily_limit is None:
            return None
        usage = CreditUsage.objects.filter(budget=self, day=self.day_for(now)).first()
        used = (usage.actions_reserved + usage.actions_spent) if usage is not None else 0
        return max(0, self.actions_daily_limit - used)


class CreditUsage(models.Model):
    budget = models.ForeignKey(CreditBudget, on_delete=models.CASCADE, related_name="usage")
    day = models.DateField()
    reserved = credits_field()
    spent = credits_field()
    saved = credits_field(
        help_text="Credits not spent: leads served from a fresh cache entry instead of a send "
        "(webhooks with reuse_cached)."
    )
    actions_reserved = models.PositiveIntegerField(default=0, help_text="Clay Actions held by sends out now.")
    actions_spent = models.PositiveIntegerField(default=0, help_text="Clay Actions used by rows Clay took.")
    alerted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["budget", "day"], name="creditusage_budget_day"),
            models.CheckConstraint(condition=models.Q(reserved__gte=0), name="creditusage_reserved_gte_0"),
        ]

    def __str__(self) -> str:
        return f"{self.budget} {self.day}: reserved {self.reserved}, spent {self.spent}"


class CreditReservation(models.Model):
    class State(models.TextChoices):
        HELD = "held"
        SETTLED = "settled"
        RELEASED = "released"

    usage = models.ForeignKey(CreditUsage, on_delete=models.CASCADE, related_name="reservations")
    lead = models.ForeignKey("Lead", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    amount = credits_field(help_text="Credits held: the estimate (the webhook's credits per row).")
    actions = models.PositiveSmallIntegerField(
        default=0, help_text="Clay Actions held with the credits (the webhook's Actions per row)."
    )
    charged = credits_field(
        null=True,
        blank=True,
        default=None,
        help_text="Credits this reservation currently adds to spent (set when settled or charged).",
    )
    actual = credits_field(
        null=True, blank=True, default=None, help_text="The real cost Clay's callback reported (set once)."
    )
    state = models.CharField(max_length=10, choices=State.choices, default=State.HELD)
    doubtful = models.BooleanField(
        default=False,
        help_text="Booked because Clay may have charged it (an uncertain send, resent); taken off the books "
        "if the lead is enriched by another send and this one's callback never comes.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "expires_at"], name="reservation_state_expiry")]


class Workspace(models.Model):
    name = models.CharField(max_length=100, unique=True)
    budget = models.ForeignKey(CreditBudget, on_delete=models.PROTECT, related_name="workspaces")
    rate_limit = models.FloatField(
        default=10.0,
        validators=[MinValueValidator(0.0)],
        help_text="Records per second Clay accepts for this workspace (all webhooks together). "
        "Clay publishes 10/s. 0 means unlimited.",
    )
    burst = models.PositiveIntegerField(
        default=20, help_text="Records that may go out at once before the rate applies (Clay: 20)."
    )
    hourly_cap = models.PositiveIntegerField(
        null=True, blank=True, help_text="Records per hour your plan allows (empty: no hourly cap)."
    )
    paused_until = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Set by a 402 (credits or actions exhausted at Clay) or by an operator.",
    )
    pause_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    MIN_RATE = 0.001  # one row every 1,000 s; smaller rates overflow the rate limiter's arithmetic

    def clean(self) -> None:
        super().clean()
        if self.rate_limit is not None and 0 < self.rate_limit < self.MIN_RATE:
            raise ValidationError(
                {"rate_limit": f"0 (no limit) or at least {self.MIN_RATE} rows/s (one row every 1,000 s)."}
            )


DEFAULT_CREDITS_PER_ROW = Decimal("6")


class Webhook(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.PROTECT, related_name="webhooks")
    name = models.CharField(max_length=100)
    url = models.URLField(
        max_length=500,
        validators=[validate_destination],
        help_text="The Clay table's webhook source URL (https, a Clay host). Kept secret.",
    )
    token = models.CharField(
        max_length=200, blank=True, help_text="Optional auth token, sent as x-clay-webhook-auth. Kept secret."
    )
    callback_secret = models.CharField(
        max_length=100,
        default=new_secret,
        help_text="Shared secret Clay's HTTP API column must send back in the callback header.",
    )
    credits_per_row = credits_field(
        default=DEFAULT_CREDITS_PER_ROW,
        validators=[MinValueValidator(Decimal("0"))],
        help_text="Credits reserved per row before it is sent (an estimate; settled to the actual "
        "figure when the callback reports one). A fully enriched lead typically costs 6-20.",
    )
    actions_per_row = models.PositiveSmallIntegerField(
        default=1,
        validators=[MaxValueValidator(100)],
        help_text="Clay Actions each row uses: one per HTTP API call the table makes for it (the callback "
        "column to clayops is one). Reserved with the credits against the budget's Actions limit.",
    )
    row_cap = models.PositiveIntegerField(
        default=50_000, help_text="Submissions a Clay webhook accepts in its lifetime (Clay: 50,000)."
    )
    rows_sent = models.PositiveIntegerField(default=0)
    is_active = models.BooleanField(default=True)
    reuse_cached = models.BooleanField(
        default=False,
        help_text="Cache-aware sending: a lead whose domain has a fresh enrichment in the cache (filled "
        "by Clay's callbacks for other leads of the same company) is enriched from it instead of being "
        "sent, spending no credits. For company-level enrichment tables; leave off when each row's "
        "enrichment is about the person.",
    )
    reenrich_served = models.BooleanField(
        default=True,
        help_text="Leads given a cache or fallback answer while Clay could not take them are sent to Clay "
        "automatically once it can again (after new work, within the budget). Off: they keep their served "
        "answer until an operator re-enriches them (Leads → state 'served from cache/fallback' → Re-enrich).",
    )
    is_full = models.BooleanField(default=False, help_text="Row cap reached: leads go to the next webhook.")
    priority = models.PositiveSmallIntegerField(
        default=100, help_text="Lower is tried first when failing over."
    )
    batch_size = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(10)],
        help_text="1 sends one JSON object per request; 2-10 sends a JSON array of that many rows.",
    )
    paused_until = models.DateTimeField(null=True, blank=True, help_text="Set by a 429 Retry-After.")
    callback_deadline_seconds = models.PositiveIntegerField(
        default=900,
        validators=[MinValueValidator(10)],
        help_text="How long after Clay accepted a row its enrichment callback may take before the lead is "
        "shown and alerted as 'callback overdue' (longer than the table's slowest enrichment).",
    )
    broken_reason = models.CharField(
        max_length=200, blank=True, help_text="Set when Clay answers 404 (table deleted or webhook replaced)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["priority", "id"]
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="webhook_workspace_name")]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def estimate(cls, credits_per_row: Decimal | None) -> Decimal:
        """A webhook's credits per row as read through a join: None (no webhook) is the default
        estimate; 0 (a free table) stays 0."""
        return DEFAULT_CREDITS_PER_ROW if credits_per_row is None else credits_per_row

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    @property
    def masked_token(self) -> str:
        return mask_secret(self.token)

    @property
    def callback_path(self) -> str:
        from django.urls import reverse

        return reverse("clay-callback", args=[self.pk])

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.token:
            headers["x-clay-webhook-auth"] = self.token
        return headers


class CircuitBreaker(models.Model):
    class State(models.TextChoices):
        CLOSED = "closed"
        OPEN = "open"
        HALF_OPEN = "half_open"
        FORCED_OPEN = "forced_open"

    webhook = models.OneToOneField(Webhook, on_delete=models.CASCADE, related_name="breaker")
    state = models.CharField(max_length=12, choices=State.choices, default=State.CLOSED)
    opened_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    half_open_in_flight = models.PositiveIntegerField(default=0)
    half_open_successes = models.PositiveIntegerField(default=0)
    # Thresholds
    failure_threshold = models.PositiveIntegerField(
        default=5, validators=[MinValueValidator(1)], help_text="Open after this many consecutive failures."
    )
    failure_rate_threshold = models.PositiveSmallIntegerField(
        default=50,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Open when the failure rate (%) over the window reaches this, given enough calls.",
    )
    window_seconds = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(1)], help_text="Sliding window for the failure rate."
    )
    minimum_calls = models.PositiveIntegerField(
        default=20, help_text="Calls needed in the window before the failure rate may open the breaker."
    )
    cooldown_seconds = models.PositiveIntegerField(
        default=30, help_text="How long the breaker stays open before it lets probes through."
    )
    half_open_max_probes = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1)], help_text="Probe calls allowed at once while half-open."
    )
    success_threshold = models.PositiveSmallIntegerField(
        default=2,
        validators=[MinValueValidator(1)],
        help_text="Probe successes that close the breaker again.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.webhook}: {self.state}"


class CircuitEvent(models.Model):
    breaker = models.ForeignKey(CircuitBreaker, on_delete=models.CASCADE, related_name="events")
    from_state = models.CharField(max_length=12)
    to_state = models.CharField(max_length=12)
    reason = models.CharField(max_length=300)
    at = models.DateTimeField(default=timezone.now)
    by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["breaker", "-at"], name="circuitevent_breaker_at")]


class LeadImport(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    filename = models.CharField(max_length=255)
    # In the database (clayops.blobstore), not on the disk of the node that took the upload: the
    # import job runs on whichever node's worker picks it up.
    file = models.FileField(upload_to="imports/", blank=True, storage=DatabaseStorage())
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    webhook = models.ForeignKey(Webhook, null=True, blank=True, on_delete=models.SET_NULL)
    urgent = models.BooleanField(
        default=False,
        help_text="Its leads go out before bulk ones: their jobs wait on the `urgent` queue, which workers "
        "serve before `submit`.",
    )
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    size_bytes = models.PositiveBigIntegerField(default=0)
    bytes_read = models.PositiveBigIntegerField(default=0)
    total_rows = models.PositiveIntegerField(default=0)
    valid_rows = models.PositiveIntegerField(default=0)
    invalid_rows = models.PositiveIntegerField(default=0)
    duplicate_rows = models.PositiveIntegerField(default=0)
    formula_rows = models.PositiveIntegerField(
        default=0,
        help_text="Rows with a cell starting with =, +, - or @ (a spreadsheet would run it as a formula): "
        "kept as typed; clayops' CSV downloads neutralise them.",
    )
    error = models.TextField(blank=True, help_text="Why the import as a whole failed, if it did.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Written by the worker after every batch: it shows the import is alive and is the "
        "claim token (a running import whose heartbeat is stale may be claimed by another worker).",
    )
    finished_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(
        null=True, blank=True, help_text="When an operator cancelled the import (clayops.imports.manage)."
    )
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.filename

    @property
    def progress_percent(self) -> int:
        if self.state == self.State.DONE:
            return 100
        if not self.size_bytes:
            return 0
        return min(99, int(100 * self.bytes_read / self.size_bytes))


class ImportRowError(models.Model):
    lead_import = models.ForeignKey(LeadImport, on_delete=models.CASCADE, related_name="row_errors")
    line = models.PositiveIntegerField()
    error = models.CharField(max_length=300)
    raw = models.TextField(blank=True, help_text="The row as read, truncated.")

    class Meta:
        ordering = ["lead_import", "line"]


class ImportDuplicate(models.Model):
    """A row an import skipped as a duplicate, with the lead that already held its fingerprint."""

    lead_import = models.ForeignKey(LeadImport, on_delete=models.CASCADE, related_name="duplicates")
    line = models.PositiveIntegerField(help_text="Line of the skipped row in the imported file.")
    email = models.CharField(max_length=254, blank=True, help_text="The skipped row's normalised email.")
    domain = models.CharField(max_length=253, blank=True, help_text="The skipped row's normalised domain.")
    original = models.ForeignKey(
        "Lead",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The lead holding the fingerprint: an earlier line of this file or an older lead.",
    )

    class Meta:
        ordering = ["lead_import", "line"]
        indexes = [models.Index(fields=["lead_import", "line"], name="importdup_import_line")]


class Lead(models.Model):
    class State(models.TextChoices):
        RECEIVED = "received"
        QUEUED = "queued"
        SUBMITTING = "submitting"
        ACCEPTED = "accepted"
        ENRICHED = "enriched"
        OVERDUE = "overdue", "callback overdue"
        DELIVERED = "delivered", "delivered (no data)"
        DEFERRED = "deferred"
        RETRY_WAIT = "retry_wait"
        UNCERTAIN = "uncertain"
        DEAD = "dead"
        DISCARDED = "discarded"
        SERVED_CACHE = "served_cache"
        SERVED_FALLBACK = "served_fallback"

    lead_import = models.ForeignKey(
        LeadImport, null=True, blank=True, on_delete=models.SET_NULL, related_name="leads"
    )
    webhook = models.ForeignKey(
        Webhook, null=True, blank=True, on_delete=models.SET_NULL, related_name="leads"
    )
    line = models.PositiveIntegerField(null=True, blank=True, help_text="Line in the imported file.")
    row = models.JSONField(help_text="The row as it will be sent to Clay (without clayops' own fields).")
    fingerprint = models.CharField(max_length=64, unique=True)
    email = models.CharField(max_length=254, blank=True, db_index=True)
    domain = models.CharField(max_length=253, blank=True, db_index=True)
    company = models.CharField(max_length=255, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RECEIVED)
    state_changed_at = models.DateTimeField(default=timezone.now)
    defer_reason = models.CharField(max_length=200, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    attempt_count = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    error_class = models.CharField(max_length=20, blank=True)
    claim_token = models.CharField(max_length=32, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True, help_text="When the last request started.")
    accepted_at = models.DateTimeField(null=True, blank=True)
    enriched = models.JSONField(null=True, blank=True)
    enriched_at = models.DateTimeField(null=True, blank=True)
    credits_actual = credits_field(null=True, blank=True, default=None)
    served = models.JSONField(null=True, blank=True, help_text="Degraded answer (cache or fallback).")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="lead_state_next"),
            models.Index(fields=["webhook", "state"], name="lead_webhook_state"),
            models.Index(fields=["lead_import", "state"], name="lead_import_state"),
            models.Index(fields=["state", "state_changed_at"], name="lead_state_changed"),
        ]

    def __str__(self) -> str:
        return self.email or self.domain or f"lead {self.pk}"


class Attempt(models.Model):
    class Outcome(models.TextChoices):
        ACCEPTED = "accepted"
        RETRY = "retry"
        DEAD = "dead"
        UNCERTAIN = "uncertain"
        RATE_LIMITED = "rate_limited"

    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="attempts")
    webhook = models.ForeignKey(Webhook, null=True, on_delete=models.SET_NULL, related_name="attempts")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    error_class = models.CharField(max_length=20, blank=True)
    error = models.TextField(blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["webhook", "started_at"], name="attempt_webhook_started")]


class DeadLetter(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        RETRYING = "retrying"
        RESOLVED = "resolved"
        DISCARDED = "discarded"
        EXHAUSTED = "exhausted"

    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="dead_letters")
    webhook = models.ForeignKey(Webhook, null=True, blank=True, on_delete=models.SET_NULL)
    error = models.TextField()
    error_class = models.CharField(max_length=20)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    retry_count = models.PositiveIntegerField(default=0)
    max_retries = models.PositiveIntegerField(default=3)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["state", "error_class"], name="dlq_state_class"),
            models.Index(fields=["state", "next_retry_at"], name="dlq_state_next"),
            models.Index(fields=["webhook", "state"], name="dlq_webhook_state"),
            models.Index(fields=["state", "-created_at"], name="dlq_state_created"),
        ]


class HealthSample(models.Model):
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="health_samples")
    minute = models.DateTimeField(help_text="Start of the minute (UTC) the counts belong to.")
    successes = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)
    latency_sum_ms = models.FloatField(default=0)
    latency_max_ms = models.FloatField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["webhook", "minute"], name="healthsample_webhook_minute")
        ]


class EnrichmentCache(models.Model):
    domain = models.CharField(max_length=253, unique=True)
    data = models.JSONField()
    fetched_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    hits = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return self.domain


class AuditEntry(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    action = models.CharField(max_length=50)
    target = models.CharField(max_length=200, blank=True)
    count = models.PositiveIntegerField(default=1)
    detail = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"
        permissions = [
            ("operate", "Can act on leads, the DLQ and breakers from the dashboard"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.user or 'system'} {self.action} {self.target}"


class StoredFile(models.Model):
    """A file kept in the database by clayops.blobstore.DatabaseStorage (uploaded CSVs): every node
    reads it, where a file under MEDIA_ROOT is only on the node that received it."""

    name = models.CharField(
        max_length=255, unique=True, help_text="The storage name, e.g. imports/leads.csv."
    )
    size = models.PositiveBigIntegerField(default=0, help_text="Bytes: the chunks' lengths added up.")
    chunk_size = models.PositiveIntegerField(
        help_text="Bytes in every chunk but the last, which may hold fewer (a read seeks by it)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class StoredFileChunk(models.Model):
    """One piece of a StoredFile, read one at a time so that a large file never sits in memory."""

    # The unique (file, seq) index serves lookups by file too: no separate index on file.
    file = models.ForeignKey(StoredFile, on_delete=models.CASCADE, related_name="chunks", db_index=False)
    seq = models.PositiveIntegerField(help_text="0, 1, 2 … in file order.")
    data = models.BinaryField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["file", "seq"], name="storedfilechunk_file_seq")]


from .alert_models import Alert, AlertChannel, AlertNotification, AlertSettings  # noqa: E402,F401

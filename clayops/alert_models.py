"""Alerting's rows: where notifications go (AlertChannel), what is or was wrong (Alert), and every
notification sent or refused (AlertNotification). The logic is in clayops.alerts."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone


class AlertChannel(models.Model):
    name = models.CharField(max_length=100, unique=True)
    url = models.CharField(
        max_length=1000,
        help_text="An Apprise URL (e.g. mailtos://user:pass@smtp.example.com?to=ops@example.com, "
        "jsons://hooks.example.com/alerts, slack://…). Kept secret. Checked against the destination "
        "policy before every send.",
    )
    rules = models.CharField(
        max_length=500,
        default="*",
        help_text="Comma-separated rule names (e.g. breaker_open,budget_100) or * for every rule. "
        "A trailing * matches a prefix (budget_*).",
    )
    is_active = models.BooleanField(default=True)
    max_per_hour = models.PositiveIntegerField(
        default=20,
        validators=[MinValueValidator(1)],
        help_text="At most this many notifications to this channel per hour (the rest are logged as "
        "suppressed).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def wants(self, rule: str) -> bool:
        for pattern in (p.strip() for p in self.rules.split(",")):
            if pattern == "*" or pattern == rule:
                return True
            if pattern.endswith("*") and rule.startswith(pattern[:-1]):
                return True
        return False


def _thresholds(value: str) -> None:
    from django.core.exceptions import ValidationError

    try:
        parts = [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        raise ValidationError("comma-separated whole percentages, e.g. 80,90,100") from None
    if not parts or any(p < 1 or p > 1000 for p in parts):
        raise ValidationError("each threshold must be between 1 and 1000 (per cent)")


class AlertSettings(models.Model):
    """The alert rules' thresholds, edited in the admin (one row). Until an operator saves it, the
    CLAYOPS_ALERT_* settings apply; `current()` never writes."""

    budget_thresholds = models.CharField(
        max_length=100,
        validators=[_thresholds],
        help_text="Budget alerts at these percentages of the daily limit, e.g. 80,90,100.",
    )
    reminder_minutes = models.PositiveIntegerField(
        help_text="A reminder this often while an alert stays open and unacknowledged (0: none)."
    )
    breaker_open_minutes = models.PositiveIntegerField(
        validators=[MinValueValidator(1)], help_text="'Breaker still open' after this many minutes."
    )
    dlq_per_hour = models.PositiveIntegerField(
        help_text="Alert when more leads than this reach the DLQ in an hour."
    )
    no_tick_minutes = models.PositiveIntegerField(
        validators=[MinValueValidator(1)], help_text="Alert when no maintenance tick finished for this long."
    )
    no_worker_minutes = models.PositiveIntegerField(
        validators=[MinValueValidator(1)], help_text="Alert when no RQ worker has been alive for this long."
    )
    reopen_minutes = models.PositiveIntegerField(
        help_text="A problem that comes back within this long after it resolved reopens its alert "
        "(one history, 'reopened' notifications) instead of opening a new one (0: always a new one)."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "alert settings"
        verbose_name_plural = "alert settings"

    def __str__(self) -> str:
        return "Alert thresholds"

    # The rules compute `now - timedelta(minutes=...)`: a larger value (the database would take up to
    # 2**31 - 1, SQLite 2**63 - 1) overflows the date and stops every alert check.
    MAX_MINUTES = 525_600 * 10  # ten years
    MINUTE_FIELDS = (
        "reminder_minutes",
        "breaker_open_minutes",
        "no_tick_minutes",
        "no_worker_minutes",
        "reopen_minutes",
    )

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        too_long = f"at most {self.MAX_MINUTES:,} minutes (ten years)"
        errors = {
            name: too_long
            for name in self.MINUTE_FIELDS
            if isinstance(getattr(self, name), int) and getattr(self, name) > self.MAX_MINUTES
        }
        if errors:
            raise ValidationError(errors)

    def save(self, *args, **kwargs):
        self.pk = 1  # one row
        super().save(*args, **kwargs)

    @classmethod
    def current(cls) -> AlertSettings:
        return cls.objects.filter(pk=1).first() or cls.from_settings()

    @classmethod
    def from_settings(cls) -> AlertSettings:
        return cls(
            pk=1,
            budget_thresholds=str(settings.CLAYOPS_ALERT_BUDGET_THRESHOLDS),
            reminder_minutes=settings.CLAYOPS_ALERT_REMINDER_MINUTES,
            breaker_open_minutes=settings.CLAYOPS_ALERT_BREAKER_OPEN_MINUTES,
            dlq_per_hour=settings.CLAYOPS_ALERT_DLQ_PER_HOUR,
            no_tick_minutes=settings.CLAYOPS_ALERT_NO_TICK_MINUTES,
            no_worker_minutes=settings.CLAYOPS_ALERT_NO_WORKER_MINUTES,
            reopen_minutes=settings.CLAYOPS_ALERT_REOPEN_MINUTES,
        )

    def thresholds(self) -> list[int]:
        return sorted({int(p) for p in self.budget_thresholds.split(",") if p.strip()})


class Alert(models.Model):
    class State(models.TextChoices):
        OPEN = "open"
        RESOLVED = "resolved"

    class Severity(models.TextChoices):
        INFO = "info"
        WARNING = "warning"
        CRITICAL = "critical"

    rule = models.CharField(max_length=50)
    target = models.CharField(max_length=100, help_text='What it is about, e.g. "webhook:3", "budget:1".')
    state = models.CharField(max_length=10, choices=State.choices, default=State.OPEN)
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.WARNING)
    title = models.CharField(max_length=200)
    message = models.TextField(blank=True)
    opened_at = models.DateTimeField(default=timezone.now)
    last_notified_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolve_message = models.TextField(blank=True)
    reminders_sent = models.PositiveIntegerField(default=0)
    reopened = models.PositiveIntegerField(
        default=0, help_text="Times the problem came back within the reopen window after it resolved."
    )
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    muted_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [
            # One open alert per rule and target, whatever the number of workers raising it.
            models.UniqueConstraint(
                fields=["rule", "target"], condition=models.Q(state="open"), name="alert_one_open"
            )
        ]
        indexes = [models.Index(fields=["state", "-opened_at"], name="alert_state_opened")]

    def __str__(self) -> str:
        return f"{self.rule} {self.target} ({self.state})"

    def is_muted(self, now=None) -> bool:
        return self.muted_until is not None and self.muted_until > (now or timezone.now())


class AlertNotification(models.Model):
    class Kind(models.TextChoices):
        OPENED = "opened"
        REMINDER = "reminder"
        RESOLVED = "resolved"
        REOPENED = "reopened"
        TEST = "test"

    alert = models.ForeignKey(
        Alert, null=True, blank=True, on_delete=models.CASCADE, related_name="notifications"
    )
    channel = models.ForeignKey(AlertChannel, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    sent_at = models.DateTimeField(default=timezone.now)
    ok = models.BooleanField(default=False)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-sent_at", "-id"]
        indexes = [models.Index(fields=["channel", "sent_at"], name="alertnotif_channel_sent")]

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

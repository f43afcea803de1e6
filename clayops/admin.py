"""Django admin: where an operator edits limits, thresholds and webhooks. Secrets are masked in lists."""

from __future__ import annotations

from django import forms
from django.contrib import admin

from . import models


def audit_change(request, obj, form, action: str) -> None:
    if form is None or not form.changed_data:
        return
    changes = {}
    for field in form.changed_data:
        if field in ("url", "token", "callback_secret"):
            changes[field] = "changed (secret)"
        else:
            changes[field] = {  # type: ignore[assignment]
                "from": _shown(form, field, form.initial.get(field, "")),
                "to": str(form.cleaned_data.get(field)),
            }
    models.AuditEntry.objects.create(
        user=request.user, action=action, target=f"{obj._meta.model_name}:{obj.pk} {obj}", detail=changes
    )


def _shown(form, field: str, value) -> str:
    """The initial value as the cleaned one reads: a foreign key's object (its name), not its id."""
    choice = form.fields.get(field)
    if (
        isinstance(choice, forms.ModelChoiceField)
        and not isinstance(choice, forms.ModelMultipleChoiceField)
        and choice.queryset is not None
        and value not in (None, "")
    ):
        value = choice.queryset.model._default_manager.filter(pk=value).first() or value
    return str(value)


class AuditedAdmin(admin.ModelAdmin):
    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        audit_change(request, obj, form, "admin_change" if change else "admin_create")


@admin.register(models.CreditBudget)
class CreditBudgetAdmin(AuditedAdmin):
    list_display = ["name", "daily_limit", "actions_daily_limit", "timezone", "alert_percent", "updated_at"]


@admin.register(models.CreditUsage)
class CreditUsageAdmin(admin.ModelAdmin):
    list_display = ["budget", "day", "reserved", "spent", "actions_reserved", "actions_spent", "alerted_at"]
    list_filter = ["budget"]
    readonly_fields = [
        "budget",
        "day",
        "reserved",
        "spent",
        "saved",
        "actions_reserved",
        "actions_spent",
        "alerted_at",
    ]


@admin.register(models.Workspace)
class WorkspaceAdmin(AuditedAdmin):
    list_display = ["name", "budget", "rate_limit", "burst", "hourly_cap", "paused_until"]


SECRET_FIELDS = ("token", "callback_secret")
WRITE_ONLY = {"autocomplete": "new-password"}


class WebhookForm(forms.ModelForm):
    url = forms.URLField(
        max_length=500, assume_scheme="https", help_text=models.Webhook._meta.get_field("url").help_text
    )

    class Meta:
        model = models.Webhook
        fields = "__all__"
        # Write-only: a secret is never rendered back into the page; left blank, it stays as it is.
        widgets = {name: forms.PasswordInput(render_value=False, attrs=WRITE_ONLY) for name in SECRET_FIELDS}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in SECRET_FIELDS:
            field = self.fields[name]
            field.required = False
            field.show_hidden_initial = False  # Django would echo a callable default in a hidden input
            field.help_text = "Write-only: leave blank to keep the current value."

    def _keep(self, name: str) -> str:
        value = self.cleaned_data.get(name) or ""
        return value or (getattr(self.instance, name, "") or "")

    def clean_token(self) -> str:
        return self._keep("token")

    def clean_callback_secret(self) -> str:
        return self._keep("callback_secret") or models.new_secret()

    @property
    def changed_data(self) -> list[str]:
        # A blank secret field means "unchanged", not "changed to empty".
        return [name for name in super().changed_data if name not in SECRET_FIELDS or self.data.get(name)]


@admin.register(models.Webhook)
class WebhookAdmin(AuditedAdmin):
    form = WebhookForm
    list_display = [
        "name",
        "workspace",
        "masked_url",
        "masked_token",
        "credits_per_row",
        "actions_per_row",
        "rows_sent",
        "row_cap",
        "is_active",
        "is_full",
    ]
    list_filter = ["workspace", "is_active", "is_full"]
    readonly_fields = ["rows_sent", "created_at"]
    actions = ["rotate_callback_secret"]

    @admin.action(description="Rotate the callback secret (the new one is shown once)")
    def rotate_callback_secret(self, request, queryset):
        for webhook in queryset:
            webhook.callback_secret = models.new_secret()
            webhook.save(update_fields=["callback_secret"])
            models.AuditEntry.objects.create(
                user=request.user, action="callback_secret_rotated", target=f"webhook:{webhook.pk} {webhook}"
            )
            self.message_user(
                request,
                f"{webhook}: new callback secret {webhook.callback_secret} — shown once; put it in Clay's "
                "HTTP API column header now.",
            )

    @admin.display(description="URL")
    def masked_url(self, obj):
        return obj.masked_url

    @admin.display(description="token")
    def masked_token(self, obj):
        return obj.masked_token or "—"


class CircuitEventInline(admin.TabularInline):
    model = models.CircuitEvent
    extra = 0
    can_delete = False
    readonly_fields = ["from_state", "to_state", "reason", "at", "by"]
    max_num = 0


@admin.register(models.CircuitBreaker)
class CircuitBreakerAdmin(AuditedAdmin):
    list_display = [
        "webhook",
        "state",
        "opened_at",
        "consecutive_failures",
        "failure_threshold",
        "cooldown_seconds",
        "half_open_max_probes",
    ]
    readonly_fields = [
        "state",
        "opened_at",
        "consecutive_failures",
        "half_open_in_flight",
        "half_open_successes",
        "updated_at",
    ]
    inlines = [CircuitEventInline]


@admin.register(models.Lead)
class LeadAdmin(admin.ModelAdmin):
    list_display = ["id", "email", "domain", "state", "webhook", "attempt_count", "updated_at"]
    list_filter = ["state", "webhook"]
    search_fields = ["email", "domain", "company", "fingerprint"]
    show_full_result_count = False
    list_select_related = ["webhook"]
    raw_id_fields = ["lead_import"]


@admin.register(models.DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ["id", "lead", "error_class", "state", "retry_count", "max_retries", "next_retry_at"]
    list_filter = ["state", "error_class"]
    raw_id_fields = ["lead"]
    show_full_result_count = False


@admin.register(models.LeadImport)
class LeadImportAdmin(admin.ModelAdmin):
    list_display = [
        "filename",
        "state",
        "total_rows",
        "valid_rows",
        "invalid_rows",
        "duplicate_rows",
        "created_at",
    ]


@admin.register(models.EnrichmentCache)
class EnrichmentCacheAdmin(admin.ModelAdmin):
    list_display = ["domain", "fetched_at", "expires_at", "hits"]
    search_fields = ["domain"]


@admin.register(models.AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["at", "user", "action", "target", "count"]
    list_filter = ["action"]
    readonly_fields = ["at", "user", "action", "target", "count", "detail"]


@admin.register(models.HealthSample)
class HealthSampleAdmin(admin.ModelAdmin):
    list_display = ["webhook", "minute", "successes", "failures", "latency_max_ms"]
    list_filter = ["webhook"]


# --- alerting (clayops.alerts) -------------------------------------------------------------------


class AlertChannelForm(forms.ModelForm):
    class Meta:
        model = models.AlertChannel
        fields = "__all__"
        # The Apprise URL holds tokens and passwords: write-only, like the webhook secrets.
        widgets = {"url": forms.PasswordInput(render_value=False, attrs=WRITE_ONLY)}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["url"].required = False
            self.fields["url"].help_text += " Write-only: leave blank to keep the current value."

    def clean_url(self) -> str:
        from django.core.exceptions import ValidationError

        from .alerts import channel_problem

        url = (self.cleaned_data.get("url") or "").strip() or (self.instance.url if self.instance.pk else "")
        problem = channel_problem(url) if url else "an Apprise URL is required"
        if problem:
            raise ValidationError(f"Channel refused: {problem}.")
        return url

    @property
    def changed_data(self) -> list[str]:
        return [name for name in super().changed_data if name != "url" or self.data.get("url")]


@admin.register(models.AlertChannel)
class AlertChannelAdmin(AuditedAdmin):
    form = AlertChannelForm
    list_display = ["name", "scheme", "rules", "is_active", "max_per_hour"]
    actions = ["send_test"]

    @admin.display(description="service")
    def scheme(self, obj):
        return obj.url.split("://", 1)[0] + "://…" if "://" in obj.url else "—"

    @admin.action(description="Send a test notification")
    def send_test(self, request, queryset):
        from django.contrib import messages

        from .alerts import send_test

        for channel in queryset:
            note = send_test(channel, by=request.user)
            if note.ok:
                self.message_user(request, f"{channel}: test notification sent.", messages.SUCCESS)
            else:
                self.message_user(request, f"{channel}: not sent: {note.error}", messages.ERROR)


@admin.register(models.AlertSettings)
class AlertSettingsAdmin(AuditedAdmin):
    """One row: the alert rules' thresholds. Until it is saved the CLAYOPS_ALERT_* settings apply;
    the add form starts from them."""

    list_display = ["__str__", "budget_thresholds", "reminder_minutes", "no_tick_minutes", "updated_at"]

    def has_add_permission(self, request):
        return super().has_add_permission(request) and not models.AlertSettings.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False

    def get_changeform_initial_data(self, request):
        current = models.AlertSettings.from_settings()
        return {f.name: getattr(current, f.name) for f in current._meta.fields if f.name not in ("id",)}


@admin.register(models.Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = [
        "opened_at",
        "rule",
        "target",
        "state",
        "severity",
        "title",
        "reminders_sent",
        "resolved_at",
    ]
    list_filter = ["state", "rule", "severity"]
    search_fields = ["target", "title"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(models.AlertNotification)
class AlertNotificationAdmin(admin.ModelAdmin):
    list_display = ["sent_at", "channel", "kind", "alert", "ok", "error"]
    list_filter = ["channel", "kind", "ok"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

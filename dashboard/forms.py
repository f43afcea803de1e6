"""Filter and upload forms. Bad filter values are dropped (a filter never makes a page fail)."""

from __future__ import annotations

from django import forms

from clayops import selectors
from clayops.models import DeadLetter, Lead, Webhook


def _blank(label: str, choices) -> list[tuple[str, str]]:
    return [("", label), *choices]


class LeadFilterForm(forms.Form):
    q = forms.CharField(
        label="Search",
        required=False,
        max_length=254,
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "email, domain or company name"}),
    )
    state = forms.ChoiceField(label="State", required=False, choices=_blank("Any state", Lead.State.choices))
    webhook = forms.TypedChoiceField(label="Webhook", required=False, coerce=int, empty_value=None)
    lead_import = forms.IntegerField(label="Import #", required=False, min_value=1, max_value=2**63 - 1)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        hooks = [(str(w.pk), w.name) for w in selectors.webhook_choices()]
        self.fields["webhook"].choices = _blank("Any webhook", hooks)  # type: ignore[attr-defined]


class DlqFilterForm(forms.Form):
    STATES = [
        *DeadLetter.State.choices,
        (selectors.DLQ_STATE_ANY, "Any state"),
    ]
    state = forms.ChoiceField(label="State", required=False, choices=STATES)
    error_class = forms.ChoiceField(label="Error class", required=False)  # type: ignore[assignment]
    webhook = forms.TypedChoiceField(label="Webhook", required=False, coerce=int, empty_value=None)
    since = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        hooks = [(str(w.pk), w.name) for w in selectors.webhook_choices()]
        self.fields["webhook"].choices = _blank("Any webhook", hooks)  # type: ignore[attr-defined]
        known = selectors.dlq_error_classes()  # cached: a class newer than the cache is still accepted,
        asked = self.data.get("error_class") if self.is_bound else None  # never silently dropped
        if asked and ("\x00" in asked or len(asked) > 40):  # never a class: no database may be asked
            asked = None
        classes = [(c, c) for c in known + ([asked] if asked and asked not in known else [])]
        self.fields["error_class"].choices = _blank("Any error class", classes)  # type: ignore[attr-defined]


class AuditFilterForm(forms.Form):
    action = forms.ChoiceField(label="Action", required=False)
    user = forms.CharField(label="User", required=False, max_length=150)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["action"].choices = _blank("Any action", [(a, a) for a in selectors.audit_actions()])  # type: ignore[attr-defined]


class UploadForm(forms.Form):
    file = forms.FileField(
        label="CSV file",
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,.txt,text/csv"}),
    )
    webhook = forms.ModelChoiceField(
        label="Send to",
        required=False,
        queryset=Webhook.objects.filter(is_active=True).order_by("priority", "pk"),
        empty_label="First usable webhook (by priority)",
    )
    urgent = forms.BooleanField(
        label="Urgent: send before bulk imports",
        required=False,
        help_text="Its leads go out ahead of the leads of imports already waiting (same guards).",
    )


def clean_filters(form: forms.Form) -> dict:
    """The valid filters of a bound form; invalid fields are ignored rather than failing the page."""
    form.is_valid()
    data = getattr(form, "cleaned_data", {})
    return {name: value for name, value in data.items() if value not in (None, "")}

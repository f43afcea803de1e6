"""The "Connect Clay" page: one form that creates a workspace, its budget and a webhook (or a webhook
in an existing workspace), then the page that tells the operator what to type into Clay's HTTP API
column (callback URL, header, secret, body), a secret rotation and a test row with its live status.

Pages are GETs for viewers; every write is an operator's POST (CSRF), done by a service in
clayops.provisioning, which audits it. The callback secret is shown in clear once: on the first view
of the webhook's page after its creation or a rotation, by the operator who did it (a one-time flag
in their session; the secret itself is never put in the session). Afterwards it is masked.
"""

from __future__ import annotations

import ipaddress
import json
from decimal import Decimal
from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_POST, require_safe
from django_htmx.http import HttpResponseStopPolling

from clayops import plans, provisioning
from clayops.contract import CALLBACK_HEADER, LEAD_ID_FIELD, SEND_ID_FIELD
from clayops.destinations import validate_destination
from clayops.models import Lead, Webhook, Workspace, mask_secret, validate_timezone

from .access import HtmxHttpRequest, can_operate, operator_required, viewer_required

REVEAL_KEY = "clayops_connect_reveal"  # session: ids of webhooks whose secret the next view shows
MAX_RATE = 10_000.0
# The slowest rate other than 0 (unlimited): one row in 1,000 s. Below it the token bucket's wait and
# its key's expiry overflow (1e-300 rows/s: Redis refuses the PEXPIRE and no row of the workspace is sent).
MIN_RATE = 0.001
MAX_INT = 2_147_483_647  # what a PositiveIntegerField holds on every database
# A test row in one of these states is finished: the status stops polling.
FINAL_STATES = (Lead.State.ENRICHED, Lead.State.DELIVERED, Lead.State.DEAD, Lead.State.DISCARDED)


# --- The form ----------------------------------------------------------------------------------------


def _known_timezone(value: str) -> None:
    """validate_timezone, also refusing a name that is a directory of the tz database ("Europe"),
    which zoneinfo answers with an OSError instead of a ValueError."""
    try:
        validate_timezone(value)
    except OSError:
        raise ValidationError(f"{value!r} is not a known time zone (e.g. UTC, Europe/Berlin)") from None


def _number_input(step: str = "1") -> forms.NumberInput:
    return forms.NumberInput(attrs={"step": step, "inputmode": "decimal"})


class ConnectForm(forms.Form):
    webhook_url = forms.CharField(
        label="Clay webhook URL",
        max_length=500,
        help_text="In Clay: the table's Sources → Webhook → copy the URL, and paste it here.",
        widget=forms.TextInput(
            attrs={
                "placeholder": "https://api.clay.com/v3/sources/webhook/…",
                "autocomplete": "off",
                "spellcheck": "false",
            }
        ),
    )
    token = forms.CharField(
        label="Webhook auth token (optional)",
        required=False,
        max_length=200,
        help_text="Only if you set one on the Clay webhook: sent as x-clay-webhook-auth.",
        widget=forms.PasswordInput(render_value=True, attrs={"autocomplete": "off"}),
    )
    webhook_name = forms.CharField(
        label="Name in clayops",
        required=False,
        max_length=100,
        help_text="Empty: “Clay table”, “Clay table 2”, … (never taken from the URL, which is secret).",
    )
    credits_per_row = forms.DecimalField(
        label="Credits per row (estimate)",
        required=False,
        min_value=Decimal("0"),
        max_digits=14,
        decimal_places=2,
        widget=_number_input("0.01"),
        help_text="Held before each row is sent, settled to what the callback reports. Empty: 6.",
    )
    actions_per_row = forms.IntegerField(
        label="Clay Actions per row",
        required=False,
        min_value=0,
        max_value=100,
        widget=_number_input(),
        help_text="One per HTTP API call the table makes for a row: the callback column to clayops is one. "
        "Empty: 1.",
    )
    row_cap = forms.IntegerField(
        label="Lifetime row cap",
        required=False,
        min_value=1,
        max_value=MAX_INT,
        widget=_number_input(),
        help_text="Rows this Clay webhook takes in its lifetime (Clay: 50,000). Empty: the plan's.",
    )
    workspace = forms.TypedChoiceField(
        label="Workspace", required=False, coerce=int, empty_value=None, choices=()
    )
    workspace_name = forms.CharField(label="New workspace name", required=False, max_length=100)
    plan = forms.ChoiceField(
        label="Clay plan",
        choices=plans.choices(),
        initial=plans.DEFAULT_PLAN,
        help_text="Fills the rate, burst, hourly cap and row cap below; change any of them.",
    )
    rate_limit = forms.FloatField(
        label="Rate (rows/s)",
        required=False,
        min_value=0,
        max_value=MAX_RATE,
        widget=_number_input("any"),
        help_text="For the whole workspace. 0: unlimited. Empty: the plan's.",
    )
    burst = forms.IntegerField(
        label="Burst (rows)", required=False, min_value=1, max_value=MAX_INT, widget=_number_input()
    )
    hourly_cap = forms.IntegerField(
        label="Hourly cap (rows/hour)",
        required=False,
        min_value=0,
        max_value=MAX_INT,
        widget=_number_input(),
        help_text="0: no hourly cap. Empty: the plan's.",
    )
    daily_limit = forms.DecimalField(
        label="Daily credit budget",
        required=False,
        min_value=Decimal("0"),
        max_digits=14,
        decimal_places=2,
        widget=_number_input("0.01"),
        help_text=f"Credits that may be reserved and spent per day. Empty: {plans.DEFAULT_DAILY_LIMIT}, "
        f"enough for the {plans.SAMPLE_ROWS}-row sample at {plans.DEFAULT_CREDITS_PER_ROW} credits a row.",
    )
    actions_daily_limit = forms.IntegerField(
        label="Daily Clay Actions limit",
        required=False,
        min_value=0,
        max_value=MAX_INT,
        widget=_number_input(),
        help_text="Actions that may be used per day, checked with the credits before each send. "
        "Empty: no Actions limit (they are still counted).",
    )
    budget_timezone = forms.CharField(
        label="Budget time zone",
        required=False,
        max_length=64,
        validators=[_known_timezone],
        help_text="Whose midnight starts a new budget day (your Clay billing zone). Empty: UTC.",
    )

    def __init__(self, *args, **kwargs) -> None:
        plan = plans.get(kwargs.pop("plan", None))
        super().__init__(*args, **kwargs)
        existing = [
            (str(pk), name) for pk, name in Workspace.objects.order_by("name").values_list("pk", "name")
        ]
        self.fields["workspace"].choices = [("", "A new workspace…"), *existing]  # type: ignore[attr-defined]
        if not self.is_bound:
            self.initial.update(
                {
                    "plan": plan.key,
                    **{key: ("" if value is None else value) for key, value in plan.values().items()},
                    "credits_per_row": plans.DEFAULT_CREDITS_PER_ROW,
                    "actions_per_row": 1,
                    "daily_limit": plans.DEFAULT_DAILY_LIMIT,
                    "budget_timezone": "UTC",
                    "workspace_name": "" if Workspace.objects.filter(name="clay").exists() else "clay",
                }
            )
        # The presets, for static/clayops/connect.js to fill the fields when the plan changes.
        self.fields["plan"].widget.attrs["data-presets"] = json.dumps(
            {key: p.values() for key, p in plans.PLANS.items()}
        )

    def clean_webhook_url(self) -> str:
        """The pasted URL, trimmed of what a paste brings along (spaces, quotes, angle brackets), then
        held to the destination policy (https, Clay's hosts, no private address)."""
        url = self.cleaned_data["webhook_url"].strip().strip("\"'<>").strip()
        if not url:
            raise ValidationError("Paste the webhook URL from Clay.")
        if any(ch.isspace() for ch in url):
            raise ValidationError("Paste only the webhook URL: it has no spaces.")
        validate_destination(url)
        return url

    def clean_token(self) -> str:
        token = self.cleaned_data["token"].strip()
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in token):
            raise ValidationError("The token may not hold control characters (it is sent as a header).")
        if not token.isascii():  # an HTTP header value: anything else fails every send
            raise ValidationError("The token may hold only ASCII characters (it is sent as a header).")
        return token

    def clean_rate_limit(self) -> float | None:
        rate = self.cleaned_data["rate_limit"]
        if rate is not None and 0 < rate < MIN_RATE:
            raise ValidationError(f"0 (unlimited) or at least {MIN_RATE:g} rows/s.")
        return rate

    def clean(self) -> dict:
        data = super().clean() or {}
        new = data.get("workspace") is None and "workspace" not in self.errors
        if new and not (data.get("workspace_name") or "").strip() and "workspace_name" not in self.errors:
            self.add_error("workspace_name", "Name the new workspace, or pick an existing one.")
        return data

    def service_arguments(self) -> dict:
        """The keyword arguments of provisioning.connect_webhook, blanks filled from the plan."""
        data = self.cleaned_data
        plan = plans.get(data.get("plan"))

        def given(name: str, default):
            value = data.get(name)
            return default if value is None or value == "" else value

        arguments: dict = {
            "url": data["webhook_url"],
            "name": (data.get("webhook_name") or "").strip(),
            "token": data.get("token") or "",
            "credits_per_row": given("credits_per_row", plans.DEFAULT_CREDITS_PER_ROW),
            "actions_per_row": given("actions_per_row", 1),
            "row_cap": given("row_cap", plan.row_cap),
            "plan": plan.key,
        }
        if data.get("workspace") is not None:
            arguments["workspace_id"] = data["workspace"]
        else:
            hourly = given("hourly_cap", plan.hourly_cap)
            arguments["new_workspace"] = provisioning.NewWorkspace(
                name=data["workspace_name"].strip(),
                rate_limit=given("rate_limit", plan.rate_limit),
                burst=given("burst", plan.burst),
                hourly_cap=hourly or None,  # 0: no hourly cap
                daily_limit=given("daily_limit", plans.DEFAULT_DAILY_LIMIT),
                actions_daily_limit=data.get("actions_daily_limit"),
                timezone=given("budget_timezone", "UTC"),
            )
        return arguments


# --- What to type into Clay ------------------------------------------------------------------------------


def _unreachable(host: str) -> bool:
    """True for a host Clay's servers cannot reach: localhost, a loopback, private or link-local address."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified


def callback_url(request: HttpRequest, webhook: Webhook) -> tuple[str, list[str]]:
    """The URL Clay's HTTP API column posts to, and warnings about it. From CLAYOPS_PUBLIC_URL; when that
    is a loopback address (the development default), from the address this request came in on."""
    base = settings.CLAYOPS_PUBLIC_URL.rstrip("/")
    if _unreachable(urlsplit(base).hostname or ""):
        base = request.build_absolute_uri("/").rstrip("/")
    url = base + webhook.callback_path
    parts = urlsplit(url)
    warnings = []
    if _unreachable(parts.hostname or ""):
        warnings.append(
            f"{parts.hostname} is not reachable from Clay's servers: set CLAYOPS_PUBLIC_URL to the public "
            "https address of this clayops (a load balancer, or a tunnel while you try it)."
        )
    if parts.scheme != "https":
        warnings.append("This URL is plain http: the secret would cross the internet in clear. Use https.")
    return url, warnings


def body_template() -> str:
    """The JSON body for Clay's HTTP API column: clayops' ids, then the columns to send back."""
    body = {
        LEAD_ID_FIELD: "{{" + LEAD_ID_FIELD + "}}",
        SEND_ID_FIELD: "{{" + SEND_ID_FIELD + "}}",
        "company_name": "{{Company Name}}",
        "employee_count": "{{Employee Count}}",
        "industry": "{{Industry}}",
    }
    return json.dumps(body, indent=2)


def _reveal(request: HttpRequest, webhook_id: int) -> None:
    ids = [i for i in request.session.get(REVEAL_KEY, []) if i != webhook_id]
    request.session[REVEAL_KEY] = [*ids[-19:], webhook_id]


def _take_reveal(request: HttpRequest, webhook_id: int) -> bool:
    """True once after a creation or rotation by this operator: the flag is used up by this view."""
    ids = request.session.get(REVEAL_KEY) or []
    if webhook_id not in ids or not can_operate(request.user):
        return False
    request.session[REVEAL_KEY] = [i for i in ids if i != webhook_id]
    return True


def _webhook(webhook_id: int) -> Webhook:
    webhook = Webhook.objects.select_related("workspace", "workspace__budget").filter(pk=webhook_id).first()
    if webhook is None:
        raise Http404("No such webhook")
    return webhook


# What a test row's state means for the operator waiting for it.
MEANINGS: dict[str, str] = {
    Lead.State.QUEUED: "waiting for a worker to take it.",
    Lead.State.SUBMITTING: "being sent to Clay.",
    Lead.State.ACCEPTED: "Clay took the row; waiting for the HTTP API column to call back.",
    Lead.State.DEFERRED: "held back before sending (pause, open circuit, budget or hourly cap); it goes out "
    "by itself once that clears.",
    Lead.State.RETRY_WAIT: "Clay's answer was a failure; clayops retries it after a backoff.",
    Lead.State.UNCERTAIN: "sent, but no answer came; waiting for a callback before resending.",
    Lead.State.OVERDUE: "Clay took the row but no callback came by the deadline: check the column's URL, "
    "header, secret and body, and that it runs on new rows.",
    Lead.State.DEAD: "Clay refused it (see the dead letter queue).",
    Lead.State.DISCARDED: "discarded by an operator.",
    Lead.State.DELIVERED: "marked delivered by an operator, without a callback.",
}


def status_context(webhook: Webhook) -> dict:
    lead = provisioning.latest_test_row(webhook.pk)
    context: dict = {"webhook": webhook, "lead": lead, "finished": False, "ok": False, "failed": False}
    if lead is None:
        return context
    context.update(
        finished=lead.state in FINAL_STATES,
        ok=lead.enriched_at is not None,
        failed=lead.enriched_at is None and lead.state in FINAL_STATES,
        meaning=MEANINGS.get(str(lead.state), lead.get_state_display()),
        reason=lead.defer_reason or lead.last_error,
        enriched_json=json.dumps(lead.enriched, indent=2, sort_keys=True) if lead.enriched else "",
    )
    return context


# --- Views --------------------------------------------------------------------------------------------------


def _connect_page(request: HttpRequest, form: ConnectForm, status: int = 200) -> HttpResponse:
    hooks = Webhook.objects.select_related("workspace").order_by("workspace__name", "priority", "pk")
    context = {"form": form, "plans": plans.PLANS.values(), "webhooks": hooks}
    return render(request, "dashboard/connect.html", context, status=status)


@require_safe
@viewer_required
def connect(request: HtmxHttpRequest) -> HttpResponse:
    """The guided form (operators fill it; viewers see it explained) and the webhooks already connected."""
    plan = request.GET.get("plan", "")
    return _connect_page(request, ConnectForm(plan=plan if plan in plans.PLANS else None))


@require_POST
@operator_required
def connect_create(request: HtmxHttpRequest) -> HttpResponse:
    """Create the workspace, budget and webhook (or the webhook alone) in one transaction; on any
    problem, the form again with its errors (400) and nothing created."""
    form = ConnectForm(request.POST)
    if form.is_valid():
        try:
            webhook = provisioning.connect_webhook(**form.service_arguments(), by=request.user)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            _reveal(request, webhook.pk)
            messages.success(request, f"Connected {webhook.name}: now set up the HTTP API column in Clay.")
            return redirect("dashboard:connect_webhook", webhook.pk)
    return _connect_page(request, form, status=400)


@require_safe
@viewer_required
def connect_webhook(request: HtmxHttpRequest, webhook_id: int) -> HttpResponse:
    """What to enter in Clay's HTTP API column, the test row and its status."""
    webhook = _webhook(webhook_id)
    url, warnings = callback_url(request, webhook)
    reveal = _take_reveal(request, webhook.pk)
    context = {
        **status_context(webhook),
        "callback_url": url,
        "url_warnings": warnings,
        "header_name": CALLBACK_HEADER,
        "secret": webhook.callback_secret if reveal else "",
        "masked_secret": mask_secret(webhook.callback_secret),
        "body_template": body_template(),
        "lead_id_field": LEAD_ID_FIELD,
        "send_id_field": SEND_ID_FIELD,
        "workspace": webhook.workspace,
        "budget": webhook.workspace.budget,
    }
    response = render(request, "dashboard/connect_webhook.html", context)
    response["Cache-Control"] = "no-store"  # the secret must not stay in a cache
    return response


@require_POST
@operator_required
def connect_rotate(request: HtmxHttpRequest, webhook_id: int) -> HttpResponse:
    """A new callback secret; the old one stops working at once. Shown once on the next view."""
    webhook = provisioning.rotate_callback_secret(webhook_id, by=request.user)
    if webhook is None:
        raise Http404("No such webhook")
    _reveal(request, webhook.pk)
    messages.success(
        request,
        f"{webhook.name}: new callback secret. Paste it into Clay's HTTP API column now: "
        "the old one is refused.",
    )
    return redirect("dashboard:connect_webhook", webhook.pk)


def _status(request: HtmxHttpRequest, webhook: Webhook) -> HttpResponse:
    context = status_context(webhook)
    response = render(request, "dashboard/connect_status.html", context)
    patch_vary_headers(response, ["HX-Request"])
    if request.htmx and context["finished"]:
        stop = HttpResponseStopPolling(response.content)  # 286: htmx swaps this, then stops polling
        patch_vary_headers(stop, ["HX-Request"])
        return stop
    return response


@require_POST
@operator_required
def connect_test(request: HtmxHttpRequest, webhook_id: int) -> HttpResponse:
    """One test row through the normal path (budget, breaker, rate limit); htmx gets the status."""
    lead, created = provisioning.send_test_row(webhook_id, by=request.user)
    if lead is None:
        raise Http404("No such webhook")
    if request.htmx:
        return _status(request, _webhook(webhook_id))
    if created:
        messages.success(request, f"Test row sent (lead {lead.pk}): its status updates below.")
    else:
        messages.info(request, f"Test row {lead.pk} is still on its way ({lead.get_state_display()}).")
    return redirect("dashboard:connect_webhook", webhook_id)


@require_safe
@viewer_required
def connect_status(request: HtmxHttpRequest, webhook_id: int) -> HttpResponse:
    """The test row's status fragment, polled every 2 s until the row is finished (then 286)."""
    return _status(request, _webhook(webhook_id))

"""Provisioning, idempotent, used by `manage.py up` and tests: roles, an operator, the default
workspace and budget, the simulator's webhook. Also the writes of the dashboard's "Connect Clay"
page: a workspace, its budget and a webhook in one transaction (`connect_webhook`), a new callback
secret (`rotate_callback_secret`) and one test row through the normal submission path
(`send_test_row`), each audited."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from redis.exceptions import RedisError

from .enqueue import enqueue_leads
from .models import AuditEntry, CircuitBreaker, CreditBudget, Lead, Webhook, Workspace, new_secret
from .plans import DEFAULT_DAILY_LIMIT

log = logging.getLogger("clayops.provisioning")

VIEWERS = "viewers"
OPERATORS = "operators"
SIMULATOR_TABLE = "t_default"


OPERATE = "clayops.operate"


def can_view(user) -> bool:
    """Viewers and operators see everything; a logged-in user with neither role sees nothing."""
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser or user.has_perm(OPERATE):
        return True
    cached = getattr(user, "_clayops_can_view", None)
    if cached is None:
        cached = user.groups.filter(name__in=[VIEWERS, OPERATORS]).exists()
        user._clayops_can_view = cached
    return cached


def can_operate(user) -> bool:
    return user.is_authenticated and user.has_perm(OPERATE)


def ensure_roles() -> None:
    """Viewers see everything; operators also act (retry, discard, drain, breaker, upload)."""
    Group.objects.get_or_create(name=VIEWERS)
    operators, _ = Group.objects.get_or_create(name=OPERATORS)
    operators.permissions.add(Permission.objects.get(codename="operate", content_type__app_label="clayops"))


def find_user(username: str):
    return get_user_model().objects.filter(username=username).first()


def create_operator(username: str, password: str) -> bool:
    """Create the operator with this password; False when it already exists (another node's `up`,
    starting at the same moment on the same database, made it first): its password stays."""
    try:
        with transaction.atomic():
            get_user_model().objects.create_user(username=username, password=password)
    except IntegrityError:
        return False
    ensure_operator(username, None)
    return True


def ensure_operator(username: str, password: str | None):
    """An operator who may also use the admin; with a password, that one (printed by `up`)."""
    ensure_roles()
    user, _ = get_user_model().objects.get_or_create(username=username)
    if password is not None:
        user.set_password(password)
    user.is_staff = True
    user.is_superuser = True
    user.save()
    user.groups.add(Group.objects.get(name=OPERATORS))
    return user


def ensure_defaults() -> Workspace:
    # 1,500 credits: the README's sample (200 valid leads at 6 credits a row: 1,200), plus room for
    # resends; the model's own default (1,000) would leave the sample's tail deferred.
    budget, _ = CreditBudget.objects.get_or_create(
        name="default", defaults={"daily_limit": DEFAULT_DAILY_LIMIT}
    )
    workspace, _ = Workspace.objects.get_or_create(name="default", defaults={"budget": budget})
    return workspace


@transaction.atomic
def ensure_simulator_webhook(simulator_url: str) -> Webhook:
    workspace = ensure_defaults()
    url = f"{simulator_url}/v3/sources/webhook/{SIMULATOR_TABLE}"
    webhook, created = Webhook.objects.get_or_create(
        workspace=workspace, name="simulator", defaults={"url": url, "token": "sim-token"}
    )
    if not created and webhook.url != url:
        webhook.url = url
        webhook.save(update_fields=["url"])
    CircuitBreaker.objects.get_or_create(webhook=webhook)
    return webhook


# --- Connect Clay (dashboard/connect.py) -------------------------------------------------------------

# A test row's lead is an ordinary lead whose fingerprint starts with this and its webhook's id (no
# column marks it: no migration), e.g. "connect-test:7:3f2a…".
TEST_ROW_PREFIX = "connect-test:"
# What the test row sends to Clay (clayops adds its lead and send ids, as to every row).
TEST_ROW = {
    "company": "Clay Labs",
    "domain": "clay.com",
    "website": "https://www.clay.com",
    "clayops_test_row": True,
}
# A test row in one of these states is still on its way: a second click sends no second row.
TEST_ROW_IN_FLIGHT = (
    Lead.State.QUEUED,
    Lead.State.SUBMITTING,
    Lead.State.ACCEPTED,
    Lead.State.RETRY_WAIT,
    Lead.State.UNCERTAIN,
)


@dataclass(frozen=True)
class NewWorkspace:
    """A workspace to create with its own budget (named like it, or with a suffix when taken)."""

    name: str
    rate_limit: float
    burst: int
    hourly_cap: int | None
    daily_limit: Decimal
    timezone: str = "UTC"
    actions_daily_limit: int | None = None  # Clay Actions per day; None: no Actions limit


# Model field → the Connect form's field, so that a model's validation error lands on its input.
_FORM_FIELDS = {
    CreditBudget: {
        "daily_limit": "daily_limit",
        "actions_daily_limit": "actions_daily_limit",
        "timezone": "budget_timezone",
        "name": "workspace_name",
    },
    Workspace: {
        "name": "workspace_name",
        "rate_limit": "rate_limit",
        "burst": "burst",
        "hourly_cap": "hourly_cap",
    },
    Webhook: {
        "name": "webhook_name",
        "url": "webhook_url",
        "token": "token",
        "credits_per_row": "credits_per_row",
        "actions_per_row": "actions_per_row",
        "row_cap": "row_cap",
    },
}


def _validated(obj) -> None:
    """full_clean, with the errors keyed by the Connect form's fields (others under __all__)."""
    try:
        obj.full_clean()
    except ValidationError as exc:
        names = _FORM_FIELDS.get(type(obj), {})
        errors: dict[str, list] = {}
        for field, messages in exc.message_dict.items():
            errors.setdefault(names.get(field, "__all__"), []).extend(messages)
        raise ValidationError(errors) from None


def _free_budget_name(name: str) -> str:
    """The workspace's name for its budget, or that with a suffix when a budget of that name exists."""
    candidates = [name, f"{name} budget"] + [f"{name} budget {n}" for n in range(2, 100)]
    for candidate in candidates:
        candidate = candidate[:100]
        if not CreditBudget.objects.filter(name=candidate).exists():
            return candidate
    raise ValidationError({"workspace_name": "Too many budgets of that name: choose another workspace name."})


def _free_webhook_name(workspace: Workspace) -> str:
    """ "Clay table", "Clay table 2", … : the first name the workspace has no webhook of."""
    taken = set(Webhook.objects.filter(workspace=workspace).values_list("name", flat=True))
    return next(
        name for n in range(1, 10_000) if (name := "Clay table" + (f" {n}" if n > 1 else "")) not in taken
    )


def connect_webhook(
    *,
    url: str,
    name: str = "",
    token: str = "",
    credits_per_row: Decimal,
    row_cap: int,
    actions_per_row: int = 1,
    workspace_id: int | None = None,
    new_workspace: NewWorkspace | None = None,
    plan: str = "",
    by=None,
) -> Webhook:
    """Create a webhook (with its closed breaker) in an existing workspace, or a workspace, its budget
    and the webhook, all in one transaction: all of them, or nothing and a ValidationError keyed by
    the Connect form's fields. The URL passes the destination policy (the model's validator)."""
    if (workspace_id is None) == (new_workspace is None):
        raise ValidationError({"workspace": "Choose an existing workspace or name a new one."})
    try:
        with transaction.atomic():
            if new_workspace is not None:
                workspace = _create_workspace(new_workspace)
            else:
                assert workspace_id is not None  # one of the two, checked above
                found = Workspace.objects.filter(pk=workspace_id).first()
                if found is None:
                    raise ValidationError({"workspace": "That workspace no longer exists."})
                workspace = found
            webhook = _create_webhook(
                workspace,
                url=url,
                name=name,
                token=token,
                credits_per_row=credits_per_row,
                actions_per_row=actions_per_row,
                row_cap=row_cap,
            )
            AuditEntry.objects.create(
                user=by,
                action="clay_connected",
                target=f"webhook:{webhook.pk}",
                detail={
                    "webhook": webhook.name,
                    "workspace": workspace.name,
                    "created_workspace": new_workspace is not None,
                    "plan": plan,
                },
            )
    except IntegrityError:  # another request created the same name at the same moment
        raise ValidationError(
            "A workspace, budget or webhook of that name was created at the same moment: try again."
        ) from None
    return webhook


def _create_workspace(new_workspace: NewWorkspace) -> Workspace:
    if Workspace.objects.filter(name=new_workspace.name).exists():
        taken = f"A workspace named {new_workspace.name!r} exists: pick it in the list instead."
        raise ValidationError({"workspace_name": taken})
    budget = CreditBudget(
        name=_free_budget_name(new_workspace.name),
        daily_limit=new_workspace.daily_limit,
        actions_daily_limit=new_workspace.actions_daily_limit,
        timezone=new_workspace.timezone,
    )
    _validated(budget)
    budget.save()
    workspace = Workspace(
        name=new_workspace.name,
        budget=budget,
        rate_limit=new_workspace.rate_limit,
        burst=new_workspace.burst,
        hourly_cap=new_workspace.hourly_cap,
    )
    _validated(workspace)
    workspace.save()
    return workspace


def _create_webhook(
    workspace: Workspace,
    *,
    url: str,
    name: str,
    token: str,
    credits_per_row: Decimal,
    actions_per_row: int,
    row_cap: int,
) -> Webhook:
    same_url = Webhook.objects.filter(url=url).select_related("workspace").first()
    if same_url is not None:
        raise ValidationError(
            {
                "webhook_url": f"This URL is already webhook {same_url.name!r} (#{same_url.pk}) "
                f"of workspace {same_url.workspace.name!r}: one Clay webhook, one clayops webhook."
            }
        )
    webhook = Webhook(
        workspace=workspace,
        name=name or _free_webhook_name(workspace),
        url=url,
        token=token,
        credits_per_row=credits_per_row,
        actions_per_row=actions_per_row,
        row_cap=row_cap,
    )
    _validated(webhook)
    webhook.save()
    CircuitBreaker.objects.create(webhook=webhook)
    return webhook


def rotate_callback_secret(webhook_id: int, *, by=None) -> Webhook | None:
    """A new callback secret for the webhook (the old one stops authenticating callbacks at once),
    audited without the secret. None when there is no such webhook."""
    with transaction.atomic():
        webhook = Webhook.objects.filter(pk=webhook_id).first()
        if webhook is None:
            return None
        webhook.callback_secret = new_secret()
        webhook.save(update_fields=["callback_secret"])
        AuditEntry.objects.create(
            user=by,
            action="callback_secret_rotated",
            target=f"webhook:{webhook.pk}",
            detail={"webhook": webhook.name},
        )
    return webhook


def latest_test_row(webhook_id: int) -> Lead | None:
    """The webhook's most recent test row (a read)."""
    return (
        Lead.objects.filter(fingerprint__startswith=f"{TEST_ROW_PREFIX}{webhook_id}:")
        .select_related("webhook")
        .order_by("-pk")
        .first()
    )


def send_test_row(webhook_id: int, *, by=None) -> tuple[Lead | None, bool]:
    """One test lead for the webhook, queued and enqueued like an imported lead: the submission job
    takes it through the pauses, the breaker, the budget, the row cap and the rate limit like any
    other. Returns (lead, created): the test row still on its way when there is one (no second
    row), (None, False) when there is no such webhook."""
    with transaction.atomic():
        # Locked: of two clicks at once, the second waits and then finds the first one's row in flight.
        webhook = Webhook.objects.select_for_update().filter(pk=webhook_id).first()
        if webhook is None:
            return None, False
        latest = latest_test_row(webhook.pk)
        if latest is not None and latest.state in TEST_ROW_IN_FLIGHT:
            return latest, False
        lead = Lead.objects.create(
            webhook=webhook,
            row=dict(TEST_ROW),
            fingerprint=f"{TEST_ROW_PREFIX}{webhook.pk}:{uuid.uuid4().hex}",
            company="clayops test row",  # no domain: Clay's answer to a test row fills no cache
            state=Lead.State.QUEUED,
        )
        AuditEntry.objects.create(
            user=by, action="test_row_sent", target=f"webhook:{webhook.pk}", detail={"lead": lead.pk}
        )
    try:
        enqueue_leads([lead.pk])
    except RedisError:  # the lead is queued in the database: the maintenance tick enqueues it again
        log.warning("could not enqueue test row %s; the maintenance tick will", lead.pk)
    return lead, True


def login_username(request, credentials: dict | None = None) -> str:
    """The username django-axes records for a login attempt (AXES_USERNAME_CALLABLE): as typed, but
    never longer than a username can be (150) nor with NUL bytes, so a hostile login form cannot
    make axes' INSERT fail (PostgreSQL refuses strings over the column's 255 characters)."""
    raw = (credentials or {}).get("username")
    if raw is None:
        raw = request.POST.get("username", "") if request is not None else ""
    return str(raw).replace("\x00", "")[:150]

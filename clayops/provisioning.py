"""Provisioning, idempotent, used by `manage.py up` and tests: roles, an operator, the default
workspace and budget, the simulator's webhook."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import IntegrityError, transaction

from .models import CircuitBreaker, CreditBudget, Webhook, Workspace

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
    budget, _ = CreditBudget.objects.get_or_create(name="default")
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
